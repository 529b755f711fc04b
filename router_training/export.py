"""Export a trained router as ONNX plus a manifest the runtime loads (no pickles, no torch on device)."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from .core import ood
from .core.decision import CostSpec, DecisionRule
from .core.manifest import FeatureStats, Manifest
from .core.features import FEATURE_NAMES, FEATURE_VERSION
from .fit import RouterModule
from .nets import RouterNet
from .runtime import MANIFEST, ONNX_FILE, Router


def write_onnx(net: RouterNet, path: Path) -> Path:
    """``net.exportable()`` (the default network's is ``nets.thumbnail_cnn.FusedEnsemble``) as an ONNX file
    at ``path``: input "features" float32 (batch, F) standardised (F = len(FEATURE_NAMES)), output "p_correct" float32 (batch, K), dynamic batch axis. Returns ``path``."""
    example = torch.zeros(2, len(FEATURE_NAMES))
    torch.onnx.export(net.exportable().eval(), (example,), str(path), input_names=["features"],
                      output_names=["p_correct"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True,
                      external_data=False, verbose=False)
    return path


def export(module: RouterModule, mean: np.ndarray, std: np.ndarray, spec: dict, decision: dict, out_dir: Path,
           extra: dict | None = None) -> Path:
    """Write ``out_dir/router.onnx`` (input "features" float32 (batch, F) standardised, clipped to
    +-``ood.CLIP`` inside the graph; output "p_correct" float32 (batch, K); dynamic batch axis) and
    ``out_dir/manifest.json``. Returns ``out_dir``.

    ``spec["features"]`` (``fit.RouterDataModule.stats``) supplies the training range ("min", "max") and
    the default out-of-distribution limit ("ood_max_score"), written to the manifest's ``features`` and
    ``ood`` sections; a spec without them exports a router whose decisions carry no OOD score. ``spec``
    is otherwise read as a ``CostSpec`` and ``decision`` as a ``DecisionRule`` (plus its ``target_met`` and
    ``deployed``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = spec.get("features", {})
    onnx_path = write_onnx(module.net, out_dir / ONNX_FILE)
    versions = {p: metadata.version(p) for p in ("router-training", "torch", "onnx", "onnxruntime", "numpy")}
    rng = {k: tuple(np.asarray(stats[k], dtype=np.float32).tolist()) for k in ("min", "max") if k in stats}
    base = Manifest(
        FeatureStats(FEATURE_VERSION, FEATURE_NAMES, tuple(np.asarray(mean).tolist()), tuple(np.asarray(std).tolist()),
                     ood.CLIP, rng.get("min"), rng.get("max")),
        CostSpec.from_dict(spec), DecisionRule.from_dict(decision), hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        # out-of-distribution score (ood.ood_score) above which a decision is flagged, and what then happens
        # ("route": as usual; "cloud": to the cloud); the device may override both (runtime.Router.load)
        ood={"max_score": stats.get("ood_max_score"), "policy": "route",
             "max_score_source": f"{ood.OOD_QUANTILE:.0%} quantile of router-val's scores"},
        # whether tuning met its target, and what was deployed instead when it did not
        target_met=bool(decision.get("target_met", True)), deployed=decision.get("deployed", "router"),
        versions={**versions, "python": platform.python_version()})
    Manifest.from_dict({**base.to_dict(), **(extra or {})}).write(out_dir / MANIFEST)  # extra: name, tuning, ...
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
