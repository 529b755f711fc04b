"""Outcome tables: the contract between collection and every later stage.

Parquet, one row per (sample, model), under ``data/<run>/outcomes/<model>/``: ``part-NNNNN.parquet``
written by a single-process collection (``collect``, ``replay``) and ``part-r<rank>-NNNNN.parquet``
written by each process of a distributed one (``distributed.collect``); ``load`` merges both:

=============== ======= ==========================================================================
column          dtype   meaning
=============== ======= ==========================================================================
sample_id       string  the dataset row (``data`` module schema)
image_id        string  the image the question is about
split           string  router-train / router-val / router-test
model           string  candidate model name (config ``models[].name``)
tier            string  "edge" or "cloud"
answer          string  the model's answer ("" when it failed)
score           float32 VQA accuracy in [0, 1] (``scoring.vqa_score``); 0 when it failed
confidence      float32 the model's own probability of its answer, in [0, 1]
compute_s       float64 measured compute time for this sample (s)
payload_bytes   int64   bytes the query sends off-device (encoded image + question)
error           string  "" on success, else why the sample failed
=============== ======= ==========================================================================

Written by ``collect`` (running a model's backend) or ``replay`` (reading outcomes a user already has
from a JSONL, CSV or Parquet file). Latency (s) and energy (J) are not stored: ``with_costs`` derives
them from a deployment profile, so a new profile needs no re-collection.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .backends import Answer, Backend
from .profile import DeploymentProfile
from .scoring import vqa_score

log = logging.getLogger(__name__)

COLUMNS = ("sample_id", "image_id", "split", "model", "tier", "answer", "score", "confidence",
           "compute_s", "payload_bytes", "error")


def _answer_batch(backend: Backend, images, questions, sample_ids) -> list[Answer]:
    """The batch's answers; if the batch fails, each sample alone, so one bad sample costs one row."""
    try:
        return backend.answer(images, questions)
    except Exception as batch_error:  # noqa: BLE001 - isolate the failing sample below
        log.warning("%s: batch failed (%s); retrying its samples one by one", backend.name, batch_error)
    out = []
    for im, q, sid in zip(images, questions, sample_ids):
        try:
            out.extend(backend.answer([im], [q]))
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}"
            log.error("%s failed on sample %s: %s (recorded as score 0; fix the input and delete the "
                      "model's outcome parts to re-collect it)", backend.name, sid, msg)
            out.append(Answer("", 0.0, 0.0, 0, msg))
    return out


def collect(ds, model: str, tier: str, make_backend: Callable[[], Backend], out_dir: Path,
            batch_size: int = 64) -> Path:
    """Run model ``model`` (its backend built by ``make_backend()``, only when there is work) over dataset
    ``ds`` (rows with sample_id, image_id, split, image, question, answers) and write outcome rows to
    ``out_dir/part-NNNNN.parquet`` as it goes.

    Resumes: samples already in ``out_dir`` are skipped, so an interrupted run loses at most the batch in
    flight and never duplicates rows. Returns ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_part = _done(out_dir)
    todo = [i for i, s in enumerate(ds["sample_id"]) if s not in done]
    if not todo:
        return out_dir
    backend = make_backend()
    with tqdm(total=len(ds), initial=len(ds) - len(todo), desc=f"collect {model}", unit="q") as bar:
        for start in range(0, len(todo), batch_size):
            rows = ds.select(todo[start:start + batch_size])
            answers = _answer_batch(backend, rows["image"], rows["question"], rows["sample_id"])
            if len(answers) != len(rows):
                raise RuntimeError(f"{backend.name} returned {len(answers)} answers for {len(rows)} queries")
            _write_part(outcome_rows(rows, model, tier, answers), out_dir, next_part)
            next_part += 1
            bar.update(len(rows))
    return out_dir


def outcome_rows(rows, model: str, tier: str, answers: list[Answer]) -> pd.DataFrame:
    """Outcome rows (``COLUMNS``, documented dtypes) for ``rows`` (a mapping of column -> list with at
    least sample_id, image_id, split and answers, e.g. a ``datasets`` batch) and the backend's answers."""
    return pd.DataFrame({
        "sample_id": list(rows["sample_id"]), "image_id": list(rows["image_id"]), "split": list(rows["split"]),
        "model": model, "tier": tier,
        "answer": [a.text for a in answers],
        "score": np.array([0.0 if a.error else vqa_score(a.text, refs)
                           for a, refs in zip(answers, rows["answers"])], dtype=np.float32),
        "confidence": np.array([a.confidence for a in answers], dtype=np.float32),
        "compute_s": np.array([a.compute_s for a in answers], dtype=np.float64),
        "payload_bytes": np.array([a.payload_bytes for a in answers], dtype=np.int64),
        "error": [a.error for a in answers],
    }, columns=list(COLUMNS))


