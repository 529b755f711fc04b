"""Baseline routers (router_training.baselines): each learns a planted signal, sweeps span all-edge to
all-cloud, cascade / combined costs count both models, hand-checked small cases."""

import dataclasses
import functools
import zlib

import numpy as np
import pytest

from router_training import baselines as B
from router_training import policies as P
from router_training.config import RouterConfig
from router_training.core.features import FEATURE_NAMES, PIXEL_FEATURES, QUESTION_TYPES
from router_training.core.splits import SplitArrays

QT = {t: FEATURE_NAMES.index("qtype_" + t.replace("/", "_")) for t in QUESTION_TYPES}
FILLERS = [f"w{i}" for i in range(12)]


def synthetic(n, seed, signal):
    """Edge (model 0) correct iff the planted signal holds, cloud (model 1) always correct.
    signal: "image" (feature 0 > 0), "qtype" (a "count" question), "text" (the question says "zebra").
    The edge model's confidence is high when it is right, low when wrong."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    types = rng.choice(["count", "color", "yes/no"], n)
    x[:, list(QT.values())] = 0.0
    x[np.arange(n), [QT[t] for t in types]] = 1.0
    zebra = rng.random(n) < 0.5
    questions = [f"is there a {'zebra' if z else 'horse'} {w}" for z, w in zip(zebra, rng.choice(FILLERS, n))]
    ok = {"image": x[:, 0] > 0, "qtype": types == "count", "text": zebra}[signal]
    score = np.stack([ok.astype(float), np.ones(n)], 1)
    conf = np.stack([np.where(ok, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.4, n)), np.full(n, 0.9)], 1)
    lat = np.stack([rng.uniform(0.01, 0.03, n), rng.uniform(0.15, 0.25, n)], 1)
    en = np.stack([rng.uniform(0.1, 0.3, n), rng.uniform(0.2, 0.4, n)], 1)
    ids = [f"{signal}-{seed}-{i}" for i in range(n)]
    return SplitArrays(ids, x, score, lat, en, conf), dict(zip(ids, questions))


_VEC: dict = {}


def bow_embed(questions):
    """A fast stand-in for MiniLM: the normalised sum of fixed random word vectors (64-d)."""
    out = np.zeros((len(questions), 64), dtype=np.float32)
    for i, q in enumerate(questions):
        for w in q.split():
            if w not in _VEC:
                _VEC[w] = np.random.default_rng(zlib.crc32(w.encode())).normal(size=64)
            out[i] += _VEC[w]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


TIERS = ["edge", "cloud"]


@pytest.fixture(scope="module")
def data():
    """signal -> (train, test, ctx)."""
    out = {}
    for signal in ("image", "qtype", "text"):
        (tr, q1), (va, q2), (te, q3) = (synthetic(n, seed, signal) for n, seed in ((800, 0), (200, 1), (400, 2)))
        ctx = B.Context(TIERS, 1, questions={**q1, **q2, **q3}, embed=bow_embed, val=va,
                        router_config=RouterConfig(hidden=[32], batch_size=64, lr=1e-2), epochs=8)
        out[signal] = (tr, te, ctx)
    return out


@pytest.fixture(scope="module")
def fitted(data):
    """(name, signal) -> fitted baseline, fitted once per module."""
    cache = {}

    def get(name, signal, **options):
        key = (name, signal, tuple(sorted(options.items())))
        if key not in cache:
            tr, _, ctx = data[signal]
            cache[key] = B.make(name, **options).fit(tr, ctx)
        return cache[key]
    return get


def apgr(b, split):
    return B.summary(B.sweep(b, split), split, TIERS, 1)["apgr"]


def test_registry():
    assert {"random", "oracle", "oracle_curve", "qtype", "mlp_image", "mlp_text", "mlp_both", "mlp_both_minilm",
            "mlp_signals", "minilm_clf", "knn", "mf", "hybrid_det", "hybrid_soft", "cascade", "combined"} <= set(B.BASELINES)
    with pytest.raises(ValueError, match="unknown baseline"):
        B.make("nope")


LEARNS = [("mlp_image", "image"), ("mlp_text", "qtype"), ("mlp_both", "image"), ("mlp_both_minilm", "text"),
          ("mlp_signals", "qtype"),
          ("minilm_clf", "text"), ("knn", "text"), ("mf", "text"), ("hybrid_det", "text"), ("hybrid_soft", "text"),
          ("qtype", "qtype"), ("cascade", "text")]


@pytest.mark.parametrize("name,signal", LEARNS)
def test_learns_planted_signal(data, fitted, name, signal):
    """APGR recovers >= 80% of the oracle's lead over random routing (APGR 0.5)."""
    _, te, _ = data[signal]
    best = apgr(fitted("oracle_curve", signal), te)
    assert best > 0.6
    assert apgr(fitted(name, signal), te) >= 0.5 + 0.8 * (best - 0.5)


