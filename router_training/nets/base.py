"""The router-network interface (``RouterNet``), its registry and the generic exported form."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from ..core import ood
from ..core.registry import import_class

ARCHS: dict[str, type["RouterNet"]] = {}


def register(name: str):
    """Class decorator: ``ARCHS[name]`` = the class, buildable as ``router.arch: name``."""
    def deco(cls):
        ARCHS[name] = cls
        return cls
    return deco


def resolve(arch: str) -> type["RouterNet"]:
    """The class of ``arch``: a registered name or "package.module:ClassName" (imported here). Raises
    ValueError naming ``arch`` and the registered names, or what failed in the import, or when the class
    is not a ``RouterNet`` subclass."""
    if ":" in arch:
        cls = import_class(arch, f"router.arch {arch!r}")
        if not issubclass(cls, RouterNet):
            raise ValueError(f"router.arch {arch!r}: {cls.__name__} is not a router_training.nets.RouterNet subclass")
        return cls
    if arch not in ARCHS:
        raise ValueError(f"router.arch must be one of {sorted(ARCHS)} or a class of your own as "
                         f"'package.module:ClassName', got {arch!r}")
    return ARCHS[arch]


_FIXED = ("self", "n_signals", "n_pixels", "n_models", "rc")


def check_options(arch: str, options: dict) -> None:
    """Check ``router.arch_options`` against the constructor of ``resolve(arch)`` (its parameters after
    ``RouterNet.__init__``'s fixed ones). Raises ValueError naming each unknown key with the allowed ones,
    or the required options missing."""
    params = inspect.signature(resolve(arch).__init__).parameters
    own = {n: p for n, p in params.items() if n not in _FIXED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(own))
        if unknown:
            raise ValueError(f"router.arch_options for {arch!r}: unknown keys {unknown}; allowed: {sorted(own)}")
    missing = sorted(n for n, p in own.items() if p.default is p.empty and n not in options)
    if missing:
        raise ValueError(f"router.arch_options for {arch!r}: missing required options {missing}")


def build(rc, n_signals: int, n_pixels: int, n_models: int) -> "RouterNet":
    """The network ``rc.arch`` (a ``RouterConfig``) with ``rc.arch_options``, for ``n_signals`` signal
    columns, ``n_pixels`` thumbnail columns and ``n_models`` outputs; see ``RouterNet``. Raises ValueError
    as ``resolve`` does."""
    return resolve(rc.arch)(n_signals, n_pixels, n_models, rc, **rc.arch_options)


class RouterNet(nn.Module):
    """Base of every router architecture: standardised features float32 (n, F) -> correctness logits
    (n, K), one per model (P(correct) = sigmoid). The first ``n_signals`` columns are signals, the next
    ``n_pixels`` (0 or ``len(features.PIXEL_FEATURES)``) the THUMBNAIL_SIDE x THUMBNAIL_SIDE RGB thumbnail,
    channel-first; ``rc`` is the ``RouterConfig`` (hidden, dropout, members, ... as the architecture reads
    them) and further keyword arguments are ``router.arch_options``.

    A subclass sets ``n_inputs`` (the leading columns it reads; training feeds only those) and implements
    ``logits``; it may override ``exportable`` (a faster graph of the same function) and
    ``ignore_inputs``. Inputs are clipped to +-``ood.CLIP`` before ``logits`` (ood module docstring)."""

    def __init__(self, n_signals: int, n_pixels: int, n_models: int, rc):
        super().__init__()
        self.n_signals, self.n_pixels, self.n_models = n_signals, n_pixels, n_models
        self.n_inputs = n_signals + n_pixels
        self.input_mask: torch.Tensor | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Clipped standardised features (n, >= n_inputs) -> each member's logits (members, n, K); a
        single network returns (1, n, K)."""
        raise NotImplementedError

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised features float32 (n, F) -> each member's logits, (members, n, K)."""
        x = x.clamp(-ood.CLIP, ood.CLIP)  # in the ONNX graph too
        if self.input_mask is not None:
            x = x * self.input_mask[:x.shape[1]]
        return self.logits(x)

    @staticmethod
    def combine(z: torch.Tensor) -> torch.Tensor:
        """Members' logits (members, n, K) -> the ensemble's logits (n, K): the logit of the mean P
        (a deep ensemble, Lakshminarayanan et al., NeurIPS 2017)."""
        if len(z) == 1:
            return z[0]
        p = torch.sigmoid(z).mean(0).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)

    def forward(self, x):
        return self.combine(self.member_logits(x))

    def exportable(self) -> nn.Module:
        """What ``export.write_onnx`` exports: standardised features float32 (n, F) -> P(correct) (n, K)."""
        return Probabilities(self)

    def ignore_inputs(self, mask: np.ndarray) -> None:
        """Ignore the feature columns where bool (F,) ``mask`` is False whatever values arrive there (the
        network was trained on constant zeros in them, ``search.masked``): they are set to 0 after
        standardisation, in torch and in the exported graph."""
        self.input_mask = torch.from_numpy(np.asarray(mask, dtype=np.float32))


class Probabilities(nn.Module):
    """``net``'s P(correct): sigmoid of the ensemble's logits, float32 (n, K)."""

    def __init__(self, net: RouterNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.sigmoid(self.net(x))
