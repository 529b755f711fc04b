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
ALWAYS429  HTTP 429 with ``Retry-After: 0`` every time
LOWCONF    a normal answer whose token logprobs are ``LOW_LOGPROBS`` (confidence exp(-3) ~ 0.05)
STREAMDIE  with ``stream: true``: the first event, then the connection is cut (a server dying mid-reply)
=========  ====================================================================================

The question is the last user message's text (its first line); the image, when there is one, is the
first ``image_url`` part of any message (a base64 data URL, or an http://127.0.0.1 URL it fetches). With ``"stream": true`` the reply is
server-sent events as OpenAI's API sends them (a role chunk, the answer in two content chunks, a chunk
with ``finish_reason``, a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``).
``GET /v1/models`` lists ``models``; ``GET /files/<name>`` serves ``files[name]`` (bytes, for remote
image URLs).

Server-wide settings: ``force`` (trigger words applied to every request, e.g. "FAIL500"), ``name``
(in each reply's ``id``), ``base_delay_s`` plus ``seconds_per_byte`` (sleep ``base_delay_s + body
bytes * seconds_per_byte`` before answering: a cloud slowed in proportion to the bytes it receives,
as an uplink of ``8 / seconds_per_byte`` bit/s would), ``kill()`` (stop listening and cut every open
connection: a crashed server, as its clients see it).

``reply_headers`` are added to every reply (e.g. a ``Set-Cookie``).

``ChatServer.requests`` records each request (question, Authorization and Cookie headers, body size, decoded
image size, reply status, client port); ``max_in_flight`` is the most requests handled at once. It
speaks HTTP/1.1 with keep-alive, as real servers do; with ``drop_after_reply`` it closes each connection
after its reply without a ``Connection: close`` header (a server's idle keep-alive timeout, as the client
sees it). ``running(server)`` runs one in a thread for the length of a ``with`` block.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "white": (255, 255, 255), "black": (0, 0, 0)}
LOGPROBS = (-0.1, -0.3)  # confidence exp(mean) = exp(-0.2)
LOW_LOGPROBS = (-3.0, -3.0)  # confidence exp(-3)


