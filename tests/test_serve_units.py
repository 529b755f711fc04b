"""The gateway's parts on their own: endpoints.yaml, request parsing and limits, the network estimator,
the metrics text, the decision log under concurrency (threads and processes) and its replay, and the
runtime's per-request payload and network-grid thresholds."""

import base64
import json
import math
import multiprocessing
import struct
import threading

import numpy as np
import pytest
from PIL import Image

from router_training.outcomes import read_replay
from router_training.runtime import Router
from router_training.serve import decision_log
from router_training.serve.config import Limits, LogConfig, ServeConfig
from router_training.serve.network import NetworkEstimator
from router_training.serve.prom import Metrics
from router_training.serve.requests import RequestError, decode_base64, image_source, open_image, parse_body
from serve_helpers import cached_artifact, solid

URL = "http://127.0.0.1:8000/v1"


# -- endpoints.yaml ---------------------------------------------------------------------------------------

def test_endpoints_file_is_validated_with_clear_messages(tmp_path, monkeypatch):
    path = tmp_path / "endpoints.yaml"
    path.write_text("models:\n  cloud: {base_url: 'http://127.0.0.1:8000/v1/', model: qwen, api_key_env: K}\n"
                    "  edge: {backend: reference, options: {weights: ckpt/edge.safetensors}}\n"
                    "network: {uplink_mbps: 5}\ndecision_log: {path: logs/d.jsonl}\n")
    monkeypatch.chdir(tmp_path)
    cfg = ServeConfig.load(path)
    assert cfg.models["cloud"].base_url == "http://127.0.0.1:8000/v1" and not cfg.models["cloud"].in_process
    assert cfg.models["edge"].options["weights"] == str(tmp_path / "ckpt" / "edge.safetensors")
    assert cfg.network.uplink_mbps == 5 and cfg.decision_log.path == str(tmp_path / "logs" / "d.jsonl")
    assert cfg.server.host == "127.0.0.1" and cfg.limits.max_image_pixels == 40_000_000
    cfg.check_models(["edge", "cloud"])
    with pytest.raises(ValueError, match=r"no endpoint for \['other'\].*\['edge'\] are not models"):
        cfg.check_models(["cloud", "other"])
    bad = [({"models": {}}, "expected a mapping"),
           ({"models": {"m": {"base_url": URL, "backend": "reference"}}}, "not both or neither"),
           ({"models": {"m": {}}}, "not both or neither"),
           ({"models": {"m": {"base_url": "ftp://x/v1"}}}, "base_url must be http"),
           ({"models": {"m": {"base_url": "http://u:p@h/v1"}}}, "credentials"),
           ({"models": {"m": {"base_url": URL, "timeout_s": 0}}}, "timeout_s must be"),
           ({"models": {"m": {"base_url": URL, "max_retries": 1.5}}}, "max_retries must be an integer"),
           ({"models": {"m": {"base_url": URL, "colour": 1}}}, r"unknown keys \['colour'\]"),
           ({"models": {"m": {"base_url": URL}}, "limits": {"max_body_bytes": -1}}, "max_body_bytes"),
           ({"models": {"m": {"base_url": URL}}, "network": {"uplink_mbps": 0}}, "uplink_mbps must be"),
           ({"models": {"m": {"base_url": URL}}, "routing": {"escalate_below": 2}}, "escalate_below"),
           ({"models": {"m": {"base_url": URL}}, "decision_log": {"shadow_fraction": 1.5}}, "shadow_fraction"),
           ({"models": {"m": {"base_url": URL}}, "logging": {}}, r"unknown keys \['logging'\]")]
    for d, msg in bad:
        with pytest.raises(ValueError, match=msg):
            ServeConfig.from_dict(d)


# -- requests ---------------------------------------------------------------------------------------------

def body(messages, **kw):
    return json.dumps({"model": "router", "messages": messages, **kw}).encode()


