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


@dataclass
class DatasetConfig:
    """easy-VQA with seeded per-image degradations. ``limit_*`` take subsets (tests, quick runs)."""

    kind: str = "easyvqa"
    seed: int = 0
    splits: dict = field(default_factory=lambda: {"router-train": 0.5, "router-val": 0.25, "router-test": 0.25})
    # blur, downscaling and noise separate small from large models; JPEG and colour casts barely hurt any
    degradations: dict = field(default_factory=lambda: {"clean": 0.25, "blur": 0.2, "low_light": 0.1,
                                                        "downscale": 0.2, "noise": 0.15, "jpeg": 0.05,
                                                        "color_cast": 0.05})
    severity: tuple = (0.3, 1.0)
    limit_images: int | None = None  # router-split images taken from easy-VQA's test split
    limit_train_images: int | None = None  # reference-model training images


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
    if len({m.name for m in model_cfgs}) != len(model_cfgs):
        raise ValueError("config: model names must be unique")
    if "cloud" not in {m.tier for m in model_cfgs}:
        raise ValueError("config: at least one model must have tier 'cloud'")
    ds = _build(DatasetConfig, _part(d.get("dataset", {}), base)[0], "dataset")
    ds.severity = tuple(ds.severity)
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
