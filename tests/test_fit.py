"""The router's latency-energy-accuracy loss and its ability to learn a known signal."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from router_training.config import RouterConfig
from router_training.core.features import FEATURE_NAMES
from router_training.core.decision import CostSpec
from router_training.core.splits import SplitArrays
from router_training.fit import RouterModule, fit, predict


SPEC = {"models": [{"name": "e", "tier": "edge", "mean_compute_s": 0.01, "mean_payload_bytes": 0},
                   {"name": "c", "tier": "cloud", "mean_compute_s": 0.0, "mean_payload_bytes": 1000}],
        "profile": {"name": "p", "edge_power_w": 10, "idle_power_w": 3, "radio_tx_power_w": 2,
                    "uplink_mbps": 10, "downlink_mbps": 50, "rtt_s": 0.05},
        "ref_latency_s": 0.1, "ref_energy_j": 0.3}
COST = CostSpec.from_dict(SPEC)


def synthetic(n, seed):
    """Edge model correct iff feature 0 > 0; cloud always correct; edge fast, cloud slow."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    edge_ok = (x[:, 0] > 0).astype(float)
    score = np.stack([edge_ok, np.ones(n)], 1)
    lat = np.tile([0.01, 0.1], (n, 1))
    en = np.tile([0.1, 0.3], (n, 1))
    return SplitArrays([f"s{i}" for i in range(n)], x, score, lat, en, np.full((n, 2), 0.9))


def test_loss_is_bce_plus_expected_cost_of_soft_routing():
    rc = RouterConfig(hidden=[8], lambda_latency=0.5, lambda_energy=0.25, cost_weight=2.0, temperature=0.5,
                      members=1)
    m = RouterModule(3, 2, dict(rc.__dict__), [0.01, 0.1], [0.1, 0.3], ref_latency_s=0.1, ref_energy_j=0.3).eval()
    x = torch.randn(4, 3)
    score = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    lat = torch.tensor([[0.01, 0.1]] * 4)
    en = torch.tensor([[0.1, 0.3]] * 4)
    bce, expected, loss, _ = m.losses((x, score, lat, en))
    logits = m(x)
    assert bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, score).item(), rel=1e-6)
    realised = -score + 0.5 * lat / 0.1 + 0.25 * en / 0.3
    prior = torch.tensor([0.5 * 0.01 / 0.1 + 0.25 * 0.1 / 0.3, 0.5 + 0.25])
    pi = torch.softmax((torch.sigmoid(logits) - prior) / 0.5, dim=1)
    assert expected.item() == pytest.approx((pi * realised).sum(1).mean().item(), rel=1e-6)
    assert loss.item() == pytest.approx(bce.item() + 2.0 * expected.item(), rel=1e-6)


def test_an_ensemble_averages_its_members_probabilities_and_trains_each_on_its_own_bce():
    """members=3: P(correct) is the mean of the three members' sigmoids (the returned logits are that
    mean's); the training BCE is the mean of each member's own BCE, the validation BCE the ensemble's;
    the members start from different weights."""
    rc = RouterConfig(hidden=[8], members=3, dropout=0.0)
    m = RouterModule(3, 2, dict(rc.__dict__), [0.01, 0.1], [0.1, 0.3], ref_latency_s=0.1, ref_energy_j=0.3).eval()
    x = torch.randn(5, 3)
    z = torch.stack([member(x, None) for member in m.net.members])
    assert z.shape == (3, 5, 2) and not torch.allclose(z[0], z[1])
    torch.testing.assert_close(torch.sigmoid(m(x)), torch.sigmoid(z).mean(0), rtol=1e-5, atol=1e-6)
    score = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    batch = (x, score, torch.tensor([[0.01, 0.1]] * 5), torch.tensor([[0.1, 0.3]] * 5))
    own = np.mean([F.binary_cross_entropy_with_logits(z[k], score).item() for k in range(3)])
    assert m.losses(batch)[0].item() == pytest.approx(own, rel=1e-5)
    ens = F.binary_cross_entropy_with_logits(m(x), score).item()
    assert m.losses(batch, ensemble=True)[0].item() == pytest.approx(ens, rel=1e-5)
    assert ens != pytest.approx(own, rel=1e-3)
    with pytest.raises(ValueError, match="router.members"):
        RouterConfig(members=0)


