"""Streamed replies: server-sent events passed through untouched while the answer is read for the log."""

from __future__ import annotations

import json
import math
import time
from typing import AsyncIterator

from .upstream import confidence


class StreamTap:
    """Reads the answer out of server-sent events as they pass through untouched: ``feed(bytes)`` any
    split of the stream; afterwards ``text`` (the concatenated ``delta.content``), ``logprobs`` (the
    tokens' entries), ``error`` (an ``error`` event's message, or "") and ``done`` (``[DONE]`` seen)."""

    def __init__(self):
        self._buf = b""
        self.parts: list[str] = []
        self.logprobs: list = []
        self.error = ""
        self.done = False

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                event = json.loads(payload)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(event, dict) and event.get("error"):
                err = event["error"]
                self.error = str(err.get("message", err) if isinstance(err, dict) else err)
            for ch in (event.get("choices") or []) if isinstance(event, dict) else []:
                delta = ch.get("delta") or {}
                if isinstance(delta.get("content"), str):
                    self.parts.append(delta["content"])
                lp = (ch.get("logprobs") or {}).get("content") if isinstance(ch.get("logprobs"), dict) else None
                if isinstance(lp, list):
                    self.logprobs.extend(lp)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def confidence(self) -> float:
        return confidence({"logprobs": {"content": self.logprobs}})



async def relay(stream, row: dict, deadline: float, finish, redact) -> AsyncIterator[bytes]:
    """Pass an accepted upstream ``stream`` (``upstream.Stream``) through as it comes, reading the answer
    into the decision-log ``row`` (answer, confidence, error); ``finish()`` writes the row: before the
    chunk holding ``[DONE]`` is passed on, or at the end. A stream cut before ``[DONE]``, a read error or
    one running past ``deadline`` (``time.perf_counter()`` s) ends with an OpenAI-style error event and
    ``[DONE]``; ``redact`` cleans error text of the upstream's key. A client that goes away
    (cancellation) is logged as ``client_disconnected``."""
    tap = StreamTap()
    error, finished = "", False

    def done():
        nonlocal finished
        if not finished:
            finished = True
            conf = tap.confidence()
            row.update(answer=tap.text, confidence=None if math.isnan(conf) else conf)
            row["error"] = row["error"] or error or (f"upstream_error: {tap.error}" if tap.error else "")
            finish()

    try:
        async for chunk in stream.chunks():
            tap.feed(chunk)
            if tap.done:
                done()
            yield chunk
            if time.perf_counter() > deadline and not tap.done:
                error = "timeout: the stream ran past limits.request_timeout_s"
                break
        if not error and not tap.done:
            error = "connection: the upstream's stream ended before [DONE]"
    except Exception as e:  # noqa: BLE001 - httpx read errors and timeouts mid-stream
        error = redact(f"connection: {type(e).__name__}: {e}")
    except BaseException:  # the client went away (cancelled): log it, then let the cancellation go on
        row["error"] = row["error"] or ("" if finished else "client_disconnected")
        raise
    finally:
        done()
        await stream.aclose()
    if error:
        event = {"error": {"message": f"{row['model']}: {error}", "type": "upstream_error", "param": None,
                           "code": "stream_interrupted"}}
        yield b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n"
