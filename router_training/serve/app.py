"""The gateway as an HTTP server: a Starlette application run by uvicorn (``router-train serve``).

======================== =============================================================================
path                     answer
======================== =============================================================================
POST /v1/chat/completions a chat completion (``stream: true``: server-sent events passed through from the
                         upstream) with the route in ``x-router-*`` headers (``gateway``)
GET /v1/models           "router" and the artifact's models
GET /health              {"status": "ok", ...} (never needs the token: for probes)
GET /metrics             Prometheus text (``prom``)
======================== =============================================================================

With ``server.token_env`` set, every path but ``/health`` needs ``Authorization: Bearer <token>`` (401
otherwise; compared in constant time). The body is read up to ``limits.max_body_bytes`` (413 beyond,
from ``Content-Length`` before reading when it is given). Every error is an OpenAI-style JSON object,
unknown paths and methods included.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
from pathlib import Path

from .config import ServeConfig
from .gateway import Gateway
from .requests import RequestError

log = logging.getLogger(__name__)


def _error(status: int, message: str, code: str, type: str = "invalid_request_error", headers: dict | None = None):
    from starlette.responses import Response

    body = RequestError(status, message, code, type=type).body()
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def create_app(gateway: Gateway, on_ready=None):
    """The Starlette application serving ``gateway`` (started and closed with the app's lifespan);
    ``on_ready()``, when given, is called once the gateway has started (upstream clients open, in-process
    models loaded), just before the server accepts connections."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    cfg = gateway.cfg
    token_env = cfg.server.token_env
    token = os.environ.get(token_env, "") if token_env else ""
    if token_env and not token:
        raise ValueError(f"endpoints.server.token_env: the environment variable {token_env} (the clients' bearer "
                         "token) is not set")
    expected = f"Bearer {token}".encode()

    def authorised(request) -> bool:
        if not token:
            return True
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    def denied():
        return _error(401, "missing or wrong bearer token (Authorization: Bearer ...)", "invalid_api_key",
                      "authentication_error", {"WWW-Authenticate": "Bearer"})

    async def read_body(request) -> bytes:
        cap = cfg.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise RequestError(413, f"request body of {declared} bytes is over the limit of {cap}", "body_too_large")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > cap:
                raise RequestError(413, f"request body is over the limit of {cap} bytes", "body_too_large")
        return bytes(buf)

    async def chat(request):
        if not authorised(request):
            return denied()
        try:
            raw = await read_body(request)
        except RequestError as e:
            reply = gateway.refuse(e, int(request.headers.get("content-length") or 0))
            return Response(reply.body, status_code=reply.status, headers=reply.headers, media_type=reply.media_type)
        reply = await gateway.chat(raw, request.headers)
        if reply.stream is not None:
            return StreamingResponse(reply.stream, status_code=reply.status, headers=reply.headers,
                                     media_type=reply.media_type)
        return Response(reply.body, status_code=reply.status, headers=reply.headers, media_type=reply.media_type)

    async def models(request):
        if not authorised(request):
            return denied()
        return Response(gateway.models_body(), media_type="application/json")

    async def health(request):
        return Response(json.dumps(gateway.health()), media_type="application/json")

    async def metrics(request):
        if not authorised(request):
            return denied()
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def http_error(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await gateway.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await gateway.aclose()

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(artifact: str | Path, endpoints: str | Path, host: str | None = None, port: int | None = None,
          decision_log: str | None = None) -> None:
    """Run the gateway until interrupted: ``artifact`` an export folder, ``endpoints`` its endpoints.yaml;
    ``host`` / ``port`` / ``decision_log`` override the file's ``server`` and ``decision_log.path``.
    Raises ValueError / FileNotFoundError for a bad artifact or endpoints file."""
    import uvicorn

    from .config import LogConfig

    cfg = ServeConfig.load(endpoints)
    if decision_log is not None:
        cfg.decision_log = LogConfig(path=decision_log, questions=cfg.decision_log.questions,
                                     images=cfg.decision_log.images,
                                     shadow_fraction=cfg.decision_log.shadow_fraction)
    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    if not _loopback(host) and not cfg.server.token_env:
        log.warning("serving on %s without a bearer token (server.token_env): anyone who reaches this address "
                    "can use the upstreams", host)
    gateway = Gateway(artifact, cfg)
    where = f"http://{host}:{port}/v1"
    what = f"{gateway.router.manifest.name or artifact} ({', '.join(gateway.models)})"
    loading = [m for m in gateway.models if gateway.upstreams[m].in_process]
    # in-process models load before the server listens (a minute on a first start, while Python compiles
    # the installed packages): say so, and say "ready" only once requests can be answered
    print(f"router-train serve: starting {what}" + (f"; loading the in-process models {', '.join(loading)}"
                                                    if loading else ""), flush=True)

    def ready():
        print(f"router-train serve: {what} ready on {where}; decision log "
              f"{gateway.log.path if gateway.log else 'off'}", flush=True)

    app = create_app(gateway, ready)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
