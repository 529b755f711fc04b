"""Run configuration, composed from data: dataset, models, deployment profile, router, tuning.

A run config is a YAML mapping with keys ``name``, ``dataset``, ``models``, ``profile``, ``router``,
``tune`` and (optional) ``collect`` and ``search``. Any of the parts may be given inline or as a path to another YAML file (relative to the
file that names it), so profiles and model sets are shared between runs. Generated files go under a
work directory chosen at run time (``--workdir``, default the current directory), never the checkout.

Modules: ``dataset`` (DatasetConfig, expand_env), ``models`` (ModelConfig), ``training`` (RouterConfig,
GuaranteeConfig, TuneConfig, CollectConfig), ``search`` (SearchConfig, parse_search_space), ``base``
(``_build``, shared by the sections); this one composes them (``Config``, ``from_dict``, ``load``) and
re-exports the public names. Importing it loads no torch, Lightning, pandas or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..core.profile import TIERS, DeploymentProfile
from .base import _build
from .dataset import (DATASET_COLUMNS, DATASET_KINDS, EASYVQA_DEGRADATIONS, SCORERS, DatasetConfig,
                      expand_env)
from .models import REPLAY_COLUMN_NAMES, REPLAY_OPTIONS, ModelConfig
from .search import (FEATURE_GROUPS, SEARCH_EXTRA_PARAMS, SEARCH_MODES, SEARCH_PRUNERS, SEARCH_SAMPLERS,
                     SearchConfig, default_search_space, parse_search_space)
from .training import CollectConfig, GuaranteeConfig, RouterConfig, TuneConfig

__all__ = ["DATASET_COLUMNS", "DATASET_KINDS", "EASYVQA_DEGRADATIONS", "FEATURE_GROUPS", "REPLAY_COLUMN_NAMES",
           "REPLAY_OPTIONS", "SCORERS", "SEARCH_EXTRA_PARAMS", "SEARCH_MODES", "SEARCH_PRUNERS",
           "SEARCH_SAMPLERS", "SECTIONS", "TIERS", "CollectConfig", "Config", "DatasetConfig",
           "DeploymentProfile", "GuaranteeConfig", "ModelConfig", "RouterConfig", "SearchConfig", "TuneConfig",
           "default_search_space", "expand_env", "from_dict", "load", "parse_search_space"]


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
            raise FileNotFoundError(f"config part {value!r} not found at {path} (a part's path is relative to the "
                                    "file that names it; the repository's configs/ folder holds the shipped parts, "
                                    "e.g. configs/profiles/: copy one next to your config or give its absolute path)")
        with open(path) as f:
            return yaml.safe_load(f), path.parent
    return value, base


SECTIONS = ("name", "dataset", "models", "profile", "router", "tune", "collect", "search", "outcomes")


def _outcomes_defaults(section, base: Path) -> dict:
    """The ``outcomes`` section: one file of every model's outcomes ({path, model_column, columns}),
    replayed for each model that gives no backend of its own."""
    if not isinstance(section, dict) or not section.get("path") or not section.get("model_column"):
        raise ValueError("outcomes: expected {path: FILE, model_column: COLUMN, columns: {...}} (one file holding "
                         f"every model's rows, the model named in COLUMN), got {section!r}; a wide table (a grade "
                         "column per model) is read per model instead: backend: replay, options: {path: FILE, "
                         "columns: {sample_id: ..., correct: <the model's column>}}")
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
