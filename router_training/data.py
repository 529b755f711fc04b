"""The questions as Hugging Face ``datasets``: a base dataset per ``dataset.kind`` (easy-VQA, any dataset
``datasets.load_dataset`` reads, or a folder of images with a JSONL of questions), and the router
splits (router-train / router-val / router-test) made from it the same way for every kind. For
easy-VQA also the clean training split for the reference models.

Row schema (one row per question): ``sample_id`` str, ``image_id`` str, ``image`` PIL image,
``question`` str (may be empty when the image carries the question: counted and warned about),
``answers`` list[str] (reference answers; ten human answers score with the VQA leave-one-out accuracy;
empty when the question is scored only by the grades in its models' outcome files), ``options``
list[str] (multiple-choice option texts, else empty), ``question_type`` str (the dataset's own, or
``features.question_type`` when it has none), ``group`` str (the ``dataset.split_by`` value: a group
never straddles two router splits); router splits add ``split`` str, ``degradation`` str and
``severity`` float (for analysis only, never router features).

Kinds "hf" and "folder" are read and checked by ``sources`` (``normalize``, ``load_hf``, ``load_folder``,
re-exported here); a row the data stage cannot use is settled by ``dataset.on_bad_row``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import re
import shutil
import zlib
from collections import OrderedDict
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from . import degrade, kinds
from .config import Config, DatasetConfig
from .core.features import question_type
from .sources import (BAD_ROWS, BASE_COLUMNS, FOLDER_KEYS, load_folder, load_hf,  # noqa: F401 (re-exported)
                      normalize, settle_bad_rows)

log = logging.getLogger(__name__)

def load_easyvqa(split: str, limit_images: int | None = None, seed: int = 0) -> datasets.Dataset:
    """easy-VQA ``split`` ("train" or "test") from the ``easy-vqa`` package, clean images.

    ``limit_images`` keeps a seeded random subset of images (all their questions). Images decode lazily
    from the package's PNG files (64x64 RGB). Raises ValueError for another split name.
    """
    import easy_vqa

    if split not in ("train", "test"):
        raise ValueError(f"easy-VQA has splits 'train' and 'test', not {split!r}")
    texts, answers, image_ids = (easy_vqa.get_train_questions() if split == "train"
                                 else easy_vqa.get_test_questions())
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    keep = None
    if limit_images is not None:
        ids = np.array(sorted(set(image_ids)))
        keep = set(np.random.default_rng(seed).choice(ids, size=min(limit_images, len(ids)), replace=False).tolist())
    rows = [i for i, img in enumerate(image_ids) if keep is None or img in keep]
    ds = datasets.Dataset.from_dict({
        "sample_id": [f"easyvqa-{split}-q{i}" for i in rows],
        "image_id": [f"easyvqa-{split}-img{image_ids[i]}" for i in rows],
        "image": [paths[image_ids[i]] for i in rows],
        "question": [texts[i] for i in rows],
        "answers": [[answers[i]] for i in rows],
        "options": [[] for _ in rows],
        "question_type": [question_type(texts[i]) for i in rows],
        "group": [f"easyvqa-{split}-img{image_ids[i]}" for i in rows],
    })
    return ds.cast_column("image", datasets.Image())


def answer_vocab() -> list[str]:
    """easy-VQA's 13 answers, in the package's order."""
    import easy_vqa

    return list(easy_vqa.get_answers())


def bad_rows(cfg: Config) -> list[dict]:
    """The rows the data stage skipped (``dataset.on_bad_row: skip``), each {"sample_id", "row",
    "reason"}; [] when none were."""
    path = cfg.path("data") / BAD_ROWS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def load_base(dc: DatasetConfig, cache_file: Path | None = None, bad: list | None = None) -> datasets.Dataset:
    """The base dataset (all questions, clean images, row schema above) of ``dc.kind`` (``kinds``); bad
    rows go to ``bad`` when given, else are settled by ``dc.on_bad_row`` (``normalize``)."""
    return kinds.get(dc.kind).load(dc, cache_file, bad)


# ---------------------------------------------------------------------------------------------------
# Router splits
# ---------------------------------------------------------------------------------------------------


def _png(image: Image.Image) -> dict:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


_EASYVQA_IMAGE = re.compile(r"easyvqa-\w+-img(\d+)")


def _image_order(image_id: str):
    m = _EASYVQA_IMAGE.fullmatch(image_id)
    return (0, int(m.group(1)), "") if m else (1, 0, image_id)


def _image_seed(image_id: str) -> int:
    m = _EASYVQA_IMAGE.fullmatch(image_id)
    return int(m.group(1)) if m else zlib.crc32(image_id.encode("utf-8"))


def router_splits(base: datasets.Dataset, splits: dict, degradations: dict, severity=(0.35, 1.0), seed: int = 0,
                  reencode_clean: bool = True, cache_file: Path | None = None,
                  bad: list | None = None) -> datasets.Dataset:
    """Router splits from any base dataset (row schema above): ``group`` values (the ``split_by`` column;
    image_id when the base has no group column) are divided (seeded) among ``splits`` (name -> fraction)
    so no group is in two splits, and each image gets one seeded
    degradation (kind drawn with ``degradations`` weights, severity uniform in ``severity``).

    Degraded images are stored as PNG; a clean image keeps its original bytes unless
    ``reencode_clean``. Written to ``cache_file`` when given, else kept in memory. An image that cannot
    be decoded (a truncated file passes the data stage's cheap check) leaves its rows out: with ``bad``
    (a list) they are appended to it ({"sample_id", "row": None, "reason"}), without it ValueError lists
    every one after the pass. Raises ValueError when a split gets no image.
    """
    image_ids = sorted(set(base["image_id"]), key=_image_order)
    group_of = dict(zip(base["sample_id"], base["group"] if "group" in base.column_names else base["image_id"]))
    groups = sorted(set(group_of.values()), key=_image_order)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    fractions = np.array(list(splits.values()), dtype=float)
    bounds = np.round(np.cumsum(fractions / fractions.sum()) * len(groups)).astype(int)
    split_of, degr_of = {}, {}  # group -> split, image -> degradation
    for k, idx in enumerate(order):
        split_of[groups[idx]] = list(splits)[int(np.searchsorted(bounds, k, side="right"))]
    empty = [s for s in splits if s not in set(split_of.values())]
    if empty:
        raise ValueError(f"router splits {empty} get no groups ({len(groups)} split_by groups in all, fractions "
                         f"{dict(splits)}); use more images (dataset.limit_images) or change dataset.splits")
    for img in image_ids:  # one draw per image, in a fixed order, so splits and degradations are seeded
        degr_of[img] = degrade.draw(rng, degradations, severity)

    decoder = datasets.Image()
    cache: OrderedDict[str, dict] = OrderedDict()  # recent images (a dataset lists an image's questions together)
    undecodable: dict[str, str] = {}  # image id -> why
    found: list[dict] = []

    def add(batch):
        keep, images, splits_, kinds, sevs = [], [], [], [], []
        for k, (sid, img_id, raw) in enumerate(zip(batch["sample_id"], batch["image_id"], batch["image"])):
            kind, sev = degr_of[img_id]
            if img_id not in cache and img_id not in undecodable:
                try:
                    image = decoder.decode_example(raw)
                    image.load()
                except Exception as e:  # noqa: BLE001 - any decoder failure means the same to the user
                    undecodable[img_id] = (f"image {raw.get('path') or '(bytes)'} cannot be decoded ({type(e).__name__}: "
                                           f"{e}); replace it with a valid image or drop the question from the data")
            if img_id in undecodable:
                found.append({"sample_id": sid, "row": None, "reason": undecodable[img_id]})
                continue
            if img_id not in cache:
                if kind == "clean" and not reencode_clean:
                    data = raw["bytes"] if raw["bytes"] is not None else Path(raw["path"]).read_bytes()
                    cache[img_id] = {"bytes": data, "path": None}
                else:
                    rng_img = np.random.default_rng(_image_seed(img_id) + 7919 * seed)
                    cache[img_id] = _png(degrade.apply(image, kind, sev, rng_img))
                if len(cache) > 512:
                    cache.popitem(last=False)
            keep.append(k)
            images.append(cache[img_id])
            splits_.append(split_of[group_of[sid]])
            kinds.append(kind)
            sevs.append(sev)
        rest = {c: [batch[c][k] for k in keep] for c in batch if c != "image"}
        return {**rest, "image": images, "split": splits_, "degradation": kinds, "severity": sevs}

    base = base.cast_column("image", datasets.Image(decode=False))
    features = datasets.Features({**base.features, "image": datasets.Image(),
                                  "split": datasets.Value("string"), "degradation": datasets.Value("string"),
                                  "severity": datasets.Value("float32")})
    fingerprint = hashlib.sha1(json.dumps([base._fingerprint, splits, degradations, list(severity), seed,
                                           reencode_clean], default=str).encode()).hexdigest()
    out = base.map(add, batched=True, batch_size=256, desc="degrading router splits", features=features,
                   remove_columns=base.column_names, new_fingerprint=fingerprint, load_from_cache_file=False,
                   keep_in_memory=cache_file is None, cache_file_name=str(cache_file) if cache_file else None)
    if bad is None:
        settle_bad_rows(found, "error", "router splits")
    else:
        bad.extend(found)
    return out


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def file_digest(path) -> str | None:
    """The first 16 hex digits of a file's sha256 (read once per path, size and modification time), or
    None when there is no such file: what a cached stage compares to notice a file edited in place."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return _sha256(str(p.resolve()), st.st_size, st.st_mtime_ns)


def _local_files(data_files) -> list[str]:
    """The paths named by a ``data_files`` value (a path, a list, or split -> path or list) that are files
    on this machine (globs and remote URLs are left out)."""
    if isinstance(data_files, dict):
        return [p for v in data_files.values() for p in _local_files(v)]
    names = [data_files] if isinstance(data_files, str) else list(data_files or [])
    return [p for p in names if isinstance(p, str) and Path(p).is_file()]


def input_files(cfg: Config) -> dict:
    """``file_digest`` of every file of the user's that a run reads by path: a folder dataset's questions
    file ("questions"), a hub-format dataset's local ``data_files`` (theirs and its images dataset's, by
    path) and each replayed model's outcome file ("outcomes:<model>"); {} for none."""
    dc = cfg.dataset
    out = {"questions": file_digest(dc.questions)} if dc.kind == "folder" else {}
    if dc.kind == "hf":
        out.update({p: file_digest(p) for p in _local_files(dc.data_files)
                    + _local_files((dc.images or {}).get("data_files"))})
    out.update({f"outcomes:{m.name}": file_digest(m.options["path"]) for m in cfg.models if m.backend == "replay"})
    return out


# dataset keys added after run folders were first written, with the value an older folder was built with
_ADDED_KEYS = {"scorer": "vqa", "numeric_rel_tol": 1e-4, "split_by": "image_id", "on_bad_row": "error"}


def build_router_dataset(cfg: Config) -> datasets.Dataset:
    """Router splits (``router_splits``) from the config's base dataset (``load_base``).
    Cached with ``save_to_disk`` under ``data/<name>/router_dataset``; a rerun loads the cache.
    Every bad row of both passes is written to ``data/<name>/bad_rows.jsonl`` and settled by
    ``dataset.on_bad_row`` (``settle_bad_rows``: "error" raises ValueError listing them all before
    anything is saved; "skip" leaves them out, ``bad_rows`` reads them back).
    """
    out = cfg.path("data") / "router_dataset"
    stamp = cfg.path("data") / "dataset_config.json"
    wanted = json.loads(json.dumps(dataclasses.asdict(cfg.dataset)))
    # the dataset's own files (not the outcome files): one edited in place is a changed dataset too
    files = {k: v for k, v in input_files(cfg).items() if not k.startswith("outcomes:")}
    if (out / "dataset_info.json").exists():
        old = json.loads(stamp.read_text()) if stamp.exists() else wanted
        changed = sorted(k for k in wanted if old.get(k, _ADDED_KEYS.get(k)) != wanted[k])
        if "files" in old:  # absent: a folder stamped before the digests
            changed += [f"the content of {cfg.dataset.questions if k == 'questions' else k}"
                        for k in sorted(set(old["files"]) | set(files)) if old["files"].get(k) != files.get(k)]
        if changed:
            raise ValueError(f"{cfg.path('data')} was built from another dataset config (changed: {changed}); its "
                             "outcomes and features belong to that data. Delete that folder or use a new run name.")
        return datasets.load_from_disk(str(out))
    dc = cfg.dataset
    tmp = out.parent / ".router_dataset.build"  # intermediate Arrow files, not the user's HF cache
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        bad: list[dict] = []
        base = load_base(dc, tmp / "base.arrow", bad)
        ds = router_splits(base, dc.splits, dc.degradations, dc.severity, dc.seed,
                           reencode_clean=kinds.get(dc.kind).reencode_clean, cache_file=tmp / "splits.arrow", bad=bad)
        settle_bad_rows(bad, dc.on_bad_row, f"dataset ({dc.kind})", cfg.path("data") / BAD_ROWS)
        ds.save_to_disk(str(out))
        stamp.write_text(json.dumps({**wanted, "files": files}, indent=2))
        n_images = len(set(ds["image_id"]))
        del base, ds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("router dataset: %d-image %s dataset -> %s", n_images, dc.kind, out)
    return datasets.load_from_disk(str(out))
