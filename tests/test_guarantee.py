"""Tests for router_training.guarantee (Learn-then-Test threshold calibration): p-values by hand, their
validity, fixed-sequence testing on a non-monotone risk, and the empirical guarantee over 200
random router-val / router-test resplits of a synthetic dataset."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from router_training import evaluate
from router_training import guarantee as G
from router_training.config import TuneConfig
from router_training.core.features import FEATURE_NAMES, FEATURE_VERSION
from router_training.core.splits import SplitArrays
from router_training.core.profile import DeploymentProfile
from router_training.core.decision import NEVER_THRESHOLD
from router_training.core.manifest import Manifest
from router_training.runtime import Router


# ---------------------------------------------------------------------------------------------- p-values

def test_hoeffding_pvalue_by_hand():
    # n = 100, mean .1, alpha .2: h1(.1, .2) = .1 ln(.5) + .9 ln(.9 / .8) = .0366900; exp(-3.66900) = .0255019
    assert G.hoeffding_pvalue(0.1, 100, 0.2) == pytest.approx(0.0255019, rel=1e-5)
    assert G.hoeffding_pvalue(0.2, 100, 0.2) == 1.0      # mean at or above alpha: no evidence
    assert G.hoeffding_pvalue(0.5, 100, 0.2) == 1.0
    # mean 0: exp(-n ln(1 / (1 - alpha))) = .8 ** 100
    assert G.hoeffding_pvalue(0.0, 100, 0.2) == pytest.approx(0.8 ** 100)


def test_bentkus_pvalue_by_hand():
    # n = 10, mean .1, alpha .3: e * P(Bin(10, .3) <= 1) = e * (.7^10 + 10 * .3 * .7^9) = e * .1493083 = .405862
    assert G.bentkus_pvalue(0.1, 10, 0.3) == pytest.approx(0.405862, rel=1e-5)
    assert G.hb_pvalue(0.1, 10, 0.3) == pytest.approx(min(0.405862, G.hoeffding_pvalue(0.1, 10, 0.3)), rel=1e-5)


def test_binom_cdf_matches_direct_sum():
    for n, k, p in [(10, 3, 0.3), (50, 20, 0.45), (400, 10, 0.01), (7, 7, 0.5), (7, -1, 0.5)]:
        direct = sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(0, max(k, -1) + 1))
        assert G.binom_cdf(k, n, p) == pytest.approx(min(direct, 1.0), rel=1e-9, abs=1e-15)


def test_hb_pvalue_is_valid_under_the_null():
    # Losses in [0, 1] with mean exactly alpha (the least favourable null): P(p <= delta) <= delta.
    rng = np.random.default_rng(0)
    n, alpha, delta, reps = 200, 0.3, 0.1, 2000
    bern = [G.hb_pvalue(float(m), n, alpha) for m in (rng.random((reps, n)) < alpha).mean(1)]
    unif = [G.hb_pvalue(float(m), n, alpha) for m in rng.uniform(0, 2 * alpha, (reps, n)).mean(1)]
    assert np.mean(np.array(bern) <= delta) <= delta
    assert np.mean(np.array(unif) <= delta) <= delta


def test_transforms():
    u, a = G.to_unit(np.array([-1.0, 0.0, 1.0]), 0.05, "shift")
    np.testing.assert_allclose(u, [0.0, 0.5, 1.0])
    assert a == pytest.approx(0.525)
    u, a = G.to_unit(np.array([-1.0, 0.0, 0.5]), 0.05, "clip")
    np.testing.assert_allclose(u, [0.0, 0.0, 0.5])
    assert a == 0.05
    with pytest.raises(ValueError):
        G.to_unit(np.zeros(2), 0.05, "square")


# ---------------------------------------------------------------------------------------------- fixed sequence

def test_fixed_sequence_stops_at_first_failure():
    assert G.fixed_sequence([0.01, 0.02, 0.5, 0.001], 0.05) == 2
    assert G.fixed_sequence([0.5, 0.001], 0.05) == 0
    assert G.fixed_sequence([0.01, 0.05], 0.05) == 2


def test_calibrate_losses_non_monotone_risk_by_hand():
    # n = 100, clip transform, eps .2, delta .1; thresholds ordered conservative -> permissive:
    #   t = .9: no loss             -> p = min(.8^100, e * .8^100) = 2.0e-10  -> rejected (certified)
    #   t = .7: 30 samples lose 1   -> mean .3 > .2, p = 1                    -> not rejected: stop
    #   t = .5: no loss (p tiny) but never tested: the sequence stopped at .7
    # -> threshold .9 (index 0).
    n = 100
    losses = np.zeros((3, n))
    losses[1, :30] = 1.0
    res = G.calibrate_losses(losses, [0.9, 0.7, 0.5], eps=0.2, delta=0.1, transform="clip")
    assert res.certified and res.index == 0 and res.threshold == 0.9
    np.testing.assert_allclose(res.p_values, [0.8 ** 100, 1.0, 0.8 ** 100], rtol=1e-9)
    np.testing.assert_allclose(res.val_loss, [0.0, 0.3, 0.0])


def test_nothing_certified_means_all_cloud():
    losses = np.full((2, 50), 0.5)                      # every threshold loses half a point per sample
    res = G.calibrate_losses(losses, [0.8, 0.4], eps=0.05, delta=0.1)
    assert not res.certified and res.threshold is None and res.index is None


def test_calibrate_router_matches_user_assign():
    rng = np.random.default_rng(0)
    n = 3000
    probs = np.stack([rng.random(n), np.full(n, 0.9)], 1)
    score = np.stack([(rng.random(n) < probs[:, 0]).astype(float), np.ones(n)], 1)   # cloud always right
    tiers = ["edge", "cloud"]
    kw = dict(expected_latency_s=np.array([0.1, 0.5]), expected_energy_j=np.array([1.0, 1.0]),
              lambda_latency=1.0, ref_latency_s=0.5)
    assign = G.router_assign(probs, tiers, **kw)
    assert (assign(NEVER_THRESHOLD).argmax(1) == 1).all()  # nothing eligible on the edge: all cloud
    grid = np.linspace(1.0, 0.0, 21)
    a = G.calibrate_router(probs, score, tiers, 1, 0.05, 0.1, grid=grid, **kw)
    b = G.calibrate(assign, grid, score, 1, 0.05, 0.1)
    assert a.index == b.index and a.certified
    np.testing.assert_allclose(a.p_values, b.p_values)
    # edge right w.p. p, cloud always: for t >= .1 (edge cost -p + .2 beats cloud .1 once eligible) the
    # expected loss at t is E[(1 - p) 1{p >= t}] = (1 - t)^2 / 2; the certified threshold keeps val loss <= eps
    assert a.val_loss[a.index] <= 0.05 and 0.0 < a.threshold < 1.0


# ---------------------------------------------------------------------------------------------- empirical guarantee

def synthetic_pool(n=6000, seed=0):
    """Edge / cloud VQA outcomes driven by a latent difficulty d ~ U(0, 1): edge right w.p.
    sigmoid(3 - 7d) (~43% overall), cloud w.p. sigmoid(4 - 5d) (~74%); the router's P(edge right) is
    the true probability with logit noise N(0, .7^2). Routing uses runtime.decide with latency
    lambda 1, so an eligible edge model is preferred. Returns losses (T, n) over the grid."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0, 1, n)
    pe, pc = 1 / (1 + np.exp(-(3 - 7 * d))), 1 / (1 + np.exp(-(4 - 5 * d)))
    score = np.stack([rng.random(n) < pe, rng.random(n) < pc], 1).astype(float)
    pe_hat = 1 / (1 + np.exp(-(np.log(pe / (1 - pe)) + rng.normal(0, 0.7, n))))
    probs = np.stack([pe_hat, np.full(n, 0.9)], 1)
    grid = np.linspace(1.0, 0.0, 51)
    assign = G.router_assign(probs, ["edge", "cloud"], np.array([0.1, 0.5]), np.array([1.0, 1.0]),
                             lambda_latency=1.0, ref_latency_s=0.5)
    return G.loss_matrix(assign, grid, score, 1), grid


