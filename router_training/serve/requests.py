"""What a chat-completions request gives the router, and the limits that guard it (pillow only).

The router's inputs are the first image of the messages (an ``image_url`` content part: a base64 data
URL, or an ``http(s)://`` URL when ``images.allow_remote``) and the text of the last ``user`` message
(its text parts joined; "" when there is none). The decision's network cost uses ``payload_bytes``: the
size of the request body as received, which is what the gateway forwards to a cloud model (the same
body with the upstream's model name), base64 image included.

Every refusal is a ``RequestError`` carrying the HTTP status and an OpenAI-style error object: 400 for
malformed JSON, messages or images, 413 for a body, image or pixel count over the limits (the pixel
count is read from the image header before any decoding, so a decompression bomb is refused without
being expanded).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Mapping

from PIL import Image

from .config import Limits

_DATA_URL = re.compile(r"data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)


class RequestError(Exception):
    """A request the gateway refuses or cannot answer: ``status`` (HTTP), ``message``, ``code`` and
    ``param`` as in OpenAI's error objects, ``type`` their error type."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type

    def body(self) -> dict:
        """The OpenAI-style error object ``{"error": {message, type, param, code}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatInputs:
    """The router's view of one request: ``body`` the parsed JSON; ``model`` the requested model
    ("router" routes); ``stream``; ``question`` the last user text; ``image_url`` the first image part's
    URL (None: no image); ``payload_bytes`` the body's size as received (bytes)."""

    body: dict
    model: str
    stream: bool
    question: str
    image_url: str | None
    payload_bytes: int


def parse_body(raw: bytes, limits: Limits) -> ChatInputs:
    """Parse a ``/v1/chat/completions`` body. Raises RequestError: 413 over ``limits.max_body_bytes``;
    400 for a body that is not a JSON object, without a non-empty ``messages`` list of objects, or with a
    ``model`` that is not a string."""
    if len(raw) > limits.max_body_bytes:
        raise RequestError(413, f"request body of {len(raw)} bytes is over the limit of {limits.max_body_bytes}",
                           "body_too_large")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"request body is not JSON: {e}", "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", "invalid_json")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError(400, "`messages` must be a non-empty list of message objects", "invalid_messages",
                           "messages")
    model = body.get("model", "router")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "`model` must be a model name, or \"router\" to route", "invalid_model", "model")
    question, image_url = "", None
    for m in messages:
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            continue
        texts = []
        for p in parts:
            if not isinstance(p, dict):
                continue
            if p.get("type") == "image_url" and image_url is None:
                ref = p.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str) or not url:
                    raise RequestError(400, "an image_url part needs a `url`", "invalid_image", "messages")
                image_url = url
            elif p.get("type") == "text" and isinstance(p.get("text"), str):
                texts.append(p["text"])
        if m.get("role") == "user" and texts:
            question = "".join(texts)
    return ChatInputs(body, model, bool(body.get("stream", False)), question, image_url, len(raw))


def image_source(url: str) -> tuple[str, str]:
    """("data", base64 text) for a base64 data URL, ("remote", url) for an http(s) URL. Raises
    RequestError 400 for any other URL."""
    m = _DATA_URL.match(url)
    if m:
        return "data", url[m.end():]
    if url[:8].lower().startswith(("http://", "https://")):
        return "remote", url
    raise RequestError(400, "image_url must be a base64 data URL (data:image/...;base64,...) or, where the gateway "
                            "allows it, an http(s) URL", "invalid_image", "messages")


def decode_base64(data: str, limits: Limits) -> bytes:
    """The image bytes of a data URL's base64 text. Raises RequestError 413 when they would exceed
    ``limits.max_image_bytes`` (checked on the text's length, before decoding), 400 for invalid base64."""
    if len(data) * 3 // 4 > limits.max_image_bytes + 3:
        raise RequestError(413, f"image of about {len(data) * 3 // 4} bytes is over the limit of "
                                f"{limits.max_image_bytes}", "image_too_large", "messages")
    try:
        out = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:  # some clients wrap lines; padding may be missing
            out = base64.b64decode(re.sub(r"\s+", "", data) + "==", validate=False)
        except (binascii.Error, ValueError) as e:
            raise RequestError(400, f"image data URL is not valid base64: {e}", "invalid_image", "messages") from None
    if len(out) > limits.max_image_bytes:
        raise RequestError(413, f"image of {len(out)} bytes is over the limit of {limits.max_image_bytes}",
                           "image_too_large", "messages")
    return out


