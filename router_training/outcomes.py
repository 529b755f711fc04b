"""Outcome tables: the contract between collection and every later stage.

Parquet, one row per (sample, model), under ``data/<run>/outcomes/<model>/part-*.parquet``:

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

Latency (s) and energy (J) are not stored: ``with_costs`` derives them from a deployment profile, so a
new profile needs no re-collection.
"""

from __future__ import annotations

import logging
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
    parts = sorted(out_dir.glob("part-*.parquet"))
    done = set(pd.concat([pd.read_parquet(p, columns=["sample_id"]) for p in parts])["sample_id"]) if parts else set()
    todo = [i for i, s in enumerate(ds["sample_id"]) if s not in done]
    if not todo:
        return out_dir
    backend = make_backend()
    next_part = max((int(p.stem.split("-")[1]) for p in parts), default=-1) + 1
    with tqdm(total=len(ds), initial=len(ds) - len(todo), desc=f"collect {model}", unit="q") as bar:
        for start in range(0, len(todo), batch_size):
            rows = ds.select(todo[start:start + batch_size])
            answers = _answer_batch(backend, rows["image"], rows["question"], rows["sample_id"])
            if len(answers) != len(rows):
                raise RuntimeError(f"{backend.name} returned {len(answers)} answers for {len(rows)} queries")
            table = pd.DataFrame({
                "sample_id": rows["sample_id"], "image_id": rows["image_id"], "split": rows["split"],
                "model": model, "tier": tier,
                "answer": [a.text for a in answers],
                "score": np.array([0.0 if a.error else vqa_score(a.text, refs)
                                   for a, refs in zip(answers, rows["answers"])], dtype=np.float32),
                "confidence": np.array([a.confidence for a in answers], dtype=np.float32),
                "compute_s": np.array([a.compute_s for a in answers], dtype=np.float64),
                "payload_bytes": np.array([a.payload_bytes for a in answers], dtype=np.int64),
                "error": [a.error for a in answers],
            })
            tmp = out_dir / f".part-{next_part:05d}.tmp"
            table.to_parquet(tmp, index=False)
            tmp.rename(out_dir / f"part-{next_part:05d}.parquet")  # atomic: a killed run leaves no half part
            next_part += 1
            bar.update(len(rows))
    return out_dir


def load(root: Path, models: list[str]) -> pd.DataFrame:
    """All outcome rows for ``models`` under ``root/<model>/``, in ``models`` order.
    Raises FileNotFoundError naming a model with no outcomes and ValueError on duplicate rows."""
    frames = []
    for m in models:
        parts = sorted((root / m).glob("part-*.parquet"))
        if not parts:
            raise FileNotFoundError(f"no outcomes for model {m!r} under {root / m}; run `router-train collect`")
        frames.append(pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True))
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(["sample_id", "model"])
    if dup.any():
        raise ValueError(f"duplicate outcome rows, e.g. {df[dup].iloc[0][['sample_id', 'model']].to_dict()}")
    return df


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
