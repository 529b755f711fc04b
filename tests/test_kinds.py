"""A dataset kind is one class in the registry (``router_training.kinds``): a kind defined here, in a
test module, is checked by the config and loaded by the data stage with no other change."""

import io

import datasets
import pytest
from PIL import Image

from router_training import data, kinds
from router_training.config import DatasetConfig
from router_training.sources import normalize


class Squares(kinds.DatasetKind):
    """Six generated images (a square of one colour each), one question per image; ``path`` is its
    only key (the colour of the last square, to show that a kind reads its own keys)."""

    keys = ("path",)
    default_degradations = {"clean": 0.5, "blur": 0.5}

    def check(self, dc):
        if dc.path not in ("red", "blue"):
            raise ValueError(f"dataset: kind 'squares' needs path 'red' or 'blue', got {dc.path!r}")

    def load(self, dc, cache_file=None, bad=None):
        colours = ["green"] * 5 + [dc.path]
        rows = []
        for i, c in enumerate(colours):
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), c).save(buf, format="PNG")
            rows.append({"img": {"bytes": buf.getvalue(), "path": None}, "q": "What colour is the square?",
                         "a": [c]})
        raw = datasets.Dataset.from_list(rows).cast_column("img", datasets.Image(decode=False))
        return normalize(raw, {"image": "img", "question": "q", "answers": "a"}, "squares", dc.limit_images,
                         dc.seed, cache_file=cache_file, on_bad_row=dc.on_bad_row, bad=bad)


@pytest.fixture
def squares(monkeypatch):
    monkeypatch.setitem(kinds.KINDS, "squares", Squares())
    kinds.KINDS["squares"].name = "squares"
    return kinds.KINDS["squares"]


def test_a_new_kind_is_checked_and_loaded(squares):
    dc = DatasetConfig(kind="squares", path="blue")
    assert dc.degradations == {"clean": 0.5, "blur": 0.5}  # the kind's default
    base = data.load_base(dc)
    assert len(base) == 6 and base["answers"][-1] == ["blue"] and len(set(base["image_id"])) == 2
    assert base[5]["image"].convert("RGB").getpixel((0, 0)) == (0, 0, 255)  # decoded by the base schema
    with pytest.raises(ValueError, match="needs path 'red' or 'blue'"):
        DatasetConfig(kind="squares", path="pink")
    with pytest.raises(ValueError, match="key 'questions' is for kind 'folder', not 'squares'"):
        DatasetConfig(kind="squares", path="red", questions="q.jsonl")
    with pytest.raises(ValueError, match=r"key 'path' is for kind 'hf' or 'squares', not 'easyvqa'"):
        DatasetConfig(path="red")


def test_unknown_kind_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"dataset.kind must be one of \('easyvqa', 'folder', 'hf'\)"):
        DatasetConfig(kind="nope")