def open_image(data: bytes, limits: Limits, load: bool = True) -> Image.Image:
    """Open image bytes with Pillow, refusing more than ``limits.max_image_pixels`` pixels from the
    header alone (413) and anything Pillow cannot read (400). Returns the image, decoded when ``load``
    (else only its header is read: it decodes on first use)."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"image refused: {e}", "image_too_many_pixels", "messages") from None
    except Exception as e:  # noqa: BLE001 - UnidentifiedImageError, truncated headers, ...
        raise RequestError(400, f"image could not be read: {type(e).__name__}: {e}", "invalid_image",
                           "messages") from None
    w, h = im.size
    if w * h > limits.max_image_pixels:
        raise RequestError(413, f"image of {w} x {h} = {w * h} pixels is over the limit of {limits.max_image_pixels}",
                           "image_too_many_pixels", "messages")
    if w * h == 0:
        raise RequestError(400, f"image has no pixels (size {w} x {h})", "invalid_image", "messages")
    if not load:
        return im
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            im.load()
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"image refused: {e}", "image_too_many_pixels", "messages") from None
    except Exception as e:  # noqa: BLE001
        raise RequestError(400, f"image could not be decoded: {type(e).__name__}: {e}", "invalid_image",
                           "messages") from None
    return im


def number_header(headers: Mapping, name: str, positive: bool) -> float | None:
    """A request header's number (None when absent). Raises RequestError 400 unless it is finite and > 0
    (``positive``) or >= 0."""
    v = headers.get(name)
    if v is None:
        return None
    try:
        x = float(v)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and (x > 0 if positive else x >= 0)):
        raise RequestError(400, f"header {name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}",
                           "invalid_header")
    return x


async def fetch_remote(client, url: str, ic, limits: Limits) -> bytes:
    """An http(s) image's bytes, fetched with ``client`` (an ``httpx.AsyncClient``; None when remote
    images are off) under ``ic`` (``config.ImagesConfig``: allowed, hosts) and at most
    min(``ic.remote_max_bytes``, ``limits.max_image_bytes``) bytes. Raises RequestError 400 (refused,
    unreachable, not HTTP 200) or 413 (too large)."""
    import urllib.parse

    import httpx

    if not ic.allow_remote or client is None:
        raise RequestError(400, "remote image URLs are not accepted by this gateway (images.allow_remote); send "
                                "the image as a base64 data URL", "remote_image_refused", "messages")
    host = urllib.parse.urlsplit(url).hostname or ""
    if ic.remote_hosts and host not in ic.remote_hosts:
        raise RequestError(400, f"image host {host!r} is not in images.remote_hosts", "remote_image_refused",
                           "messages")
    cap = min(ic.remote_max_bytes, limits.max_image_bytes)
    try:
        async with client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise RequestError(400, f"image URL answered HTTP {resp.status_code}", "image_fetch_failed", "messages")
            if int(resp.headers.get("content-length") or 0) > cap:
                raise RequestError(413, f"image URL's {resp.headers['content-length']} bytes are over the limit "
                                        f"of {cap}", "image_too_large", "messages")
            buf = bytearray()
            async for chunk in resp.aiter_bytes():
                buf += chunk
                if len(buf) > cap:
                    raise RequestError(413, f"image URL's body is over the limit of {cap} bytes",
                                       "image_too_large", "messages")
            return bytes(buf)
    except httpx.HTTPError as e:
        raise RequestError(400, f"image URL could not be fetched: {type(e).__name__}", "image_fetch_failed",
                           "messages") from None


def image_id(data: bytes) -> str:
    """A stable id of an image's bytes (first 16 hex digits of their sha256), the log's ``image_id``."""
    return hashlib.sha256(data).hexdigest()[:16]


def image_ext(im: Image.Image) -> str:
    """The file extension of a decoded image's format ("jpg", "png", ...; "img" when unknown)."""
    return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}.get(
        im.format or "", "img")
