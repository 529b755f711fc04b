"""Faults: every request gets an answer or a clear error object, the fallback flags are right, and the
counts agree between the replies, the upstreams, the metrics and the decision log."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from chat_server import ChatServer, running
from router_training.serve import decision_log
from serve_helpers import (EDGE_ON_PROFILE, Served, cached_artifact, endpoints, free_port, gateway, messages, metric,
                           openai_client, solid)

CLOUD_COLOURS = ("red", "green", "blue", "black")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return cached_artifact(tmp_path_factory)


def serve(artifact, edge_url, cloud_url, tmp_path, **sections):
    sections.setdefault("decision_log", {"path": str(tmp_path / "decisions.jsonl")})
    sections.setdefault("network", {"uplink_mbps": 10.0, "rtt_s": 0.05})
    return Served(gateway(artifact, endpoints(edge_url, cloud_url, **sections)))


def ask_all(base_url, colours, stream=False, workers=4):
    """(answer text, headers) per colour, sent concurrently through the official client."""
    client = openai_client(base_url)

    def one(colour):
        if stream:
            raw = client.chat.completions.with_raw_response.create(model="router", stream=True,
                                                                   messages=messages("c?", solid(colour)))
            return "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices), raw.headers
        raw = client.chat.completions.with_raw_response.create(model="router", messages=messages("c?", solid(colour)))
        return raw.parse().choices[0].message.content, raw.headers

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, colours))


def check_log(tmp_path, replies, metrics_text):
    """The log holds exactly the replies' requests, and its fallback counts are the metrics'."""
    rows = decision_log.read(tmp_path / "decisions.jsonl")
    assert sorted(r["request_id"] for r in rows) == sorted(h["x-router-request-id"] for _, h in replies)
    for reason in ("cloud-error", "edge-error"):
        assert metric(metrics_text, "router_fallbacks_total", reason=reason) == sum(r["fallback"] == reason for r in rows)
    return {r["request_id"]: r for r in rows}


@pytest.mark.parametrize("stream", [False, True])
def test_cloud_down_from_the_start_edge_answers_flagged(artifact, tmp_path, stream):
    with running(ChatServer("edge")) as edge:
        with serve(artifact, edge.base_url, f"http://127.0.0.1:{free_port()}/v1", tmp_path) as g:
            colours = list(CLOUD_COLOURS) + list(EDGE_ON_PROFILE)
            replies = ask_all(g.base_url, colours, stream=stream)
            text = httpx.get(g.base_url[:-3] + "/metrics").text
    for colour, (answer, h) in zip(colours, replies):
        assert answer == colour and h["x-router-model"] == "edge-small"
        assert h["x-router-fallback"] == ("cloud-error" if colour in CLOUD_COLOURS else "none")
        assert h["x-router-decision"] == ("cloud" if colour in CLOUD_COLOURS else "edge-small")
    rows = check_log(tmp_path, replies, text)
    assert sum(r["fallback"] == "cloud-error" for r in rows.values()) == len(CLOUD_COLOURS)
    failed = [r for r in rows.values() if r["fallback"]]
    assert all(r["attempts"][0]["model"] == "cloud" and r["attempts"][0]["error"].startswith("connection: ")
               and "after 2 attempts" in r["attempts"][0]["error"] for r in failed)
    assert metric(text, "router_upstream_failures_total", model="cloud", kind="connection") == len(CLOUD_COLOURS)
    assert edge.answered() == len(colours)


def test_cloud_killed_mid_run(artifact, tmp_path):
    with running(ChatServer("edge")) as edge, running(ChatServer("cloud")) as cloud:
        with serve(artifact, edge.base_url, cloud.base_url, tmp_path) as g:
            before = ask_all(g.base_url, ["red", "blue"] * 3)  # kept-alive connections to the cloud now open
            cloud.kill()
            after = ask_all(g.base_url, ["red", "blue"] * 3)
            text = httpx.get(g.base_url[:-3] + "/metrics").text
    assert [(a, h["x-router-model"], h["x-router-fallback"]) for a, h in before] == [
        (c, "cloud", "none") for c in ["red", "blue"] * 3]
    assert [(a, h["x-router-model"], h["x-router-fallback"]) for a, h in after] == [
        (c, "edge-small", "cloud-error") for c in ["red", "blue"] * 3]
    rows = check_log(tmp_path, before + after, text)
    assert sum(r["model"] == "cloud" for r in rows.values()) == cloud.answered() == 6


def test_cloud_slower_than_its_timeout(artifact, tmp_path):
    with running(ChatServer("edge")) as edge, running(ChatServer("cloud")) as cloud:
        cloud.force, cloud.slow_s = "SLOW", 3.0
        spec = endpoints(edge.base_url, cloud.base_url, decision_log={"path": str(tmp_path / "decisions.jsonl")},
                         network={"uplink_mbps": 10.0, "rtt_s": 0.05})
        spec["models"]["cloud"].update(timeout_s=0.3, max_retries=1)
        with Served(gateway(artifact, spec)) as g:
            t0 = time.perf_counter()
            replies = ask_all(g.base_url, ["red", "green", "blue", "black"])
            wall = time.perf_counter() - t0
            text = httpx.get(g.base_url[:-3] + "/metrics").text
    assert [(a, h["x-router-model"], h["x-router-fallback"]) for a, h in replies] == [
        (c, "edge-small", "cloud-error") for c in ("red", "green", "blue", "black")]
    assert wall < 2.5  # two 0.3 s attempts and a back-off each, concurrently: not the cloud's 3 s
    rows = check_log(tmp_path, replies, text)
    assert all(r["attempts"][0]["error"].startswith("timeout: no reply within 0.3 s") for r in rows.values())
    assert len(cloud.requests) == 8  # two attempts per request


@pytest.mark.parametrize("force, kind, attempts", [("FAIL500", "http_500", 2), ("ALWAYS429", "http_429", 2),
                                                   ("BADJSON", "malformed", 1), ("NOCHOICES", "malformed", 1)])
def test_cloud_error_replies_fall_back_to_the_edge(artifact, tmp_path, force, kind, attempts):
    with running(ChatServer("edge")) as edge, running(ChatServer("cloud")) as cloud:
        cloud.force = force
        with serve(artifact, edge.base_url, cloud.base_url, tmp_path) as g:
            replies = ask_all(g.base_url, ["red", "white", "blue"])
            text = httpx.get(g.base_url[:-3] + "/metrics").text
    assert [(a, h["x-router-model"], h["x-router-fallback"]) for a, h in replies] == [
        ("red", "edge-small", "cloud-error"), ("white", "edge-small", "none"), ("blue", "edge-small", "cloud-error")]
    rows = check_log(tmp_path, replies, text)
    assert [r["attempts"][0]["error"].split(":")[0] for r in rows.values() if r["attempts"]] == [kind, kind]
    assert len(cloud.requests) == 2 * attempts  # 429 and 5xx retried once, malformed replies not
    assert metric(text, "router_upstream_failures_total", model="cloud", kind=kind) == 2


def test_edge_down_cloud_answers_flagged(artifact, tmp_path):
    with running(ChatServer("cloud")) as cloud:
        with serve(artifact, f"http://127.0.0.1:{free_port()}/v1", cloud.base_url, tmp_path) as g:
            replies = ask_all(g.base_url, ["white", "yellow", "red"])
            text = httpx.get(g.base_url[:-3] + "/metrics").text
    assert [(a, h["x-router-model"], h["x-router-fallback"]) for a, h in replies] == [
        ("white", "cloud", "edge-error"), ("yellow", "cloud", "edge-error"), ("red", "cloud", "none")]
    check_log(tmp_path, replies, text)
    assert metric(text, "router_fallbacks_total", reason="edge-error") == 2


def test_both_down_is_a_clear_502_error_object(artifact, tmp_path):
    with serve(artifact, f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1", tmp_path) as g:
        client = openai_client(g.base_url)
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as e:
                client.chat.completions.create(model="router", messages=messages("c?", solid("red")), stream=stream)
            assert e.value.status_code == 502
            assert e.value.body["code"] == "upstream_failed" and "cloud: connection" in e.value.body["message"]
            assert "edge-small: connection" in e.value.body["message"]
    rows = decision_log.read(tmp_path / "decisions.jsonl")
    assert [(r["status"], r["model"], r["fallback"], len(r["attempts"])) for r in rows] == [(502, "", "cloud-error", 2)] * 2


def test_a_stream_cut_midway_ends_with_an_error_event(artifact, tmp_path):
    with running(ChatServer("edge")) as edge, running(ChatServer("cloud")) as cloud:
        cloud.force = "STREAMDIE"
        with serve(artifact, edge.base_url, cloud.base_url, tmp_path) as g:
            stream = openai_client(g.base_url).chat.completions.create(
                model="router", messages=messages("c?", solid("red")), stream=True)
            with pytest.raises(openai.APIError, match="stream ended before"):
                list(stream)
            text = httpx.get(g.base_url[:-3] + "/metrics").text
    (row,) = decision_log.read(tmp_path / "decisions.jsonl")
    assert row["model"] == "cloud" and row["error"].startswith("connection: the upstream's stream ended")
    assert metric(text, "router_request_errors_total", status="stream") == 1


def test_a_bad_request_upstream_is_passed_on_not_retried_elsewhere(artifact, tmp_path):
    with running(ChatServer("edge")) as edge, running(ChatServer("cloud")) as cloud:
        cloud.force = "BAD400"
        with serve(artifact, edge.base_url, cloud.base_url, tmp_path) as g:
            with pytest.raises(openai.BadRequestError) as e:
                openai_client(g.base_url).chat.completions.create(model="router", messages=messages("c?", solid("red")))
    assert e.value.body["code"] == "http_400" and "bad request" in e.value.body["message"]
    assert len(cloud.requests) == 1 and not edge.requests
