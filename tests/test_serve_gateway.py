"""The routing gateway behind a real uvicorn server, in front of two real OpenAI-compatible servers on
loopback (edge and cloud), driven by the official ``openai`` client."""

import json
import math

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from chat_server import LOGPROBS, ChatServer, running
from router_training.core.features import FEATURE_VERSION
from router_training.serve import decision_log
from serve_helpers import (COLOURS, EDGE_ON_PROFILE, Served, cached_artifact, endpoints, gateway, messages, metric,
                           openai_client, solid)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return cached_artifact(tmp_path_factory)


@pytest.fixture
def servers():
    with running(ChatServer("edge")) as edge, running(ChatServer("cloud")) as cloud:
        yield edge, cloud


def serve(artifact, edge, cloud, tmp_path, **sections):
    sections.setdefault("decision_log", {"path": str(tmp_path / "decisions.jsonl")})
    sections.setdefault("network", {"uplink_mbps": 10.0, "rtt_s": 0.05})  # fixed: decisions as designed
    return Served(gateway(artifact, endpoints(edge.base_url, cloud.base_url, **sections)))


def expected_model(colour):
    return "edge-small" if colour in EDGE_ON_PROFILE else "cloud"


def test_routes_each_request_and_says_so_in_headers(artifact, servers, tmp_path):
    edge, cloud = servers
    with serve(artifact, edge, cloud, tmp_path) as g:
        client = openai_client(g.base_url)
        ids = {}
        for colour in COLOURS:
            raw = client.chat.completions.with_raw_response.create(
                model="router", messages=messages("what colour is it?", solid(colour)), max_tokens=4)
            done = raw.parse()
            h = raw.headers
            assert done.choices[0].message.content == colour  # the upstream's answer, passed through
            assert h["x-router-model"] == h["x-router-decision"] == expected_model(colour)
            assert h["x-router-tier"] == ("edge" if colour in EDGE_ON_PROFILE else "cloud")
            assert (h["x-router-route"], h["x-router-fallback"], h["x-router-network"]) == ("router", "none", "config")
            p = json.loads(h["x-router-p-correct"])
            brightness = np.asarray(Image.new("RGB", (1, 1), COLOURS[colour]).convert("L"))[0, 0] / 255  # ITU-R 601
            assert p["edge-small"] == pytest.approx(1 / (1 + math.exp(-8 * (brightness - 0.5))), abs=2e-3)
            assert p["cloud"] == pytest.approx(0.95, abs=1e-4)
            assert 0 < float(h["x-router-decision-ms"]) < 1000
            assert float(h["x-router-uplink-mbps"]) == 10 and float(h["x-router-rtt-s"]) == 0.05
            ids[h["x-router-request-id"]] = colour
            assert done.id.startswith("chatcmpl-" + ("edge" if colour in EDGE_ON_PROFILE else "cloud"))
    # each upstream got its own model name and the client's parameters, and only its share of requests
    assert {r["model"] for r in edge.requests} == {"edge-vlm"} and {r["model"] for r in cloud.requests} == {"cloud-vlm"}
    assert len(edge.requests) == len(EDGE_ON_PROFILE) and len(cloud.requests) == len(COLOURS) - len(EDGE_ON_PROFILE)
    assert all(r["question"] == "what colour is it?" for r in edge.requests + cloud.requests)
    rows = decision_log.read(tmp_path / "decisions.jsonl")
    assert {r["request_id"]: r["answer"] for r in rows} == ids
    for r in rows:
        assert r["sample_id"] == r["request_id"] and r["split"] == "gateway" and r["status"] == 200
        assert r["model"] == expected_model(r["answer"]) and r["error"] == "" and r["fallback"] == ""
        assert r["payload_bytes"] > 0 and r["compute_s"] > 0 and r["latency_s"] >= r["compute_s"]
        assert set(r["p_correct"]) == {"edge-small", "cloud"} and r["features_version"] == FEATURE_VERSION
        assert r["question"] == "what colour is it?" and "image_file" not in r


