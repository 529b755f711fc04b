"""The default router network: an MLP on the signals plus a small CNN on the thumbnail, as a deep
ensemble (``router.arch: thumbnail_cnn``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core import ood
from ..core.features import THUMBNAIL_SIDE
from .base import RouterNet, register


class Member(nn.Module):
    """One network of the ensemble: signal columns float32 (n, S) and the thumbnail (n, 3, side, side) or
    None -> correctness logits (n, K). With the thumbnail, a small CNN (three 3x3 convolutions of 8, 16
    and ``image_embedding`` channels with ReLU, 2x2 max pooling after the first two, global max pooling)
    embeds it and the MLP sees the signals ++ that learned image embedding. Convolutions and global
    pooling recognise a shape or colour wherever it lies, which an MLP on the raw pixels cannot learn
    from a few thousand questions."""

    def __init__(self, n_signals: int, n_models: int, hidden: list, dropout: float, image_embedding: int):
        super().__init__()
        self.cnn = None
        if image_embedding:
            # ReLU: in onnxruntime a third cheaper than GELU's erf here. Pooling before the ReLU is the same
            # function (max and ReLU commute) on a quarter of the values; parameters keep indices 0, 3, 6.
            self.cnn = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                nn.Conv2d(16, image_embedding, 3, padding=1), nn.AdaptiveMaxPool2d(1), nn.ReLU(), nn.Flatten())
        layers, width = [], n_signals + (image_embedding if self.cnn is not None else 0)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_models))
        self.mlp = nn.Sequential(*layers)

    def forward(self, signals, image):
        if self.cnn is None:
            return self.mlp(signals)
        # channels-last: torch's CPU convolutions and pooling run about 1.7x faster on it (the same function;
        # the float rounding order differs, so training results move as with a seed)
        return self.mlp(torch.cat([signals, self.cnn(image.contiguous(memory_format=torch.channels_last))], 1))


@register("thumbnail_cnn")
class ThumbnailCNN(RouterNet):
    """A deep ensemble of ``rc.members`` independently initialised ``Member`` networks (MLP widths
    ``rc.hidden``, ``rc.dropout``), its P(correct) the mean of theirs. On real grades one network's
    ranking of queries varies with its seed (BlindTest, threshold for 97% of cloud accuracy chosen on
    router-val, on router-test: five seeds gave edge share 0.36 to 0.46 at 96.7% to 98.1%); the mean of
    three varies less and ranks better (0.43 at 97.8%). The cost: ``members`` times the training time;
    the exported graph fuses the members (``FusedEnsemble``), so a decision costs about what one costs.

    With ``n_pixels`` > 0 and ``rc.image_embedding`` > 0 each member's CNN embeds the thumbnail;
    ``image_embedding`` 0 drops the thumbnail columns (``n_inputs`` = ``n_signals``)."""

    def __init__(self, n_signals: int, n_pixels: int, n_models: int, rc):
        super().__init__(n_signals, n_pixels, n_models, rc)
        embed = rc.image_embedding if n_pixels else 0
        self.n_inputs = n_signals + (n_pixels if embed else 0)
        self.members = nn.ModuleList(Member(n_signals, n_models, rc.hidden, rc.dropout, embed)
                                     for _ in range(rc.members))

    def logits(self, x):
        signals, image = x[:, :self.n_signals], None
        if self.members[0].cnn is not None:
            image = x[:, self.n_signals:self.n_inputs].reshape(-1, 3, THUMBNAIL_SIDE, THUMBNAIL_SIDE)
        return torch.stack([m(signals, image) for m in self.members])

    def exportable(self) -> nn.Module:
        return FusedEnsemble(self)

    @torch.no_grad()
    def ignore_inputs(self, mask: np.ndarray) -> None:
        """As ``RouterNet.ignore_inputs``, folded into the weights: the first layer's weights on masked
        signal columns are zeroed; a masked thumbnail's CNN is removed, its embedding replaced by the
        constant it had in training (the embedding of an all-zero thumbnail, folded into the first
        layer's bias), so the exported router does not run a CNN whose output nothing reads."""
        n = self.n_signals
        for net in self.members:
            first = net.mlp[0]
            first.weight[:, :n][:, torch.from_numpy(~mask[:n])] = 0.0
            if net.cnn is not None and not mask[n:].any():
                emb = net.cnn(torch.zeros(1, 3, THUMBNAIL_SIDE, THUMBNAIL_SIDE))[0]
                folded = nn.Linear(n, first.out_features)
                folded.weight.copy_(first.weight[:, :n])
                folded.bias.copy_(first.bias + first.weight[:, n:] @ emb)
                net.mlp[0], net.cnn = folded, None
        if all(m.cnn is None for m in self.members):
            self.n_inputs = n


class FusedEnsemble(nn.Module):
    """The exported form of a ``ThumbnailCNN`` (standardised features float32 (n, F)) -> P(correct)
    float32 (n, K), the mean of its members' sigmoids, with the members' layers fused so the graph runs
    each layer once for all M members: the first convolutions stacked (they share the thumbnail), the
    later ones grouped (``groups=M``), the MLP layers block-diagonal (member m's weights in block m, zeros
    elsewhere; the first layer maps [signals, all embeddings] so each member reads the signals and its
    own embedding). Same function as the ensemble (``export.parity`` checks it on router-test); at batch 1
    onnxruntime pays per operator, so three members then cost about what one costs
    (benchmarks/decision_overhead.py). Dropout is left out (inference only)."""

    def __init__(self, net: ThumbnailCNN):
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
            image = x[:, self.n_signals:self.n_signals + 3 * THUMBNAIL_SIDE ** 2]
            h = torch.cat([h, self.cnn(image.reshape(-1, 3, THUMBNAIL_SIDE, THUMBNAIL_SIDE))], 1)
        p = torch.sigmoid(self.mlp(h).reshape(-1, self.m, self.k)).mean(1)
        return p if self.m == 1 else p.clamp(1e-7, 1 - 1e-7)  # RouterNet.combine's clamp
