"""On-device router runtime: numpy, pillow and onnxruntime only (no torch).

An artifact folder holds ``router.onnx`` (standardised features -> per-model probability of a correct
answer) and ``manifest.json`` (feature names and normalisation, models with tiers and mean compute
time / payload, decision thresholds and lambdas, deployment profile, versions, the ONNX file's sha256).

Decision rule (``decide``): each model m gets the predicted cost
``-p_m + lambda_latency * L_m / L_ref + lambda_energy * E_m / E_ref`` where L_m, E_m are the model's
expected latency (s) and energy (J) under the current deployment profile and L_ref, E_ref those of the
all-cloud policy; models whose p_m is below their threshold are not eligible (cloud models always are);
the eligible model with the lowest predicted cost is chosen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import features
from .profile import DeploymentProfile

MANIFEST = "manifest.json"
ONNX_FILE = "router.onnx"
# A threshold no predicted P(correct) (a probability, at most 1) ever reaches: the model it is given is
# never eligible. Tuning uses it to deploy "every query to one cloud model" with thresholds alone: that
# model's threshold 0, every other model's NEVER_THRESHOLD.
NEVER_THRESHOLD = 1.01


def decide(probs: np.ndarray, latency_s: np.ndarray, energy_j: np.ndarray, thresholds: np.ndarray,
           lambda_latency: float, lambda_energy: float, ref_latency_s: float, ref_energy_j: float) -> np.ndarray:
    """Route a batch. ``probs`` float (n, K) predicted P(correct); ``latency_s``, ``energy_j`` float (K,)
    or (n, K) expected cost per model; ``thresholds`` float (K,) (0 for cloud models).
    Returns int64 (n,) indices into the model list. Raises ValueError when no model is ever eligible."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if not (thresholds <= 0).any():
        raise ValueError("at least one model (a cloud model) must have threshold 0 so every query has a route")
    cost = (-probs + lambda_latency * np.asarray(latency_s) / ref_latency_s
            + lambda_energy * np.asarray(energy_j) / ref_energy_j)
    cost = np.where(probs >= thresholds, cost, np.inf)
    return cost.argmin(axis=1)


def expected_costs(manifest: dict, profile: DeploymentProfile) -> tuple[np.ndarray, np.ndarray]:
    """Per-model expected latency (s) and energy (J), float64 (K,), from the manifest's mean compute
    time and payload under ``profile``."""
    models = manifest["models"]
    return profile.cost([m["tier"] for m in models], [m["mean_compute_s"] for m in models],
                        [m["mean_payload_bytes"] for m in models])


@dataclass
class Decision:
    """A routing decision: the chosen ``model`` name and its ``tier``; ``scores`` maps each model to
    its predicted probability of answering correctly."""

    model: str
    tier: str
    scores: dict


class Router:
    """A loaded router artifact. Use ``Router.load(folder)`` then ``route(image, question)``."""

    def __init__(self, manifest: dict, session):
        self.manifest = manifest
        self.session = session
        self.models = [m["name"] for m in manifest["models"]]
        self.tiers = [m["tier"] for m in manifest["models"]]
        self.mean = np.asarray(manifest["features"]["mean"], dtype=np.float32)
        self.std = np.asarray(manifest["features"]["std"], dtype=np.float32)
        self.profile = DeploymentProfile.from_dict(manifest["profile"])
        self._costs = expected_costs(manifest, self.profile)  # at the profile's own network figures
        self._thresholds = np.asarray(manifest["decision"]["thresholds"], dtype=np.float64)
        self._input = session.get_inputs()[0].name

    @classmethod
    def load(cls, path: str | Path) -> "Router":
        """Load ``path/manifest.json`` and ``path/router.onnx``. Raises FileNotFoundError when either is
        missing, ValueError when the ONNX file's sha256 differs from the manifest's or the manifest's
        feature version or names differ from this runtime's ``features.FEATURE_VERSION`` /
        ``FEATURE_NAMES``."""
        import onnxruntime as ort

        path = Path(path)
        manifest_path, onnx_path = path / MANIFEST, path / ONNX_FILE
        for p in (manifest_path, onnx_path):
            if not p.is_file():
                raise FileNotFoundError(f"router artifact incomplete: {p} missing (run `router-train export`)")
        manifest = json.loads(manifest_path.read_text())
        missing = [k for k in ("onnx_sha256", "features", "models", "profile", "decision") if k not in manifest]
        if missing:
            raise ValueError(f"{manifest_path}: no {', '.join(missing)}; not a router-training manifest "
                             "(re-export the router with `router-train export`)")
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        if digest != manifest["onnx_sha256"]:
            raise ValueError(f"{onnx_path}: sha256 {digest} does not match the manifest; re-export the router")
        version = manifest["features"].get("version")
        if version != features.FEATURE_VERSION:
            raise ValueError(f"the artifact was trained on other features (version {version}) than this runtime "
                             f"computes (version {features.FEATURE_VERSION}); re-export it with this version of "
                             "router-training")
        if list(manifest["features"].get("names", [])) != list(features.FEATURE_NAMES):
            raise ValueError(f"the artifact's feature names differ from this runtime's (both version {version}); "
                             "the manifest was edited or written by other code: re-export the router")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        return cls(manifest, ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"]))

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """Raw features float (n, F) -> predicted P(correct) float32 (n, K)."""
        x = ((np.atleast_2d(feats) - self.mean) / self.std).astype(np.float32)
        return self.session.run(None, {self._input: x})[0]

    def decide(self, probs: np.ndarray, uplink_mbps: float | None = None, rtt_s: float | None = None) -> np.ndarray:
        """Model indices (n,) for predicted probabilities (n, K); the current uplink (Mbit/s) and
        round trip (s), when given, replace the profile's."""
        d = self.manifest["decision"]
        lat, en = (self._costs if uplink_mbps is None and rtt_s is None
                   else expected_costs(self.manifest, self.profile.with_network(uplink_mbps, rtt_s)))
        return decide(probs, lat, en, self._thresholds, d["lambda_latency"], d["lambda_energy"],
                      d["ref_latency_s"], d["ref_energy_j"])

    def route(self, image: Image.Image | str | Path, question: str, uplink_mbps: float | None = None,
              rtt_s: float | None = None) -> Decision:
        """Decide where one query runs. ``image`` any PIL image or an image file's path (EXIF orientation
        applied first); ``question`` a string. Returns a Decision. (``features.extract`` applies the EXIF
        orientation and converts the mode itself, without copying an RGB image that needs neither.)

        The cloud models' network cost is that of the mean payload measured at collection
        (``manifest["models"][k]["mean_payload_bytes"]``), not this image's size."""
        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                im.load()
                image = im
        probs = self.predict(features.extract(image, question)[None])
        k = int(self.decide(probs, uplink_mbps, rtt_s)[0])
        return Decision(self.models[k], self.tiers[k], dict(zip(self.models, probs[0].tolist())))
