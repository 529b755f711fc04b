"""One image-preparation path (router_training.core.images) for features, models and degradations: every Pillow
mode mapped deliberately (each against its 8-bit RGB equivalent), transparency on white, EXIF orientation,
JPEG draft decoding, cost bounded by the decoded image, the pixel budget, thin images for processors
with a minimum side and a maximum aspect ratio."""

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from router_training import degrade
from router_training.core import features as F, images

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (40, 48), dtype=np.uint8)  # (H, W) 8-bit grey
COLOUR = RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)


def rgb_of(a8: np.ndarray) -> Image.Image:
    """The 8-bit RGB image a grey (H, W) or colour (H, W, 3) uint8 array shows."""
    return Image.fromarray(np.repeat(a8[..., None], 3, axis=2) if a8.ndim == 2 else a8, "RGB")


def png(im: Image.Image, **kw) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def same(a: Image.Image, b: Image.Image, atol: int = 0):
    assert a.mode == b.mode == "RGB" and a.size == b.size
    np.testing.assert_allclose(np.asarray(a, dtype=int), np.asarray(b, dtype=int), atol=atol)


def same_features(a, b):
    fa, pa = F.image_parts(a)
    fb, pb = F.image_parts(b)
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pa, pb, atol=1e-6)


@pytest.mark.parametrize("name, make, expected", [
    ("L", lambda: Image.fromarray(GREY, "L"), lambda: rgb_of(GREY)),
    ("1", lambda: Image.fromarray(GREY > 127), lambda: rgb_of(np.where(GREY > 127, 255, 0).astype(np.uint8))),
    ("P", lambda: rgb_of(COLOUR).quantize(64), lambda: rgb_of(COLOUR).quantize(64).convert("RGB")),
    ("I;16 (x257)", lambda: Image.fromarray(GREY.astype(np.uint16) * 257), lambda: rgb_of(GREY)),
    ("I;16B (PNG 16-bit)", lambda: png(Image.fromarray(GREY.astype(np.uint16) * 257)), lambda: rgb_of(GREY)),
    ("I 16-bit data", lambda: Image.fromarray(GREY.astype(np.int32) * 257, "I"), lambda: rgb_of(GREY)),
    ("I 8-bit data", lambda: Image.fromarray(GREY.astype(np.int32), "I"), lambda: rgb_of(GREY)),
    ("F 0..1", lambda: Image.fromarray(GREY.astype(np.float32) / 255.0, "F"), lambda: rgb_of(GREY)),
    ("F 0..255", lambda: Image.fromarray(GREY.astype(np.float32), "F"), lambda: rgb_of(GREY)),
    ("CMYK", lambda: rgb_of(COLOUR).convert("CMYK"), lambda: rgb_of(COLOUR)),
    ("YCbCr", lambda: rgb_of(COLOUR).convert("YCbCr"), lambda: rgb_of(COLOUR).convert("YCbCr").convert("RGB")),
    ("RGBA opaque", lambda: rgb_of(COLOUR).convert("RGBA"), lambda: rgb_of(COLOUR)),
    ("LA opaque", lambda: Image.fromarray(GREY, "L").convert("LA"), lambda: rgb_of(GREY)),
])
def test_every_mode_matches_its_8bit_rgb_equivalent(name, make, expected):
    """Pixels and features of each mode equal those of the 8-bit RGB image it shows (16-bit and float
    scaled, not clipped: before, an "F" image of 0..1 came out all black)."""
    same(images.rgb(make()), expected())
    same_features(make(), expected())


def test_float_tiff_of_0_to_1_is_not_black():
    buf = io.BytesIO()
    Image.fromarray(GREY.astype(np.float32) / 255.0, "F").save(buf, format="TIFF")
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert im.mode == "F"
    brightness = F.image_features(im)[F.IMAGE_FEATURES.index("brightness")]
    assert brightness == pytest.approx(GREY.mean() / 255.0, abs=0.01) and brightness > 0.3
    nan = GREY.astype(np.float32) / 255.0
    nan[0, :5] = np.nan  # NaN reads as 0, not as a reason to drop the 0..1 scale
    assert np.asarray(images.rgb(Image.fromarray(nan, "F")))[0, :5].max() == 0
    same(images.rgb(Image.fromarray(nan, "F")).crop((0, 1, 48, 40)), rgb_of(GREY).crop((0, 1, 48, 40)))


