"""Per-model logistic regression on the signals (``router.arch: linear``): the cheapest router, a
calibrated baseline for the default network."""

from __future__ import annotations

from torch import nn

from .base import RouterNet, register


@register("linear")
class Linear(RouterNet):
    """logit_m = w_m . signals + b_m: one linear layer from the ``n_signals`` signal columns to K logits;
    the thumbnail is not read. ``rc.hidden``, ``members`` and ``image_embedding`` do not apply; dropout
    ``rc.dropout`` on the inputs in training."""

    def __init__(self, n_signals: int, n_pixels: int, n_models: int, rc):
        super().__init__(n_signals, n_pixels, n_models, rc)
        self.n_inputs = n_signals
        self.layer = nn.Sequential(nn.Dropout(rc.dropout), nn.Linear(n_signals, n_models))

    def logits(self, x):
        return self.layer(x[:, :self.n_signals])[None]