def test_pixel_free_baselines_ignore_the_thumbnail(data, fitted):
    """mlp_signals and Hybrid-LLM never read the thumbnail's pixels: scrambling them changes nothing."""
    _, te, _ = data["qtype"]
    pix = slice(len(FEATURE_NAMES) - len(PIXEL_FEATURES), None)
    noisy = dataclasses.replace(te, x=te.x.copy())
    noisy.x[:, pix] = np.random.default_rng(5).normal(size=noisy.x[:, pix].shape) * 10
    for name in ("mlp_signals", "hybrid_det"):
        b = fitted(name, "qtype")
        np.testing.assert_allclose(b.edge_score(noisy)[0], b.edge_score(te)[0], atol=1e-6)


def test_image_only_router_cannot_see_a_text_signal(data, fitted):
    _, te, _ = data["text"]
    assert apgr(fitted("mlp_image", "text"), te) < 0.6


def test_random_is_the_chord_and_oracle_curve_bounds_every_router(data, fitted):
    _, te, _ = data["text"]
    assert apgr(fitted("random", "text"), te) == pytest.approx(0.5, abs=1e-9)
    best = apgr(fitted("oracle_curve", "text"), te)
    assert best == pytest.approx(1 - (te.score[:, 0] < 1).mean() / 2)  # PGR = min(1, x / share edge-wrong)
    for name, signal in LEARNS:
        if signal == "text":
            assert apgr(fitted(name, signal), te) <= best + 1e-9


def test_random_baseline_matches_policies_random(data, fitted):
    _, te, _ = data["image"]
    a = fitted("random", "image").assign(te, 0.3)
    np.testing.assert_allclose(a, P.make("random", shares=[0.3, 0.7])(te))


ENDPOINTS = LEARNS + [("random", "text"), ("oracle_curve", "text"), ("combined", "text")]


@pytest.mark.parametrize("name,signal", ENDPOINTS)
def test_knob_extremes_are_all_edge_and_all_cloud(data, fitted, name, signal):
    tr, te, ctx = data[signal]
    if name == "combined":
        router = functools.partial(fitted("knn", "text").assign, knob=0.0)
        b = B.make("combined", router=router).fit(tr, ctx)
    else:
        b = fitted(name, signal)
    if b.all_edge_knob is not None:
        m = b.metrics(te, b.all_edge_knob)
        assert m["cloud_share"] == 0.0 and m["edge_share"] == 1.0
    m = b.metrics(te, b.all_cloud_knob)
    assert m["cloud_share"] == 1.0 and m["edge_share"] == 0.0
    knobs = b.knobs(te, 11)
    shares = [b.metrics(te, k)["cloud_share"] for k in knobs]
    assert min(shares) == (0.0 if b.all_edge_knob is not None else min(shares)) and max(shares) == 1.0


def test_text_baselines_need_questions(data):
    tr, _, ctx = data["text"]
    bare = B.Context(TIERS, 1)
    with pytest.raises(ValueError, match="questions"):
        B.make("knn").fit(tr, bare)
    assert "knn" not in B.available(bare) and "knn" in B.available(ctx) and "random" in B.available(bare)
    assert all(not B.make(nm).needs_text for nm in ("random", "qtype", "cascade", "mlp_both", "oracle"))
    assert all(B.make(nm).needs_text for nm in ("knn", "mf", "minilm_clf", "mlp_both_minilm", "hybrid_det"))


# ---------------------------------------------------------------------------------------------- hand-checked costs

def _split(score, lat, en, conf):
    n, k = np.shape(score)
    return SplitArrays([f"s{i}" for i in range(n)], np.zeros((n, len(FEATURE_NAMES)), np.float32),
                       np.asarray(score, float), np.asarray(lat, float), np.asarray(en, float), np.asarray(conf, float))


@pytest.fixture
def small():
    # 3 samples x (edge, cloud)
    return _split(score=[[1, 1], [0, 1], [0, 0]], lat=[[0.1, 1.0], [0.2, 1.1], [0.3, 1.2]],
                  en=[[1.0, 0.5], [2.0, 0.6], [3.0, 0.7]], conf=[[0.9, 0.8], [0.4, 0.8], [0.6, 0.8]])


