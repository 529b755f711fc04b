"""Learned per-model correctness predictors, routed by the predicted gap (``ProbBaseline``): the project
MLP on feature subsets (``mlp_*``), the MiniLM classifier, kNN on MiniLM and matrix factorisation."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import RouterConfig
from ..core.decision import CostSpec, ModelCost
from ..core.features import FEATURE_NAMES, IMAGE_FEATURES, TEXT_FEATURES
from ..core.profile import DeploymentProfile
from ..core.splits import SplitArrays
from .base import ProbBaseline, register
from .training import _SIGNALS, _logits, _mlp, _seeded, _train_bce, single_thread


def derived_spec(train: SplitArrays, tiers: Sequence[str], cloud: int) -> CostSpec:
    """A cost spec (``CostSpec``, as ``fit.cost_spec`` gives) whose expected latencies are router-train's mean latencies (zero
    payload and round trip; device power = edge / cloud energy over latency summed per tier), for
    training the project MLP without the outcome table. Prefer ``fit.cost_spec`` when it is at hand."""
    lat, en = train.latency_s.mean(0), train.energy_j.mean(0)
    edge = np.array([t == "edge" for t in tiers])

    def power(mask):
        return float(en[mask].sum() / lat[mask].sum()) if lat[mask].sum() > 0 else 1.0

    pe, pc = power(edge), power(~edge)
    profile = DeploymentProfile("derived", edge_power_w=pe, idle_power_w=pc, radio_tx_power_w=pc, uplink_mbps=1.0,
                                downlink_mbps=1.0, rtt_s=0.0, response_bytes=0)
    return CostSpec(tuple(ModelCost(f"m{k}", t, float(lat[k]), 0.0) for k, t in enumerate(tiers)), profile,
                    float(lat[cloud]), float(pc * lat[cloud]))


_COLUMNS = {"image": [FEATURE_NAMES.index(f) for f in IMAGE_FEATURES],
            "text": [FEATURE_NAMES.index(f) for f in TEXT_FEATURES],
            "both": [FEATURE_NAMES.index(f) for f in IMAGE_FEATURES + TEXT_FEATURES],
            "signals": list(range(len(FEATURE_NAMES)))[_SIGNALS],
            "all": list(range(len(FEATURE_NAMES)))}


@register("mlp_signals", columns="signals")
@register("mlp_both_minilm", columns="both", embedding=True)
@register("mlp_both", columns="both")
@register("mlp_text", columns="text")
@register("mlp_image", columns="image")  # decorators apply bottom-up: registry order image, text, both, ...
class FeatureMLP(ProbBaseline):
    """The project's complexity predictor (``router.arch``'s network trained by ``fit.fit``: BCE plus the
    expected cost of soft routing) on a subset of the features: ``columns`` "image" (IMAGE_FEATURES),
    "text" (TEXT_FEATURES), "both" (the two: hand-crafted signals without learned embeddings),
    "signals" (both + the WORD_FEATURES the router learns word embeddings from; no thumbnail, so no
    learned image embedding) or "all" (the router's own inputs); with ``embedding`` the MiniLM question
    embedding is appended (frozen pretrained embeddings). The feature ablation of the router: image-only,
    text-only, both, both + MiniLM, and without its learned image embedding; the router itself is "all".
    Routed by the predicted gap (``ProbBaseline``), so they differ only in their inputs."""

    def __init__(self, columns: str = "all", embedding: bool = False):
        if columns not in _COLUMNS:
            raise ValueError(f"columns must be one of {sorted(_COLUMNS)}, not {columns!r}")
        self.columns, self.embedding = columns, embedding
        self.needs_text = embedding

    def _inputs(self, s: SplitArrays) -> np.ndarray:
        if s.x.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"features have {s.x.shape[1]} columns, expected {len(FEATURE_NAMES)} (FEATURE_NAMES)")
        x = s.x[:, _COLUMNS[self.columns]]
        if self.embedding:
            x = np.concatenate([x, self.ctx.embeddings(s)], 1)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _fit(self, train):
        from .. import fit

        ctx = self.ctx
        val = ctx.val
        tr = train
        if val is None:  # hold out a seeded 20% of router-train for fit.fit's best epoch
            tr, val = train.holdout(0.2, ctx.seed)
        tr, va = (dataclasses.replace(s, x=self._inputs(s)) for s in (tr, val))
        cost = ctx.cost_spec or derived_spec(train, self.tiers, self.cloud)
        rc = ctx.router_config or RouterConfig()
        rc = dataclasses.replace(rc, seed=ctx.seed, **({"epochs": ctx.epochs} if ctx.epochs else {}))
        with tempfile.TemporaryDirectory(prefix="baseline-") as tmp, single_thread():
            self.module, self.dm = fit.fit(tr, va, cost, rc, Path(tmp), loggers=False, progress=False,
                                           thumbnail=self.columns == "all" and not self.embedding)

    def probs(self, split):
        from .. import fit

        x = self._inputs(split)
        with single_thread():
            return fit.predict(self.module, self.dm, x).astype(np.float64)


@register("minilm_clf")
class EmbeddingClassifier(ProbBaseline):
    """RouteLLM's BERT-classifier router in its usual frozen-encoder form: logistic regression
    (``hidden`` = ()) or a small MLP on the 384-d MiniLM question embedding, one output per model
    predicting its correctness (BCE on the VQA score as a soft target; AdamW, weight decay; best epoch on
    router-val when given). RouteLLM fine-tunes BERT on strong-vs-weak win labels; here the encoder is
    frozen and the labels are per-model correctness."""

    needs_text = True

    def __init__(self, hidden: Sequence[int] = (), epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4):
        self.hidden, self.epochs, self.lr, self.weight_decay = tuple(hidden), epochs, lr, weight_decay

    def _fit(self, train):
        e = self.ctx.embeddings(train)
        val = None if self.ctx.val is None else (self.ctx.embeddings(self.ctx.val), self.ctx.val.score)
        self.net = _train_bce(_seeded(lambda: _mlp(e.shape[1], self.hidden, train.score.shape[1]), self.ctx.seed),
                              e, train.score, val, self.epochs, self.lr, self.weight_decay, seed=self.ctx.seed)

    def probs(self, split):
        return 1.0 / (1.0 + np.exp(-_logits(self.net, self.ctx.embeddings(split))))


@register("knn")
class KNNRouter(ProbBaseline):
    """kNN on question embeddings (Shnitzer et al. 2023; RouterBench's KNN router; cf. RouteLLM's
    similarity-weighted ranking): P(correct) of each model = its mean router-train score over the ``k``
    router-train questions with the highest cosine similarity. Ties (repeated questions) are broken by
    ``np.argpartition``, deterministically."""

    needs_text = True

    def __init__(self, k: int = 10):
        self.k = k

    def _fit(self, train):
        self.emb = self._unit(self.ctx.embeddings(train))
        self.score = train.score

    @staticmethod
    def _unit(e):
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def probs(self, split):
        q = self._unit(self.ctx.embeddings(split))
        k = min(self.k, len(self.emb))
        out = np.empty((len(q), self.score.shape[1]))
        for i in range(0, len(q), 1024):  # bounded memory: 1024 x n_train similarities at a time
            sim = q[i:i + 1024] @ self.emb.T
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            out[i:i + 1024] = self.score[top].mean(1)
        return out


class _MF(nn.Module):
    """logit(q, m) = w . (normalize(v_m) * W q) + b_m (RouteLLM's MFModel plus a per-model bias)."""

    def __init__(self, text_dim: int, n_models: int, dim: int):
        super().__init__()
        self.P = nn.Embedding(n_models, dim)
        self.text_proj = nn.Linear(text_dim, dim, bias=False)
        self.classifier = nn.Linear(dim, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(n_models))

    def forward(self, q):
        v = F.normalize(self.P.weight, p=2, dim=1)  # (K, dim)
        return self.classifier(v[None] * self.text_proj(q)[:, None, :]).squeeze(-1) + self.bias


@register("mf")
class MatrixFactorisation(ProbBaseline):
    """RouteLLM's matrix-factorisation router adapted to per-model correctness: model embeddings v_m
    (unit-normalised), a linear projection W of the MiniLM query embedding and a linear read-out w, as in
    ``routellm/routers/matrix_factorization/model.py``; logit = w . (v_m * W q) + b_m, trained with BCE on
    each (query, model) correctness (RouteLLM trains sigmoid(s_strong - s_weak) on pairwise wins; with
    absolute labels a per-model bias b_m carries the base rate)."""

    needs_text = True

    def __init__(self, dim: int = 32, epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4):
        self.dim, self.epochs, self.lr, self.weight_decay = dim, epochs, lr, weight_decay

    def _fit(self, train):
        e = self.ctx.embeddings(train)
        val = None if self.ctx.val is None else (self.ctx.embeddings(self.ctx.val), self.ctx.val.score)
        self.net = _train_bce(_seeded(lambda: _MF(e.shape[1], train.score.shape[1], self.dim), self.ctx.seed),
                              e, train.score, val, self.epochs, self.lr, self.weight_decay, seed=self.ctx.seed)

    def probs(self, split):
        return 1.0 / (1.0 + np.exp(-_logits(self.net, self.ctx.embeddings(split))))
