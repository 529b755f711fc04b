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
score           float32 the grade in [0, 1]: the dataset's scorer (``scoring.score``; VQA accuracy by
                        default) or the replay file's own grade; 0 when it failed
confidence      float32 the model's own probability of its answer, in [0, 1]; NaN when unknown
compute_s       float64 compute time for this sample (s): measured, or the model config's compute_s
payload_bytes   int64   bytes the query sends off-device (encoded image + question)
error           string  "" on success, else why the sample failed
=============== ======= ==========================================================================

Written by ``collect`` (running a model's backend) or ``replay`` (reading outcomes a user already has
from a JSONL, CSV or Parquet file). Latency (s) and energy (J) are not stored: ``with_costs`` derives
them from a deployment profile, so a new profile needs no re-collection.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .backends import Answer, Backend
from .core.profile import DeploymentProfile

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


def _grade(answer: str, answers: list[str], options: list[str], scorer: str, rel_tol: float) -> float:
    from .core.scoring import score

    return score(answer, answers, scorer, options, rel_tol)


def grader(scorer: str = "vqa", rel_tol: float = 1e-4) -> Callable[[str, list, list], float]:
    """``grade(answer, answers, options) -> float`` in [0, 1] with ``scoring.score`` under ``scorer``
    (picklable, for distributed collection)."""
    return functools.partial(_grade, scorer=scorer, rel_tol=rel_tol)


def check_gradable(ds, model: str) -> None:
    """Raise ValueError naming the samples of ``ds`` without a reference answer: a model that is run
    (not replayed with grades) can only be scored against answers."""
    missing = [sid for sid, a in zip(ds["sample_id"], ds["answers"]) if not a]
    if missing:
        raise ValueError(f"model {model!r} is run by its backend, but {len(missing)} questions have no reference "
                         f"answer to score it against (e.g. {missing[:3]}); give them answers, or replay this "
                         "model's graded outcomes (backend replay with a score or correct column)")


def collect(ds, model: str, tier: str, make_backend: Callable[[], Backend], out_dir: Path,
            batch_size: int = 64, grade: Callable | None = None) -> Path:
    """Run model ``model`` (its backend built by ``make_backend()``, only when there is work) over dataset
    ``ds`` (rows with sample_id, image_id, split, image, question, answers, options) and write outcome
    rows to ``out_dir/part-NNNNN.parquet`` as it goes, graded by ``grade(answer, answers, options)``
    (default VQA accuracy).

    Resumes: samples already in ``out_dir`` are skipped, so an interrupted run loses at most the batch in
    flight and never duplicates rows. Raises ValueError (``check_gradable``) before running anything when
    a question has no reference answer. Returns ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_part = _done(out_dir)
    todo = [i for i, s in enumerate(ds["sample_id"]) if s not in done]
    if not todo:
        return out_dir
    check_gradable(ds.select(todo), model)
    backend = make_backend()
    with tqdm(total=len(ds), initial=len(ds) - len(todo), desc=f"collect {model}", unit="q") as bar:
        for start in range(0, len(todo), batch_size):
            rows = ds.select(todo[start:start + batch_size])
            answers = _answer_batch(backend, rows["image"], rows["question"], rows["sample_id"])
            if len(answers) != len(rows):
                raise RuntimeError(f"{backend.name} returned {len(answers)} answers for {len(rows)} queries")
            _write_part(outcome_rows(rows, model, tier, answers, grade), out_dir, next_part)
            next_part += 1
            bar.update(len(rows))
    return out_dir


def outcome_rows(rows, model: str, tier: str, answers: list[Answer], grade: Callable | None = None) -> pd.DataFrame:
    """Outcome rows (``COLUMNS``, documented dtypes) for ``rows`` (a mapping of column -> list with at
    least sample_id, image_id, split and answers, e.g. a ``datasets`` batch; options when the scorer
    uses them) and the backend's answers, graded by ``grade(answer, answers, options)`` (default VQA
    accuracy, ``scoring.score``)."""
    grade = grade or grader()
    options = rows["options"] if "options" in rows else [[]] * len(answers)
    return pd.DataFrame({
        "sample_id": list(rows["sample_id"]), "image_id": list(rows["image_id"]), "split": list(rows["split"]),
        "model": model, "tier": tier,
        "answer": [a.text for a in answers],
        "score": np.array([0.0 if a.error else grade(a.text, refs, opts)
                           for a, refs, opts in zip(answers, rows["answers"], options)], dtype=np.float32),
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


# replay: our column -> required? (besides sample_id, a replay file needs an answer or a grade)
REPLAY_COLUMNS = {"sample_id": True, "answer": False, "score": False, "correct": False, "confidence": False,
                  "compute_s": False, "payload_bytes": False}
_EMPTY = {"", "nan", "null", "none", "na", "n/a"}  # a number cell holding one of these is empty (unknown)
_TRUE, _FALSE = {"true", "1", "yes", "y", "t", "correct"}, {"false", "0", "no", "n", "f", "incorrect", "wrong"}


@functools.lru_cache(maxsize=4)
def _read_file(path: str, mtime_ns: int) -> pd.DataFrame:
    """The raw table of an outcome file, read once per (path, modification time): a long file holding
    every model's rows is read once for all of them."""
    p = Path(path)
    suffix = "".join(p.suffixes[-2:]) if p.suffix in (".gz", ".bz2", ".zst", ".xz") else p.suffix
    fmt = suffix.split(".")[1].lower() if suffix else ""
    if fmt in ("jsonl", "json", "ndjson"):
        try:
            return pd.read_json(p, lines=True, dtype=False, encoding="utf-8-sig")
        except ValueError as e:
            raise ValueError(_bad_json_line(p) or f"replay file {p}: not JSON lines ({e})") from None
    if fmt in ("csv", "tsv"):
        return pd.read_csv(p, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False)
    if fmt in ("parquet", "pq"):
        return pd.read_parquet(p)
    raise ValueError(f"replay file {p}: unknown format {suffix!r}; use .jsonl, .csv or .parquet")


