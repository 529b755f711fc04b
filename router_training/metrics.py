"""Evaluation metrics for edge/cloud routers: policy metrics, routing-curve metrics (PGR, APGR, CPT),
bootstrap confidence intervals and probability calibration (ECE, temperature scaling, reliability plots).

numpy only (matplotlib is imported inside the plotting function), so it loads without torch. Every
function works on plain arrays or on any object with ``score``, ``latency_s``, ``energy_j`` arrays
(n, K) such as ``core.splits.SplitArrays``; assignments are (n, K) matrices as in ``policies`` (row i = the
probability of sending sample i to each model), so metrics are exact expectations under the policy.

Sources
-------
- Routing metrics: Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", 2024,
  arXiv:2406.18665 (PGR, APGR, CPT; reference implementation ``routellm/evals/evaluate.py``).
- Bootstrap: Efron & Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall 1993
  (nonparametric resampling of test samples, ch. 6; percentile interval, ch. 13).
- Calibration: Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
  Binning", AAAI 2015 (ECE); Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural
  Networks", ICML 2017 (equal-width-bin ECE, reliability diagrams, temperature scaling).

Conventions
-----------
``tiers`` is the per-model tier list ("edge" / "cloud"); ``cloud`` the index of the all-cloud
reference model. Generalising RouteLLM's weak/strong pair to tiers: the *weak* reference is the
best edge model (highest mean score on the evaluated samples), the *strong* reference the model
``cloud``, and a "strong-model call" is any query routed to a cloud-tier model (``cloud_share``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------- policy metrics

HEADLINE = ("accuracy", "pct_cloud_accuracy", "edge_share", "cloud_share", "mean_latency_s", "p95_latency_s",
            "mean_energy_j", "latency_reduction", "energy_reduction", "pgr")


def _wmean(x: np.ndarray, w: np.ndarray | None):
    """Mean over samples (axis 0); with ``w`` (n,) non-negative summing to 1, the weighted mean."""
    return x.mean(0) if w is None else np.tensordot(w, x, axes=(0, 0))


def core_metrics(assign: np.ndarray, s, tiers: Sequence[str], cloud: int, weights: np.ndarray | None = None) -> dict:
    """Policy metrics on a split (the body of ``policies.metrics``, which delegates here).

    ``assign`` (n, K); ``s`` has ``score``, ``latency_s`` (s), ``energy_j`` (J) (n, K); ``cloud`` the index
    of the all-cloud reference; ``weights`` optional (n,) sample weights summing to 1 (a bootstrap
    resample as counts / n), uniform when None.

    Returns: accuracy (mean VQA score), pct_cloud_accuracy (100 * accuracy / all-cloud accuracy, NaN
    when all-cloud accuracy is 0), edge_share (fraction of queries on edge-tier models), mean_latency_s
    (s), mean_energy_j (J), latency_reduction / energy_reduction (fraction saved vs all-cloud; negative
    when costlier), shares (list, fraction of queries per model)."""
    edge = np.array([t == "edge" for t in tiers])
    acc = float(_wmean((assign * s.score).sum(1), weights))
    lat = float(_wmean((assign * s.latency_s).sum(1), weights))
    en = float(_wmean((assign * s.energy_j).sum(1), weights))
    cloud_acc, cloud_lat, cloud_en = (float(_wmean(a[:, cloud], weights)) for a in (s.score, s.latency_s, s.energy_j))
    out = {"accuracy": acc, "pct_cloud_accuracy": 100.0 * acc / cloud_acc if cloud_acc else float("nan"),
           "edge_share": float(_wmean(assign[:, edge].sum(1), weights)), "mean_latency_s": lat, "mean_energy_j": en,
           "latency_reduction": 1.0 - lat / cloud_lat, "energy_reduction": 1.0 - en / cloud_en}
    out["shares"] = _wmean(assign, weights).tolist()
    return out


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Inverse-CDF quantile (the smallest value v with P(X <= v) >= q) of the discrete distribution
    putting mass ``weights`` on ``values`` (any shapes, flattened together). With equal weights this is
    ``np.quantile(values, q, method="inverted_cdf")``."""
    v, w = np.ravel(values), np.ravel(weights).astype(np.float64)
    keep = w > 0
    v, w = v[keep], w[keep]
    order = np.argsort(v, kind="stable")
    cw = np.cumsum(w[order])
    i = int(np.searchsorted(cw, q * cw[-1] * (1 - 1e-12), side="left"))
    return float(v[order][min(i, len(v) - 1)])


