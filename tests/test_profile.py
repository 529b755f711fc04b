"""Tests for router_training.core.profile (DeploymentProfile: cost model, parsing, network overrides)."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from router_training.core.profile import TIERS, DeploymentProfile

REPO = Path(__file__).resolve().parents[1]
PROFILE_FILES = sorted((REPO / "configs" / "profiles").glob("*.yaml"))

# Small profile whose numbers make the arithmetic easy to do by hand:
#   upload of 1000 bytes at 8 Mbit/s   = 8000 bit / 8e6 bit/s  = 0.001 s
#   reply of 2000 bytes at 16 Mbit/s   = 16000 bit / 16e6 bit/s = 0.001 s
SMALL = dict(name="small", edge_power_w=4.0, idle_power_w=1.0, radio_tx_power_w=2.0, uplink_mbps=8.0,
             downlink_mbps=16.0, rtt_s=0.05, response_bytes=2000, edge_compute_scale=2.0, cloud_compute_scale=0.5)


@pytest.fixture
def prof():
    return DeploymentProfile.from_dict(dict(SMALL))


def test_edge_cost_by_hand(prof):
    # latency = 0.1 s * edge scale 2.0 = 0.2 s; energy = 4 W * 0.2 s = 0.8 J
    lat, en = prof.cost("edge", 0.1, 1000)
    assert float(lat) == pytest.approx(0.2)
    assert float(en) == pytest.approx(0.8)
    assert lat.dtype == np.float64 and en.dtype == np.float64


def test_edge_cost_ignores_payload(prof):
    a = prof.cost("edge", 0.1, 0)
    b = prof.cost("edge", 0.1, 10_000_000)
    assert float(a[0]) == float(b[0]) and float(a[1]) == float(b[1])


def test_cloud_cost_by_hand(prof):
    # upload 0.001 s; latency = rtt 0.05 + upload 0.001 + reply 0.001 + 0.1 * 0.5 = 0.102 s
    # energy = radio 2 W * 0.001 s + idle 1 W * (0.102 - 0.001) s = 0.002 + 0.101 = 0.103 J
    lat, en = prof.cost("cloud", 0.1, 1000)
    assert float(lat) == pytest.approx(0.102)
    assert float(en) == pytest.approx(0.103)


def test_cloud_cost_upload_scales_with_payload(prof):
    # +7000 bytes = +56000 bit at 8 Mbit/s = +0.007 s of upload: latency +0.007, energy +2 W * 0.007 s
    lat1, en1 = prof.cost("cloud", 0.1, 1000)
    lat8, en8 = prof.cost("cloud", 0.1, 8000)
    assert float(lat8 - lat1) == pytest.approx(0.007)
    assert float(en8 - en1) == pytest.approx(0.014)


def test_cost_arrays_broadcast(prof):
    lat, en = prof.cost(["edge", "cloud"], 0.1, 1000)
    assert lat.shape == (2,) and en.shape == (2,)
    np.testing.assert_allclose(lat, [0.2, 0.102])
    np.testing.assert_allclose(en, [0.8, 0.103])

    # (1, 2) tiers x (3, 1) compute times -> (3, 2)
    compute = np.array([[0.0], [0.1], [0.2]])
    lat, en = prof.cost(np.array([["edge", "cloud"]]), compute, 1000)
    assert lat.shape == (3, 2) and en.shape == (3, 2)
    # edge column: 2 * c; cloud column: 0.052 + 0.5 * c
    np.testing.assert_allclose(lat[:, 0], [0.0, 0.2, 0.4])
    np.testing.assert_allclose(lat[:, 1], [0.052, 0.102, 0.152])
    np.testing.assert_allclose(en[:, 0], [0.0, 0.8, 1.6])
    # cloud energy = 2 * 0.001 + 1 * (latency - 0.001)
    np.testing.assert_allclose(en[:, 1], [0.053, 0.103, 0.153])

    # per-row payloads
    lat, _ = prof.cost(["cloud", "cloud"], [0.1, 0.1], [1000, 2000])
    np.testing.assert_allclose(lat, [0.102, 0.103])


@pytest.mark.parametrize("tier", ["fog", "Edge", ""])
def test_unknown_tier_raises(prof, tier):
    with pytest.raises(ValueError, match="unknown tier"):
        prof.cost(tier, 0.1, 1000)
    with pytest.raises(ValueError, match="unknown tier"):
        prof.cost(["edge", tier, "cloud"], 0.1, 1000)


def test_tiers_constant():
    assert TIERS == ("edge", "cloud")


def test_from_dict_defaults_and_round_trip():
    d = {k: v for k, v in SMALL.items() if k not in ("response_bytes", "edge_compute_scale", "cloud_compute_scale")}
    p = DeploymentProfile.from_dict(d)
    assert p.response_bytes == 512 and p.edge_compute_scale == 1.0 and p.cloud_compute_scale == 1.0
    full = DeploymentProfile.from_dict(dict(SMALL))
    assert full.to_dict() == SMALL
    assert DeploymentProfile.from_dict(full.to_dict()) == full


def test_from_dict_unknown_key_raises():
    with pytest.raises(ValueError, match="uplink_mpbs"):
        DeploymentProfile.from_dict({**SMALL, "uplink_mpbs": 3.0})


def test_from_dict_missing_key_raises():
    d = dict(SMALL)
    del d["rtt_s"]
    with pytest.raises(ValueError, match="rtt_s"):
        DeploymentProfile.from_dict(d)


@pytest.mark.parametrize("key,value", [("uplink_mbps", 0.0), ("uplink_mbps", -1.0), ("downlink_mbps", 0.0),
                                       ("downlink_mbps", -5.0)])
def test_non_positive_bandwidth_raises(key, value):
    with pytest.raises(ValueError, match="bandwidth"):
        DeploymentProfile.from_dict({**SMALL, key: value})


def test_with_network_changes_only_uplink_and_rtt(prof):
    p = prof.with_network(uplink_mbps=2.0, rtt_s=0.2)
    assert p.uplink_mbps == 2.0 and p.rtt_s == 0.2
    before, after = prof.to_dict(), p.to_dict()
    for k in before:
        if k not in ("uplink_mbps", "rtt_s"):
            assert after[k] == before[k], k
    # the original is untouched (frozen dataclass, a copy is returned)
    assert prof.uplink_mbps == 8.0 and prof.rtt_s == 0.05
    # upload of 1000 bytes at 2 Mbit/s = 0.004 s; latency = 0.2 + 0.004 + 0.001 + 0.05 = 0.255 s
    lat, en = p.cost("cloud", 0.1, 1000)
    assert float(lat) == pytest.approx(0.255)
    assert float(en) == pytest.approx(2.0 * 0.004 + 1.0 * (0.255 - 0.004))
    # edge cost does not depend on the network
    assert float(p.cost("edge", 0.1, 1000)[0]) == pytest.approx(0.2)


def test_with_network_partial_and_none(prof):
    assert prof.with_network() == prof
    only_up = prof.with_network(uplink_mbps=4.0)
    assert only_up.uplink_mbps == 4.0 and only_up.rtt_s == prof.rtt_s
    only_rtt = prof.with_network(rtt_s=0.0)
    assert only_rtt.rtt_s == 0.0 and only_rtt.uplink_mbps == prof.uplink_mbps


def test_with_network_rejects_non_positive_uplink(prof):
    with pytest.raises(ValueError, match="bandwidth"):
        prof.with_network(uplink_mbps=0.0)


def test_repo_profiles_exist():
    names = {p.name for p in PROFILE_FILES}
    assert {"jetson_orin_lte.yaml", "phone_wifi.yaml"} <= names


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.name)
def test_repo_profiles_load(path):
    d = yaml.safe_load(path.read_text())
    p = DeploymentProfile.from_dict(d)
    assert p.name == d["name"]
    assert p.uplink_mbps > 0 and p.downlink_mbps > 0 and p.rtt_s >= 0
    lat, en = p.cost(["edge", "cloud"], 0.02, 5000)
    assert np.all(np.isfinite(lat)) and np.all(lat > 0)
    assert np.all(np.isfinite(en)) and np.all(en > 0)
    # cloud latency is at least rtt + upload
    assert lat[1] >= p.rtt_s + 5000 * 8 / (p.uplink_mbps * 1e6)


def test_jetson_profile_cloud_cost_by_hand():
    p = DeploymentProfile.from_dict(yaml.safe_load((REPO / "configs/profiles/jetson_orin_lte.yaml").read_text()))
    # uplink 10 Mbit/s: 2500 bytes -> 0.002 s; reply 512 B at 50 Mbit/s -> 4096 / 5e7 = 8.192e-5 s
    lat, en = p.cost("cloud", 0.01, 2500)
    expected_lat = 0.05 + 0.002 + 8.192e-5 + 0.01
    assert float(lat) == pytest.approx(expected_lat)
    assert float(en) == pytest.approx(2.0 * 0.002 + 3.0 * (expected_lat - 0.002))
