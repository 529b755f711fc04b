"""The inference runtime that runs the route: an OpenAI-compatible routing gateway.

``router-train serve --artifact export/NAME --endpoints endpoints.yaml`` serves
``POST /v1/chat/completions`` (plain and ``stream: true``), ``GET /v1/models``, ``GET /health`` and
``GET /metrics`` (Prometheus text). Each request with ``model: "router"`` is routed by the exported
router (its first image and last user text are the inputs; the decision uses the live network estimate
and this request's own payload size) to the model the artifact chose, falls back to the other tier when
that model fails, and is appended to a decision log. A concrete model name bypasses the router.

Modules (nothing is imported or started until used):

- ``config``: ``endpoints.yaml`` (``ServeConfig``): an upstream per model (an OpenAI-compatible URL or an
  in-process backend of this project), limits, network overrides, decision log, auth;
- ``requests``: what a chat request gives the router (first image, last user text, payload bytes) and
  the image limits;
- ``upstream``: calling one model (``httpx`` for URLs, a worker thread for in-process backends), with
  retries, timeouts and failure kinds;
- ``network``: the live uplink / round-trip estimate from recent cloud calls;
- ``decision_log``: the JSONL log of every request, in the outcome-table schema as far as it applies;
- ``prom``: the counters and histograms ``/metrics`` prints;
- ``gateway``: one request end to end (route, call, fall back, log): ``Gateway``;
- ``app``: the Starlette application and ``serve`` (uvicorn);
- ``client``: ``RoutedClient``, the same without a server, for apps.

Needs the ``serve`` extra (``pip install 'router-training[serve]'``: starlette, uvicorn, httpx) on top of
the runtime's numpy, pillow and onnxruntime; no torch unless a model is an in-process backend that needs
it (the easy-VQA stand-ins do).
"""

from __future__ import annotations


def __getattr__(name: str):
    """``from router_training.serve import RoutedClient, Gateway, ServeConfig`` (imported on first use)."""
    if name == "RoutedClient":
        from .client import RoutedClient

        return RoutedClient
    if name == "Gateway":
        from .gateway import Gateway

        return Gateway
    if name == "ServeConfig":
        from .config import ServeConfig

        return ServeConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