def references(s, tiers: Sequence[str], cloud: int, weights: np.ndarray | None = None) -> dict:
    """The reference policies routing metrics are relative to: ``best_edge`` (index of the edge-tier
    model with the highest mean score; the lowest index on ties), its accuracy / mean latency / mean
    energy (``acc_edge``, ``lat_edge``, ``en_edge``) and those of the all-cloud model ``cloud``
    (``acc_cloud``, ``lat_cloud``, ``en_cloud``). Raises ValueError when no model is edge-tier."""
    edge = [k for k, t in enumerate(tiers) if t == "edge"]
    if not edge:
        raise ValueError("routing metrics need at least one edge-tier model")
    acc = _wmean(s.score, weights)
    lat = _wmean(s.latency_s, weights)
    en = _wmean(s.energy_j, weights)
    best = edge[int(np.argmax(acc[edge]))]
    return {"best_edge": best, "acc_edge": float(acc[best]), "lat_edge": float(lat[best]), "en_edge": float(en[best]),
            "acc_cloud": float(acc[cloud]), "lat_cloud": float(lat[cloud]), "en_cloud": float(en[cloud])}


def pgr(accuracy, refs: dict):
    """Performance gap recovered (RouteLLM, Ong et al. 2024, eq. 2, weak model = best edge model):
    ``(accuracy - acc_edge) / (acc_cloud - acc_edge)``; 0 for all-best-edge, 1 for all-cloud, NaN when the
    two references tie. Works on scalars and arrays."""
    gap = refs["acc_cloud"] - refs["acc_edge"]
    if gap == 0:
        return np.full(np.shape(accuracy), np.nan) if np.ndim(accuracy) else float("nan")
    out = (np.asarray(accuracy, dtype=np.float64) - refs["acc_edge"]) / gap
    return out if np.ndim(out) else float(out)


def policy_metrics(assign: np.ndarray, s, tiers: Sequence[str], cloud: int, models: Sequence[str] | None = None,
                   weights: np.ndarray | None = None) -> dict:
    """Every per-policy figure: ``core_metrics`` (= ``policies.metrics``: accuracy, pct_cloud_accuracy,
    edge_share, mean_latency_s, mean_energy_j, latency_reduction, energy_reduction, shares) plus
    ``cloud_share`` (fraction on cloud-tier models), ``p95_latency_s`` (95th percentile of the
    per-query latency distribution under the policy: for a random policy the mixture of each sample's
    model latencies weighted by the assignment, inverse-CDF definition), ``pgr`` (see ``pgr``; NaN
    without edge models) and ``share_<model>`` per model (``models`` names, else indices)."""
    out = core_metrics(assign, s, tiers, cloud, weights)
    w = np.full(len(assign), 1.0 / len(assign)) if weights is None else weights
    cloud_tier = np.array([t == "cloud" for t in tiers])
    out["cloud_share"] = float(_wmean(assign[:, cloud_tier].sum(1), weights))
    out["p95_latency_s"] = weighted_quantile(s.latency_s, assign * w[:, None], 0.95)
    out["pgr"] = pgr(out["accuracy"], references(s, tiers, cloud, weights)) if "edge" in tiers else float("nan")
    names = list(models) if models is not None else [str(k) for k in range(assign.shape[1])]
    out.update({f"share_{m}": v for m, v in zip(names, out["shares"])})
    return out


# ---------------------------------------------------------------------------------------------- routing curves

def sweep(assign_at: Callable[[float], np.ndarray], thresholds: Sequence[float], s, tiers: Sequence[str],
          cloud: int, models: Sequence[str] | None = None) -> list[dict]:
    """``policy_metrics`` of ``assign_at(t)`` (n, K) for each threshold, each with a ``threshold`` key."""
    return [{"threshold": float(t), **policy_metrics(assign_at(t), s, tiers, cloud, models)} for t in thresholds]


