"""easy-VQA as Hugging Face ``datasets``: the clean training split for the reference models and the
degraded router splits (router-train / router-val / router-test) the router learns and is judged on.

Row schema (one row per question): ``sample_id`` str, ``image_id`` str, ``image`` PIL image,
``question`` str, ``answers`` list[str], ``question_type`` str; router splits add ``split`` str,
``degradation`` str and ``severity`` float (for analysis only, never router features).
"""

from __future__ import annotations

import io
import logging

import datasets
import numpy as np
from PIL import Image

from . import degrade
from .config import Config
from .features import question_type

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
        "question_type": [question_type(texts[i]) for i in rows],
    })
    return ds.cast_column("image", datasets.Image())


def answer_vocab() -> list[str]:
    """easy-VQA's 13 answers, in the package's order."""
    import easy_vqa

    return list(easy_vqa.get_answers())


def _png(image: Image.Image) -> dict:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def build_router_dataset(cfg: Config) -> datasets.Dataset:
    """Router splits from easy-VQA's test split: images are divided (seeded) among the splits in
    ``cfg.dataset.splits`` so no image is in two splits, and each image gets one seeded degradation
    (kind drawn with ``cfg.dataset.degradations`` weights, severity uniform in ``cfg.dataset.severity``).
    Cached with ``save_to_disk`` under ``data/<name>/router_dataset``; a rerun loads the cache.
    """
    out = cfg.path("data") / "router_dataset"
    if (out / "dataset_info.json").exists():
        return datasets.load_from_disk(str(out))
    dc = cfg.dataset
    base = load_easyvqa("test", dc.limit_images, dc.seed)
    image_ids = sorted(set(base["image_id"]), key=lambda s: int(s.rsplit("img", 1)[1]))
    rng = np.random.default_rng(dc.seed)
    order = rng.permutation(len(image_ids))
    fractions = np.array(list(dc.splits.values()), dtype=float)
    bounds = np.round(np.cumsum(fractions / fractions.sum()) * len(image_ids)).astype(int)
    split_of, degr_of = {}, {}
    for k, idx in enumerate(order):
        split_of[image_ids[idx]] = list(dc.splits)[int(np.searchsorted(bounds, k, side="right"))]
    for img in image_ids:  # one draw per image, in a fixed order, so splits and degradations are seeded
        degr_of[img] = degrade.draw(rng, dc.degradations, dc.severity)

    cache: dict[str, dict] = {}

    def add(batch):
        images, splits, kinds, sevs = [], [], [], []
        for img_id, image in zip(batch["image_id"], batch["image"]):
            kind, sev = degr_of[img_id]
            if img_id not in cache:
                seed = int(img_id.rsplit("img", 1)[1]) + 7919 * dc.seed
                cache[img_id] = _png(degrade.apply(image, kind, sev, np.random.default_rng(seed)))
            images.append(cache[img_id])
            splits.append(split_of[img_id])
            kinds.append(kind)
            sevs.append(sev)
        return {"image": images, "split": splits, "degradation": kinds, "severity": sevs}

    ds = base.map(add, batched=True, batch_size=256, desc="degrading router splits",
                  features=datasets.Features({**base.features, "split": datasets.Value("string"),
                                             "degradation": datasets.Value("string"),
                                             "severity": datasets.Value("float32")}))
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_to_disk(str(out))
    log.info("router dataset: %d questions on %d images -> %s", len(ds), len(image_ids), out)
    return datasets.load_from_disk(str(out))
