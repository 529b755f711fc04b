"""Tests for router_training.policies (routing policies and metrics) and runtime.decide."""

import numpy as np
import pytest

from router_training import policies as P
from router_training.core.splits import SplitArrays
from router_training.core.decision import NEVER_THRESHOLD, decide

TIERS = ["edge", "edge", "cloud"]
CLOUD = 2


@pytest.fixture
def split():
    # 3 samples x 3 models (edge-a, edge-b, cloud)
    score = np.array([[1.0, 1.0, 1.0],
                      [0.4, 0.6, 1.0],   # 0.4 is not "correct" (> 0.5), 0.6 is
                      [0.0, 0.3, 0.0]])  # nobody correct
    latency = np.array([[0.1, 0.2, 0.5],
                        [0.1, 0.2, 0.6],
                        [0.3, 0.15, 0.4]])
    energy = np.array([[1.0, 2.0, 0.5],
                       [1.0, 2.0, 0.5],
                       [3.0, 1.5, 0.4]])
    conf = np.array([[0.9, 0.8, 0.95], [0.5, 0.6, 0.9], [0.1, 0.2, 0.3]])
    x = np.zeros((3, 4), dtype=np.float32)
    return SplitArrays(["s0", "s1", "s2"], x, score, latency, energy, conf)


def test_registry_has_policies():
    assert {"all", "random", "oracle", "router"} <= set(P.POLICIES)


def test_unknown_policy_raises():
    with pytest.raises(ValueError, match="unknown policy"):
        P.make("best")


@pytest.mark.parametrize("model", [0, 1, 2])
def test_all_is_one_hot(split, model):
    a = P.make("all", model=model)(split)
    expected = np.zeros((3, 3))
    expected[:, model] = 1.0
    np.testing.assert_array_equal(a, expected)


def test_oracle_latency(split):
    a = P.make("oracle")(split)
    # s0: all correct -> cheapest latency = model 0; s1: correct {1, 2} -> model 1 (0.2 < 0.6);
    # s2: none correct -> cheapest overall = model 1 (0.15)
    np.testing.assert_array_equal(a.argmax(1), [0, 1, 1])
    np.testing.assert_array_equal(a.sum(1), [1, 1, 1])
    assert set(np.unique(a)) == {0.0, 1.0}


def test_oracle_energy(split):
    a = P.make("oracle", cost="energy_j")(split)
    # s0: cheapest energy among all -> cloud (0.5); s1: correct {1: 2.0, 2: 0.5} -> 2; s2: none -> 2 (0.4)
    np.testing.assert_array_equal(a.argmax(1), [2, 2, 2])


def test_oracle_none_correct_picks_cheapest_even_if_not_first(split):
    split.score[:] = 0.0
    a = P.make("oracle")(split)
    np.testing.assert_array_equal(a.argmax(1), split.latency_s.argmin(1))
    np.testing.assert_array_equal(a.argmax(1), [0, 0, 1])


def test_random_rows_are_normalised_shares(split):
    a = P.make("random", shares=[1, 1, 2])(split)
    np.testing.assert_allclose(a, np.tile([0.25, 0.25, 0.5], (3, 1)))


def test_random_metrics_are_share_weighted_means(split):
    a = P.make("random", shares=[1, 1, 2])(split)
    m = P.metrics(a, split, TIERS, CLOUD)
    # per-sample expected score: 1.0; .25*.4 + .25*.6 + .5*1 = .75; .25*0 + .25*.3 + .5*0 = .075
    assert m["accuracy"] == pytest.approx((1.0 + 0.75 + 0.075) / 3)
    # = share-weighted mean of the per-model mean scores
    assert m["accuracy"] == pytest.approx(0.25 * split.score[:, 0].mean() + 0.25 * split.score[:, 1].mean()
                                          + 0.5 * split.score[:, 2].mean())
    # latency: .325, .375, .3125
    assert m["mean_latency_s"] == pytest.approx((0.325 + 0.375 + 0.3125) / 3)
    assert m["mean_energy_j"] == pytest.approx(0.25 * 5.0 / 3 + 0.25 * 5.5 / 3 + 0.5 * 1.4 / 3)
    assert m["edge_share"] == pytest.approx(0.5)
    assert m["shares"] == pytest.approx([0.25, 0.25, 0.5])


