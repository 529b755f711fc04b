"""Run configuration, composed from data: dataset, models, deployment profile, router, tuning.

A run config is a YAML mapping with keys ``name``, ``dataset``, ``models``, ``profile``, ``router``,
``tune`` and (optional) ``collect`` and ``search``. Any of the parts may be given inline or as a path to another YAML file (relative to the
file that names it), so profiles and model sets are shared between runs. Generated files go under a
work directory chosen at run time (``--workdir``, default the current directory), never the checkout.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .core.profile import TIERS, DeploymentProfile


def _build(cls, d: dict, where: str):
    """Dataclass from a mapping; unknown keys are an error naming the section."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


DATASET_KINDS = ("easyvqa", "hf", "folder")
# our column -> required?  (``columns`` maps these names to the dataset's own). answers are optional:
# a question without one is scored by the grades in its models' outcome files (``outcomes.replay``)
DATASET_COLUMNS = {"image": True, "question": True, "answers": False, "options": False,
                   "question_type": False, "image_id": False, "sample_id": False}
# low light, blur and downscaling separate the edge models from the cloud one; JPEG and colour casts
# barely hurt any model (measured: README, "accuracy by degradation")
EASYVQA_DEGRADATIONS = {"clean": 0.2, "blur": 0.18, "low_light": 0.36, "downscale": 0.18, "noise": 0.04,
                        "jpeg": 0.02, "color_cast": 0.02}
# dataset keys that only some kinds use
_KIND_KEYS = {"path": ("hf",), "name": ("hf",), "split": ("hf",), "data_files": ("hf",), "revision": ("hf",),
              "images": ("hf",), "columns": ("hf", "folder"), "images_dir": ("folder",),
              "questions": ("folder",), "limit_train_images": ("easyvqa",)}
SCORERS = ("vqa", "exact", "mc", "numeric", "given")  # scoring.SCORERS (config stays free of scoring imports)
# data_files with one of these builders as ``path`` are resolved by datasets against the current directory
_BUILDERS = ("parquet", "json", "csv", "arrow", "text", "imagefolder", "webdataset", "pandas")


