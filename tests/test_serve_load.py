"""Load (500 requests from 32 concurrent clients: none lost, no duplicate or torn log row) and bandwidth
(the cloud slowed in proportion to the bytes it receives: the estimate converges, decisions move to the
edge as the router's own rule predicts)."""

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from chat_server import ChatServer, running
from router_training.runtime import Router
from router_training.serve import decision_log
from serve_helpers import (COLOURS, EDGE_ON_PROFILE, Served, cached_artifact, endpoints, gateway, messages, metric,
                           openai_client, solid)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return cached_artifact(tmp_path_factory)


def test_500_requests_from_32_clients_none_lost_none_duplicated(artifact, tmp_path):
    n, clients = 500, 32
    colours = [list(COLOURS)[i % len(COLOURS)] for i in range(n)]
    images = {c: solid(c) for c in COLOURS}
    log_path = tmp_path / "decisions.jsonl"
    with running(ChatServer("edge")) as edge, running(ChatServer("cloud")) as cloud:
        spec = endpoints(edge.base_url, cloud.base_url, decision_log={"path": str(log_path)},
                         network={"uplink_mbps": 10.0, "rtt_s": 0.05})
        with Served(gateway(artifact, spec)) as g:
            client = openai_client(g.base_url)

            def one(i):
                stream = i % 5 == 0
                raw = client.chat.completions.with_raw_response.create(
                    model="router", messages=messages(f"q{i}?", images[colours[i]]), stream=stream)
                if stream:
                    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
                else:
                    text = raw.parse().choices[0].message.content
                return i, text, raw.headers["x-router-request-id"], raw.headers["x-router-model"]

            with ThreadPoolExecutor(clients) as pool:
                replies = list(pool.map(one, range(n)))
            text = httpx.get(g.base_url[:-3] + "/metrics").text
    assert [r[1] for r in replies] == colours  # every request answered, by the right rule
    ids = [r[2] for r in replies]
    assert len(set(ids)) == n
    rows = decision_log.read(log_path)  # raises on a torn line
    assert len(rows) == n and len(log_path.read_text().splitlines()) == n
    assert Counter(r["request_id"] for r in rows) == Counter(ids)  # no lost or duplicated row
    by_id = {r["request_id"]: r for r in rows}
    for i, answer, rid, model in replies:
        row = by_id[rid]
        assert (row["question"], row["answer"], row["model"], row["status"]) == (f"q{i}?", answer, model, 200)
        assert model == ("edge-small" if colours[i] in EDGE_ON_PROFILE else "cloud")
    served = Counter(r["model"] for r in rows)
    assert served["edge-small"] == edge.answered() and served["cloud"] == cloud.answered()
    assert served["edge-small"] + served["cloud"] == n
    for m, tier in (("edge-small", "edge"), ("cloud", "cloud")):
        assert metric(text, "router_requests_total", model=m, tier=tier, route="router") == served[m]
    assert sum(r["stream"] for r in rows) == n // 5 and not any(r["error"] for r in rows)
    assert metric(text, "router_in_flight") == 0
    print(f"load: {n} requests, {clients} clients: {n} answered, {len(rows)} log rows, {len(set(ids))} unique ids, "
          f"edge {served['edge-small']}, cloud {served['cloud']}")


def noisy_red(side: int, seed: int) -> bytes:
    return solid("red", (side, side), noise=40, seed=seed)


def test_bandwidth_estimate_converges_and_decisions_move_to_the_edge(artifact, tmp_path):
    """The cloud sleeps 20 ms + 8 bits per body byte / 1 Mbit/s: an uplink of 1 Mbit/s behind a 20 ms round
    trip. Before any cloud call the gateway decides with the profile (10 Mbit/s): every red image goes to the
    cloud. Routed traffic then teaches the estimator the real uplink (within 25% after 3 to 10 rounds); with it the large images go to the edge
    (the grid's threshold below 5 Mbit/s and their upload time), the small ones stay on the cloud and keep the
    estimate fresh, exactly as ``Router.decide`` with the estimate and each request's payload predicts."""
    uplink = 1.0
    sides = [48, 64, 96, 128, 144, 160]
    with running(ChatServer("edge")) as edge, running(ChatServer("cloud")) as cloud:
        cloud.base_delay_s, cloud.seconds_per_byte = 0.02, 8 / (uplink * 1e6)
        spec = endpoints(edge.base_url, cloud.base_url, decision_log={"path": str(tmp_path / "d.jsonl")},
                         network={"half_life": 8, "min_samples": 6})
        spec["models"]["cloud"]["timeout_s"] = 5.0
        gw = gateway(artifact, spec)
        with Served(gw) as g:
            client = openai_client(g.base_url)

            def ask(side_seed):
                side, seed = side_seed
                raw = client.chat.completions.with_raw_response.create(
                    model="router", messages=messages("colour?", noisy_red(side, seed)))
                h = raw.headers
                return side, h["x-router-model"], h["x-router-network"], float(h["x-router-uplink-mbps"]), \
                    float(h["x-router-rtt-s"]), int(h["x-router-payload-bytes"]), json.loads(h["x-router-p-correct"])

            probe = [(s, 100 + s) for s in sides]
            with ThreadPoolExecutor(3) as pool:
                first = list(pool.map(ask, probe))
                assert [m for _, m, *_ in first] == ["cloud"] * len(sides)  # the profile: all to the cloud
                # routed traffic: each round's cloud calls feed the estimate; at least 3 rounds, more while it
                # is off (a stalled call on a shared 2-core machine weighs until about half_life calls pass)
                for round_ in range(10):
                    list(pool.map(ask, [(s, 10 * round_ + k) for k, s in enumerate(sides)]))
                    est = gw.estimator.estimate()
                    if round_ >= 2 and est is not None and est.fitted and abs(est.uplink_mbps / uplink - 1) < 0.25:
                        break
                last = list(pool.map(ask, probe))
            text = httpx.get(g.base_url[:-3] + "/metrics").text
            final = gw.estimator.estimate()
    # the test server's own work per byte (JSON, base64, PNG decoding) reads as a little less bandwidth
    assert est is not None and est.fitted
    assert est.uplink_mbps == pytest.approx(uplink, rel=0.25)
    assert 0.0 <= est.rtt_s < 0.05
    assert metric(text, "router_network_uplink_mbps") == pytest.approx(final.uplink_mbps, rel=1e-9)
    assert metric(text, "router_network_source", source="estimate") == 1
    moved = [m for _, m, *_ in last]
    assert moved.count("edge-small") >= 2 and moved[0] == "cloud"  # large images to the edge, small stay
    # the gateway decided as the router's rule does with the estimate and each request's own payload
    router = Router.load(artifact)
    for side, model, source, up, rtt, payload, p in last:
        assert source == "estimate"
        probs = np.array([[p["edge-small"], p["cloud"]]])
        k = router.decide(probs, uplink_mbps=up, rtt_s=rtt, payload_bytes=payload)[0]
        assert router.models[k] == model
    print("bandwidth: estimate %.2f Mbit/s (true %.1f), rtt %.3f s after %d rounds; probe decisions %s -> %s" % (
        est.uplink_mbps, uplink, est.rtt_s, round_ + 1, [m for _, m, *_ in first], moved))
