"""Out-of-distribution awareness shared by training and the device (numpy only, no torch).

Three rules, each applied the same way in training, in the exported model and on the device:

- Standardisation (``standard_scale``): x' = (x - mean) / std with router-train's mean and a floored std,
  std_j = max(sd_j, STD_FLOOR * max(mean |x_j|, 1)). The floor follows each feature's scale: 0.05 for a
  feature in units of 1 (a 0..1 thumbnail pixel, a word count, a one-hot flag), 5% of the typical
  magnitude for one on a larger scale (pixels of width, characters, grey levels). Without it a feature
  that barely varied in training (a thumbnail pixel that is white in every training image: sd 0.003)
  turns an ordinary value from elsewhere into thousands of standard deviations.
- Clipping: the standardised inputs are clipped to [-CLIP, CLIP] inside the router network
  (``nets.RouterNet.member_logits``), so torch, the exported ONNX graph and every caller agree; a value beyond
  CLIP standard deviations was at most rare in training, and no input can push a logit arbitrarily far.
- The score (``ood_score``): per query, the share of features outside router-train's range [min, max]
  (a NaN counts as outside), averaged over the four feature groups (image signals, text signals, hashed
  words, thumbnail pixels) so that the 3,072 thumbnail pixels do not drown the question's 148 features.
  0: every feature inside the training range; 1: every feature outside it. ``threshold`` turns router-val's
  scores into the default limit above which a query is flagged (``runtime.Decision.ood``).
"""

from __future__ import annotations

import numpy as np

from .features import FEATURE_NAMES, IMAGE_FEATURES, PIXEL_FEATURES, TEXT_FEATURES, WORD_FEATURES

STD_FLOOR = 0.05
CLIP = 6.0
OOD_QUANTILE = 0.99  # the default limit: 1% of router-val's queries score above it
GROUPS = {"image": IMAGE_FEATURES, "text": TEXT_FEATURES, "words": WORD_FEATURES, "pixels": PIXEL_FEATURES}
_SLICES, _start = {}, 0
for _name, _cols in GROUPS.items():
    _SLICES[_name] = slice(_start, _start + len(_cols))
    _start += len(_cols)
assert _start == len(FEATURE_NAMES) and all(FEATURE_NAMES[_SLICES[g]] == c for g, c in GROUPS.items())
_SIZES = np.array([len(c) for c in GROUPS.values()], dtype=np.float64)


def standard_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), float32 (F,), of raw features float (n, F): std floored as the module docstring says
    (so always > 0)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    floor = STD_FLOOR * np.maximum(np.abs(x).mean(0), 1.0)
    return mean.astype(np.float32), np.maximum(x.std(0), floor).astype(np.float32)


def feature_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, max), float32 (F,), of raw features float (n, F) over the rows (router-train)."""
    x = np.asarray(x, dtype=np.float32)
    return x.min(0), x.max(0)


def outside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """bool (n, F): feature values outside [lo, hi] (NaN included) of raw features float (n, F)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return ~((x >= lo) & (x <= hi))


def ood_score(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Out-of-distribution score, float64 (n,) in [0, 1], of raw features float (n, len(FEATURE_NAMES)):
    the mean over GROUPS of the share of the group's features outside [lo, hi] (router-train's
    ``feature_range``; from an artifact: ``Manifest.features.min``, ``.max``). Raises
    ValueError for another number of columns."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    if x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"ood_score needs all {len(FEATURE_NAMES)} feature columns, got {x.shape[1]}")
    inside = x >= lo  # NaN: False, so outside
    inside &= x <= hi
    total = np.zeros(len(x))
    for s, size in zip(_SLICES.values(), _SIZES):  # the groups' shares outside, summed in group order
        # one query (the device): count_nonzero on a flat slice costs a fifth of its axis=1 form
        n_in = np.count_nonzero(inside[0, s]) if len(x) == 1 else np.count_nonzero(inside[:, s], axis=1)
        total += (size - n_in) / size
    return total / len(_SIZES)


def group_counts(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict[str, int]:
    """How many features of each group of one query (raw features float (F,) or (1, F)) lie outside
    [lo, hi]: what the CLI prints next to the score."""
    out = outside(x, lo, hi)[0]
    return {g: int(out[s].sum()) for g, s in _SLICES.items()}


def threshold(scores: np.ndarray, quantile: float = OOD_QUANTILE) -> float:
    """The default limit of the score: its ``quantile`` over held-out in-distribution queries
    (router-val), float."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), quantile))


def stats(train_x: np.ndarray, val_x: np.ndarray | None = None) -> dict:
    """What the exported router needs of router-train's raw features float (n, F) (and router-val's,
    for the default limit): {"mean", "std"} (``standard_scale``), {"min", "max"} (``feature_range``) as
    lists, "clip" (CLIP), "std_floor" (STD_FLOOR) and "ood_max_score" (``threshold`` of router-val's
    scores; None without router-val or without all FEATURE_NAMES columns)."""
    mean, std = standard_scale(train_x)
    lo, hi = feature_range(train_x)
    limit = None
    if val_x is not None and len(val_x) and np.shape(val_x)[1] == len(FEATURE_NAMES):
        limit = threshold(ood_score(val_x, lo, hi))
    return {"mean": mean.tolist(), "std": std.tolist(), "min": lo.tolist(), "max": hi.tolist(),
            "clip": CLIP, "std_floor": STD_FLOOR, "ood_max_score": limit}