def curve(points: Sequence[dict], refs: dict, axis: str = "cloud_share") -> tuple[np.ndarray, np.ndarray]:
    """Raw routing-curve points (x, PGR) from sweep metric dicts (each with ``accuracy`` and
    ``cloud_share``, or ``edge_share`` where every model is edge or cloud, ``mean_latency_s``,
    ``mean_energy_j``), in sweep order. ``axis``:

    - "cloud_share": the fraction of queries on cloud-tier models (RouteLLM's "% strong-model calls");
    - "latency" / "energy": the policy's mean latency / energy normalised between all-best-edge (0) and
      all-cloud (1): ``(c - c_edge) / (c_cloud - c_edge)`` (NaN x when the two costs are equal)."""
    acc = np.array([p["accuracy"] for p in points], dtype=np.float64)
    if axis == "cloud_share":
        x = np.array([p["cloud_share"] if "cloud_share" in p else 1.0 - p["edge_share"] for p in points])
    elif axis in ("latency", "energy"):
        key, e, c = (("mean_latency_s", "lat_edge", "lat_cloud") if axis == "latency"
                     else ("mean_energy_j", "en_edge", "en_cloud"))
        span = refs[c] - refs[e]
        x = (np.array([p[key] for p in points]) - refs[e]) / span if span else np.full(len(points), np.nan)
    else:
        raise ValueError(f"axis must be cloud_share, latency or energy, not {axis!r}")
    return np.asarray(x, dtype=np.float64), np.asarray(pgr(acc, refs), dtype=np.float64)


