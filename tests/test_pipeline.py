"""End-to-end: every stage on the tiny config, then what each stage left behind."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from router_training import outcomes, pipeline
from router_training.runtime import Router


def test_report_has_every_policy_and_consistent_numbers(tiny_run):
    cfg, table = tiny_run
    for row in ("all-edge (edge-small)", "all-cloud (cloud)", "random (router's shares)", "oracle", "router"):
        assert f"| {row} |" in table
    rep = json.loads((cfg.path("runs") / "report.json").read_text())["policies"]
    for png in ("pareto.png", "bandwidth.png", "reliability_cloud.png", "reliability_edge-small.png"):
        assert (cfg.path("runs") / png).stat().st_size > 10_000
    md = (cfg.path("runs") / "report.md").read_text()
    assert md.startswith("# Router report") and "apgr" in md and "ECE" in md and "uplink" in md
    # Recompute the baselines from the outcome table by hand.
    t = outcomes.load(cfg.path("data") / "outcomes", cfg.model_names)
    test = t[t["split"] == "router-test"].pivot(index="sample_id", columns="model", values="score")
    assert rep["all-cloud (cloud)"]["accuracy"] == pytest.approx(test["cloud"].mean())
    assert rep["all-edge (edge-small)"]["accuracy"] == pytest.approx(test["edge-small"].mean())
    assert rep["oracle"]["accuracy"] == pytest.approx(test.max(axis=1).mean())
    assert rep["all-cloud (cloud)"]["edge_share"] == 0.0 and rep["all-edge (edge-small)"]["edge_share"] == 1.0
    assert rep["oracle"]["accuracy"] >= rep["router"]["accuracy"] - 1e-12
    # Random routing at the router's edge share is the share-weighted mean of the single-model rows.
    share = rep["router"]["edge_share"]
    assert rep["random (router's shares)"]["edge_share"] == pytest.approx(share)
    assert rep["random (router's shares)"]["accuracy"] == pytest.approx(
        share * test["edge-small"].mean() + (1 - share) * test["cloud"].mean())


def test_outcome_table_is_complete_and_splits_are_disjoint_by_image(tiny_run):
    cfg, _ = tiny_run
    t = outcomes.load(cfg.path("data") / "outcomes", cfg.model_names)
    assert not t.duplicated(["sample_id", "model"]).any()
    assert t.groupby("sample_id").size().eq(len(cfg.models)).all()
    assert set(t["split"]) == {"router-train", "router-val", "router-test"}
    assert t.groupby("image_id")["split"].nunique().max() == 1
    assert t["score"].between(0, 1).all() and t["confidence"].between(0, 1).all()
    assert (t["compute_s"] > 0).all() and (t["payload_bytes"] > 0).all()
    assert list(t.columns) == list(outcomes.COLUMNS)


def test_export_parity_and_dynamic_batch(tiny_run):
    cfg, _ = tiny_run
    module, spec = pipeline.stage_fit(cfg)
    _, splits = pipeline.load_splits(cfg)
    router = Router.load(cfg.path("export"))
    x = splits["router-test"].x
    for n in (1, 7, 33):
        np.testing.assert_allclose(router.predict(x[:n]), pipeline.predict(module, spec, x[:n]), atol=1e-5)
    import onnx

    graph = onnx.load(str(cfg.path("export") / "router.onnx"))
    assert "Conv" in {n.op_type for n in graph.graph.node} | {n.op_type for f in graph.functions for n in f.node}
    assert all(m.cnn is not None for m in module.net.members)  # the default router embeds the thumbnail
    m = router.manifest
    assert list(m.features.names) == list(__import__("router_training.core.features").core.features.FEATURE_NAMES)
    assert m.cost.names == cfg.model_names
    assert m.rule.thresholds[-1] == 0.0  # the cloud model is always eligible


def test_tampered_artifact_is_rejected(tiny_run, tmp_path):
    cfg, _ = tiny_run
    for f in ("manifest.json", "router.onnx"):
        (tmp_path / f).write_bytes((cfg.path("export") / f).read_bytes())
    (tmp_path / "router.onnx").write_bytes((tmp_path / "router.onnx").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        Router.load(tmp_path)
    (tmp_path / "router.onnx").write_bytes((cfg.path("export") / "router.onnx").read_bytes())
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["features"]["version"] -= 1  # same names, older feature definitions
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="other features"):
        Router.load(tmp_path)
    m["features"]["version"] += 1
    m["features"]["names"] = m["features"]["names"][::-1]  # same version, other names
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="feature names differ"):
        Router.load(tmp_path)
    del m["onnx_sha256"]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="no onnx_sha256"):
        Router.load(tmp_path)


def test_route_cli_refuses_an_image_over_pillows_pixel_limit(tiny_run, monkeypatch, capsys):
    from PIL import Image

    from router_training.cli import main

    cfg, _ = tiny_run
    image = cfg.workdir / "big.png"
    Image.new("L", (400, 400)).save(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2)  # 160,000 px > 2 x limit: an error
    assert main(["route", "--artifact", str(cfg.path("export")), "--image", str(image), "--question", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("router-train: DecompressionBombError") and len(err.strip().splitlines()) == 1


def test_route_cli_names_an_unreadable_image(tiny_run, capsys):
    """A truncated PNG: Pillow's message does not name the file; the CLI's one line does."""
    import io

    from PIL import Image

    from router_training.cli import main

    cfg, _ = tiny_run
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="PNG")
    image = cfg.workdir / "cut.png"
    image.write_bytes(buf.getvalue()[:-30])
    assert main(["route", "--artifact", str(cfg.path("export")), "--image", str(image), "--question", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"router-train: OSError: {image}: ") and len(err.splitlines()) == 1


def test_route_cli_runs_without_torch(tiny_run):
    cfg, _ = tiny_run
    ds = pipeline.data.build_router_dataset(cfg)
    image = cfg.workdir / "query.png"
    ds[0]["image"].save(image)
    code = ("import sys; sys.modules['torch'] = None\n"
            "from router_training.cli import main\n"
            f"main(['route', '--artifact', {str(cfg.path('export'))!r}, '--image', {str(image)!r},"
            " '--question', 'what color is the shape?'])\n"
            "assert sys.modules['torch'] is None\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    decision = json.loads(out.stdout)
    assert decision["model"] in cfg.model_names
    assert set(decision["p_correct"]) == set(cfg.model_names)
    assert all(0.0 <= p <= 1.0 for p in decision["p_correct"].values())
    assert decision["network"]["uplink_mbps"] == cfg.profile.uplink_mbps
    assert decision["expected_latency_s"]["cloud"] > cfg.profile.rtt_s > decision["expected_latency_s"]["edge-small"]


def test_a_fresh_run_reads_each_stage_input_once(tiny_run):
    """Stages hand their products on within the run's session: every outcome part, the features, the
    router dataset and the router checkpoint are read at most once (before sessions: collect ran five
    times, the checkpoint was loaded four times)."""
    from conftest import FRESH_RUN_READS

    cfg, _ = tiny_run
    parts = [p for m in cfg.model_names for p in outcomes.parts(cfg.path("data") / "outcomes" / m)]
    assert parts and all(FRESH_RUN_READS.get(str(p.resolve())) == 1 for p in parts)
    assert FRESH_RUN_READS and max(FRESH_RUN_READS.values()) == 1, FRESH_RUN_READS


def test_rerun_reuses_every_cache(tiny_run):
    cfg, table = tiny_run
    watched = [p for p in cfg.workdir.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".parquet", ".ckpt", ".db")]
    before = {p: p.stat().st_mtime_ns for p in watched}
    again = pipeline.run(cfg)
    assert again == table
    assert {p: p.stat().st_mtime_ns for p in watched} == before


def test_data_split_records_degradations(tiny_run):
    cfg, _ = tiny_run
    df = pipeline.data.build_router_dataset(cfg).to_pandas()
    assert set(df.columns) >= {"sample_id", "image_id", "image", "question", "answers", "question_type",
                               "split", "degradation", "severity"}
    per_image = df.groupby("image_id")[["degradation", "severity", "split"]].nunique()
    assert (per_image == 1).all().all()  # one degradation and one split per image
    assert (df.loc[df["degradation"] == "clean", "severity"] == 0).all()
    assert df.loc[df["degradation"] != "clean", "severity"].between(0.45, 1.0).all()
    assert pd.Series(df["sample_id"]).is_unique


def test_router_sweep_spans_all_edge_to_all_cloud(tiny_run):
    from router_training import evaluate

    cfg, _ = tiny_run
    router = Router.load(cfg.path("export"))
    splits = pipeline.load_splits(cfg)[1]
    test = splits["router-test"]
    points, assigns = evaluate.router_sweep(router, splits["router-train"], test, cfg.tiers, 1, cfg.model_names)
    knobs = np.array([p["threshold"] for p in points])
    cloud_share = np.array([p["cloud_share"] for p in points])
    assert np.all(np.diff(knobs) > 0) and cloud_share[0] == 0.0 and cloud_share[-1] == 1.0
    assert np.all(np.diff(cloud_share) >= 0)  # a higher knob only moves queries to the cloud
    # at knob k a query is on the edge exactly when its predicted gap p_edge - p_cloud >= k
    p = router.predict(test.x)
    mid = len(points) // 2
    np.testing.assert_array_equal(assigns[mid][:, 0] == 1, p[:, 0] - p[:, 1] >= knobs[mid])


def test_guarantee_mode_calibrates_on_untouched_router_val(tiny_run, tmp_path):
    """tune.guarantee: the router's best epoch comes from held-out router-train, the threshold from
    Learn then Test on router-val; the report checks the guarantee on 200 resplits of router-val +
    router-test of these real (tiny-model) easy-VQA outcomes."""
    import dataclasses
    import shutil

    from router_training.config import TuneConfig

    cfg, _ = tiny_run
    for kind in ("data", "checkpoints"):  # outcomes, features and reference models; the router is refitted
        shutil.copytree(cfg.path(kind), tmp_path / kind / cfg.name, ignore=shutil.ignore_patterns("router"))
    (tmp_path / "data" / cfg.name / "decision.json").unlink()
    gcfg = dataclasses.replace(cfg, workdir=tmp_path, tune=TuneConfig(guarantee={"eps": 0.1, "delta": 0.2}))
    pipeline.run(gcfg)
    spec = json.loads((gcfg.path("checkpoints") / "router" / "spec.json").read_text())
    assert spec["settings"]["best_epoch_on"] == "router-train holdout"
    decision = json.loads((gcfg.path("data") / "decision.json").read_text())
    g = decision["guarantee"]
    assert g["eps"] == 0.1 and g["delta"] == 0.2 and g["n"] == len(pipeline.load_splits(gcfg)[1]["router-val"])
    t = decision["thresholds"]
    assert t[-1] == 0.0 and (0.0 <= t[0] <= 1.0 if g["certified"] else t[0] > 1.0)
    assert Router.load(gcfg.path("export")).manifest.tuning["guarantee"] == g
    rep = json.loads((gcfg.path("runs") / "report.json").read_text())
    check = rep["guarantee_check"]
    assert check["pool"] == "router-val + router-test" and check["resplits"] == 200
    assert check["violation_rate"] <= 0.2
    assert "Accuracy-loss guarantee" in (gcfg.path("runs") / "report.md").read_text()


def test_route_takes_a_path_and_the_report_names_its_router(tiny_run):
    cfg, _ = tiny_run
    router = Router.load(cfg.path("export"))
    ds = pipeline.data.build_router_dataset(cfg)
    path = cfg.workdir / "query-api.png"
    ds[1]["image"].save(path)
    a, b = router.route(str(path), ds[1]["question"]), router.route(ds[1]["image"], ds[1]["question"])
    assert a.model == b.model and a.scores == pytest.approx(b.scores)
    md = (cfg.path("runs") / "report.md").read_text()
    assert "Router: thresholds and lambdas tuned by Optuna" in md  # not a searched or calibrated one
    assert "oracle_curve: hindsight" in md and "Router APGR" in md and "95% interval" in md
    paired = json.loads((cfg.path("runs") / "report.json").read_text())["paired"]
    assert f"Paired bootstrap (same resamples) router minus {paired['baseline']}" in md
    point, lo, hi = paired["difference"]["apgr"]
    assert np.isfinite(point) and lo <= hi  # (a percentile interval need not contain the point)


@pytest.mark.parametrize("flag, value, message", [("--uplink-mbps", "0", "finite number > 0"),
                                                  ("--uplink-mbps", "-5", "finite number > 0"),
                                                  ("--rtt-s", "-0.1", "finite number >= 0")])
def test_route_cli_rejects_bad_network_figures(tiny_run, flag, value, message):
    cfg, _ = tiny_run
    image = cfg.workdir / "query-bad.png"
    pipeline.data.build_router_dataset(cfg)[0]["image"].save(image)
    out = subprocess.run([sys.executable, "-m", "router_training.cli", "route", "--artifact", str(cfg.path("export")),
                          "--image", str(image), "--question", "what?", flag, value], capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
