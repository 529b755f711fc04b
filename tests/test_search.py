"""Hyperparameter search (``router-train search``): the space, single and multi mode, pruning, export of a
picked trial, stale trials of killed workers, and two worker processes sharing one study in SQLite and in
a real PostgreSQL server.

The data: a folder dataset (80 images, 3 questions each) with two replay models, so no model runs: the
edge model is right on yes/no questions about large images, the cloud model almost always.
"""

import dataclasses
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from PIL import Image, ImageDraw

from router_training import config, fit, search
from router_training.config import RouterConfig, SearchConfig
from router_training.core.features import FEATURE_NAMES, IMAGE_FEATURES, PIXEL_FEATURES, TEXT_FEATURES, WORD_FEATURES
from router_training.core.decision import CostSpec
from router_training.core.splits import SplitArrays
from router_training.runtime import Router

REPO = Path(__file__).resolve().parents[1]
SPACE = {"lr": {"float": [1e-3, 3e-2], "log": True}, "hidden_width": {"int": [8, 32]}, "depth": {"int": [1, 2]},
         "label_smoothing": {"float": [0.0, 0.1]}, "feature_groups": {"categorical": ["image+text", "text", "image"]}}


def _picture(i: int) -> Image.Image:
    size = (24, 20) if i % 4 == 0 else (48, 40)  # every fourth image is small: the edge model fails on it
    im = Image.new("RGB", size, (10 * (i % 25), 120, 240 - 10 * (i % 24)))
    ImageDraw.Draw(im).rectangle((2, 2, 6 + i % 15, 6 + i % 12), fill=(250, 250, 250))
    return im


def run_config(root: Path, **search_over) -> dict:
    return {
        "name": "srch",
        "dataset": {"kind": "folder", "images_dir": str(root / "images"), "questions": str(root / "questions.jsonl")},
        "models": [
            {"name": "edge", "tier": "edge", "backend": "replay", "options": {"path": str(root / "edge.jsonl")}},
            {"name": "cloud", "tier": "cloud", "backend": "replay", "options": {"path": str(root / "cloud.jsonl")}},
        ],
        "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml"),
        "router": {"epochs": 3, "batch_size": 32, "hidden": [16]},
        "search": {"n_trials": 4, "space": SPACE, "threshold_grid": 21, "heartbeat_interval": 1,
                   "grace_period": 2, "wandb": False, "workers": 1, **search_over},
    }


@pytest.fixture(scope="module")
def byod(tmp_path_factory):
    """(config path, work directory) with the outcome table and features already built."""
    root = tmp_path_factory.mktemp("search-data")
    (root / "images").mkdir()
    questions, edge, cloud = [], [], []
    for i in range(80):
        _picture(i).save(root / "images" / f"{i}.png")
        for j, (q, a) in enumerate([(f"is there a white box in picture {i}?", "yes"),
                                    (f"what colour is the background of {i}?", "blue"),
                                    (f"how many boxes are in picture {i}?", "1")]):
            qid = f"{i}-{j}"
            questions.append({"image": f"{i}.png", "question": q, "answers": a, "question_id": qid})
            edge_ok = j == 0 and i % 4 != 0
            edge.append({"sample_id": qid, "answer": a if edge_ok else "no", "compute_s": 0.02})
            cloud.append({"sample_id": qid, "answer": a if (i + j) % 17 else "no", "compute_s": 0.3})
    for name, rows in (("questions", questions), ("edge", edge), ("cloud", cloud)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(root)))
    work = root / "work"
    from router_training import pipeline

    cfg = config.load(path, workdir=work)
    pipeline.stage_collect(cfg)
    pipeline.stage_features(cfg)
    return path, work


def load(byod, **search_over) -> config.Config:
    path, work = byod
    cfg = config.load(path, workdir=work)
    if search_over:
        cfg.search = dataclasses.replace(cfg.search, **search_over)
    return cfg


def write_config(byod, tmp_path, router: dict | None = None, **search_over) -> Path:
    path = tmp_path / "run.yaml"
    d = yaml.safe_load(byod[0].read_text())
    d["search"].update(search_over)
    d["router"].update(router or {})
    path.write_text(yaml.safe_dump(d))
    return path


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


# ---------------------------------------------------------------------------------------------------
# the space, the loss, the masks
# ---------------------------------------------------------------------------------------------------


