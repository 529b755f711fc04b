"""The ``search`` section (``SearchConfig``): the hyperparameter search and its space
(``parse_search_space``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .training import RouterConfig


# router fields a search space may name besides RouterConfig's own (``hidden`` is hidden_width x depth;
# ``feature_groups`` masks feature columns; ``threshold`` is the decision threshold of the edge models)
SEARCH_EXTRA_PARAMS = ("hidden_width", "depth", "feature_groups", "threshold")
# features.IMAGE_FEATURES, TEXT_FEATURES, WORD_FEATURES, PIXEL_FEATURES
FEATURE_GROUPS = ("image", "text", "words", "thumbnail")
SEARCH_MODES = ("single", "multi")
SEARCH_SAMPLERS = ("tpe", "nsga2", "random")
SEARCH_PRUNERS = ("none", "median", "percentile", "hyperband", "successive_halving", "threshold")
_INT_PARAMS = {"epochs": 1, "batch_size": 1, "hidden_width": 1, "depth": 0, "seed": 0,  # name -> lowest value
               "image_embedding": 0, "members": 1}


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
    - ``workers``: worker processes this command runs on this machine (itself and ``workers - 1``
      children on the same study), each with ``cpus // workers`` torch threads; "auto" (default): one per
      CPU, at most 4. The router's small convolutions use a second thread poorly (2 cores: one epoch of a
      thumbnail trial 0.77 s on 1 thread, 0.68 s on 2; two 1-thread workers side by side 0.87 s each, 1.56x
      the throughput). Workers make the study's order, so its result, vary from run to run; 1 reproduces.
    - ``members``: networks in each trial's router (a deep ensemble, ``router.members``), unless the space
      lists ``members``; the searched router is exported as its trial trained it. Default 1: an ensemble
      of M costs M times the training time in every trial. The best single network of a 40-trial search
      beat fit's untuned ensemble of 3 on router-val (edge share at the accuracy floor: BlindTest 0.506
      against 0.487, easy-VQA 0.759 against 0.729; README).
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
    members: int = 1
    workers: int | str = "auto"

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
        w = self.workers
        if w != "auto" and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
            raise ValueError(f"search.workers must be 'auto' or an integer >= 1 (processes on this machine), got {w!r}")
        if not isinstance(self.members, int) or isinstance(self.members, bool) or self.members < 1:
            raise ValueError(f"search.members must be an integer >= 1 (networks per trial), got {self.members!r}")
        if not isinstance(self.threshold_grid, int) or self.threshold_grid < 2:
            raise ValueError(f"search.threshold_grid must be an int >= 2, got {self.threshold_grid!r}")
        for key in ("heartbeat_interval", "grace_period"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"search.{key} must be a positive int (seconds), got {v!r}")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("search.grace_period must exceed search.heartbeat_interval")

    def worker_count(self) -> int:
        """``workers`` as a number: "auto" is the CPUs this process may use, at most 4."""
        if self.workers != "auto":
            return self.workers
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(4, cpus))
