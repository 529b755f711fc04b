"""Run configuration, composed from data: dataset, models, deployment profile, router, tuning.

A run config is a YAML mapping with keys ``name``, ``dataset``, ``models``, ``profile``, ``router`` and
``tune``. Any of the five parts may be given inline or as a path to another YAML file (relative to the
file that names it), so profiles and model sets are shared between runs. Generated files go under a
work directory chosen at run time (``--workdir``, default the current directory), never the checkout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .profile import TIERS, DeploymentProfile


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
# our column -> required?  (``columns`` maps these names to the dataset's own)
DATASET_COLUMNS = {"image": True, "question": True, "answers": True,
                   "question_type": False, "image_id": False, "sample_id": False}
# low light, blur and downscaling separate the edge models from the cloud one; JPEG and colour casts
# barely hurt any model (measured: README, "accuracy by degradation")
EASYVQA_DEGRADATIONS = {"clean": 0.2, "blur": 0.2, "low_light": 0.32, "downscale": 0.2, "noise": 0.04,
                        "jpeg": 0.02, "color_cast": 0.02}
# dataset keys that only some kinds use
_KIND_KEYS = {"path": ("hf",), "name": ("hf",), "split": ("hf",), "data_files": ("hf",), "revision": ("hf",),
              "images": ("hf",), "columns": ("hf", "folder"), "images_dir": ("folder",),
              "questions": ("folder",), "limit_train_images": ("easyvqa",)}
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
    own conditions. Relative local paths are resolved against the folder of the config file naming them.
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

    def __post_init__(self):
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"dataset.kind must be one of {DATASET_KINDS}, got {self.kind!r}")
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


def _map_files(files, fn):
    if isinstance(files, str):
        return fn(files)
    if isinstance(files, dict):
        return {k: _map_files(v, fn) for k, v in files.items()}
    return [fn(f) for f in files]


@dataclass
class ModelConfig:
    """One candidate model: a name, its tier (edge or cloud), a backend and backend options."""

    name: str
    tier: str
    backend: str = "reference"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.tier not in TIERS:
            raise ValueError(f"model {self.name!r}: tier must be one of {TIERS}, got {self.tier!r}")
        if self.backend == "replay":  # outcomes from a file (``outcomes.replay``), no model is run
            unknown = set(self.options) - {"path", "columns"}
            cols = self.options.get("columns") or {}
            ours = {"sample_id", "answer", "score", "confidence", "compute_s", "payload_bytes"}
            unknown |= (set(cols) - ours) if isinstance(cols, dict) else {"columns"}
            if unknown or not self.options.get("path"):
                raise ValueError(f"model {self.name!r}: backend 'replay' takes options {{path, columns}} "
                                 f"(path: a JSONL, CSV or Parquet file of per-sample outcomes; columns: our "
                                 f"name -> theirs for sample_id, answer, score, confidence, compute_s, "
                                 f"payload_bytes), got {self.options}")


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
    cost_weight: float = 0.5
    temperature: float = 0.1
    seed: int = 0


@dataclass
class TuneConfig:
    """Threshold search on router-val: keep ``min_cloud_accuracy_ratio`` of all-cloud accuracy and
    minimise ``minimize`` ("latency" or "energy")."""

    n_trials: int = 300
    min_cloud_accuracy_ratio: float = 0.99
    minimize: str = "latency"
    seed: int = 0

    def __post_init__(self):
        if self.minimize not in ("latency", "energy"):
            raise ValueError(f"tune.minimize must be 'latency' or 'energy', got {self.minimize!r}")


@dataclass
class Config:
    name: str
    dataset: DatasetConfig
    models: list
    profile: DeploymentProfile
    router: RouterConfig
    tune: TuneConfig
    workdir: Path = Path(".")

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


def from_dict(d: dict, base: Path = Path("."), workdir: Path | str = ".") -> Config:
    """Build a Config from a mapping whose parts may be paths relative to ``base``.
    Raises ValueError naming the section on unknown keys or bad values."""
    missing = {"name", "models", "profile"} - set(d)
    if missing:
        raise ValueError(f"config: missing keys {sorted(missing)}")
    models, mbase = _part(d["models"], base)
    if isinstance(models, dict):
        models = models.get("models", models)
    if not models:
        raise ValueError("config: models is empty; list at least one edge and one cloud model")
    model_cfgs = [_build(ModelConfig, m, f"models[{i}]") for i, m in enumerate(models)]
    for m in model_cfgs:
        if m.backend == "replay" and not Path(m.options["path"]).is_absolute():
            m.options = {**m.options, "path": str((mbase / m.options["path"]).resolve())}
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
    )


def load(path: str | Path, workdir: Path | str = ".") -> Config:
    """Load and compose a run config from a YAML file. Raises FileNotFoundError / ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        d = yaml.safe_load(f)
    return from_dict(d, base=path.resolve().parent, workdir=workdir)
