"""Tests for router_training.tune (Optuna threshold search with an accuracy floor, and its fallback)."""

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pytest

from router_training import policies, tune
from router_training.config import GuaranteeConfig, TuneConfig
from router_training.core.decision import NEVER_THRESHOLD, CostSpec, ModelCost, decide
from router_training.core.profile import DeploymentProfile
from router_training.core.splits import SplitArrays

TIERS = ["edge", "edge", "cloud"]
MODELS = ["edge-small", "edge-large", "cloud"]
CLOUD = 2
N = 400

PROFILE = DeploymentProfile(name="test", edge_power_w=10.0, idle_power_w=3.0, radio_tx_power_w=2.0,
                            uplink_mbps=10.0, downlink_mbps=50.0, rtt_s=0.05)


@pytest.fixture
def db_dir(tmp_path):
    """Folder for the SQLite studies: RAM-backed /dev/shm when there is one (each Optuna trial makes
    ~20 SQLite commits, ~2 ms apiece on disk), else pytest's tmp_path."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="router-tune-test-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_spec(models=None) -> CostSpec:
    """A cost spec as fit.cost_spec gives, the all-cloud reference the cloud model."""
    models = models or (ModelCost("edge-small", "edge", 0.01, 3000.0), ModelCost("edge-large", "edge", 0.03, 3000.0),
                        ModelCost("cloud", "cloud", 0.02, 3000.0))
    lat, en = CostSpec(models, PROFILE, 1.0, 1.0).costs()
    ref = [m.tier for m in models].index("cloud")
    return CostSpec(models, PROFILE, float(lat[ref]), float(en[ref]))


def test_spec_costs_by_hand():
    spec = make_spec()
    lat, en = spec.costs()
    # cloud: 0.05 + 3000*8/1e7 (0.0024) + 512*8/5e7 (8.192e-5) + 0.02
    cloud_lat = 0.05 + 0.0024 + 8.192e-5 + 0.02
    np.testing.assert_allclose(lat, [0.01, 0.03, cloud_lat])
    np.testing.assert_allclose(en, [0.1, 0.3, 2.0 * 0.0024 + 3.0 * (cloud_lat - 0.0024)])
    assert spec.ref_latency_s == pytest.approx(cloud_lat)
    assert CostSpec.from_dict(spec.to_dict()) == spec  # the spec.json / manifest layout round trip


def make_split(spec, score, seed=0) -> SplitArrays:
    lat, en = spec.costs()
    n = score.shape[0]
    return SplitArrays([f"s{i:04d}" for i in range(n)], np.zeros((n, 3), np.float32), score,
                       np.tile(lat, (n, 1)), np.tile(en, (n, 1)), np.full(score.shape, 0.5))


@pytest.fixture(scope="module")
def informative():
    """Edge models correct exactly where flag == 1; cloud always correct; probs reflect it."""
    rng = np.random.default_rng(0)
    flag = rng.integers(0, 2, N)
    score = np.stack([flag, flag, np.ones(N)], axis=1).astype(np.float64)
    edge_p = np.where(flag == 1, 0.95, 0.05)
    probs = np.stack([edge_p + rng.normal(0, 0.01, N), edge_p + rng.normal(0, 0.01, N),
                      0.9 + rng.normal(0, 0.01, N)], axis=1).clip(0, 1)
    spec = make_spec()
    return flag, probs, make_split(spec, score), spec


def test_tune_meets_floor_and_beats_cloud_latency(db_dir, informative):
    flag, probs, val, spec = informative
    storage = db_dir / "studies" / "tune.db"
    out = tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=60), storage, "t", models=MODELS)
    assert storage.is_file()
    assert out["trial"] is not None
    assert len(out["thresholds"]) == 3 and out["thresholds"][CLOUD] == 0.0
    for k in (0, 1):  # within the observed range of that model's router-val probabilities
        lo, hi = tune.threshold_range(probs[:, k])
        assert probs[:, k].min() == lo <= out["thresholds"][k] <= hi
    assert out["target_met"] is True and out["deployed"] == "router"
    m = out["val_metrics"]
    cloud_acc = val.score[:, CLOUD].mean()
    cloud_lat = val.latency_s[:, CLOUD].mean()
    assert m["accuracy"] >= 0.99 * cloud_acc
    assert m["pct_cloud_accuracy"] >= 99.0
    assert m["mean_latency_s"] < cloud_lat
    assert m["edge_share"] > 0.3
    assert m["edge_share"] <= flag.mean() + 0.01  # only (almost only) flag-1 samples can go to the edge

    # val_metrics are the metrics of the returned decision
    again = tune.evaluate({k: out[k] for k in ("thresholds", "lambda_latency", "lambda_energy")}, probs, val,
                          spec, TIERS, CLOUD)
    assert again == m

    # the chosen trial is the best feasible one in the study
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{storage}")
    assert len(study.trials) == 60
    feasible = [t for t in study.trials if t.constraints["accuracy_floor"] <= 0]
    assert min(t.value for t in feasible) == pytest.approx(m["mean_latency_s"])

    # resume: the same storage with n_trials=80 adds 20 trials
    out80 = tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=80), storage, "t", models=MODELS)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{storage}")
    assert len(study.trials) == 80
    assert [t.number for t in study.trials] == list(range(80))
    assert out80["val_metrics"]["mean_latency_s"] <= m["mean_latency_s"] + 1e-12
    assert out80["val_metrics"]["accuracy"] >= 0.99 * cloud_acc

    # a target already reached runs no trial
    tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=50), storage, "t", models=MODELS)
    assert len(optuna.load_study(study_name="t", storage=f"sqlite:///{storage}").trials) == 80


def test_tune_energy_objective(db_dir, informative):
    _, probs, val, spec = informative
    out = tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=12, minimize="energy"),
                    db_dir / "e.db", "e", models=MODELS)
    m = out["val_metrics"]
    assert m["accuracy"] >= 0.99 * val.score[:, CLOUD].mean()
    # edge-small (0.1 J) is the only model cheaper in energy than the cloud (0.215 J)
    assert m["mean_energy_j"] < val.energy_j[:, CLOUD].mean()


def test_tune_falls_back_to_all_cloud(db_dir, caplog):
    """A target no policy can meet (150% of all-cloud accuracy; all-cloud itself is reachable through
    thresholds above the observed probabilities, so 100% would be met)."""
    spec = make_spec()
    n = 200
    rng = np.random.default_rng(1)
    score = np.stack([np.zeros(n), np.zeros(n), np.ones(n)], axis=1)  # edge always wrong, cloud always right
    probs = np.stack([np.ones(n), np.ones(n), 0.6 + rng.normal(0, 0.01, n)], axis=1)  # edge probs say nothing
    val = make_split(spec, score)
    with caplog.at_level(logging.WARNING, logger="router_training.tune"):
        out = tune.tune(probs, val, spec, TIERS, CLOUD,
                        TuneConfig(n_trials=10, min_cloud_accuracy_ratio=1.5), db_dir / "f.db", "f",
                        models=MODELS)
    assert out["trial"] is None
    assert out["thresholds"] == [NEVER_THRESHOLD, NEVER_THRESHOLD, 0.0]
    assert out["target_met"] is False
    assert out["deployed"] == ("every query to cloud (the most accurate cloud model on router-val; no trial met "
                               "150% of all-cloud accuracy)")
    m = out["val_metrics"]
    assert m["edge_share"] == 0.0
    assert m["accuracy"] == pytest.approx(1.0)
    assert m["pct_cloud_accuracy"] == pytest.approx(100.0)
    assert m["latency_reduction"] == pytest.approx(0.0)
    assert any("no trial met 150% of all-cloud accuracy" in r.getMessage() for r in caplog.records)
    # every trial was infeasible
    study = optuna.load_study(study_name="f", storage=f"sqlite:///{db_dir / 'f.db'}")
    assert len(study.trials) == 10
    assert all(t.constraints["accuracy_floor"] > 0 for t in study.trials)


def test_start_is_enqueued_first(db_dir, informative):
    _, probs, val, spec = informative
    start = {"lambda_latency": 0.7, "lambda_energy": 0.05}
    tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=3), db_dir / "s.db", "s", start=start,
              models=MODELS)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db_dir / 's.db'}")
    first = study.trials[0].params
    assert first["lambda_latency"] == 0.7 and first["lambda_energy"] == 0.05
    assert first["threshold_0"] == 0.5 and first["threshold_1"] == 0.5
    assert "threshold_2" not in first  # no threshold for the cloud model


def test_decision_params():
    d = tune.decision_params({"threshold_0": 0.4, "threshold_1": 0.8, "lambda_latency": 0.1, "lambda_energy": 0.2},
                             TIERS)
    assert d == {"thresholds": [0.4, 0.8, 0.0], "lambda_latency": 0.1, "lambda_energy": 0.2}


def test_evaluate_matches_policy_metrics(informative):
    flag, probs, val, spec = informative
    decision = {"thresholds": [0.5, 0.5, 0.0], "lambda_latency": 1.0, "lambda_energy": 0.0}
    m = tune.evaluate(decision, probs, val, spec, TIERS, CLOUD)
    # flag-1 samples: edge-small (p 0.95, cost -0.95 + 0.01/L) beats edge-large and the cloud; flag-0: cloud
    assign = np.zeros((N, 3))
    assign[flag == 1, 0] = 1.0
    assign[flag == 0, 2] = 1.0
    assert m == policies.metrics(assign, val, TIERS, CLOUD)
    assert m["accuracy"] == pytest.approx(1.0)
    assert m["edge_share"] == pytest.approx(flag.mean())


def test_threshold_range():
    p = np.array([0.05, 0.1, 0.29])
    lo, hi = tune.threshold_range(p)
    assert lo == 0.05 and hi == pytest.approx(0.29 + 0.01 * 0.24)
    lo, hi = tune.threshold_range(np.full(5, 0.2))  # a constant column: all eligible and none both reachable
    assert lo == pytest.approx(0.2 - 1e-6) and hi == pytest.approx(0.2 + 1e-6) and lo < 0.2 < hi


def test_narrow_probability_band_still_routes_to_the_edge(db_dir):
    """A router trained on real VLM grades: every edge P(correct) below 0.3, yet it ranks correctness
    perfectly (0.25 where the edge models are right, 0.05 where not). The fixed range [0.3, 1] held no
    eligible threshold (edge share 0); the observed range reaches the flag-1 half at no accuracy loss."""
    rng = np.random.default_rng(3)
    n = 400
    flag = rng.integers(0, 2, n)
    score = np.stack([flag, flag, np.ones(n)], axis=1).astype(np.float64)
    edge_p = np.where(flag == 1, 0.25, 0.05)
    probs = np.stack([edge_p + rng.normal(0, 0.01, n), edge_p + rng.normal(0, 0.01, n),
                      0.78 + rng.normal(0, 0.01, n)], axis=1).clip(0, 0.299)
    assert probs[:, :2].max() < 0.3
    spec = make_spec()
    val = make_split(spec, score)
    out = tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=40), db_dir / "narrow.db", "narrow",
                    models=MODELS)
    m = out["val_metrics"]
    assert out["target_met"] is True and out["deployed"] == "router"
    assert m["accuracy"] >= 0.99
    assert m["edge_share"] > 0.8 * flag.mean()      # flag.mean() ~0.5 is the most a lossless policy can reach
    assert m["mean_latency_s"] < 0.8 * val.latency_s[:, CLOUD].mean()


def two_cloud_case(n=300, seed=4):
    """One edge model (always wrong) and two cloud models: cloud-a (the reference, index 1) right on 60%
    of router-val, cloud-b (index 2) on 80%; the router's cloud probabilities are noise around 0.7, so
    a decision among both clouds splits queries between them."""
    rng = np.random.default_rng(seed)
    tiers, models = ["edge", "cloud", "cloud"], ["edge", "cloud-a", "cloud-b"]
    score = np.stack([np.zeros(n), rng.permutation(np.r_[np.ones(int(0.6 * n)), np.zeros(n - int(0.6 * n))]),
                      rng.permutation(np.r_[np.ones(int(0.8 * n)), np.zeros(n - int(0.8 * n))])], axis=1)
    probs = np.stack([rng.uniform(0.0, 0.2, n), 0.7 + rng.normal(0, 0.02, n), 0.7 + rng.normal(0, 0.02, n)], 1)
    spec = make_spec((ModelCost("edge", "edge", 0.01, 3000.0), ModelCost("cloud-a", "cloud", 0.02, 3000.0),
                      ModelCost("cloud-b", "cloud", 0.02, 3000.0)))
    val = make_split(spec, score)
    return tiers, models, score, probs, spec, val


def routed(decision, probs, spec):
    lat, en = spec.costs()
    return decide(probs, lat, en, np.asarray(decision["thresholds"]), decision["lambda_latency"],
                  decision["lambda_energy"], spec.ref_latency_s, spec.ref_energy_j)


def test_fallback_sends_everything_to_the_best_val_cloud_model(db_dir, caplog):
    tiers, models, score, probs, spec, val = two_cloud_case()
    # the old fallback (edge thresholds above 1, every cloud model 0) split queries by noisy predictions
    old = routed({"thresholds": [NEVER_THRESHOLD, 0.0, 0.0], "lambda_latency": 0.0, "lambda_energy": 0.0}, probs, spec)
    assert 0 < (old == 2).mean() < 1
    with caplog.at_level(logging.WARNING, logger="router_training.tune"):
        out = tune.tune(probs, val, spec, tiers, 1, TuneConfig(n_trials=5, min_cloud_accuracy_ratio=2.0),
                        db_dir / "two.db", "two", models=models)
    assert out["trial"] is None and out["target_met"] is False
    assert out["thresholds"] == [NEVER_THRESHOLD, NEVER_THRESHOLD, 0.0]
    assert out["deployed"] == ("every query to cloud-b (the most accurate cloud model on router-val; no trial "
                               "met 200% of all-cloud accuracy)")
    assert (routed(out, probs, spec) == 2).all()                       # the runtime: every sample to cloud-b
    assert out["val_metrics"]["shares"] == [0.0, 0.0, 1.0]
    assert out["val_metrics"]["accuracy"] == pytest.approx(0.8)
    assert any("deploying every query to cloud-b" in r.getMessage() for r in caplog.records)


def test_calibrated_fallback_sends_everything_to_the_best_val_cloud_model():
    tiers, models, score, probs, spec, val = two_cloud_case()
    out = tune.calibrated(probs, val, spec, tiers, 1, GuaranteeConfig(eps=0.0, delta=0.1), 0.5, 0.0, models=models)
    assert out["guarantee"]["certified"] is False and out["target_met"] is False
    assert out["thresholds"] == [NEVER_THRESHOLD, NEVER_THRESHOLD, 0.0]
    assert (routed(out, probs, spec) == 2).all()
    assert out["deployed"].startswith("every query to cloud-b (the most accurate cloud model on router-val; no edge "
                                      "threshold certified by Learn then Test at eps 0, delta 0.1")


def test_calibrated_certified_says_router(informative):
    _, probs, val, spec = informative
    out = tune.calibrated(probs, val, spec, TIERS, CLOUD, GuaranteeConfig(eps=0.05, delta=0.1, transform="clip"),
                          1.0, 0.0, models=MODELS)
    assert out["guarantee"]["certified"] is True and out["target_met"] is True and out["deployed"] == "router"
    assert out["val_metrics"]["edge_share"] > 0.3


def test_max_accuracy_drop_sets_the_floor(db_dir, informative):
    """max_accuracy_drop 0.1: the floor is all-cloud accuracy - 0.1 (absolute), not a ratio."""
    flag, probs, val, spec = informative
    storage = db_dir / "drop.db"
    tc = TuneConfig(n_trials=30, max_accuracy_drop=0.1)
    out = tune.tune(probs, val, spec, TIERS, CLOUD, tc, storage, "drop", models=MODELS)
    cloud_acc = float(val.score[:, CLOUD].mean())
    study = optuna.load_study(study_name="drop", storage=f"sqlite:///{storage}")
    for t in study.trials:
        assert t.constraints["accuracy_floor"] == pytest.approx(cloud_acc - 0.1 - t.user_attrs["accuracy"], abs=1e-9)
    assert out["target_met"] is True
    assert out["val_metrics"]["accuracy"] >= cloud_acc - 0.1


def test_warns_when_the_target_is_finer_than_one_question(db_dir, informative, caplog):
    _, probs, val, spec = informative                     # 400 questions, all-cloud accuracy 1.0
    with caplog.at_level(logging.WARNING, logger="router_training.tune"):
        tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=1, min_cloud_accuracy_ratio=0.999),
                  db_dir / "fine.db", "fine", models=MODELS)
    msgs = [r.getMessage() for r in caplog.records if "cannot be told apart from all-cloud" in r.getMessage()]
    assert len(msgs) == 1
    assert "99.9% of all-cloud accuracy" in msgs[0] and "0.0010" in msgs[0] and "400" in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="router_training.tune"):  # 1 point = 4 questions: no warning
        tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=1, max_accuracy_drop=0.01),
                  db_dir / "fine.db", "coarse", models=MODELS)
    assert not any("cannot be told apart" in r.getMessage() for r in caplog.records)
