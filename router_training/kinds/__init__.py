"""Dataset kinds: where a run's questions come from (``dataset.kind``), in a registry as backends and
baselines are. A kind is one module here with a ``DatasetKind`` subclass under ``@register("name")``,
plus its import line at the bottom of this file; the config checks a ``dataset`` section against its
kind (``DatasetKind.check``) and the data stage loads it (``DatasetKind.load``). Light at import: a kind
module imports the standard library only (``datasets`` and the loaders when it loads), so importing the
config stays cheap.
"""

from __future__ import annotations

KINDS: dict[str, "DatasetKind"] = {}


def register(name: str):
    """Class decorator: ``KINDS[name]`` = an instance of the class (its ``name`` set)."""
    def deco(cls):
        KINDS[name] = cls()
        KINDS[name].name = name
        return cls
    return deco


def get(name: str) -> "DatasetKind":
    """The registered kind ``name``. Raises ValueError listing the registered kinds."""
    if name not in KINDS:
        raise ValueError(f"dataset.kind must be one of {tuple(KINDS)}, got {name!r}")
    return KINDS[name]


class DatasetKind:
    """One source of questions. Attributes: ``keys`` the ``DatasetConfig`` fields only this kind reads
    (a section of another kind must leave them unset); ``default_degradations`` (kind -> weight) when the
    section gives none; ``any_split_by`` whether ``split_by`` may name a column other than image_id;
    ``reencode_clean`` whether the splitter re-encodes its clean images too (as PNG, like the degraded
    ones: easy-VQA's, so that clean and degraded images differ only by the degradation)."""

    name: str = ""
    keys: tuple[str, ...] = ()
    default_degradations: dict = {"clean": 1.0}  # real data brings its own conditions
    any_split_by: bool = True
    reencode_clean: bool = False

    def check(self, dc) -> None:
        """Raise ValueError for a ``DatasetConfig`` this kind cannot load (beyond the generic checks)."""

    def resolve_paths(self, dc, base, local) -> None:
        """Make the section's relative local paths absolute: ``local(path) -> str`` resolves one against
        ``base`` (the folder of the config file naming it, a Path), expanding ``${VAR}``."""

    def load(self, dc, cache_file=None, bad: list | None = None):
        """The base dataset (``datasets.Dataset``, the row schema of ``data``: all questions, clean images);
        bad rows go to ``bad`` when given, else are settled by ``dc.on_bad_row``."""
        raise NotImplementedError


from . import easyvqa, folder, hf  # noqa: E402,F401  the registered kinds (registry order)
