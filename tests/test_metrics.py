"""Tests for router_training.metrics: policy metrics, PGR / APGR / CPT (hand-worked, including a
non-monotone curve), bootstrap intervals, ECE, temperature scaling and reliability plots."""

from types import SimpleNamespace

import numpy as np
import pytest

from router_training import metrics as M

TIERS = ["edge", "edge", "cloud"]
CLOUD = 2


@pytest.fixture
def split():
    # 4 samples x 3 models (edge-a, edge-b, cloud). Mean scores: edge-a .5, edge-b .25, cloud .75
    # -> best edge = edge-a (0), gap = .75 - .5 = .25.
    score = np.array([[1.0, 0.0, 1.0],
                      [0.0, 1.0, 1.0],
                      [0.0, 0.0, 1.0],
                      [1.0, 0.0, 0.0]])
    latency = np.array([[0.1, 0.2, 0.5],
                        [0.1, 0.2, 0.7],
                        [0.3, 0.2, 0.5],
                        [0.1, 0.2, 0.5]])
    energy = np.array([[1.0, 2.0, 0.5]] * 4)
    return SimpleNamespace(score=score, latency_s=latency, energy_j=energy)


def onehot(idx, k=3):
    return np.eye(k)[np.asarray(idx)]


# ---------------------------------------------------------------------------------------------- policy metrics

def test_references(split):
    r = M.references(split, TIERS, CLOUD)
    assert r["best_edge"] == 0
    assert r["acc_edge"] == pytest.approx(0.5) and r["acc_cloud"] == pytest.approx(0.75)
    assert r["lat_edge"] == pytest.approx(0.15) and r["lat_cloud"] == pytest.approx(0.55)
    assert r["en_edge"] == pytest.approx(1.0) and r["en_cloud"] == pytest.approx(0.5)


