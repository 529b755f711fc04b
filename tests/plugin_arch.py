"""A router architecture defined outside the package, for tests/test_nets.py: ``router.arch:
plugin_arch:PixelMean``."""

import torch
from torch import nn

from router_training.nets import RouterNet


class PixelMean(RouterNet):
    """Signals ++ the thumbnail's mean pixel -> a hidden layer of ``width`` -> K logits."""

    def __init__(self, n_signals, n_pixels, n_models, rc, width: int, scale: float = 1.0):
        super().__init__(n_signals, n_pixels, n_models, rc)
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(n_signals + 1, width), nn.ReLU(), nn.Linear(width, n_models))

    def logits(self, x):
        pixels = x[:, self.n_signals:self.n_inputs]
        mean = pixels.mean(1, keepdim=True) if self.n_pixels else x[:, :1] * 0
        return self.mlp(torch.cat([x[:, :self.n_signals], self.scale * mean], 1))[None]


class NotANet(nn.Module):
    """Not a RouterNet: refused as ``router.arch``."""