def _write_part(table: pd.DataFrame, out_dir: Path, number: int, stem: str = "part") -> None:
    """Write ``out_dir/<stem>-NNNNN.parquet`` (stem "part", or "part-r<rank>" for a distributed process)."""
    tmp = out_dir / f".{stem}-{number:05d}.tmp"
    table.to_parquet(tmp, index=False)
    tmp.rename(out_dir / f"{stem}-{number:05d}.parquet")  # atomic: a killed run leaves no half part


_PART = re.compile(r"part-(?:r(\d+)-)?(\d+)")  # part-NNNNN (one process) or part-r<rank>-NNNNN (distributed)


def parts(out_dir: Path) -> list[Path]:
    """The outcome parts in ``out_dir``, both naming schemes, in a stable order (by name)."""
    return sorted(p for p in out_dir.glob("part-*.parquet") if _PART.fullmatch(p.stem))


def next_part(out_dir: Path, rank: int | None = None) -> int:
    """The next free part number of ``part-NNNNN`` (``rank`` None) or ``part-r<rank>-NNNNN``."""
    numbers = [int(m[2]) for m in (_PART.fullmatch(p.stem) for p in parts(out_dir))
               if (m[1] is None if rank is None else m[1] is not None and int(m[1]) == rank)]
    return max(numbers, default=-1) + 1


def done_ids(out_dir: Path) -> set:
    """Sample ids already collected in ``out_dir`` (all parts, both naming schemes)."""
    found = parts(out_dir)
    return set(pd.concat([pd.read_parquet(p, columns=["sample_id"]) for p in found])["sample_id"]) if found else set()


def _done(out_dir: Path) -> tuple[set, int]:
    """Sample ids already collected in ``out_dir`` and the next ``part-NNNNN`` number."""
    return done_ids(out_dir), next_part(out_dir)


# replay: our column -> required?
REPLAY_COLUMNS = {"sample_id": True, "answer": True, "score": False, "confidence": False, "compute_s": False,
                  "payload_bytes": False}


