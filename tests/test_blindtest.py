"""BlindTest end to end (real grades of real VLMs, ``../shared/data/blindtest``): the shipped configs run
with no conversion script on a seeded subset, and a routing-free control (the same outcomes with the
grades shuffled across questions) reports no routing skill. Skipped where the data folder is absent;
``BLINDTEST_DIR`` points elsewhere."""

import json
import os
import random
from pathlib import Path

import datasets
import pytest
import yaml

from router_training import config, pipeline

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BLINDTEST_DIR", REPO.parent / "shared" / "data" / "blindtest"))
CONFIGS = REPO / "configs" / "blindtest"
pytestmark = pytest.mark.skipif(not (DATA / "outcomes.jsonl").is_file(),
                                reason=f"BlindTest data not found at {DATA} (set BLINDTEST_DIR)")


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("BLINDTEST_DIR", str(DATA))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def subset_config(name: str, workdir: Path, limit_images: int, outcomes_path: str | None = None, **dataset):
    """The shipped config ``name`` on a seeded subset of images, with a short router fit and tune."""
    d = yaml.safe_load((CONFIGS / name).read_text())
    d["dataset"] = {**yaml.safe_load((CONFIGS / d["dataset"]).read_text()), "limit_images": limit_images, **dataset}
    d["router"] = {"epochs": 25}
    d["tune"] = {**d["tune"], "n_trials": 60}
    if outcomes_path:
        d["outcomes"] = {**d["outcomes"], "path": outcomes_path}
    return config.from_dict(d, base=CONFIGS, workdir=workdir)


def report(cfg) -> tuple[str, dict]:
    out = cfg.path("runs")
    return (out / "report.md").read_text(), json.loads((out / "report.json").read_text())


def test_blindtest_two_models_end_to_end(tmp_path):
    cfg = subset_config("blindtest.yaml", tmp_path, limit_images=600)
    table = pipeline.run(cfg)
    md, rep = report(cfg)
    pol = rep["policies"]
    edge, cloud = pol["all-edge (claude-3-sonnet)"], pol["all-cloud (claude-3.5-sonnet)"]
    assert 0.4 < edge["accuracy"] < 0.65 and 0.7 < cloud["accuracy"] < 0.85  # 51.9% and 78.1% on all of it
    assert edge["mean_latency_s"] == pytest.approx(1.0)  # the configured compute time, never 0
    assert cloud["mean_latency_s"] > 1.5  # configured compute plus the profile's network
    assert "| accuracy |" in table.splitlines()[0] and "VQA acc" not in table  # scorer "given": not VQA accuracy
    assert "given" in md and "configured" in md  # the scorer is named; configured costs are marked
    assert "cascade" not in rep["routing"] and "no confidence" in md  # never a cascade on missing confidences
    assert "routing skill detected" in md.split("\n## ")[0]  # the verdict, at the top
    assert rep["routing"]["router"]["apgr"] > 0.6


def test_blindtest_four_models_end_to_end(tmp_path):
    cfg = subset_config("blindtest_4models.yaml", tmp_path, limit_images=300)
    pipeline.run(cfg)
    md, rep = report(cfg)
    assert {f"all-edge ({m})" for m in ("claude-3-sonnet", "gpt-4o")} <= set(rep["policies"])
    assert {f"all-cloud ({m})" for m in ("gemini-1.5-pro", "claude-3.5-sonnet")} <= set(rep["policies"])
    assert rep["policies"]["router"]["pct_cloud_accuracy"] > 90


def test_shuffled_grades_report_no_routing_skill(tmp_path):
    """The routing-free control: each model's grades shuffled across questions keep its accuracy but
    carry nothing an input could predict; the report must say so at its top."""
    rows = [json.loads(line) for line in (DATA / "outcomes.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    for system in {r["system"] for r in rows}:
        mine = [r for r in rows if r["system"] == system]
        grades = [r["is_correct"] for r in mine]
        rng.shuffle(grades)
        for r, g in zip(mine, grades):
            r["is_correct"] = g
    path = tmp_path / "shuffled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = subset_config("blindtest.yaml", tmp_path, limit_images=600, outcomes_path=str(path))
    pipeline.run(cfg)
    md, rep = report(cfg)
    assert "no evidence of routing skill" in md.split("\n## ")[0]