def test_streaming_passes_the_upstream_events_through(artifact, servers, tmp_path):
    edge, cloud = servers
    with serve(artifact, edge, cloud, tmp_path) as g:
        client = openai_client(g.base_url)
        for colour in ("white", "blue"):
            raw = client.chat.completions.with_raw_response.create(
                model="router", messages=messages("colour?", solid(colour)), stream=True, logprobs=True,
                stream_options={"include_usage": True})
            assert raw.headers["x-router-model"] == expected_model(colour)
            assert raw.headers["content-type"].startswith("text/event-stream")
            chunks = list(raw.parse())
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == colour
            assert chunks[-1].usage.total_tokens == 12  # the upstream's usage chunk, untouched
            assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith(
                "chatcmpl-" + ("edge" if colour in EDGE_ON_PROFILE else "cloud"))
    assert [r["stream"] for r in edge.requests + cloud.requests] == [True, True]
    rows = decision_log.read(tmp_path / "decisions.jsonl")
    assert [(r["answer"], r["stream"], r["status"], r["error"]) for r in rows] == [("white", True, 200, ""),
                                                                                  ("blue", True, 200, "")]
    assert rows[0]["confidence"] == pytest.approx(math.exp(sum(LOGPROBS) / 2))  # read from the streamed logprobs


def test_a_model_name_bypasses_the_router_and_unknown_names_are_404(artifact, servers, tmp_path):
    edge, cloud = servers
    with serve(artifact, edge, cloud, tmp_path) as g:
        client = openai_client(g.base_url)
        raw = client.chat.completions.with_raw_response.create(model="cloud", messages=messages("c?", solid("white")))
        assert raw.parse().choices[0].message.content == "white"
        assert (raw.headers["x-router-route"], raw.headers["x-router-model"]) == ("direct", "cloud")
        assert "x-router-p-correct" not in raw.headers
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="gpt-7", messages=messages("c?", solid("white")))
        assert e.value.body["code"] == "model_not_found" and "router" in e.value.body["message"]
        models = [m.id for m in client.models.list()]
        assert models == ["router", "edge-small", "cloud"]
        health = httpx.get(g.base_url[:-3] + "/health").json()
        assert health["status"] == "ok" and health["models"] == {"edge-small": "edge", "cloud": "cloud"}
        assert httpx.get(g.base_url + "/nothing").json()["error"]["code"] == "not_found"
    assert len(cloud.requests) == 1 and not edge.requests
    rows = decision_log.read(tmp_path / "decisions.jsonl")
    assert [(r["route"], r["status"], r["error"].split(":")[0]) for r in rows] == [
        ("direct", 200, ""), ("", 404, "model_not_found")]


def test_upstream_cookies_are_not_carried_into_other_requests(artifact, servers, tmp_path):
    """An upstream's Set-Cookie answers one user's request; a gateway that kept it (a shared cookie jar,
    as an httpx.AsyncClient has) would send it with every later user's request."""
    edge, cloud = servers
    cloud.reply_headers = {"Set-Cookie": "session=user-a; Path=/"}
    with serve(artifact, edge, cloud, tmp_path) as g:
        client = openai_client(g.base_url)
        for colour in ("white", "red", "blue"):
            raw = client.chat.completions.with_raw_response.create(model="cloud", messages=messages("c?", solid(colour)))
            assert raw.parse().choices[0].message.content == colour
    assert [r["status"] for r in cloud.requests] == [200, 200, 200]
    assert [r["cookie"] for r in cloud.requests] == [None, None, None]


def test_text_only_requests_go_to_the_always_eligible_cloud_model(artifact, servers, tmp_path):
    edge, cloud = servers
    with serve(artifact, edge, cloud, tmp_path) as g:
        raw = openai_client(g.base_url).chat.completions.with_raw_response.create(
            model="router", messages=[{"role": "user", "content": "hello?"}])
        assert raw.parse().choices[0].message.content == "no image"
        assert (raw.headers["x-router-route"], raw.headers["x-router-model"]) == ("no-image", "cloud")


def test_metrics_count_requests_per_model_and_tier(artifact, servers, tmp_path):
    edge, cloud = servers
    with serve(artifact, edge, cloud, tmp_path) as g:
        client = openai_client(g.base_url)
        for colour in ["white"] * 3 + ["red"] * 2:
            client.chat.completions.create(model="router", messages=messages("c?", solid(colour)))
        client.chat.completions.create(model="edge-small", messages=messages("c?", solid("red")))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="router", messages=[])
        text = httpx.get(g.base_url[:-3] + "/metrics").text
    assert metric(text, "router_requests_total", model="edge-small", tier="edge", route="router") == 3
    assert metric(text, "router_requests_total", model="cloud", tier="cloud", route="router") == 2
    assert metric(text, "router_requests_total", model="edge-small", tier="edge", route="direct") == 1
    assert metric(text, "router_request_errors_total", status="400") == 1
    assert metric(text, "router_decision_seconds_count") == 5
    assert metric(text, "router_network_uplink_mbps") == 10 and metric(text, "router_network_rtt_seconds") == 0.05
    assert metric(text, "router_network_source", source="config") == 1
    assert "# TYPE router_fallbacks_total counter" in text