def read_replay(path: Path | str, columns: dict | None = None) -> pd.DataFrame:
    """A per-sample outcome file (``.jsonl``/``.json`` lines, ``.csv``, ``.parquet``) as a frame with our
    column names: ``columns`` maps ours (sample_id, answer, score, confidence, compute_s,
    payload_bytes) to the file's; a name it leaves out is read from a column of the same name if there
    is one. sample_id and answer are strings; the others are numbers (NaN where empty).

    Raises FileNotFoundError, ValueError for an unknown format, a missing mapped or required column
    (naming it and the available ones), a duplicate sample_id or a value that is not a number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"replay file {path} not found")
    columns = dict(columns or {})
    unknown = set(columns) - set(REPLAY_COLUMNS)
    if unknown:
        raise ValueError(f"replay columns: unknown names {sorted(unknown)}; ours are {list(REPLAY_COLUMNS)}")
    suffix = "".join(path.suffixes[-2:]) if path.suffix in (".gz", ".bz2", ".zst", ".xz") else path.suffix
    fmt = suffix.split(".")[1].lower() if suffix else ""
    if fmt in ("jsonl", "json", "ndjson"):
        raw = pd.read_json(path, lines=True, dtype=False)
    elif fmt in ("csv", "tsv"):
        raw = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False)
    elif fmt in ("parquet", "pq"):
        raw = pd.read_parquet(path)
    else:
        raise ValueError(f"replay file {path}: unknown format {suffix!r}; use .jsonl, .csv or .parquet")
    mapping = {ours: columns.get(ours, ours) for ours in REPLAY_COLUMNS}
    for ours, theirs in mapping.items():
        if theirs not in raw.columns and (REPLAY_COLUMNS[ours] or ours in columns):
            raise ValueError(f"replay file {path}: column {theirs!r} (for our {ours!r}) not found; "
                             f"available columns: {list(raw.columns)}")
    out = pd.DataFrame(index=raw.index)
    for ours, theirs in mapping.items():
        if theirs not in raw.columns:
            continue
        col = raw[theirs]
        if ours in ("sample_id", "answer"):
            out[ours] = [("" if ours == "answer" else None) if _missing(v) else str(v) for v in col]
        else:
            values = col.where(col != "", np.nan) if col.dtype == object else col
            try:
                out[ours] = pd.to_numeric(values, errors="raise").astype(np.float64)
            except (ValueError, TypeError) as e:
                raise ValueError(f"replay file {path}: column {theirs!r} (our {ours!r}) must hold numbers "
                                 f"({e})") from None
    if out["sample_id"].isna().any():
        raise ValueError(f"replay file {path}: row {int(out['sample_id'].isna().idxmax())} has no sample_id "
                         f"(column {mapping['sample_id']!r})")
    dup = out["sample_id"].duplicated()
    if dup.any():
        raise ValueError(f"replay file {path}: sample_id {out.loc[dup, 'sample_id'].iloc[0]!r} is on more than "
                         "one row; keep one outcome per sample")
    for ours in ("score", "confidence"):
        if ours in out and not out[ours].dropna().between(0.0, 1.0).all():
            raise ValueError(f"replay file {path}: column {mapping[ours]!r} (our {ours!r}) must be in [0, 1]")
    return out.reset_index(drop=True)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def replay(ds, model: str, tier: str, path: Path | str, columns: dict | None, out_dir: Path,
           batch_size: int = 4096) -> Path:
    """Outcomes of model ``model`` read from a file of per-sample outcomes (``read_replay``: JSONL, CSV
    or Parquet; ``columns`` maps our names to the file's) instead of running it, for the rows of ``ds``
    (sample_id, image_id, split, image, question, answers), written to ``out_dir`` like ``collect``.

    score: the file's, else ``vqa_score`` of the answer against the row's answers; confidence and
    compute_s: the file's, else 0.0; payload_bytes: the file's, else ``backends.payload_bytes`` of
    the image and question. A sample the file lacks is recorded with error "not in replay file <path>"
    and score 0. Resumes like ``collect``: samples already in ``out_dir`` are skipped, so a rerun adds
    nothing. Samples in the file but not in ``ds`` are ignored. Returns ``out_dir``.
    """
    from .backends import payload_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_part = _done(out_dir)
    todo = [i for i, s in enumerate(ds["sample_id"]) if s not in done]
    if not todo:
        return out_dir
    table = read_replay(path, columns).set_index("sample_id")
    sample_ids = ds["sample_id"]
    extra = len(set(table.index) - set(sample_ids))
    if extra:
        log.info("replay %s: %d samples of %s are not in the dataset; ignored", model, extra, path)
    need_images = "payload_bytes" not in table.columns or table["payload_bytes"].isna().any()
    cols = ["sample_id", "image_id", "split", "question", "answers"] + (["image"] if need_images else [])
    image_bytes: dict[str, int] = {}  # image_id -> JPEG payload without the question
    missing = 0
    for start in range(0, len(todo), batch_size):
        rows = ds.select(todo[start:start + batch_size]).select_columns(cols)
        n = len(rows)
        rec = table.reindex(rows["sample_id"])
        present = rec["answer"].notna().to_numpy() if "answer" in rec else np.zeros(n, bool)
        missing += int((~present).sum())
        answers = rec["answer"].fillna("").astype(str).tolist()
        score = rec["score"].to_numpy(np.float64) if "score" in rec else np.full(n, np.nan)
        refs = rows["answers"]
        score = np.array([0.0 if not ok else (s if not np.isnan(s) else vqa_score(a, r))
                          for ok, s, a, r in zip(present, score, answers, refs)], dtype=np.float32)

        def num(name):
            v = rec[name].to_numpy(np.float64) if name in rec else np.full(n, np.nan)
            return np.where(present & ~np.isnan(v), v, 0.0)

        payload = rec["payload_bytes"].to_numpy(np.float64) if "payload_bytes" in rec else np.full(n, np.nan)
        pay = np.zeros(n, dtype=np.int64)
        for k, (iid, q) in enumerate(zip(rows["image_id"], rows["question"])):
            if not present[k]:
                continue
            if not np.isnan(payload[k]):
                pay[k] = int(payload[k])
                continue
            if iid not in image_bytes:  # the JPEG once per image; payload_bytes(image, q) = that + the question
                image_bytes[iid] = payload_bytes(rows[k]["image"], "")
            pay[k] = image_bytes[iid] + len(q.encode("utf-8"))
        error = [""] * n if present.all() else ["" if ok else f"not in replay file {path}" for ok in present]
        _write_part(pd.DataFrame({
            "sample_id": rows["sample_id"], "image_id": rows["image_id"], "split": rows["split"],
            "model": model, "tier": tier, "answer": [a if ok else "" for a, ok in zip(answers, present)],
            "score": score, "confidence": num("confidence").astype(np.float32),
            "compute_s": num("compute_s"), "payload_bytes": pay, "error": error,
        }), out_dir, next_part)
        next_part += 1
    if missing:
        log.error("replay %s: %d of %d samples are not in %s (recorded as errors with score 0; add them to the "
                  "file and delete %s to replay again)", model, missing, len(todo), path, out_dir)
    return out_dir


# columns that may differ between two collections of the same sample by the same model
TIMING_COLUMNS = ("compute_s",)


def load(root: Path, models: list[str]) -> pd.DataFrame:
    """All outcome rows for ``models`` under ``root/<model>/`` (parts of single-process and distributed
    collections, merged), in ``models`` order, columns ``COLUMNS``.

    A (sample, model) pair found more than once is kept once (its first part by name) when the copies
    agree on everything but timing (``TIMING_COLUMNS``); copies that disagree raise ValueError naming
    the sample and the parts holding it. Raises FileNotFoundError naming a model with no outcomes."""
    frames = []
    for m in models:
        found = parts(root / m)
        if not found:
            raise FileNotFoundError(f"no outcomes for model {m!r} under {root / m}; run `router-train collect`")
        frames.append(pd.concat([pd.read_parquet(p).assign(_part=p.name) for p in found], ignore_index=True))
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(["sample_id", "model"], keep=False)
    if dup.any():
        same = [c for c in COLUMNS if c not in TIMING_COLUMNS]
        copies = df[dup]
        conflict = copies.drop_duplicates(same).duplicated(["sample_id", "model"], keep=False)
        if conflict.any():
            sid, m = copies.drop_duplicates(same)[conflict].iloc[0][["sample_id", "model"]]
            where = sorted(copies.loc[(copies["sample_id"] == sid) & (copies["model"] == m), "_part"])
            raise ValueError(f"duplicate outcome rows that disagree: sample {sid!r} of model {m!r} is in {where} "
                             f"under {root / m}; delete the parts of the run you do not want")
        log.warning("dropped %d duplicate outcome rows (same outcome collected twice, e.g. sample %r of %r)",
                    int(df.duplicated(["sample_id", "model"]).sum()), copies.iloc[0]["sample_id"],
                    copies.iloc[0]["model"])
        df = df.drop_duplicates(["sample_id", "model"], keep="first")
    return df[list(COLUMNS)].reset_index(drop=True)


def with_costs(df: pd.DataFrame, profile: DeploymentProfile) -> pd.DataFrame:
    """A copy of an outcome table with ``latency_s`` (s) and ``energy_j`` (J) under ``profile``."""
    lat, en = profile.cost(df["tier"].to_numpy(), df["compute_s"].to_numpy(), df["payload_bytes"].to_numpy())
    return df.assign(latency_s=lat, energy_j=en)


def matrix(df: pd.DataFrame, models: list[str], column: str, sample_ids=None) -> np.ndarray:
    """(n_samples, n_models) float64 array of ``column``, rows in ``sample_ids`` order (default: sorted).
    Raises ValueError when a (sample, model) pair is missing."""
    wide = df.pivot(index="sample_id", columns="model", values=column)
    wide = wide.reindex(index=sample_ids if sample_ids is not None else sorted(wide.index), columns=models)
    if wide.isna().any().any():
        missing = wide.isna().stack()
        sid, m = missing[missing].index[0]
        raise ValueError(f"no outcome for sample {sid!r} and model {m!r}; re-run `router-train collect`")
    return np.ascontiguousarray(wide.to_numpy(dtype=np.float64))
