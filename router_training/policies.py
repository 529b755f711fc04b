"""Routing policies behind one interface, and the metrics every report uses.

A policy maps a router split (``core.splits.SplitArrays``) to an assignment matrix float64 (n, K): row i is the
probability of sending sample i to each model (one-hot for deterministic policies). Metrics are then
expectations under that matrix, so random routing is scored exactly, without sampling noise.
Policies register by name (``register`` / ``make``), as routers do in RouteLLM (Ong et al., 2024).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .core.decision import decide
from .core.splits import SplitArrays
from .metrics import core_metrics

POLICIES: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        POLICIES[name] = fn
        return fn
    return deco


def make(name: str, **kwargs) -> Callable[[SplitArrays], np.ndarray]:
    """A policy by registered name; ``kwargs`` are its options. Raises ValueError for unknown names."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    return POLICIES[name](**kwargs)


def _one_hot(idx: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(idx), k))
    out[np.arange(len(idx)), idx] = 1.0
    return out


@register("all")
def always(model: int):
    """Every query to model index ``model`` (all-edge with an edge model, all-cloud with a cloud one)."""
    return lambda s: _one_hot(np.full(len(s), model), s.score.shape[1])


@register("random")
def random(shares):
    """Each query to model m with probability ``shares[m]`` (e.g. the router's per-model shares):
    random routing at the router's edge share, scored in expectation."""
    shares = np.asarray(shares, dtype=np.float64)
    return lambda s: np.tile(shares / shares.sum(), (len(s), 1))


@register("oracle")
def oracle(cost: str = "latency_s"):
    """Hindsight router: the cheapest model (per-sample ``cost`` column: "latency_s" or "energy_j") that
    answers correctly (score > 0.5); the cheapest model when none does."""
    def assign(s: SplitArrays):
        c = getattr(s, cost)
        masked = np.where(s.score > 0.5, c, np.inf)
        idx = np.where(np.isfinite(masked).any(1), masked.argmin(1), c.argmin(1))
        return _one_hot(idx, c.shape[1])
    return assign


@register("router")
def router(probs: Callable[[SplitArrays], np.ndarray], thresholds, lambda_latency: float, lambda_energy: float,
           ref_latency_s: float, ref_energy_j: float, expected_latency_s, expected_energy_j):
    """The learned router: ``probs(split)`` gives P(correct) (n, K); the rest is ``decision.decide``."""
    def assign(s: SplitArrays):
        idx = decide(probs(s), expected_latency_s, expected_energy_j, thresholds, lambda_latency,
                     lambda_energy, ref_latency_s, ref_energy_j)
        return _one_hot(idx, s.score.shape[1])
    return assign


def metrics(assign: np.ndarray, s: SplitArrays, tiers: list[str], cloud: int) -> dict:
    """Policy metrics on a split. ``assign`` (n, K); ``cloud`` the index of the all-cloud reference.

    Returns: accuracy (mean VQA score), pct_cloud_accuracy (100 * accuracy / all-cloud accuracy),
    edge_share (fraction of queries on edge-tier models), mean_latency_s (s), mean_energy_j (J),
    latency_reduction / energy_reduction (fraction saved vs all-cloud; negative when costlier),
    shares (list, fraction of queries per model).

    The computation lives in ``metrics.core_metrics``; ``metrics.policy_metrics`` adds p95 latency,
    cloud share, PGR and named per-model shares."""
    return core_metrics(assign, s, tiers, cloud)