def test_cascade_pays_edge_and_cloud_on_escalation(small):
    # knob 0.5: only sample 1 (confidence 0.4) escalates.
    o = B.cascade_outcomes(small, 0.5, edge=0, cloud=1)
    np.testing.assert_array_equal(o["escalated"], [False, True, False])
    np.testing.assert_allclose(o["latency_s"], [0.1, 0.2 + 1.1, 0.3])
    np.testing.assert_allclose(o["energy_j"], [1.0, 2.0 + 0.6, 3.0])
    np.testing.assert_allclose(o["score"], [1, 1, 0])
    m = B.cascade_metrics(small, 0.5, TIERS, 1)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["mean_latency_s"] == pytest.approx((0.1 + 1.3 + 0.3) / 3)
    assert m["mean_energy_j"] == pytest.approx((1.0 + 2.6 + 3.0) / 3)
    assert m["cloud_share"] == pytest.approx(1 / 3) and m["edge_share"] == pytest.approx(2 / 3)
    assert m["edge_compute_share"] == 1.0 and m["escalation_share"] == pytest.approx(1 / 3)
    assert m["latency_reduction"] == pytest.approx(1 - (1.7 / 3) / 1.1)
    assert m["p95_latency_s"] == pytest.approx(1.3)
    assert m["pgr"] == pytest.approx((2 / 3 - 1 / 3) / (2 / 3 - 1 / 3))
    assert set(P.metrics(np.eye(2)[[0, 0, 0]], small, TIERS, 1)) <= set(m)
    # knob 0: all-edge exactly; knob 2: every query pays both, accuracy of all-cloud.
    edge_only = P.metrics(np.eye(2)[[0, 0, 0]], small, TIERS, 1)
    m0 = B.cascade_metrics(small, 0.0, TIERS, 1)
    for key in ("accuracy", "mean_latency_s", "mean_energy_j", "edge_share", "shares"):
        assert m0[key] == pytest.approx(edge_only[key])
    m2 = B.cascade_metrics(small, 2.0, TIERS, 1)
    assert m2["accuracy"] == pytest.approx(2 / 3) and m2["cloud_share"] == 1.0
    assert m2["mean_latency_s"] == pytest.approx((1.1 + 1.3 + 1.5) / 3)
    assert m2["latency_reduction"] < 0  # costlier than all-cloud: both models run


def test_cascade_rejects_missing_confidence(small):
    small.confidence[1, 0] = np.nan
    with pytest.raises(ValueError, match="no confidence"):
        B.cascade_metrics(small, 0.5, TIERS, 1)
    assert B.cascade_metrics(small, 0.0, TIERS, 1)["cloud_share"] == 0.0


def test_combined_hand_case_and_comparison_with_the_cascade():
    s = _split(score=[[1, 1], [0, 1], [0, 1]], lat=[[0.1, 1.0]] * 3, en=[[0.2, 0.5]] * 3,
               conf=[[0.9, 0.9], [0.2, 0.9], [0.2, 0.9]])
    cascade = B.cascade_metrics(s, 0.5, TIERS, 1)  # escalates samples 1, 2
    assert cascade["mean_latency_s"] == pytest.approx((0.1 + 1.1 + 1.1) / 3)
    # Router A sends sample 2 (which the cascade escalates) straight to the cloud: cheaper than the cascade.
    a = np.eye(2)[[0, 0, 1]]
    m = B.combined_metrics(s, a, 0.5, TIERS, 1)
    assert m["mean_latency_s"] == pytest.approx((0.1 + 1.1 + 1.0) / 3)
    assert m["mean_latency_s"] < cascade["mean_latency_s"]
    assert m["mean_energy_j"] == pytest.approx((0.2 + 0.7 + 0.5) / 3)
    assert m["accuracy"] == pytest.approx(1.0) and m["escalation_share"] == pytest.approx(1 / 3)
    # Router B sends sample 0 (which the cascade keeps on edge) to the cloud: costlier than the cascade.
    b = np.eye(2)[[1, 0, 0]]
    costlier = B.combined_metrics(s, b, 0.5, TIERS, 1)["mean_latency_s"]
    assert costlier == pytest.approx((1.0 + 1.1 + 1.1) / 3) and costlier > cascade["mean_latency_s"]
    # A fractional router row: expectation over its two branches.
    half = np.array([[0.5, 0.5], [1, 0], [0, 1]])
    o = B.combined_outcomes(s, half, 0.5, TIERS, 1)
    np.testing.assert_allclose(o["latency_s"], [0.55, 1.1, 1.0])
    np.testing.assert_allclose(o["escalated"], [0.0, 1.0, 0.0])