@dataclass
class DatasetConfig:
    """The questions the router learns and is judged on, split by image into ``splits`` (seeded), each
    image with one seeded degradation drawn from ``degradations`` (kind -> weight; severity uniform in
    ``severity``). ``limit_images`` keeps a seeded subset of images (all their questions).

    ``kind``:

    - ``easyvqa``: easy-VQA's test split (``limit_train_images``: images for the reference models).
      Default degradations: a mix of blur, low light, downscaling, noise, JPEG and colour casts.
    - ``hf``: any dataset ``datasets.load_dataset`` reads: ``path`` (hub name, local folder, or a builder
      such as "parquet" with ``data_files``), ``name`` (config), ``split``, ``revision``, and ``columns``
      mapping our names to theirs: image, question, answers (required), question_type, image_id,
      sample_id (optional). A dotted name reads a field of a nested column ("answers.answer": the
      ``answer`` of each item of ``answers``). ``images`` (optional) names a second dataset holding the
      images, joined on image_id: {path (default: ``path``), name, split, data_files, revision,
      columns: {image_id, image}}.
    - ``folder``: ``images_dir`` and ``questions``, a JSONL file with one object per question: image
      (file name under ``images_dir``), question, answers (a list or one string), and optionally
      question_id and question_type; ``columns`` renames those keys (sample_id is question_id).

    For ``hf`` and ``folder`` the default degradations are none ({"clean": 1.0}): real data brings its
    own conditions. Relative local paths are resolved against the folder of the config file naming them;
    ``${VAR}`` in a path is the environment variable VAR (an unset one is an error naming it).

    ``scorer``: how an answer is graded against the references (``scoring.score``): "vqa" (VQAv2
    accuracy, the default), "exact", "mc" (multiple choice, with an ``options`` column), "numeric"
    (relative tolerance ``numeric_rel_tol``) or "given" (only the outcome files' own grades).
    ``split_by``: the column whose groups never straddle two router splits (default ``image_id``; e.g.
    the template or image group a question was generated from); for ``hf`` and ``folder`` any column of
    the data, for ``easyvqa`` only ``image_id``.
    ``on_bad_row``: what the data stage does with rows it cannot use (no image, an unreadable or
    undecodable image, a question ``features.check_question`` refuses, a missing or duplicate id, a
    malformed JSONL line): "error" (default) lists every one of them in one pass and stops; "skip" drops
    them, writes them with their reasons to data/<run>/bad_rows.jsonl and goes on with the rest.
    """

    kind: str = "easyvqa"
    seed: int = 0
    splits: dict = field(default_factory=lambda: {"router-train": 0.5, "router-val": 0.25, "router-test": 0.25})
    degradations: dict | None = None  # None: the kind's default (see above)
    severity: tuple = (0.45, 1.0)
    limit_images: int | None = None  # router-split images (a seeded subset)
    limit_train_images: int | None = None  # easyvqa: reference-model training images
    # kind "hf"
    path: str | None = None
    name: str | None = None
    split: str | None = None
    data_files: str | list | dict | None = None
    revision: str | None = None
    columns: dict = field(default_factory=dict)
    images: dict | None = None
    # kind "folder"
    images_dir: str | None = None
    questions: str | None = None
    scorer: str = "vqa"
    numeric_rel_tol: float = 1e-4
    split_by: str = "image_id"
    on_bad_row: str = "error"

    def __post_init__(self):
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"dataset.on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"dataset.kind must be one of {DATASET_KINDS}, got {self.kind!r}")
        if self.scorer not in SCORERS:
            raise ValueError(f"dataset.scorer must be one of {SCORERS}, got {self.scorer!r}")
        if not isinstance(self.split_by, str) or not self.split_by:
            raise ValueError(f"dataset.split_by must be a column name, got {self.split_by!r}")
        if self.kind == "easyvqa" and self.split_by != "image_id":
            raise ValueError("dataset.split_by: easy-VQA splits by image_id only")
        if self.degradations is None:
            self.degradations = dict(EASYVQA_DEGRADATIONS) if self.kind == "easyvqa" else {"clean": 1.0}
        for key, kinds in _KIND_KEYS.items():
            if self.kind not in kinds and getattr(self, key) not in (None, {}):
                raise ValueError(f"dataset: key {key!r} is for kind {' or '.join(map(repr, kinds))}, "
                                 f"not {self.kind!r}")
        if not isinstance(self.columns, dict):
            raise ValueError(f"dataset.columns: expected a mapping (our name: their name), got {self.columns!r}")
        unknown = set(self.columns) - set(DATASET_COLUMNS)
        if unknown:
            raise ValueError(f"dataset.columns: unknown names {sorted(unknown)}; ours are {sorted(DATASET_COLUMNS)}")
        if self.kind == "hf":
            if not self.path:
                raise ValueError("dataset: kind 'hf' needs 'path' (a hub name, a local folder, or a builder "
                                 "such as 'parquet' with 'data_files')")
            need = [c for c, req in DATASET_COLUMNS.items() if req and not (c == "image" and self.images)]
            missing = [c for c in need if c not in self.columns]
            if missing:
                raise ValueError(f"dataset.columns: kind 'hf' must map {missing} to the dataset's columns "
                                 "(our name: their name), e.g. {image: image, question: question, answers: answers}")
            if self.images is not None:
                allowed = {"path", "name", "split", "data_files", "revision", "columns"}
                if not isinstance(self.images, dict) or set(self.images) - allowed:
                    raise ValueError(f"dataset.images: expected a mapping with keys from {sorted(allowed)}")
                if "image_id" not in self.columns:
                    raise ValueError("dataset.images: joining the images needs columns.image_id")
                self.images = dict(self.images)
        if self.kind == "folder" and not (self.images_dir and self.questions):
            raise ValueError("dataset: kind 'folder' needs 'images_dir' (the images) and 'questions' "
                             "(a JSONL file, one object per question)")

    def resolve_paths(self, base: Path) -> None:
        """Make relative local paths absolute against ``base`` (the folder of the config file naming
        them): folder paths, an hf ``path`` that exists under ``base``, and ``data_files`` read by a
        builder ("parquet", "json", ...). Hub names and files inside a hub repository stay as they are."""
        def local(p):
            p = expand_env(p, "dataset")
            return p if Path(p).is_absolute() else str((base / p).resolve())

        if self.kind == "folder":
            self.images_dir, self.questions = local(self.images_dir), local(self.questions)
        if self.kind != "hf":
            return
        for spec in [s for s in (self.__dict__, self.images) if s is not None]:
            if spec.get("path") and not Path(spec["path"]).is_absolute() and (base / spec["path"]).exists():
                spec["path"] = local(spec["path"])
            if spec.get("data_files") is not None and (spec.get("path") or self.path) in _BUILDERS:
                spec["data_files"] = _map_files(spec["data_files"], local)


