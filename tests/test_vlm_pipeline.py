"""`router-train run` end to end with real transformers backends: tiny random-weight Idefics3 (edge) and
Qwen2-VL (cloud) models (tests/tiny_vlms.py) on a local "folder" dataset, collection spread over 2 CPU
processes with strategy "ddp" (Lightning re-runs the command once more: the path a user's command line
takes; the extra process exits after collection and rank 0 runs the later stages).

Random models answer garbage, though deterministically, so the references are made from their own
answers: every image's first question accepts the cloud model's answer (and on every other image the
edge model's too), its second question accepts only "no". Scores therefore vary: the cloud model is
right on half the questions, the edge model on a quarter, always where the cloud model is too.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from router_training import backends, config, outcomes, pipeline
from router_training.core.decision import NEVER_THRESHOLD

from tiny_vlms import build_idefics3, build_qwen2_vl

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 16
OPTIONS = {"max_new_tokens": 4, "batch_size": 8}


def picture(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    im = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 256, 3)))
    ImageDraw.Draw(im).ellipse((6, 6, 20 + 2 * i, 18 + 3 * (i % 8)), fill=(255, 255, 255))
    return im


def write_tiny_vlm_run(root: Path, n_images: int = N_IMAGES, **run) -> tuple[Path, dict]:
    """Tiny models, images, questions (references from the models' own answers) and a run config under
    ``root``. Returns (config path, {question: {"edge": answer, "cloud": answer}})."""
    models = {"edge": build_idefics3(root / "models" / "idefics3"),
              "cloud": build_qwen2_vl(root / "models" / "qwen2_vl")}
    images = root / "data" / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(n_images):
        picture(i).save(images / f"img{i:02d}.png")
        rows += [{"image": f"img{i:02d}.png", "question": f"What color is the circle in picture {i:02d}?",
                  "question_id": f"q{i:02d}a"},
                 {"image": f"img{i:02d}.png", "question": f"Is there a square in picture {i:02d}?",
                  "question_id": f"q{i:02d}b", "answers": ["no"]}]
    pics = [Image.open(images / r["image"]) for r in rows]
    said = {tier: [a.text for a in backends.build("transformers", name=tier, model=str(path), **OPTIONS)
                   .answer(pics, [r["question"] for r in rows])] for tier, path in models.items()}
    for k, r in enumerate(rows):
        if "answers" not in r:
            r["answers"] = [said["cloud"][k]] + ([said["edge"][k]] if k % 4 == 0 else [])
    (root / "data" / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "name": "tiny-vlms",
        "dataset": {"kind": "folder", "images_dir": "data/images", "questions": "data/questions.jsonl", "seed": 0},
        "models": [{"name": "edge-idefics3", "tier": "edge", "backend": "transformers",
                    "options": {"model": str(models["edge"]), **OPTIONS}},
                   {"name": "cloud-qwen2vl", "tier": "cloud", "backend": "transformers",
                    "options": {"model": str(models["cloud"]), **OPTIONS}}],
        "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml"),
        "router": {"epochs": 3, "batch_size": 8},
        "tune": {"n_trials": 10},
        **run,
    }
    path = root / "tiny_vlms.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, {r["question"]: {t: said[t][k] for t in said} for k, r in enumerate(rows)}


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_run")
    path, said = write_tiny_vlm_run(root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "router_training.cli", "run", str(path), "--workdir", str(root / "work"),
           "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return config.load(path, workdir=root / "work"), said, out.stdout


def test_run_completes_every_stage(vlm_run):
    cfg, _, stdout = vlm_run
    for row in ("all-edge (edge-idefics3)", "all-cloud (cloud-qwen2vl)", "oracle", "router"):
        assert f"| {row} |" in stdout
    runs = cfg.path("runs")
    assert (runs / "report.md").read_text().startswith("# Router report")
    assert any(runs.glob("*.png")) and (cfg.path("export") / "router.onnx").exists()
    rep = json.loads((runs / "report.json").read_text())["policies"]
    # every image has one question the cloud model gets right and one nobody does
    assert rep["all-cloud (cloud-qwen2vl)"]["accuracy"] == pytest.approx(0.5)
    assert rep["oracle"]["accuracy"] == pytest.approx(0.5)  # the edge model is right only where the cloud is
    assert rep["all-edge (edge-idefics3)"]["accuracy"] <= 0.5


def test_collection_ran_on_two_processes_and_scores_vary(vlm_run):
    cfg, said, _ = vlm_run
    root = cfg.path("data") / "outcomes"
    for m in cfg.model_names:
        names = {p.name.split("-")[1] for p in outcomes.parts(root / m)}
        assert names == {"r0", "r1"}, f"{m}: parts {sorted(p.name for p in outcomes.parts(root / m))}"
    t = outcomes.load(root, cfg.model_names)
    assert len(t) == 2 * 2 * N_IMAGES and not t.duplicated(["sample_id", "model"]).any()
    assert (t["error"] == "").all() and t["confidence"].between(0, 1).all() and (t["compute_s"] > 0).all()
    # the processes' batches answer exactly what one in-process batch answered
    ds = pipeline.data.build_router_dataset(cfg)
    q = dict(zip(ds["sample_id"], ds["question"]))
    for m, tier in zip(cfg.model_names, cfg.tiers):
        rows = t[t["model"] == m]
        assert list(rows["answer"]) == [said[q[s]][tier] for s in rows["sample_id"]]
    mean = t.groupby("model")["score"].mean()
    assert mean["cloud-qwen2vl"] == pytest.approx(0.5) and mean["edge-idefics3"] == pytest.approx(0.25)


def test_tune_falls_back_to_all_cloud_and_the_report_still_builds(vlm_run):
    """No routing can keep 150% of all-cloud accuracy: tune falls back to all-cloud, export and report
    still complete (in this process, reusing the run's outcomes, features and router)."""
    cfg, _, _ = vlm_run
    strict = config.load(cfg.workdir.parent / "tiny_vlms.yaml", workdir=cfg.workdir)
    strict.tune.min_cloud_accuracy_ratio = 1.5
    decision = pipeline.stage_tune(strict)
    assert decision["trial"] is None and decision["thresholds"] == [NEVER_THRESHOLD, 0.0]
    assert decision["target_met"] is False and "cloud-qwen2vl" in decision["deployed"]
    assert decision["val_metrics"]["edge_share"] == 0.0
    assert pipeline.stage_export(strict)["same_decisions"]
    table = pipeline.stage_report(strict)
    rep = json.loads((strict.path("runs") / "report.json").read_text())["policies"]
    assert rep["router"]["edge_share"] == 0.0
    assert rep["router"]["accuracy"] == pytest.approx(rep["all-cloud (cloud-qwen2vl)"]["accuracy"])
    assert "| router |" in table
