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
"""

from __future__ import annotations

import hashlib
import dataclasses
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

from . import degrade
from .config import DATASET_COLUMNS, Config, DatasetConfig
from .features import question_type

log = logging.getLogger(__name__)

# the columns of a base dataset, in order
BASE_COLUMNS = ("sample_id", "image_id", "image", "question", "answers", "options", "question_type", "group")
_BASE_FEATURES = datasets.Features({
    "sample_id": datasets.Value("string"), "image_id": datasets.Value("string"),
    "image": datasets.Image(decode=False), "question": datasets.Value("string"),
    "answers": datasets.List(datasets.Value("string")), "options": datasets.List(datasets.Value("string")),
    "question_type": datasets.Value("string"), "group": datasets.Value("string")})
# folder kind: JSONL keys read by default (our name -> key); ``columns`` overrides them
FOLDER_KEYS = {"image": "image", "question": "question", "answers": "answers", "options": "options",
               "sample_id": "question_id", "question_type": "question_type"}


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


# ---------------------------------------------------------------------------------------------------
# Any dataset: column mapping and normalisation to the row schema
# ---------------------------------------------------------------------------------------------------


def _dig(value, fields: list[str], spec: str, where: str):
    """``value`` with the dotted ``fields`` applied: a field of a record, or of every record in a list
    (a list of records or a record of lists, as ``datasets`` gives nested sequences)."""
    for f in fields:
        if isinstance(value, dict):
            if f not in value:
                raise ValueError(f"{where}: column {spec!r}: no field {f!r}; fields: {sorted(value)}")
            value = value[f]
        elif isinstance(value, (list, tuple)):
            value = [_dig(v, [f], spec, where) for v in value]
        elif value is not None:
            raise ValueError(f"{where}: column {spec!r}: {f!r} reads a field, but the value is "
                             f"{type(value).__name__}, not a record")
    return value


def _check_columns(ds: datasets.Dataset, cols: dict, where: str) -> None:
    """Every mapped column (its first dotted part) exists, else ValueError naming it and the columns."""
    for ours, theirs in cols.items():
        if not isinstance(theirs, str) or not theirs:
            raise ValueError(f"{where}: columns.{ours} must be a column name, got {theirs!r}")
        if theirs.split(".")[0] not in ds.column_names:
            raise ValueError(f"{where}: column {theirs.split('.')[0]!r} (for our {ours!r}) not found; "
                             f"available columns: {ds.column_names}")


def _column(ds: datasets.Dataset, spec: str, where: str) -> list:
    top, *fields = spec.split(".")
    values = list(ds[top])
    return [_dig(v, fields, spec, where) for v in values] if fields else values


def _ids(ds: datasets.Dataset, columns: dict, ours: str, where: str) -> list[str]:
    values = _column(ds, columns[ours], where)
    bad = next((i for i, v in enumerate(values) if v is None or str(v) == ""), None)
    if bad is not None:
        raise ValueError(f"{where}: row {bad} has no {ours} (column {columns[ours]!r}); give every row one, "
                         f"or leave {ours} out of columns")
    return [str(v) for v in values]


def _answers(value, spec: str, where: str, ours: str = "answers") -> list[str]:
    """A cell of answers (or options) as a list of non-empty strings; [] when there are none (the
    question is then scored by its outcome files' grades, ``outcomes.replay``)."""
    if value is None:
        value = []
    elif isinstance(value, (str, int, float, bool)):
        value = [value]
    elif isinstance(value, dict) or any(isinstance(v, dict) for v in value):
        keys = sorted(value if isinstance(value, dict) else next(v for v in value if isinstance(v, dict)))
        raise ValueError(f"{where}: column {spec!r} holds records with fields {keys}; map {ours} to one "
                         f"field, e.g. {ours}: {spec}.{'answer' if 'answer' in keys else keys[0]}")
    return [str(a).strip() for a in value if a is not None and str(a).strip()]


def _image_value(value, spec: str, sid: str, where: str) -> dict:
    """An image cell as {"bytes", "path"} (from an undecoded Image, a path string or raw bytes)."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        out = {"bytes": value.get("bytes"), "path": value.get("path")}
    elif isinstance(value, str):
        out = {"bytes": None, "path": value}
    elif isinstance(value, (bytes, bytearray)):
        out = {"bytes": bytes(value), "path": None}
    elif isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        out = {"bytes": buf.getvalue(), "path": None}
    else:
        out = {"bytes": None, "path": None}
    if out["bytes"] is None and not out["path"]:
        raise ValueError(f"{where}: sample {sid!r} has no image in column {spec!r} (got {type(value).__name__}); "
                         "give every question an image (file path, bytes or an Image feature), or drop it")
    if out["bytes"] is None and "://" not in out["path"] and not Path(out["path"]).is_file():
        raise ValueError(f"{where}: sample {sid!r}: image file {out['path']} not found; fix the path (relative "
                         "paths are resolved against the config file) or drop the question")
    return out


def _check_image(img: dict, sid: str, where: str) -> None:
    """Open and verify an image (cheap: no full decode), else ValueError naming the sample."""
    try:
        src = io.BytesIO(img["bytes"]) if img["bytes"] is not None else img["path"]
        with Image.open(src) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any PIL failure means the same thing to the user
        raise ValueError(f"{where}: sample {sid!r}: image {img['path'] or '(bytes)'} cannot be read "
                         f"({type(e).__name__}: {e}); replace the file with a valid image or drop the "
                         "question") from None


def _image_key(img: dict) -> str:
    """An image id for data without one: the file name, else a hash of the bytes."""
    if img["path"]:
        return Path(img["path"]).name
    return hashlib.sha1(img["bytes"]).hexdigest()[:16]


def _subset_images(image_ids: list[str], limit: int | None, seed: int) -> list[int]:
    """Row indices keeping a seeded random subset of ``limit`` images (all rows when limit is None)."""
    if limit is None:
        return list(range(len(image_ids)))
    ids = np.array(sorted(set(image_ids)), dtype=object)
    keep = set(np.random.default_rng(seed).choice(len(ids), size=min(limit, len(ids)), replace=False).tolist())
    keep = {ids[i] for i in keep}
    return [i for i, img in enumerate(image_ids) if img in keep]


def normalize(raw: datasets.Dataset, columns: dict, where: str, limit_images: int | None = None, seed: int = 0,
              images: datasets.Dataset | None = None, image_columns: dict | None = None,
              cache_file: Path | None = None, split_by: str = "image_id") -> datasets.Dataset:
    """Base dataset (the row schema above) from ``raw``, whose columns ``columns`` maps (our name ->
    theirs, dotted for nested fields; required: image (unless ``images``) and question; answers and
    options optional).

    sample_id defaults to ``q<row>``, image_id to the image's file name or a hash of its bytes, and
    question_type to ``features.question_type``. ``split_by``: "image_id" or a column of ``raw`` whose
    value is each row's ``group``. ``limit_images`` keeps a seeded subset of images. ``images`` (with
    ``image_columns`` {image_id, image}) is a second dataset holding the images, joined on image_id.
    Written to ``cache_file`` when given, else kept in memory. Questions with an empty text or no
    reference answer are kept and counted in a warning.

    Raises ValueError naming the column for a missing column (with the available ones) and naming the
    sample for a missing or unreadable image.
    """
    _check_columns(raw, columns, where)
    if split_by != "image_id" and split_by not in raw.column_names:
        raise ValueError(f"{where}: dataset.split_by {split_by!r} is not a column; available columns: "
                         f"{raw.column_names}")
    for ours, req in DATASET_COLUMNS.items():
        if req and ours not in columns and not (ours == "image" and images is not None):
            raise ValueError(f"{where}: columns must map {ours!r} (our name: their column); "
                             f"available columns: {raw.column_names}")
    img_spec = columns.get("image")
    if img_spec is not None and isinstance(raw.features.get(img_spec), datasets.Image):
        raw = raw.cast_column(img_spec, datasets.Image(decode=False))

    if images is not None and "image_id" not in columns:
        raise ValueError(f"{where}: joining a separate images dataset needs columns.image_id")
    n = len(raw)
    sample_ids = _ids(raw, columns, "sample_id", where) if "sample_id" in columns else [f"q{i}" for i in range(n)]
    seen: dict[str, int] = {}
    for i, s in enumerate(sample_ids):
        if s in seen:
            raise ValueError(f"{where}: sample_id {s!r} (column {columns.get('sample_id')!r}) is on rows "
                             f"{seen[s]} and {i}; map sample_id to a unique column, or leave it out to number rows")
        seen[s] = i
    if "image_id" in columns:
        image_ids = _ids(raw, columns, "image_id", where)
    else:  # one pass over the images (bytes only, no decoding)
        image_ids, top = [], img_spec.split(".")[0]
        for batch in raw.select_columns([top]).iter(batch_size=256):
            image_ids += [_image_key(_image_value(v, img_spec, sample_ids[len(image_ids) + k], where))
                          for k, v in enumerate(batch[top])]
    groups = image_ids if split_by == "image_id" else [str(v) for v in raw[split_by]]
    keep = _subset_images(image_ids, limit_images, seed)
    sub = raw.select(keep) if len(keep) < n else raw

    lookup = None
    if images is not None:
        icols = {"image_id": "image_id", "image": "image", **(image_columns or {})}
        _check_columns(images, icols, f"{where} (images)")
        if isinstance(images.features.get(icols["image"]), datasets.Image):
            images = images.cast_column(icols["image"], datasets.Image(decode=False))
        lookup = {str(v): j for j, v in enumerate(_column(images, icols["image_id"], where))}
        missing = next((i for i in keep if image_ids[i] not in lookup), None)
        if missing is not None:
            raise ValueError(f"{where}: sample {sample_ids[missing]!r}: image id {image_ids[missing]!r} is not in "
                             f"the images dataset (column {icols['image_id']!r}); fix the ids or drop the question")

    def convert(batch, idx):
        rows = [keep[i] for i in idx]
        sids = [sample_ids[i] for i in rows]
        if lookup is not None:
            cells = images[[lookup[image_ids[i]] for i in rows]][icols["image"]]
            spec = icols["image"]
        else:
            cells, spec = batch[img_spec.split(".")[0]], img_spec
        imgs, checked = [], {}
        for sid, iid, cell in zip(sids, (image_ids[i] for i in rows), cells):
            img = _image_value(cell, spec, sid, where)
            if iid not in checked:
                _check_image(img, sid, where)
                checked[iid] = True
            imgs.append(img)
        qspec = columns["question"]
        questions = ["" if q is None else str(q) for q in
                     (_dig(v, qspec.split(".")[1:], qspec, where) for v in batch[qspec.split(".")[0]])]

        def lists(ours):
            spec = columns.get(ours)
            if spec is None:
                return [[] for _ in rows]
            return [_answers(_dig(v, spec.split(".")[1:], spec, where), spec, where, ours)
                    for v in batch[spec.split(".")[0]]]

        answers, options = lists("answers"), lists("options")
        if "question_type" in columns:
            tspec = columns["question_type"]
            given = [_dig(v, tspec.split(".")[1:], tspec, where) for v in batch[tspec.split(".")[0]]]
        else:
            given = [None] * len(rows)
        qtypes = [str(t) if t not in (None, "") else question_type(str(q)) for t, q in zip(given, questions)]
        return {"sample_id": sids, "image_id": [image_ids[i] for i in rows], "image": imgs,
                "question": [q.strip() for q in questions], "answers": answers, "options": options,
                "question_type": qtypes, "group": [groups[i] for i in rows]}

    fingerprint = hashlib.sha1(json.dumps([sub._fingerprint, columns, image_columns, len(keep), where, split_by,
                                           images._fingerprint if images is not None else None],
                                          default=str).encode()).hexdigest()
    out = sub.map(convert, batched=True, batch_size=256, with_indices=True, remove_columns=sub.column_names,
                  features=_BASE_FEATURES, new_fingerprint=fingerprint, load_from_cache_file=False,
                  keep_in_memory=cache_file is None, cache_file_name=str(cache_file) if cache_file else None,
                  desc="reading questions")
    empty = sum(not q for q in out["question"])
    if empty:
        log.warning("%s: %d of %d questions have an empty text (kept: the image must carry the question; the "
                    "router then sees only image features and the report counts them)", where, empty, len(out))
    unanswered = sum(not a for a in out["answers"])
    if unanswered:
        log.info("%s: %d of %d questions have no reference answer: they are scored by the grades (score or "
                 "correct) in their models' outcome files", where, unanswered, len(out))
    return out.cast_column("image", datasets.Image())


def _load_split(path: str, name, split, data_files, revision, where: str) -> datasets.Dataset:
    """One split through ``datasets.load_dataset``; with ``split`` None the dataset must have one split."""
    try:
        loaded = datasets.load_dataset(path, name, data_files=data_files, split=split, revision=revision)
    except ValueError as e:
        if split is not None and "split" in str(e).lower():
            raise ValueError(f"{where}: {e}") from None
        raise
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise ValueError(f"{where}: set 'split', one of {list(loaded)}")
        loaded = next(iter(loaded.values()))
    return loaded


def load_hf(dc: DatasetConfig, cache_file: Path | None = None) -> datasets.Dataset:
    """Base dataset for kind "hf": ``datasets.load_dataset(path, name, data_files=..., split=...)``
    normalised with ``columns`` (see ``normalize``), images from ``images`` when given."""
    where = f"dataset {dc.path}" + (f" ({dc.name})" if dc.name else "") + (f" split {dc.split}" if dc.split else "")
    raw = _load_split(dc.path, dc.name, dc.split, dc.data_files, dc.revision, where)
    images = image_columns = None
    if dc.images is not None:
        i = dc.images
        images = _load_split(i.get("path") or dc.path, i.get("name"), i.get("split"), i.get("data_files"),
                             i.get("revision"), f"{where}: images")
        image_columns = i.get("columns")
    return normalize(raw, dict(dc.columns), where, dc.limit_images, dc.seed, images, image_columns, cache_file,
                     dc.split_by)


def load_folder(dc: DatasetConfig, cache_file: Path | None = None) -> datasets.Dataset:
    """Base dataset for kind "folder": ``questions`` (JSONL: image file name under ``images_dir``,
    question, optional answers (a list or one string), options (a list), question_id and question_type;
    ``columns`` renames these keys; ``dataset.split_by`` may name any other key) read into a
    ``datasets.Dataset`` with the image files as an Image column."""
    keys = {**FOLDER_KEYS, **dc.columns}
    split_key = None if dc.split_by == "image_id" else dc.split_by
    qpath, root = Path(dc.questions), Path(dc.images_dir)
    where = f"dataset {qpath}"
    if not qpath.is_file():
        raise FileNotFoundError(f"{where}: questions file not found")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset: images_dir {root} is not a folder")
    rows: dict[str, list] = {ours: [] for ours in keys}
    group: list[str] = []
    with open(qpath, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{qpath}:{lineno}: not a JSON object ({e})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{qpath}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            for ours, theirs in keys.items():
                if theirs not in obj and DATASET_COLUMNS[ours]:
                    raise ValueError(f"{qpath}:{lineno}: no key {theirs!r} (our {ours!r}); keys: {sorted(obj)}; "
                                     f"rename keys with dataset.columns")
                v = obj.get(theirs)
                if ours in ("answers", "options"):
                    v = [v] if isinstance(v, (str, int, float)) else v
                    v = [str(a) for a in v if a is not None] if isinstance(v, list) else []
                elif ours == "image":
                    v = str(v) if v not in (None, "") else None
                elif v is not None:
                    v = str(v)
                rows[ours].append(v)
            if split_key is not None:
                if obj.get(split_key) in (None, ""):
                    raise ValueError(f"{qpath}:{lineno}: no value for dataset.split_by key {split_key!r}; keys: "
                                     f"{sorted(obj)}")
                group.append(str(obj[split_key]))
    if not rows["question"]:
        raise ValueError(f"{where}: no questions in the file")
    has = {ours for ours, vals in rows.items() if any(v is not None for v in vals)}
    table = {ours: rows[ours] for ours in keys if ours in has or DATASET_COLUMNS[ours]}
    if "image_id" not in table:  # images are files: their name under images_dir is the id
        table["image_id"] = list(rows["image"])
    table["image"] = [str(root / p) if p else None for p in rows["image"]]
    lists = ("answers", "options")
    raw = datasets.Dataset.from_dict({**table, **({"group": group} if split_key else {})}, features=datasets.Features(
        {k: datasets.List(datasets.Value("string")) if k in lists else datasets.Value("string")
         for k in [*table, *(["group"] if split_key else [])]}))
    return normalize(raw, {k: k for k in table}, where, dc.limit_images, dc.seed, cache_file=cache_file,
                     split_by="group" if split_key else "image_id")


def load_base(dc: DatasetConfig, cache_file: Path | None = None) -> datasets.Dataset:
    """The base dataset (all questions, clean images, row schema above) for ``dc.kind``."""
    if dc.kind == "easyvqa":
        return load_easyvqa("test", dc.limit_images, dc.seed)
    if dc.kind == "hf":
        return load_hf(dc, cache_file)
    if dc.kind == "folder":
        return load_folder(dc, cache_file)
    raise ValueError(f"unknown dataset kind {dc.kind!r}")


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
                  reencode_clean: bool = True, cache_file: Path | None = None) -> datasets.Dataset:
    """Router splits from any base dataset (row schema above): ``group`` values (the ``split_by`` column;
    image_id when the base has no group column) are divided (seeded) among ``splits`` (name -> fraction)
    so no group is in two splits, and each image gets one seeded
    degradation (kind drawn with ``degradations`` weights, severity uniform in ``severity``).

    Degraded images are stored as PNG; a clean image keeps its original bytes unless
    ``reencode_clean``. Written to ``cache_file`` when given, else kept in memory. Raises ValueError
    when a split gets no image, and naming the sample when an image cannot be decoded.
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

    def add(batch):
        images, splits_, kinds, sevs = [], [], [], []
        for sid, img_id, raw in zip(batch["sample_id"], batch["image_id"], batch["image"]):
            kind, sev = degr_of[img_id]
            if img_id not in cache:
                try:
                    image = decoder.decode_example(raw)
                except Exception as e:  # noqa: BLE001 - any decoder failure means the same to the user
                    raise ValueError(f"sample {sid!r}: image {raw.get('path') or '(bytes)'} cannot be decoded "
                                     f"({type(e).__name__}: {e}); replace it with a valid image or drop the "
                                     "question from the data") from None
                if kind == "clean" and not reencode_clean:
                    data = raw["bytes"] if raw["bytes"] is not None else Path(raw["path"]).read_bytes()
                    cache[img_id] = {"bytes": data, "path": None}
                else:
                    rng_img = np.random.default_rng(_image_seed(img_id) + 7919 * seed)
                    cache[img_id] = _png(degrade.apply(image, kind, sev, rng_img))
                if len(cache) > 512:
                    cache.popitem(last=False)
            images.append(cache[img_id])
            splits_.append(split_of[group_of[sid]])
            kinds.append(kind)
            sevs.append(sev)
        return {"image": images, "split": splits_, "degradation": kinds, "severity": sevs}

    base = base.cast_column("image", datasets.Image(decode=False))
    features = datasets.Features({**base.features, "image": datasets.Image(),
                                  "split": datasets.Value("string"), "degradation": datasets.Value("string"),
                                  "severity": datasets.Value("float32")})
    fingerprint = hashlib.sha1(json.dumps([base._fingerprint, splits, degradations, list(severity), seed,
                                           reencode_clean], default=str).encode()).hexdigest()
    return base.map(add, batched=True, batch_size=256, desc="degrading router splits", features=features,
                    new_fingerprint=fingerprint, load_from_cache_file=False, keep_in_memory=cache_file is None,
                    cache_file_name=str(cache_file) if cache_file else None)


