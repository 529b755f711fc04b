"""The model backend interface every candidate model implements, and its registry.

A backend answers a batch of (image, question) pairs and reports, per pair, what the outcome table
records: the answer, the model's own confidence, measured compute seconds and payload bytes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Protocol

from PIL import Image

from .images import encode_jpeg


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


def build(kind: str, **kwargs) -> Backend:
    """Construct a registered backend. Raises ValueError naming the known kinds."""
    if kind not in BACKENDS and kind in _MODULES:
        importlib.import_module(f"{__package__}.{_MODULES[kind]}")  # registers the backend on first use
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; known: {sorted(set(BACKENDS) | set(_MODULES) | {'replay'})}")
    return BACKENDS[kind](**kwargs)


def payload_bytes(image: Image.Image, question: str, quality: int = 90) -> int:
    """Bytes a cloud request carries: the image as JPEG at ``quality`` plus the UTF-8 question."""
    return len(encode_jpeg(image, quality)) + len(question.encode("utf-8"))
