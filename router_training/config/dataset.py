"""The ``dataset`` section (``DatasetConfig``): which questions, how they are split and degraded, and
``expand_env`` for ``${VAR}`` in the paths of any section."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import kinds
from ..kinds.easyvqa import DEGRADATIONS as EASYVQA_DEGRADATIONS

DATASET_KINDS = tuple(kinds.KINDS)  # the registered kinds (router_training/kinds/)
# our column -> required?  (``columns`` maps these names to the dataset's own). answers are optional:
# a question without one is scored by the grades in its models' outcome files (``outcomes.replay``)
DATASET_COLUMNS = {"image": True, "question": True, "answers": False, "options": False,
                   "question_type": False, "image_id": False, "sample_id": False}
SCORERS = ("vqa", "exact", "mc", "numeric", "given")  # scoring.SCORERS (config stays free of scoring imports)


@dataclass
class DatasetConfig:
    """The questions the router learns and is judged on, split by image into ``splits`` (seeded), each
    image with one seeded degradation drawn from ``degradations`` (kind -> weight; severity uniform in
    ``severity``). ``limit_images`` keeps a seeded subset of images (all their questions).

    ``kind`` (a registered ``kinds.DatasetKind``; each checks and loads its own keys):

    - ``easyvqa``: easy-VQA's test split (``limit_train_images``: images for the reference models).
      Default degradations: a mix of blur, low light, downscaling, noise, JPEG and colour casts.
    - ``hf``: any dataset ``datasets.load_dataset`` reads: ``path`` (hub name, local folder, or a builder
      such as "parquet" with ``data_files``), ``name`` (config), ``split``, ``revision``, and ``columns``
      mapping our names to theirs: image, question, answers (required), question_type, image_id,
      sample_id (optional). A dotted name reads a field of a nested column ("answers.answer": the
      ``answer`` of each item of ``answers``). ``images`` (optional) names a second dataset holding the
      images, joined on image_id: {path (default: ``path``), name, split, data_files, revision,
      columns: {image_id, image}}.
    - ``folder``: ``images_dir`` and ``questions``, a JSONL file with one object per question: image
      (file name under ``images_dir``), question, answers (a list or one string), and optionally
      question_id and question_type; ``columns`` renames those keys (sample_id is question_id).

    For ``hf`` and ``folder`` the default degradations are none ({"clean": 1.0}): real data brings its
    own conditions. Relative local paths are resolved against the folder of the config file naming them;
    ``${VAR}`` in a path is the environment variable VAR (an unset one is an error naming it).

    ``scorer``: how an answer is graded against the references (``scoring.score``): "vqa" (VQAv2
    accuracy, the default), "exact", "mc" (multiple choice, with an ``options`` column), "numeric"
    (relative tolerance ``numeric_rel_tol``) or "given" (only the outcome files' own grades).
    ``split_by``: the column whose groups never straddle two router splits (default ``image_id``; e.g.
    the template or image group a question was generated from); for ``hf`` and ``folder`` any column of
    the data, for ``easyvqa`` only ``image_id``.
    ``on_bad_row``: what the data stage does with rows it cannot use (no image, an unreadable or
    undecodable image, a question ``features.check_question`` refuses, a missing or duplicate id, a
    malformed JSONL line): "error" (default) lists every one of them in one pass and stops; "skip" drops
    them, writes them with their reasons to data/<run>/bad_rows.jsonl and goes on with the rest.
    """

    kind: str = "easyvqa"
    seed: int = 0
    splits: dict = field(default_factory=lambda: {"router-train": 0.5, "router-val": 0.25, "router-test": 0.25})
    degradations: dict | None = None  # None: the kind's default (see above)
    severity: tuple = (0.45, 1.0)
    limit_images: int | None = None  # router-split images (a seeded subset)
    limit_train_images: int | None = None  # easyvqa: reference-model training images
    # kind "hf"
    path: str | None = None
    name: str | None = None
    split: str | None = None
    data_files: str | list | dict | None = None
    revision: str | None = None
    columns: dict = field(default_factory=dict)
    images: dict | None = None
    # kind "folder"
    images_dir: str | None = None
    questions: str | None = None
    scorer: str = "vqa"
    numeric_rel_tol: float = 1e-4
    split_by: str = "image_id"
    on_bad_row: str = "error"

    def __post_init__(self):
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"dataset.on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        kind = kinds.get(self.kind)
        if self.scorer not in SCORERS:
            raise ValueError(f"dataset.scorer must be one of {SCORERS}, got {self.scorer!r}")
        if not isinstance(self.split_by, str) or not self.split_by:
            raise ValueError(f"dataset.split_by must be a column name, got {self.split_by!r}")
        if not kind.any_split_by and self.split_by != "image_id":
            raise ValueError(f"dataset.split_by: kind {self.kind!r} splits by image_id only")
        if self.degradations is None:
            self.degradations = dict(kind.default_degradations)
        for other in kinds.KINDS.values():  # keys only other kinds read must be unset
            for key in set(other.keys) - set(kind.keys):
                if getattr(self, key) not in (None, {}):
                    users = [k.name for k in kinds.KINDS.values() if key in k.keys]
                    raise ValueError(f"dataset: key {key!r} is for kind {' or '.join(map(repr, users))}, "
                                     f"not {self.kind!r}")
        if not isinstance(self.columns, dict):
            raise ValueError(f"dataset.columns: expected a mapping (our name: their name), got {self.columns!r}")
        unknown = set(self.columns) - set(DATASET_COLUMNS)
        if unknown:
            raise ValueError(f"dataset.columns: unknown names {sorted(unknown)}; ours are {sorted(DATASET_COLUMNS)}")
        kind.check(self)

    def resolve_paths(self, base: Path) -> None:
        """Make relative local paths absolute against ``base`` (the folder of the config file naming
        them), as the kind says (``DatasetKind.resolve_paths``)."""
        def local(p):
            p = expand_env(p, "dataset")
            return p if Path(p).is_absolute() else str((base / p).resolve())

        kinds.get(self.kind).resolve_paths(self, base, local)


_ENV = re.compile(r"\$\{(\w+)\}")


def expand_env(path: str, where: str) -> str:
    """``path`` with each ``${VAR}`` replaced by the environment variable VAR. Raises ValueError naming
    the variable and ``where`` when it is unset or empty."""
    def sub(m):
        v = os.environ.get(m.group(1))
        if not v:
            raise ValueError(f"{where}: path {path!r} needs the environment variable {m.group(1)} (unset); "
                             f"set it, e.g. `export {m.group(1)}=/path/to/the/folder`")
        return v
    return _ENV.sub(sub, path)