def dominant_colour(image: Image.Image) -> str:
    px = list(image.convert("RGB").resize((8, 8)).getdata())
    mean = [sum(p[c] for p in px) / len(px) for c in range(3)]
    return min(PALETTE, key=lambda k: sum((a - b) ** 2 for a, b in zip(PALETTE[k], mean)))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: "ChatServer"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**self.server.reply_headers, **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        if self.server.drop_after_reply:  # close without saying so, like an idle keep-alive timeout
            self.wfile.flush()
            self.close_connection = True

    def do_GET(self):
        srv = self.server
        if self.path.rstrip("/") == "/v1/models":
            body = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": srv.name} for m in srv.models]}
            return self._send(200, json.dumps(body).encode())
        if self.path.startswith("/files/") and self.path[len("/files/"):] in srv.files:
            data = srv.files[self.path[len("/files/"):]]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        return self._send(404, b'{"error": "not found"}')

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
        rec = {"path": self.path, "auth": self.headers.get("Authorization"), "cookie": self.headers.get("Cookie"),
               "body_bytes": len(raw),
               "question": None, "text": None, "image_size": None, "status": None,
               "client_port": self.client_address[1], "stream": False}
        with srv.lock:
            srv.requests.append(rec)
        req = json.loads(raw)
        text, image = _inputs(req["messages"])
        rec.update(text=text, question=text.split("\n", 1)[0], image_size=image.size if image else None,
                   model=req.get("model"), logprobs=req.get("logprobs"), stream=bool(req.get("stream")))
        q = rec["question"] + (" " + srv.force if srv.force else "")
        with srv.lock:
            first_time = rec["question"] not in srv.seen
            srv.seen.add(rec["question"])

        def reply(status, body, headers=None):
            rec["status"] = status
            self._send(status, body, headers)

        delay = srv.base_delay_s + len(raw) * srv.seconds_per_byte
        if delay:
            srv.stopping.wait(delay)
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
        if ("RATE429" in q and first_time) or "ALWAYS429" in q:
            return reply(429, b'{"error": "rate limited"}', {"Retry-After": "0"})
        if "BADJSON" in q:
            return reply(200, b"<html>gateway says hi</html>")
        if "NOCHOICES" in q:
            return reply(200, b'{"id": "x", "object": "chat.completion"}')
        answer = dominant_colour(image) if image is not None else "no image"
        content, finish = answer, "stop"
        if "LENGTH" in q:
            content, finish = None, "length"
        if "EMPTY" in q:
            content = ""
        logprobs = None
        if req.get("logprobs") and "NOLOGPROBS" not in q:
            lp = LOW_LOGPROBS if "LOWCONF" in q else LOGPROBS
            logprobs = {"content": [{"token": answer, "logprob": lp[0], "bytes": None, "top_logprobs": []},
                                    {"token": "<|eot|>", "logprob": lp[1], "bytes": None, "top_logprobs": []}]}
        with srv.lock:
            srv.count += 1
            cid = f"chatcmpl-{srv.name}-{srv.count}"
        if req.get("stream"):
            rec["status"] = 200
            return self._stream(cid, req, content or "", finish, logprobs, die="STREAMDIE" in q)
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = logprobs
        body = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": req.get("model"),
                "choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}
        reply(200, json.dumps(body).encode())

    def _stream(self, cid: str, req: dict, content: str, finish: str, logprobs: dict | None, die: bool):
        """Server-sent events, one chunk per ``data:`` line, as OpenAI's streaming API sends them."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream ends when the connection does
        self.end_headers()
        base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": req.get("model")}

        def event(delta, finish_reason=None, lp=None, **extra):
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            if lp is not None:
                choice["logprobs"] = {"content": lp}
            self.wfile.write(b"data: " + json.dumps({**base, "choices": [choice], **extra}).encode() + b"\n\n")
            self.wfile.flush()

        event({"role": "assistant", "content": ""})
        if die:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        half = len(content) // 2
        tokens = (logprobs or {}).get("content") or [None, None]
        event({"content": content[:half]}, lp=[tokens[0]] if tokens[0] else None)
        event({"content": content[half:]}, lp=[tokens[1]] if tokens[1] else None)
        event({}, finish)
        if (req.get("stream_options") or {}).get("include_usage"):
            self.wfile.write(b"data: " + json.dumps({**base, "choices": [], "usage": {
                "prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def _inputs(messages: list) -> tuple[str, Image.Image | None]:
    """(last user text, first image) of chat messages (content a string or a list of parts)."""
    text, image = "", None
    for m in messages:
        parts = m.get("content")
        parts = [{"type": "text", "text": parts}] if isinstance(parts, str) else (parts or [])
        for p in parts:
            if p.get("type") == "image_url" and image is None:
                url = p["image_url"]["url"] if isinstance(p["image_url"], dict) else p["image_url"]
                if url.startswith("http://127.0.0.1:"):  # fetched, as vLLM does (loopback only, in tests)
                    with urllib.request.urlopen(url, timeout=5) as f:
                        data = f.read()
                else:
                    data = base64.b64decode(url.split(",", 1)[1])
                image = Image.open(io.BytesIO(data))
                image.load()
        if m.get("role") == "user":
            texts = [p["text"] for p in parts if p.get("type") == "text"]
            if texts:
                text = "".join(texts)
    return text, image


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: 32 clients connecting at once overflow socketserver's 5

    def __init__(self, name: str = "test", port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.seen: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.count = 0
        self.slow_s = 2.0
        self.hold_s = 0.15
        self.drop_after_reply = False
        self.stopping = threading.Event()
        self.name = name
        self.force = ""
        self.base_delay_s = 0.0
        self.seconds_per_byte = 0.0
        self.reply_headers = {}  # sent with every reply (e.g. a Set-Cookie)
        self.models = ["test-vlm"]
        self.files: dict[str, bytes] = {}
        self._open: set[socket.socket] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):  # a client that gave up (timeout) is expected
        pass

    def process_request(self, request, client_address):
        with self.lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def by_question(self, question: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["question"] == question]

    def answered(self) -> int:
        """Requests answered with HTTP 200."""
        with self.lock:
            return sum(r["status"] == 200 for r in self.requests)

    def kill(self) -> None:
        """Stop accepting and cut every open connection (kept-alive ones too), as a crash would."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self.lock:
            conns = list(self._open)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def running(server: ChatServer):
    """Serve ``server`` on its own thread inside the block; killed (``kill``) after it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if not server.stopping.is_set():
            server.kill()
        thread.join(timeout=5)


@pytest.fixture
def chat_server():
    """A running ChatServer (its own thread), shut down after the test."""
    with running(ChatServer()) as srv:
        yield srv
