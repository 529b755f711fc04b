"""The reference points every router is read against: random routing (the chord, APGR ~0.5), the
hindsight oracle point and the hindsight oracle curve."""

from __future__ import annotations

import numpy as np

from .. import policies
from .base import Baseline, register


@register("random")
class RandomBaseline(Baseline):
    """Random routing at edge share ``knob`` (best router-train edge model with probability knob, else the
    cloud), scored in expectation: ``policies.random``. Its curve is the chord: APGR ~0.5."""

    all_edge_knob, all_cloud_knob = 1.0, 0.0

    def assign(self, split, knob):
        shares = np.zeros(split.score.shape[1])
        shares[self.edge], shares[self.cloud] = knob, 1.0 - knob
        return policies.make("random", shares=shares)(split)

    def knobs(self, split, n=41):
        return np.linspace(0.0, 1.0, n)


@register("oracle")
class OracleBaseline(Baseline):
    """Hindsight point (no knob): ``policies.oracle`` with ``ctx.cost`` (cheapest model that answers
    correctly). ``knobs`` is [0]; for a hindsight *curve* see ``oracle_curve``."""

    all_edge_knob = all_cloud_knob = None

    def assign(self, split, knob=0.0):
        return policies.make("oracle", cost=self.ctx.cost)(split)

    def knobs(self, split, n=41):
        return np.array([0.0])


@register("oracle_curve")
class OracleCurve(Baseline):
    """Hindsight routing at cloud share ``knob`` in [0, 1]: samples sorted by realised gain
    ``score_cloud - score_edge`` (router-train's best edge model), the top ``knob * n`` (fractionally at
    the boundary) sent to the cloud. The most accurate edge/cloud routing at every cloud share, so its
    APGR bounds that of every router between this edge model and the cloud on the same split
    (``knobs`` includes the breakpoints, so the trapezoid area is exact)."""

    all_edge_knob, all_cloud_knob = 0.0, 1.0

    def _order(self, split):
        gain = split.score[:, self.cloud] - split.score[:, self.edge]
        return np.argsort(-gain, kind="stable"), gain

    def assign(self, split, knob):
        order, _ = self._cached(split, self._order)
        n = len(split)
        mass = np.clip(knob * n - np.arange(n), 0.0, 1.0)  # cloud probability by rank
        to_cloud = np.empty(n)
        to_cloud[order] = mass
        out = np.zeros((n, split.score.shape[1]))
        out[:, self.cloud] = to_cloud
        out[:, self.edge] += 1.0 - to_cloud
        return out

    def knobs(self, split, n=41):
        order, gain = self._cached(split, self._order)
        g = gain[order]
        breaks = np.flatnonzero(np.diff(g) != 0) + 1  # rank where the gain changes
        return np.unique(np.r_[np.linspace(0.0, 1.0, n), breaks / len(split)])
