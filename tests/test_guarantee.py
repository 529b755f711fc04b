"""Tests for router_training.guarantee (Learn-then-Test threshold calibration): p-values by hand, their
validity, fixed-sequence testing on a non-monotone risk, and the empirical guarantee over 200
random router-val / router-test resplits of a synthetic dataset."""

import math

import numpy as np
import pytest

from router_training import guarantee as G


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
    assert (assign(1.01).argmax(1) == 1).all()          # nothing eligible on the edge: all cloud
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
