"""TransformersBackend on tiny random-weight Idefics3 and Qwen2-VL checkpoints built offline
(see tests/tiny_vlms.py): answers are garbage but deterministic, so the tests check the contract
(types, ranges, token counts), batching / left-padding equivalence and image preparation."""

import copy
import io
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from router_training import backends  # noqa: E402
from router_training.core import images  # noqa: E402
from router_training import vlm  # noqa: E402,F401  registers the "transformers" backend

from tiny_vlms import BUILDERS  # noqa: E402

KINDS = sorted(BUILDERS)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """Folder with one saved tiny model per kind (built once per session)."""
    root = tmp_path_factory.mktemp("tiny_vlms")
    for kind, build in BUILDERS.items():
        build(root / kind)
    return root


@pytest.fixture(scope="session")
def loaded(tiny_vlm_dir):
    """kind -> backend loaded through the registry, as a hub id would be."""
    return {kind: backends.build("transformers", name=f"tiny-{kind}", model=str(tiny_vlm_dir / kind),
                                 max_new_tokens=6, batch_size=8)
            for kind in KINDS}


def noise_images(n, size=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def same(a, b):
    assert [x.text for x in a] == [y.text for y in b]
    assert [x.output_tokens for x in a] == [y.output_tokens for y in b]
    np.testing.assert_allclose([x.confidence for x in a], [y.confidence for y in b], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_answer_contract(loaded, kind):
    b = loaded[kind]
    ims, qs = noise_images(3), ["What color is the shape?", "How many?", "Is there a circle?"]
    out = b.answer(ims, qs)
    assert len(out) == 3
    for a, im, q in zip(out, ims, qs):
        assert isinstance(a, backends.Answer) and isinstance(a.text, str) and a.text == a.text.strip()
        assert 0.0 <= a.confidence <= 1.0 and a.compute_s > 0 and a.error == ""
        assert a.input_tokens > len(q.encode()) and 0 < a.output_tokens <= 6
        assert a.payload_bytes == backends.payload_bytes(images.prepare(im, b.min_side), q) > 0
    with pytest.raises(ValueError):
        b.answer(ims, qs[:2])


@pytest.mark.parametrize("kind", KINDS)
def test_batch_equals_singles(loaded, kind):
    b = loaded[kind]
    ims, qs = noise_images(4, seed=1), ["What shape?", "What color is it?", "Is it blue?", "How many shapes?"]
    same(b.answer(ims, qs), [b.answer([im], [q])[0] for im, q in zip(ims, qs)])


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding(loaded, kind):
    b = loaded[kind]
    im = noise_images(1, seed=2)[0]
    long_q = ("Looking carefully at every part of the picture, including the corners and edges, "
              "ignoring the background, what is the colour of the largest shape near the middle of this image?")
    assert len(long_q.split()) == 30
    qs = ["Colour?", long_q]
    batch = b.answer([im, im], qs)
    assert batch[0].input_tokens < batch[1].input_tokens
    same(batch, [b.answer([im], [q])[0] for q in qs])


def test_min_side_derived(loaded):
    assert loaded["qwen2_vl"].min_side == 28  # patch_size 14 * merge_size 2
    assert loaded["idefics3"].min_side == 1


def test_small_and_strip_images_qwen(loaded):
    b = loaded["qwen2_vl"]
    ims = [Image.new("RGB", (26, 28), (200, 30, 30)), Image.new("RGB", (300, 20), (30, 30, 200))]
    assert [images.prepare(im, b.min_side).size for im in ims] == [(28, 31), (420, 28)]
    out = b.answer(ims, ["What color?", "What color?"])
    assert [a.error for a in out] == ["", ""] and all(a.output_tokens > 0 for a in out)


@pytest.mark.parametrize("kind", KINDS)
def test_exif_orientation(loaded, kind):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    noise_images(1, size=(200, 100), seed=3)[0].save(buf, format="JPEG", exif=exif)
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert im.size == (200, 100)
    assert images.prepare(im).size == (100, 200)
    b = loaded[kind]
    (a,) = b.answer([im], ["Which way is up?"])
    assert a.error == "" and isinstance(a.text, str)
    assert a.payload_bytes == backends.payload_bytes(images.prepare(im, b.min_side), "Which way is up?")


@pytest.mark.parametrize("kind", KINDS)
def test_truncates_at_eos(loaded, kind):
    """Random weights never emit EOS, so make every token an EOS: each answer stops after one token."""
    b = copy.copy(loaded[kind])
    b.eos_ids = set(range(len(b.tokenizer)))
    full = loaded[kind].answer(noise_images(2, seed=4), ["Shape?", "Colour?"])
    out = b.answer(noise_images(2, seed=4), ["Shape?", "Colour?"])
    assert [a.output_tokens for a in out] == [1, 1] and [a.output_tokens for a in full] == [6, 6]
    for a, f in zip(out, full):
        assert isinstance(a.text, str) and 0.0 <= a.confidence <= 1.0 and a.confidence != f.confidence
