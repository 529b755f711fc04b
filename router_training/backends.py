"""The model backend interface every candidate model implements, and its registry.

A backend answers a batch of (image, question) pairs and reports, per pair, what the outcome table
records: the answer, the model's own confidence, measured compute seconds and payload bytes.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable, Protocol

from PIL import Image

from .core.images import encode_jpeg
from .core.registry import import_class


@dataclass
class Answer:
    """One model output. ``confidence`` in [0, 1] (the model's probability of its answer);
    ``compute_s`` measured compute time for this pair (s; a batch's time divided evenly);
    ``payload_bytes`` bytes that would be sent off-device (encoded image + UTF-8 question);
    ``error`` empty on success, else why the pair failed (the pair then scores 0);
    ``input_tokens`` / ``output_tokens`` prompt tokens (image tokens included, padding excluded) and
    generated tokens (up to and including EOS), 0 when the backend does not count tokens."""

    text: str
    confidence: float
    compute_s: float
    payload_bytes: int
    error: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


class Backend(Protocol):
    """Answers VQA queries. ``answer`` takes equal-length lists and returns one Answer per pair."""

    name: str

    def answer(self, images: list[Image.Image], questions: list[str]) -> list[Answer]: ...


BACKENDS: dict[str, Callable[..., Backend]] = {}
# backend kind -> module that registers it, imported only when that kind is used (no work at import time)
_MODULES = {"reference": "reference", "transformers": "vlm", "openai": "openai_http"}


def register(kind: str):
    """Class decorator: make a backend constructible by ``build(kind, name=..., **options)``."""
    def deco(cls):
        BACKENDS[kind] = cls
        return cls
    return deco


def resolve(kind: str, model: str | None = None) -> Callable[..., Backend]:
    """The backend class of ``kind``: a registered kind ("reference", "transformers", "openai") or a
    class of your own given as "package.module:ClassName" (imported here). Raises ValueError naming
    ``model``, the string and what failed: an unknown kind, a module that does not import, no such
    attribute, or an attribute that is not a class."""
    where = f"model {model!r}: backend {kind!r}" if model else f"backend {kind!r}"
    if ":" in kind:
        return import_class(kind, where)
    if kind not in BACKENDS and kind in _MODULES:
        importlib.import_module(f"{__package__}.{_MODULES[kind]}")  # registers the backend on first use
    if kind not in BACKENDS:
        raise ValueError(f"{where}: unknown backend; known: {sorted(set(BACKENDS) | set(_MODULES) | {'replay'})} "
                         "or a class of your own as 'package.module:ClassName'")
    return BACKENDS[kind]


def check_options(kind: str, options: dict, model: str) -> None:
    """Check a model's backend ``options`` against its constructor's signature (``resolve(kind)``), the
    ``name`` parameter being the model's name, supplied by the pipeline. Raises ValueError naming the
    model and each unknown key with the allowed ones, or the required parameters ``options`` lacks. A
    constructor taking ``**kwargs`` accepts any key."""
    params = inspect.signature(resolve(kind, model)).parameters
    where = f"model {model!r}: backend {kind!r}"
    keyword = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    any_key = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if "name" not in keyword and not any_key:
        raise ValueError(f"{where}: its constructor takes no 'name' keyword (the model's name, given by the pipeline)")
    if "name" in options:
        raise ValueError(f"{where}: option 'name' is the model's name, set by the pipeline; remove it")
    allowed = sorted(set(keyword) - {"name"})
    unknown = sorted(set(options) - set(keyword))
    if unknown and not any_key:
        raise ValueError(f"{where}: unknown options {unknown}; allowed: {allowed}")
    missing = [n for n, p in keyword.items() if p.default is p.empty and n != "name" and n not in options]
    if missing:
        raise ValueError(f"{where}: missing required options {missing}; allowed: {allowed}")


def build(kind: str, **kwargs) -> Backend:
    """Construct the backend ``resolve(kind)`` (a registered kind or "package.module:ClassName") with
    ``kwargs``: ``name`` (the model's name) and the model's options. Raises ValueError when ``kind``
    cannot be resolved (see ``resolve``)."""
    return resolve(kind, kwargs.get("name"))(**kwargs)


def payload_bytes(image: Image.Image, question: str, quality: int = 90) -> int:
    """Bytes a cloud request carries: the image as JPEG at ``quality`` plus the UTF-8 question."""
    return len(encode_jpeg(image, quality)) + len(question.encode("utf-8"))