# dataset keys added after run folders were first written, with the value an older folder was built with
_ADDED_KEYS = {"scorer": "vqa", "numeric_rel_tol": 1e-4, "split_by": "image_id"}


def build_router_dataset(cfg: Config) -> datasets.Dataset:
    """Router splits (``router_splits``) from the config's base dataset (``load_base``).
    Cached with ``save_to_disk`` under ``data/<name>/router_dataset``; a rerun loads the cache.
    """
    out = cfg.path("data") / "router_dataset"
    stamp = cfg.path("data") / "dataset_config.json"
    wanted = json.loads(json.dumps(dataclasses.asdict(cfg.dataset)))
    if (out / "dataset_info.json").exists():
        old = json.loads(stamp.read_text()) if stamp.exists() else wanted
        changed = sorted(k for k in wanted if old.get(k, _ADDED_KEYS.get(k)) != wanted[k])
        if changed:
            raise ValueError(f"{cfg.path('data')} was built from another dataset config (changed: {changed}); its "
                             "outcomes and features belong to that data. Delete that folder or use a new run name.")
        return datasets.load_from_disk(str(out))
    dc = cfg.dataset
    tmp = out.parent / ".router_dataset.build"  # intermediate Arrow files, not the user's HF cache
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        base = load_base(dc, tmp / "base.arrow")
        ds = router_splits(base, dc.splits, dc.degradations, dc.severity, dc.seed,
                           reencode_clean=dc.kind == "easyvqa", cache_file=tmp / "splits.arrow")
        ds.save_to_disk(str(out))
        stamp.write_text(json.dumps(wanted, indent=2))
        n_images = len(set(ds["image_id"]))
        del base, ds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("router dataset: %d-image %s dataset -> %s", n_images, dc.kind, out)
    return datasets.load_from_disk(str(out))
