"""A backend for OpenAI-compatible chat-completions servers (vLLM, TGI, llama.cpp server, hosted APIs).

HTTP through ``httpx`` (one ``httpx.Client`` per backend: connection pooling, keep-alive, timeouts;
the routing gateway, ``router_training.serve``, uses the same library's async client). Each (image,
question) pair is one ``POST {base_url}/chat/completions`` whose user message holds the image as a
base64 JPEG data URL (after ``images.prepare``: EXIF orientation, enlarged to ``min_side``) and the
question followed by ``prompt``. Requests run ``concurrency`` at a time (a thread pool over the one
client, whose pool keeps up to ``concurrency`` connections alive).

What each Answer holds:

* ``text``: the reply's ``choices[0].message.content``, stripped.
* ``confidence``: ``exp(mean token logprob)`` of the reply when the server returns
  ``choices[0].logprobs.content``; **NaN when it returns none** (or ``logprobs=False``): unknown, so the
  baselines that need a confidence (cascades) are left out rather than run on made-up zeros.
* ``compute_s``: wall seconds of the successful attempt's round trip (connect if needed, send, server
  time, read). It includes the collecting machine's own network time and any server-side queueing, so
  collect against a server on the same host or LAN when latencies matter (the deployment profile adds
  its own RTT and transfer times on top). For a failed pair: the seconds spent on it in all, retries and
  back-off included.
* ``payload_bytes``: the exact size of the JSON request body (base64 image, question, prompt, JSON),
  headers excluded. This is larger than ``backends.payload_bytes`` (raw JPEG + question): it is what
  this protocol really uploads.
* ``error``: ``""`` on success, else ``"<kind>: <detail>"``, kind one of ``timeout``, ``connection``,
  ``tls``, ``http_<status>``, ``malformed`` (not JSON, no choices, no message), ``empty_length`` (finish
  reason "length" with null/empty content: raise ``max_tokens``), ``empty`` (null/empty content
  otherwise), ``bad_image`` (``images.prepare`` or encoding failed) or ``error`` (anything unexpected).
  ``answer`` never raises for a failed pair (only for unequal list lengths).

Retries: timeouts, connection errors, HTTP 429 and 5xx are retried up to ``max_retries`` times (so
``max_retries + 1`` attempts) after ``backoff_s * 2**k`` seconds (k = 0, 1, ...), or the server's
``Retry-After`` if longer (capped at 60 s). Other 4xx and malformed replies are not retried. A kept-alive
connection the server has closed is replaced without counting as an attempt (httpx's pool sees most
before reuse; one closed just as it was reused, with nothing sent back, is sent once more at once). ``timeout_s`` bounds each network operation (connect, each write, each read, waiting for
a pooled connection), not the whole reply (``httpx.Timeout(timeout_s)``).

The API key is read from the environment variable named ``api_key_env`` at each request and sent as
``Authorization: Bearer``; it is never stored on the object, logged, or left in an error string (any
server text that echoes it is redacted). Environment proxies (``HTTPS_PROXY``) and ``.netrc`` are not
used (``trust_env=False``); redirects are not followed.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import ssl
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from .backends import Answer, register
from .core.images import encode_jpeg, prepare

log = logging.getLogger(__name__)

_MAX_RETRY_AFTER_S = 60.0
_DETAIL_CHARS = 200


class _Failure(Exception):
    """One failed attempt: ``kind`` for the error string, whether retrying may help, and a wait hint."""

    def __init__(self, kind: str, detail: str, retry: bool, retry_after: float | None = None):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.retry, self.retry_after = kind, detail, retry, retry_after


def _tls_failure(e: BaseException) -> bool:
    """Whether an httpx transport error comes from TLS certificate verification (not worth retrying)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _snippet(data: bytes) -> str:
    text = data[:_DETAIL_CHARS * 4].decode("utf-8", errors="replace").strip().replace("\n", " ")
    return text[:_DETAIL_CHARS] + ("..." if len(text) > _DETAIL_CHARS else "")


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER_S) if value is not None else None
    except ValueError:  # an HTTP date: ignore, use our own back-off
        return None


