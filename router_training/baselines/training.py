"""The small torch nets and training loop the learned baselines share (``_mlp``, ``_train_bce``,
``_logits``, ``single_thread``, ``_seeded``) and their inputs from a split (``_Inputs``)."""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.features import FEATURE_NAMES, PIXEL_FEATURES
from ..core.splits import SplitArrays
from .base import Context


def _mlp(d_in: int, hidden: Sequence[int], d_out: int) -> nn.Sequential:
    layers, width = [], d_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.GELU()]
        width = h
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


@contextlib.contextmanager
def single_thread():
    """Run torch on one intra-op thread, restoring the setting after: the baselines' nets are tiny, and
    on a busy machine extra threads only spin (a 30x slowdown measured on 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)`` without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _train_bce(net: nn.Module, x: np.ndarray, y: np.ndarray, val: tuple | None = None, epochs: int = 100,
               lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0) -> nn.Module:
    """AdamW on BCE-with-logits (targets in [0, 1], soft targets allowed), shuffled minibatches from a
    seeded generator. With ``val`` = (x, y) the epoch with the lowest validation BCE is kept."""
    with single_thread():
        return _train_loop(net, x, y, val, epochs, lr, weight_decay, batch_size, seed)


def _train_loop(net, x, y, val, epochs, lr, weight_decay, batch_size, seed):
    xt, yt = torch.tensor(np.asarray(x), dtype=torch.float32), torch.tensor(np.asarray(y), dtype=torch.float32)
    vt = None if val is None else tuple(torch.tensor(np.asarray(a), dtype=torch.float32) for a in val)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    best, state = float("inf"), None
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.binary_cross_entropy_with_logits(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if vt is not None:
            net.eval()
            with torch.no_grad():
                vl = float(F.binary_cross_entropy_with_logits(net(vt[0]), vt[1]))
            if vl < best:
                best, state = vl, copy.deepcopy(net.state_dict())
    if state is not None:
        net.load_state_dict(state)
    return net.eval()


def _logits(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad(), single_thread():
        return net(torch.as_tensor(x, dtype=torch.float32)).numpy().astype(np.float64)


_SIGNALS = slice(0, len(FEATURE_NAMES) - len(PIXEL_FEATURES))  # FEATURE_NAMES ends with the PIXEL_FEATURES


class _Inputs:
    """Router inputs from a split: "features" (the hand-crafted and word signals, every column but the
    thumbnail's raw pixels, standardised with router-train's mean / std), "embedding" (question
    embeddings), or "both" (concatenated). Raw pixels are left out: an MLP on them overfits a few
    thousand questions (measured: Hybrid-LLM on the features plus an 8 x 8 thumbnail, APGR 0.829 against
    0.862 without); the router embeds them with its CNN."""

    def __init__(self, kind: str, train: SplitArrays, ctx: Context):
        if kind not in ("features", "embedding", "both"):
            raise ValueError(f"inputs must be features, embedding or both, not {kind!r}")
        self.kind, self.ctx = kind, ctx
        x = train.x[:, _SIGNALS]
        self.mean = x.mean(0)
        self.std = np.where(x.std(0) > 1e-8, x.std(0), 1.0)

    def __call__(self, s: SplitArrays) -> np.ndarray:
        parts = []
        if self.kind in ("features", "both"):
            parts.append((s.x[:, _SIGNALS] - self.mean) / self.std)
        if self.kind in ("embedding", "both"):
            parts.append(self.ctx.embeddings(s))
        return np.concatenate(parts, 1).astype(np.float32)
