"""The ``models`` section: one ``ModelConfig`` per candidate model, its backend options checked at load."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.profile import TIERS


REPLAY_OPTIONS = ("path", "columns", "model_column", "model_value")
# outcomes.REPLAY_COLUMNS (our names a replay file's columns map to)
REPLAY_COLUMN_NAMES = ("sample_id", "answer", "score", "correct", "confidence", "compute_s", "payload_bytes")


@dataclass
class ModelConfig:
    """One candidate model: a name, its tier (edge or cloud), a backend and backend options.

    ``compute_s`` (s per query) and ``compute_source`` (where that figure comes from: a published
    throughput, your own measurement): the model's compute time when its outcomes carry none (a replay
    file without a compute_s column, or with empty cells). A replayed model with neither is an error
    naming it: costs are never silently 0. Figures from this field are marked as configured in reports.

    backend ``replay`` options: ``path`` (JSONL, CSV or Parquet), ``columns`` (our name -> the file's,
    for sample_id, answer, score, correct, confidence, compute_s, payload_bytes), and for a long file
    holding every model's rows ``model_column`` (the column naming the model) with ``model_value``
    (this model's value there; default the model's ``name``).

    backend ``reference`` options: those of ``reference.train_reference`` (``arch`` required). Any other
    backend is a registered kind ("transformers", "openai") or a class of your own as
    "package.module:ClassName" (``backends.resolve``), built as ``Class(name=<model name>, **options)``:
    its options are checked here against the constructor's signature (unknown keys, missing required
    ones; a ``**kwargs`` constructor takes any), so a typo fails at load, not at collection."""

    name: str
    tier: str
    backend: str = "reference"
    options: dict = field(default_factory=dict)
    compute_s: float | None = None
    compute_source: str | None = None

    def __post_init__(self):
        if self.tier not in TIERS:
            raise ValueError(f"model {self.name!r}: tier must be one of {TIERS}, got {self.tier!r}")
        if not isinstance(self.backend, str) or not isinstance(self.options, dict):
            raise ValueError(f"model {self.name!r}: backend must be a string and options a mapping, "
                             f"got {self.backend!r} and {self.options!r}")
        c = self.compute_s
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0):
            raise ValueError(f"model {self.name!r}: compute_s must be a number of seconds >= 0, got {c!r}")
        if c is not None and not self.compute_source:
            raise ValueError(f"model {self.name!r}: compute_s {c} needs compute_source (where the figure comes "
                             "from, e.g. 'measured on our Jetson, 2026-11' or a published throughput)")
        if self.backend == "replay":  # outcomes from a file (``outcomes.replay``), no model is run
            unknown = set(self.options) - set(REPLAY_OPTIONS)
            cols = self.options.get("columns") or {}
            unknown |= (set(cols) - set(REPLAY_COLUMN_NAMES)) if isinstance(cols, dict) else {"columns"}
            if unknown or not self.options.get("path"):
                raise ValueError(f"model {self.name!r}: backend 'replay' takes options {list(REPLAY_OPTIONS)} "
                                 f"(path: a JSONL, CSV or Parquet file of per-sample outcomes; columns: our "
                                 f"name -> theirs for {', '.join(REPLAY_COLUMN_NAMES)}; model_column / "
                                 f"model_value: the rows of this model in a file of all models), got {self.options}")
            if "model_value" in self.options and "model_column" not in self.options:
                raise ValueError(f"model {self.name!r}: replay option model_value needs model_column")
        if self.backend == "reference":  # options of reference.train_reference, checked before any training
            allowed = {"arch", "epochs", "lr", "hidden", "image_size", "batch_images", "augment_p", "augment",
                       "augment_max_severity", "init"}
            unknown = set(self.options) - allowed
            if unknown:
                raise ValueError(f"model {self.name!r}: backend 'reference' takes options {sorted(allowed)} "
                                 f"('arch', a timm model name, is required to train); got unknown {sorted(unknown)}")
        if self.backend not in ("replay", "reference"):  # options checked against the constructor's signature
            from .. import backends  # here, not at module level: importing config loads no backend libraries

            backends.check_options(self.backend, self.options, self.name)