@pytest.mark.parametrize("transform", ["shift", "clip"])
def test_violation_rate_over_resplits_at_most_delta(transform):
    """200 random 50/50 resplits of a 6000-sample pool into router-val (calibrate) and router-test
    (evaluate). A violation is a test accuracy loss vs all-cloud above eps.

    LTT bounds the *expected* loss: P(R(t_hat) > eps) <= delta. The test-set loss adds sampling noise
    (sd ~ .004 here at n_test = 3000), and the violation count of a procedure that were exactly at
    level delta would be ~ Binomial(200, .1): mean 20, sd 4.2, so a tolerance of about 2 sd (+.04)
    would be justified. None is used: the HB bound is conservative (the certified val loss sits well
    below eps) and the seeded run gives 0 violations, far below delta. The naive rule (most permissive
    threshold whose *empirical* val loss <= eps) is run on the same resplits to show the check has
    power: it violates in roughly 40% of them."""
    eps, delta = 0.05, 0.1
    losses, grid = synthetic_pool()
    check = G.resplit_check(losses, grid, eps, delta, transform, resplits=200, seed=1)
    assert check["violation_rate"] <= delta
    assert check["naive_violation_rate"] > 2 * delta        # the uncalibrated rule is not safe
    assert check["certified_rate"] > 0.9                    # and the guarantee is not vacuous
    assert 0.0 < check["mean_test_loss"] <= eps and 0.0 < check["mean_edge_threshold"] < 1.0


# ---------------------------------------------------------------------------------------------- deployed policy

