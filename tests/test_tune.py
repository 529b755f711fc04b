"""Tests for router_training.tune (Optuna threshold search with an accuracy floor)."""

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pytest

from router_training import policies, tune
from router_training.config import TuneConfig
from router_training.fit import SplitArrays
from router_training.profile import DeploymentProfile
from router_training.runtime import expected_costs

TIERS = ["edge", "edge", "cloud"]
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


def make_spec() -> dict:
    """A cost spec shaped like fit.cost_spec's output."""
    models = [{"name": "edge-small", "tier": "edge", "mean_compute_s": 0.01, "mean_payload_bytes": 3000.0},
              {"name": "edge-large", "tier": "edge", "mean_compute_s": 0.03, "mean_payload_bytes": 3000.0},
              {"name": "cloud", "tier": "cloud", "mean_compute_s": 0.02, "mean_payload_bytes": 3000.0}]
    spec = {"models": models, "profile": PROFILE.to_dict()}
    lat, en = expected_costs(spec, PROFILE)
    spec["ref_latency_s"], spec["ref_energy_j"] = float(lat[CLOUD]), float(en[CLOUD])
    return spec


def test_spec_costs_by_hand():
    spec = make_spec()
    lat, en = expected_costs(spec, DeploymentProfile.from_dict(spec["profile"]))
    # cloud: 0.05 + 3000*8/1e7 (0.0024) + 512*8/5e7 (8.192e-5) + 0.02
    cloud_lat = 0.05 + 0.0024 + 8.192e-5 + 0.02
    np.testing.assert_allclose(lat, [0.01, 0.03, cloud_lat])
    np.testing.assert_allclose(en, [0.1, 0.3, 2.0 * 0.0024 + 3.0 * (cloud_lat - 0.0024)])
    assert spec["ref_latency_s"] == pytest.approx(cloud_lat)


def make_split(spec, score, seed=0) -> SplitArrays:
    lat, en = expected_costs(spec, DeploymentProfile.from_dict(spec["profile"]))
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
    out = tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=60), storage, "t")
    assert storage.is_file()
    assert out["trial"] is not None
    assert len(out["thresholds"]) == 3 and out["thresholds"][CLOUD] == 0.0
    assert all(0.3 <= t <= 1.0 for t in out["thresholds"][:2])
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
    out80 = tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=80), storage, "t")
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{storage}")
    assert len(study.trials) == 80
    assert [t.number for t in study.trials] == list(range(80))
    assert out80["val_metrics"]["mean_latency_s"] <= m["mean_latency_s"] + 1e-12
    assert out80["val_metrics"]["accuracy"] >= 0.99 * cloud_acc

    # a target already reached runs no trial
    tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=50), storage, "t")
    assert len(optuna.load_study(study_name="t", storage=f"sqlite:///{storage}").trials) == 80


def test_tune_energy_objective(db_dir, informative):
    _, probs, val, spec = informative
    out = tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=12, minimize="energy"),
                    db_dir / "e.db", "e")
    m = out["val_metrics"]
    assert m["accuracy"] >= 0.99 * val.score[:, CLOUD].mean()
    # edge-small (0.1 J) is the only model cheaper in energy than the cloud (0.215 J)
    assert m["mean_energy_j"] < val.energy_j[:, CLOUD].mean()


def test_tune_falls_back_to_all_cloud(db_dir, caplog):
    spec = make_spec()
    n = 200
    rng = np.random.default_rng(1)
    score = np.stack([np.zeros(n), np.zeros(n), np.ones(n)], axis=1)  # edge always wrong, cloud always right
    probs = np.stack([np.ones(n), np.ones(n), 0.6 + rng.normal(0, 0.01, n)], axis=1)  # edge probs say nothing
    val = make_split(spec, score)
    with caplog.at_level(logging.WARNING, logger="router_training.tune"):
        out = tune.tune(probs, val, spec, TIERS, CLOUD,
                        TuneConfig(n_trials=10, min_cloud_accuracy_ratio=1.0), db_dir / "f.db", "f")
    assert out["trial"] is None
    assert out["thresholds"][CLOUD] == 0.0 and all(t > 1.0 for t in out["thresholds"][:2])
    m = out["val_metrics"]
    assert m["edge_share"] == 0.0
    assert m["accuracy"] == pytest.approx(1.0)
    assert m["pct_cloud_accuracy"] == pytest.approx(100.0)
    assert m["latency_reduction"] == pytest.approx(0.0)
    assert any("no trial kept" in r.getMessage() for r in caplog.records)
    # every trial was infeasible
    study = optuna.load_study(study_name="f", storage=f"sqlite:///{db_dir / 'f.db'}")
    assert len(study.trials) == 10
    assert all(t.constraints["accuracy_floor"] > 0 for t in study.trials)


def test_start_is_enqueued_first(db_dir, informative):
    _, probs, val, spec = informative
    start = {"lambda_latency": 0.7, "lambda_energy": 0.05}
    tune.tune(probs, val, spec, TIERS, CLOUD, TuneConfig(n_trials=3), db_dir / "s.db", "s", start=start)
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
