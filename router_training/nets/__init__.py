"""Router network architectures (``router.arch``), in a registry as dataset kinds, backends and baselines
are. An architecture is one module here with a ``RouterNet`` subclass under ``@register("name")``, plus
its name in the import line at the bottom of this file; or a class of your own, given as
``router.arch: "package.module:ClassName"``. Its options come from ``router.arch_options``, checked at
config load against its constructor (``check_options``). ``fit.RouterModule`` builds the network named
by the config, trains it and ``export`` writes its ``RouterNet.exportable()`` as ONNX.

Built in: ``thumbnail_cnn`` (the default: signals MLP + a small CNN on the thumbnail, a deep ensemble)
and ``linear`` (per-model logistic regression on the signals).
"""

from __future__ import annotations

from .base import ARCHS, Probabilities, RouterNet, build, check_options, register, resolve

__all__ = ["ARCHS", "Probabilities", "RouterNet", "build", "check_options", "register", "resolve"]

from . import linear, thumbnail_cnn  # noqa: E402,F401  the registered architectures (registry order)
