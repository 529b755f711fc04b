"""The decision log: one JSON line per request the gateway handled, in the outcome-table schema as far as
it applies (``outcomes.COLUMNS``), so production traffic can be graded and replayed to retrain.

============== ===================================================================================
key            meaning
============== ===================================================================================
sample_id      = request_id (``x-router-request-id``); shadow rows of one request share it
image_id       first 16 hex digits of the image bytes' sha256 ("" without an image)
split          "gateway"
model, tier    the model that answered (and its tier); "" when none did
answer         its answer text ("" on failure)
score          null: production traffic is not graded (grade it, then replay)
confidence     exp(mean token logprob) of the answer; null when the upstream returned none
compute_s      seconds of the successful upstream call (for an HTTP model its round trip, as the
               ``openai`` collection backend measures it); null on failure
payload_bytes  bytes of the request body (what a cloud model receives)
error          "" on success, else ``"<kind>: <detail>"`` (an upstream failure kind or the HTTP
               error code of a refused request)
request_id     32 hex digits
time           Unix time (s) the request arrived
route          "router", "direct" (a model named), "no-image" (routed without an image), "shadow"
requested      the request's ``model``
decision       the router's first choice ("" when not routed)
fallback       "" or "cloud-error", "edge-error", "low-confidence"
p_correct      {model: predicted P(correct)} (routed requests)
decision_s     time to decide (s): image decoding, features, ONNX run
latency_s      the whole request inside the gateway (s; streams: to the last event)
status         the HTTP status returned
stream         whether the reply was streamed
uplink_mbps,   the network figures the decision used, and their ``network_source`` (header, config,
rtt_s          estimate, profile)
attempts       failed calls before the answer: [{model, error}]
ood_score, ood  the router's out-of-distribution score and flag (``Decision``), when it has them
warnings       the router's warnings (an empty question, out of distribution), when any
features_version  the router's ``features.FEATURE_VERSION``
question       the last user text (when ``decision_log.questions``)
image_file     the saved image's file name under ``<log stem>-images/`` (when ``decision_log.images``)
============== ===================================================================================

Each line is written with one ``os.write`` on a file opened with ``O_APPEND`` under a lock, so rows from
concurrent requests (threads, or several gateway processes on one local file) never interleave; a row is
on disk (in the page cache) before the reply's last byte leaves. ``read`` loads the log back (and
refuses a torn line); ``outcomes.read_replay(path, columns={"sample_id": "request_id"},
model_column="model")`` reads it as a replay file; ``export_training`` writes the requests every model
answered (shadow rows) as a folder dataset plus a long outcome file, ready to be graded and replayed.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

from .config import LogConfig

SPLIT = "gateway"


def _clean(v):
    """JSON-safe: NaN / inf floats -> None (JSON has no NaN), recursively."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class DecisionLog:
    """Appends rows to ``cfg.path`` (created with its folder; mode 0600). ``images_dir`` is
    ``<path stem>-images/`` when ``cfg.images``."""

    def __init__(self, cfg: LogConfig):
        if cfg.path is None:
            raise ValueError("decision log: no path")
        self.cfg = cfg
        self.path = Path(cfg.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.images_dir = self.path.with_name(self.path.stem + "-images") if cfg.images else None
        if self.images_dir is not None:
            self.images_dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()
        self.rows = 0

    def write(self, row: dict) -> None:
        """Append one row (a JSON object on one line). Raises OSError when the disk refuses."""
        line = (json.dumps(_clean(row), ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            view = memoryview(line)
            while view:  # a regular file takes the whole line at once; loop for the odd short write
                view = view[os.write(self._fd, view):]
            self.rows += 1

    def save_image(self, image_id: str, data: bytes, ext: str) -> str | None:
        """Keep an image's bytes as ``images_dir/<image_id>.<ext>`` (once per image: its id is its hash);
        returns the file name, or None when images are not logged."""
        if self.images_dir is None:
            return None
        name = f"{image_id}.{ext}"
        target = self.images_dir / name
        if not target.exists():
            tmp = self.images_dir / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return name

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read(path: str | Path) -> list[dict]:
    """Every row of a decision log, in order. Raises ValueError naming the line of a torn or non-JSON row."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.endswith("\n"):
                raise ValueError(f"decision log {path}: line {i} is incomplete (torn write)")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"decision log {path}: line {i} is not JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"decision log {path}: line {i} is not a JSON object")
            rows.append(row)
    return rows


def export_training(path: str | Path, out_dir: str | Path, models: list[str]) -> dict:
    """Write the logged requests that every model in ``models`` answered without error (the answering
    row plus ``shadow`` rows: ``decision_log.shadow_fraction``) and whose image was saved, as a folder
    dataset ready for grading and replay:

    - ``out_dir/questions.jsonl``: one line per request: ``sample_id``, ``image_file`` (a path relative
      to the log's images folder), ``question`` (add an ``answers`` list per line to have the dataset's
      scorer grade the logged answers);
    - ``out_dir/outcomes.jsonl``: one line per (request, model): ``sample_id``, ``model``, ``answer``,
      ``confidence``, ``compute_s``, ``payload_bytes`` (add ``correct`` or ``score`` per line to grade).

    A run config then reads them with ``dataset: {kind: folder, images_dir: <log stem>-images,
    questions: out_dir/questions.jsonl, columns: {image: image_file, sample_id: sample_id}}`` and
    ``outcomes: {path: out_dir/outcomes.jsonl, model_column: model}``. Returns {"requests": n, "rows": n * len(models),
    "skipped": requests left out}. Raises ValueError for a torn log or when no request qualifies."""
    rows = read(path)
    by_request: dict[str, dict[str, dict]] = {}
    first: dict[str, dict] = {}
    for r in rows:
        if r.get("model") in models and not r.get("error") and r.get("image_file") and r.get("question") is not None:
            by_request.setdefault(r["request_id"], {}).setdefault(r["model"], r)
            first.setdefault(r["request_id"], r)
    complete = [rid for rid, got in by_request.items() if all(m in got for m in models)]
    if not complete:
        raise ValueError(f"decision log {path}: no request was answered by every model of {models} with its image "
                         "saved; set decision_log.images: true and decision_log.shadow_fraction > 0 to collect them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "questions.jsonl", "w", encoding="utf-8") as q, open(out / "outcomes.jsonl", "w",
                                                                         encoding="utf-8") as o:
        for rid in complete:
            r = first[rid]
            q.write(json.dumps({"sample_id": rid, "image_file": r["image_file"], "question": r["question"]}) + "\n")
            for m in models:
                a = by_request[rid][m]
                o.write(json.dumps(_clean({"sample_id": rid, "model": m, "answer": a["answer"],
                                           "confidence": a.get("confidence"), "compute_s": a.get("compute_s"),
                                           "payload_bytes": a.get("payload_bytes")})) + "\n")
    requests = {r["request_id"] for r in rows if r.get("route") != "shadow"}
    return {"requests": len(complete), "rows": len(complete) * len(models), "skipped": len(requests) - len(complete)}
