"""Export a trained router as ONNX plus a manifest the runtime loads (no pickles, no torch on device)."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from torch import nn

from .core import ood
from .core.decision import CostSpec, DecisionRule
from .core.manifest import FeatureStats, Manifest
from .core.features import FEATURE_NAMES, FEATURE_VERSION, THUMBNAIL_SIDE
from .fit import RouterModule, RouterNet
from .runtime import MANIFEST, ONNX_FILE, Router


class FusedEnsemble(nn.Module):
    """What is exported: a ``fit.RouterNet`` (standardised features float32 (n, F)) -> P(correct) float32
    (n, K), the mean of its members' sigmoids, with the members' layers fused so the graph runs each
    layer once for all M members: the first convolutions stacked (they share the thumbnail), the later
    ones grouped (``groups=M``), the MLP layers block-diagonal (member m's weights in block m, zeros
    elsewhere; the first layer maps [signals, all embeddings] so each member reads the signals and its own
    embedding). Same function as the ensemble (``parity`` checks it on router-test); at batch 1 onnxruntime
    pays per operator, so three members then cost about what one costs (benchmarks/decision_overhead.py).
    Dropout is left out (inference only)."""

    def __init__(self, net: RouterNet):
        super().__init__()
        members = list(net.members)
        self.m, self.n_signals = len(members), net.n_signals
        cnns = [m.cnn for m in members]
        self.cnn = None
        with torch.no_grad():
            if cnns[0] is not None:
                convs = [[layer for layer in c if isinstance(layer, nn.Conv2d)] for c in cnns]
                fused = []
                for i in range(3):
                    first = convs[0][i]
                    conv = nn.Conv2d(first.in_channels * (1 if i == 0 else self.m), first.out_channels * self.m, 3,
                                     padding=1, groups=1 if i == 0 else self.m)
                    conv.weight.copy_(torch.cat([c[i].weight for c in convs]))
                    conv.bias.copy_(torch.cat([c[i].bias for c in convs]))
                    fused.append(conv)
                self.cnn = nn.Sequential(fused[0], nn.MaxPool2d(2), nn.ReLU(), fused[1], nn.MaxPool2d(2), nn.ReLU(),
                                         fused[2], nn.AdaptiveMaxPool2d(1), nn.ReLU(), nn.Flatten())
            linears = [[layer for layer in m.mlp if isinstance(layer, nn.Linear)] for m in members]
            layers = []
            for i in range(len(linears[0])):
                ws = [lin[i].weight for lin in linears]
                if i == 0:  # columns: the signals (shared), then each member's embedding (its own block)
                    s = self.n_signals
                    w = torch.cat([torch.cat([x[:, :s] for x in ws]), torch.block_diag(*[x[:, s:] for x in ws])], 1)
                else:
                    w = torch.block_diag(*ws)
                lin = nn.Linear(w.shape[1], w.shape[0])
                lin.weight.copy_(w)
                lin.bias.copy_(torch.cat([x[i].bias for x in linears]))
                layers += [lin, nn.GELU()]
            self.mlp = nn.Sequential(*layers[:-1])
        self.k = linears[0][-1].out_features

    def forward(self, x):
        x = x.clamp(-ood.CLIP, ood.CLIP)  # as RouterNet.member_logits
        h = x[:, :self.n_signals]
        if self.cnn is not None:
            image = x[:, self.n_signals:].reshape(-1, 3, THUMBNAIL_SIDE, THUMBNAIL_SIDE)
            h = torch.cat([h, self.cnn(image)], 1)
        p = torch.sigmoid(self.mlp(h).reshape(-1, self.m, self.k)).mean(1)
        return p if self.m == 1 else p.clamp(1e-7, 1 - 1e-7)  # RouterNet.combine's clamp


def write_onnx(net: RouterNet, path: Path) -> Path:
    """``FusedEnsemble(net)`` as an ONNX file at ``path``: input "features" float32 (batch, F) standardised
    (F = len(FEATURE_NAMES)), output "p_correct" float32 (batch, K), dynamic batch axis. Returns ``path``."""
    example = torch.zeros(2, len(FEATURE_NAMES))
    torch.onnx.export(FusedEnsemble(net).eval(), (example,), str(path), input_names=["features"],
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