def test_the_router_reads_the_first_image_and_the_last_user_text():
    img = "data:image/png;base64," + base64.b64encode(solid("red")).decode()
    raw = body([{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": img}},
                                             {"type": "text", "text": "first?"}]},
                {"role": "assistant", "content": "red"},
                {"role": "user", "content": [{"type": "text", "text": "and "}, {"type": "text", "text": "now?"},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}],
               stream=True)
    got = parse_body(raw, Limits())
    assert (got.question, got.image_url, got.stream, got.model, got.payload_bytes) == ("and now?", img, True,
                                                                                       "router", len(raw))
    assert parse_body(body([{"role": "user", "content": "plain"}]), Limits()).question == "plain"
    assert parse_body(body([{"role": "user", "content": "x"}]), Limits()).image_url is None
    kind, data = image_source(img)
    assert kind == "data" and decode_base64(data, Limits()) == solid("red")
    assert image_source("https://example.org/x.png") == ("remote", "https://example.org/x.png")
    wrapped = "\n".join(data[i:i + 76] for i in range(0, len(data), 76)).rstrip("=")  # line-wrapped, unpadded
    assert decode_base64(wrapped, Limits()) == solid("red")


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose header claims width x height pixels (a decompression bomb's shape, a few bytes long)."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"," + struct.pack("<HHHHB", 0, 0, width,
                                                                                             height, 0)
            + b"\x02\x02\x44\x01\x00;")


@pytest.mark.parametrize("data, status, code", [
    (gif_header(3000, 3000), 413, "image_too_many_pixels"),  # over our 1 Mpx limit, read from the header
    (gif_header(60000, 60000), 413, "image_too_many_pixels"),  # over Pillow's own bomb limit too
    (b"\x89PNG\r\n\x1a\n garbage", 400, "invalid_image"),
    (solid("red")[:60], 400, "invalid_image"),  # truncated
])
def test_images_are_refused_before_decoding_when_too_large_or_broken(data, status, code):
    with pytest.raises(RequestError) as e:
        open_image(data, Limits(max_image_pixels=1_000_000))
    assert (e.value.status, e.value.code) == (status, code)
    assert e.value.body()["error"]["code"] == code


