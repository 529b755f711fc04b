"""A router split as aligned numpy arrays (``SplitArrays``): what policies, metrics, tune, guarantee,
report and the training loop read. Built from the outcome and feature tables by ``fit.split_arrays``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SplitArrays:
    """One router split as aligned arrays: ``x`` float32 (n, F) raw features in ``FEATURE_NAMES`` order;
    ``score``, ``latency_s`` (s), ``energy_j`` (J), ``confidence`` float64 (n, K) per model in config
    order; ``sample_ids`` (n,)."""

    sample_ids: list
    x: np.ndarray
    score: np.ndarray
    latency_s: np.ndarray
    energy_j: np.ndarray
    confidence: np.ndarray

    def __len__(self):
        return len(self.sample_ids)

    def subset(self, idx: np.ndarray) -> "SplitArrays":
        """The samples at integer positions ``idx``, in that order."""
        return SplitArrays([self.sample_ids[i] for i in idx], self.x[idx], self.score[idx], self.latency_s[idx],
                           self.energy_j[idx], self.confidence[idx])

    def holdout(self, fraction: float = 0.2, seed: int = 0) -> tuple["SplitArrays", "SplitArrays"]:
        """(rest, held-out): a seeded random ``fraction`` of the samples held out (at least one)."""
        perm = np.random.default_rng(seed).permutation(len(self))
        cut = max(1, int(len(self) * fraction))
        return self.subset(perm[cut:]), self.subset(perm[:cut])
