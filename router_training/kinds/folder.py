"""Kind "folder": a folder of images and a JSONL file of questions (``sources.load_folder``)."""

from __future__ import annotations

from . import DatasetKind, register


@register("folder")
class Folder(DatasetKind):
    """``images_dir`` and ``questions`` (one JSON object per question: image, question, answers, and
    optionally question_id and question_type); ``columns`` renames those keys."""

    keys = ("images_dir", "questions", "columns")

    def check(self, dc) -> None:
        if not (dc.images_dir and dc.questions):
            raise ValueError("dataset: kind 'folder' needs 'images_dir' (the images) and 'questions' "
                             "(a JSONL file, one object per question)")

    def resolve_paths(self, dc, base, local) -> None:
        dc.images_dir, dc.questions = local(dc.images_dir), local(dc.questions)

    def load(self, dc, cache_file=None, bad=None):
        from ..sources import load_folder

        return load_folder(dc, cache_file, bad)
