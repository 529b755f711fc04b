"""``endpoints.yaml``: where each model of a router artifact runs, and how the gateway behaves.

A YAML mapping; only ``models`` is required::

    models:                                   # one entry per model of the artifact (manifest "models")
      edge-small:                             # an in-process backend of this project
        backend: reference
        options: {weights: checkpoints/easyvqa/reference/edge-small.safetensors}
      cloud:                                  # an OpenAI-compatible server (vLLM, TGI, llama.cpp, Ollama, ...)
        base_url: http://127.0.0.1:8001/v1
        model: Qwen/Qwen2.5-VL-7B-Instruct    # the upstream's model name (default: the artifact's)
        api_key_env: CLOUD_API_KEY            # the variable's name; the key is never logged or echoed
        timeout_s: 30                         # each network operation (connect, write, each read)
        max_retries: 2                        # timeouts, connection errors, 429 and 5xx
    server: {host: 127.0.0.1, port: 8080, token_env: ROUTER_TOKEN}
    limits: {max_body_bytes: 20000000, max_image_bytes: 10000000, max_image_pixels: 40000000}
    images: {allow_remote: false}
    network: {uplink_mbps: null, rtt_s: null, half_life: 32}
    routing: {escalate_below: null}
    decision_log: {path: decisions.jsonl, images: false}

Relative paths (``weights`` and other ``*path``/``weights`` options, the decision log) are resolved
against the current directory, where ``router-train`` runs and writes ``checkpoints/`` and ``export/``;
``${VAR}`` in them is an environment variable. Every section is a dataclass below; an unknown key is an
error naming its section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import _build, expand_env
from ..openai_http import check_base_url


def _number(where: str, v, low: float = 0.0, strict: bool = True, integer: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and (v > low if strict else v >= low) and (not integer or float(v).is_integer())
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{where} must be {kind} {'>' if strict else '>='} {low:g}, got {v!r}")


@dataclass
class Endpoint:
    """One model's upstream. Either ``base_url`` (an OpenAI-compatible API root such as
    ``http://host:8000/v1``; ``model`` the upstream's model name, default the artifact's model name;
    ``api_key_env`` the name of the variable holding its key) or ``backend`` (a kind registered in
    ``router_training.backends``: ``reference``, ``transformers``, ...; ``options`` its keyword
    arguments, run in-process on a worker thread of its own).

    ``timeout_s`` bounds each network operation (s); ``max_retries`` re-sends after timeouts,
    connection errors, HTTP 429 and 5xx, waiting ``backoff_s * 2**k`` s or the upstream's
    ``Retry-After`` when that is longer but at most ``max_retry_after_s`` (a longer one is not waited
    for: the failure goes to the fallback at once); ``max_connections`` caps the kept-alive pool;
    ``logprobs`` whether the upstream accepts the ``logprobs`` field (escalation asks for it)."""

    name: str = ""
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 30.0
    max_retries: int = 1
    backoff_s: float = 0.1
    max_retry_after_s: float = 2.0
    max_connections: int = 64
    logprobs: bool = True
    backend: str | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        where = f"endpoints.models.{self.name}"
        if (self.base_url is None) == (self.backend is None):
            raise ValueError(f"{where}: give base_url (an OpenAI-compatible server) or backend (an in-process "
                             "backend such as reference), not both or neither")
        if self.base_url is not None:
            check_base_url(self.base_url, where)
            self.base_url = self.base_url.rstrip("/")
        elif self.options and not isinstance(self.options, dict):
            raise ValueError(f"{where}.options must be a mapping, got {self.options!r}")
        _number(f"{where}.timeout_s", self.timeout_s)
        _number(f"{where}.max_retries", self.max_retries, strict=False, integer=True)
        _number(f"{where}.backoff_s", self.backoff_s, strict=False)
        _number(f"{where}.max_retry_after_s", self.max_retry_after_s, strict=False)
        _number(f"{where}.max_connections", self.max_connections, low=1, strict=False, integer=True)
        self.options = dict(self.options or {})
        for k, v in list(self.options.items()):
            if isinstance(v, str) and (k == "weights" or k.endswith("path")):
                self.options[k] = str(Path(expand_env(v, f"{where}.options.{k}")).expanduser().absolute())

    @property
    def in_process(self) -> bool:
        return self.backend is not None


@dataclass
class ServerConfig:
    """Where ``router-train serve`` listens. ``host`` 127.0.0.1 by default (another address exposes the
    gateway beyond this machine: give it ``token_env``); ``token_env`` names the variable holding the
    bearer token clients must send (``Authorization: Bearer <token>``) on every path but ``/health``."""

    host: str = "127.0.0.1"
    port: int = 8080
    token_env: str | None = None

    def __post_init__(self):
        _number("endpoints.server.port", self.port, strict=False, integer=True)


@dataclass
class Limits:
    """Request limits (a request over one gets a 4xx, never a crash): ``max_body_bytes`` of the JSON
    body (413), ``max_image_bytes`` of the decoded image (413), ``max_image_pixels`` width x height read
    from the image header before decoding (413: a decompression bomb is refused before it is
    expanded), ``request_timeout_s`` the most one request may take end to end, fallbacks included
    (then 504)."""

    max_body_bytes: int = 20_000_000
    max_image_bytes: int = 10_000_000
    max_image_pixels: int = 40_000_000
    request_timeout_s: float = 120.0

    def __post_init__(self):
        for k in ("max_body_bytes", "max_image_bytes", "max_image_pixels"):
            _number(f"endpoints.limits.{k}", getattr(self, k), integer=True)
        _number("endpoints.limits.request_timeout_s", self.request_timeout_s)


@dataclass
class ImagesConfig:
    """Remote images: ``allow_remote`` False refuses ``http(s)://`` image URLs (400); True fetches them
    (``remote_hosts``: allowed host names, empty = any), at most ``remote_max_bytes`` within
    ``remote_timeout_s`` s, and the upstream receives the URL as sent."""

    allow_remote: bool = False
    remote_hosts: list = field(default_factory=list)
    remote_max_bytes: int = 10_000_000
    remote_timeout_s: float = 5.0

    def __post_init__(self):
        _number("endpoints.images.remote_max_bytes", self.remote_max_bytes, integer=True)
        _number("endpoints.images.remote_timeout_s", self.remote_timeout_s)


@dataclass
class NetworkConfig:
    """The network figures the decision uses. ``uplink_mbps`` / ``rtt_s`` fixed values (override the
    live estimate; a request's ``x-router-uplink-mbps`` / ``x-router-rtt-s`` headers override both);
    otherwise the estimate from recent cloud calls (``network.NetworkEstimator``: exponentially weighted,
    ``half_life`` calls, used once it has ``min_samples`` calls, forgotten after ``max_age_s`` s without
    one) and, before that, the artifact's deployment profile."""

    uplink_mbps: float | None = None
    rtt_s: float | None = None
    half_life: float = 32.0
    min_samples: int = 8
    max_age_s: float = 300.0

    def __post_init__(self):
        if self.uplink_mbps is not None:
            _number("endpoints.network.uplink_mbps", self.uplink_mbps)
        if self.rtt_s is not None:
            _number("endpoints.network.rtt_s", self.rtt_s, strict=False)
        _number("endpoints.network.half_life", self.half_life)
        _number("endpoints.network.min_samples", self.min_samples, low=2, strict=False, integer=True)
        _number("endpoints.network.max_age_s", self.max_age_s)


@dataclass
class RoutingConfig:
    """``escalate_below``: when an edge model answered a routed, non-streaming request with a confidence
    (exp of the mean token logprob) below this, the best cloud model answers instead
    (``x-router-fallback: low-confidence``); None: never. ``no_image``: the model for requests without an
    image (the router needs one); None: the artifact's always-eligible cloud model."""

    escalate_below: float | None = None
    no_image: str | None = None

    def __post_init__(self):
        if self.escalate_below is not None and not (isinstance(self.escalate_below, (int, float))
                                                    and 0 < self.escalate_below <= 1):
            raise ValueError(f"endpoints.routing.escalate_below must be in (0, 1], got {self.escalate_below!r}")


@dataclass
class LogConfig:
    """The decision log (``decision_log.DecisionLog``): ``path`` a JSONL file (None: no log), one line
    per request; ``questions`` whether the question text is kept (needed to retrain); ``images``
    whether each request's image is saved under ``<path stem>-images/<image_id>.<ext>`` (needed to
    retrain; off by default: images are users' data); ``shadow_fraction`` the share of routed requests
    with an image that every other model also answers, in the background after the reply (rows with
    ``route: "shadow"``): the counterfactual outcomes a router is retrained on (it costs those calls)."""

    path: str | None = None
    questions: bool = True
    images: bool = False
    shadow_fraction: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.shadow_fraction, (int, float)) and 0 <= self.shadow_fraction <= 1):
            raise ValueError(f"endpoints.decision_log.shadow_fraction must be in [0, 1], got {self.shadow_fraction!r}")
        if self.path is not None:
            self.path = str(Path(expand_env(str(self.path), "endpoints.decision_log.path")).expanduser().absolute())