def confidence(choice: dict) -> float:
    """exp(mean token logprob) of a chat-completions choice's ``logprobs.content`` (a reply, or logprobs
    gathered from a stream), in [0, 1]; NaN (unknown) when it carries no usable logprobs."""
    lp = choice.get("logprobs") if isinstance(choice, dict) else None
    content = lp.get("content") if isinstance(lp, dict) else None
    if not isinstance(content, list) or not content:
        return math.nan
    try:
        values = [float(t["logprob"]) for t in content]
    except (TypeError, KeyError, ValueError):
        return math.nan
    mean = sum(values) / len(values)
    return math.nan if math.isnan(mean) else min(max(math.exp(mean), 0.0), 1.0)  # exp(-inf) == 0.0


def _content_text(content) -> str | None:
    """Message content as text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return None


def parse_reply(data: bytes) -> tuple[str, float]:
    """(answer text, confidence) from a chat-completions reply body; raises _Failure (not retried)."""
    try:
        reply = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Failure("malformed", f"reply is not JSON: {_snippet(data)!r}", retry=False) from None
    if not isinstance(reply, dict):
        raise _Failure("malformed", f"reply is not a JSON object: {_snippet(data)!r}", retry=False)
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Failure("malformed", f"reply has no choices: {_snippet(data)!r}", retry=False)
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _Failure("malformed", f"choice has no message: {_snippet(data)!r}", retry=False)
    text = _content_text(message.get("content"))
    text = text.strip() if text is not None else ""
    finish = choice.get("finish_reason")
    if not text:
        if finish == "length":
            raise _Failure("empty_length", "finish_reason 'length' with no content (raise max_tokens)",
                           retry=False)
        raise _Failure("empty", f"no content (finish_reason {finish!r})", retry=False)
    return text, confidence(choice)


def check_base_url(base_url: str, where: str) -> None:
    """Raise ValueError (prefixed ``where``) unless ``base_url`` is http(s)://host[:port]/path with no
    credentials, query or fragment (an OpenAI-compatible server's base URL)."""
    url = urllib.parse.urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"{where}: base_url must be http(s)://host[:port]/path, got {base_url!r}")
    if url.username or url.password:
        raise ValueError(f"{where}: credentials in base_url are not supported; use api_key_env")
    if url.query or url.fragment:
        raise ValueError(f"{where}: base_url must not have a query or fragment")