def _bad_json_line(path: Path) -> str | None:
    """'<path>:<line>: ...' for the first line of a JSON-lines file that is not a JSON object, or None."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                return f"replay file {path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line"
            if not isinstance(obj, dict):
                return f"replay file {path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
    return None


def _row(raw: pd.DataFrame, label, sample_column: str) -> str:
    """'sample <id> (data row <n>)' for a row of a raw replay table: how an error names a row. Data rows
    count from 1 in file order without a CSV header or blank lines (so data row n is line n of a JSONL
    file without blank lines, line n + 1 of a CSV file)."""
    sid = raw.at[label, sample_column] if sample_column in raw.columns else None
    return f"sample {sid!r} (data row {label + 1})" if not _missing(sid) else f"data row {label + 1}"


def _booleans(col: pd.Series, where: str, name=lambda label: f"data row {label + 1}") -> np.ndarray:
    """A grade column (bool, 0/1, "true"/"false", "yes"/"no"; empty = unknown) as float64 1.0 / 0.0 / NaN.
    Raises ValueError for any other value, naming its row by ``name(index label)``."""
    out = np.full(len(col), np.nan)
    for i, (label, v) in enumerate(col.items()):
        if _missing(v) or v == "":
            continue
        if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1)):
            out[i] = float(v)
            continue
        t = str(v).strip().lower()
        if t not in _TRUE | _FALSE:
            raise ValueError(f"{where}: value {v!r} of {name(label)} is not a grade; use true/false, 1/0 or yes/no")
        out[i] = float(t in _TRUE)
    return out


def read_replay(path: Path | str, columns: dict | None = None, model_column: str | None = None,
                model_value: str | None = None) -> pd.DataFrame:
    """A per-sample outcome file (``.jsonl``/``.json`` lines, ``.csv``, ``.parquet``) as a frame with our
    column names: ``columns`` maps ours (``REPLAY_COLUMNS``: sample_id, answer, score, correct,
    confidence, compute_s, payload_bytes) to the file's; a name it leaves out is read from a column of
    the same name if there is one. With ``model_column``, the file holds every model's rows (long
    format) and only those whose ``model_column`` equals ``model_value`` are read. sample_id and answer
    are strings; ``correct`` (a boolean grade) becomes ``score`` 1.0 / 0.0 where the file has no score;
    the others are float64 (NaN where empty or absent).

    Raises FileNotFoundError, ValueError for an unknown format, a missing mapped or required column
    (naming it and the available ones), no rows for ``model_value`` (naming the values found), a file
    with neither answers nor grades, a duplicate sample_id or a value that is not a number or grade."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"replay file {path} not found")
    columns = dict(columns or {})
    unknown = set(columns) - set(REPLAY_COLUMNS)
    if unknown:
        raise ValueError(f"replay columns: unknown names {sorted(unknown)}; ours are {list(REPLAY_COLUMNS)}")
    raw = _read_file(str(path.resolve()), path.stat().st_mtime_ns)
    where = f"replay file {path}"
    if model_column is not None:
        if model_column not in raw.columns:
            raise ValueError(f"{where}: model_column {model_column!r} not found; available columns: {list(raw.columns)}")
        raw = raw[raw[model_column].astype(str) == str(model_value)]
        if raw.empty:
            found = sorted(map(str, _read_file(str(path.resolve()), path.stat().st_mtime_ns)[model_column].unique()))
            raise ValueError(f"{where}: no rows with {model_column} == {model_value!r}; the file has {found[:20]} "
                             "(set the model's name or options.model_value to one of them)")
        where += f" ({model_column} {model_value!r})"
    mapping = {ours: columns.get(ours, ours) for ours in REPLAY_COLUMNS}
    for ours, theirs in mapping.items():
        if theirs not in raw.columns and (REPLAY_COLUMNS[ours] or ours in columns):
            raise ValueError(f"{where}: column {theirs!r} (for our {ours!r}) not found; "
                             f"available columns: {list(raw.columns)}")
    if not any(mapping[k] in raw.columns for k in ("answer", "score", "correct")):
        raise ValueError(f"{where}: no answer, score or correct column (columns: {list(raw.columns)}); map one "
                         "with options.columns, e.g. {correct: is_correct} or {answer: prediction}")

    def name(label) -> str:
        return _row(raw, label, mapping["sample_id"])

    out = pd.DataFrame(index=raw.index)
    for ours, theirs in mapping.items():
        if theirs not in raw.columns:
            continue
        col = raw[theirs]
        if ours in ("sample_id", "answer"):
            out[ours] = [None if _missing(v) else str(v) for v in col]
        elif ours == "correct":
            out[ours] = _booleans(col, f"{where}: column {theirs!r} (our 'correct')", name)
        else:
            values = (col if pd.api.types.is_numeric_dtype(col)
                      else col.mask(col.astype(str).str.strip().str.lower().isin(_EMPTY)))
            numbers = pd.to_numeric(values, errors="coerce")  # empty cells: NaN, unknown
            wrong = numbers.isna() & values.notna()
            if wrong.any():
                label = wrong.idxmax()
                raise ValueError(f"{where}: column {theirs!r} (our {ours!r}) must hold numbers; {name(label)} has "
                                 f"{values[label]!r}")
            out[ours] = numbers.astype(np.float64)
    if out["sample_id"].isna().any():
        raise ValueError(f"{where}: data row {out['sample_id'].isna().idxmax() + 1} has no sample_id "
                         f"(column {mapping['sample_id']!r})")
    copies = out["sample_id"].duplicated(keep=False)
    if copies.any():  # the same outcome twice is dropped; two different outcomes of one sample are an error
        differ = out[copies].astype(str).drop_duplicates().duplicated("sample_id", keep=False)
        if differ.any():
            sid = out[copies].astype(str).drop_duplicates()[differ]["sample_id"].iloc[0]
            rows = (out.index[out["sample_id"] == sid] + 1).tolist()
            hint = "" if model_column else " (a file of several models needs model_column)"
            raise ValueError(f"{where}: sample {sid!r} has different outcomes on data rows {rows}; keep one outcome "
                             f"per sample{hint}")
        log.warning("%s: dropped %d repeated rows (the same outcome twice, e.g. sample %r)", where,
                    int(out["sample_id"].duplicated().sum()), out.loc[copies, "sample_id"].iloc[0])
        out = out.drop_duplicates("sample_id")
    for ours in ("score", "confidence"):
        if ours in out:
            outside = ~out[ours].between(0.0, 1.0) & out[ours].notna()
            if outside.any():
                label = outside.idxmax()
                pct = " (it looks like a percentage: divide by 100)" if out[ours].max() <= 100 else ""
                raise ValueError(f"{where}: column {mapping[ours]!r} (our {ours!r}) must be in [0, 1]; "
                                 f"{name(label)} has {out.at[label, ours]:g}{pct}")
    if "correct" in out:
        out["score"] = out["score"].fillna(out["correct"]) if "score" in out else out["correct"]
        out = out.drop(columns="correct")
    return out.reset_index(drop=True)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def image_payloads(ds, image_ids: set | None = None) -> dict[str, int]:
    """Bytes of each image as a cloud request sends it (``backends.payload_bytes`` without the question:
    JPEG at quality 90), by image_id, computed once per image (for ``image_ids`` only when given)."""
    from .backends import payload_bytes

    out: dict[str, int] = {}
    ids = ds["image_id"]
    first = {}
    for i, iid in enumerate(ids):
        if iid not in first and (image_ids is None or iid in image_ids):
            first[iid] = i
    if not first:
        return out
    rows = ds.select(sorted(first.values())).select_columns(["image_id", "image"])
    for r in tqdm(rows, desc="payload bytes", unit="img", total=len(rows)):
        out[r["image_id"]] = payload_bytes(r["image"], "")
    return out