@dataclass
class ServeConfig:
    """The whole ``endpoints.yaml`` (see the module docstring)."""

    models: dict[str, Endpoint]
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: Limits = field(default_factory=Limits)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    decision_log: LogConfig = field(default_factory=LogConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "ServeConfig":
        """Build from a parsed mapping. Raises ValueError on unknown keys, bad values or no models."""
        if not isinstance(d, dict) or not isinstance(d.get("models"), dict) or not d["models"]:
            raise ValueError("endpoints: expected a mapping with `models: {MODEL: {base_url: ...} or {backend: ...}}`")
        sections = {"server": ServerConfig, "limits": Limits, "images": ImagesConfig, "network": NetworkConfig,
                    "routing": RoutingConfig, "decision_log": LogConfig}
        unknown = set(d) - set(sections) - {"models"}
        if unknown:
            raise ValueError(f"endpoints: unknown keys {sorted(unknown)}; allowed: {sorted(['models', *sections])}")
        models = {}
        for name, spec in d["models"].items():
            if not isinstance(spec, dict):
                raise ValueError(f"endpoints.models.{name}: expected a mapping, got {spec!r}")
            models[str(name)] = _build(Endpoint, {**spec, "name": str(name)}, f"endpoints.models.{name}")
        parts = {k: _build(c, d.get(k) or {}, f"endpoints.{k}") for k, c in sections.items()}
        return cls(models=models, **parts)

    @classmethod
    def load(cls, path: str | Path) -> "ServeConfig":
        """Read ``path`` (YAML). Raises FileNotFoundError, ValueError."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"endpoints file {path} not found")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {})

    def check_models(self, models: list[str]) -> None:
        """Raise ValueError unless every artifact model has exactly one endpoint (and no other is given)."""
        missing = [m for m in models if m not in self.models]
        extra = [m for m in self.models if m not in models]
        if missing or extra:
            raise ValueError(f"endpoints: the artifact's models are {models}; "
                             + (f"no endpoint for {missing}" if missing else "")
                             + ("; " if missing and extra else "")
                             + (f"{extra} are not models of the artifact" if extra else ""))
        if self.routing.no_image is not None and self.routing.no_image not in models:
            raise ValueError(f"endpoints.routing.no_image: {self.routing.no_image!r} is not one of {models}")
