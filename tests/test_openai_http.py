"""The OpenAI-compatible HTTP backend against a real chat-completions server on 127.0.0.1."""

import io
import math
import socket
import time

import pytest
from PIL import Image

from chat_server import LOGPROBS, ChatServer
from router_training import backends
from router_training.openai_http import OpenAIBackend

FAST = {"timeout_s": 0.5, "max_retries": 1, "backoff_s": 0.01}


def solid(colour, size=(40, 30)):
    return Image.new("RGB", size, colour)


def make(server: ChatServer, **kw) -> OpenAIBackend:
    opts = {"name": "cloud-vlm", "base_url": server.base_url, "model": "test-vlm", **FAST, **kw}
    return OpenAIBackend(**opts)


def test_registered_and_answers_by_rule(chat_server):
    assert backends.BACKENDS["openai"] is OpenAIBackend
    colours = ["red", "green", "blue", "yellow", "white", "black"]
    qs = [f"what colour is shape {i}?" for i in range(len(colours))]
    with make(chat_server) as b:
        out = b.answer([solid(c) for c in colours], qs)
    assert [a.text for a in out] == colours
    assert all(a.error == "" for a in out)
    assert all(a.compute_s > 0 for a in out)
    for a in out:
        assert a.confidence == pytest.approx(math.exp(sum(LOGPROBS) / len(LOGPROBS)))
    for a, q in zip(out, qs):
        (rec,) = chat_server.by_question(q)
        assert a.payload_bytes == rec["body_bytes"]
        assert rec["path"] == "/v1/chat/completions"
        assert rec["model"] == "test-vlm" and rec["logprobs"] is True
        assert rec["text"] == q + "\nAnswer the question with a single word or short phrase."
        assert rec["auth"] is None


def test_payload_matches_request_body(chat_server):
    with make(chat_server) as b:
        im, q = solid("red", (64, 48)), "what colour?"
        (a,) = b.answer([im], [q])
        assert a.payload_bytes == len(b.request_body(im, q)) == chat_server.by_question(q)[0]["body_bytes"]


def test_empty_batch_and_length_mismatch(chat_server):
    with make(chat_server) as b:
        assert b.answer([], []) == []
        with pytest.raises(ValueError, match="2 images but 1 questions"):
            b.answer([solid("red"), solid("red")], ["q"])


def test_no_logprobs_gives_unknown_confidence(chat_server):
    """No logprobs: confidence NaN (unknown), never a made-up 0 that a cascade would route on."""
    with make(chat_server) as b:
        (a,) = b.answer([solid("blue")], ["NOLOGPROBS colour?"])
    assert (a.text, a.error) == ("blue", "") and math.isnan(a.confidence)
    with make(chat_server, logprobs=False) as b:
        (a,) = b.answer([solid("blue")], ["plain colour?"])
    assert a.text == "blue" and math.isnan(a.confidence)
    assert chat_server.by_question("plain colour?")[0]["logprobs"] is None


@pytest.mark.parametrize("trigger, kind, attempts", [
    ("SLOW", "timeout", 2),
    ("FAIL500", "http_500", 2),
    ("BAD400", "http_400", 1),
    ("BADJSON", "malformed", 1),
    ("NOCHOICES", "malformed", 1),
    ("LENGTH", "empty_length", 1),
    ("EMPTY", "empty", 1),
])
def test_failures_are_recorded_and_isolated(chat_server, trigger, kind, attempts):
    qs = ["colour one?", f"{trigger} colour?", "colour two?"]
    with make(chat_server) as b:
        out = b.answer([solid("red"), solid("green"), solid("blue")], qs)
    bad = out[1]
    assert bad.error.startswith(kind + ": "), bad.error
    assert (bad.text, bad.confidence) == ("", 0.0)
    assert bad.compute_s > 0
    assert bad.payload_bytes == chat_server.by_question(qs[1])[0]["body_bytes"]
    assert len(chat_server.by_question(qs[1])) == attempts  # 5xx/timeouts retried, the rest not
    assert [(a.text, a.error) for a in (out[0], out[2])] == [("red", ""), ("blue", "")]
    if kind == "timeout":
        assert bad.compute_s >= 2 * FAST["timeout_s"]


@pytest.mark.parametrize("trigger, status", [("FLAKY", 503), ("RATE429", 429)])
def test_transient_errors_are_retried(chat_server, trigger, status):
    q = f"{trigger} colour?"
    with make(chat_server, backoff_s=0.3) as b:
        t0 = time.perf_counter()
        (a,) = b.answer([solid("yellow")], [q])
        wall = time.perf_counter() - t0
    assert (a.text, a.error) == ("yellow", "")
    assert [r["status"] for r in chat_server.by_question(q)] == [status, 200]
    assert 0 < a.compute_s <= wall - 0.3  # the successful attempt's round trip, not the back-off