def half_transparent(mode_of_result: str):
    """A 2 x 1 image: an opaque red pixel and a fully transparent one hiding black."""
    a = np.array([[[255, 0, 0, 255], [0, 0, 0, 0]]], np.uint8)
    return Image.fromarray(a, "RGBA") if mode_of_result == "RGBA" else Image.fromarray(a, "RGBA").convert("RGBa")


def palette_with_transparency() -> Image.Image:
    """A palette PNG (red, black) whose black entry is transparent (tRNS bytes)."""
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 0, 0])
    im = png(pal, transparency=bytes([255, 0]))
    assert im.mode == "P" and "transparency" in im.info
    return im


@pytest.mark.parametrize("name, make", [
    ("RGBA PNG", lambda: png(half_transparent("RGBA"))),
    ("RGBa", lambda: half_transparent("RGBa")),
    ("RGB PNG with a tRNS colour key", lambda: png(Image.fromarray(np.array([[[255, 0, 0], [0, 0, 0]]], np.uint8)),
                                                   transparency=(0, 0, 0))),
    ("P PNG with transparency bytes", lambda: palette_with_transparency()),
    ("PA", lambda: half_transparent("RGBA").convert("PA")),
])
def test_transparency_is_composited_on_white(name, make):
    """Before, each of these came out with the hidden colour (black) where a viewer shows white."""
    im = make()
    out = np.asarray(images.rgb(im))
    assert out[0, 0].tolist() == [255, 0, 0]  # opaque: as it is
    assert out[0, 1].tolist() == [255, 255, 255]  # transparent: white, not the hidden black


def test_half_alpha_blends_with_white_and_la_too():
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 3] = 128  # black at half opacity
    out = np.asarray(images.rgb(Image.fromarray(a, "RGBA")))
    assert np.all(np.abs(out.astype(int) - 127) <= 1)
    la = np.asarray(images.rgb(Image.fromarray(np.stack([np.zeros((4, 4), np.uint8), a[..., 3]], -1), "LA")))
    assert np.all(np.abs(la.astype(int) - 127) <= 1)