def test_fit_learns_when_the_edge_model_is_right(tmp_path):
    train, val = synthetic(2000, 0), synthetic(500, 1)
    module, dm = fit(train, val, COST, RouterConfig(epochs=15, hidden=[32], batch_size=64), tmp_path, loggers=False,
                     progress=False)
    p = predict(module, dm, val.x)
    assert p.shape == (500, 2) and p.dtype == np.float32
    edge_ok = val.score[:, 0] == 1
    # The edge model's predicted correctness separates the two groups.
    assert p[edge_ok, 0].mean() > 0.8 and p[~edge_ok, 0].mean() < 0.2
    assert (tmp_path / "best.ckpt").exists()


def test_fit_logs_to_csv_and_offline_wandb(tmp_path):
    train, val = synthetic(300, 0), synthetic(100, 1)
    fit(train, val, COST, RouterConfig(epochs=2, hidden=[8]), tmp_path, loggers=True, progress=False)
    metrics = list((tmp_path / "logs").rglob("metrics.csv"))
    assert metrics and "val_loss" in metrics[0].read_text().splitlines()[0]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def blob_split(n, seed):
    """Signals are noise; the thumbnail is black with one 6 x 6 px square at a random place, red or
    green; the edge model is correct iff it is red. Only the CNN sees the colour."""
    from router_training.core.features import PIXEL_FEATURES, THUMBNAIL_SIDE as S

    rng = np.random.default_rng(seed)
    s = synthetic(n, seed)
    img = np.zeros((n, 3, S, S), np.float32)  # channel-first, as PIXEL_FEATURES
    red = rng.random(n) < 0.5
    for i, (y, x) in enumerate(rng.integers(0, S - 6, (n, 2))):
        img[i, 0 if red[i] else 1, y:y + 6, x:x + 6] = 1.0
    s.x[:, -len(PIXEL_FEATURES):] = img.reshape(n, -1)
    s.score[:, 0] = red
    return s


def test_the_thumbnail_cnn_learns_what_only_the_pixels_show(tmp_path):
    train, val = blob_split(1500, 0), blob_split(400, 1)
    rc = RouterConfig(epochs=12, hidden=[16], batch_size=64)
    module, dm = fit(train, val, COST, rc, tmp_path, loggers=False, progress=False)
    assert module.net.members[0].cnn is not None and module.net.n_signals == len(FEATURE_NAMES) - 32 * 32 * 3
    p = predict(module, dm, val.x)[:, 0]
    red = val.score[:, 0] == 1
    assert p[red].mean() > 0.8 and p[~red].mean() < 0.2
    # without the thumbnail (image_embedding 0) the same data teaches nothing about the colour
    module, dm = fit(train, val, COST, RouterConfig(epochs=12, hidden=[16], batch_size=64, image_embedding=0),
                     tmp_path / "mlp", loggers=False, progress=False)
    assert module.net.members[0].cnn is None
    p = predict(module, dm, val.x)[:, 0]
    assert abs(p[red].mean() - p[~red].mean()) < 0.15


def test_fit_stops_early_when_validation_loss_stops_improving(tmp_path):
    """On labels the inputs cannot predict, validation loss bottoms out within a few epochs and then
    climbs as the net memorises router-train (what real grades do: best epoch 5 of 60): training stops
    ``patience`` epochs after the best one, and the best epoch is what is kept."""
    rng = np.random.default_rng(0)
    train, val = synthetic(300, 0), synthetic(300, 1)
    for s in (train, val):
        s.score[:, 0] = rng.random(len(s)) < 0.5  # noise: nothing to learn
    rc = RouterConfig(epochs=60, hidden=[256, 256], dropout=0.0, lr=1e-2, batch_size=32, patience=3,
                      image_embedding=0)
    module, _ = fit(train, val, COST, rc, tmp_path, loggers="csv", progress=False)
    import pandas as pd

    log = pd.read_csv(next(tmp_path.glob("logs/*/metrics.csv"))).dropna(subset=["val_loss"])
    epochs = log["epoch"].to_numpy()
    best = int(epochs[log["val_loss"].to_numpy().argmin()])
    assert epochs.max() == best + 3 < 59  # stopped 3 epochs after the best, long before 60
    fit(train, val, COST, RouterConfig(**{**rc.__dict__, "patience": 0, "epochs": 8}), tmp_path / "all",
                  loggers="csv", progress=False)
    assert pd.read_csv(next((tmp_path / "all").glob("logs/*/metrics.csv")))["epoch"].max() == 7  # 0: never stops
