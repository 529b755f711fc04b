"""Bringing your own data: any dataset ``datasets.load_dataset`` reads (kind "hf") or a folder of images
with a JSONL of questions (kind "folder") normalised to the row schema of ``data`` (its module
docstring), every row checked in one pass, and the rule for bad rows (``settle_bad_rows``).

Split out of ``data`` (which re-exports ``normalize``, ``load_hf``, ``load_folder``, ``FOLDER_KEYS``,
``BASE_COLUMNS``, ``BAD_ROWS`` and ``settle_bad_rows``); ``data.load_base`` chooses the loader by kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from .config import DATASET_COLUMNS, DatasetConfig
from .core.features import check_question, question_type

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


def _ids(ds: datasets.Dataset, columns: dict, ours: str, where: str, bad: dict) -> list[str]:
    """The ``ours`` column as strings; a row without a value is recorded in ``bad`` (row -> reason) and
    gets the id "row <i>"."""
    values = _column(ds, columns[ours], where)
    for i, v in enumerate(values):
        if (v is None or str(v) == "") and i not in bad:
            bad[i] = f"no {ours} (column {columns[ours]!r}); give every row one, or leave {ours} out of columns"
    return [f"row {i}" if v is None or str(v) == "" else str(v) for i, v in enumerate(values)]


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


def _image_value(value, spec: str) -> dict:
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
        raise ValueError(f"no image in column {spec!r} (got {type(value).__name__}); give every question an "
                         "image (file path, bytes or an Image feature), or drop it")
    if out["bytes"] is None and "://" not in out["path"] and not Path(out["path"]).is_file():
        raise ValueError(f"image file {out['path']} not found; fix the path (a folder dataset's image paths are "
                         "relative to its images_dir) or drop the question")
    return out


def _check_image(img: dict) -> str | None:
    """Why an image cannot be used (opened and verified: cheap, no full decode), or None."""
    try:
        src = io.BytesIO(img["bytes"]) if img["bytes"] is not None else img["path"]
        with Image.open(src) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any PIL failure means the same thing to the user
        return (f"image {img['path'] or '(bytes)'} cannot be read ({type(e).__name__}: {e}); replace the file "
                "with a valid image or drop the question")
    return None


BAD_ROWS = "bad_rows.jsonl"  # data/<run>/: every row the data stage could not use, with its reason


def settle_bad_rows(bad: list[dict], on_bad_row: str, where: str, path: Path | None = None) -> None:
    """Act on the rows a data stage pass found unusable (dicts with sample_id, row, reason): write them
    to ``path`` (JSON lines; a stale file is removed when there are none), then with ``on_bad_row``
    "error" raise ValueError listing every one (the first 50 in the message, all in the file), with
    "skip" log how many were skipped."""
    if path is not None:
        path.unlink(missing_ok=True)
        if bad:
            path.write_text("".join(json.dumps(b) + "\n" for b in bad))
    if not bad:
        return
    lines = "\n".join(f"  sample {b['sample_id']!r}: {b['reason']}" for b in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    listed = f" (all of them in {path})" if path is not None else ""
    if on_bad_row == "error":
        raise ValueError(f"{where}: {len(bad)} bad rows{listed}; fix them, or set dataset.on_bad_row: skip to "
                         f"drop them:\n{lines}{more}")
    log.warning("%s: skipped %d bad rows (dataset.on_bad_row: skip)%s:\n%s%s", where, len(bad), listed, lines, more)


def _image_key(img: dict) -> str:
    """An image id for data without one: the file name, else a hash of the bytes."""
    if img["path"]:
        return Path(img["path"]).name
    return hashlib.sha1(img["bytes"]).hexdigest()[:16]


def _relative_name(path: str, root: Path) -> str:
    """An image path as written in a questions file, as an id that is the same however it is written:
    normalised ("./a/../b.png" -> "b.png"), and relative to ``root`` when it is an absolute path inside it."""
    p = Path(os.path.normpath(path))
    if p.is_absolute():
        with contextlib.suppress(ValueError):
            p = p.relative_to(Path(os.path.normpath(root.absolute())))
    return p.as_posix()


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
              cache_file: Path | None = None, split_by: str = "image_id", on_bad_row: str = "error",
              bad: list | None = None, row_errors: dict | None = None) -> datasets.Dataset:
    """Base dataset (the row schema above) from ``raw``, whose columns ``columns`` maps (our name ->
    theirs, dotted for nested fields; required: image (unless ``images``) and question; answers and
    options optional).

    sample_id defaults to ``q<row>``, image_id to the image's file name or a hash of its bytes, and
    question_type to ``features.question_type``. ``split_by``: "image_id" or a column of ``raw`` whose
    value is each row's ``group``. ``limit_images`` keeps a seeded subset of images. ``images`` (with
    ``image_columns`` {image_id, image}) is a second dataset holding the images, joined on image_id.
    Written to ``cache_file`` when given, else kept in memory. Questions are read by
    ``features.check_question`` (the device's rule); an empty one, or one with no reference answer, is
    kept and counted in a warning.

    Every row is checked in one pass; a bad one (no or a duplicate id, no image, an image file that is
    missing or cannot be read, a question the rule refuses, a row of ``row_errors`` (row -> reason, e.g.
    a malformed JSONL line)) is left out of the result. With ``bad`` (a list) the bad rows are appended
    to it as {"sample_id", "row", "reason"} for the caller to settle (``settle_bad_rows``); without it
    they are settled here by ``on_bad_row`` ("error": ValueError listing every one; "skip": a warning).

    Raises ValueError naming the column for a missing column (with the available ones).
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
    rows_bad: dict[int, str] = dict(row_errors or {})  # raw row -> why it cannot be used
    sample_ids = (_ids(raw, columns, "sample_id", where, rows_bad) if "sample_id" in columns
                  else [f"q{i}" for i in range(n)])
    seen: dict[str, int] = {}
    for i, s in enumerate(sample_ids):
        if s in seen and i not in rows_bad:
            rows_bad[i] = (f"sample_id {s!r} (column {columns.get('sample_id')!r}) is also on row {seen[s]} "
                           "(rows count from 0); give every question its own id (the outcome files name them)")
        seen.setdefault(s, i)
    if "image_id" in columns:
        image_ids = _ids(raw, columns, "image_id", where, rows_bad)
    else:  # one pass over the images (bytes only, no decoding)
        image_ids, top = [], img_spec.split(".")[0]
        for batch in raw.select_columns([top]).iter(batch_size=256):
            for v in batch[top]:
                i = len(image_ids)
                try:
                    image_ids.append(_image_key(_image_value(v, img_spec)))
                except ValueError as e:
                    rows_bad.setdefault(i, str(e))
                    image_ids.append(f"row {i}")
    groups = image_ids if split_by == "image_id" else [str(v) for v in raw[split_by]]

    lookup = None
    if images is not None:
        icols = {"image_id": "image_id", "image": "image", **(image_columns or {})}
        _check_columns(images, icols, f"{where} (images)")
        if isinstance(images.features.get(icols["image"]), datasets.Image):
            images = images.cast_column(icols["image"], datasets.Image(decode=False))
        lookup = {str(v): j for j, v in enumerate(_column(images, icols["image_id"], where))}
        for i, iid in enumerate(image_ids):
            if iid not in lookup:
                rows_bad.setdefault(i, f"image id {iid!r} is not in the images dataset (column "
                                       f"{icols['image_id']!r}); fix the ids or drop the question")
    good = [i for i in range(n) if i not in rows_bad]
    keep = [good[j] for j in _subset_images([image_ids[i] for i in good], limit_images, seed)]
    sub = raw.select(keep) if len(keep) < n else raw
    found: dict[int, str] = {}  # rows found bad while converting (image, question)
    checked: dict[str, str | None] = {}  # image id -> why it cannot be used, or None

    def convert(batch, idx):
        rows = [keep[i] for i in idx]
        if lookup is not None:
            cells = images[[lookup[image_ids[i]] for i in rows]][icols["image"]]
            spec = icols["image"]
        else:
            cells, spec = batch[img_spec.split(".")[0]], img_spec
        qspec = columns["question"]
        questions = ["" if q is None else str(q) for q in
                     (_dig(v, qspec.split(".")[1:], qspec, where) for v in batch[qspec.split(".")[0]])]
        ok, imgs, texts = [], [], []
        for k, (row, cell, q) in enumerate(zip(rows, cells, questions)):
            try:
                img = _image_value(cell, spec)
                if image_ids[row] not in checked:
                    checked[image_ids[row]] = _check_image(img)
                if checked[image_ids[row]]:
                    raise ValueError(checked[image_ids[row]])
                text = check_question(q)[0]
            except ValueError as e:
                found[row] = str(e)
                continue
            ok.append(k)
            imgs.append(img)
            texts.append(text)

        def lists(ours):
            spec = columns.get(ours)
            if spec is None:
                return [[] for _ in ok]
            cells_ = batch[spec.split(".")[0]]
            return [_answers(_dig(cells_[k], spec.split(".")[1:], spec, where), spec, where, ours) for k in ok]

        answers, options = lists("answers"), lists("options")
        if "question_type" in columns:
            tspec = columns["question_type"]
            given = [_dig(batch[tspec.split(".")[0]][k], tspec.split(".")[1:], tspec, where) for k in ok]
        else:
            given = [None] * len(ok)
        qtypes = [str(t) if t not in (None, "") else question_type(q) for t, q in zip(given, texts)]
        ids = [rows[k] for k in ok]
        return {"sample_id": [sample_ids[i] for i in ids], "image_id": [image_ids[i] for i in ids], "image": imgs,
                "question": texts, "answers": answers, "options": options, "question_type": qtypes,
                "group": [groups[i] for i in ids]}

    fingerprint = hashlib.sha1(json.dumps([sub._fingerprint, columns, image_columns, len(keep), where, split_by,
                                           images._fingerprint if images is not None else None,
                                           sorted(rows_bad)], default=str).encode()).hexdigest()
    out = sub.map(convert, batched=True, batch_size=256, with_indices=True, remove_columns=sub.column_names,
                  features=_BASE_FEATURES, new_fingerprint=fingerprint, load_from_cache_file=False,
                  keep_in_memory=cache_file is None, cache_file_name=str(cache_file) if cache_file else None,
                  desc="reading questions")
    rows_bad.update(found)
    found_bad = [{"sample_id": sample_ids[i], "row": i, "reason": rows_bad[i]} for i in sorted(rows_bad)]
    if n and len(found_bad) == n:  # nothing to skip to: say so, with the first reasons
        reasons = "\n".join(f"  sample {b['sample_id']!r}: {b['reason']}" for b in found_bad[:5])
        raise ValueError(f"{where}: none of its {n} rows can be used; the first:\n{reasons}")
    if bad is None:
        settle_bad_rows(found_bad, on_bad_row, where)
    else:
        bad.extend(found_bad)
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


def load_hf(dc: DatasetConfig, cache_file: Path | None = None, bad: list | None = None) -> datasets.Dataset:
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
                     dc.split_by, dc.on_bad_row, bad)


