"""The Hybrid-LLM quality-gap routers (``hybrid_det``, ``hybrid_soft``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.splits import SplitArrays
from .base import ScoreBaseline, register
from .training import _Inputs, _logits, _mlp, _seeded, _train_bce


@register("hybrid_soft", labels="soft")
@register("hybrid_det", labels="det")
class HybridLLM(ScoreBaseline):
    """Hybrid-LLM quality-gap router (Ding et al., ICLR 2024): a classifier of
    P(q_edge >= q_cloud - t) for router-train's best edge model vs the cloud; edge when it is >= knob.

    Labels (``labels``): "det" (r_det): 1[score_edge >= score_cloud - t]; "soft" (r_prob): the probability
    of that event when each model's answer is correct with probability equal to its VQA score
    (independent Bernoulli: 1 - (1 - s_edge) s_cloud for 0 <= t < 1; the paper estimates it from 10
    sampled responses, which a single greedy answer per model cannot give). With 0/1 scores the two
    coincide. Inputs (``inputs``): "both" (default: standardised features ++ MiniLM question embedding;
    the paper routes on the text alone, a VQA query is image + question), "features" or "embedding".
    Classifier: MLP ``hidden`` trained with BCE (soft targets), best epoch on router-val when given."""

    def __init__(self, labels: str = "det", t: float = 0.0, inputs: str = "both", hidden: Sequence[int] = (64,),
                 epochs: int = 100, lr: float = 3e-3, weight_decay: float = 1e-4):
        if labels not in ("det", "soft"):
            raise ValueError(f"labels must be 'det' or 'soft', not {labels!r}")
        if labels == "soft" and not 0.0 <= t < 1.0:
            raise ValueError("soft labels need 0 <= t < 1 (for t >= 1 every label is 1)")
        self.labels, self.t, self.inputs_kind, self.hidden = labels, t, inputs, tuple(hidden)
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.needs_text = inputs != "features"

    def target(self, s: SplitArrays) -> np.ndarray:
        """The labels (n, 1) for split ``s`` (see the class docstring)."""
        se, sc = s.score[:, self.edge], s.score[:, self.cloud]
        y = (se >= sc - self.t).astype(np.float64) if self.labels == "det" else 1.0 - (1.0 - se) * sc
        return y[:, None]

    def _fit(self, train):
        self.inputs = _Inputs(self.inputs_kind, train, self.ctx)
        x = self.inputs(train)
        val = None if self.ctx.val is None else (self.inputs(self.ctx.val), self.target(self.ctx.val))
        self.net = _train_bce(_seeded(lambda: _mlp(x.shape[1], self.hidden, 1), self.ctx.seed), x, self.target(train),
                              val, self.epochs, self.lr, self.weight_decay, seed=self.ctx.seed)

    def _edge_score(self, split):
        p = 1.0 / (1.0 + np.exp(-_logits(self.net, self.inputs(split))[:, 0]))
        return p, np.full(len(split), self.edge)