def test_combined_properties_on_random_data():
    rng = np.random.default_rng(0)
    n, tiers = 200, ["edge", "edge", "cloud"]
    s = _split(rng.integers(0, 2, (n, 3)), rng.uniform(0.01, 1, (n, 3)), rng.uniform(0.01, 1, (n, 3)),
               rng.uniform(0, 1, (n, 3)))
    a = rng.dirichlet(np.ones(3), n)
    router = P.metrics(a, s, tiers, 2)
    m0 = B.combined_metrics(s, a, 0.0, tiers, 2)
    for key in ("accuracy", "mean_latency_s", "mean_energy_j", "edge_share", "shares"):
        assert m0[key] == pytest.approx(router[key])
    prev = m0
    for knob in np.linspace(0, 1.01, 12):
        m = B.combined_metrics(s, a, knob, tiers, 2)
        assert m["mean_latency_s"] >= prev["mean_latency_s"] - 1e-12
        assert m["mean_energy_j"] >= prev["mean_energy_j"] - 1e-12
        esc = (s.confidence < knob) & np.array([True, True, False])
        extra = (a * esc * s.latency_s[:, [2]]).sum(1).mean()
        assert m["mean_latency_s"] == pytest.approx(router["mean_latency_s"] + extra)
        assert m["mean_latency_s"] <= router["mean_latency_s"] + s.latency_s[:, 2].mean() + 1e-12
        prev = m
    # With the whole traffic on one edge model, combined is the cascade.
    e = np.eye(3)[np.zeros(n, int)]
    for knob in (0.3, 0.7):
        c, d = B.combined_metrics(s, e, knob, tiers, 2), B.cascade_metrics(s, knob, tiers, 2, edge=0)
        assert c == d


def test_question_type_rule_hand_case():
    tiers = ["edge", "edge", "cloud"]  # edge-a cheap, edge-b pricier, cloud
    types = ["count"] * 4 + ["yes/no"] * 4 + ["color"] * 4
    score = np.array([[1, 1, 1]] * 4
                     + [[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 0, 0]]      # yes/no: a .5, b .75, c .75
                     + [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1]])    # color:  a .25, b .5, c 1
    s = _split(score, [[0.01, 0.05, 0.5]] * 12, [[0.1, 0.5, 0.3]] * 12, [[0.5, 0.5, 0.5]] * 12)
    s.x[np.arange(12), [QT[t] for t in types]] = 1.0
    b = B.make("qtype", min_count=1).fit(s, B.Context(tiers, 2))

    def route(knob):
        return {t: int(b.table(knob)[QUESTION_TYPES.index(t)]) for t in ("count", "yes/no", "color")}

    assert route(0.0) == {"count": 0, "yes/no": 1, "color": 2}
    assert route(0.25) == {"count": 0, "yes/no": 0, "color": 2}
    assert route(0.5) == {"count": 0, "yes/no": 0, "color": 1}
    assert route(0.75) == {"count": 0, "yes/no": 0, "color": 0}
    assert route(b.all_cloud_knob) == {"count": 2, "yes/no": 2, "color": 2}
    np.testing.assert_array_equal(b.assign(s, 0.0).argmax(1), [0] * 4 + [1] * 4 + [2] * 4)
    assert {0.0, 0.25, 0.5, 0.75} <= set(b.knobs(s).tolist())
    # Unseen types fall back to the overall accuracies (a .583, b .75, c .917): edge-b within 0.17.
    assert b.table(0.17)[QUESTION_TYPES.index("why")] == 1


# ---------------------------------------------------------------------------------------------- real outcomes