@register("openai")
class OpenAIBackend:
    """A VLM behind an OpenAI-compatible ``/chat/completions`` endpoint; see the module docstring.

    ``base_url`` is the API root, e.g. ``http://127.0.0.1:8000/v1``. Set ``logprobs=False`` for servers
    that reject the ``logprobs`` field (confidence is then NaN: unknown). Raises ValueError on a bad URL or option,
    or when ``api_key_env`` names an unset variable.
    """

    def __init__(self, name: str, base_url: str, model: str, api_key_env: str | None = None,
                 max_tokens: int = 16, temperature: float = 0.0, timeout_s: float = 30.0,
                 max_retries: int = 3, backoff_s: float = 0.5, concurrency: int = 4, min_side: int = 28,
                 prompt: str = "Answer the question with a single word or short phrase.",
                 logprobs: bool = True, jpeg_quality: int = 90):
        check_base_url(base_url, name)
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError(f"{name}: need concurrency >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0")
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ValueError(f"{name}: environment variable {api_key_env} (the API key) is not set")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.concurrency = int(concurrency)
        self.min_side = min_side
        self.prompt = prompt
        self.logprobs = logprobs
        self.jpeg_quality = jpeg_quality
        self._url = self.base_url + "/chat/completions"
        self._client: httpx.Client | None = None  # opened on first use, shared by the worker threads
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"OpenAIBackend(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")

    # -- public -----------------------------------------------------------------------------------------

    def answer(self, images: list[Image.Image], questions: list[str]) -> list[Answer]:
        """One Answer per pair, in order; failed pairs are Answers with ``error`` set, never exceptions."""
        if len(images) != len(questions):
            raise ValueError(f"{self.name}: {len(images)} images but {len(questions)} questions")
        if not questions:
            return []
        results: list[Answer | None] = [None] * len(questions)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(questions)),
                                thread_name_prefix=f"openai-{self.name}") as pool:
            futures = {}
            # Images are prepared here, one at a time (a PIL image shared by two pairs is not safe to load
            # from two threads); requests already submitted run meanwhile.
            for i, (im, q) in enumerate(zip(images, questions)):
                try:
                    body = self.request_body(im, q)
                except Exception as e:  # noqa: BLE001 - one bad image costs one pair
                    results[i] = Answer("", 0.0, 0.0, 0, self._redact(f"bad_image: {type(e).__name__}: {e}"))
                    continue
                futures[i] = pool.submit(self._answer_one, body)
            for i, fut in futures.items():
                results[i] = fut.result()
        return results  # type: ignore[return-value]

    def request_body(self, image: Image.Image, question: str) -> bytes:
        """The exact JSON body sent for one pair."""
        jpeg = encode_jpeg(prepare(image, self.min_side), self.jpeg_quality)
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        text = f"{question}\n{self.prompt}" if self.prompt else question
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": text},
            ]}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.logprobs:
            body["logprobs"] = True
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def close(self) -> None:
        """Close kept-alive connections (the backend stays usable: a new client opens on demand)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one pair ---------------------------------------------------------------------------------------

    def _answer_one(self, body: bytes) -> Answer:
        start = time.perf_counter()
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                data, rtt = self._post(body)
                text, conf = parse_reply(data)
                return Answer(text=text, confidence=conf, compute_s=rtt, payload_bytes=len(body))
            except _Failure as f:
                failure = f
            except Exception as e:  # noqa: BLE001 - a bug or an odd library error must not kill the batch
                failure = _Failure("error", f"{type(e).__name__}: {e}", retry=False)
            if not failure.retry or attempt == attempts - 1:
                break
            wait = self.backoff_s * 2 ** attempt
            if failure.retry_after is not None:
                wait = max(wait, failure.retry_after)
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.2f s", self.name, attempt + 1,
                        attempts, self._redact(str(failure)), wait)
            time.sleep(wait)
        tries = f" (after {attempt + 1} attempts)" if attempt else ""
        return Answer(text="", confidence=0.0, compute_s=time.perf_counter() - start, payload_bytes=len(body),
                      error=self._redact(f"{failure.kind}: {failure.detail}{tries}"))

    def _post(self, body: bytes) -> tuple[bytes, float]:
        """(reply body, round-trip seconds) of one attempt; raises _Failure."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env is not None:
            headers["Authorization"] = "Bearer " + os.environ.get(self.api_key_env, "")
        client = self._http()
        try:
            for fresh in (False, True):
                t0 = time.perf_counter()
                try:
                    resp = client.post(self._url, content=body, headers=headers)
                    break
                except httpx.RemoteProtocolError as e:
                    # a kept-alive connection the server closed just as it was reused (before the pool could
                    # see it): nothing came back, so send once more on a new connection, not counted
                    if fresh or "without sending a response" not in str(e):
                        raise
        except httpx.TimeoutException:
            raise _Failure("timeout", f"no reply within {self.timeout_s:g} s", retry=True) from None
        except httpx.TransportError as e:
            if _tls_failure(e):
                raise _Failure("tls", str(e), retry=False) from None
            raise _Failure("connection", f"{type(e).__name__}: {e}", retry=True) from None
        rtt = time.perf_counter() - t0
        data = resp.content
        if not 200 <= resp.status_code < 300:
            retry = resp.status_code == 429 or resp.status_code >= 500
            raise _Failure(f"http_{resp.status_code}", _snippet(data) or resp.reason_phrase, retry=retry,
                           retry_after=_retry_after(resp.headers.get("Retry-After")) if retry else None)
        return data, rtt

    def _http(self) -> httpx.Client:
        """The backend's client: ``timeout_s`` on every operation, at most ``concurrency`` connections
        (all kept alive), no environment proxies, no redirects."""
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s),
                    limits=httpx.Limits(max_connections=self.concurrency,
                                        max_keepalive_connections=self.concurrency),
                    trust_env=False, follow_redirects=False)
            return self._client

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text