def test_request_errors_are_openai_shaped():
    for raw, code in ((b"[1]", "invalid_json"), (b"\xff", "invalid_json"), (body([]), "invalid_messages"),
                      (json.dumps({"model": 3, "messages": [{"role": "user", "content": "x"}]}).encode(),
                       "invalid_model"), (b"x" * 11, "body_too_large")):
        with pytest.raises(RequestError) as e:
            parse_body(raw, Limits(max_body_bytes=10) if code == "body_too_large" else Limits())
        assert e.value.code == code and set(e.value.body()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(RequestError, match="over the limit"):
        decode_base64("A" * 2000, Limits(max_image_bytes=1000))
    with pytest.raises(RequestError, match="base64 data URL"):
        image_source("file:///etc/passwd")


# -- network estimator ------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_estimator_recovers_uplink_and_rtt_and_follows_a_change():
    rng = np.random.default_rng(0)
    est = NetworkEstimator(10.0, half_life=16, min_samples=8)

    def calls(n, uplink, rtt, fixed=0.004):
        for b in rng.integers(5_000, 200_000, n):
            est.add(b, rtt + b * 8 / (uplink * 1e6) + fixed + rng.normal(0, 0.002), fixed_s=fixed)

    calls(7, 3.0, 0.04)
    assert est.estimate() is None  # fewer than min_samples
    calls(40, 3.0, 0.04)
    e = est.estimate()
    assert e.fitted and e.uplink_mbps == pytest.approx(3.0, rel=0.05) and e.rtt_s == pytest.approx(0.04, abs=0.005)
    calls(120, 0.5, 0.08)  # the network gets worse: the moving estimate follows within a few half-lives
    e = est.estimate()
    assert e.uplink_mbps == pytest.approx(0.5, rel=0.05) and e.rtt_s == pytest.approx(0.08, abs=0.02)
    assert e.samples == 167


def test_estimator_keeps_the_prior_uplink_without_size_spread_and_forgets_old_estimates():
    clock = Clock()
    est = NetworkEstimator(8.0, min_samples=4, max_age_s=60, clock=clock)
    for _ in range(10):
        est.add(20_000, 0.05 + 20_000 * 8 / 8e6)  # every request the same size: the slope is unknowable
    e = est.estimate()
    assert not e.fitted and e.uplink_mbps == 8.0 and e.rtt_s == pytest.approx(0.05)
    clock.t = 61.0
    assert est.estimate() is None  # stale: the decision uses the prior again
    est.add(20_000, 0.2)
    assert est.estimate() is None  # the stale moments were dropped, one new call is not enough
    with pytest.raises(ValueError):
        NetworkEstimator(0.0)


# -- metrics ----------------------------------------------------------------------------------------------

def test_metrics_render_prometheus_text():
    m = Metrics()
    m.inc("router_requests_total", model='we"ird\\', tier="edge", route="router")
    m.inc("router_requests_total", model='we"ird\\', tier="edge", route="router")
    for v in (0.0004, 0.003, 0.2):
        m.observe("router_decision_seconds", v)
    m.set("router_network_uplink_mbps", 2.5)
    text = m.render()
    assert 'router_requests_total{model="we\\"ird\\\\",route="router",tier="edge"} 2.0' in text
    assert 'router_decision_seconds_bucket{le="0.0005"} 1' in text and 'router_decision_seconds_bucket{le="0.005"} 2' in text
    assert 'router_decision_seconds_bucket{le="+Inf"} 3' in text and "router_decision_seconds_count 3" in text
    assert "router_network_uplink_mbps 2.5" in text and "# TYPE router_decision_seconds histogram" in text
    assert m.value("router_decision_seconds") == 3 and m.value("router_network_uplink_mbps") == 2.5


# -- decision log -----------------------------------------------------------------------------------------

def _append_rows(path: str, tag: str, n: int) -> None:
    log = decision_log.DecisionLog(LogConfig(path=path))
    for i in range(n):
        log.write({"request_id": f"{tag}-{i}", "sample_id": f"{tag}-{i}", "model": "cloud", "answer": "x" * 5000,
                   "confidence": math.nan, "score": None})
    log.close()


def test_decision_log_rows_never_tear_under_threads_and_processes(tmp_path):
    path = str(tmp_path / "log.jsonl")
    threads = [threading.Thread(target=_append_rows, args=(path, f"t{k}", 200)) for k in range(8)]
    procs = [multiprocessing.get_context("spawn").Process(target=_append_rows, args=(path, f"p{k}", 200))
             for k in range(2)]
    for w in threads + procs:
        w.start()
    for w in threads + procs:
        w.join(60)
    assert all(p.exitcode == 0 for p in procs)
    rows = decision_log.read(path)
    ids = [r["request_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 10 * 200
    assert all(r["answer"] == "x" * 5000 and r["confidence"] is None for r in rows)  # NaN is null in JSON
    with open(path, "a") as f:
        f.write('{"request_id": "torn"')
    with pytest.raises(ValueError, match="line 2001 is incomplete"):
        decision_log.read(path)


def test_decision_log_is_a_replay_file_and_exports_complete_requests(tmp_path):
    path = tmp_path / "d.jsonl"
    log = decision_log.DecisionLog(LogConfig(path=str(path), images=True))
    name = log.save_image("abc", solid("red"), "png")
    assert (tmp_path / "d-images" / "abc.png").read_bytes() == solid("red") and log.save_image("abc", b"", "png") == name
    rows = [{"request_id": "r1", "route": "router", "model": "cloud", "answer": "red", "confidence": 0.9},
            {"request_id": "r1", "route": "shadow", "model": "edge-small", "answer": "blue", "confidence": None},
            {"request_id": "r2", "route": "router", "model": "cloud", "answer": "green", "confidence": 0.8}]
    for r in rows:
        log.write({**r, "sample_id": r["request_id"], "error": "", "compute_s": 0.01, "payload_bytes": 100,
                   "image_file": name, "question": "colour?"})
    log.close()
    cloud = read_replay(path, model_column="model", model_value="cloud")  # what the replay backend reads
    assert cloud[["sample_id", "answer"]].values.tolist() == [["r1", "red"], ["r2", "green"]]
    assert cloud["confidence"].tolist() == [0.9, 0.8] and cloud["payload_bytes"].tolist() == [100.0, 100.0]
    summary = decision_log.export_training(path, tmp_path / "train", ["edge-small", "cloud"])
    assert summary == {"requests": 1, "rows": 2, "skipped": 1}
    q = [json.loads(x) for x in (tmp_path / "train" / "questions.jsonl").read_text().splitlines()]
    o = [json.loads(x) for x in (tmp_path / "train" / "outcomes.jsonl").read_text().splitlines()]
    assert q == [{"sample_id": "r1", "image_file": "abc.png", "question": "colour?"}]
    assert [(x["model"], x["answer"]) for x in o] == [("edge-small", "blue"), ("cloud", "red")]
    with pytest.raises(ValueError, match="shadow_fraction"):
        decision_log.export_training(path, tmp_path / "t2", ["edge-small", "cloud", "third"])


# -- runtime: this request's payload and the network grid ---------------------------------------------------

def test_router_uses_the_request_payload_and_the_grid_thresholds(tmp_path_factory):
    router = Router.load(cached_artifact(tmp_path_factory))
    probs = np.array([[0.30, 0.95], [0.97, 0.95]])  # edge-small below / above its profile threshold 0.6
    assert router.decide(probs).tolist() == [1, 0]
    # grid: below 5 Mbit/s the edge model is eligible for every query (threshold 0)
    assert router.decision_at(1.5).thresholds == (0.0, 0.0) and router.decision_at(5.0).thresholds == (0.6, 0.0)
    assert router.decision_at(0.1).thresholds == (0.0, 0.0)  # below the grid: its slowest entry
    assert router.decision_at(500).thresholds == (0.6, 0.0)
    small, large = 2_000, 400_000
    assert router.decide(probs, uplink_mbps=2.0, payload_bytes=small).tolist() == [1, 0]
    assert router.decide(probs, uplink_mbps=2.0, payload_bytes=large).tolist() == [0, 0]  # 1.6 s of upload
    assert router.decide(probs, uplink_mbps=20.0, payload_bytes=large).tolist() == [1, 0]  # eligible no more
    per_query = router.decide(probs[[0, 0]], uplink_mbps=2.0, payload_bytes=np.array([small, large]))
    assert per_query.tolist() == [1, 0]
    d = router.route(Image.new("RGB", (64, 64), "red"), "what colour?", uplink_mbps=2.0, payload_bytes=large)
    assert d.model == "edge-small"


def test_a_profile_request_size_replaces_collected_payloads_but_not_a_requests_own(tmp_path_factory):
    import yaml

    from router_training.core.decision import CostSpec, ModelCost
    from router_training.core.profile import DeploymentProfile

    camera = DeploymentProfile.from_dict(yaml.safe_load(open("configs/profiles/jetson_orin_lte_camera.yaml")))
    assert camera.request_bytes == 300_000 and camera.to_dict()["request_bytes"] == 300_000
    assert "request_bytes" not in DeploymentProfile.from_dict({**camera.to_dict(), "request_bytes": None}).to_dict()
    lat, _ = camera.cost(["edge", "cloud"], [0.01, 0.2], [0.0, 2_000.0])
    assert lat[1] == pytest.approx(0.05 + 300_000 * 8 / 10e6 + 512 * 8 / 50e6 + 0.2)
    cost = CostSpec((ModelCost("e", "edge", 0.01, 0.0), ModelCost("c", "cloud", 0.2, 2_000.0)), camera, 1.0, 1.0)
    assert cost.costs()[0][1] == pytest.approx(lat[1])
    own = cost.costs(payload_bytes=20_000)[0][1]  # the gateway's request: its real size
    assert own == pytest.approx(0.05 + 20_000 * 8 / 10e6 + 512 * 8 / 50e6 + 0.2)
    with pytest.raises(ValueError, match="request_bytes"):
        DeploymentProfile.from_dict({**camera.to_dict(), "request_bytes": -1})