def replay(ds, model: str, tier: str, path: Path | str, columns: dict | None, out_dir: Path,
           batch_size: int = 4096, model_column: str | None = None, model_value: str | None = None,
           compute_s: float | None = None, grade: Callable | None = None,
           image_payload: Callable[[set], dict] | None = None) -> Path:
    """Outcomes of model ``model`` read from a file of per-sample outcomes (``read_replay``: JSONL, CSV
    or Parquet; ``columns`` maps our names to the file's; ``model_column`` / ``model_value`` select this
    model's rows of a long file; ``model_value`` defaults to ``model``) instead of running it, for the rows of ``ds`` (sample_id, image_id,
    split, image, question, answers, options), written to ``out_dir`` like ``collect``.

    score: the file's grade (score, else correct), else ``grade(answer, answers, options)`` (default
    VQA accuracy, ``scoring.score``); confidence: the file's, else NaN (unknown: baselines that need it
    are left out); compute_s: the file's, else ``compute_s`` (the model config's, s); payload_bytes: the
    file's, else the question's UTF-8 bytes plus ``image_payload(image_ids)[image_id]`` (the image's
    bytes, computed once per image for all models; default ``image_payloads(ds, ...)``). A sample the
    file lacks is recorded with error "not in replay file <path>", score 0, its payload and a typical
    compute time (``compute_s``, else the median of the file's), so it costs what an attempt costs; a
    median compute time above 60 s gets a warning (milliseconds given as seconds).

    Before writing anything, raises ValueError naming the model when it has no compute time (neither in
    the file nor ``compute_s``), when no sample of ``ds`` is in the file (showing ids of both), and naming
    the samples when a sample has no grade and no reference
    answer to score it against (or, with ``grade`` None and the "given" scorer, no grade). Resumes like
    ``collect``: samples already in ``out_dir`` are skipped. Samples in the file but not in ``ds`` are
    ignored. Returns ``out_dir``."""
    grade = grade or grader()
    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_part = _done(out_dir)
    todo = [i for i, s in enumerate(ds["sample_id"]) if s not in done]
    if not todo:
        return out_dir
    table = read_replay(path, columns, model_column, model if model_value is None else model_value).set_index("sample_id")
    cols = [c for c in ("sample_id", "image_id", "split", "question", "answers", "options") if c in ds.column_names]
    rows = ds.select_columns(cols).select(todo).to_dict()
    n = len(todo)
    rows.setdefault("options", [[] for _ in range(n)])
    extra = len(set(table.index) - set(ds["sample_id"]))
    if extra:
        log.info("replay %s: %d samples of %s are not in the dataset; ignored", model, extra, path)
    rec = table.reindex(rows["sample_id"])
    present = np.isin(np.asarray(rows["sample_id"], dtype=object), table.index.to_numpy())
    if not present.any():
        raise ValueError(f"replay {model}: none of the {n} dataset samples is in {path}: the ids differ (dataset "
                         f"{rows['sample_id'][:3]}, file {table.index[:3].tolist()}); map outcomes.columns.sample_id "
                         "and dataset.columns.sample_id to the same ids")
    given = rec["score"].to_numpy(np.float64) if "score" in rec else np.full(n, np.nan)
    answers = rec["answer"].fillna("").astype(str).tolist() if "answer" in rec else [""] * n
    ungradable = [rows["sample_id"][k] for k in range(n) if present[k] and np.isnan(given[k]) and not rows["answers"][k]]
    if ungradable:
        raise ValueError(f"replay {model}: {len(ungradable)} samples have neither a grade in {path} nor a reference "
                         f"answer to score the answer against (e.g. {ungradable[:3]}); add a score or correct "
                         "column for them, or answers in the questions file")
    comp = rec["compute_s"].to_numpy(np.float64) if "compute_s" in rec else np.full(n, np.nan)
    lacking = int((present & np.isnan(comp)).sum())
    if lacking and compute_s is None:
        raise ValueError(f"model {model!r}: {lacking} of its outcomes in {path} have no compute time (column "
                         f"{(columns or {}).get('compute_s', 'compute_s')!r} absent or empty) and the config gives "
                         "none: set models[].compute_s (s per query) with compute_source (where the figure comes "
                         "from, e.g. a published throughput or your own measurement)")
    if lacking:
        log.info("replay %s: compute time of %d samples from the config (%.4g s)", model, lacking, compute_s)
    comp = np.where(np.isnan(comp), np.nan if compute_s is None else compute_s, comp)  # the config's where none
    typical = float(np.median(comp[present]))  # every sample in the file has one now (else raised above)
    if typical > 60.0:
        log.warning("replay %s: median compute time %.4g s per query; if %s holds milliseconds, convert it to "
                    "seconds", model, typical, path)
    try:
        score = np.array([0.0 if not ok else (g if not np.isnan(g) else grade(a, refs, opts))
                          for ok, g, a, refs, opts in zip(present, given, answers, rows["answers"], rows["options"])],
                         dtype=np.float32)
    except ValueError as e:  # the "given" scorer and an answer without a grade
        raise ValueError(f"replay {model} ({path}): {e}") from None
    payload = rec["payload_bytes"].to_numpy(np.float64) if "payload_bytes" in rec else np.full(n, np.nan)
    need = {iid for iid, p in zip(rows["image_id"], payload) if np.isnan(p)}
    images = (image_payload or (lambda ids: image_payloads(ds, ids)))(need) if need else {}
    pay = np.array([int(p) if not np.isnan(p) else images[iid] + len(q.encode("utf-8"))
                    for p, iid, q in zip(payload, rows["image_id"], rows["question"])], dtype=np.int64)
    comp[np.isnan(comp)] = typical  # a sample the file lacks (no compute_s configured): the model's usual cost
    conf = rec["confidence"].to_numpy(np.float64) if "confidence" in rec else np.full(n, np.nan)
    frame = pd.DataFrame({
        "sample_id": rows["sample_id"], "image_id": rows["image_id"], "split": rows["split"], "model": model,
        "tier": tier, "answer": [a if ok else "" for a, ok in zip(answers, present)], "score": score,
        "confidence": np.where(present, conf, np.nan).astype(np.float32),
        "compute_s": comp,
        "payload_bytes": pay,
        "error": ["" if ok else f"not in replay file {path}" for ok in present]}, columns=list(COLUMNS))
    for start in range(0, n, batch_size):
        _write_part(frame.iloc[start:start + batch_size], out_dir, next_part)
        next_part += 1
    missing = int((~present).sum())
    if missing:
        log.error("replay %s: %d of %d samples are not in %s (recorded as errors with score 0; add them to the "
                  "file and run again: a changed file is replayed)", model, missing, n, path)
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


def matrix(df: pd.DataFrame, models: list[str], column: str, sample_ids=None, allow_nan: bool = False) -> np.ndarray:
    """(n_samples, n_models) float64 array of ``column``, rows in ``sample_ids`` order (default: sorted).
    Raises ValueError when a (sample, model) pair is missing (or, unless ``allow_nan``, its value is NaN,
    as an unknown confidence is)."""
    wide = df.pivot(index="sample_id", columns="model", values=column)
    wide = wide.reindex(index=sample_ids if sample_ids is not None else sorted(wide.index), columns=models)
    if not allow_nan and wide.isna().any().any():
        missing = wide.isna().stack()
        sid, m = missing[missing].index[0]
        raise ValueError(f"no outcome for sample {sid!r} and model {m!r}; re-run `router-train collect`")
    return np.ascontiguousarray(wide.to_numpy(dtype=np.float64))
