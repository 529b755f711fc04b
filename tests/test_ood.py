"""Out-of-distribution awareness (router_training.core.ood) and the device's side of the shared rules: the
floored standardisation, the clip inside the exported graph (ONNX parity holds), the per-decision score
in Decision and the CLI, the policy for queries beyond the limit, the question rule and the pixel budget
in ``route()``.

The artifact: a router fitted on the real features of 200 easy-VQA images (one question each; synthetic
grades), exported with its training range; the "other dataset" is a photo-like image."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from router_training.config import RouterConfig
from router_training.core import features as F, images, ood
from router_training.core.decision import CostSpec
from router_training.core.splits import SplitArrays
from router_training.fit import fit

REPO = Path(__file__).resolve().parents[1]
SPEC = {"models": [{"name": "edge", "tier": "edge", "mean_compute_s": 0.01, "mean_payload_bytes": 0},
                   {"name": "cloud", "tier": "cloud", "mean_compute_s": 0.0, "mean_payload_bytes": 30000}],
        "profile": {"name": "p", "edge_power_w": 10, "idle_power_w": 3, "radio_tx_power_w": 2,
                    "uplink_mbps": 10, "downlink_mbps": 50, "rtt_s": 0.05},
        "ref_latency_s": 0.1, "ref_energy_j": 0.3}


def easyvqa(n: int, start: int = 0) -> tuple[list[str], list[str]]:
    """(image paths, questions) of easy-VQA test images start.. start + n, one question each."""
    import easy_vqa

    texts, _, ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    first = {}
    for t, i in zip(texts, ids):
        first.setdefault(i, t)
    keys = sorted(first)[start:start + n]
    return [paths[k] for k in keys], [first[k] for k in keys]


def photo(size=(640, 480), seed=0) -> Image.Image:
    """An ordinary photo-like image from elsewhere: a colour gradient, shapes, blur and sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([120 + 100 * xx, 80 + 60 * yy, 60 + 90 * (1 - xx)], -1)
    im = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.integers(0, w - 60), rng.integers(0, h - 60)
        d.ellipse((x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 200)), fill=tuple(rng.integers(0, 255, 3)))
    a = np.asarray(im.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def split(paths, questions, seed) -> SplitArrays:
    """Real features; the edge model right on colour questions, the cloud model always."""
    x = np.stack([F.extract(p, q) for p, q in zip(paths, questions)])
    n = len(x)
    edge = np.array([q.startswith("what is the color") or "color" in q for q in questions], float)
    return SplitArrays([f"s{seed}-{i}" for i in range(n)], x, np.stack([edge, np.ones(n)], 1),
                       np.tile([0.01, 0.1], (n, 1)), np.tile([0.1, 0.3], (n, 1)), np.full((n, 2), 0.9))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """(artifact folder, module, data module, router-val split) of a router fitted on easy-VQA features."""
    from router_training.export import export

    out = tmp_path_factory.mktemp("ood")
    train, val = split(*easyvqa(200), 0), split(*easyvqa(60, 200), 1)
    module, dm = fit(train, val, CostSpec.from_dict(SPEC), RouterConfig(epochs=4, hidden=[32]), out / "fit", loggers=False,
                     progress=False)
    spec = {**SPEC, "features": dm.stats}
    decision = {"thresholds": [0.5, 0.0], "lambda_latency": 0.2, "lambda_energy": 0.0}
    return export(module, dm.mean, dm.std, spec, decision, out / "artifact"), module, dm, val


def test_standardisation_floor_follows_each_features_scale():
    """A feature that barely varied in training (sd 0.003 around 0.95, a white thumbnail corner) gets the
    floor 0.05; a constant 64 (every image 64 px wide) 5% of its magnitude, 3.2; a feature that did vary
    keeps its sd. Before: 0.003 (a value of 0.3 elsewhere standardised to -217) and 1.0 (512 px -> 448)."""
    rng = np.random.default_rng(0)
    x = np.stack([0.95 + rng.normal(0, 0.003, 500), np.full(500, 64.0), rng.normal(5, 2, 500), np.zeros(500)], 1)
    mean, std = ood.standard_scale(x)
    np.testing.assert_allclose(std, [0.05, 3.2, x[:, 2].std(), 0.05], rtol=1e-5)
    assert (0.3 - mean[0]) / std[0] == pytest.approx(-13, abs=0.1)


def test_the_data_module_and_manifest_carry_the_floor_range_and_limit(artifact):
    path, _, dm, val = artifact
    m = json.loads((path / "manifest.json").read_text())
    width = F.FEATURE_NAMES.index("width_px")
    assert dm.std[width] == pytest.approx(0.05 * 64)  # easy-VQA: every image 64 px wide
    assert m["features"]["std"] == pytest.approx(dm.std.tolist()) and m["features"]["clip"] == ood.CLIP
    assert m["features"]["min"][width] == m["features"]["max"][width] == 64.0
    assert m["ood"]["policy"] == "route" and 0.0 <= m["ood"]["max_score"] < 0.2
    assert m["ood"]["max_score"] == pytest.approx(float(np.quantile(
        ood.ood_score(val.x, np.array(m["features"]["min"], np.float32), np.array(m["features"]["max"], np.float32)),
        0.99)))


def test_inputs_are_clipped_inside_the_exported_graph_and_parity_holds(artifact):
    from router_training.export import parity
    from router_training.runtime import Router

    path, module, dm, val = artifact
    router = Router.load(path)
    x = val.x[:8].copy()
    far, at_clip = x.copy(), x.copy()
    far[:, 0] = dm.mean[0] + 1e4 * dm.std[0]  # 10,000 sd away ...
    at_clip[:, 0] = dm.mean[0] + ood.CLIP * dm.std[0]  # ... reads as CLIP sd away
    np.testing.assert_allclose(router.predict(far), router.predict(at_clip), atol=1e-6)
    extreme = np.concatenate([val.x, far, -far, val.x * 1e3])
    par = parity(module, dm.mean, dm.std, path, extreme)
    assert par["max_abs_diff"] <= 1e-5 and par["same_decisions"]


def test_an_image_from_elsewhere_is_flagged_not_saturated(artifact):
    """A router fitted on easy-VQA sees a 640 x 480 photo: its probabilities stay finite and strictly
    inside (0, 1), and the decision is flagged as out of distribution; an easy-VQA image it has not
    seen is not flagged."""
    from router_training.runtime import Router

    router = Router.load(artifact[0])
    limit = router.ood_settings()[0]
    (held_out,), (q,) = easyvqa(1, 400)
    d = router.route(held_out, q)
    assert not d.ood and d.ood_score <= limit and d.warnings == []
    d = router.route(photo(), "what is the color of the shape?")
    p = np.array(list(d.scores.values()))
    assert np.all(np.isfinite(p)) and np.all((p > 1e-4) & (p < 1 - 1e-4)), d.scores
    assert d.ood and d.ood_score > 3 * limit
    assert "out of distribution" in d.warnings[0] and "routed as usual" in d.warnings[0]


def test_the_policy_sends_out_of_distribution_queries_to_the_cloud(artifact):
    from router_training.runtime import Router

    router = Router.load(artifact[0])
    router.ood_max_score = 0.0  # every query with a feature outside the training range is beyond the limit
    (img,), (q,) = easyvqa(1, 401)
    routed = router.route(photo(seed=1), q)
    router.ood_policy = "cloud"
    sent = router.route(photo(seed=1), q)
    assert sent.tier == "cloud" and sent.ood and "sent to the cloud" in sent.warnings[0]
    assert sent.scores == routed.scores  # the prediction itself is unchanged
    router.ood_max_score = 1.0  # nothing is beyond: the router decides
    assert not router.route(photo(seed=1), q).ood
    router.ood_policy = "elsewhere"
    with pytest.raises(ValueError, match="ood_policy must be 'route' or 'cloud'"):
        router.route(img, q)


def test_ood_score_weights_the_four_groups_equally():
    n = len(F.FEATURE_NAMES)
    lo, hi = np.zeros(n, np.float32), np.ones(n, np.float32)
    x = np.full((3, n), 0.5, np.float32)
    x[1, :len(F.IMAGE_FEATURES)] = 2.0  # every image signal outside: a quarter of the score
    x[2, -1] = np.nan  # one thumbnail pixel NaN: outside
    s = ood.ood_score(x, lo, hi)
    assert s[0] == 0.0 and s[1] == pytest.approx(0.25) and s[2] == pytest.approx(0.25 / len(F.PIXEL_FEATURES))
    assert ood.group_counts(x[1], lo, hi) == {"image": len(F.IMAGE_FEATURES), "text": 0, "words": 0, "pixels": 0}
    # one query at a time (the device's path) gives the batch's scores, and both the definition's
    rng = np.random.default_rng(0)
    y = rng.normal(size=(20, n)).astype(np.float32) * rng.uniform(0.2, 3.0, size=(20, 1))
    y[3, ::7] = np.nan
    batch = ood.ood_score(y, lo - 1.0, hi)
    by_hand = np.mean([(~((y[:, c] >= lo[c] - 1.0) & (y[:, c] <= hi[c]))).mean(1) for c in ood._SLICES.values()], 0)
    np.testing.assert_allclose(batch, by_hand, rtol=1e-12)
    assert [ood.ood_score(row, lo - 1.0, hi)[0] for row in y] == batch.tolist()
    assert len(set(batch.tolist())) > 10
    with pytest.raises(ValueError, match="needs all"):
        ood.ood_score(x[:, :10], lo[:10], hi[:10])


def test_route_applies_the_data_stages_question_rule(artifact):
    """The device reads a question as the data stage does (features.check_question): an empty one is
    routed with a warning, one with a control character refused. Before, route() took both silently."""
    from router_training.runtime import Router

    router = Router.load(artifact[0])
    (img,), (q,) = easyvqa(1, 402)
    d = router.route(img, "   ")
    assert d.warnings[0] == "empty question: the router sees only the image"  # (and no words: out of range)
    assert router.route(img, "  " + q + "\n").scores == router.route(img, q).scores  # the same text
    with pytest.raises(F.QuestionError, match="control character"):
        router.route(img, q + "\x00")


def test_route_refuses_an_image_above_the_pixel_budget(artifact):
    from router_training.runtime import Router

    router = Router.load(artifact[0])
    assert router.max_pixels == images.DEFAULT_MAX_PIXELS
    router.max_pixels = 100 * 100
    with pytest.raises(images.ImageTooLarge, match="above the pixel budget"):
        router.route(Image.new("RGB", (101, 100)), "what shape?")
    router.max_pixels = None
    assert router.route(Image.new("RGB", (101, 100)), "what shape?").model


def cli(*args):
    return subprocess.run([sys.executable, "-m", "router_training.cli", "route", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_route_prints_the_score_flag_and_warnings(artifact, tmp_path):
    path = str(artifact[0])
    photo().save(tmp_path / "photo.jpg")
    out = cli("--artifact", path, "--image", str(tmp_path / "photo.jpg"), "--question", "")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["ood"]["flagged"] and d["ood"]["score"] > d["ood"]["max_score"] and d["ood"]["policy"] == "route"
    assert d["warnings"][0] == "empty question: the router sees only the image"
    assert "warning: out of distribution" in out.stderr
    out = cli("--artifact", path, "--image", str(tmp_path / "photo.jpg"), "--question", "q", "--ood-policy", "cloud")
    assert json.loads(out.stdout)["tier"] == "cloud"
    out = cli("--artifact", path, "--image", str(tmp_path / "photo.jpg"), "--question", "q", "--max-pixels", "1000")
    assert out.returncode == 2 and "ImageTooLarge" in out.stderr and "pixel budget" in out.stderr
    out = cli("--artifact", path, "--image", str(tmp_path / "photo.jpg"), "--question", "bad\x1b[0m")
    assert out.returncode == 2 and "QuestionError: question has control character U+001B" in out.stderr