def test_metrics_all_cloud(split):
    m = P.metrics(P.make("all", model=CLOUD)(split), split, TIERS, CLOUD)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["pct_cloud_accuracy"] == pytest.approx(100.0)
    assert m["edge_share"] == 0.0
    assert m["mean_latency_s"] == pytest.approx(0.5)
    assert m["mean_energy_j"] == pytest.approx(1.4 / 3)
    assert m["latency_reduction"] == pytest.approx(0.0)
    assert m["energy_reduction"] == pytest.approx(0.0)
    assert m["shares"] == [0.0, 0.0, 1.0]


def test_metrics_by_hand(split):
    # oracle by latency: [0, 1, 1]
    m = P.metrics(P.make("oracle")(split), split, TIERS, CLOUD)
    acc = (1.0 + 0.6 + 0.3) / 3           # 0.6333
    assert m["accuracy"] == pytest.approx(acc)
    assert m["pct_cloud_accuracy"] == pytest.approx(100 * acc / (2 / 3))  # 95.0
    assert m["pct_cloud_accuracy"] == pytest.approx(95.0)
    assert m["edge_share"] == pytest.approx(1.0)
    assert m["mean_latency_s"] == pytest.approx((0.1 + 0.2 + 0.15) / 3)  # 0.15
    assert m["latency_reduction"] == pytest.approx(1 - 0.15 / 0.5)        # 0.7
    assert m["mean_energy_j"] == pytest.approx((1.0 + 2.0 + 1.5) / 3)    # 1.5
    assert m["energy_reduction"] == pytest.approx(1 - 1.5 / (1.4 / 3))   # negative: costlier
    assert m["energy_reduction"] < 0
    assert m["shares"] == pytest.approx([1 / 3, 2 / 3, 0.0])


def test_metrics_mixed_assignment(split):
    a = np.zeros((3, 3))
    a[0, 0] = a[1, 2] = a[2, 1] = 1.0   # edge, cloud, edge
    m = P.metrics(a, split, TIERS, CLOUD)
    assert m["accuracy"] == pytest.approx((1.0 + 1.0 + 0.3) / 3)
    assert m["edge_share"] == pytest.approx(2 / 3)
    assert m["mean_latency_s"] == pytest.approx((0.1 + 0.6 + 0.15) / 3)
    assert m["latency_reduction"] == pytest.approx(1 - (0.85 / 3) / 0.5)


def test_metrics_zero_cloud_accuracy_gives_nan_pct(split):
    split.score[:, CLOUD] = 0.0
    m = P.metrics(P.make("all", model=0)(split), split, TIERS, CLOUD)
    assert np.isnan(m["pct_cloud_accuracy"])


# ---------------------------------------------------------------- runtime.decide

PROBS = np.array([[0.9, 0.95, 0.99],
                  [0.4, 0.8, 0.99],
                  [0.2, 0.3, 0.9]])
LAT = np.array([0.1, 0.2, 0.5])
EN = np.array([1.0, 2.0, 0.5])


def test_decide_lowest_cost_all_eligible():
    # lambda_latency 1, ref 0.5: cost = -p + [0.2, 0.4, 1.0]
    # s0: [-0.7, -0.55, 0.01] -> 0; s1: [-0.2, -0.4, 0.01] -> 1; s2: [0.0, 0.1, 0.1] -> 0
    idx = decide(PROBS, LAT, EN, np.zeros(3), 1.0, 0.0, 0.5, 0.5)
    np.testing.assert_array_equal(idx, [0, 1, 0])
    assert idx.dtype.kind == "i"


def test_decide_thresholds_make_models_ineligible():
    # s1: model 0 (0.4 < 0.5) ineligible -> 1; s2: both edges below -> cloud
    idx = decide(PROBS, LAT, EN, np.array([0.5, 0.5, 0.0]), 1.0, 0.0, 0.5, 0.5)
    np.testing.assert_array_equal(idx, [0, 1, 2])
    # a threshold above every probability removes the model entirely
    # (s0, s1 then go to model 1: -0.95 + 0.4 < 0.01 and -0.8 + 0.4 < 0.01)
    idx = decide(PROBS, LAT, EN, np.array([NEVER_THRESHOLD, 0.0, 0.0]), 1.0, 0.0, 0.5, 0.5)
    assert 0 not in idx
    np.testing.assert_array_equal(idx[:2], [1, 1])


