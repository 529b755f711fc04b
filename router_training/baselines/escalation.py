"""Confidence escalation scored exactly: a query an edge model answers escalates to the cloud when that
model's confidence is below the knob, paying both (the ``cascade`` and ``combined`` baselines). No torch."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import metrics as M
from ..core.splits import SplitArrays
from .base import _one_hot, best_edge


def escalation_outcomes(s: SplitArrays, assign: np.ndarray, knob: float, tiers: Sequence[str], cloud: int) -> dict:
    """Outcomes when a query the router sends to an edge model m escalates to the cloud model ``cloud``
    whenever m's own confidence ``s.confidence[i, m] < knob`` (the edge answer is then discarded).

    Returns (n, K) arrays indexed by the *routed* model: ``score`` (the used answer's), ``latency_s`` and
    ``energy_j`` (edge cost plus cloud cost when escalated: the device waits for both, sequentially),
    ``final`` (int, the model whose answer is used), ``escalated`` (bool). Raises ValueError when an
    edge model the router uses has no confidence (NaN) while ``knob > 0``."""
    edge = np.array([t == "edge" for t in tiers])
    conf = np.asarray(s.confidence, dtype=np.float64)
    used = (np.asarray(assign) > 0) & edge[None, :]
    if knob > 0 and np.isnan(conf[used]).any():
        i, m = np.argwhere(used & np.isnan(conf))[0]
        raise ValueError(f"edge model {m} has no confidence for sample {s.sample_ids[i]!r}: a confidence cascade "
                         "needs the edge model's answer probability (replay files: map a confidence column)")
    with np.errstate(invalid="ignore"):
        esc = edge[None, :] & (conf < knob)
    k = s.score.shape[1]
    return {"score": np.where(esc, s.score[:, [cloud]], s.score),
            "latency_s": s.latency_s + esc * s.latency_s[:, [cloud]],
            "energy_j": s.energy_j + esc * s.energy_j[:, [cloud]],
            "final": np.where(esc, cloud, np.arange(k)[None, :]), "escalated": esc}


def escalation_metrics(s: SplitArrays, assign: np.ndarray, knob: float, tiers: Sequence[str], cloud: int,
                       models: Sequence[str] | None = None) -> dict:
    """``metrics.policy_metrics`` keys for a router ``assign`` (n, K) followed by confidence escalation
    (``escalation_outcomes``), as exact expectations under ``assign``.

    ``shares`` / ``share_<model>`` / ``edge_share`` / ``cloud_share`` count the model whose answer is
    used (so ``cloud_share`` is the fraction of queries that call the cloud); costs include every model
    run. Extra keys: ``edge_compute_share`` (fraction of queries that run an edge model, escalated or
    not) and ``escalation_share`` (fraction escalated from edge to cloud)."""
    assign = np.asarray(assign, dtype=np.float64)
    o = escalation_outcomes(s, assign, knob, tiers, cloud)
    n, k = assign.shape
    edge = np.array([t == "edge" for t in tiers])
    acc = float((assign * o["score"]).sum(1).mean())
    lat = float((assign * o["latency_s"]).sum(1).mean())
    en = float((assign * o["energy_j"]).sum(1).mean())
    shares = np.zeros(k)
    np.add.at(shares, o["final"].ravel(), assign.ravel())
    shares /= n
    cloud_acc, cloud_lat, cloud_en = (float(a[:, cloud].mean()) for a in (s.score, s.latency_s, s.energy_j))
    out = {"accuracy": acc, "pct_cloud_accuracy": 100.0 * acc / cloud_acc if cloud_acc else float("nan"),
           "edge_share": float(shares[edge].sum()), "mean_latency_s": lat, "mean_energy_j": en,
           "latency_reduction": 1.0 - lat / cloud_lat, "energy_reduction": 1.0 - en / cloud_en,
           "shares": shares.tolist(), "cloud_share": float(shares[~edge].sum()),
           "p95_latency_s": M.weighted_quantile(o["latency_s"], assign / n, 0.95),
           "pgr": M.pgr(acc, M.references(s, tiers, cloud)),
           "edge_compute_share": float(assign[:, edge].sum(1).mean()),
           "escalation_share": float((assign * o["escalated"]).sum(1).mean())}
    names = list(models) if models is not None else [str(j) for j in range(k)]
    out.update({f"share_{m}": v for m, v in zip(names, out["shares"])})
    return out


def cascade_outcomes(s: SplitArrays, knob: float, edge: int, cloud: int, tiers: Sequence[str] | None = None) -> dict:
    """Per-sample outcomes (n,) of the edge-confidence cascade: model ``edge`` answers every query; when
    its confidence < ``knob`` the query is re-asked to ``cloud``. ``score`` (the used answer's),
    ``latency_s`` = edge latency + cloud latency if escalated, ``energy_j`` likewise, ``escalated``."""
    tiers = tiers or ["edge" if j == edge else "cloud" for j in range(s.score.shape[1])]
    o = escalation_outcomes(s, _one_hot(np.full(len(s), edge), s.score.shape[1]), knob, tiers, cloud)
    return {key: o[key][:, edge] for key in ("score", "latency_s", "energy_j", "escalated")}


def cascade_metrics(s: SplitArrays, knob: float, tiers: Sequence[str], cloud: int, edge: int | None = None,
                    models: Sequence[str] | None = None) -> dict:
    """Metrics (``escalation_metrics``; ``policies.metrics`` keys and more) of the edge-confidence
    cascade: the edge model ``edge`` (default: the best edge model on ``s``; the ``cascade`` baseline
    passes router-train's) answers first and escalates to ``cloud`` when its confidence < ``knob``,
    paying both. knob 0: all-edge; knob > 1: every query runs on both (costlier than all-cloud)."""
    edge = best_edge(s, tiers) if edge is None else edge
    return escalation_metrics(s, _one_hot(np.full(len(s), edge), s.score.shape[1]), knob, tiers, cloud, models)


def combined_outcomes(s: SplitArrays, assign: np.ndarray, knob: float, tiers: Sequence[str], cloud: int) -> dict:
    """Per-sample expected outcomes (n,) of router ``assign`` then confidence escalation: ``score``,
    ``latency_s``, ``energy_j``, ``escalated`` (probability of escalation)."""
    o = escalation_outcomes(s, assign, knob, tiers, cloud)
    return {key: (assign * o[key]).sum(1) for key in ("score", "latency_s", "energy_j", "escalated")}


def combined_metrics(s: SplitArrays, assign: np.ndarray, knob: float, tiers: Sequence[str], cloud: int,
                     models: Sequence[str] | None = None) -> dict:
    """The router decides first (``assign`` (n, K), e.g. the tuned router's); a query it keeps on edge
    model m still escalates to ``cloud`` when m's confidence < ``knob``, paying both.

    What holds for every split (per query, hence for the means):

    1. knob <= 0 (no confidence is below it): exactly the router's metrics;
    2. latency and energy are non-decreasing in knob; accuracy differs from the router's only on
       escalated queries, by s_cloud - s_m there;
    3. cost = router cost + cloud cost on escalated queries <= router cost + cloud cost;
    4. against the cascade (same edge model, same knob): equal on the queries the router keeps on that
       edge model; on a query the router sends straight to the cloud it saves the edge call when the
       cascade would escalate it, but costs cloud - edge more when the cascade would keep it on edge.
       So combined <= cascade in cost when every query sent to the cloud is one the cascade escalates;
       it is not cheaper in general."""
    return escalation_metrics(s, assign, knob, tiers, cloud, models)
