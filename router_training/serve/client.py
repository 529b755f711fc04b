"""``RoutedClient``: the gateway embedded in an application, without an HTTP server.

    from router_training.serve import RoutedClient

    with RoutedClient("export/easyvqa", "configs/serve/easyvqa_inprocess.yaml") as client:
        done = client.create(messages=[...])                 # model "router" by default
        print(done.text, done.model, done.tier, done.fallback, done.p_correct)
        for chunk in client.create(messages=[...], stream=True):
            print(chunk["choices"][0]["delta"].get("content", ""), end="")
        print(client.ask(Image.open("photo.jpg"), "what color is the shape?").text)

It runs the same ``Gateway`` as ``router-train serve`` (routing, network estimate, fallback, decision
log, metrics at ``client.gateway.metrics``) on an event loop of its own in a background thread, so it
can be called from plain synchronous code and from several threads at once. A failed request raises
``RoutedError`` with the gateway's status and OpenAI-style error object.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .config import ServeConfig
from .gateway import Gateway


class RoutedError(Exception):
    """A request the gateway answered with an error: ``status`` (HTTP), ``body`` ({"error": {...}}),
    ``headers`` (the x-router-* route so far)."""

    def __init__(self, status: int, body: dict, headers: dict):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status}: {err.get('message', body)}")
        self.status, self.body, self.headers = status, body, headers


@dataclass
class RoutedCompletion:
    """A chat completion (``body``, as an OpenAI-compatible server returns it) and its route (``headers``:
    the x-router-* headers the server form sends)."""

    body: dict
    headers: dict

    @property
    def text(self) -> str:
        return self.body["choices"][0]["message"].get("content") or ""

    @property
    def model(self) -> str:
        return self.headers["x-router-model"]

    @property
    def tier(self) -> str:
        return self.headers["x-router-tier"]

    @property
    def fallback(self) -> str:
        return self.headers["x-router-fallback"]

    @property
    def request_id(self) -> str:
        return self.headers["x-router-request-id"]

    @property
    def p_correct(self) -> dict:
        return json.loads(self.headers.get("x-router-p-correct", "{}"))


class RoutedStream:
    """The chunks of a streamed completion (dicts, as ``data:`` events carry them), iterated
    synchronously; ``headers`` the route. An error event raises RoutedError."""

    def __init__(self, client: "RoutedClient", agen, headers: dict):
        self._client, self._agen, self.headers = client, agen, headers
        self._buf = b""

    def __iter__(self) -> Iterator[dict]:
        while True:
            try:
                chunk = self._client._run(self._agen.__anext__())
            except StopAsyncIteration:
                return
            self._buf += chunk
            *events, self._buf = self._buf.split(b"\n\n")
            for ev in events:
                for line in ev.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        continue
                    obj = json.loads(data)
                    if isinstance(obj, dict) and "error" in obj:
                        raise RoutedError(200, obj, self.headers)
                    yield obj

    def close(self) -> None:
        self._client._run(self._agen.aclose())


class RoutedClient:
    """The gateway in-process. ``artifact`` an export folder; ``endpoints`` an endpoints.yaml path, a
    parsed mapping or a ServeConfig. ``close()`` (or ``with``) stops it and closes the decision log."""

    def __init__(self, artifact: str | Path, endpoints: str | Path | dict | ServeConfig):
        cfg = endpoints if isinstance(endpoints, ServeConfig) else (
            ServeConfig.from_dict(endpoints) if isinstance(endpoints, dict) else ServeConfig.load(endpoints))
        self.gateway = Gateway(artifact, cfg)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="routed-client", daemon=True)
        self._thread.start()
        try:
            self._run(self.gateway.start())
        except BaseException:
            self.close()
            raise

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def create(self, *, messages: list, model: str = "router", stream: bool = False, headers: dict | None = None,
               **params) -> RoutedCompletion | RoutedStream:
        """One chat completion, as ``POST /v1/chat/completions`` with this body (``params``: temperature,
        max_tokens, logprobs, ...) and ``headers`` (e.g. ``{"x-router-uplink-mbps": "2"}``). Returns a
        RoutedCompletion, or with ``stream`` a RoutedStream. Raises RoutedError for an error reply."""
        body = json.dumps({"model": model, "messages": messages, "stream": stream, **params}).encode()
        reply = self._run(self.gateway.chat(body, {k.lower(): v for k, v in (headers or {}).items()}))
        if reply.stream is not None:
            return RoutedStream(self, reply.stream, reply.headers)
        parsed = json.loads(reply.body)
        if reply.status != 200:
            raise RoutedError(reply.status, parsed, reply.headers)
        return RoutedCompletion(parsed, reply.headers)

    def ask(self, image, question: str, **params) -> RoutedCompletion:
        """Route one (image, question): ``image`` a PIL image (sent as a JPEG data URL) or image bytes."""
        if not isinstance(image, (bytes, bytearray)):
            from ..core.images import encode_jpeg

            image = encode_jpeg(image)
        url = "data:image/jpeg;base64," + base64.b64encode(bytes(image)).decode("ascii")
        return self.create(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                  {"type": "text", "text": question}]}], **params)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._loop.is_running():
            try:
                self._run(self.gateway.aclose())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
