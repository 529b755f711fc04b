"""Classes of your own named in a config as "package.module:ClassName" (backends, router architectures)."""

from __future__ import annotations

import importlib


def import_class(spec: str, where: str) -> type:
    """Import the class ``spec`` ("package.module:ClassName"). Raises ValueError beginning with ``where``
    (what the config was setting) for a malformed string, a module that does not import (with its error),
    a missing attribute or an attribute that is not a class."""
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ValueError(f"{where}: expected a registered name or 'package.module:ClassName'")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise ValueError(f"{where}: cannot import module {mod!r} ({type(e).__name__}: {e})") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"{where}: module {mod!r} has no attribute {attr!r}")
    if not isinstance(cls, type):
        raise ValueError(f"{where}: {mod}.{attr} is not a class (a {type(cls).__name__})")
    return cls
