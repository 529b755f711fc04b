"""One chat request end to end: read the router's inputs, decide, call, fall back, answer, log.

``Gateway(artifact, cfg)`` holds the loaded router, one upstream per model (``upstream``), the network
estimator, the metrics and the decision log; ``await gateway.start()`` in the event loop that serves,
then ``await gateway.chat(body_bytes, headers)`` per request returns a ``Reply`` (status, headers, and a
JSON body or an async iterator of server-sent-event bytes). Both the HTTP server (``app``) and the
embedded ``RoutedClient`` (``client``) run on it.

Per request:

1. ``model`` "router" routes; a model of the artifact bypasses the router (no fallback: the caller
   chose); anything else is 404. The first image and the last user text are the router's inputs
   (``requests``); the image is checked under the limits and routed (features + ONNX,
   ``Router.route``) with the current network figures (``network``) and this request's body size as the
   cloud payload: on the event loop for bodies up to ``INLINE_BYTES``, on a worker thread above.
2. The chosen model is called. A failure that another model may answer (``UpstreamError.fallback``)
   goes to the other tier's models, most likely correct first, then the same tier's
   (``x-router-fallback: cloud-error`` or ``edge-error``). With ``routing.escalate_below``, a
   non-streaming edge answer whose confidence is lower goes to the cloud (``low-confidence``). A stream
   can fall back until its first byte; a stream cut later ends with an error event.
3. The reply carries the route in ``x-router-*`` headers: ``request-id``, ``route``, ``model`` (the one
   that answered), ``tier``, ``decision`` (the router's first choice), ``fallback`` (``none`` or the
   reason), ``p-correct`` (JSON {model: P(correct)}), ``decision-ms``, ``uplink-mbps``, ``rtt-s``,
   ``network`` (their source), ``payload-bytes``, and the router's ``ood-score`` / ``ood`` when the
   artifact records its training range. Errors are OpenAI-style objects with the same
   request id. A successful non-streaming cloud call over HTTP feeds the network estimator.
4. One decision-log row per request (``decision_log``), written before the reply's last byte.

No request is left without an answer: each has ``limits.request_timeout_s`` in all (then 504), every
upstream operation its ``timeout_s``, and an unexpected exception is a 500 error object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Mapping

from PIL import Image

from ..core import features, images
from . import upstream as up
from .config import ServeConfig
from .decision_log import SPLIT, DecisionLog
from .network import NetworkEstimator
from .prom import Metrics
from .streaming import relay
from .requests import (RequestError, decode_base64, fetch_remote, image_ext, image_id, image_source, number_header,
                       open_image, parse_body)

log = logging.getLogger(__name__)
ROUTER_MODEL = "router"
# requests up to this many bytes are decoded and routed on the event loop (about 1-2 ms for a 224 px JPEG):
# a worker thread's wake-up costs more than that on a busy machine; larger images go to the thread pool,
# so that decoding a camera frame never stalls the other requests
INLINE_BYTES = 256_000


@dataclass
class Reply:
    """What the gateway answers: ``status``, ``headers``, and ``body`` (JSON bytes) or ``stream`` (an async
    iterator of server-sent-event bytes, already accepted by the upstream)."""

    status: int
    headers: dict
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None

    @property
    def media_type(self) -> str:
        return "text/event-stream" if self.stream is not None else "application/json"


class Gateway:
    """See the module docstring. ``artifact`` an export folder (or pass a loaded ``router``)."""

    def __init__(self, artifact: str | Path | None, cfg: ServeConfig, router=None):
        from ..runtime import Router

        self.router = router if router is not None else Router.load(artifact)
        self.router.max_pixels = cfg.limits.max_image_pixels  # the runtime's own budget: the gateway's limit
        self.cfg = cfg
        cfg.check_models(self.router.models)
        self.models = list(self.router.models)
        self.tier = dict(zip(self.models, self.router.tiers))
        self.upstreams = {m: up.build(cfg.models[m]) for m in self.models}
        profile = self.router.profile
        self.estimator = NetworkEstimator(cfg.network.uplink_mbps or profile.uplink_mbps, cfg.network.half_life,
                                          cfg.network.min_samples, cfg.network.max_age_s)
        # the part of a cloud call that is neither round trip nor upload, under the profile (s)
        reply_s = profile.response_bytes * 8.0 / (profile.downlink_mbps * 1e6)
        self._fixed_s = {m.name: m.mean_compute_s * profile.cloud_compute_scale + reply_s for m in self.router.cost.models}
        always = [m for m, t in zip(self.models, self.router.rule.thresholds) if t <= 0]
        self.no_image_model = cfg.routing.no_image or (always[0] if always else self.models[-1])
        self.metrics = Metrics()
        self.log = DecisionLog(cfg.decision_log) if cfg.decision_log.path else None
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="route")
        self._remote = None
        self._background: set[asyncio.Task] = set()
        self._artifact = self.router.manifest.name

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the upstreams' clients and build the in-process backends (in this event loop)."""
        await asyncio.gather(*(u.start() for u in self.upstreams.values()))
        if self.cfg.images.allow_remote:
            import httpx

            self._remote = httpx.AsyncClient(timeout=httpx.Timeout(self.cfg.images.remote_timeout_s),
                                             trust_env=False, follow_redirects=False)
        self._publish_network()

    async def aclose(self) -> None:
        """Wait for shadow calls, close the clients and the log."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(u.aclose() for u in self.upstreams.values()), return_exceptions=True)
        if self._remote is not None:
            await self._remote.aclose()
        if self.log is not None:
            self.log.close()
        self._pool.shutdown(wait=False)

    # -- small endpoints ----------------------------------------------------------------------------------

    def models_body(self) -> bytes:
        """``GET /v1/models``: "router" and every model of the artifact (``owned_by`` its tier)."""
        created = int(time.time())
        data = [{"id": ROUTER_MODEL, "object": "model", "created": created, "owned_by": "router-training"}]
        data += [{"id": m, "object": "model", "created": created, "owned_by": self.tier[m]} for m in self.models]
        return json.dumps({"object": "list", "data": data}).encode()

    def health(self) -> dict:
        return {"status": "ok", "artifact": self._artifact, "models": dict(self.tier),
                "decision_log": str(self.log.path) if self.log else None}

    def network(self, headers: Mapping | None = None) -> tuple[float, float, str]:
        """(uplink Mbit/s, round trip s, source) for the next decision: a request header
        (``x-router-uplink-mbps`` / ``x-router-rtt-s``), else ``network`` in the config, else the live
        estimate, else the artifact's profile; ``source`` names where each came from ("a/b" when the two
        differ). Raises RequestError 400 for a header that is not a valid number."""
        headers = headers or {}
        est = self.estimator.estimate()
        prof = self.router.profile
        picks = []
        for hdr, conf, live, prior, positive in (
                ("x-router-uplink-mbps", self.cfg.network.uplink_mbps, est and est.uplink_mbps, prof.uplink_mbps, True),
                ("x-router-rtt-s", self.cfg.network.rtt_s, est and est.rtt_s, prof.rtt_s, False)):
            h = number_header(headers, hdr, positive)
            picks.append((h, "header") if h is not None else (conf, "config") if conf is not None
                         else (live, "estimate") if live is not None else (prior, "profile"))
        (uplink, us), (rtt, rs) = picks
        return float(uplink), float(rtt), us if us == rs else f"{us}/{rs}"

    def _publish_network(self) -> None:
        uplink, rtt, source = self.network()
        est = self.estimator.estimate()
        self.metrics.set("router_network_uplink_mbps", uplink)
        self.metrics.set("router_network_rtt_seconds", rtt)
        self.metrics.set("router_network_estimate_samples", est.samples if est else 0)
        for s in ("config", "estimate", "profile"):
            self.metrics.set("router_network_source", float(s in source.split("/")), source=s)

    # -- one request --------------------------------------------------------------------------------------

    async def chat(self, raw: bytes, headers: Mapping) -> Reply:
        """Answer one ``POST /v1/chat/completions`` body (``headers``: lower-case names). Never raises."""
        t0 = time.perf_counter()
        row = self._new_row(len(raw))
        try:
            if hasattr(asyncio, "timeout"):  # Python >= 3.11: no extra task per request
                async with asyncio.timeout(self.cfg.limits.request_timeout_s):
                    reply = await self._chat(raw, headers, row, t0)
            else:
                reply = await asyncio.wait_for(self._chat(raw, headers, row, t0), self.cfg.limits.request_timeout_s)
        except RequestError as e:
            reply = self._error(e, row)
        except asyncio.TimeoutError:
            reply = self._error(RequestError(504, f"no answer within {self.cfg.limits.request_timeout_s:g} s "
                                                  "(limits.request_timeout_s)", "timeout", type="upstream_error"), row)
        except Exception as e:  # noqa: BLE001 - a bug must cost one request an error object, not the gateway
            log.exception("request %s failed", row["request_id"])
            reply = self._error(RequestError(500, f"internal error ({type(e).__name__})", "internal_error",
                                             type="server_error"), row)
        if reply.stream is None:
            self._finish(row, reply.status, t0)
        return reply

    def _new_row(self, payload_bytes: int) -> dict:
        rid = uuid.uuid4().hex
        self.metrics.inc("router_in_flight")
        return {"sample_id": rid, "image_id": "", "split": SPLIT, "model": "", "tier": "", "answer": "", "score": None,
                "confidence": None, "compute_s": None, "payload_bytes": payload_bytes, "error": "", "request_id": rid,
                "time": time.time(), "route": "", "requested": "", "decision": "", "fallback": "", "p_correct": {},
                "decision_s": None, "latency_s": None, "status": None, "stream": False, "uplink_mbps": None,
                "rtt_s": None, "network_source": "", "attempts": [], "features_version": features.FEATURE_VERSION}

    def refuse(self, e: RequestError, payload_bytes: int = 0) -> Reply:
        """The error reply (and log row) of a request refused before its body was read (e.g. too large)."""
        t0 = time.perf_counter()
        row = self._new_row(payload_bytes)
        reply = self._error(e, row)
        self._finish(row, reply.status, t0)
        return reply

    def _error(self, e: RequestError, row: dict) -> Reply:
        row["error"] = row["error"] or f"{e.code}: {e.message}"
        return Reply(e.status, self._route_headers(row), json.dumps(e.body()).encode())

    def _finish(self, row: dict, status: int, t0: float) -> None:
        row["status"] = status
        row["latency_s"] = time.perf_counter() - t0
        m = self.metrics
        if status == 200 and row["model"] and not row["error"]:
            m.inc("router_requests_total", model=row["model"], tier=row["tier"], route=row["route"])
            m.observe("router_upstream_seconds", row["compute_s"] or 0.0, model=row["model"])
        else:  # an error object, or a stream cut after its first byte ("stream")
            m.inc("router_request_errors_total", status="stream" if status == 200 else str(status))
        if row["fallback"]:
            m.inc("router_fallbacks_total", reason=row["fallback"])
        if row["decision_s"] is not None:
            m.observe("router_decision_seconds", row["decision_s"])
        m.observe("router_request_seconds", row["latency_s"], route=row["route"] or "none")
        m.inc("router_in_flight", -1)
        if self.log is not None:
            try:
                self.log.write(row)
            except OSError:
                log.exception("decision log: could not write request %s", row["request_id"])

    def _route_headers(self, row: dict) -> dict:
        h = {"x-router-request-id": row["request_id"], "x-router-route": row["route"] or "none",
             "x-router-model": row["model"], "x-router-tier": row["tier"], "x-router-decision": row["decision"],
             "x-router-fallback": row["fallback"] or "none", "x-router-payload-bytes": str(row["payload_bytes"])}
        if row["p_correct"]:
            h["x-router-p-correct"] = json.dumps({k: round(v, 4) for k, v in row["p_correct"].items()})
        if row["decision_s"] is not None:
            h["x-router-decision-ms"] = f"{1e3 * row['decision_s']:.3f}"
        if row.get("ood_score") is not None:
            h["x-router-ood-score"] = f"{row['ood_score']:.4f}"
            h["x-router-ood"] = "true" if row["ood"] else "false"
        if row["uplink_mbps"] is not None:
            h.update({"x-router-uplink-mbps": f"{row['uplink_mbps']:.4g}", "x-router-rtt-s": f"{row['rtt_s']:.4g}",
                      "x-router-network": row["network_source"]})
        return h

    async def _chat(self, raw: bytes, headers: Mapping, row: dict, t0: float) -> Reply:
        loop = asyncio.get_running_loop()
        limits = self.cfg.limits
        inputs = parse_body(raw, limits) if len(raw) < 65536 else await loop.run_in_executor(
            self._pool, parse_body, raw, limits)
        row["requested"], row["stream"] = inputs.model, inputs.stream
        if self.log is not None and self.cfg.decision_log.questions:
            row["question"] = inputs.question
        routed = inputs.model == ROUTER_MODEL
        if not routed and inputs.model not in self.tier:
            raise RequestError(404, f"model {inputs.model!r} does not exist here; GET /v1/models lists \"router\" and "
                                    f"{self.models}", "model_not_found", "model")
        uplink, rtt, source = self.network(headers)
        row.update(uplink_mbps=uplink, rtt_s=rtt, network_source=source)
        source_kind, ref = image_source(inputs.image_url) if inputs.image_url else (None, None)
        data = await fetch_remote(self._remote, ref, self.cfg.images, limits) if source_kind == "remote" else None

        def prepare():
            img_bytes = decode_base64(ref, limits) if source_kind == "data" else data
            if img_bytes is None:
                image = None
            else:  # the header is checked here; decoded in full only for an in-process model
                image = open_image(img_bytes, limits, load=any(self.upstreams[m].in_process for m in self.models))
            saved = self.log.save_image(image_id(img_bytes), img_bytes, image_ext(image)) \
                if self.log is not None and image is not None else None
            t = time.perf_counter()
            decision = None
            if routed and image is not None:
                # the image opened above, or the bytes of a JPEG that ``images.load`` decodes at reduced scale
                src = image if images.reduction(image.size) == 1 or image.format not in ("JPEG", "MPO") else img_bytes
                try:
                    decision = self.router.route(src, inputs.question, uplink, rtt, inputs.payload_bytes)
                except features.QuestionError as e:  # a question the router's rule refuses
                    raise RequestError(400, f"the router cannot read this question: {e}", "invalid_question",
                                       "messages") from None
                except (OSError, ValueError, Image.DecompressionBombError) as e:
                    raise RequestError(400, f"image could not be decoded: {type(e).__name__}: {e}", "invalid_image",
                                       "messages") from None
            return img_bytes, image, saved, decision, time.perf_counter() - t

        if inputs.image_url is None or len(raw) <= INLINE_BYTES:  # a thread hop costs more than the work
            img_bytes, image, saved, decision, decide_s = prepare()
        else:
            img_bytes, image, saved, decision, decide_s = await loop.run_in_executor(self._pool, prepare)
        if img_bytes is not None:
            row["image_id"] = image_id(img_bytes)
        if saved:
            row["image_file"] = saved
        if decision is not None:
            row.update(route="router", decision=decision.model, p_correct=decision.scores, decision_s=decide_s)
            if getattr(decision, "ood_score", None) is not None:  # the router's out-of-distribution check
                row.update(ood_score=decision.ood_score, ood=bool(decision.ood))
            if getattr(decision, "warnings", None):
                row["warnings"] = list(decision.warnings)
            first = decision.model
        elif routed:
            row.update(route="no-image", decision=self.no_image_model)
            first = self.no_image_model
        else:
            row["route"] = "direct"
            first = inputs.model
        order = self._candidates(first, row["p_correct"]) if routed else [first]
        if inputs.stream:
            return await self._stream(inputs, image, order, row, t0)
        return await self._complete(inputs, image, order, row, routed)

    def _candidates(self, first: str, scores: dict) -> list[str]:
        """``first``, then the other tier's models, then the rest of its own tier, each most likely
        correct first (manifest order without scores)."""
        def key(m):
            return -scores.get(m, 0.0)
        others = [m for m in self.models if m != first]
        return [first, *sorted([m for m in others if self.tier[m] != self.tier[first]], key=key),
                *sorted([m for m in others if self.tier[m] == self.tier[first]], key=key)]

    def _body(self, name: str, inputs, logprobs: bool) -> bytes:
        u = self.upstreams[name]
        if u.in_process:
            return b""
        body = {**inputs.body, "model": u.upstream_model}
        if logprobs:
            body["logprobs"] = True
        return json.dumps(body, ensure_ascii=False).encode()

    async def _first(self, order: list[str], row: dict, call, escalating: bool = False):
        """``(name, await call(name))`` for the first model of ``order`` that answers. An upstream failure
        another model may answer (``UpstreamError.fallback``) goes on to the next; any other, or the last
        model's, raises the request's error (``_all_failed``). ``escalating``: every failure goes on to the
        next model, and None when none answers (the low-confidence answer stands)."""
        last = None
        for name in order:
            try:
                return name, await call(name)
            except up.UpstreamError as e:
                last = e
                row["attempts"].append({"model": name, "error": f"{e.kind}: {e.detail}"})
                self.metrics.inc("router_upstream_failures_total", model=name, kind=e.kind)
                if e.fallback and not escalating and not row["fallback"] and row["route"] != "direct":
                    row["fallback"] = f"{self.tier[name]}-error"
                if not (e.fallback or escalating):
                    break
        if escalating:
            return None
        raise self._all_failed(row, last)

    def _all_failed(self, row: dict, last: up.UpstreamError | None) -> RequestError:
        if last is not None and not last.fallback:  # the client's request: pass the upstream's status on
            row["error"] = f"{last.kind}: {last.detail}"
            return RequestError(last.status or 400, f"{row['attempts'][-1]['model']} refused the request: {last.detail}",
                                last.kind, type="invalid_request_error")
        tried = "; ".join(f"{a['model']}: {a['error']}" for a in row["attempts"])
        row["error"] = f"upstream_failed: {tried}"
        return RequestError(502, f"no model could answer: {tried}", "upstream_failed", type="upstream_error")

    def _answered(self, row: dict, name: str, seconds: float, conf: float, text: str) -> None:
        row.update(model=name, tier=self.tier[name], compute_s=seconds, answer=text,
                   confidence=None if math.isnan(conf) else conf, error="")
        if row["fallback"] and name == row["decision"]:
            row["fallback"] = ""

    def _completed(self, row: dict, name: str, body: bytes, reply: dict, seconds: float) -> None:
        """``name``'s non-streaming ``reply`` answers the request; a cloud call over HTTP feeds the network
        estimator."""
        choice = reply["choices"][0]
        self._answered(row, name, seconds, up.confidence(choice), up.answer_text(choice.get("message")))
        if not self.upstreams[name].in_process and self.tier[name] == "cloud":
            self.estimator.add(len(body), seconds, self._fixed_s[name])
            self._publish_network()

    async def _complete(self, inputs, image, order: list[str], row: dict, routed: bool) -> Reply:
        esc = self.cfg.routing.escalate_below

        async def call(name):  # logprobs from an edge model when its confidence may escalate the request
            lp = bool(esc is not None and routed and self.tier[name] == "edge" and self.cfg.models[name].logprobs)
            body = self._body(name, inputs, lp)
            return lp, body, await self.upstreams[name].complete(body, inputs, image, lp)

        name, (want_lp, body, (reply_data, reply, seconds, _)) = await self._first(order, row, call)
        self._completed(row, name, body, reply, seconds)
        if want_lp and not inputs.body.get("logprobs"):  # asked for escalation only: not the client's
            for ch in reply["choices"]:
                ch.pop("logprobs", None)
            reply_data = json.dumps(reply).encode()
        conf = row["confidence"]
        if want_lp and conf is not None and conf < esc:  # the first cloud model that answers replaces it
            clouds = [m for m in order[order.index(name) + 1:] if self.tier[m] == "cloud"]
            escalated = await self._first(clouds, row, call, escalating=True)
            if escalated is not None:
                row["attempts"].append({"model": name, "error": f"low_confidence: {conf:.4f}"})
                name, (_, body, (reply_data, reply, seconds, _)) = escalated
                self._completed(row, name, body, reply, seconds)
                row["fallback"] = "low-confidence"
        self._maybe_shadow(inputs, image, row)
        return Reply(200, self._route_headers(row), reply_data)

    async def _stream(self, inputs, image, order: list[str], row: dict, t0: float) -> Reply:
        def call(name):
            return self.upstreams[name].open_stream(self._body(name, inputs, False), inputs, image)

        name, (stream, _) = await self._first(order, row, call)
        self._answered(row, name, stream.seconds, math.nan, "")
        done = t0 + self.cfg.limits.request_timeout_s
        return Reply(200, self._route_headers(row),
                     stream=relay(stream, row, done, lambda: self._finish(row, 200, t0), self.upstreams[name].redact))

    # -- shadow calls ---------------------------------------------------------------------------------------

    def _maybe_shadow(self, inputs, image, row: dict) -> None:
        frac = self.cfg.decision_log.shadow_fraction
        if self.log is None or not frac or row["route"] != "router" or image is None or random.random() >= frac:
            return
        task = asyncio.get_running_loop().create_task(self._shadow(inputs, image, row))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow(self, inputs, image, row: dict) -> None:
        """Ask every model that did not answer ``row``'s request, logging one ``route: "shadow"`` row each."""
        async def one(name):
            t = time.perf_counter()
            shadow = {**row, "route": "shadow", "model": name, "tier": self.tier[name], "answer": "", "confidence": None,
                      "compute_s": None, "error": "", "fallback": "", "attempts": [], "stream": False}
            try:
                _, reply, seconds, _ = await self.upstreams[name].complete(self._body(name, inputs, False), inputs,
                                                                           image, False)
                choice = reply["choices"][0]
                conf = up.confidence(choice)
                shadow.update(answer=up.answer_text(choice.get("message")), compute_s=seconds,
                              confidence=None if math.isnan(conf) else conf)
            except up.UpstreamError as e:
                shadow["error"] = f"{e.kind}: {e.detail}"
            shadow.update(latency_s=time.perf_counter() - t, status=200 if not shadow["error"] else 502)
            self.log.write(shadow)

        await asyncio.gather(*(one(m) for m in self.models if m != row["model"]), return_exceptions=True)
