"""Export a trained router as ONNX plus a manifest the runtime loads (no pickles, no torch on device)."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from .core import ood
from .core.features import FEATURE_NAMES, FEATURE_VERSION
from .fit import Probabilities, RouterModule
from .runtime import MANIFEST, ONNX_FILE, Router


def export(module: RouterModule, mean: np.ndarray, std: np.ndarray, spec: dict, decision: dict, out_dir: Path,
           extra: dict | None = None) -> Path:
    """Write ``out_dir/router.onnx`` (input "features" float32 (batch, F) standardised, clipped to
    +-``ood.CLIP`` inside the graph; output "p_correct" float32 (batch, K); dynamic batch axis) and
    ``out_dir/manifest.json``. Returns ``out_dir``.

    ``spec["features"]`` (``fit.RouterDataModule.stats``) supplies the training range ("min", "max") and
    the default out-of-distribution limit ("ood_max_score"), written to the manifest's ``features`` and
    ``ood`` sections; a spec without them exports a router whose decisions carry no OOD score."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = spec.get("features", {})
    onnx_path = out_dir / ONNX_FILE
    net = Probabilities(module.net).eval()
    example = torch.zeros(2, len(FEATURE_NAMES))
    torch.onnx.export(net, (example,), str(onnx_path), input_names=["features"], output_names=["p_correct"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, external_data=False,
                      verbose=False)
    versions = {p: metadata.version(p) for p in ("router-training", "torch", "onnx", "onnxruntime", "numpy")}
    manifest = {
        "format": "router-training/1",
        "features": {"version": FEATURE_VERSION, "names": list(FEATURE_NAMES), "mean": np.asarray(mean).tolist(),
                     "std": np.asarray(std).tolist(), "clip": ood.CLIP,
                     **{k: np.asarray(stats[k], dtype=np.float32).tolist() for k in ("min", "max") if k in stats}},
        # out-of-distribution score (ood.ood_score) above which a decision is flagged, and what then happens
        # ("route": as usual; "cloud": to the cloud); the device may override both (runtime.Router.load)
        "ood": {"max_score": stats.get("ood_max_score"), "policy": "route",
                "max_score_source": f"{ood.OOD_QUANTILE:.0%} quantile of router-val's scores"},
        "models": spec["models"],
        "profile": spec["profile"],
        "decision": {"thresholds": decision["thresholds"], "lambda_latency": decision["lambda_latency"],
                     "lambda_energy": decision["lambda_energy"], "ref_latency_s": spec["ref_latency_s"],
                     "ref_energy_j": spec["ref_energy_j"],
                     # whether tuning met its target, and what was deployed instead when it did not
                     "target_met": bool(decision.get("target_met", True)),
                     "deployed": decision.get("deployed", "router")},
        "versions": {**versions, "python": platform.python_version()},
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        **(extra or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


@torch.inference_mode()
def parity(module: RouterModule, mean: np.ndarray, std: np.ndarray, artifact: Path, x: np.ndarray) -> dict:
    """Compare the torch router with the exported artifact through the runtime on raw features
    float (n, F). Returns ``max_abs_diff`` of probabilities and ``same_decisions`` (bool)."""
    router = Router.load(artifact)
    p_onnx = router.predict(x)
    xs = torch.from_numpy(((x - mean) / std).astype(np.float32))
    p_torch = torch.sigmoid(module(xs)).numpy()
    return {"max_abs_diff": float(np.abs(p_onnx - p_torch).max()),
            "same_decisions": bool((router.decide(p_onnx) == router.decide(p_torch)).all()), "n": len(x)}