@pytest.mark.slow
def test_every_baseline_runs_on_real_outcomes(tiny_run):
    from router_training import fit, pipeline

    cfg, _ = tiny_run
    table, splits = pipeline.load_splits(cfg)
    train, val, test = (splits[k] for k in pipeline.SPLITS)
    cloud = pipeline.cloud_index(cfg, train)
    ctx = B.Context(cfg.tiers, cloud, questions=B.questions_by_sample(cfg), val=val,
                    cost_spec=fit.cost_spec(train, table, cfg), router_config=cfg.router, epochs=3)
    few = {"epochs": 20}
    res = B.compare(train, test, ctx, n=11, options={k: few for k in ("minilm_clf", "mf", "hybrid_det", "hybrid_soft")},
                    models=cfg.model_names)
    assert set(res) == set(B.BASELINES)
    for name, r in res.items():
        shares = [p["cloud_share"] for p in r["points"]]
        if name != "oracle":  # a single hindsight point
            assert max(shares) == 1.0 and (min(shares) == 0.0 or name == "combined"), name
        assert np.isfinite([r["summary"][k] for k in ("apgr", "apgr_latency", "apgr_energy")]).all(), name
        for p in r["points"]:
            assert np.isfinite([p[k] for k in ("accuracy", "mean_latency_s", "mean_energy_j", "cloud_share")]).all()
            assert 0.0 <= p["cloud_share"] <= 1.0 + 1e-9


def test_report_verdicts_from_the_routing_table():
    from router_training.report import comparison_lines

    row = lambda a, lat: {"apgr": a, "apgr_latency": lat}  # noqa: E731
    routing = {"router": row(0.86, 0.87), "random": row(0.5, 0.5), "oracle": row(0.95, 0.96),
               "hybrid_det": row(0.85, 0.85), "knn": row(0.6, 0.6), "cascade": row(0.84, 0.88),
               "combined": row(0.88, 0.89)}
    paired = {"baseline": "hybrid_det", "difference": {"apgr": (0.01, 0.002, 0.018), "apgr_latency": (0.02, -0.01, 0.05)}}
    text = comparison_lines(routing, {"apgr": (0.86, 0.84, 0.88)}, paired)
    assert "0.860: above every baseline" in text and "best: hybrid_det 0.850" in text  # oracle/cascade excluded
    assert "inside the router's 95% interval [0.840, 0.880]" in text
    assert "router minus hybrid_det: APGR +0.0100 [+0.0020, +0.0180] (excludes 0)" in text
    assert "combined) dominates both" in text
    routing["hybrid_det"] = row(0.87, 0.85)
    routing["combined"] = row(0.88, 0.875)  # below the cascade on the latency axis
    text = comparison_lines(routing)
    assert "NOT above" in text and "does not dominate" in text


def test_confidence_baselines_left_out_when_the_edge_model_has_no_confidence(data):
    """A model whose outcomes carry no confidence has NaN there: cascade and combined are not fitted (they
    would read NaN), the others are; with confidences they run."""
    tr, te, ctx = data["qtype"]
    names = ["random", "qtype", "cascade", "combined"]
    assert B.confidence_left_out(TIERS, tr, te) == {}
    assert set(B.compare(tr, te, ctx, names=names, n=5)) == set(names)
    bare = [dataclasses.replace(s, confidence=s.confidence.copy()) for s in (tr, te)]
    for s in bare:
        s.confidence[:, 0] = np.nan
    assert B.confidence_left_out(TIERS, *bare) == {"cascade": 0, "combined": 0}
    res = B.compare(*bare, ctx, names=names, n=5)
    assert set(res) == {"random", "qtype"}
    assert res["qtype"]["summary"]["apgr"] == pytest.approx(apgr(B.make("qtype").fit(tr, ctx), te))  # unaffected
    # a NaN on the test split alone also leaves them out
    test_only = dataclasses.replace(te, confidence=te.confidence.copy())
    test_only.confidence[3, 0] = np.nan
    assert B.confidence_left_out(TIERS, tr, test_only) == {"cascade": 0, "combined": 0}


def test_combined_alone_left_out_when_another_edge_model_has_no_confidence():
    """Three models: the best edge model (0) has confidences, edge model 1 has none. The cascade reads
    model 0 only and still runs; combined may keep queries on model 1, so it is left out."""
    rng = np.random.default_rng(0)
    n, tiers = 50, ["edge", "edge", "cloud"]
    score = np.stack([rng.random(n) < 0.7, rng.random(n) < 0.4, np.ones(n, bool)], 1)
    conf = np.stack([rng.random(n), np.full(n, np.nan), rng.random(n)], 1)
    s = _split(score, np.tile([0.01, 0.02, 0.2], (n, 1)), np.tile([0.1, 0.2, 0.3], (n, 1)), conf)
    assert B.best_edge(s, tiers) == 0
    assert B.confidence_left_out(tiers, s, s) == {"combined": 1}
    res = B.compare(s, s, B.Context(tiers, 2), names=["cascade", "combined"], n=5)
    assert list(res) == ["cascade"]
    assert res["cascade"]["points"][-1]["cloud_share"] == 1.0