def test_space_parses_to_optuna_distributions():
    sc = SearchConfig(space={**SPACE, "epochs": {"int": [2, 10], "step": 2}, "weight_decay": {"float": [1e-6, 1e-2],
                             "log": True}, "lambda_latency": {"float": [0, 1]}, "dropout": {"float": [0, 0.3], "step": 0.1},
                             "feature_groups": {"categorical": [["text", "image"], "text", "image+text"]}})
    d = search.distributions(sc)
    assert d["lr"] == FloatDistribution(1e-3, 3e-2, log=True)
    assert d["hidden_width"] == IntDistribution(8, 32) and d["depth"] == IntDistribution(1, 2)
    assert d["epochs"] == IntDistribution(2, 10, step=2)
    assert d["weight_decay"] == FloatDistribution(1e-6, 1e-2, log=True)
    assert d["lambda_latency"] == FloatDistribution(0.0, 1.0)
    assert d["dropout"] == FloatDistribution(0.0, 0.3, step=0.1)
    assert d["feature_groups"] == CategoricalDistribution(["image+text", "text"])  # lists -> canonical strings
    assert "threshold" not in d
    multi = search.distributions(SearchConfig(space=SPACE, mode="multi"))
    assert multi["threshold"] == FloatDistribution(0.0, 1.0)  # multi mode searches the decision threshold
    # the default space covers the parameters
    assert {"lr", "hidden_width", "depth", "weight_decay", "lambda_latency", "lambda_energy", "label_smoothing",
            "feature_groups"} <= set(search.distributions(SearchConfig()))
    # through a config file's search section
    cfg = config.from_dict({"name": "x", "models": [{"name": "c", "tier": "cloud"}],
                            "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml"),
                            "search": {"space": {"lr": {"float": [1e-4, 1e-2], "log": True}}, "mode": "multi",
                                       "n_trials": 7, "sampler": "random", "pruner": "none"}})
    assert cfg.search.n_trials == 7 and cfg.search.sampler == {"random": {}} and cfg.search.pruner == {"none": {}}
    assert set(search.distributions(cfg.search)) == {"lr", "threshold"}


def test_search_section_from_yaml_files():
    # PyYAML reads 1e-4 as a string: numeric strings are accepted as bounds
    sc = SearchConfig(space=yaml.safe_load("lr: {float: [1e-4, 1e-2], log: true}\nepochs: {int: [2, 8], step: 2}"))
    assert search.distributions(sc)["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    # the shipped example is the defaults written out, and a run config may name it as a path
    shipped = config.from_dict({"name": "x", "models": [{"name": "c", "tier": "cloud"}],
                                "profile": "profiles/jetson_orin_lte.yaml", "search": "search/default.yaml"},
                               base=REPO / "configs").search
    default = SearchConfig()
    assert search.distributions(shipped) == search.distributions(default)
    assert dataclasses.replace(shipped, sampler=None) == default and shipped.sampler == {"tpe": {}}


@pytest.mark.parametrize("space, match", [
    ({"hidden": {"int": [8, 16]}}, "search hidden_width and depth instead"),
    ({"nope": {"float": [0, 1]}}, "unknown parameter"),
    ({"lr": {"float": [0, 1e-2], "log": True}}, "log distribution needs low > 0"),
    ({"lr": {"float": [1e-2, 1e-4]}}, "is above high"),
    ({"lr": [1e-4, 1e-2]}, "expected a mapping"),
    ({"lr": {"float": [1e-4, 1e-2], "int": [1, 2]}}, "exactly one of"),
    ({"depth": {"float": [1, 3]}}, "is an integer"),
    ({"image_embedding": {"float": [4.0, 8.0]}}, "is an integer"),
    ({"image_embedding": {"int": [-4, 16]}}, "image_embedding"),
    ({"depth": {"int": [1.5, 3]}}, "int bounds must be integers"),
    ({"feature_groups": {"categorical": ["image", "audio"]}}, "subset of"),
    ({"feature_groups": {"float": [0, 1]}}, "feature_groups takes"),
    ({"lr": {"float": [1e-4, 1e-2], "logg": True}}, "unknown keys"),
])
def test_space_errors_name_the_entry(space, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(space=space)


def test_search_config_errors():
    with pytest.raises(ValueError, match="search.mode"):
        SearchConfig(mode="both")
    with pytest.raises(ValueError, match="single mode needs an accuracy floor"):
        SearchConfig(min_cloud_accuracy_ratio=None)
    SearchConfig(mode="multi", min_cloud_accuracy_ratio=None)
    with pytest.raises(ValueError, match="search.pruner"):
        SearchConfig(pruner="sometimes")
    with pytest.raises(ValueError, match="grace_period must exceed"):
        SearchConfig(heartbeat_interval=5, grace_period=5)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="search.members must be an integer >= 1"):
            SearchConfig(members=bad)
    with pytest.raises(ValueError, match="members must be >= 1"):
        SearchConfig(space={"members": {"int": [0, 3]}})
    with pytest.raises(ValueError, match="label_smoothing"):
        RouterConfig(label_smoothing=1.0)


def test_label_smoothing_smooths_the_bce_targets():
    rc = RouterConfig(hidden=[8], label_smoothing=0.2, members=1)
    m = fit.RouterModule(3, 2, dict(rc.__dict__), [0.01, 0.1], [0.1, 0.3], ref_latency_s=0.1, ref_energy_j=0.3).eval()
    x, score = torch.randn(4, 3), torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    lat, en = torch.tensor([[0.01, 0.1]] * 4), torch.tensor([[0.1, 0.3]] * 4)
    bce, expected, _, _ = m.losses((x, score, lat, en))
    target = score * 0.8 + 0.1
    assert bce.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(m(x), target).item())
    m.rc.label_smoothing = 0.0
    assert m.losses((x, score, lat, en))[1].item() == pytest.approx(expected.item())  # cost term unchanged