def test_no_retries_when_max_retries_zero(chat_server):
    with make(chat_server, max_retries=0) as b:
        (a,) = b.answer([solid("yellow")], ["FLAKY again?"])
    assert a.error.startswith("http_503: ")
    assert len(chat_server.by_question("FLAKY again?")) == 1


def test_connection_refused_is_recorded():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIBackend("x", f"http://127.0.0.1:{port}/v1", "m", **FAST)
    (a,) = b.answer([solid("red")], ["colour?"])
    assert a.error.startswith("connection: ") and "after 2 attempts" in a.error
    assert a.text == "" and a.payload_bytes > 0


def test_concurrency_is_bounded(chat_server):
    qs = [f"HOLD {i}" for i in range(8)]
    with make(chat_server, concurrency=2, timeout_s=5.0) as b:
        out = b.answer([solid("green")] * 8, qs)
    assert all(a.text == "green" and not a.error for a in out)
    assert chat_server.max_in_flight == 2


def test_connections_are_kept_alive(chat_server):
    with make(chat_server, concurrency=1) as b:
        b.answer([solid("red")] * 3, ["a?", "b?", "c?"])
        b.answer([solid("red")], ["d?"])
    assert len(chat_server.requests) == 4
    assert len({r["client_port"] for r in chat_server.requests}) == 1  # one connection for all four


def test_connection_closed_by_server_is_reopened_without_a_retry(chat_server):
    chat_server.drop_after_reply = True
    with make(chat_server, concurrency=1, max_retries=0) as b:
        out = b.answer([solid("red")] * 3, ["a?", "b?", "c?"])
        out += b.answer([solid("red")], ["d?"])
    assert [(a.text, a.error) for a in out] == [("red", "")] * 4
    assert len(chat_server.requests) == 4
    assert len({r["client_port"] for r in chat_server.requests}) == 4  # a new connection each time


def test_api_key_sent_but_never_shown(chat_server, monkeypatch):
    secret = "sk-test-5ecret-value"
    monkeypatch.setenv("TEST_VLM_KEY", secret)
    b = make(chat_server, api_key_env="TEST_VLM_KEY")
    out = b.answer([solid("red")] * 4, ["key ok?", "FAIL500 key?", "BADJSON key?", "SLOW key?"])
    b.close()
    assert out[0].text == "red"
    assert {r["auth"] for r in chat_server.requests} == {f"Bearer {secret}"}
    assert "internal error for Bearer ***" in out[1].error  # the server echoed it; redacted
    for a in out:
        assert secret not in a.error and secret not in repr(a)
    assert secret not in repr(b) and secret not in str(vars(b))
    assert "TEST_VLM_KEY" in repr(b)


def test_missing_api_key_env_is_an_error(monkeypatch):
    monkeypatch.delenv("TEST_VLM_MISSING", raising=False)
    with pytest.raises(ValueError, match="TEST_VLM_MISSING"):
        OpenAIBackend("x", "http://127.0.0.1:1/v1", "m", api_key_env="TEST_VLM_MISSING")


@pytest.mark.parametrize("url", ["ftp://h/v1", "127.0.0.1:8000/v1", "http://u:p@h/v1", "http://h/v1?x=1"])
def test_bad_base_url(url):
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend("x", url, "m")


def test_small_image_is_enlarged_keeping_aspect(chat_server):
    with make(chat_server) as b:
        (a,) = b.answer([solid("red", (26, 28))], ["tiny?"])
    assert a.text == "red"
    w, h = chat_server.by_question("tiny?")[0]["image_size"]
    assert min(w, h) >= 28
    assert w / h == pytest.approx(26 / 28, rel=0.05)


def test_exif_orientation_is_applied(chat_server):
    im = solid("blue", (200, 100))
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    src = Image.open(io.BytesIO(buf.getvalue()))
    assert src.size == (200, 100)
    with make(chat_server) as b:
        (a,) = b.answer([src], ["rotated?"])
    assert a.text == "blue"
    assert chat_server.by_question("rotated?")[0]["image_size"] == (100, 200)


def test_image_without_pixels_is_a_failed_pair(chat_server):
    with make(chat_server) as b:
        out = b.answer([Image.new("RGB", (0, 0)), solid("red")], ["empty image?", "fine?"])
    assert out[0].error.startswith("bad_image: ") and out[0].payload_bytes == 0
    assert (out[1].text, out[1].error) == ("red", "")
    assert chat_server.by_question("empty image?") == []
