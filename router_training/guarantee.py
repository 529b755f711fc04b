"""Routing thresholds with a distribution-free accuracy guarantee: Learn then Test.

Problem. A scalar threshold t turns router outputs into an assignment (n, K) (``assign(t)``, e.g. the
router's edge-eligibility threshold in ``decision.decide``). Per sample i, the accuracy loss against
all-cloud is

    l_i(t) = score_i[cloud] - sum_m assign_i(t)[m] * score_i[m]        in [-1, 1]

(VQA scores lie in [0, 1]; for a random policy the routed score is its expectation). Its mean R(t) is
the accuracy lost against all-cloud. Given a tolerated loss ``eps`` and risk level ``delta``, we choose
on router-val the most permissive (most edge-routing) threshold t_hat such that

    P( R(t_hat) > eps ) <= delta,

the probability being over the draw of router-val, R the expected loss on new data from the same
distribution.

Method (Angelopoulos, Bates, Candes, Jordan & Lei, "Learn then Test: Calibrating Predictive Algorithms
to Achieve Risk Control", 2021, arXiv:2110.01052):

1. one null hypothesis per grid threshold, H_t: R(t) > eps;
2. a valid p-value per H_t from the empirical risk on router-val: the Hoeffding-Bentkus p-value
   (LTT sec. 3, eq. for p^HB; Bentkus 2004), which needs losses in [0, 1];
3. family-wise error control at ``delta`` by fixed-sequence testing: the grid is ordered from the
   most conservative threshold to the most permissive *before seeing data*; hypotheses are rejected in
   that order while p <= delta and testing stops at the first p > delta. Every rejected threshold then
   satisfies R(t) <= eps simultaneously with probability >= 1 - delta, so the last rejected one, the most
   permissive certified threshold, is returned. No monotonicity of R(t) is assumed; a non-monotone
   risk only makes the sequence stop earlier.

If no threshold is certified the result says so (``threshold`` None) and the caller must route
everything to the cloud: all-cloud has l_i = 0 for every sample, so it meets any eps >= 0.

Losses in [0, 1]. ``transform="shift"`` (default) maps l to (l + 1) / 2 and eps to (eps + 1) / 2: an
affine bijection, so H_t is unchanged and the test is exact in its assumptions, but the bounds then
work at a mean near 1/2 where Hoeffding/Bentkus are widest (about twice the loss range of the clip
variant). ``transform="clip"`` uses max(l, 0) (samples where routing *beats* the cloud count as 0) with
eps unchanged: since R(t) <= E[max(l, 0)], certifying E[max(l, 0)] <= eps certifies R(t) <= eps; it is
conservative in a different way (gains are ignored) but much tighter when routed answers rarely lose
to the cloud's.

Assumption (exchangeability). The guarantee holds when the router-val samples and the new queries are
i.i.d. draws from one distribution (in particular exchangeable): same dataset mix, degradations and
models, and router-val not used to train the router or to choose the grid, lambdas or eps. It is a
statement about the expected loss R on that distribution; the empirical loss of a finite test set
fluctuates around R(t_hat) by O(1/sqrt(n_test)). Under distribution shift (new cameras, question
types, model updates) it does not hold; recalibrate on fresh data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


# The edge-threshold grid, fixed before seeing data and ordered conservative first: 1, then 1 - 10^-4 ...
# 1 - 10^0 = 0 evenly in log(1 - t). Dense near 1 because a router's P(correct) for the answers it can
# trust piles up there (a uniform 0.02 step jumps from "nothing on the edge" to too much at once).
DEFAULT_GRID = np.r_[1.0, 1.0 - np.logspace(-4, 0, 50)]


def per_sample_loss(assign: np.ndarray, score: np.ndarray, cloud: int) -> np.ndarray:
    """l_i = score_i[cloud] - routed score_i, float (n,) in [-1, 1], for an assignment (n, K)."""
    return score[:, cloud] - (assign * score).sum(1)


def loss_matrix(assign: Callable[[float], np.ndarray], thresholds: Sequence[float], score: np.ndarray,
                cloud: int) -> np.ndarray:
    """Per-sample losses for each threshold: float (T, n)."""
    return np.stack([per_sample_loss(assign(t), score, cloud) for t in thresholds])


def to_unit(losses: np.ndarray, eps: float, transform: str = "shift") -> tuple[np.ndarray, float]:
    """Losses in [-1, 1] and tolerance -> losses in [0, 1] and the matching tolerance (module docstring):
    "shift": ((l + 1) / 2, (eps + 1) / 2); "clip": (max(l, 0), eps)."""
    if transform == "shift":
        return (np.asarray(losses, dtype=np.float64) + 1.0) / 2.0, (eps + 1.0) / 2.0
    if transform == "clip":
        return np.maximum(np.asarray(losses, dtype=np.float64), 0.0), float(eps)
    raise ValueError(f"transform must be 'shift' or 'clip', not {transform!r}")


def _kl_bernoulli(a: float, b: float) -> float:
    """h1(a, b) = a log(a / b) + (1 - a) log((1 - a) / (1 - b)), with 0 log 0 = 0."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hoeffding_pvalue(risk_hat: float, n: int, alpha: float) -> float:
    """Hoeffding p-value for H: R > alpha with n losses in [0, 1] of empirical mean ``risk_hat`` (LTT,
    Hoeffding's KL form): exp(-n h1(min(risk_hat, alpha), alpha))."""
    return math.exp(-n * _kl_bernoulli(min(risk_hat, alpha), alpha))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k), numpy only (log-space sum of the pmf)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    j = np.arange(1, k + 1, dtype=np.float64)
    log_choose = np.r_[0.0, np.cumsum(np.log(n - j + 1) - np.log(j))]
    ks = np.arange(k + 1, dtype=np.float64)
    logpmf = log_choose + ks * math.log(p) + (n - ks) * math.log1p(-p)
    m = logpmf.max()
    return float(min(1.0, math.exp(m) * np.exp(logpmf - m).sum()))