def test_bearer_token_guards_everything_but_health(artifact, servers, tmp_path, monkeypatch):
    edge, cloud = servers
    monkeypatch.setenv("ROUTER_TEST_TOKEN", "tok-123")
    with serve(artifact, edge, cloud, tmp_path, server={"token_env": "ROUTER_TEST_TOKEN"}) as g:
        with pytest.raises(openai.AuthenticationError):
            openai_client(g.base_url, "wrong").chat.completions.create(model="router", messages=messages("c?", solid("red")))
        done = openai_client(g.base_url, "tok-123").chat.completions.create(
            model="router", messages=messages("c?", solid("red")))
        assert done.choices[0].message.content == "red"
        root = g.base_url[:-3]
        assert httpx.get(root + "/health").status_code == 200
        assert httpx.get(root + "/metrics").status_code == 401
        assert httpx.get(root + "/metrics", headers={"Authorization": "Bearer tok-123"}).status_code == 200
    assert len(cloud.requests) == 1
    assert all(r["auth"] is None for r in cloud.requests)  # the client's token is not forwarded


def test_limits_refuse_large_bodies_images_and_decompression_bombs(artifact, servers, tmp_path):
    edge, cloud = servers
    limits = {"max_body_bytes": 300_000, "max_image_bytes": 100_000, "max_image_pixels": 1_000_000}
    url = None
    with serve(artifact, edge, cloud, tmp_path, limits=limits) as g:
        url = g.base_url + "/chat/completions"

        def post(body, **kw):
            return httpx.post(url, content=body if isinstance(body, bytes) else json.dumps(body), timeout=30, **kw)

        big = solid("red", (240, 240), noise=120)  # ~ 120 kB PNG
        bomb = solid("black", (2000, 2000))  # 4 Mpx, a few kB of PNG
        assert len(bomb) < 100_000 < len(big) < 300_000 * 3 // 4
        cases = [
            (post(b"x" * 400_000), 413, "body_too_large"),
            (post({"model": "router", "messages": messages("c?", big)}), 413, "image_too_large"),
            (post({"model": "router", "messages": messages("c?", bomb)}), 413, "image_too_many_pixels"),
            (post({"model": "router", "messages": messages("c?", b"not an image at all")}), 400, "invalid_image"),
            (post(b"{not json"), 400, "invalid_json"),
            (post({"model": "router", "messages": "hi"}), 400, "invalid_messages"),
            (post({"model": "router", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]}]}), 400, "invalid_image"),
            (post({"model": "router", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]}), 400,
             "remote_image_refused"),
            (post({"model": "router", "messages": messages("colour?\x1b[2J", solid("red"))}), 400, "invalid_question"),
        ]
        for resp, status, code in cases:
            assert resp.status_code == status, resp.text
            err = resp.json()["error"]
            assert err["code"] == code and err["message"] and resp.headers["x-router-request-id"]
        assert post({"model": "router", "messages": messages("c?", solid("red"))}).status_code == 200
    assert len(cloud.requests) == 1 and not edge.requests  # nothing refused reached an upstream
    rows = decision_log.read(tmp_path / "decisions.jsonl")
    assert [r["status"] for r in rows] == [413, 413, 413, 400, 400, 400, 400, 400, 400, 200]