_ENV = re.compile(r"\$\{(\w+)\}")


def expand_env(path: str, where: str) -> str:
    """``path`` with each ``${VAR}`` replaced by the environment variable VAR. Raises ValueError naming
    the variable and ``where`` when it is unset or empty."""
    def sub(m):
        v = os.environ.get(m.group(1))
        if not v:
            raise ValueError(f"{where}: path {path!r} needs the environment variable {m.group(1)} (unset); "
                             f"set it, e.g. `export {m.group(1)}=/path/to/the/folder`")
        return v
    return _ENV.sub(sub, path)


def _map_files(files, fn):
    if isinstance(files, str):
        return fn(files)
    if isinstance(files, dict):
        return {k: _map_files(v, fn) for k, v in files.items()}
    return [fn(f) for f in files]


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
            from . import backends  # here, not at module level: importing config loads no backend libraries

            backends.check_options(self.backend, self.options, self.name)


@dataclass
class RouterConfig:
    """Complexity predictor and its latency-energy-accuracy loss (see ``fit.RouterModule``)."""

    hidden: list = field(default_factory=lambda: [64, 64])
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 60
    batch_size: int = 256
    lambda_latency: float = 0.2
    lambda_energy: float = 0.1
    cost_weight: float = 0.1
    temperature: float = 0.1
    label_smoothing: float = 0.0  # BCE targets s * (1 - eps) + eps / 2
    image_embedding: int = 16  # width of the CNN embedding of the thumbnail (fit.RouterNet); 0: no thumbnail
    patience: int = 10  # early stopping: epochs without a better val_loss before training stops; 0: off
    members: int = 3  # deep ensemble: networks averaged (fit.RouterNet); 1: a single network
    seed: int = 0

    def __post_init__(self):
        p = self.patience
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"router.patience must be an integer >= 0 (0: no early stopping), got {p!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"router.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        m = self.members
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"router.members must be an integer >= 1 (1: a single network), got {m!r}")
        e = self.image_embedding
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"router.image_embedding must be an integer >= 0 (0: no thumbnail CNN), got {e!r}")


@dataclass
class GuaranteeConfig:
    """Threshold calibration with a distribution-free guarantee (``guarantee.py``, Learn then Test):
    the accuracy lost against all-cloud on new data exceeds ``eps`` (VQA-accuracy points as a fraction,
    0.01 = one point) with probability at most ``delta``. ``transform``: "clip" (tighter when routed
    answers rarely beat the cloud's) or "shift" (see ``guarantee.to_unit``). ``resplits``: how many random
    router-val / router-test resplits the report's empirical check runs."""

    eps: float = 0.01
    delta: float = 0.1
    transform: str = "clip"
    resplits: int = 200

    def __post_init__(self):
        for key in ("eps", "delta"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"tune.guarantee.{key} must be a number, got {v!r}")
        if not 0 <= self.eps < 1 or not 0 < self.delta < 1:
            raise ValueError(f"tune.guarantee needs 0 <= eps < 1 and 0 < delta < 1, got eps {self.eps}, "
                             f"delta {self.delta}")
        if self.transform not in ("clip", "shift"):
            raise ValueError(f"tune.guarantee.transform must be 'clip' or 'shift', got {self.transform!r}")
        if not isinstance(self.resplits, int) or self.resplits < 1:
            raise ValueError(f"tune.guarantee.resplits must be a positive int, got {self.resplits!r}")


