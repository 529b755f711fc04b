"""Tests for router_training.degrade (seeded image degradations and their draw)."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from router_training import degrade as D
from router_training.core import features as F


def circle(size=64):
    """Red filled circle on white."""
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(255, 0, 0))
    return im


def feat(image, name):
    return float(F.image_features(image)[F.IMAGE_FEATURES.index(name)])


def rng(seed=0):
    return np.random.default_rng(seed)


def test_kinds():
    assert D.KINDS == ("clean", "blur", "low_light", "downscale", "noise", "jpeg", "color_cast")


@pytest.mark.parametrize("kind", D.KINDS)
def test_every_kind_returns_rgb_and_keeps_size_except_downscale(kind):
    im = circle()
    out = D.apply(im, kind, 0.5, rng())
    assert out.mode == "RGB"
    if kind == "downscale":
        assert out.size != im.size
    else:
        assert out.size == im.size
    assert out is not im


def test_blur_lowers_laplacian_variance():
    im = circle()
    sharp = feat(im, "log_laplacian_var")
    mild = feat(D.apply(im, "blur", 0.0, rng()), "log_laplacian_var")
    strong = feat(D.apply(im, "blur", 1.0, rng()), "log_laplacian_var")
    assert sharp > mild > strong
    assert sharp - strong > 1.0  # log scale: variance down by more than e


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 1.0])
def test_low_light_scales_intensity(s):
    im = circle()
    x = np.asarray(im, dtype=np.float64)
    y = np.asarray(D.apply(im, "low_light", s, rng()), dtype=np.float64)
    f = 0.55 - 0.35 * s
    # every pixel is the scaled value rounded to an integer
    assert np.abs(y - x * f).max() <= 0.5 + 1e-6
    assert y.mean() == pytest.approx(x.mean() * f, abs=0.5)
    # white background: 255 * f rounded
    assert tuple(y[0, 0]) == (round(255 * f),) * 3


def test_low_light_lowers_brightness_feature():
    im = circle()
    b0 = feat(im, "brightness")
    b1 = feat(D.apply(im, "low_light", 1.0, rng()), "brightness")
    assert b1 == pytest.approx(b0 * 0.2, abs=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("s,side", [(0.0, 29), (0.5, 19), (1.0, 10)])
def test_downscale_size(s, side):
    # side scaled by 0.45 - 0.3 s: 64 * 0.45 = 28.8 -> 29; 64 * 0.3 = 19.2 -> 19; 64 * 0.15 = 9.6 -> 10
    out = D.apply(circle(), "downscale", s, rng())
    assert out.size == (side, side)


def test_downscale_non_square_and_minimum():
    im = Image.new("RGB", (200, 100), "white")
    assert D.apply(im, "downscale", 1.0, rng()).size == (30, 15)
    # 16 * 0.15 = 2.4 -> clamped to 4 px
    assert D.apply(Image.new("RGB", (16, 16)), "downscale", 1.0, rng()).size == (4, 4)


def test_noise_raises_noise_sigma():
    im = circle()
    clean = feat(im, "noise_sigma")
    mild = feat(D.apply(im, "noise", 0.0, rng(1)), "noise_sigma")
    strong = feat(D.apply(im, "noise", 1.0, rng(1)), "noise_sigma")
    assert clean < 5.0
    assert mild > clean + 5.0
    assert strong > mild


def test_noise_is_gaussian_with_documented_sigma_on_midgrey():
    # mid-grey leaves room on both sides, so clipping is rare at sigma 15 + 50 * 0.2 = 25
    im = Image.new("RGB", (64, 64), (128, 128, 128))
    y = np.asarray(D.apply(im, "noise", 0.2, rng(3)), dtype=np.float64)
    assert y.mean() == pytest.approx(128, abs=1.5)
    assert y.std() == pytest.approx(25.0, rel=0.05)


def test_clean_returns_equal_copy():
    im = circle()
    out = D.apply(im, "clean", 0.0, rng())
    assert out is not im
    assert np.array_equal(np.asarray(out), np.asarray(im))
    out.putpixel((0, 0), (0, 0, 0))
    assert im.getpixel((0, 0)) == (255, 255, 255)


def test_clean_converts_to_rgb():
    grey = Image.new("L", (8, 8), 100)
    out = D.apply(grey, "clean", 0.0, rng())
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (100, 100, 100)


def test_color_cast_scales_red_and_blue():
    im = Image.new("RGB", (8, 8), (100, 100, 100))
    out = D.apply(im, "color_cast", 1.0, rng())
    assert out.getpixel((3, 3)) == (135, 100, 65)


def test_jpeg_changes_pixels_but_not_size():
    im = circle()
    out = D.apply(im, "jpeg", 1.0, rng())
    assert out.size == im.size
    assert not np.array_equal(np.asarray(out), np.asarray(im))


@pytest.mark.parametrize("kind", ["noise", "blur", "jpeg"])
def test_same_seed_same_output(kind):
    im = circle()
    a = D.apply(im, kind, 0.7, rng(42))
    b = D.apply(im, kind, 0.7, rng(42))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_different_seed_different_noise():
    im = circle()
    a = D.apply(im, "noise", 0.7, rng(1))
    b = D.apply(im, "noise", 0.7, rng(2))
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown degradation"):
        D.apply(circle(), "fog", 0.5, rng())


@pytest.mark.parametrize("s", [-0.01, 1.01, 2.0, float("nan")])
def test_severity_out_of_range_raises(s):
    with pytest.raises(ValueError, match="severity"):
        D.apply(circle(), "blur", s, rng())


def test_draw_clean_only():
    r = rng(0)
    for _ in range(20):
        assert D.draw(r, {"clean": 1.0}) == ("clean", 0.0)


def test_draw_severity_in_range():
    r = rng(0)
    sevs = []
    for _ in range(300):
        kind, s = D.draw(r, {"blur": 1.0, "noise": 1.0}, severity_range=(0.3, 0.6))
        assert kind in ("blur", "noise")
        assert 0.3 <= s <= 0.6
        sevs.append(s)
    # uniform on [0.3, 0.6]: mean 0.45, and both halves are used
    assert np.mean(sevs) == pytest.approx(0.45, abs=0.02)
    assert min(sevs) < 0.33 and max(sevs) > 0.57
    # default range (0.2, 1.0)
    for _ in range(100):
        _, s = D.draw(r, {"low_light": 1.0})
        assert 0.2 <= s <= 1.0


def test_draw_same_seed_same_sequence():
    w = {"clean": 1.0, "blur": 2.0, "noise": 1.0}
    a, b = rng(5), rng(5)
    assert [D.draw(a, w) for _ in range(50)] == [D.draw(b, w) for _ in range(50)]


def test_draw_frequencies_follow_weights():
    w = {"clean": 0.5, "blur": 0.3, "noise": 0.2, "jpeg": 0.0}
    r = rng(123)
    counts = Counter(D.draw(r, w)[0] for _ in range(2000))
    assert counts["jpeg"] == 0
    # binomial sd at n=2000 is at most ~22 draws (1.1%); allow 4%
    for kind, p in w.items():
        assert counts[kind] / 2000 == pytest.approx(p, abs=0.04), (kind, counts)


def test_draw_unnormalised_weights():
    r = rng(7)
    counts = Counter(D.draw(r, {"clean": 3, "blur": 1})[0] for _ in range(2000))
    assert counts["clean"] / 2000 == pytest.approx(0.75, abs=0.04)


def test_draw_unknown_kind_raises():
    with pytest.raises(ValueError, match="fog"):
        D.draw(rng(), {"clean": 1.0, "fog": 1.0})
