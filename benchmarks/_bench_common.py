"""Shared helpers of the benchmarks in this folder (not a benchmark itself): synthetic router data with
the real feature width, synthetic photo-like images, a cost spec on a shipped deployment profile, and
timing. Scripts import it as ``_bench_common`` (Python puts the script's folder on ``sys.path``)."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PROFILE = REPO / "configs" / "profiles" / "jetson_orin_lte.yaml"

# Three candidate models, as in a typical run: two edge VLMs and one cloud VLM. Mean compute seconds
# and payload are plausible magnitudes only; they set the decision rule's cost prior, not any timing.
MODELS = ({"name": "edge-small", "tier": "edge", "compute_s": 0.6, "payload_bytes": 0.0},
          {"name": "edge-large", "tier": "edge", "compute_s": 1.5, "payload_bytes": 0.0},
          {"name": "cloud", "tier": "cloud", "compute_s": 0.4, "payload_bytes": 60_000.0})


def profile():
    """The Jetson Orin Nano + LTE deployment profile shipped in configs/profiles/."""
    import yaml

    from router_training.core.profile import DeploymentProfile

    return DeploymentProfile.from_dict(yaml.safe_load(PROFILE.read_text()))


def synthetic_split(n: int, seed: int = 0, width: int | None = None):
    """A ``core.splits.SplitArrays`` of ``n`` rows: x float32 (n, ``width``; default len(FEATURE_NAMES)), 3 models
    (MODELS). Scores are Bernoulli draws from a logistic model of the features (the cloud model most
    accurate); latency / energy come from the deployment profile with +-30% jitter on compute time."""
    from router_training.core.features import FEATURE_NAMES
    from router_training.core.splits import SplitArrays

    rng = np.random.default_rng(seed)
    f, k = width or len(FEATURE_NAMES), len(MODELS)
    x = rng.normal(size=(n, f)).astype(np.float32)
    w = np.random.default_rng(1234).normal(scale=0.5, size=(f, k))  # same "truth" for every split
    logits = x @ w + np.array([0.0, 0.5, 1.5])
    score = (rng.random((n, k)) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float64)
    compute = np.array([m["compute_s"] for m in MODELS]) * rng.uniform(0.7, 1.3, size=(n, k))
    payload = np.array([m["payload_bytes"] for m in MODELS]) * rng.uniform(0.5, 1.5, size=(n, k))
    lat, en = profile().cost(np.array([m["tier"] for m in MODELS]), compute, payload)
    conf = rng.random((n, k))
    return SplitArrays([f"s{i}" for i in range(n)], x, score, lat, en, conf)


def synthetic_spec() -> dict:
    """A ``fit.cost_spec``-shaped dict for MODELS on the shipped profile (reference: the cloud model)."""
    prof = profile()
    models = [{"name": m["name"], "tier": m["tier"], "mean_compute_s": m["compute_s"],
               "mean_payload_bytes": m["payload_bytes"]} for m in MODELS]
    lat, en = prof.cost([m["tier"] for m in MODELS], [m["compute_s"] for m in MODELS],
                        [m["payload_bytes"] for m in MODELS])
    cloud = next(i for i, m in enumerate(MODELS) if m["tier"] == "cloud")
    return {"models": models, "profile": prof.to_dict(), "ref_latency_s": float(lat[cloud]),
            "ref_energy_j": float(en[cloud])}


def synthetic_image(size: int, seed: int = 0) -> Image.Image:
    """A size x size RGB image with photo-like statistics: a smooth colour gradient, random filled
    shapes and lines, a little blur and Gaussian sensor noise (sigma 4 grey levels). Pure noise would
    make JPEG encoding (one of the features) unrealistically slow; flat colour, unrealistically fast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    c0, c1, c2 = (rng.uniform(0, 255, 3) for _ in range(3))
    base = (c0[None, None] * (1 - xx[..., None]) * (1 - yy[..., None]) + c1[None, None] * xx[..., None]
            + c2[None, None] * yy[..., None] * (1 - xx[..., None]))
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.uniform(0, size, 2)
        w, h = rng.uniform(size / 16, size / 3, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (x0, y0, x0 + w, y0 + h)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    for _ in range(8):
        pts = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=max(1, size // 100))
    im = im.filter(ImageFilter.GaussianBlur(radius=max(0.5, size / 400)))
    arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 4.0, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


QUESTIONS = (
    "What color is the car on the left?",
    "How many people are standing near the bus?",
    "Is there a dog in the picture?",
    "What does the sign above the door say?",
    "Which animal is bigger than the other?",
    "Why is the man holding an umbrella?",
    "Where is the red ball?",
    "Are the lights not turned on?",
)


def time_calls(fn, reps: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def interleaved(fns: dict, reps: dict, rounds: int, warmup: int = 2, pause_s: float = 0.05) -> dict:
    """Wall seconds per call of each ``fns[name]()``, timed in ``rounds`` alternating blocks of
    ``reps[name]`` calls, so that a slow spell of a shared machine falls on every function alike and the
    ratio of their medians stays fair. Each block starts with ``warmup`` untimed calls after a pause of
    ``pause_s``: the previous block's torch/OpenMP threads keep spinning for a moment after their work
    and its data evicts the next function's from the caches, which would bill one function for
    another's. name -> list of seconds."""
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(pause_s)
            out[name] += time_calls(fn, reps[name], warmup)
    return out


def med(xs) -> float:
    return float(statistics.median(xs))


def spread(xs) -> str:
    """'min..max' of a list of seconds, in ms."""
    return f"{1e3 * min(xs):.2f}..{1e3 * max(xs):.2f}"


def machine_line() -> str:
    import platform

    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.2f}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")