def bentkus_pvalue(risk_hat: float, n: int, alpha: float) -> float:
    """Bentkus p-value for H: R > alpha (Bentkus 2004; LTT): e * P(Bin(n, alpha) <= ceil(n risk_hat))."""
    k = math.ceil(n * risk_hat - 1e-9)
    return min(1.0, math.e * binom_cdf(k, n, alpha))


def hb_pvalue(risk_hat: float, n: int, alpha: float) -> float:
    """Hoeffding-Bentkus p-value (LTT, Angelopoulos et al. 2021): the minimum of the two, valid for
    i.i.d. losses in [0, 1]."""
    return min(hoeffding_pvalue(risk_hat, n, alpha), bentkus_pvalue(risk_hat, n, alpha))


def fixed_sequence(p_values: Sequence[float], delta: float) -> int:
    """Fixed-sequence testing: the number of leading hypotheses rejected (p <= delta) before the first
    non-rejection. Controls the family-wise error rate at delta for a data-independent order."""
    count = 0
    for p in p_values:
        if p > delta:
            break
        count += 1
    return count


@dataclass
class LTTResult:
    """Outcome of a Learn-then-Test calibration.

    ``threshold``: the most permissive certified threshold, None when none is (then route all to the
    cloud); ``index`` its position in ``thresholds`` (None likewise); ``thresholds`` the grid in test
    order (conservative first); ``p_values`` float (T,); ``val_loss`` float (T,) the empirical accuracy
    loss vs all-cloud on router-val (original [-1, 1] scale); ``n`` router-val size."""

    threshold: float | None
    index: int | None
    thresholds: np.ndarray
    p_values: np.ndarray
    val_loss: np.ndarray
    n: int
    eps: float
    delta: float
    transform: str
    notes: dict = field(default_factory=dict)

    @property
    def certified(self) -> bool:
        return self.index is not None