def test_router_config_and_feature_masks():
    base = RouterConfig(hidden=[64, 64], lr=1e-3)
    rc = search.router_config(base, {"hidden_width": 24, "lr": 0.01, "feature_groups": "text", "threshold": 0.5})
    assert rc.hidden == [24, 24] and rc.lr == 0.01 and rc.dropout == base.dropout
    assert search.router_config(base, {"depth": 1}).hidden == [64]
    assert search.router_config(base, {"depth": 0}).hidden == []
    text = search.feature_mask("text")
    assert text.sum() == len(TEXT_FEATURES) and text[[FEATURE_NAMES.index(n) for n in TEXT_FEATURES]].all()
    words = search.feature_mask("words")
    assert words.sum() == len(WORD_FEATURES) and not (words & text).any()
    assert search.feature_mask("image+text+words+thumbnail").all() and search.feature_mask(None).all()
    assert search.feature_mask("thumbnail").sum() == len(PIXEL_FEATURES) and search.feature_mask("thumbnail")[-1]
    assert (search.feature_mask("image") ^ search.feature_mask("text+words+thumbnail")).all()
    assert search.feature_mask("image+text").sum() == len(IMAGE_FEATURES) + len(TEXT_FEATURES)


# ---------------------------------------------------------------------------------------------------
# single mode, pruning, multi mode, export
# ---------------------------------------------------------------------------------------------------


