"""Tests for router_training.core.features (numpy/Pillow-only feature extraction)."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from router_training.core import features as F


def feat(image, name):
    return float(F.image_features(image)[F.IMAGE_FEATURES.index(name)])


def tfeat(question, name):
    return float(F.text_features(question)[F.TEXT_FEATURES.index(name)])


def checkerboard(size=64, cell=4):
    yy, xx = np.indices((size, size))
    a = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
    return Image.fromarray(a, mode="L").convert("RGB")


def noise_image(size=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")


def colourful_image(size=48, seed=1):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def test_names_and_shapes():
    assert F.FEATURE_NAMES == F.IMAGE_FEATURES + F.TEXT_FEATURES + F.WORD_FEATURES + F.PIXEL_FEATURES
    assert len(F.PIXEL_FEATURES) == F.THUMBNAIL_SIDE ** 2 * 3
    assert len(set(F.FEATURE_NAMES)) == len(F.FEATURE_NAMES)
    x = F.extract(colourful_image(), "What color is the car?")
    assert x.shape == (len(F.FEATURE_NAMES),)
    assert x.dtype == np.float32 and np.all(np.isfinite(x))
    assert F.image_features(colourful_image()).shape == (len(F.IMAGE_FEATURES),)
    assert F.text_features("").shape == (len(F.TEXT_FEATURES),)
    assert F.word_features("").shape == (F.WORD_BUCKETS,) and not F.word_features("").any()
    img, pixels = F.image_parts(colourful_image())
    np.testing.assert_array_equal(x, np.concatenate([img, F.question_features("What color is the car?"), pixels]))


def test_thumbnail_is_exposure_normalised_and_row_major():
    """A 64 px image: left half red (200, 0, 0), right half blue (0, 0, 100). The 32 px thumbnail keeps
    the layout (channel-first: R plane, G plane, B plane, each row-major), divided by the brightest value
    (200); dimming the image by half changes nothing."""
    a = np.zeros((64, 64, 3), np.uint8)
    a[:, :32, 0], a[:, 32:, 2] = 200, 100
    t = F.thumbnail(Image.fromarray(a)).reshape(3, F.THUMBNAIL_SIDE, F.THUMBNAIL_SIDE)
    assert F.PIXEL_FEATURES[0] == "pixel_r_00_00" and F.PIXEL_FEATURES[F.THUMBNAIL_SIDE] == "pixel_r_01_00"
    np.testing.assert_allclose(t[0, :, :16], 1.0)
    np.testing.assert_allclose(t[2, :, 16:], 0.5)
    assert not t[1].any() and not t[0, :, 16:].any() and not t[2, :, :16].any()
    dim = F.thumbnail(Image.fromarray(a // 2))
    np.testing.assert_allclose(dim, t.ravel())
    assert not F.thumbnail(Image.new("RGB", (5, 3))).any()  # black stays 0, no division by zero


def test_thumbnail_keeps_thin_lines_of_a_large_drawing():
    """A 1024 px white drawing with one black line 2 px wide at x = 500..501 (a BlindTest-like figure):
    the box-filtered thumbnail shows it as a faint stroke in column 500 * 32 / 1024 = 15 of every row
    (2/32 of that column's pixels black: 1 - 1/16), and nowhere else. Nearest-neighbour sampling
    (which the thumbnail used before) missed the line in every row."""
    a = np.full((1024, 1024, 3), 255, np.uint8)
    a[:, 500:502] = 0
    t = F.thumbnail(Image.fromarray(a)).reshape(3, F.THUMBNAIL_SIDE, F.THUMBNAIL_SIDE)
    np.testing.assert_allclose(t[:, :, 15], 1 - 1 / 16, atol=0.01)
    np.testing.assert_allclose(np.delete(t, 15, axis=2), 1.0)


def test_thumbnail_subsample_keeps_every_stroke_two_pixels_wide():
    """From SUBSAMPLE_SIDE px up the thumbnail box-filters every other row and column (half the memory
    read per query): a stroke 2 px wide, vertical or horizontal, at any offset, still darkens one
    thumbnail column or row by 1/16 (one sampled line of the 16 that a 1024 px drawing puts in each
    thumbnail pixel); below SUBSAMPLE_SIDE every pixel is averaged, as before."""
    side = F.THUMBNAIL_SIDE
    for offset in range(4):
        a = np.full((1024, 1024, 3), 255, np.uint8)
        a[:, 500 + offset:502 + offset] = 0
        t = F.thumbnail(Image.fromarray(a)).reshape(3, side, side)[0]
        sampled = 500 + offset + (offset % 2 == 0)  # the stroke's odd column: the one the subsample keeps
        hit = sampled // 2 * side // 512  # its thumbnail column
        np.testing.assert_allclose(t[:, hit], 1 - 1 / 16, atol=0.01)
        np.testing.assert_allclose(np.delete(t, hit, axis=1), 1.0)
        tt = F.thumbnail(Image.fromarray(a.transpose(1, 0, 2).copy())).reshape(3, side, side)[0]
        np.testing.assert_array_equal(tt, t.T)  # a horizontal stroke: the same, transposed
    small = np.full((F.SUBSAMPLE_SIDE - 1, F.SUBSAMPLE_SIDE - 1, 3), 255, np.uint8)
    small[:, 40] = 0  # a 1-px line at an even column: averaged in below SUBSAMPLE_SIDE
    assert F.thumbnail(Image.fromarray(small)).min() < 0.95


# The two buckets of "circle" (halves of its 8-byte BLAKE2b digest mod 128), pinned: exported routers
# depend on these buckets, so a change must be deliberate (a new feature version), not an accident.
WORD_BUCKETS_CIRCLE = (61, 27)


def test_word_features_count_two_buckets_per_token():
    q = "Is the red shape not a circle? Red!"
    w = F.word_features(q)
    expected = np.zeros(F.WORD_BUCKETS)
    for t in ["is", "the", "red", "shape", "not", "a", "circle", "red"]:
        for b in F.word_buckets(t):
            expected[b] += 1
    np.testing.assert_array_equal(w, expected)
    assert w.sum() == 16 and w.max() >= 2  # "red" twice
    assert F.word_buckets("red") == F.word_buckets("red") and F.word_buckets("red") != F.word_buckets("blue")
    # stable across processes and releases: fixed by BLAKE2b, not by Python's salted hash()
    assert F.word_buckets("circle") == WORD_BUCKETS_CIRCLE
    np.testing.assert_array_equal(F.question_features(q), np.r_[F.text_features(q), w])


def test_laplacian_sharp_vs_blurred():
    sharp = checkerboard()
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    assert feat(sharp, "log_laplacian_var") > feat(blurred, "log_laplacian_var") + 2.0
    assert feat(sharp, "edge_density") > feat(blurred, "edge_density")


def test_constant_image():
    f = dict(zip(F.IMAGE_FEATURES, F.image_features(Image.new("RGB", (32, 20), (90, 90, 90)))))
    assert f["gray_entropy_bits"] == 0.0
    assert f["edge_density"] == 0.0
    assert f["log_laplacian_var"] == 0.0
    assert f["noise_sigma"] == 0.0
    assert f["rms_contrast"] == 0.0
    assert f["colorfulness"] == 0.0
    assert f["brightness"] == pytest.approx(90 / 255, abs=1e-6)


def test_noise_entropy_and_estimate():
    noisy = noise_image(64)  # analysed whole: 4,096 uniform draws, plug-in entropy ~0.05 bit under 8
    assert feat(noisy, "gray_entropy_bits") == pytest.approx(8.0, abs=0.1)
    assert feat(noisy, "noise_sigma") > 10 * max(feat(checkerboard(128, 16), "noise_sigma"), 1.0)
    assert feat(noisy, "jpeg_bpp") > feat(Image.new("L", (128, 128), 128), "jpeg_bpp")


def test_immerkaer_sigma_10():
    rng = np.random.default_rng(42)
    a = np.clip(128 + rng.normal(0, 10, (128, 128)), 0, 255).round().astype(np.uint8)
    assert feat(Image.fromarray(a, mode="L"), "noise_sigma") == pytest.approx(10.0, rel=0.2)


def test_large_images_use_a_thumbnail_a_native_crop_and_full_size_features():
    big = colourful_image(512).resize((512, 384))
    thumb = big.resize((64, 48), Image.Resampling.NEAREST)
    crop = big.crop((224, 160, 288, 224))
    fb, ft, fc = F.image_features(big), F.image_features(thumb), F.image_features(crop)
    idx = F.IMAGE_FEATURES.index
    size = [idx(k) for k in ("width_px", "height_px", "log2_pixels")]
    assert fb[size].tolist() == [512.0, 384.0, pytest.approx(np.log2(512 * 384))]
    native = [idx("log_laplacian_var"), idx("noise_sigma")]
    np.testing.assert_allclose(fb[native], fc[native], rtol=1e-6)
    rest = [i for i in range(len(F.IMAGE_FEATURES)) if i not in size + native]
    np.testing.assert_allclose(fb[rest], ft[rest], rtol=1e-5, atol=1e-6)


def test_sensor_noise_is_measured_at_native_resolution():
    # a box thumbnail of a 512 px image would divide sigma by 8; the native crop keeps it
    rng = np.random.default_rng(0)
    a = np.clip(128 + rng.normal(0, 10, (512, 512)), 0, 255).round().astype(np.uint8)
    assert feat(Image.fromarray(a, mode="L"), "noise_sigma") == pytest.approx(10.0, rel=0.2)


def test_brightness_darkened():
    img = colourful_image()
    dark = Image.eval(img, lambda v: v // 3)
    assert feat(dark, "brightness") < feat(img, "brightness") - 0.2


def test_colorfulness_and_saturation():
    grey = Image.new("RGB", (16, 16), (120, 120, 120))
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    assert feat(grey, "colorfulness") == 0.0
    assert feat(red, "colorfulness") > 80.0  # 0.3 * hypot(255, 127.5) = 85.5
    assert feat(grey, "mean_saturation") == 0.0
    assert feat(red, "mean_saturation") == pytest.approx(1.0)


def test_size_features():
    f = dict(zip(F.IMAGE_FEATURES, F.image_features(Image.new("RGB", (37, 11)))))
    assert (f["width_px"], f["height_px"]) == (37.0, 11.0)
    assert f["log2_pixels"] == pytest.approx(np.log2(37 * 11))


def test_tiny_images_are_finite():
    for size in [(1, 1), (2, 5), (3, 3)]:
        x = F.image_features(Image.new("RGB", size, (10, 200, 30)))
        assert np.all(np.isfinite(x))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK"])
def test_modes_match_rgb_conversion(mode):
    img = colourful_image().convert(mode)
    np.testing.assert_array_equal(F.image_features(img), F.image_features(img.convert("RGB")))


def test_16bit_is_rescaled_not_clipped():
    a16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    img16 = Image.fromarray(a16)
    img8 = Image.fromarray(np.round(a16 / 257.0).astype(np.uint8), mode="L")
    assert img16.mode.startswith("I;16")
    np.testing.assert_array_equal(F.image_features(img16), F.image_features(img8))
    assert 0.3 < feat(img16, "brightness") < 0.7


def test_empty_image_raises():
    with pytest.raises(ValueError, match="no pixels"):
        F.image_features(Image.new("RGB", (0, 0)))
    with pytest.raises(ValueError):
        F.extract(Image.new("RGB", (5, 0)), "what?")


@pytest.mark.parametrize("question, expected", [
    ("How many dogs?", "count"),
    ("What number of people are there?", "count"),
    ("Is there a red shape?", "yes/no"),
    ("Are the lights on?", "yes/no"),
    ("Doesn't it look wet?", "yes/no"),
    ("What color is the car?", "color"),
    ("Which colour is the bus?", "color"),
    ("What is the color of the sky?", "color"),
    ("what shape is in the image?", "what"),
    ("Which animal is larger?", "which"),
    ("Whose bag is this?", "who"),
    ("Where is the cat?", "where"),
    ("When was this taken?", "when"),
    ("Why is the man smiling?", "why"),
    ("How is the weather?", "how"),
    ("In this picture, how many cars are parked?", "count"),
    ("Describe the scene.", "other"),
    ("", "other"),
])
def test_question_type(question, expected):
    assert expected in F.QUESTION_TYPES
    assert F.question_type(question) == expected
    onehot = F.text_features(question)[2:2 + len(F.QUESTION_TYPES)]
    assert onehot.sum() == 1.0 and F.QUESTION_TYPES[int(onehot.argmax())] == expected


def test_text_counts_and_cues():
    q = "Is there not a circle?"
    assert tfeat(q, "cue_negation") == 1.0
    assert tfeat("Isn\u2019t it raining?", "cue_negation") == 1.0
    assert tfeat("Is there a circle?", "cue_negation") == 0.0
    assert tfeat(q, "word_count") == 5.0 and tfeat(q, "char_count") == len(q)
    assert tfeat("How many birds?", "cue_counting") == 1.0
    assert tfeat("What does the sign say?", "cue_reading") == 1.0
    assert tfeat("What is the number on the bus?", "cue_reading") == 1.0
    assert tfeat("What is next to the lamp?", "cue_spatial") == 1.0
    assert tfeat("What is on the left?", "cue_spatial") == 1.0
    assert tfeat("Is the dog bigger than the cat?", "cue_comparison") == 1.0
    assert tfeat("Is there a red shape?", "cue_color") == 1.0
    assert tfeat("what shape is in the image?", "cue_color") == 0.0
    assert tfeat("How come the road is wet?", "cue_reasoning") == 1.0
    # No cue in a plain question; punctuation does not block matching.
    plain = F.text_features("what shape?")
    assert plain[F.TEXT_FEATURES.index("cue_negation"):].sum() == 0.0
    assert tfeat("Is it (left)?", "cue_spatial") == 1.0
    with pytest.raises(TypeError):
        F.text_features(None)


def test_exif_orientation_is_applied_before_features():
    """A 200x100 JPEG with EXIF orientation 6 (rotate 90) is 100x200 for the features, as for the models."""
    import io

    from router_training.core.images import prepare

    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (200, 100), (200, 30, 30)).save(buf, format="JPEG", exif=exif.tobytes())
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert im.size == (200, 100)
    f = F.image_features(im)
    assert f[F.IMAGE_FEATURES.index("width_px")] == 100 and f[F.IMAGE_FEATURES.index("height_px")] == 200
    assert prepare(im).size == (100, 200)
    np.testing.assert_array_equal(f, F.image_features(prepare(im)))


# ---------------------------------------------------------------------------------------------------
# the question rule (features.check_question), shared by the data stage and the device
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "   ", "\t\n \u3000"])
def test_empty_questions_are_allowed_with_a_warning(raw):
    assert F.check_question(raw) == ("", "empty question: the router sees only the image")
    np.testing.assert_array_equal(F.question_features(raw), F.question_features(""))


@pytest.mark.parametrize("raw, position", [("what\x00 is it?", 4), ("\x1b[31mred?", 0), ("a\x7f", 1),
                                           ("broken \ud800 text", 7), ("next\x85line", 4)])
def test_control_characters_and_lone_surrogates_are_refused(raw, position):
    with pytest.raises(F.QuestionError, match=rf"control character U\+[0-9A-F]{{4}} at position {position}"):
        F.check_question(raw)
    with pytest.raises(F.QuestionError):
        F.question_features(raw)  # what extract (the device) computes applies the same rule


def test_over_long_questions_are_refused_and_whitespace_is_normalised():
    ok = "a" * F.MAX_QUESTION_CHARS
    assert F.check_question(ok) == (ok, None)
    with pytest.raises(F.QuestionError, match=rf"{F.MAX_QUESTION_CHARS + 1} characters, more than"):
        F.check_question(ok + "b")
    assert F.check_question("  what\tcolour \n\n is it?  ") == ("what colour is it?", None)
    assert F.check_question("\uff37\uff28\uff21\uff34 is it?")[0] == "WHAT is it?"  # full-width -> ASCII (NFKC)
    assert tfeat("what  is   it?", "char_count") == len("what is it?")
    with pytest.raises(TypeError):
        F.check_question(None)


@pytest.mark.parametrize("question, tokens", [
    ("\u56fe\u4e2d\u6709\u51e0\u4e2a\u5706\uff1f", ["\u56fe", "\u4e2d", "\u6709", "\u51e0", "\u4e2a", "\u5706"]),
    ("\u0421\u043a\u043e\u043b\u044c\u043a\u043e \u043a\u0440\u0443\u0433\u043e\u0432?",
     ["\u0441\u043a\u043e\u043b\u044c\u043a\u043e", "\u043a\u0440\u0443\u0433\u043e\u0432"]),
    ("\u0915\u094d\u092f\u093e \u092f\u0939 \u0932\u093e\u0932 \u0939\u0948?",  # Hindi: marks stay in their word
     ["\u0915\u094d\u092f\u093e", "\u092f\u0939", "\u0932\u093e\u0932", "\u0939\u0948"]),
    ("\u0645\u0627 \u0644\u0648\u0646 \u0627\u0644\u0634\u0643\u0644\u061f",
     ["\u0645\u0627", "\u0644\u0648\u0646", "\u0627\u0644\u0634\u0643\u0644"]),
    ("Caf\u00e9 au lait, isn\u2019t it?", ["caf\u00e9", "au", "lait", "isn't", "it"]),
])
def test_any_script_is_tokenised(question, tokens):
    """Before, only [a-z0-9] counted: these questions had no words at all (word_count 0, no buckets)."""
    text = F.check_question(question)[0]
    assert F._tokens(text) == tokens
    assert tfeat(question, "word_count") == len(tokens) and F.word_features(question).sum() == 2 * len(tokens)


def test_easyvqa_tokens_are_unchanged():
    """On ASCII questions the tokeniser gives what [a-z0-9]+('[a-z]+)? gave (feature version 4)."""
    import re

    import easy_vqa

    old = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
    qs = set(easy_vqa.get_train_questions()[0]) | set(easy_vqa.get_test_questions()[0])
    qs |= {"Isn't it red?", "what's the 2nd shape's colour?", "is it (left)?", "t-shirt: yes/no?"}
    for q in qs:
        assert F._tokens(F.check_question(q)[0]) == old.findall(q.lower()), q
