"""The one helper every section shares: a section's dataclass from its mapping."""

from __future__ import annotations

import dataclasses


def _build(cls, d: dict, where: str):
    """Dataclass from a mapping; unknown keys are an error naming the section."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None