def test_remote_images_when_allowed(artifact, servers, tmp_path):
    edge, cloud = servers
    edge.files = {"white.png": solid("white"), "big.png": solid("red", (200, 200), noise=120)}
    images = {"allow_remote": True, "remote_hosts": ["127.0.0.1"], "remote_max_bytes": 50_000}
    with serve(artifact, edge, cloud, tmp_path, images=images) as g:
        def ask(url):
            return httpx.post(g.base_url + "/chat/completions", timeout=30, json={"model": "router", "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "c?"}]}]})

        files = edge.base_url[:-3] + "/files/"
        ok = ask(files + "white.png")
        assert ok.status_code == 200 and ok.headers["x-router-model"] == "edge-small"
        assert ask(files + "big.png").json()["error"]["code"] == "image_too_large"
        assert ask(files + "missing.png").json()["error"]["code"] == "image_fetch_failed"
        assert ask(files.replace("127.0.0.1", "localhost") + "white.png").json()["error"]["code"] == \
            "remote_image_refused"


def test_upstream_api_keys_are_sent_but_never_logged_or_echoed(artifact, servers, tmp_path, monkeypatch):
    edge, cloud = servers
    secret = "sk-gateway-5ecret"
    monkeypatch.setenv("CLOUD_TEST_KEY", secret)
    cloud.force = "FAIL500"  # the cloud's 500 body echoes the Authorization header it received
    spec = endpoints(edge.base_url, cloud.base_url, decision_log={"path": str(tmp_path / "d.jsonl")},
                     network={"uplink_mbps": 10.0, "rtt_s": 0.05})
    spec["models"]["cloud"]["api_key_env"] = "CLOUD_TEST_KEY"
    with Served(gateway(artifact, spec)) as g:
        client = openai_client(g.base_url)
        raw = client.chat.completions.with_raw_response.create(model="router", messages=messages("c?", solid("red")))
        assert raw.headers["x-router-fallback"] == "cloud-error" and raw.parse().choices[0].message.content == "red"
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="cloud", messages=messages("c?", solid("red")))
        assert e.value.status_code == 502 and "Bearer ***" in e.value.body["message"]
        texts = [raw.text, str(dict(raw.headers)), e.value.response.text, httpx.get(g.base_url[:-3] + "/metrics").text]
    assert {r["auth"] for r in cloud.requests} == {f"Bearer {secret}"}
    assert all(r["auth"] is None for r in edge.requests)
    log_text = (tmp_path / "d.jsonl").read_text()
    assert "Bearer ***" in log_text
    for t in (*texts, log_text):
        assert secret not in t


def test_low_edge_confidence_escalates_to_the_cloud(artifact, servers, tmp_path):
    edge, cloud = servers
    with serve(artifact, edge, cloud, tmp_path, routing={"escalate_below": 0.5}) as g:
        client = openai_client(g.base_url)
        sure = client.chat.completions.with_raw_response.create(model="router", messages=messages("c?", solid("white")))
        assert (sure.headers["x-router-model"], sure.headers["x-router-fallback"]) == ("edge-small", "none")
        assert sure.parse().choices[0].logprobs is None  # asked for the escalation only: not returned
        edge.force = "LOWCONF"
        unsure = client.chat.completions.with_raw_response.create(model="router",
                                                                  messages=messages("c?", solid("white")))
        assert (unsure.headers["x-router-model"], unsure.headers["x-router-fallback"]) == ("cloud", "low-confidence")
        assert unsure.headers["x-router-decision"] == "edge-small"
        assert unsure.parse().choices[0].message.content == "white"
    assert [r["logprobs"] for r in edge.requests] == [True, True] and cloud.by_question("c?")[0]["logprobs"] is None
    rows = decision_log.read(tmp_path / "decisions.jsonl")
    assert [(r["model"], r["fallback"]) for r in rows] == [("edge-small", ""), ("cloud", "low-confidence")]
    assert rows[1]["attempts"] == [{"model": "edge-small", "error": "low_confidence: 0.0498"}]


def test_a_request_header_overrides_the_network_and_moves_the_decision(artifact, servers, tmp_path):
    edge, cloud = servers
    big = solid("red", (160, 160), noise=40)  # a payload whose upload time matters at 1 Mbit/s
    with serve(artifact, edge, cloud, tmp_path, network={}) as g:
        client = openai_client(g.base_url)

        def route(uplink):
            raw = client.chat.completions.with_raw_response.create(
                model="router", messages=messages("c?", big), extra_headers={"x-router-uplink-mbps": str(uplink),
                                                                             "x-router-rtt-s": "0.05"})
            assert raw.headers["x-router-network"] == "header"
            return raw.headers["x-router-model"]

        assert route(50) == "cloud"
        assert route(1) == "edge-small"  # grid threshold 0 below 5 Mbit/s, and the upload dominates
        bad = httpx.post(g.base_url + "/chat/completions", headers={"x-router-uplink-mbps": "0"},
                         json={"model": "router", "messages": messages("c?", big)})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_header"