@dataclass
class TuneConfig:
    """Threshold search on router-val: keep ``min_cloud_accuracy_ratio`` of all-cloud accuracy (or, with
    ``max_accuracy_drop``, lose at most that many accuracy points as a fraction: 0.01 = one point below
    all-cloud; it replaces the ratio) and minimise ``minimize`` ("latency" or "energy"). When no trial
    meets the target, every query goes to the most accurate cloud model on router-val and the report
    says so at its top.

    With ``guarantee`` (a mapping of GuaranteeConfig fields, e.g. ``{eps: 0.01, delta: 0.1}``) the
    Optuna search is replaced by Learn-then-Test calibration on router-val: the lambdas stay the router
    section's, the edge threshold is the most permissive one certified, and the router's best epoch is
    chosen on a held-out fifth of router-train so router-val is untouched by training (the guarantee's
    exchangeability assumption, ``guarantee.py``).

    With ``max_latency_s`` (s) the target is instead the best router-val accuracy whose mean latency is
    within that budget (the accuracy keys and ``minimize`` do not apply). ``uplink_grid_mbps`` (Mbit/s)
    tunes the thresholds again at each of these uplinks, with router-val's latencies recomputed there,
    and stores them in the artifact (``tune.tune_grid``, manifest ``network_grid``) so the runtime uses
    the ones for its current uplink; None: (1, 2, 5, 10, 20, 50, 100) with ``max_latency_s`` (a budget
    is met only if the thresholds follow the network), no grid otherwise; [] no grid."""

    n_trials: int = 300
    min_cloud_accuracy_ratio: float | None = None  # None: 0.99 unless max_accuracy_drop is given
    max_accuracy_drop: float | None = None
    minimize: str = "latency"
    seed: int = 0
    guarantee: GuaranteeConfig | None = None
    max_latency_s: float | None = None
    uplink_grid_mbps: list | None = None

    def __post_init__(self):
        r, d = self.min_cloud_accuracy_ratio, self.max_accuracy_drop
        b = self.max_latency_s
        if b is not None:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not (0 < b < float("inf")):
                raise ValueError(f"tune.max_latency_s must be a finite number of seconds > 0, got {b!r}")
            if r is not None or d is not None:
                raise ValueError("tune: max_latency_s (best accuracy within a latency budget) replaces "
                                 "min_cloud_accuracy_ratio / max_accuracy_drop; give one target")
            if self.guarantee is not None:
                raise ValueError("tune: max_latency_s and guarantee are two different targets; give one")
        g = self.uplink_grid_mbps
        if g is not None:
            if not isinstance(g, (list, tuple)) or not all(
                    isinstance(u, (int, float)) and not isinstance(u, bool) and 0 < u < float("inf") for u in g):
                raise ValueError(f"tune.uplink_grid_mbps must be a list of uplinks in Mbit/s (> 0), got {g!r}")
            self.uplink_grid_mbps = sorted({float(u) for u in g})
        if r is not None and d is not None:
            raise ValueError("tune: give min_cloud_accuracy_ratio or max_accuracy_drop, not both")
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 2):
            raise ValueError(f"tune.min_cloud_accuracy_ratio must be a number in (0, 2], got {r!r}")
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1):
            raise ValueError(f"tune.max_accuracy_drop must be a fraction in [0, 1) (0.01 = one accuracy point), "
                             f"got {d!r}")
        if r is None and d is None and b is None:
            self.min_cloud_accuracy_ratio = 0.99
        if self.minimize not in ("latency", "energy"):
            raise ValueError(f"tune.minimize must be 'latency' or 'energy', got {self.minimize!r}")
        if isinstance(self.guarantee, dict):
            self.guarantee = _build(GuaranteeConfig, self.guarantee, "tune.guarantee")
        elif self.guarantee is not None and not isinstance(self.guarantee, GuaranteeConfig):
            raise ValueError(f"tune.guarantee must be a mapping such as {{eps: 0.01, delta: 0.1}}, got "
                             f"{self.guarantee!r}")

    def accuracy_floor(self, cloud_accuracy: float) -> float:
        """The least accuracy (a fraction) that meets the target, given all-cloud's ``cloud_accuracy``
        (0.0 under a latency budget, which has no accuracy floor)."""
        if self.max_latency_s is not None:
            return 0.0
        if self.max_accuracy_drop is not None:
            return cloud_accuracy - self.max_accuracy_drop
        return self.min_cloud_accuracy_ratio * cloud_accuracy

    def grid(self) -> list[float]:
        """The uplinks (Mbit/s) to tune thresholds at (``uplink_grid_mbps``, or its default)."""
        if self.uplink_grid_mbps is not None:
            return list(self.uplink_grid_mbps)
        return [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0] if self.max_latency_s is not None else []

    def target_text(self) -> str:
        """The target in words, e.g. "97% of all-cloud accuracy" or "at most 1 point below all-cloud"."""
        if self.max_latency_s is not None:
            return f"the best accuracy within a mean latency of {1e3 * self.max_latency_s:g} ms"
        if self.max_accuracy_drop is not None:
            return f"at most {100 * self.max_accuracy_drop:g} accuracy points below all-cloud"
        return f"{100 * self.min_cloud_accuracy_ratio:g}% of all-cloud accuracy"


