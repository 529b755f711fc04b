"""The search space: ``search.space`` as Optuna distributions, a trial's ``RouterConfig``, and the
feature-group masks (the router is trained on the kept columns; the exported one ignores the others)."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from .. import fit
from ..config import FEATURE_GROUPS, RouterConfig, SearchConfig
from ..core.features import FEATURE_NAMES, IMAGE_FEATURES, PIXEL_FEATURES, TEXT_FEATURES, WORD_FEATURES
from ..core.splits import SplitArrays

ALL_GROUPS = "+".join(FEATURE_GROUPS)
_GROUP_COLUMNS = {"image": IMAGE_FEATURES, "text": TEXT_FEATURES, "words": WORD_FEATURES, "thumbnail": PIXEL_FEATURES}


def distributions(sc: SearchConfig) -> dict[str, BaseDistribution]:
    """The search space (``sc.space``, already checked by ``config.parse_search_space``) as Optuna
    distributions; multi mode adds ``threshold`` (float in [0, 1]) when the space lacks it."""
    out: dict[str, BaseDistribution] = {}
    for name, spec in sc.space.items():
        if "categorical" in spec:
            out[name] = CategoricalDistribution(spec["categorical"])
        elif "float" in spec:
            out[name] = FloatDistribution(*spec["float"], log=spec["log"], step=spec["step"])
        else:
            out[name] = IntDistribution(*spec["int"], log=spec["log"], step=spec["step"] or 1)
    if sc.mode == "multi" and "threshold" not in out:
        out["threshold"] = FloatDistribution(0.0, 1.0)
    return out


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution):
    """``trial.suggest_*`` for one distribution."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)


def router_config(base: RouterConfig, params: dict) -> RouterConfig:
    """``base`` with the trial's parameters: RouterConfig fields replace the base values and
    ``hidden_width`` / ``depth`` give ``hidden = [hidden_width] * depth`` (the missing one from ``base``)."""
    d = dict(base.__dict__)
    fields = {f.name for f in dataclasses.fields(RouterConfig)}
    d.update({k: v for k, v in params.items() if k in fields})
    if "hidden_width" in params or "depth" in params:
        width = params.get("hidden_width", base.hidden[0] if base.hidden else 64)
        depth = params.get("depth", len(base.hidden))
        d["hidden"] = [int(width)] * int(depth)
    return RouterConfig(**d)


def feature_mask(groups: str | None) -> np.ndarray:
    """bool (F,) over ``FEATURE_NAMES``: True for the columns of the groups named in ``groups``
    (e.g. "image+text+words", "image"; None = all)."""
    keep = set((groups or ALL_GROUPS).split("+"))
    cols = {c for g in keep for c in _GROUP_COLUMNS[g]}
    return np.array([name in cols for name in FEATURE_NAMES])


def masked(split: SplitArrays, mask: np.ndarray) -> SplitArrays:
    """The split with the masked-out feature columns set to 0 (constant, so standardised to 0)."""
    return dataclasses.replace(split, x=np.where(mask, split.x, 0.0).astype(np.float32))


def ignore_masked_inputs(module: fit.RouterModule, mask: np.ndarray) -> fit.RouterModule:
    """Make the router ignore the masked-out feature columns whatever values the runtime computes for
    them (it was trained on constant zeros there): ``nets.RouterNet.ignore_inputs``. Returns ``module``."""
    module.net.ignore_inputs(mask)
    return module