def test_fixed_policy_check_uses_the_resplit_check_halves():
    """One always-certified threshold (clip losses of mean ~.005 vs eps .05 on 1000 calibration samples):
    resplit_check's test losses and edge shares are then the fixed policy's on the same halves."""
    rng = np.random.default_rng(5)
    n = 2000
    row = 0.01 * (rng.random(n) < 0.5)
    edge = (rng.random(n) < 0.4).astype(float)
    full = G.resplit_check(row[None], [0.5], 0.05, 0.1, "clip", resplits=50, seed=3, edge=edge[None])
    assert full["certified_rate"] == 1.0
    fixed = G.fixed_policy_check(row, 0.05, resplits=50, seed=3, edge=edge)
    assert fixed["mean_test_loss"] == pytest.approx(full["mean_test_loss"], abs=1e-15)
    assert fixed["mean_edge_share"] == pytest.approx(full["mean_edge_share"], abs=1e-15)
    assert fixed["violation_rate"] == 0.0 and fixed["n_test"] == full["n_test"] == 1000
    other = G.fixed_policy_check(row, 0.05, resplits=50, seed=4, edge=edge)
    assert other["mean_edge_share"] != fixed["mean_edge_share"]   # another seed: other halves
    with pytest.raises(ValueError):
        G.fixed_policy_check(row[None], 0.05)


def test_fixed_policy_check_by_hand():
    losses = np.r_[np.full(10, 0.3), np.zeros(10)]          # 20 samples, mean .15
    check = G.fixed_policy_check(losses, 0.05, resplits=100, cal_fraction=0.5, seed=0)
    # a test half of 10 loses more than .05 unless it holds no .3 sample (1 / C(20, 10): never here)
    assert check["violation_rate"] == 1.0
    assert check["mean_test_loss"] == pytest.approx(0.15, abs=0.02)
    zero = G.fixed_policy_check(np.zeros(20), 0.0, resplits=30, edge=np.zeros(20))
    assert zero["violation_rate"] == 0.0 and zero["mean_test_loss"] == 0.0 and zero["mean_edge_share"] == 0.0


class _Session:
    """An onnxruntime stand-in: feature 0 of each row is its index into ``probs``."""

    def __init__(self, probs):
        self.probs = probs

    def get_inputs(self):
        return [SimpleNamespace(name="features")]

    def run(self, _, feeds):
        return [self.probs[feeds["features"][:, 0].round().astype(int)].astype(np.float32)]


def _stub_router(probs, thresholds, lambda_latency=1.0):
    profile = DeploymentProfile(name="t", edge_power_w=10.0, idle_power_w=3.0, radio_tx_power_w=2.0,
                                uplink_mbps=10.0, downlink_mbps=50.0, rtt_s=0.05)
    manifest = {
        "features": {"version": FEATURE_VERSION, "names": list(FEATURE_NAMES),
                     "mean": [0.0] * len(FEATURE_NAMES), "std": [1.0] * len(FEATURE_NAMES)},
        "models": [{"name": "edge", "tier": "edge", "mean_compute_s": 0.01, "mean_payload_bytes": 3000.0},
                   {"name": "cloud", "tier": "cloud", "mean_compute_s": 0.02, "mean_payload_bytes": 3000.0}],
        "profile": profile.to_dict(),
        "decision": {"thresholds": thresholds, "lambda_latency": lambda_latency, "lambda_energy": 0.0,
                     "ref_latency_s": 0.07, "ref_energy_j": 0.2}}
    return Router(Manifest.from_dict({**manifest, "onnx_sha256": ""}), _Session(probs))


def test_guarantee_check_reports_the_deployed_policy():
    """evaluate.guarantee_check on router-test (no guarantee mode): the deployed thresholds and lambdas
    themselves, on the same resplits. All-cloud never loses; all-edge with an edge model right on 40%
    and a cloud model on 80% loses .4 per question, far above eps .01, on every test half."""
    rng = np.random.default_rng(6)
    n = 400
    score = np.stack([rng.random(n) < 0.4, rng.random(n) < 0.8], 1).astype(float)
    probs = np.stack([rng.uniform(0.2, 0.9, n), np.full(n, 0.8)], 1)
    x = np.zeros((n, len(FEATURE_NAMES)), np.float32)
    x[:, 0] = np.arange(n)
    test = SplitArrays([f"s{i}" for i in range(n)], x, score, np.zeros((n, 2)), np.zeros((n, 2)), np.zeros((n, 2)))
    cfg = SimpleNamespace(tune=TuneConfig(max_accuracy_drop=0.01))
    splits = {"router-test": test}

    cloud = evaluate.guarantee_check(cfg, _stub_router(probs, [NEVER_THRESHOLD, 0.0]), splits, 1)
    assert cloud["deployed_violation_rate"] == 0.0 and cloud["deployed_eps"] == pytest.approx(0.01)
    assert cloud["deployed_mean_loss"] == 0.0 and cloud["deployed_edge_share"] == 0.0
    assert cloud["resplits"] == 200 and cloud["pool"] == "router-test"

    edge = evaluate.guarantee_check(cfg, _stub_router(probs, [0.0, 0.0], lambda_latency=5.0), splits, 1)
    assert edge["deployed_edge_share"] == 1.0                      # lambda 5: the edge model always wins
    assert edge["deployed_violation_rate"] == 1.0
    assert edge["deployed_mean_loss"] == pytest.approx(score[:, 1].mean() - score[:, 0].mean(), abs=0.01)
    # the recalibrated check on the same pool is unchanged by what was deployed
    assert edge["violation_rate"] == cloud["violation_rate"] and edge["mean_test_loss"] == cloud["mean_test_loss"]