def load_folder(dc: DatasetConfig, cache_file: Path | None = None, bad: list | None = None) -> datasets.Dataset:
    """Base dataset for kind "folder": ``questions`` (JSONL: image file name under ``images_dir``,
    question, optional answers (a list or one string), options (a list), question_id and question_type;
    ``columns`` renames these keys; ``dataset.split_by`` may name any other key) read into a
    ``datasets.Dataset`` with the image files as an Image column. A line that is not a JSON object or
    lacks a required key is a bad row (``normalize``), named by its line number."""
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
    line_errors: dict[int, str] = {}  # row -> why its line cannot be used (the row stays, empty, so ids keep)
    first_line: dict[str, int] = {}  # question id -> the line it is first on
    with open(qpath, encoding="utf-8-sig") as f:  # -sig: a byte-order mark some editors write is not data
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except ValueError as e:  # json.JSONDecodeError included
                line_errors[len(group)] = (f"{qpath}:{lineno}: not a JSON object ({e}); the questions file is JSON "
                                           "lines, one object per question")
                obj = {}
            missing = [t for o, t in keys.items() if t not in obj and DATASET_COLUMNS[o]]
            if missing and obj:
                line_errors[len(group)] = (f"{qpath}:{lineno}: no key {missing[0]!r} (our "
                                           f"{next(o for o, t in keys.items() if t == missing[0])!r}); keys: "
                                           f"{sorted(obj)}; rename keys with dataset.columns")
            if split_key is not None and obj and obj.get(split_key) in (None, "") and len(group) not in line_errors:
                line_errors[len(group)] = (f"{qpath}:{lineno}: no value for dataset.split_by key {split_key!r}; "
                                           f"keys: {sorted(obj)}")
            qid = obj.get(keys["sample_id"])
            if qid not in (None, "") and len(group) not in line_errors:
                if str(qid) in first_line:
                    line_errors[len(group)] = (f"{qpath}:{lineno}: question id {qid!r} (key {keys['sample_id']!r}) is "
                                               f"also on line {first_line[str(qid)]}; give every question its own id")
                first_line.setdefault(str(qid), lineno)
            group.append(str(obj.get(split_key) or "") if split_key is not None else "")
            for ours, theirs in keys.items():
                v = obj.get(theirs)
                if ours in ("answers", "options"):
                    v = [v] if isinstance(v, (str, int, float)) else v
                    v = [str(a) for a in v if a is not None] if isinstance(v, list) else []
                elif ours == "image":
                    v = str(v) if v not in (None, "") else None
                elif v is not None:
                    v = str(v)
                rows[ours].append(v)
    if not rows["question"]:
        raise ValueError(f"{where}: no questions in the file")
    has = {ours for ours, vals in rows.items() if any(v is not None for v in vals)}
    table = {ours: rows[ours] for ours in keys if ours in has or DATASET_COLUMNS[ours]}
    if "image_id" not in table:  # images are files: their path under images_dir, normalised, is the id
        table["image_id"] = [_relative_name(p, root) if p else None for p in rows["image"]]
    table["image"] = [str(root / p) if p else None for p in rows["image"]]
    lists = ("answers", "options")
    raw = datasets.Dataset.from_dict({**table, **({"group": group} if split_key else {})}, features=datasets.Features(
        {k: datasets.List(datasets.Value("string")) if k in lists else datasets.Value("string")
         for k in [*table, *(["group"] if split_key else [])]}))
    return normalize(raw, {k: k for k in table}, where, dc.limit_images, dc.seed, cache_file=cache_file,
                     split_by="group" if split_key else "image_id", on_bad_row=dc.on_bad_row, bad=bad,
                     row_errors=line_errors)
