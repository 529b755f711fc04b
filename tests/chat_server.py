"""A small real OpenAI-style chat-completions server on 127.0.0.1 for backend tests.

It answers every query by one rule: the name of the image's dominant colour (the palette colour
nearest the mean RGB), with token logprobs ``LOGPROBS``. Words in the question trigger behaviours:

=========  ====================================================================================
SLOW       sleeps ``slow_s`` (default 2 s, longer than the tests' client timeout) before answering
HOLD       sleeps ``hold_s`` (default 0.15 s) before answering (to overlap requests)
FAIL500    HTTP 500 whose body echoes the request's Authorization header (tests redaction)
BAD400     HTTP 400
BADJSON    HTTP 200 with a body that is not JSON
LENGTH     finish_reason "length" and null content
EMPTY      finish_reason "stop" and empty content
NOCHOICES  a JSON object without ``choices``
NOLOGPROBS a normal answer without logprobs
FLAKY      HTTP 503 the first time a question is seen, then a normal answer
RATE429    HTTP 429 with ``Retry-After: 0`` the first time a question is seen, then a normal answer
=========  ====================================================================================

``ChatServer.requests`` records each request (question, Authorization header, body size, decoded
image size, reply status); ``max_in_flight`` is the most requests handled at once. It speaks HTTP/1.1
with keep-alive, as real servers do; with ``drop_after_reply`` it closes each connection after its reply
without a ``Connection: close`` header (a server's idle keep-alive timeout, as the client sees it).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "white": (255, 255, 255), "black": (0, 0, 0)}
LOGPROBS = (-0.1, -0.3)  # confidence exp(mean) = exp(-0.2)


def dominant_colour(image: Image.Image) -> str:
    px = list(image.convert("RGB").resize((8, 8)).getdata())
    mean = [sum(p[c] for p in px) / len(px) for c in range(3)]
    return min(PALETTE, key=lambda k: sum((a - b) ** 2 for a, b in zip(PALETTE[k], mean)))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "ChatServer"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        if self.server.drop_after_reply:  # close without saying so, like an idle keep-alive timeout
            self.wfile.flush()
            self.close_connection = True

    def do_POST(self):
        srv = self.server
        with srv.lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            self._handle()
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _handle(self):
        srv = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        rec = {"path": self.path, "auth": self.headers.get("Authorization"), "body_bytes": len(raw),
               "question": None, "text": None, "image_size": None, "status": None}
        with srv.lock:
            srv.requests.append(rec)
        req = json.loads(raw)
        parts = req["messages"][0]["content"]
        text = next(p["text"] for p in parts if p["type"] == "text")
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        image.load()
        rec.update(text=text, question=text.split("\n", 1)[0], image_size=image.size, model=req.get("model"),
                   logprobs=req.get("logprobs"))
        q = rec["question"]
        with srv.lock:
            first_time = q not in srv.seen
            srv.seen.add(q)

        def reply(status, body, headers=None):
            rec["status"] = status
            self._send(status, body, headers)

        if "SLOW" in q:
            srv.stopping.wait(srv.slow_s)
        if "HOLD" in q:
            time.sleep(srv.hold_s)
        if "FAIL500" in q:
            return reply(500, json.dumps({"error": f"internal error for {rec['auth']}"}).encode())
        if "BAD400" in q:
            return reply(400, b'{"error": "bad request"}')
        if "FLAKY" in q and first_time:
            return reply(503, b'{"error": "overloaded"}')
        if "RATE429" in q and first_time:
            return reply(429, b'{"error": "rate limited"}', {"Retry-After": "0"})
        if "BADJSON" in q:
            return reply(200, b"<html>gateway says hi</html>")
        if "NOCHOICES" in q:
            return reply(200, b'{"id": "x", "object": "chat.completion"}')
        answer = dominant_colour(image)
        content, finish = answer, "stop"
        if "LENGTH" in q:
            content, finish = None, "length"
        if "EMPTY" in q:
            content = ""
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        if req.get("logprobs") and "NOLOGPROBS" not in q:
            choice["logprobs"] = {"content": [{"token": answer, "logprob": LOGPROBS[0], "bytes": None,
                                               "top_logprobs": []},
                                              {"token": "<|eot|>", "logprob": LOGPROBS[1], "bytes": None,
                                               "top_logprobs": []}]}
        body = {"id": "chatcmpl-test", "object": "chat.completion", "model": req.get("model"),
                "choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}
        reply(200, json.dumps(body).encode())


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.seen: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.slow_s = 2.0
        self.hold_s = 0.15
        self.drop_after_reply = False
        self.stopping = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):  # a client that gave up (timeout) is expected
        pass

    def by_question(self, question: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["question"] == question]


@pytest.fixture
def chat_server():
    """A running ChatServer (its own thread), shut down after the test."""
    srv = ChatServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