def test_decide_probability_equal_to_threshold_is_eligible():
    idx = decide(np.array([[0.5, 0.0, 0.9]]), LAT, EN, np.array([0.5, 0.5, 0.0]), 1.0, 0.0, 0.5, 0.5)
    # cost model 0: -0.5 + 0.2 = -0.3 < cloud: -0.9 + 1.0 = 0.1
    np.testing.assert_array_equal(idx, [0])


def test_decide_energy_term():
    # lambda_energy 1, ref 0.5: cost = -p + [2, 4, 1] -> cloud everywhere
    idx = decide(PROBS, LAT, EN, np.zeros(3), 0.0, 1.0, 0.5, 0.5)
    np.testing.assert_array_equal(idx, [2, 2, 2])


def test_decide_no_costs_picks_most_likely_correct():
    idx = decide(PROBS, LAT, EN, np.zeros(3), 0.0, 0.0, 0.5, 0.5)
    np.testing.assert_array_equal(idx, PROBS.argmax(1))


def test_decide_per_sample_costs():
    lat = np.array([[0.1, 0.2, 0.5], [0.1, 0.2, 0.5], [0.1, 0.2, 0.05]])
    # s2: cost = [-0.2 + 0.2, -0.3 + 0.4, -0.9 + 0.1] = [0, 0.1, -0.8] -> cloud
    idx = decide(PROBS, lat, EN, np.zeros(3), 1.0, 0.0, 0.5, 0.5)
    np.testing.assert_array_equal(idx, [0, 1, 2])


def test_decide_single_row():
    idx = decide(PROBS[0], LAT, EN, np.zeros(3), 1.0, 0.0, 0.5, 0.5)
    np.testing.assert_array_equal(idx, [0])


def test_decide_needs_a_zero_threshold():
    with pytest.raises(ValueError, match="threshold"):
        decide(PROBS, LAT, EN, np.array([0.5, 0.5, 0.1]), 1.0, 0.0, 0.5, 0.5)


def test_router_policy_is_one_hot_of_decide(split):
    thresholds = np.array([0.5, 0.5, 0.0])
    pol = P.make("router", probs=lambda s: PROBS, thresholds=thresholds, lambda_latency=1.0, lambda_energy=0.0,
                 ref_latency_s=0.5, ref_energy_j=0.5, expected_latency_s=LAT, expected_energy_j=EN)
    a = pol(split)
    expected = np.zeros((3, 3))
    expected[[0, 1, 2], [0, 1, 2]] = 1.0
    np.testing.assert_array_equal(a, expected)
    m = P.metrics(a, split, TIERS, CLOUD)
    assert m["accuracy"] == pytest.approx((1.0 + 0.6 + 0.0) / 3)
    assert m["edge_share"] == pytest.approx(2 / 3)


def test_the_one_query_chooser_gives_decides_index():
    """DecisionRule.chooser (the device's per-query rule in plain Python) against decide on 3,000 rows:
    probabilities on a coarse grid so that ties and probabilities equal to a threshold occur, rows of
    NaN (no model eligible) and -inf (the out-of-distribution policy's masked edge models)."""
    from router_training.core.decision import CostSpec, DecisionRule, ModelCost
    from router_training.core.profile import DeploymentProfile

    profile = DeploymentProfile("p", 10.0, 2.0, 1.5, 20.0, 50.0, 0.05)
    cost = CostSpec((ModelCost("a", "edge", 0.3, 0.0), ModelCost("b", "edge", 0.1, 0.0),
                     ModelCost("c", "cloud", 0.2, 40_000.0)), profile, 0.4, 2.5)
    lat, en = cost.costs()
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 11, size=(3000, 3)) / 10.0
    probs[::97] = np.nan
    probs[1::89, :2] = -np.inf
    for thresholds in [(0.5, 0.5, 0.0), (0.0, 0.3, 0.0), (NEVER_THRESHOLD, 0.6, 0.0)]:
        for lambdas in [(0.0, 0.0), (0.3, 0.1), (2.0, 0.0)]:
            rule = DecisionRule(thresholds, *lambdas)
            one = rule.chooser(cost, lat, en)
            got = [one(row.tolist()) for row in probs]
            np.testing.assert_array_equal(got, rule.choose(probs, cost, lat, en))
    assert len(set(got)) == 3  # every model chosen somewhere: the comparison is not vacuous
    with pytest.raises(ValueError, match="threshold 0"):
        DecisionRule((0.5, 0.5, 0.1)).chooser(cost, lat, en)