def test_policy_metrics_by_hand(split):
    # routes: edge-a, cloud, edge-b, edge-a -> scores 1, 1, 0, 1 (acc .75); latencies .1 .7 .2 .1
    m = M.policy_metrics(onehot([0, 2, 1, 0]), split, TIERS, CLOUD, models=["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["pct_cloud_accuracy"] == pytest.approx(100.0)
    assert m["pgr"] == pytest.approx(1.0)              # (.75 - .5) / .25
    assert m["edge_share"] == pytest.approx(0.75) and m["cloud_share"] == pytest.approx(0.25)
    assert m["mean_latency_s"] == pytest.approx(1.1 / 4)
    assert m["latency_reduction"] == pytest.approx(1 - 0.275 / 0.55)
    # p95 of {.1, .1, .2, .7}: inverse CDF at .95 -> .7
    assert m["p95_latency_s"] == pytest.approx(0.7)
    assert m["mean_energy_j"] == pytest.approx((1 + 0.5 + 2 + 1) / 4)
    assert (m["share_a"], m["share_b"], m["share_c"]) == pytest.approx((0.5, 0.25, 0.25))
    assert m["shares"] == pytest.approx([0.5, 0.25, 0.25])


def test_policy_metrics_pgr_negative_and_half(split):
    # edge-a, edge-a, edge-a, cloud -> scores 1, 0, 0, 0 = .25 -> PGR (.25 - .5) / .25 = -1
    assert M.policy_metrics(onehot([0, 0, 0, 2]), split, TIERS, CLOUD)["pgr"] == pytest.approx(-1.0)
    # half edge-a / half cloud at random: acc .5 * .5 + .5 * .75 = .625 -> PGR .5
    m = M.policy_metrics(np.tile([0.5, 0.0, 0.5], (4, 1)), split, TIERS, CLOUD)
    assert m["pgr"] == pytest.approx(0.5)


def test_p95_matches_numpy_for_one_hot():
    rng = np.random.default_rng(1)
    lat = rng.exponential(1.0, (101, 3))
    idx = rng.integers(0, 3, 101)
    a = onehot(idx)
    realised = lat[np.arange(101), idx]
    s = SimpleNamespace(score=np.zeros((101, 3)), latency_s=lat, energy_j=lat)
    m = M.policy_metrics(a, s, TIERS, CLOUD)
    assert m["p95_latency_s"] == pytest.approx(np.quantile(realised, 0.95, method="inverted_cdf"))


def test_p95_random_policy_is_mixture():
    # one sample, latencies 1 (p .9) and 10 (p .1): P(L <= 1) = .9 < .95 -> p95 = 10; p90 = 1
    lat = np.array([[1.0, 10.0]])
    w = np.array([[0.9, 0.1]])
    assert M.weighted_quantile(lat, w, 0.95) == 10.0
    assert M.weighted_quantile(lat, w, 0.90) == 1.0


def test_core_metrics_weights_match_repetition(split):
    # weights (2, 1, 0, 1) / 4 equal the metrics of the split with sample 0 repeated and sample 2 dropped
    a = onehot([0, 2, 1, 0])
    w = np.array([2, 1, 0, 1]) / 4
    keep = [0, 0, 1, 3]
    rep = SimpleNamespace(score=split.score[keep], latency_s=split.latency_s[keep], energy_j=split.energy_j[keep])
    mw = M.policy_metrics(a, split, TIERS, CLOUD, weights=w)
    mr = M.policy_metrics(a[keep], rep, TIERS, CLOUD)
    for k in M.HEADLINE:
        assert mw[k] == pytest.approx(mr[k], nan_ok=True), k


# ---------------------------------------------------------------------------------------------- PGR / APGR / CPT

REFS = {"acc_edge": 0.5, "acc_cloud": 0.9, "lat_edge": 0.1, "lat_cloud": 0.5, "en_edge": 2.0, "en_cloud": 1.0}


def test_pgr_by_hand():
    assert M.pgr(0.7, REFS) == pytest.approx(0.5)      # (.7 - .5) / .4
    assert M.pgr(0.5, REFS) == pytest.approx(0.0)
    assert M.pgr(0.9, REFS) == pytest.approx(1.0)
    np.testing.assert_allclose(M.pgr(np.array([0.3, 1.0]), REFS), [-0.5, 1.25])
    assert np.isnan(M.pgr(0.7, {**REFS, "acc_cloud": 0.5}))


# Non-monotone sweep. References acc_edge .5, acc_cloud .9 (gap .4).
#   cloud share : 0.0  0.2  0.4   0.6   0.8   1.0
#   accuracy    : .50  .70  .66   .82   .78   .90
#   PGR         : 0    .5   .4    .8    .7    1      (drops at .4 and .8: non-monotone)
# APGR (trapezoid, width .2, both endpoints measured so no anchor is added):
#   .2 * [(0+.5)/2 + (.5+.4)/2 + (.4+.8)/2 + (.8+.7)/2 + (.7+1)/2] = .2 * (.25+.45+.6+.75+.85) = .2 * 2.9 = .58
# CPT (smallest cloud share whose PGR reaches the level, no interpolation):
#   CPT(50) = .2; CPT(60) = .6 (.4 has PGR .4 < .6); CPT(80) = .6; CPT(85) = 1.0; CPT(40) = .2; CPT(0) = 0
# RouteLLM's np.interp(target, accuracy, share) would instead interpolate on a non-increasing xp.
NONMONO = [{"cloud_share": c, "accuracy": a} for c, a in
           zip([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], [0.50, 0.70, 0.66, 0.82, 0.78, 0.90])]


def test_apgr_cpt_non_monotone_by_hand():
    x, y = M.curve(NONMONO, REFS, "cloud_share")
    np.testing.assert_allclose(y, [0, 0.5, 0.4, 0.8, 0.7, 1.0], atol=1e-12)
    assert M.apgr(x, y) == pytest.approx(0.58)
    assert M.cpt(x, y, 50) == pytest.approx(0.2)
    assert M.cpt(x, y, 40) == pytest.approx(0.2)
    assert M.cpt(x, y, 60) == pytest.approx(0.6)
    assert M.cpt(x, y, 80) == pytest.approx(0.6)
    assert M.cpt(x, y, 85) == pytest.approx(1.0)
    assert M.cpt(x, y, 0) == pytest.approx(0.0)
    assert np.isnan(M.cpt(x, y, 101))


def test_apgr_order_independent_and_matches_routellm_on_full_sweep():
    x, y = M.curve(NONMONO[::-1], REFS, "cloud_share")
    assert M.apgr(x, y) == pytest.approx(0.58)
    # RouteLLM evaluate.py: (AUC - weak_auc) / (strong_auc - weak_auc) with trapezoids over share
    share = np.array([p["cloud_share"] for p in NONMONO])
    acc = np.array([p["accuracy"] for p in NONMONO])
    trap = lambda f: float(np.sum(np.diff(share) * (f[1:] + f[:-1]) / 2))  # noqa: E731
    routellm = (trap(acc) - trap(np.full(6, 0.5))) / (trap(np.full(6, 0.9)) - trap(np.full(6, 0.5)))
    assert M.apgr(x, y) == pytest.approx(routellm)


def test_apgr_endpoints_added():
    # points (.2, PGR .5) and (.6, PGR .8) only: anchors (0, 0) and (1, 1) are added:
    # .2 * (0 + .5) / 2 + .4 * (.5 + .8) / 2 + .4 * (.8 + 1) / 2 = .05 + .26 + .36 = .67
    assert M.apgr(np.array([0.2, 0.6]), np.array([0.5, 0.8])) == pytest.approx(0.67)
    # no points at all: the chord (0, 0)-(1, 1), a random router: .5
    assert M.apgr(np.array([]), np.array([])) == pytest.approx(0.5)
    # a measured point at x = 0 replaces the anchor: (0, .2), (1, 1) -> (.2 + 1) / 2 = .6
    assert M.apgr(np.array([0.0]), np.array([0.2])) == pytest.approx(0.6)


def test_apgr_ties_are_averaged_cpt_uses_raw_points():
    # two points at x = .5 with PGR .4 and .6 -> one point (.5, .5) for the area:
    # .5 * (0 + .5) / 2 + .5 * (.5 + 1) / 2 = .125 + .375 = .5; order does not matter
    x, y = np.array([0.5, 0.5]), np.array([0.4, 0.6])
    assert M.apgr(x, y) == pytest.approx(0.5)
    assert M.apgr(x[::-1], y[::-1]) == pytest.approx(0.5)
    assert M.cpt(x, y, 55) == pytest.approx(0.5)   # the deployable point with PGR .6 counts


def test_apgr_cost_axes_by_hand():
    # latency normalised by (lat - .1) / (.5 - .1):
    #   lat .05 -> x -0.125 -> clipped to 0 (cheaper than all-edge); PGR .1
    #   lat .30 -> x .5; PGR .6 ;  lat .70 -> x 1.5 -> dropped (costlier than all-cloud)
    # curve (0, .1), (.5, .6), anchor (1, 1): .5 * (.1 + .6) / 2 + .5 * (.6 + 1) / 2 = .175 + .4 = .575
    pts = [{"accuracy": 0.54, "mean_latency_s": 0.05, "mean_energy_j": 2.0, "cloud_share": 0.1},
           {"accuracy": 0.74, "mean_latency_s": 0.30, "mean_energy_j": 1.5, "cloud_share": 0.5},
           {"accuracy": 0.98, "mean_latency_s": 0.70, "mean_energy_j": 1.0, "cloud_share": 0.9}]
    x, y = M.curve(pts, REFS, "latency")
    np.testing.assert_allclose(x, [-0.125, 0.5, 1.5])
    assert M.apgr(x, y) == pytest.approx(0.575)
    # energy normalised by (en - 2) / (1 - 2): x = 0, .5, 1 ->  .5 * (.1 + .6) / 2 + .5 * (.6 + 1.2) / 2 = .175 + .45
    x, y = M.curve(pts, REFS, "energy")
    np.testing.assert_allclose(x, [0.0, 0.5, 1.0])
    assert M.apgr(x, y) == pytest.approx(0.625)
    summ = M.routing_summary(pts, REFS, cpt_levels=(50, 100))
    assert summ["apgr_latency"] == pytest.approx(0.575) and summ["apgr_energy"] == pytest.approx(0.625)
    # cloud share: (0, 0) anchor, (.1, .1), (.5, .6), (.9, 1.2), (1, 1) anchor:
    # .1 * (0 + .1) / 2 + .4 * (.1 + .6) / 2 + .4 * (.6 + 1.2) / 2 + .1 * (1.2 + 1) / 2 = .005 + .14 + .36 + .11 = .615
    assert summ["apgr"] == pytest.approx(0.615)
    assert summ["cpt_50"] == pytest.approx(0.5) and summ["cpt_100"] == pytest.approx(0.9)


def synthetic_split(n, seed=0):
    """Edge / cloud pair: edge right with prob 1 - d, cloud with prob 1 - d / 2 (d ~ U(0, 1)); a router
    score that ranks samples by d with noise."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0, 1, n)
    score = np.stack([rng.random(n) < 1 - d, rng.random(n) < 1 - d / 2], 1).astype(float)
    lat = np.tile([0.05, 0.4], (n, 1)) + rng.exponential(0.02, (n, 2))
    en = np.tile([1.0, 0.3], (n, 1))
    s = SimpleNamespace(score=score, latency_s=lat, energy_j=en)
    router_score = d + rng.normal(0, 0.2, n)            # high -> send to cloud
    return s, router_score


def test_sweep_of_good_router_beats_random():
    s, r = synthetic_split(4000)
    tiers = ["edge", "cloud"]
    qs = np.quantile(r, np.linspace(0, 1, 21))
    assign_at = lambda t: np.eye(2)[(r >= t).astype(int)]  # noqa: E731
    pts = M.sweep(assign_at, qs, s, tiers, 1)
    refs = M.references(s, tiers, 1)
    summ = M.routing_summary(pts, refs)
    assert 0.55 < summ["apgr"] <= 1.2                   # better than random routing (.5)
    assert 0 < summ["cpt_50"] < 0.5
    rand = [M.policy_metrics(np.tile([1 - c, c], (len(s.score), 1)), s, tiers, 1) for c in np.linspace(0, 1, 11)]
    assert M.routing_summary(rand, refs)["apgr"] == pytest.approx(0.5, abs=1e-9)


# ---------------------------------------------------------------------------------------------- bootstrap

def test_bootstrap_contains_point_and_shrinks_with_n():
    widths = []
    for n in (100, 1600):
        x = np.random.default_rng(n).normal(0, 1, n)
        point, lo, hi = M.bootstrap(lambda idx: x[idx].mean(), n, B=500, seed=0)
        assert point == pytest.approx(x.mean())
        assert lo < point < hi
        widths.append(hi - lo)
    # width ~ 2 * 1.96 / sqrt(n): about 4x narrower with 16x the samples
    assert widths[1] < widths[0] / 2.5
    assert widths[0] == pytest.approx(2 * 1.96 / np.sqrt(100), rel=0.3)


def test_bootstrap_seeded_and_vector():
    x = np.random.default_rng(3).random(200)
    stat = lambda idx: np.array([x[idx].mean(), np.median(x[idx])])  # noqa: E731
    a = M.bootstrap(stat, 200, B=200, seed=7)
    b = M.bootstrap(stat, 200, B=200, seed=7)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert a[0].shape == (2,) and np.all(a[1] <= a[0]) and np.all(a[0] <= a[2])


def test_bootstrap_headline_and_routing_intervals():
    s, r = synthetic_split(1000, seed=2)
    tiers = ["edge", "cloud"]
    assigns = [np.eye(2)[(r >= t).astype(int)] for t in np.quantile(r, np.linspace(0, 1, 11))]
    ci = M.bootstrap_metrics(assigns[5], s, tiers, 1, B=200, seed=0)
    assert set(ci) == set(M.HEADLINE)
    point = M.policy_metrics(assigns[5], s, tiers, 1)
    for k, (p, lo, hi) in ci.items():
        assert p == pytest.approx(point[k])
        assert lo <= p <= hi, k
    rc = M.bootstrap_routing(assigns, s, tiers, 1, B=100, seed=0)
    summ = M.routing_summary([M.policy_metrics(a, s, tiers, 1) for a in assigns], M.references(s, tiers, 1))
    assert set(rc) == set(summ)
    for k, (p, lo, hi) in rc.items():
        assert p == pytest.approx(summ[k]), k
        assert lo <= hi
    # paired difference: a sweep against itself is exactly 0 on every resample; against the reversed
    # ranking (edge where r is low) the point is the difference of the two summaries
    zero = M.bootstrap_routing(assigns, s, tiers, 1, B=50, seed=0, minus=assigns)
    assert all(v == (0.0, 0.0, 0.0) for v in zero.values())
    rev = [np.eye(2)[(r <= t).astype(int)] for t in np.quantile(r, np.linspace(1, 0, 11))]
    d = M.bootstrap_routing(assigns, s, tiers, 1, B=100, seed=0, minus=rev)
    summ_rev = M.routing_summary([M.policy_metrics(a, s, tiers, 1) for a in rev], M.references(s, tiers, 1))
    assert d["apgr"][0] == pytest.approx(summ["apgr"] - summ_rev["apgr"])
    assert d["apgr"][1] <= d["apgr"][0] <= d["apgr"][2]


# ---------------------------------------------------------------------------------------------- calibration

def test_ece_by_hand():
    # 2 bins: [0, .5): p .2, .4 with y 0, 1 -> conf .3, obs .5, gap .2, weight 2/4
    #         [.5, 1]: p .6, 1.0 with y 1, 1 -> conf .8, obs 1, gap .2, weight 2/4   -> ECE .2
    assert M.ece(np.array([0.2, 0.4, 0.6, 1.0]), np.array([0, 1, 1, 1]), n_bins=2) == pytest.approx(0.2)


def calibration_data(n, sharpen, seed):
    """True P(correct) q, outcomes y ~ Bernoulli(q), reported p = sigmoid(sharpen * logit(q))."""
    rng = np.random.default_rng(seed)
    q = M.sigmoid(rng.normal(0, 1.5, n))
    y = (rng.random(n) < q).astype(float)
    return M.sigmoid(sharpen * M.logit(q)), y


def test_ece_calibrated_small_overconfident_large():
    p, y = calibration_data(20000, 1.0, 0)
    assert M.ece(p, y) < 0.02
    p, y = calibration_data(20000, 3.0, 0)
    assert M.ece(p, y) > 0.1


def test_temperature_scaling_fixes_overconfidence():
    pv, yv = calibration_data(5000, 3.0, 1)
    pt, yt = calibration_data(5000, 3.0, 2)
    t = M.fit_temperature(pv, yv)
    assert t == pytest.approx(3.0, rel=0.15)            # logits were sharpened 3x
    scaled = M.apply_temperature(pt, t)
    assert M.nll(scaled, yt) < M.nll(pt, yt) - 0.05
    assert M.ece(scaled, yt) < M.ece(pt, yt) / 3
    # calibrated data -> T ~ 1
    pc, yc = calibration_data(5000, 1.0, 3)
    assert M.fit_temperature(pc, yc) == pytest.approx(1.0, rel=0.15)


def test_calibration_table_and_reliability_plot(tmp_path):
    pv = np.stack([calibration_data(2000, 3.0, 4)[0], calibration_data(2000, 1.0, 5)[0]], 1)
    yv = np.stack([calibration_data(2000, 3.0, 4)[1], calibration_data(2000, 1.0, 5)[1]], 1)
    pt = np.stack([calibration_data(2000, 3.0, 6)[0], calibration_data(2000, 1.0, 7)[0]], 1)
    yt = np.stack([calibration_data(2000, 3.0, 6)[1], calibration_data(2000, 1.0, 7)[1]], 1)
    table = M.calibration_table(pv, yv, pt, yt, ["edge/a", "cloud"])
    assert table["edge/a"]["temperature"] > 2 and table["edge/a"]["ece_after"] < table["edge/a"]["ece_before"]
    np.testing.assert_allclose(M.ece_per_model(pt, yt), [table["edge/a"]["ece_before"], table["cloud"]["ece_before"]])
    temps = M.fit_temperature(pv, yv)
    paths = M.reliability_plot(tmp_path, pt, yt, ["edge/a", "cloud"], scaled=M.apply_temperature(pt, temps))
    assert [p.name for p in paths] == ["reliability_edge_a.png", "reliability_cloud.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