@dataclass
class CollectConfig:
    """How outcomes are collected (``pipeline.stage_collect``). ``batch_size``: samples per backend call
    and per outcome part. By default one process runs the models (``outcomes.collect``); with
    ``devices`` other than 1, ``num_nodes`` > 1 or a ``strategy``, collection runs on Lightning's
    distributed prediction (``distributed.collect``): ``devices`` processes per node (an int, "auto" or a
    list of device indices), ``num_nodes`` nodes, ``strategy`` "ddp" (default then; re-runs the command
    per process) or "ddp_spawn", ``accelerator`` "cpu", "gpu" or "auto". ``num_workers``: DataLoader
    processes per rank that decode images. ``router-train collect/run --devices N --strategy S`` override."""

    devices: int | str | list = 1
    strategy: str | None = None
    num_nodes: int = 1
    accelerator: str = "auto"
    batch_size: int = 64
    num_workers: int = 0

    def __post_init__(self):
        if isinstance(self.devices, str) and self.devices.lstrip("-").isdigit():
            self.devices = int(self.devices)
        d = self.devices
        if not ((isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1)) or d == "auto"
                or (isinstance(d, list) and d and all(isinstance(i, int) for i in d))):
            raise ValueError(f"collect.devices must be a positive int, -1, 'auto' or a list of device indices, "
                             f"got {d!r}")
        for key in ("num_nodes", "batch_size"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"collect.{key} must be a positive int, got {v!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"collect.num_workers must be an int >= 0, got {self.num_workers!r}")
        if self.strategy is not None and not isinstance(self.strategy, str):
            raise ValueError(f"collect.strategy must be a Lightning strategy name such as 'ddp', got {self.strategy!r}")

    @property
    def distributed(self) -> bool:
        """Whether collection runs on Lightning's distributed prediction (else the single-process path)."""
        return self.devices != 1 or self.num_nodes > 1 or self.strategy is not None


# router fields a search space may name besides RouterConfig's own (``hidden`` is hidden_width x depth;
# ``feature_groups`` masks feature columns; ``threshold`` is the decision threshold of the edge models)
SEARCH_EXTRA_PARAMS = ("hidden_width", "depth", "feature_groups", "threshold")
# features.IMAGE_FEATURES, TEXT_FEATURES, WORD_FEATURES, PIXEL_FEATURES
FEATURE_GROUPS = ("image", "text", "words", "thumbnail")
SEARCH_MODES = ("single", "multi")
SEARCH_SAMPLERS = ("tpe", "nsga2", "random")
SEARCH_PRUNERS = ("none", "median", "percentile", "hyperband", "successive_halving", "threshold")
_INT_PARAMS = {"epochs": 1, "batch_size": 1, "hidden_width": 1, "depth": 0, "seed": 0,  # name -> lowest value
               "image_embedding": 0}


def default_search_space() -> dict:
    return {
        "lr": {"float": [1e-4, 1e-2], "log": True},
        "hidden_width": {"int": [16, 128], "log": True},
        "depth": {"int": [1, 3]},
        "dropout": {"float": [0.0, 0.3]},
        "weight_decay": {"float": [1e-6, 1e-2], "log": True},
        "lambda_latency": {"float": [0.0, 1.0]},
        "lambda_energy": {"float": [0.0, 1.0]},
        "label_smoothing": {"float": [0.0, 0.1]},
        "feature_groups": {"categorical": ["image+text+words+thumbnail", "image+text+words", "image+text"]},
    }


def _number(v):
    """YAML 1.1 (PyYAML) reads 1e-4 as a string: accept numeric strings in search bounds and steps."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _feature_group_choice(choice, where: str) -> str:
    """A feature_groups choice ("image+text", "text" or a list such as [image, text]) as the canonical
    "+"-joined string in FEATURE_GROUPS order (e.g. "image+text+words")."""
    parts = choice.split("+") if isinstance(choice, str) else choice
    if not isinstance(parts, (list, tuple)) or not parts or any(p not in FEATURE_GROUPS for p in parts):
        raise ValueError(f"{where}: each choice is a '+'-joined or listed subset of {list(FEATURE_GROUPS)} "
                         f"(e.g. 'image+text', 'text', [image, text]), got {choice!r}")
    return "+".join(g for g in FEATURE_GROUPS if g in parts)


def parse_search_space(space: dict) -> dict:
    """Check a search space and normalise it: name -> {"float"|"int": [low, high], "log": bool, "step":
    number or None} or {"categorical": [choices]}. Names are RouterConfig fields (not ``hidden``) or
    ``SEARCH_EXTRA_PARAMS``. Raises ValueError naming the entry."""
    if not isinstance(space, dict) or not space:
        raise ValueError("search.space: expected a non-empty mapping of parameter -> distribution, e.g. "
                         "{lr: {float: [1e-4, 1e-2], log: true}, depth: {int: [1, 3]}}")
    allowed = sorted({f.name for f in dataclasses.fields(RouterConfig)} - {"hidden"} | set(SEARCH_EXTRA_PARAMS))
    out = {}
    for name, spec in space.items():
        where = f"search.space.{name}"
        if name not in allowed:
            hint = " (search hidden_width and depth instead)" if name == "hidden" else ""
            raise ValueError(f"{where}: unknown parameter{hint}; allowed: {allowed}")
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected a mapping such as {{float: [low, high], log: false}}, "
                             f"{{int: [low, high]}} or {{categorical: [...]}}, got {spec!r}")
        kinds = [k for k in ("float", "int", "categorical") if k in spec]
        if len(kinds) != 1:
            raise ValueError(f"{where}: give exactly one of float, int, categorical, got keys {sorted(spec)}")
        kind = kinds[0]
        extra = set(spec) - {kind, "log", "step"} if kind != "categorical" else set(spec) - {kind}
        if extra:
            raise ValueError(f"{where}: unknown keys {sorted(extra)} for a {kind} distribution")
        if kind == "categorical":
            choices = spec["categorical"]
            if not isinstance(choices, list) or not choices:
                raise ValueError(f"{where}: categorical needs a non-empty list of choices, got {choices!r}")
            if name == "feature_groups":
                choices = list(dict.fromkeys(_feature_group_choice(c, where) for c in choices))
            elif any(c is not None and not isinstance(c, (bool, int, float, str)) for c in choices):
                raise ValueError(f"{where}: categorical choices must be numbers, strings, booleans or null")
            out[name] = {"categorical": choices}
            continue
        if name == "feature_groups":
            raise ValueError(f"{where}: feature_groups takes {{categorical: [...]}}, e.g. "
                             "{categorical: [image+text+words+thumbnail, image+text+words]}")
        bounds = [_number(b) for b in spec[kind]] if isinstance(spec[kind], (list, tuple)) else spec[kind]
        if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
            raise ValueError(f"{where}: {kind} needs [low, high], got {bounds!r}")
        low, high = bounds
        if low > high:
            raise ValueError(f"{where}: low {low} is above high {high}")
        if kind == "int" and not all(float(b).is_integer() for b in bounds):
            raise ValueError(f"{where}: int bounds must be integers, got {bounds!r}")
        if kind == "float" and name in _INT_PARAMS:
            raise ValueError(f"{where}: {name} is an integer; use {{int: [low, high]}}")
        if name in _INT_PARAMS and low < _INT_PARAMS[name]:
            raise ValueError(f"{where}: {name} must be >= {_INT_PARAMS[name]}, got low {low}")
        log, step = bool(spec.get("log", False)), _number(spec.get("step"))
        if log and low <= 0:
            raise ValueError(f"{where}: a log distribution needs low > 0, got {low}")
        if log and step is not None and (kind == "float" or step != 1):
            raise ValueError(f"{where}: log and step cannot be combined")
        if step is not None and (not isinstance(step, (int, float)) or step <= 0):
            raise ValueError(f"{where}: step must be a positive number, got {step!r}")
        out[name] = {kind: [int(low), int(high)] if kind == "int" else [float(low), float(high)], "log": log,
                     "step": (int(step) if kind == "int" else float(step)) if step is not None else None}
    return out


@dataclass
class SearchConfig:
    """Hyperparameter search (``router-train search``): each trial trains a router (``fit.fit``) with
    parameters drawn from ``space``, picks its decision threshold on router-val and is scored on router-val.

    - ``space``: parameter -> distribution, ``{float: [low, high], log: bool, step: x}``,
      ``{int: [low, high], log, step}`` or ``{categorical: [choices]}``. Parameters: RouterConfig fields
      (lr, weight_decay, dropout, epochs, batch_size, lambda_latency, lambda_energy, label_smoothing,
      cost_weight, temperature, image_embedding), ``hidden_width`` and ``depth``
      (hidden = [hidden_width] * depth), ``feature_groups`` (categorical over "+"-joined subsets of
      "image", "text" (hand-crafted question signals), "words" (the hashed words the router learns
      embeddings for) and "thumbnail" (the pixels its CNN embeds): the other groups' feature columns are
      masked) and ``threshold`` (the edge models' decision threshold: searched in multi mode even when
      not listed; listed in single mode, it replaces the sweep). Unlisted parameters keep
      the ``router`` section's values. Example (YAML)::

          space:
            lr: {float: [1.0e-4, 1.0e-2], log: true}
            hidden_width: {int: [16, 128], log: true}
            depth: {int: [1, 3]}
            label_smoothing: {float: [0.0, 0.1]}
            feature_groups: {categorical: [image+text+words+thumbnail, image+text+words, image+text]}
    - ``mode``: "single" maximises the edge share subject to accuracy >= ``min_cloud_accuracy_ratio`` x
      all-cloud accuracy on router-val (an Optuna constraint; the threshold comes from a sweep of
      ``threshold_grid`` values on router-val); "multi" finds the Pareto front of (accuracy, mean latency,
      mean energy) on router-val, with the accuracy floor as a constraint unless the ratio is null.
    - ``sampler``: "tpe" (default in single mode), "nsga2" (default in multi mode) or "random", or a
      mapping {name: {keyword arguments}}; ``pruner``: "median" (default), "percentile", "hyperband",
      "successive_halving", "threshold" or "none", or {name: {keyword arguments}}. Pruning watches the
      objective on router-val after every epoch (single mode; Optuna cannot prune multi-objective trials).
    - ``n_trials``: total over all workers sharing the study (finished or pruned trials).
    - ``heartbeat_interval`` / ``grace_period`` (s): a worker's running trial whose heartbeat is older
      than ``grace_period`` is marked failed (and retried once) by the next worker that checks.
    - ``wandb``: log each trial to wandb (offline, grouped by study) besides CSV.
    """

    space: dict = field(default_factory=default_search_space)
    n_trials: int = 40
    mode: str = "single"
    min_cloud_accuracy_ratio: float | None = 0.99
    sampler: str | dict | None = None
    pruner: str | dict | None = field(default_factory=lambda: {"median": {"n_startup_trials": 5,
                                                                          "n_warmup_steps": 5}})
    threshold_grid: int = 101
    seed: int = 0
    heartbeat_interval: int = 10
    grace_period: int = 60
    wandb: bool = True

    def __post_init__(self):
        self.space = parse_search_space(self.space)
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"search.mode must be one of {SEARCH_MODES}, got {self.mode!r}")
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ValueError(f"search.n_trials must be a positive int, got {self.n_trials!r}")
        r = self.min_cloud_accuracy_ratio
        if r is None and self.mode == "single":
            raise ValueError("search.min_cloud_accuracy_ratio: single mode needs an accuracy floor")
        if r is not None and not (isinstance(r, (int, float)) and 0 < r <= 2):
            raise ValueError(f"search.min_cloud_accuracy_ratio must be in (0, 2], got {r!r}")
        for key, names in (("sampler", SEARCH_SAMPLERS), ("pruner", SEARCH_PRUNERS)):
            v = getattr(self, key)
            if v is None:
                continue
            if isinstance(v, str):
                v = {v: {}}
            if not (isinstance(v, dict) and len(v) == 1 and next(iter(v)) in names
                    and isinstance(next(iter(v.values())) or {}, dict)):
                raise ValueError(f"search.{key} must be one of {names} or a mapping {{name: {{options}}}}, "
                                 f"got {getattr(self, key)!r}")
            setattr(self, key, {next(iter(v)): dict(next(iter(v.values())) or {})})
        if not isinstance(self.threshold_grid, int) or self.threshold_grid < 2:
            raise ValueError(f"search.threshold_grid must be an int >= 2, got {self.threshold_grid!r}")
        for key in ("heartbeat_interval", "grace_period"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"search.{key} must be a positive int (seconds), got {v!r}")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("search.grace_period must exceed search.heartbeat_interval")


@dataclass
class Config:
    name: str
    dataset: DatasetConfig
    models: list
    profile: DeploymentProfile
    router: RouterConfig
    tune: TuneConfig
    workdir: Path = Path(".")
    collect: CollectConfig = field(default_factory=CollectConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def tiers(self) -> list[str]:
        return [m.tier for m in self.models]

    def path(self, kind: str) -> Path:
        """Folder for generated files: kind is "data", "checkpoints", "export" or "runs"."""
        if kind not in ("data", "checkpoints", "export", "runs"):
            raise ValueError(f"unknown output kind {kind!r}")
        return self.workdir / kind / self.name


def _part(value, base: Path):
    if isinstance(value, str):
        path = (base / value).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"config part {value!r} not found at {path}")
        with open(path) as f:
            return yaml.safe_load(f), path.parent
    return value, base


SECTIONS = ("name", "dataset", "models", "profile", "router", "tune", "collect", "search", "outcomes")


def _outcomes_defaults(section, base: Path) -> dict:
    """The ``outcomes`` section: one file of every model's outcomes ({path, model_column, columns}),
    replayed for each model that gives no backend of its own."""
    if not isinstance(section, dict) or not section.get("path") or not section.get("model_column"):
        raise ValueError("outcomes: expected {path: FILE, model_column: COLUMN, columns: {...}} (one file holding "
                         f"every model's rows, the model named in COLUMN), got {section!r}")
    unknown = set(section) - {"path", "model_column", "columns"}
    if unknown:
        raise ValueError(f"outcomes: unknown keys {sorted(unknown)}; allowed: ['columns', 'model_column', 'path']")
    return dict(section)


def from_dict(d: dict, base: Path = Path("."), workdir: Path | str = ".") -> Config:
    """Build a Config from a mapping whose parts may be paths relative to ``base``.
    Raises ValueError naming the section on unknown keys or bad values."""
    if not isinstance(d, dict):
        raise ValueError(f"config: expected a mapping of sections, got {type(d).__name__} (is the file empty?)")
    unknown = set(d) - set(SECTIONS)
    if unknown:
        raise ValueError(f"config: unknown keys {sorted(unknown)}; allowed: {list(SECTIONS)}")
    missing = {"name", "models", "profile"} - set(d)
    if missing:
        raise ValueError(f"config: missing keys {sorted(missing)}")
    models, mbase = _part(d["models"], base)
    if isinstance(models, dict):
        models = models.get("models", models)
    if not models:
        raise ValueError("config: models is empty; list at least one edge and one cloud model")
    if d.get("outcomes") is not None:  # models without a backend replay the shared outcome file
        shared = _outcomes_defaults(d["outcomes"], base)
        models = [m if not isinstance(m, dict) or "backend" in m else
                  {**m, "backend": "replay", "options": {**shared, "model_value": m.get("name"), **m.get("options", {})}}
                  for m in models]
    model_cfgs = [_build(ModelConfig, m, f"models[{i}]") for i, m in enumerate(models)]
    for m in model_cfgs:
        if m.backend == "replay":
            path = expand_env(m.options["path"], f"model {m.name!r}")
            shared_file = d.get("outcomes") is not None and m.options.get("path") == d["outcomes"].get("path")
            root = base if shared_file else mbase
            m.options = {**m.options, "path": path if Path(path).is_absolute() else str((root / path).resolve())}
    if len({m.name for m in model_cfgs}) != len(model_cfgs):
        raise ValueError("config: model names must be unique")
    if "cloud" not in {m.tier for m in model_cfgs}:
        raise ValueError("config: at least one model must have tier 'cloud'")
    ds_dict, ds_base = _part(d.get("dataset", {}), base)
    ds = _build(DatasetConfig, ds_dict, "dataset")
    ds.severity = tuple(ds.severity)
    ds.resolve_paths(ds_base)
    ref = [m.name for m in model_cfgs if m.backend == "reference"]
    if ds.kind != "easyvqa" and ref:
        raise ValueError(f"config: models {ref} use backend 'reference' (the default when 'backend' is "
                         f"omitted): easy-VQA classifiers, meaningless on dataset kind {ds.kind!r}; give them "
                         "backend transformers, openai or replay")
    return Config(
        name=d["name"],
        dataset=ds,
        models=model_cfgs,
        profile=DeploymentProfile.from_dict(_part(d["profile"], base)[0]),
        router=_build(RouterConfig, _part(d.get("router", {}), base)[0], "router"),
        tune=_build(TuneConfig, _part(d.get("tune", {}), base)[0], "tune"),
        workdir=Path(workdir).resolve(),
        collect=_build(CollectConfig, _part(d.get("collect") or {}, base)[0], "collect"),
        search=_build(SearchConfig, _part(d.get("search") or {}, base)[0], "search"),
    )


def load(path: str | Path, workdir: Path | str = ".") -> Config:
    """Load and compose a run config from a YAML file. Raises FileNotFoundError / ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            d = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from None
    return from_dict(d, base=path.resolve().parent, workdir=workdir)