def test_single_mode_maximises_edge_share_under_the_floor_on_router_val(byod, tmp_path, monkeypatch):
    cfg = load(byod, n_trials=4)
    seen = []
    split_arrays = fit.split_arrays
    monkeypatch.setattr(fit, "split_arrays", lambda *a: seen.append(a[3]) or split_arrays(*a))
    out = search.stage_search(cfg, storage=sqlite_url(tmp_path), study_name="single", export=False)
    assert set(seen) == {"router-train", "router-val"}  # trials never read router-test
    study = optuna.load_study(study_name="single", storage=sqlite_url(tmp_path))
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.metric_names == ["edge_share"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4 and sorted(out["worker_trials"]) == [0, 1, 2, 3]
    val = fit.split_arrays(*_tables(cfg), cfg.model_names, "router-val")
    floor = 0.99 * val.score[:, 1].mean()
    for t in trials:
        assert t.value == t.user_attrs["edge_share"]
        assert t.constraints["accuracy_floor"] == pytest.approx(floor - t.user_attrs["accuracy"])
        assert set(t.params) == set(SPACE)
        d = Path(t.user_attrs["checkpoint_dir"])
        assert (d / "best.ckpt").is_file() and list((d / "logs").rglob("metrics.csv"))
        header = next((d / "logs").rglob("metrics.csv")).read_text().splitlines()[0]
        assert "val_objective" in header and "val_edge_share" in header
    best = search.select(study, "single", floor)
    assert best is not None and best.constraints["accuracy_floor"] <= 0
    assert best.value == max(t.value for t in trials if t.constraints["accuracy_floor"] <= 0)
    assert best.value > 0.1  # the edge model is right on a quarter of the questions and the router finds some
    # recompute the best trial's router-val metrics from its checkpoint and decision
    module = fit.RouterModule.load_from_checkpoint(Path(best.user_attrs["checkpoint_dir"]) / "best.ckpt",
                                                   weights_only=False).eval()
    mask = search.feature_mask(best.params["feature_groups"])
    search.ignore_masked_inputs(module, mask)
    spec = json.loads((Path(best.user_attrs["checkpoint_dir"]) / "spec.json").read_text())
    from router_training import pipeline, tune

    probs = pipeline.predict(module, spec, val.x)  # raw features: the masked columns are ignored
    m = tune.evaluate(best.user_attrs["decision"], probs, val, CostSpec.from_dict(spec), cfg.tiers, 1)
    assert m["accuracy"] == pytest.approx(best.user_attrs["accuracy"])
    assert m["edge_share"] == pytest.approx(best.value)
    # outputs
    o = Path(out["outputs"]["dir"])
    for f in ("trials.csv", "front.md", "pareto_accuracy_latency.png", "pareto_accuracy_energy.png",
              "optimization_history.png", "param_importances.png", "summary.json"):
        assert (o / f).is_file(), f
    # a rerun with the study complete runs nothing
    again = search.stage_search(cfg, storage=sqlite_url(tmp_path), study_name="single", export=False, outputs=False)
    assert again["worker_trials"] == [] and again["trials"]["complete"] == 4


def _tables(cfg):
    from router_training import pipeline

    return pipeline.stage_collect(cfg), pipeline.stage_features(cfg)


def test_pruned_trials_are_recorded_as_pruned(byod, tmp_path):
    # the edge share never exceeds 1: a threshold pruner at 2 prunes every trial after its first epoch
    cfg = load(byod, n_trials=3, pruner={"threshold": {"lower": 2.0}})
    out = search.stage_search(cfg, storage=sqlite_url(tmp_path), study_name="pruned", export=True, outputs=False)
    study = optuna.load_study(study_name="pruned", storage=sqlite_url(tmp_path))
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3
    for t in study.trials:
        assert list(t.intermediate_values) == [0]  # reported after epoch 0, then stopped (of 3 epochs)
        assert 0.0 <= t.intermediate_values[0] <= 1.0
    assert out["trials"]["pruned"] == 3 and sorted(out["worker_trials"]) == [0, 1, 2]
    assert "export" not in out and "picked" not in out  # nothing complete to export
    # a median pruner after the first trials: some trials are cut short, each counted once
    cfg = load(byod, n_trials=4, pruner={"median": {"n_startup_trials": 1, "n_warmup_steps": 0}},
               space={**SPACE, "lr": {"float": [1e-5, 3e-2], "log": True}})
    out = search.stage_search(cfg, storage=sqlite_url(tmp_path), study_name="median", export=False, outputs=False)
    assert out["trials"]["complete"] + out["trials"]["pruned"] == 4 and len(out["worker_trials"]) == 4


def test_multi_mode_front_plots_and_export_of_a_picked_trial(byod, tmp_path):
    cfg = load(byod, mode="multi", n_trials=5, wandb=True, sampler={"nsga2": {"population_size": 4}},
               min_cloud_accuracy_ratio=None)
    url = sqlite_url(tmp_path)
    out = search.stage_search(cfg, storage=url, study_name="multi", export=False)
    study = optuna.load_study(study_name="multi", storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 5
    for t in done:
        assert "threshold" in t.params
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["mean_latency_s"], t.user_attrs["mean_energy_j"]]
        assert not t.constraints  # no accuracy floor in this study
    front = {t.number for t in study.best_trials}
    assert front and set(out["outputs"]["front"]) == front
    table = (Path(out["outputs"]["dir"]) / "front.md").read_text()
    for n in front:
        assert f"\n| {n}" in table
    o = Path(out["outputs"]["dir"])
    for f in ("pareto_accuracy_latency.png", "pareto_accuracy_energy.png", "optimization_history.png",
              "param_importances.png"):
        assert (o / f).stat().st_size > 5_000, f
    # every trial logged to CSV and to offline wandb, grouped by the study
    assert len(list((o / "wandb").glob("offline-run-*"))) == 5
    for t in done:
        assert list((Path(t.user_attrs["checkpoint_dir"]) / "logs").rglob("metrics.csv"))

    # export a picked Pareto point: the manifest records study, trial and parameters
    pick = max(front)
    with pytest.raises(search.SearchError, match="no complete trial 99"):
        search.stage_search(cfg, storage=url, study_name="multi", pick=99)
    out = search.stage_search(cfg, storage=url, study_name="multi", pick=pick)
    assert out["worker_trials"] == [] and out["picked"]["trial"] == pick
    assert out["export"]["max_abs_diff"] <= 1e-5 and out["export"]["same_decisions"]
    router = Router.load(cfg.path("export"))
    t = study.trials[pick]
    s = router.manifest.search
    assert (s["study"], s["trial"], s["params"]) == ("multi", pick, t.params)
    assert s["values"] == dict(zip(["accuracy", "mean_latency_s", "mean_energy_j"], t.values))
    assert router.manifest.tuning["study"] == "multi" and router.manifest.tuning["trial"] == pick
    assert router.rule.thresholds[0] == pytest.approx(t.params["threshold"])
    # the exported router reproduces the trial's router-val metrics through the runtime
    from router_training import tune

    table, feats = _tables(cfg)
    val = fit.split_arrays(table, feats, cfg.model_names, "router-val")
    probs = router.predict(val.x)
    m = tune.evaluate(t.user_attrs["decision"], probs, val, router.cost, cfg.tiers, 1)
    assert m["accuracy"] == pytest.approx(t.user_attrs["accuracy"], abs=1e-6)
    assert m["mean_latency_s"] == pytest.approx(t.user_attrs["mean_latency_s"], rel=1e-6)
    # masked feature groups: the exported router ignores those features
    if t.params["feature_groups"] != "image+text":
        mask = search.feature_mask(t.params["feature_groups"])
        noisy = val.x + np.where(mask, 0.0, 100.0).astype(np.float32)
        np.testing.assert_allclose(router.predict(noisy), probs, atol=1e-6)


def test_feature_groups_mask_what_the_exported_router_sees(byod, tmp_path):
    cfg = load(byod, n_trials=1, space={"feature_groups": {"categorical": ["text"]}})
    out = search.stage_search(cfg, storage=sqlite_url(tmp_path), study_name="text-only", outputs=False)
    router = Router.load(cfg.path("export"))
    assert router.manifest.search["params"] == {"feature_groups": "text"}
    table, feats = _tables(cfg)
    x = fit.split_arrays(table, feats, cfg.model_names, "router-test").x
    img = np.array([n in IMAGE_FEATURES or n in PIXEL_FEATURES for n in FEATURE_NAMES])  # the thumbnail too
    shuffled = x.copy()
    shuffled[:, img] = np.random.default_rng(0).normal(size=(len(x), img.sum())) * 50
    np.testing.assert_allclose(router.predict(shuffled), router.predict(x), atol=1e-6)
    assert out["export"]["same_decisions"]
    import onnx

    graph = onnx.load(str(cfg.path("export") / "router.onnx"))
    ops = {n.op_type for n in graph.graph.node} | {n.op_type for f in graph.functions for n in f.node}
    assert "Gemm" in ops or "MatMul" in ops
    assert "Conv" not in ops  # the masked thumbnail's CNN is not exported
    ckpt = cfg.path("checkpoints") / "search" / "text-only" / "trial-0000" / "best.ckpt"
    trained = fit.RouterModule.load_from_checkpoint(ckpt, weights_only=False)
    assert all(m.cnn is None for m in trained.net.members) and trained.rc.image_embedding == 0  # nor trained: no CNN on constant zeros
    # a trial trains search.members networks (default 1), not the router section's ensemble
    assert cfg.router.members == 3 and len(trained.net.members) == cfg.search.members == 1


# ---------------------------------------------------------------------------------------------------
# workers: a killed worker's trial, two processes on one study (SQLite, PostgreSQL)
# ---------------------------------------------------------------------------------------------------


def test_worker_loop_counts_every_workers_trials():
    import threading

    study = optuna.create_study()
    other = study.ask()  # another worker's running trial
    ran = []

    def objective(trial):
        ran.append(trial.number)
        return trial.suggest_float("x", 0, 1)

    # the other worker finishes its trial a little later; this one waits for it before returning
    threading.Timer(0.5, lambda: study.tell(other, 0.5)).start()
    mine = search.run_worker(study, objective, 3, poll_s=0.1)
    assert mine == ran == [1, 2] and other.number == 0
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert search.run_worker(study, objective, 3, poll_s=0.1) == []  # the study is done


def test_a_trial_started_at_the_same_instant_as_another_completes_instead_of_failing(byod, tmp_path):
    """Two workers that both found n_trials - 1 live trials both start one: the later trial (numbered after
    the budget) is trained and told like any other, so the finished study holds no FAIL trial (it used
    to end at once as FAIL, with a traceback in the log)."""
    from router_training import pipeline

    cfg = load(byod, n_trials=1)
    table, feats = pipeline.stage_collect(cfg), pipeline.stage_features(cfg)
    train = fit.split_arrays(table, feats, cfg.model_names, "router-train")
    val = fit.split_arrays(table, feats, cfg.model_names, "router-val")
    url = sqlite_url(tmp_path)
    study = search.open_study(search.open_storage(url, cfg.search), "same-instant", cfg.search, 0)
    other = study.ask()  # the other worker's trial: the study already holds n_trials = 1 live trials
    objective = search.Objective(cfg, train, val, fit.cost_spec(train, table, cfg),
                                 pipeline.cloud_index(cfg, train), "same-instant", 1)
    study.optimize(objective, n_trials=1)  # this worker's trial, started at the same instant
    study.tell(other, 0.5)
    states = [t.state for t in optuna.load_study(study_name="same-instant", storage=url).trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert search.run_worker(study, objective, 1, poll_s=0.1) == []  # done: nothing more runs


def test_a_killed_workers_trial_is_failed_and_retried(byod, tmp_path):
    cfg = load(byod, n_trials=2)
    url = sqlite_url(tmp_path)
    search.open_study(search.open_storage(url, cfg.search), "killed", cfg.search, 0)
    # a worker that starts a trial, records a heartbeat and is killed (SIGKILL) mid-trial
    code = f"""
import os, signal, optuna
from optuna.distributions import FloatDistribution
storage = optuna.storages.RDBStorage({url!r}, heartbeat_interval=1, grace_period=2)
study = optuna.load_study(study_name="killed", storage=storage)
trial = study.ask({{"lr": FloatDistribution(1e-3, 3e-2, log=True)}})
storage.record_heartbeat(trial._trial_id)
os.kill(os.getpid(), signal.SIGKILL)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    study = optuna.load_study(study_name="killed", storage=url)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    lr = study.trials[0].params["lr"]
    time.sleep(2.2)  # past the grace period (2 s)
    out = search.stage_search(cfg, storage=url, study_name="killed", export=False, outputs=False)
    study = optuna.load_study(study_name="killed", storage=url)
    assert study.trials[0].state == TrialState.FAIL  # marked failed, not lost or left running
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params["lr"] == lr
    assert out["trials"]["complete"] == 2 and out["trials"]["fail"] == 1 and len(out["worker_trials"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _initdb() -> str | None:
    found = shutil.which("initdb") or sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own: initdb in a temporary folder, listening on 127.0.0.1 and a free
    port, run as the ``postgres`` user when the tests run as root (the server refuses root)."""
    initdb = _initdb()
    if initdb is None:
        pytest.skip("PostgreSQL server binaries not found (no initdb on PATH or under /usr/lib/postgresql/*/bin); "
                    "install them with `apt-get install -y postgresql`")
    pg_ctl = str(Path(initdb).resolve().parent / "pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="router-search-pg-"))
    as_user = []
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run(as_user + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
                              "--locale=C"], check=True, capture_output=True, timeout=120)
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
                              f"-h 127.0.0.1 -p {port} -k {root} -F", "start"], check=True, capture_output=True,
                   timeout=120)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _two_workers(byod, tmp_path, study: str, n_trials: int, storage: str | None, export: bool):
    # trials of a few seconds each (30 epochs, not 3): a worker that starts a few seconds late (imports,
    # connecting to the storage on a loaded machine) still finds trials left to run
    cfg_path = write_config(byod, tmp_path, router={"epochs": 30})
    cmd = [sys.executable, "-m", "router_training.cli", "search", str(cfg_path), "--workdir", str(byod[1]),
           "--study", study, "--n-trials", str(n_trials), "--threads", "1"]
    cmd += ["--storage", storage] if storage else []
    cmd += [] if export else ["--no-export"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    procs = [subprocess.Popen(cmd + ["--worker-index", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout[stdout.index("{"):]))
    return outs


def _check_shared_study(outs, study: optuna.Study, n_trials: int):
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))  # no duplicate trial numbers
    finished = sorted(t.number for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    mine = [o["worker_trials"] for o in outs]
    # the study holds the sum of both workers' trials: n_trials, or one more when both started the last one
    # at the same instant (that trial is run too, not failed)
    assert len(finished) == sum(map(len, mine)) in (n_trials, n_trials + 1)
    assert sorted(mine[0] + mine[1]) == finished and not set(mine[0]) & set(mine[1])
    assert all(mine), f"a worker ran no trial: {mine}"
    assert len(finished) == len(study.trials)  # no FAIL (nor any other) trial left over


def test_search_workers_run_in_child_processes_on_one_study(byod, tmp_path):
    """search.workers 2: the command starts one more worker process; both run trials of the study, the
    parent writes the outputs once both are done, and no trial is left failed."""
    cfg = load(byod, workers=2)
    cfg.router = dataclasses.replace(cfg.router, epochs=30)  # trials of seconds: the child starts in time
    out = search.stage_search(cfg, storage=sqlite_url(tmp_path), study_name="spawned", n_trials=8, export=False)
    study = optuna.load_study(study_name="spawned", storage=sqlite_url(tmp_path))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert out["workers"] == 2 and len(finished) == len(study.trials) in (8, 9)
    pids = {t.user_attrs["worker_pid"] for t in finished}
    assert len(pids) == 2 and os.getpid() in pids
    assert set(out["worker_trials"]) < {t.number for t in finished}  # the parent ran some, the child the rest
    assert (cfg.path("runs") / "search" / "spawned" / "summary.json").is_file()


def test_two_workers_share_a_sqlite_study(byod, tmp_path):
    outs = _two_workers(byod, tmp_path, "shared-sqlite", 5, None, export=True)
    cfg = load(byod)
    db = cfg.path("data") / "optuna.db"
    assert db.is_file()  # the default storage
    study = optuna.load_study(study_name="shared-sqlite", storage=f"sqlite:///{db}")
    _check_shared_study(outs, study, 5)
    assert sum("export" in o for o in outs) == 1  # the second worker found the outputs written
    manifest = Router.load(cfg.path("export")).manifest
    assert manifest.search["study"] == "shared-sqlite" and manifest.search["storage"].startswith("sqlite:///")
    assert manifest.search["trial"] == search.select(study, "single", None).number


def test_two_workers_share_a_postgres_study(byod, tmp_path, postgres_url):
    outs = _two_workers(byod, tmp_path, "shared-pg", 5, postgres_url, export=False)
    study = optuna.load_study(study_name="shared-pg", storage=postgres_url)
    _check_shared_study(outs, study, 5)
    assert all(o["storage"] == postgres_url for o in outs)


def test_scorer_sweep_matches_the_decision_rule_threshold_by_threshold():
    """The vectorised sweep (after every epoch of every trial) picks what evaluating each threshold with
    ``tune.evaluate`` picks, over quantiles of the edge probabilities even when they lie in a narrow band."""
    rng = np.random.default_rng(3)
    n = 400
    p_edge = rng.uniform(0.05, 0.25, n)  # a narrow band, as on real grades
    score = np.stack([rng.random(n) < p_edge * 3, rng.random(n) < 0.8], 1).astype(float)
    val = SplitArrays([f"s{i}" for i in range(n)], np.zeros((n, 3), np.float32), score,
                          np.tile([0.2, 1.0], (n, 1)), np.tile([2.0, 1.0], (n, 1)), np.full((n, 2), np.nan))
    spec = {"models": [{"name": "e", "tier": "edge", "mean_compute_s": 0.2, "mean_payload_bytes": 0},
                       {"name": "c", "tier": "cloud", "mean_compute_s": 0.9, "mean_payload_bytes": 1000}],
            "profile": {"name": "p", "edge_power_w": 10, "idle_power_w": 3, "radio_tx_power_w": 2,
                        "uplink_mbps": 10, "downlink_mbps": 50, "rtt_s": 0.05},
            "ref_latency_s": 1.0, "ref_energy_j": 1.0}
    probs = np.stack([p_edge, np.full(n, 0.8)], 1)
    scorer = search.Scorer(val, CostSpec.from_dict(spec), ["edge", "cloud"], 1, "single", 0.9, grid=51)
    ts = scorer.thresholds(probs)
    assert ts[0] == 0.0 and ts[-1] > 1 and len([t for t in ts if 0.05 <= t <= 0.25]) >= 45
    d, m = scorer.best(probs, [(1.0, 0.0)])  # lambda_latency 1: an eligible edge model is cheaper than the cloud
    every = [(scorer.metrics(probs, scorer.decision(t, 1.0, 0.0)), t) for t in ts]
    ok = [(mm, t) for mm, t in every if mm["accuracy"] >= scorer.floor - 1e-12]
    want = max(ok, key=lambda c: (c[0]["edge_share"], c[0]["accuracy"], -c[0]["mean_latency_s"]))
    assert d["thresholds"][0] == want[1] and m == want[0] and 0 < m["edge_share"] < 1

    # the default sweep also chooses the decision's lambdas: with none an edge model is chosen only where
    # its P(correct) beats the cloud's (never here); the grid finds at least the latency weight's edge share
    assert scorer.best(probs, [(0.0, 0.0)])[1]["edge_share"] == 0.0
    d_all, m_all = scorer.best(probs)
    assert m_all["edge_share"] >= m["edge_share"] and (d_all["lambda_latency"], d_all["lambda_energy"]) != (0, 0)
    assert m_all["accuracy"] >= scorer.floor - 1e-12


def test_scorer_sweep_equals_decide_at_every_threshold_with_two_edge_models():
    """``Scorer._sweep`` (step functions over the edge probabilities) gives, for every threshold and
    lambda pair, the accuracy, edge share and mean latency of ``decision.decide`` run at that threshold,
    with ties in P(correct) and in cost included."""
    from router_training.core.decision import decide

    rng = np.random.default_rng(5)
    n, tiers = 300, ["edge", "edge", "cloud"]
    probs = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], size=(n, 3))  # many equal probabilities
    score = (rng.random((n, 3)) < probs).astype(float)
    lat = np.tile([0.1, 0.3, 1.0], (n, 1)) + rng.random((n, 3)) * 0.01
    val = SplitArrays([f"s{i}" for i in range(n)], np.zeros((n, 3), np.float32), score, lat, lat * 2,
                      np.full((n, 3), np.nan))
    spec = {"models": [{"name": f"m{k}", "tier": t, "mean_compute_s": [0.1, 0.3, 0.5][k],
                        "mean_payload_bytes": 0 if t == "edge" else 1000} for k, t in enumerate(tiers)],
            "profile": {"name": "p", "edge_power_w": 10, "idle_power_w": 3, "radio_tx_power_w": 2,
                        "uplink_mbps": 10, "downlink_mbps": 50, "rtt_s": 0.05},
            "ref_latency_s": 1.0, "ref_energy_j": 1.0}
    scorer = search.Scorer(val, CostSpec.from_dict(spec), tiers, 2, "single", 0.9)
    ts = np.asarray(scorer.thresholds(probs))
    for ll, le in [(0.0, 0.0), (0.5, 0.0), (0.0, 1.0), (2.0, 2.0)]:
        acc, share, latency = scorer._sweep(probs, ts, ll, le)
        for j, t in enumerate(ts):
            idx = decide(probs, scorer.lat, scorer.en, [t, t, 0.0], ll, le, 1.0, 1.0)
            rows = np.arange(n)
            assert acc[j] == pytest.approx(score[rows, idx].mean(), abs=1e-12)
            assert share[j] == pytest.approx((idx < 2).mean(), abs=1e-12)
            assert latency[j] == pytest.approx(lat[rows, idx].mean(), abs=1e-12)
