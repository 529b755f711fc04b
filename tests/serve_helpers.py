"""Helpers for the gateway tests: a router artifact whose decisions are known, and a gateway served by
uvicorn on a loopback port in a thread.

The artifact (``known_artifact``) is a real export (``export.export``: ONNX + manifest) of a RouterModule
without hidden layers or thumbnail CNN whose weights are set by hand, with features unstandardised
(mean 0, std 1): P(correct) of ``edge-small`` is sigmoid(8 (brightness - 0.5)) (brightness: mean grey /
255, ``features.IMAGE_FEATURES``), of ``cloud`` 0.95 for every query. Its decision: edge threshold 0.6,
lambda_latency 0.2, so under the profile (10 Mbit/s, 50 ms) white and yellow images go to the edge
(P 0.98 and 0.96) and red, green, blue and black ones to the cloud. Its ``network_grid`` makes the edge
model eligible for every query below 5 Mbit/s (threshold 0), where the cloud's latency cost then sends
everything with a sizeable payload to the edge.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from router_training.core.features import FEATURE_NAMES, IMAGE_FEATURES, PIXEL_FEATURES

PROFILE = {"name": "test-lte", "edge_power_w": 10.0, "idle_power_w": 3.0, "radio_tx_power_w": 2.0,
           "uplink_mbps": 10.0, "downlink_mbps": 50.0, "rtt_s": 0.05}
EDGE_ON_PROFILE = ("white", "yellow")  # routed to the edge under the profile; other palette colours: cloud
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "white": (255, 255, 255), "black": (0, 0, 0)}


def known_module():
    """The RouterModule of the module docstring: P(edge-small correct) = sigmoid(8 (brightness - 0.5)),
    P(cloud correct) = 0.95, on unstandardised features."""
    import torch

    from router_training.config import RouterConfig
    from router_training.fit import RouterModule

    rc = RouterConfig(hidden=[], image_embedding=0, members=1)
    module = RouterModule(len(FEATURE_NAMES), 2, dict(rc.__dict__), [0.001, 0.06], [0.01, 0.2], 0.06, 0.2,
                          n_pixels=len(PIXEL_FEATURES)).eval()
    (layer,) = [m for m in module.net.members[0].mlp if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, IMAGE_FEATURES.index("brightness")] = 8.0
        layer.bias.copy_(torch.tensor([-4.0, float(np.log(0.95 / 0.05))]))
    return module


def export_known(out: Path, spec: dict, decision: dict, extra: dict) -> Path:
    """``export.export`` of ``known_module`` with unstandardised features (mean 0, std 1)."""
    from router_training.export import export

    F = len(FEATURE_NAMES)
    return export(known_module(), np.zeros(F, np.float32), np.ones(F, np.float32), spec, decision, out, extra=extra)


def known_artifact(out: Path, grid: bool = True) -> Path:
    """Export the artifact described in the module docstring to ``out``; returns ``out``."""
    spec = {"models": [{"name": "edge-small", "tier": "edge", "mean_compute_s": 0.001, "mean_payload_bytes": 0.0,
                        "compute_source": "measured"},
                       {"name": "cloud", "tier": "cloud", "mean_compute_s": 0.002, "mean_payload_bytes": 3000.0,
                        "compute_source": "measured"}],
            "profile": PROFILE, "ref_latency_s": 0.06, "ref_energy_j": 0.2}
    decision = {"thresholds": [0.6, 0.0], "lambda_latency": 0.2, "lambda_energy": 0.0}
    extra = {"name": "known"}
    if grid:
        extra["network_grid"] = [{"uplink_mbps": u, "thresholds": [0.0 if u < 5 else 0.6, 0.0], "lambda_latency": 0.2,
                                  "lambda_energy": 0.0} for u in (1.0, 2.0, 5.0, 10.0, 20.0)]
    return export_known(out, spec, decision, extra)


def solid(colour: str, size=(64, 64), fmt: str = "PNG", noise: int = 0, seed: int = 0) -> bytes:
    """A solid image of a palette colour as ``fmt`` bytes; ``noise`` > 0 adds uniform noise of that many
    grey levels (so JPEG sizes differ between seeds)."""
    a = np.tile(np.array(COLOURS[colour], np.int16), (size[1], size[0], 1))
    if noise:
        a = a + np.random.default_rng(seed).integers(-noise, noise + 1, a.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def messages(question: str, image: bytes | None = None, mime: str = "image/png") -> list:
    content = [{"type": "text", "text": question}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": data_url(image, mime)}})
    return [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": content}]


def endpoints(edge_url: str | None, cloud_url: str | None, **sections) -> dict:
    """An endpoints mapping with both models behind the given servers (fast timeouts, one retry)."""
    fast = {"timeout_s": 1.0, "max_retries": 1, "backoff_s": 0.01}
    models = {"edge-small": {"base_url": edge_url, "model": "edge-vlm", **fast},
              "cloud": {"base_url": cloud_url, "model": "cloud-vlm", **fast}}
    return {"models": models, **sections}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A Gateway served by uvicorn on 127.0.0.1 in a thread (``with Served(gateway) as g: g.base_url``)."""

    def __init__(self, gateway):
        import uvicorn

        from router_training.serve.app import create_app

        self.gateway = gateway
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(gateway), log_level="warning", access_log=False,
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


_ARTIFACTS: dict = {}


def cached_artifact(tmp_path_factory, grid: bool = True) -> Path:
    """``known_artifact`` exported once per test process (an ONNX export takes seconds)."""
    if grid not in _ARTIFACTS:
        _ARTIFACTS[grid] = known_artifact(tmp_path_factory.mktemp("artifact") / "known", grid=grid)
    return _ARTIFACTS[grid]


def gateway(artifact: Path, spec: dict):
    """A Gateway over ``artifact`` with the endpoints mapping ``spec``."""
    from router_training.serve.config import ServeConfig
    from router_training.serve.gateway import Gateway

    return Gateway(artifact, ServeConfig.from_dict(spec))


def openai_client(base_url: str, api_key: str = "unused"):
    """The official client, without its own retries (every request is sent exactly once)."""
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)


def metric(text: str, name: str, **labels) -> float:
    """One sample's value in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    line = f"{name}{{{want}}} " if labels else f"{name} "
    for row in text.splitlines():
        if row.startswith(line):
            return float(row[len(line):])
    return 0.0
