"""Decisions that respond to the network: the latency-budget target and thresholds tuned per uplink
(``tune.tune_grid``), stored in a real exported artifact and used by the runtime at each uplink.

The case is camera-size images (150-450 kB per request, where the upload dominates the cloud's latency
on a slow uplink): router-val and router-test are outcome and feature tables whose edge model is right
with the probability the known router predicts (sigmoid(8 (brightness - 0.5))) and whose cloud model is
right 95% of the time."""

import numpy as np
import pandas as pd
import pytest

from router_training.config import TuneConfig
from router_training.evaluate import BANDWIDTHS_MBPS
from router_training.core.features import FEATURE_NAMES, IMAGE_FEATURES
from router_training.outcomes import COLUMNS
from router_training.policies import metrics
from router_training.core.decision import CostSpec
from router_training.core.profile import DeploymentProfile
from router_training.runtime import Router
from router_training.tune import network_splits, tune, tune_grid
from serve_helpers import PROFILE, export_known

MODELS, TIERS = ["edge-small", "cloud"], ["edge", "cloud"]
COMPUTE = {"edge-small": 0.05, "cloud": 0.2}  # s: a small VLM on the device, a large one in the cloud


def tables(n: int, split: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"{split}-{i}" for i in range(n)]
    brightness = rng.uniform(0, 1, n)
    x = np.zeros((n, len(FEATURE_NAMES)), np.float32)
    x[:, IMAGE_FEATURES.index("brightness")] = brightness
    feats = pd.DataFrame(x, columns=list(FEATURE_NAMES))
    feats.insert(0, "sample_id", ids)
    payload = rng.integers(150_000, 450_000, n)
    right = {"edge-small": rng.random(n) < 1 / (1 + np.exp(-8 * (brightness - 0.5))), "cloud": rng.random(n) < 0.95}
    rows = [pd.DataFrame({"sample_id": ids, "image_id": ids, "split": split, "model": m, "tier": t, "answer": "a",
                          "score": right[m].astype(np.float32), "confidence": np.float32(np.nan),
                          "compute_s": COMPUTE[m], "payload_bytes": payload, "error": ""}) for m, t in zip(MODELS, TIERS)]
    return pd.concat(rows, ignore_index=True)[list(COLUMNS)], feats


def test_budget_thresholds_per_uplink_move_the_edge_share(tmp_path):
    profile = DeploymentProfile.from_dict(PROFILE)
    val_t, val_f = tables(600, "router-val", 0)
    test_t, test_f = tables(600, "router-test", 1)
    val_at, val_payload = network_splits(val_t, val_f, profile, MODELS, 1, BANDWIDTHS_MBPS)
    ref = val_at[profile.uplink_mbps]
    spec = {"models": [{"name": m, "tier": t, "mean_compute_s": COMPUTE[m], "mean_payload_bytes": 300_000.0,
                        "compute_source": "measured"} for m, t in zip(MODELS, TIERS)],
            "profile": PROFILE, "ref_latency_s": float(ref.latency_s[:, 1].mean()),
            "ref_energy_j": float(ref.energy_j[:, 1].mean())}
    art = export_known(tmp_path / "probe", spec, {"thresholds": [0.0, 0.0], "lambda_latency": 0.0,
                                                  "lambda_energy": 0.0}, {"name": "probe"})
    probs_val = Router.load(art).predict(ref.x)
    tc = TuneConfig(n_trials=100, max_latency_s=0.5)
    assert tc.grid() == list(BANDWIDTHS_MBPS) and "500 ms" in tc.target_text()
    base = tune(probs_val, ref, CostSpec.from_dict(spec), TIERS, 1, tc, None, "base", models=MODELS, payload_bytes=val_payload)
    grid = tune_grid(probs_val, val_at, CostSpec.from_dict(spec), TIERS, 1, tc, None, "budget", models=MODELS, payload_bytes=val_payload)
    assert [g["uplink_mbps"] for g in grid] == list(BANDWIDTHS_MBPS) and all(g["target_met"] for g in grid)
    assert all(g["val_metrics"]["mean_latency_s"] <= 0.5 + 1e-9 for g in grid)
    router = Router.load(export_known(tmp_path / "art", spec, base, {"name": "budget", "network_grid": grid}))

    test_at, test_payload = network_splits(test_t, test_f, profile, MODELS, 1, BANDWIDTHS_MBPS, split="router-test")
    probs = router.predict(test_at[1.0].x)
    rows = []
    for u in BANDWIDTHS_MBPS:  # what the report's bandwidth table computes, with each query's payload
        assign = np.eye(2)[router.decide(probs, uplink_mbps=u, payload_bytes=test_payload)]
        m = metrics(assign, test_at[u], TIERS, 1)
        rows.append((u, m["edge_share"], m["mean_latency_s"], m["accuracy"]))
    shares = [r[1] for r in rows]
    print("\n| uplink (Mbit/s) | edge share | mean latency (ms) | accuracy |\n|---:|---:|---:|---:|\n" + "\n".join(
        f"| {u:g} | {s:.3f} | {1e3 * lat:.0f} | {acc:.4f} |" for u, s, lat, acc in rows))
    assert shares[0] > 0.7 and shares[-1] < 0.3  # slow uplink: mostly edge; fast: mostly cloud
    assert all(a >= b - 0.03 for a, b in zip(shares, shares[1:]))  # the share falls as the uplink rises
    assert all(lat <= 0.5 * 1.15 for _, _, lat, _ in rows)  # the budget holds on unseen queries (within noise)
    assert rows[-1][3] > rows[0][3]  # and the fast network buys accuracy back
    # between grid points the runtime uses the slower point's thresholds, so the budget still holds
    assert router.decision_at(3.0).thresholds == router.decision_at(2.0).thresholds


def test_budget_config_is_validated():
    assert TuneConfig(max_latency_s=0.2).min_cloud_accuracy_ratio is None
    assert TuneConfig(max_latency_s=0.2).accuracy_floor(0.9) == 0.0
    assert TuneConfig().grid() == [] and TuneConfig(uplink_grid_mbps=[5, 1, 5]).grid() == [1.0, 5.0]
    assert TuneConfig(max_latency_s=0.2, uplink_grid_mbps=[]).grid() == []
    for kw, msg in (({"max_latency_s": 0}, "max_latency_s must be"), ({"max_latency_s": True}, "max_latency_s must be"),
                    ({"max_latency_s": 0.2, "min_cloud_accuracy_ratio": 0.99}, "one target"),
                    ({"max_latency_s": 0.2, "guarantee": {"eps": 0.01}}, "two different targets"),
                    ({"uplink_grid_mbps": [0, 1]}, "uplink_grid_mbps"), ({"uplink_grid_mbps": 5}, "uplink_grid_mbps")):
        with pytest.raises(ValueError, match=msg):
            TuneConfig(**kw)
