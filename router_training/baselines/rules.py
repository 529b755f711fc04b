"""Lookup-table rules: the question-type rule (``qtype``)."""

from __future__ import annotations

import numpy as np

from ..core.features import FEATURE_NAMES, QUESTION_TYPES
from ..core.splits import SplitArrays
from .base import Baseline, _one_hot, register


@register("qtype")
class QuestionTypeRule(Baseline):
    """Per question type (``features.question_type``, read from the ``qtype_*`` feature columns), the
    cheapest edge model (router-train mean ``ctx.cost``) whose router-train accuracy on that type is within
    ``knob`` of the cloud model's (``acc_cloud - acc_edge <= knob``); the cloud when none is. Types with
    fewer than ``min_count`` router-train samples use the overall accuracies. knob 2: all-edge (the
    cheapest edge model); knob -2: all-cloud. A lookup-table baseline: question types alone separate
    VQA difficulty (Antol et al. 2015; Kafle & Kanan 2017)."""

    all_edge_knob, all_cloud_knob = 2.0, -2.0

    def __init__(self, min_count: int = 5):
        self.min_count = min_count

    @staticmethod
    def types(s: SplitArrays) -> np.ndarray:
        if s.x.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"features have {s.x.shape[1]} columns, expected {len(FEATURE_NAMES)} (FEATURE_NAMES)")
        cols = [FEATURE_NAMES.index("qtype_" + t.replace("/", "_")) for t in QUESTION_TYPES]
        return s.x[:, cols].argmax(1)

    def _fit(self, train):
        t = self.types(train)
        overall = train.score.mean(0)
        self.acc = np.stack([train.score[t == j].mean(0) if (t == j).sum() >= self.min_count else overall
                             for j in range(len(QUESTION_TYPES))])
        cost = getattr(train, self.ctx.cost).mean(0)
        self.edge_by_cost = sorted((k for k, tier in enumerate(self.tiers) if tier == "edge"), key=lambda k: cost[k])

    def table(self, knob: float) -> np.ndarray:
        """int (len(QUESTION_TYPES),): the model each question type goes to at ``knob``."""
        out = np.full(len(QUESTION_TYPES), self.cloud)
        for j in range(len(QUESTION_TYPES)):
            ok = [k for k in self.edge_by_cost if self.acc[j, self.cloud] - self.acc[j, k] <= knob]
            if ok:
                out[j] = ok[0]
        return out

    def assign(self, split, knob):
        return _one_hot(self.table(knob)[self.types(split)], split.score.shape[1])

    def knobs(self, split, n=41):
        edge = [k for k, t in enumerate(self.tiers) if t == "edge"]
        gaps = (self.acc[:, [self.cloud]] - self.acc[:, edge]).ravel()
        return np.unique(np.r_[self.all_cloud_knob, gaps, self.all_edge_knob])