def test_a_large_transparent_image_is_reduced_as_if_composited_first():
    """Reduced before compositing (premultiplied average), a 4096 x 64 RGBA image comes out as the
    reduction of its composite on white, to within rounding."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 4096, 4), dtype=np.uint8)
    a[:, :2048, 3] = 0  # the left half fully transparent over random colours
    rgba = Image.fromarray(a, "RGBA")
    composite = Image.new("RGB", rgba.size, (255, 255, 255))
    composite.paste(rgba, mask=rgba.getchannel("A"))
    work, _ = images.load(rgba)
    assert work.size == (1024, 16)
    same(work, composite.reduce(4), atol=2)
    assert np.asarray(work)[:, :512].min() == 255  # the transparent half: white


def test_a_large_16bit_image_is_reduced_as_its_8bit_equivalent():
    """A 4100 x 300 16-bit grey image (reduced by 4, averaged as 16-bit levels in C, then / 257) comes out
    as the reduction of its 8-bit equivalent."""
    a8 = np.random.default_rng(2).integers(0, 256, (300, 4100), dtype=np.uint8)
    work, _ = images.load(Image.fromarray(a8.astype(np.uint16) * 257))
    same(work, Image.fromarray(a8, "L").reduce(4).convert("RGB"))


def test_transparency_reaches_features_and_degradations():
    a = np.zeros((64, 64, 4), np.uint8)  # fully transparent black: a viewer shows white
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    same_features(Image.fromarray(a, "RGBA"), white)
    same(degrade.apply(Image.fromarray(a, "RGBA"), "clean", 0.0, np.random.default_rng(0)), white)


def test_exif_orientation_once_everywhere():
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (200, 100), (200, 30, 30)).save(buf, format="JPEG", exif=exif)
    data = buf.getvalue()
    assert images.rgb(Image.open(io.BytesIO(data))).size == (100, 200)
    assert images.load(data)[1] == (100, 200)
    turned = images.prepare(Image.open(io.BytesIO(data)))
    assert images.rgb(turned).size == (100, 200)  # not turned a second time
    assert images.prepare(turned).size == (100, 200)


def test_reduction_is_a_power_of_two_to_the_working_side():
    assert images.reduction((2047, 100)) == 1
    assert images.reduction((2048, 100)) == 2
    assert images.reduction((12000, 12000)) == 8  # longer side 1500, in [1024, 2048)
    work, size = images.load(Image.new("RGB", (4100, 30), (9, 9, 9)))
    assert size == (4100, 30) and work.size == (1025, 8)


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_matches_a_full_decode():
    """Opened here, a 4096 x 3072 JPEG is decoded at 1/4 scale (DCT scaling): the working image has the
    size of the full decode reduced by 4, and its features are close to those of that reduction."""
    yy, xx = np.mgrid[0:3072, 0:4096]
    a = np.stack([(xx // 16) % 256, (yy // 16) % 256, ((xx + yy) // 64) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    work, size = images.load(data)
    assert size == (4096, 3072) and work.size == (1024, 768)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    full, _ = images.load(decoded)  # a decoded image is reduced by Image.reduce instead
    assert full.size == (1024, 768)
    same(work, full, atol=40)
    assert np.abs(np.asarray(work, float) - np.asarray(full, float)).mean() < 2.0
    np.testing.assert_allclose(F.image_features(data), F.image_features(decoded), rtol=0.1, atol=0.05)


def test_cost_is_bounded_by_the_decoded_image():
    """A 3000 x 3000 16-bit grey PNG (18 MB decoded): features allocate no full-size float copy (the
    numpy memory tracemalloc sees stays under 8 MB; before, the float64 copy alone was 72 MB)."""
    a = (np.add.outer(np.arange(3000), np.arange(3000)) * 7 % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    data = buf.getvalue()
    F.image_parts(Image.new("RGB", (8, 8)))  # warm-up: imports, caches
    tracemalloc.start()
    try:
        F.image_parts(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8e6, f"{peak / 1e6:.1f} MB traced"


def test_pixel_budget_refuses_before_decoding():
    """A file whose header says 4000 x 4000 but holds no pixel data: the budget refuses it by name
    before any decoding (which would fail on the truncated data)."""
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, format="PNG")
    truncated = buf.getvalue()[:200]
    with pytest.raises(images.ImageTooLarge, match=r"4000x4000 px = 16.0 Mpx is above the pixel budget of 1.0 Mpx"):
        images.load(truncated, max_pixels=1_000_000)
    with pytest.raises(OSError):
        images.load(truncated)  # no budget: Pillow's own error on the truncated data
    assert issubclass(images.ImageTooLarge, ValueError)
    with pytest.raises(ValueError, match="no pixels"):
        images.load(Image.new("RGB", (0, 3)))


@pytest.mark.parametrize("size, expected", [((1, 4000), (28, 5600)), ((4000, 1), (5600, 28)),
                                            ((26, 28), (28, 31)), ((300, 20), (420, 28)), ((10, 3000), (28, 5600))])
def test_thin_images_are_padded_to_the_aspect_limit_then_enlarged(size, expected):
    """min_side 28 and max_aspect 200 (Qwen2-VL): enlarging a 1 x 4000 strip to 28 px wide gave
    28 x 112000 (aspect 4000, refused by the processor); padding first gives 28 x 5600."""
    im = Image.new("RGB", size, (30, 30, 200))
    out = images.prepare(im, 28, 200)
    assert out.size == expected
    assert max(out.size) <= 200 * min(out.size) and min(out.size) >= 28
    a = np.asarray(out)
    if size[0] * 200 < size[1]:  # padded on the left and right with white, the strip in the middle
        assert a[:, 0].tolist() == [[255, 255, 255]] * a.shape[0]
        assert a[a.shape[0] // 2, a.shape[1] // 2, 0] < 240  # the strip (bicubic-blurred when 1 px wide)
    assert images.prepare(im, 28).size[0] * images.prepare(im, 28).size[1] >= 28 * 28  # no max_aspect: as before


def test_qwen2_vl_answers_a_thin_strip(tmp_path):
    """The tiny Qwen2-VL backend (patch 14 x merge 2, aspect limit 200) answers 1 x 4000 and 4000 x 1
    images without an error (before: 'absolute aspect ratio must be smaller than 200')."""
    pytest.importorskip("transformers")
    from tiny_vlms import BUILDERS

    from router_training import backends, vlm

    BUILDERS["qwen2_vl"](tmp_path / "qwen")
    b = backends.build("transformers", name="tiny-qwen", model=str(tmp_path / "qwen"), max_new_tokens=2)
    assert (b.min_side, b.max_aspect) == (28, 200) and vlm.max_aspect_of(b.processor) == 200
    out = b.answer([Image.new("RGB", (1, 4000), (200, 0, 0)), Image.new("RGB", (4000, 1), (0, 0, 200))],
                   ["What color?", "What color?"])
    assert [a.error for a in out] == ["", ""]
