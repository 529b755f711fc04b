"""The confidence baselines: the edge-confidence cascade and the router + cascade combination
(``CONFIDENCE_BASELINES``; scored by ``escalation``)."""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from ..core.splits import SplitArrays
from .base import Baseline, _one_hot, make, quantile_knobs, register
from .escalation import cascade_metrics, combined_metrics, escalation_outcomes


@register("cascade")
class Cascade(Baseline):
    """Edge-confidence cascade (FrugalGPT-style; Varshney & Baral 2022): router-train's best edge model
    answers every query; when its own confidence (``SplitArrays.confidence``) < knob the query goes to the
    cloud as well, paying both (``cascade_metrics``). knob 0: all-edge; knob 2: every query runs on both.
    ``assign`` gives the answering model only; use ``metrics`` for costs."""

    all_edge_knob, all_cloud_knob = 0.0, 2.0

    def assign(self, split, knob):
        with np.errstate(invalid="ignore"):
            esc = split.confidence[:, self.edge] < knob
        return _one_hot(np.where(esc, self.cloud, self.edge), split.score.shape[1])

    def metrics(self, split, knob, models=None):
        return cascade_metrics(split, knob, self.tiers, self.cloud, self.edge, models)

    def knobs(self, split, n=41):
        return quantile_knobs(split.confidence[:, self.edge], n, self.all_edge_knob, self.all_cloud_knob)


@register("combined")
class Combined(Baseline):
    """Router first, then confidence escalation (``combined_metrics``): a query the router keeps on an
    edge model escalates to the cloud when that model's confidence < knob, paying both. The router is
    ``router`` (split -> (n, K)), else ``ctx.router`` (e.g. the tuned router), else the ``mlp_both``
    baseline trained here at knob ``base_knob`` (0: edge when predicted at least as accurate as the
    cloud). The curve starts at the router's cloud share (knob 0) and rises to all-cloud-plus-edge (knob
    2), so its APGR is not comparable with full-range sweeps. ``assign`` gives the answering model."""

    all_edge_knob, all_cloud_knob = None, 2.0

    def __init__(self, router: Callable[[SplitArrays], np.ndarray] | None = None, base_knob: float = 0.0):
        self.router_fn, self.base_knob = router, base_knob

    def _fit(self, train):
        fn = self.router_fn or self.ctx.router
        if fn is None:
            base = make("mlp_both").fit(train, self.ctx)
            fn = functools.partial(base.assign, knob=self.base_knob)
        self.route = fn

    def router_assign(self, split):
        return self._cached(split, self.route)

    def assign(self, split, knob):
        a = self.router_assign(split)
        o = escalation_outcomes(split, a, knob, self.tiers, self.cloud)
        out = np.zeros_like(a, dtype=np.float64)
        np.add.at(out, (np.repeat(np.arange(len(a)), a.shape[1]), o["final"].ravel()), a.ravel())
        return out

    def metrics(self, split, knob, models=None):
        return combined_metrics(split, self.router_assign(split), knob, self.tiers, self.cloud, models)

    def knobs(self, split, n=41):
        a = self.router_assign(split)
        edge = np.array([t == "edge" for t in self.tiers])
        conf = split.confidence[(a > 0) & edge[None, :]]
        return quantile_knobs(conf, n, 0.0, self.all_cloud_knob)