def calibrate_losses(losses: np.ndarray, thresholds: Sequence[float], eps: float, delta: float,
                     transform: str = "shift") -> LTTResult:
    """LTT on precomputed per-sample losses ``losses`` float (T, n) in [-1, 1], row j for
    ``thresholds[j]``, the grid ordered from most conservative to most permissive."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[0] != len(thresholds):
        raise ValueError("losses must be (len(thresholds), n)")
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    if not 0 <= eps < 1:
        raise ValueError("eps must be in [0, 1)")
    n = losses.shape[1]
    unit, alpha = to_unit(losses, eps, transform)
    risk = unit.mean(1)
    p = np.array([hb_pvalue(float(r), n, alpha) for r in risk])
    k = fixed_sequence(p, delta)
    idx = k - 1 if k > 0 else None
    th = np.asarray(thresholds, dtype=np.float64)
    return LTTResult(None if idx is None else float(th[idx]), idx, th, p, losses.mean(1), n, eps, delta, transform)


def calibrate(assign: Callable[[float], np.ndarray], thresholds: Sequence[float], score: np.ndarray, cloud: int,
              eps: float, delta: float, transform: str = "shift") -> LTTResult:
    """LTT threshold on router-val for a user-supplied ``assign(threshold) -> (n, K)`` assignment;
    ``score`` (n, K) router-val VQA scores; ``thresholds`` ordered conservative -> permissive (chosen
    without looking at router-val). See the module docstring for the guarantee and its assumption."""
    return calibrate_losses(loss_matrix(assign, thresholds, score, cloud), thresholds, eps, delta, transform)


def router_assign(probs: np.ndarray, tiers: Sequence[str], expected_latency_s, expected_energy_j,
                  lambda_latency: float = 0.0, lambda_energy: float = 0.0, ref_latency_s: float = 1.0,
                  ref_energy_j: float = 1.0) -> Callable[[float], np.ndarray]:
    """``assign(t)`` for the learned router: ``decision.decide`` on ``probs`` (n, K) with threshold t for
    every edge-tier model (0 for cloud models), one-hot (n, K). Raising t makes fewer edge models
    eligible, so larger t is more conservative."""
    from .core.decision import decide

    k = probs.shape[1]

    def assign(t: float) -> np.ndarray:
        thr = np.array([t if tier == "edge" else 0.0 for tier in tiers])
        idx = decide(probs, expected_latency_s, expected_energy_j, thr, lambda_latency, lambda_energy,
                     ref_latency_s, ref_energy_j)
        return np.eye(k)[idx]

    return assign


def calibrate_router(probs: np.ndarray, score: np.ndarray, tiers: Sequence[str], cloud: int, eps: float,
                     delta: float, expected_latency_s, expected_energy_j, lambda_latency: float = 0.0,
                     lambda_energy: float = 0.0, ref_latency_s: float = 1.0, ref_energy_j: float = 1.0,
                     grid: Sequence[float] | None = None, transform: str = "shift") -> LTTResult:
    """LTT on the router's router-val probabilities ``probs`` (n, K) and scores ``score`` (n, K): the
    single edge threshold of ``router_assign`` over ``grid`` (default ``DEFAULT_GRID``, conservative
    first). Lambdas and reference costs as in the tuned decision."""
    grid = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    assign = router_assign(probs, tiers, expected_latency_s, expected_energy_j, lambda_latency, lambda_energy,
                           ref_latency_s, ref_energy_j)
    return calibrate(assign, grid, score, cloud, eps, delta, transform)


def _n_cal(n: int, cal_fraction: float) -> int:
    n_cal = int(round(cal_fraction * n))
    if not 0 < n_cal < n:
        raise ValueError(f"cal_fraction {cal_fraction} leaves no calibration or no test samples of {n}")
    return n_cal


def resplit_indices(n: int, resplits: int, cal_fraction: float = 0.5, seed: int = 0):
    """The random resplits of ``resplit_check`` and ``fixed_policy_check``: ``resplits`` pairs (cal, test)
    of index arrays partitioning range(n), the first ``round(cal_fraction * n)`` of a seeded permutation
    calibrating. The same (n, resplits, cal_fraction, seed) give the same halves."""
    n_cal = _n_cal(n, cal_fraction)
    rng = np.random.default_rng(seed)
    for _ in range(resplits):
        perm = rng.permutation(n)
        yield perm[:n_cal], perm[n_cal:]


def resplit_check(losses: np.ndarray, thresholds: Sequence[float], eps: float, delta: float,
                  transform: str = "shift", resplits: int = 200, cal_fraction: float = 0.5, seed: int = 0,
                  edge: np.ndarray | None = None) -> dict:
    """Empirical check of the guarantee: ``resplits`` random splits of a pool of samples (e.g. router-val
    and router-test together) into a calibration part (``cal_fraction``) and a test part; on each, LTT
    on the calibration part (``calibrate_losses``) and the mean loss of its threshold on the test part
    (0 when nothing is certified: all-cloud). ``losses`` float (T, n) per-sample losses in [-1, 1] for
    ``thresholds`` (conservative first). Returns ``violation_rate`` (share of resplits whose test loss
    exceeds eps; the guarantee says at most about delta, up to the test part's sampling noise),
    ``naive_violation_rate`` (the same for the uncalibrated rule "most permissive threshold whose
    calibration loss <= eps", to show the check can fail), ``certified_rate``, ``mean_test_loss``,
    ``mean_edge_threshold`` (over certified resplits, NaN if none), ``resplits``, ``n_cal``, ``n_test``;
    with ``edge`` (T, n) 0/1, whether each sample goes to an edge model at each threshold,
    ``mean_edge_share``: the test part's edge share under the chosen threshold (0 when none is certified),
    averaged over resplits: what the guarantee leaves on the edge."""
    losses = np.asarray(losses, dtype=np.float64)
    n = losses.shape[1]
    n_cal = _n_cal(n, cal_fraction)
    th = np.asarray(thresholds, dtype=np.float64)
    viol = naive = cert = 0
    test_losses, chosen, shares = [], [], []
    for cal, test in resplit_indices(n, resplits, cal_fraction, seed):
        res = calibrate_losses(losses[:, cal], th, eps, delta, transform)
        loss = float(losses[res.index, test].mean()) if res.certified else 0.0
        test_losses.append(loss)
        if edge is not None:
            shares.append(float(edge[res.index, test].mean()) if res.certified else 0.0)
        viol += loss > eps
        cert += res.certified
        if res.certified:
            chosen.append(res.threshold)
        ok = np.nonzero(losses[:, cal].mean(1) <= eps)[0]
        naive += (float(losses[ok.max(), test].mean()) if len(ok) else 0.0) > eps
    return {"violation_rate": viol / resplits, "naive_violation_rate": naive / resplits,
            "certified_rate": cert / resplits, "mean_test_loss": float(np.mean(test_losses)),
            "mean_edge_threshold": float(np.mean(chosen)) if chosen else float("nan"),
            **({"mean_edge_share": float(np.mean(shares))} if edge is not None else {}),
            "resplits": resplits, "n_cal": n_cal, "n_test": n - n_cal, "eps": eps, "delta": delta,
            "transform": transform}


def fixed_policy_check(losses: np.ndarray, eps: float, resplits: int = 200, cal_fraction: float = 0.5,
                       seed: int = 0, edge: np.ndarray | None = None) -> dict:
    """The deployed policy itself on the test parts of ``resplit_check``'s resplits (the same halves
    for the same ``resplits``, ``cal_fraction`` and ``seed``): no recalibration, the policy is fixed (e.g.
    the manifest's exact thresholds and lambdas through ``decision.decide``). ``losses`` float (n,) its
    per-sample losses against all-cloud in [-1, 1] (``per_sample_loss``); ``edge`` optional (n,) 0/1,
    whether it sends each sample to an edge model.

    Returns ``violation_rate`` (share of resplits whose test part loses more than ``eps`` on average),
    ``mean_test_loss`` (the test parts' mean loss, averaged over resplits), with ``edge``
    ``mean_edge_share`` (likewise), and ``resplits``, ``n_test``, ``eps``. A policy that sends every
    query to the all-cloud reference has loss 0 everywhere and a violation rate of 0."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1:
        raise ValueError("losses must be (n,): one fixed policy's per-sample losses")
    n = len(losses)
    edge = None if edge is None else np.asarray(edge, dtype=np.float64)
    test_losses, shares = [], []
    for _, test in resplit_indices(n, resplits, cal_fraction, seed):
        test_losses.append(float(losses[test].mean()))
        if edge is not None:
            shares.append(float(edge[test].mean()))
    test_losses = np.asarray(test_losses)
    return {"violation_rate": float(np.mean(test_losses > eps)), "mean_test_loss": float(test_losses.mean()),
            **({"mean_edge_share": float(np.mean(shares))} if edge is not None else {}),
            "resplits": resplits, "n_test": n - _n_cal(n, cal_fraction), "eps": eps}