def _as_function(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The curve as a function of x on [0, 1] (see ``apgr``): drop non-finite points and points with
    x > 1, clip x < 0 to 0, sort by x, average y over equal x, add the anchors (0, 0) / (1, 1) where no
    point lies at x = 0 / x = 1."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x <= 1.0)
    x, y = np.clip(x[ok], 0.0, None), y[ok]
    ux, inv = np.unique(x, return_inverse=True)
    uy = np.bincount(inv, weights=y, minlength=len(ux)) / np.bincount(inv, minlength=len(ux)) if len(ux) else ux
    if not len(ux) or ux[0] > 0.0:
        ux, uy = np.r_[0.0, ux], np.r_[0.0, uy]
    if ux[-1] < 1.0:
        ux, uy = np.r_[ux, 1.0], np.r_[uy, 1.0]
    return ux, uy


def apgr(x: np.ndarray, y: np.ndarray) -> float:
    """Average performance gap recovered: the area under PGR against x over [0, 1] by the trapezoid rule.

    RouteLLM (Ong et al. 2024, sec. 5.1; ``evaluate.py``: ``apgr_metric``) sorts a threshold sweep by
    the share of strong-model calls and integrates with ``np.trapz``; its sweep (quantile thresholds of
    the router score, the lowest sending everything to the strong model and the highest nothing)
    always contains x = 0 and x = 1. To make that procedure a well-defined function of x for any sweep:

    1. points with a non-finite x or PGR are dropped; points with x > 1 (costlier than all-cloud, only
       possible on the latency / energy axes) are dropped: they are not operating points inside the
       budget range; points with x < 0 (cheaper than all-best-edge) are clipped to x = 0;
    2. points are sorted by x and points with equal x are replaced by one point, the mean of their PGRs
       (pandas' sort in RouteLLM leaves such ties in arbitrary order, which changes the area);
    3. endpoints: if no point lies at x = 0, the all-best-edge anchor (0, 0) is added (PGR of the
       weak reference is 0 by definition); if no point lies at x = 1, the all-cloud anchor (1, 1) is
       added. A sweep point at x = 0 or 1 is kept as measured and no anchor is added there.

    The result is in [min PGR, max PGR]; a random router scores ~0.5 (its curve is the chord from
    (0, 0) to (1, 1)). ``x``, ``y`` as returned by ``curve``."""
    fx, fy = _as_function(x, y)
    return float(np.sum(np.diff(fx) * (fy[1:] + fy[:-1]) / 2.0))


def cpt(x: np.ndarray, y: np.ndarray, pct: float) -> float:
    """Call-performance threshold CPT(pct) (RouteLLM, Ong et al. 2024, sec. 5.1): the smallest x (cloud-call
    share) at which PGR reaches ``pct`` / 100, over the sweep points (``curve``) ordered by x, plus the
    all-cloud anchor (1, 1). No interpolation and no monotonicity assumption: RouteLLM's
    ``np.interp(target, accuracy, share)`` presumes accuracy increases with the share, which fails on
    non-monotone curves (common: a threshold can add cloud calls that do not help). Every sweep point
    counts (ties in x are not averaged: each is an operating point one can deploy). Returns NaN when
    no point reaches the target (only possible for pct > 100)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.r_[x[ok], 1.0], np.r_[y[ok], 1.0]
    hit = y >= pct / 100.0 - 1e-12
    return float(x[hit].min()) if hit.any() else float("nan")


def routing_summary(points: Sequence[dict], refs: dict, cpt_levels: Sequence[float] = (50, 80)) -> dict:
    """The routing-curve figures of a threshold sweep (metric dicts, e.g. ``sweep``): ``apgr`` (PGR vs
    cloud-call share), ``apgr_latency`` and ``apgr_energy`` (PGR vs normalised mean latency / energy)
    and ``cpt_<pct>`` (cloud-call share) for each level."""
    out = {}
    for axis, name in (("cloud_share", "apgr"), ("latency", "apgr_latency"), ("energy", "apgr_energy")):
        x, y = curve(points, refs, axis)
        out[name] = apgr(x, y)
        if axis == "cloud_share":
            out.update({f"cpt_{p:g}": cpt(x, y, p) for p in cpt_levels})
    return out


# ---------------------------------------------------------------------------------------------- bootstrap

def resample_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Sample weights (n,) of a bootstrap resample given as indices: counts / len(idx)."""
    return np.bincount(idx, minlength=n) / len(idx)


def bootstrap(stat: Callable[[np.ndarray], float | np.ndarray], n: int, B: int = 1000, seed: int = 0,
              level: float = 0.95) -> tuple:
    """Nonparametric bootstrap percentile interval (Efron & Tibshirani 1993, ch. 6 and 13.3).

    ``stat(idx)`` computes the statistic on the samples ``idx`` (int (n,), indices into the test set,
    with repeats); it may return a float or a 1-D array (several figures on the same resamples).
    Draws ``B`` resamples of size n with replacement from ``np.random.default_rng(seed)``.
    Returns ``(point, lo, hi)``: ``point = stat(arange(n))`` and the (1 - level) / 2 and (1 + level) / 2
    percentiles of the B replicates, ignoring NaN replicates (e.g. a PGR whose references tie in a
    resample). Floats for a scalar statistic, arrays otherwise. The percentile interval need not
    contain the point for very skewed statistics."""
    rng = np.random.default_rng(seed)
    point = stat(np.arange(n))
    reps = np.array([stat(rng.integers(0, n, n)) for _ in range(B)], dtype=np.float64)
    a = (1.0 - level) / 2.0
    with warnings.catch_warnings():  # all-NaN columns give NaN bounds without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(reps, [100 * a, 100 * (1 - a)], axis=0)
    if np.ndim(point) == 0:
        return float(point), float(lo), float(hi)
    return np.asarray(point, dtype=np.float64), lo, hi


def bootstrap_metrics(assign: np.ndarray, s, tiers: Sequence[str], cloud: int, keys: Sequence[str] = HEADLINE,
                      B: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """95% bootstrap intervals of a policy's headline figures (``policy_metrics`` keys) over test
    samples: ``{key: (point, lo, hi)}``. All keys share the same resamples; the references (all-cloud,
    best edge) are recomputed on each resample, as the figures are defined relative to them."""
    n = len(assign)

    def stat(idx):
        m = policy_metrics(assign, s, tiers, cloud, weights=resample_weights(idx, n))
        return np.array([m[k] for k in keys], dtype=np.float64)

    point, lo, hi = bootstrap(stat, n, B, seed, level)
    return {k: (float(p), float(a), float(b)) for k, p, a, b in zip(keys, point, lo, hi)}


def _per_sample_sweep(assigns: Sequence[np.ndarray], s, tiers: Sequence[str]) -> dict:
    """Per threshold and sample (T, n): accuracy, cloud/edge share, latency, energy of a sweep."""
    edge = np.array([t == "edge" for t in tiers])
    cloud_tier = np.array([t == "cloud" for t in tiers])
    return {"accuracy": np.stack([(a * s.score).sum(1) for a in assigns]),
            "cloud_share": np.stack([a[:, cloud_tier].sum(1) for a in assigns]),
            "edge_share": np.stack([a[:, edge].sum(1) for a in assigns]),
            "mean_latency_s": np.stack([(a * s.latency_s).sum(1) for a in assigns]),
            "mean_energy_j": np.stack([(a * s.energy_j).sum(1) for a in assigns])}


def _weighted_summary(per: dict, w: np.ndarray, refs: dict, cpt_levels) -> dict:
    means = {k: v @ w for k, v in per.items()}
    points = [{k: float(means[k][j]) for k in means} for j in range(len(means["accuracy"]))]
    return routing_summary(points, refs, cpt_levels)


def bootstrap_routing(assigns: Sequence[np.ndarray], s, tiers: Sequence[str], cloud: int,
                      cpt_levels: Sequence[float] = (50, 80), B: int = 1000, seed: int = 0,
                      level: float = 0.95, minus: Sequence[np.ndarray] | None = None) -> dict:
    """Bootstrap intervals of ``routing_summary`` (APGR on the three axes, CPT levels) for a threshold
    sweep given as its assignment matrices ``assigns`` (one (n, K) per threshold, sweep order):
    ``{key: (point, lo, hi)}``. The sweep is re-scored on each resample (vectorised over thresholds).
    With ``minus`` (another sweep on the same samples) the statistic is the paired difference
    summary(assigns) - summary(minus), both re-scored on the same resamples."""
    n = len(s.score)
    per = _per_sample_sweep(assigns, s, tiers)
    other = None if minus is None else _per_sample_sweep(minus, s, tiers)
    keys = None

    def stat(idx):
        nonlocal keys
        w = resample_weights(idx, n)
        refs = references(s, tiers, cloud, w)
        summ = _weighted_summary(per, w, refs, cpt_levels)
        if other is not None:
            base = _weighted_summary(other, w, refs, cpt_levels)
            summ = {k: summ[k] - base[k] for k in summ}
        keys = list(summ)
        return np.array([summ[k] for k in keys], dtype=np.float64)

    point, lo, hi = bootstrap(stat, n, B, seed, level)
    return {k: (float(p), float(a), float(b)) for k, p, a, b in zip(keys, point, lo, hi)}


# ---------------------------------------------------------------------------------------------- calibration

_EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def nll(p: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of predicted P(correct) ``p`` against outcomes ``y`` in [0, 1] (binary
    correctness or a soft VQA score), p clipped to [1e-7, 1 - 1e-7]."""
    z, y = logit(p), np.asarray(y, dtype=np.float64)
    return float(np.mean(y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z)))


def reliability(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict:
    """Equal-width-bin reliability statistics (Guo et al. 2017, sec. 2): bins [0, 1/M), ..., [(M-1)/M, 1]
    (p = 1 falls in the last). Returns ``edges`` (M+1,), per bin ``count``, ``confidence`` (mean p) and
    ``observed`` (mean y) (NaN for empty bins)."""
    p, y = np.ravel(np.asarray(p, dtype=np.float64)), np.ravel(np.asarray(y, dtype=np.float64))
    b = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(b, weights=p, minlength=n_bins) / count
        obs = np.bincount(b, weights=y, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count, "confidence": conf, "observed": obs}


def ece(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017, eq. 3) with ``n_bins`` equal-width
    bins: ``sum_b |B_b| / n * |mean y in B_b - mean p in B_b|``. ``p`` predicted P(correct), ``y`` observed
    correctness (0/1, or the soft VQA score in [0, 1], whose mean is the bin's expected score)."""
    r = reliability(p, y, n_bins)
    ok = r["count"] > 0
    return float(np.sum(r["count"][ok] / r["count"].sum() * np.abs(r["observed"][ok] - r["confidence"][ok])))


def ece_per_model(probs: np.ndarray, outcomes: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """``ece`` of each column: float (K,) for probs / outcomes (n, K)."""
    return np.array([ece(probs[:, k], outcomes[:, k], n_bins) for k in range(probs.shape[1])])


def apply_temperature(p: np.ndarray, temperature) -> np.ndarray:
    """``sigmoid(logit(p) / T)``; ``temperature`` a float or (K,) per column."""
    return sigmoid(logit(p) / np.asarray(temperature, dtype=np.float64))


def fit_temperature(p: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0),
                    tol: float = 1e-5):
    """Temperature scaling (Guo et al. 2017, sec. 4.2) for binary P(correct): the T minimising
    ``nll(sigmoid(logit(p) / T), y)`` on held-out data (router-val), by golden-section search over log T
    in ``bounds`` (the NLL is convex in 1/T, hence unimodal in log T, so the search finds the bounded
    optimum). ``p``, ``y`` (n,) give a float; (n, K) give one T per column, float (K,)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if p.ndim == 2:
        return np.array([fit_temperature(p[:, k], y[:, k], bounds, tol) for k in range(p.shape[1])])
    z = logit(p)
    f = lambda u: nll(sigmoid(z / np.exp(u)), y)  # noqa: E731
    a, b = np.log(bounds[0]), np.log(bounds[1])
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(np.exp((a + b) / 2.0))


def calibration_table(val_probs: np.ndarray, val_outcomes: np.ndarray, test_probs: np.ndarray,
                      test_outcomes: np.ndarray, models: Sequence[str], n_bins: int = 15) -> dict:
    """Per model: the temperature fitted on router-val and, on router-test, ECE and NLL before and after
    scaling: ``{model: {temperature, ece_before, ece_after, nll_before, nll_after}}``."""
    temps = fit_temperature(val_probs, val_outcomes)
    scaled = apply_temperature(test_probs, temps)
    return {m: {"temperature": float(temps[k]),
                "ece_before": ece(test_probs[:, k], test_outcomes[:, k], n_bins),
                "ece_after": ece(scaled[:, k], test_outcomes[:, k], n_bins),
                "nll_before": nll(test_probs[:, k], test_outcomes[:, k]),
                "nll_after": nll(scaled[:, k], test_outcomes[:, k])} for k, m in enumerate(models)}


def reliability_plot(out_dir: str | Path, probs: np.ndarray, outcomes: np.ndarray, models: Sequence[str],
                     n_bins: int = 15, scaled: np.ndarray | None = None) -> list[Path]:
    """One reliability diagram PNG per model (Guo et al. 2017, fig. 1): observed mean outcome against
    mean predicted P(correct) per equal-width bin, the diagonal, bin counts, ECE in the legend; with
    ``scaled`` (n, K) (temperature-scaled probabilities) a second series. Writes
    ``out_dir/reliability_<model>.png``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, m in enumerate(models):
        fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        series = [("raw", probs[:, k])] + ([("temperature-scaled", scaled[:, k])] if scaled is not None else [])
        width = 1.0 / n_bins
        for j, (name, p) in enumerate(series):
            r = reliability(p, outcomes[:, k], n_bins)
            ok = r["count"] > 0
            ax.plot(r["confidence"][ok], r["observed"][ok], "o-", ms=4,
                    label=f"{name} (ECE {ece(p, outcomes[:, k], n_bins):.3f})")
            centres = r["edges"][:-1] + width / 2
            axc.bar(centres + (j - (len(series) - 1) / 2) * width / len(series), r["count"],
                    width / len(series), alpha=0.7, label=name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("observed mean outcome")
        ax.set_title(f"reliability: {m}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        axc.set_xlabel("predicted P(correct)")
        axc.set_ylabel("count")
        fig.tight_layout()
        path = out_dir / f"reliability_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in m)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
