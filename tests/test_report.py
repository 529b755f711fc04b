"""The report's plain-language top and header lines (router_training.report): the verdict on real sweeps
of synthetic routers (an informative one, one whose P(correct) is shuffled, so independent of the
outcomes), the missed-target line, scorer naming, configured-cost daggers, the split check, the
left-out confidence baselines; and one end-to-end ``evaluate.evaluate`` on the tiny run's outcomes with
a confidence-free edge model, a configured compute time, a straddling group and a missed target."""

import dataclasses
import json
import shutil
from types import SimpleNamespace

import matplotlib.axes
import numpy as np
import pandas as pd
import pytest

from router_training import baselines as B
from router_training import metrics as M
from router_training import report as R
from router_training.core.features import FEATURE_NAMES
from router_training.core.splits import SplitArrays

TIERS = ["edge", "cloud"]


def synthetic(n, seed):
    """Edge (0) right with probability 1 - d, cloud (1) with 1 - d / 3, d ~ U(0, 1) per question; returns
    the split and the calibrated P(correct) (n, 2) a router knowing d would predict."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0, 1, n)
    score = np.stack([rng.random(n) < 1 - d, rng.random(n) < 1 - d / 3], 1).astype(float)
    s = SplitArrays([f"q{seed}-{i}" for i in range(n)], np.zeros((n, len(FEATURE_NAMES)), np.float32), score,
                    np.tile([0.05, 0.4], (n, 1)), np.tile([1.0, 0.3], (n, 1)), np.full((n, 2), np.nan))
    return s, np.stack([1 - d, 1 - d / 3], 1)


@pytest.fixture(scope="module")
def sweeps():
    """name -> (routing summary, bootstrap intervals, sweep assignments) on one test split, for the
    informative router and the shuffled one, both swept as the report sweeps the router
    (``baselines.Predicted``)."""
    (train, p_train), (test, p_test) = synthetic(400, 0), synthetic(1500, 1)
    shuffled = np.random.default_rng(7).permutation(p_test)  # rows of other questions: independent of outcomes
    probs = {"informative": {id(train): p_train, id(test): p_test},
             "shuffled": {id(train): p_train, id(test): shuffled}}
    out = {"test": test}
    for name, table in probs.items():
        b = B.Predicted(lambda s, t=table: t[id(s)]).fit(train, B.Context(TIERS, 1))
        points = B.sweep(b, test)
        assigns = [b.assign(test, p["threshold"]) for p in points]
        out[name] = (B.summary(points, test, TIERS, 1), M.bootstrap_routing(assigns, test, TIERS, 1, B=300), assigns)
    return out


def test_verdict_detects_skill_of_an_informative_router(sweeps):
    summary, iv, _ = sweeps["informative"]
    assert iv["apgr"][0] == pytest.approx(summary["apgr"]) and iv["apgr"][1] > 0.55
    text = R.verdict({"router": summary}, {"router_routing": iv})
    assert text.startswith("**Verdict: routing skill detected.**") and "no evidence" not in text
    assert f"is {summary['apgr']:.3f} (95% interval {iv['apgr'][1]:.3f} to {iv['apgr'][2]:.3f})" in text
    assert "No baseline was fitted" in text and "did not meet its target" not in text
    v = R.verdict_data({"router": summary}, {"router_routing": iv})
    assert v["skill"] is True and v["router_apgr"] == pytest.approx(list(iv["apgr"])) and v["random_apgr"] == 0.5
    assert v["target_met"] is True and v["deployed"] is None and v["best_baseline"] is None


def test_verdict_finds_no_skill_in_a_shuffled_router(sweeps):
    summary, iv, _ = sweeps["shuffled"]
    assert iv["apgr"][1] <= 0.5 <= iv["apgr"][2] and abs(summary["apgr"] - 0.5) < 0.05
    text = R.verdict({"router": summary}, {"router_routing": iv})
    assert text.startswith("**Verdict: no evidence of routing skill over random on this data.**")
    assert "which the interval includes" in text and "no better than random at the same cloud share" in text
    assert "routing skill detected" not in text
    assert R.verdict_data({"router": summary}, {"router_routing": iv})["skill"] is False
    # an interval wholly below 0.5 says worse than random
    below = {"router_routing": {"apgr": (0.4, 0.35, 0.45)}}
    assert "no better than random (worse than random)" in R.verdict({"router": {"apgr": 0.4}}, below)


def test_verdict_against_the_best_pre_decision_baseline(sweeps):
    """The paired interval (same resamples) decides: informative minus shuffled excludes 0 above, the
    reverse below, a sweep against itself is 0 on every resample. The cascade (not pre-decision) is
    never the baseline, however high its APGR."""
    test = sweeps["test"]
    (inf, inf_iv, inf_a), (shf, shf_iv, shf_a) = sweeps["informative"], sweeps["shuffled"]
    paired = {"baseline": "weak", "difference": M.bootstrap_routing(inf_a, test, TIERS, 1, B=300, minus=shf_a)}
    routing = {"router": inf, "weak": shf, "random": {"apgr": 0.5}, "cascade": {"apgr": 0.99}}
    intervals = {"router_routing": inf_iv, "weak_routing": shf_iv}
    text = R.verdict(routing, intervals, paired)
    d = paired["difference"]["apgr"]
    assert d[0] == pytest.approx(inf["apgr"] - shf["apgr"]) and d[1] > 0
    assert (f"Best baseline that decides before running a model: weak, APGR {shf['apgr']:.3f} (95% interval "
            f"{shf_iv['apgr'][1]:.3f} to {shf_iv['apgr'][2]:.3f})") in text
    assert f"Router minus weak on the same resamples: {d[0]:+.3f} (95% interval {d[1]:+.3f} to {d[2]:+.3f}): " \
           "the router beats it." in text
    v = R.verdict_data(routing, intervals, paired)
    assert v["best_baseline"] == "weak" and v["beats_best_baseline"] is True
    assert v["best_baseline_apgr"] == pytest.approx(list(shf_iv["apgr"])) and v["difference_apgr"] == pytest.approx(list(d))
    rev = {"baseline": "strong", "difference": M.bootstrap_routing(shf_a, test, TIERS, 1, B=300, minus=inf_a)}
    text = R.verdict({"router": shf, "strong": inf}, {"router_routing": shf_iv, "strong_routing": inf_iv}, rev)
    assert text.startswith("**Verdict: no evidence") and text.endswith("it beats the router.")
    same = {"baseline": "twin", "difference": M.bootstrap_routing(inf_a, test, TIERS, 1, B=50, minus=inf_a)}
    text = R.verdict({"router": inf, "twin": inf}, {"router_routing": inf_iv}, same)
    assert "+0.000 (95% interval +0.000 to +0.000): no evidence that either is better." in text
    assert R.verdict_data({"router": inf, "twin": inf}, {"router_routing": inf_iv}, same)["beats_best_baseline"] is None
    assert "twin, APGR" in text and "no paired interval" not in text
    assert "no paired interval was computed" in R.verdict({"router": inf, "twin": inf}, {"router_routing": inf_iv})


def test_missed_target_leads_the_report(sweeps):
    summary, iv, _ = sweeps["informative"]
    deployed = "every query to gemini (the most accurate cloud model on router-val; no trial met 97% of all-cloud accuracy)"
    text = R.verdict({"router": summary}, {"router_routing": iv}, decision={"target_met": False, "deployed": deployed})
    first, second = text.split("\n\n")[:2]
    assert first == (f"**The tuned decision did not meet its target.** Deployed: {deployed}. The \"router\" row below "
                     "is that decision.")
    assert second.startswith("**Verdict: routing skill detected.**")
    v = R.verdict_data({"router": summary}, {"router_routing": iv}, decision={"target_met": False, "deployed": deployed})
    assert v["target_met"] is False and v["deployed"] == deployed
    met = R.verdict({"router": summary}, {"router_routing": iv}, decision={"target_met": True, "thresholds": [0.5, 0]})
    assert "target" not in met
    assert R.verdict({}, {}).startswith("**Verdict: not available**")


def test_no_accuracy_gap_means_no_skill_to_measure():
    """Best edge as accurate as (or more than) all-cloud: PGR has no gap; even an APGR interval above 0.5
    is not skill."""
    routing, intervals = {"router": {"apgr": 0.7}}, {"router_routing": {"apgr": (0.7, 0.6, 0.8)}}
    tie = {"best_edge": 0, "acc_edge": 0.3617, "acc_cloud": 0.3617}
    text = R.verdict(routing, intervals, refs=tie, models=["edge-small", "cloud"])
    assert text == ("**Verdict: no evidence of routing skill over random on this data.** On router-test edge-small "
                    "(0.3617) is as accurate as all-cloud (0.3617): there is no accuracy gap for routing to recover, "
                    "so APGR (0.700) does not measure skill here: all-edge already matches all-cloud's accuracy."
                    "\n\nNo baseline was fitted, so none is compared.")
    v = R.verdict_data(routing, intervals, refs=tie)
    assert v["skill"] is False and v["gap"] == 0.0
    worse_cloud = R.verdict(routing, intervals, refs={**tie, "acc_cloud": 0.3})
    assert ("is more accurate than all-cloud (0.3000): there is no accuracy gap for routing to recover, so APGR "
            "(0.700) does not measure skill here: all-edge already beats all-cloud's accuracy.") in worse_cloud
    gap = {**tie, "acc_cloud": 0.6}
    assert R.verdict_data(routing, intervals, refs=gap)["skill"] is True
    assert R.verdict(routing, intervals, refs=gap).startswith("**Verdict: routing skill detected.**")


def test_scorer_names_the_accuracy_column_and_axis(monkeypatch, tmp_path):
    rows = {"router": {"accuracy": 0.5, "pct_cloud_accuracy": 90.0, "edge_share": 0.3, "mean_latency_s": 0.1,
                       "p95_latency_s": 0.2, "mean_energy_j": 1.0, "latency_reduction": 0.2, "energy_reduction": 0.1}}
    assert R.to_frame(rows).columns[0] == "VQA acc" and R.to_frame(rows, "vqa").columns[0] == "VQA acc"
    for scorer in ("exact", "mc", "numeric", "given"):
        df = R.to_frame(rows, scorer)
        assert df.columns[0] == "accuracy" and "VQA acc" not in df.columns
        assert R.markdown(df).splitlines()[2] == ("| router | 0.5000 | 90.0 | 0.300 | 100.00 | 200.00 | 1.0000 | "
                                                  "+20.0% | +10.0% |")
        assert R.scorer_line(scorer).startswith(f"Scorer: `{scorer}` (")
    assert "VQAv2 accuracy" in R.scorer_line("vqa") and "own grades" in R.scorer_line("given")
    labels = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel", lambda self, label, **kw: labels.append(label))
    point = {"accuracy": 0.5, "mean_latency_s": 0.1, "mean_energy_j": 1.0}
    R.pareto_plot(tmp_path / "a.png", {"c": [point]}, {"router": point}, "t", R.accuracy_label("exact", False))
    R.pareto_plot(tmp_path / "b.png", {"c": [point]}, {"router": point}, "t", R.accuracy_label("vqa", False))
    assert labels == ["accuracy", "accuracy", "VQA accuracy", "VQA accuracy"]
    check = {"violation_rate": 0.05, "delta": 0.1, "resplits": 10, "pool": "router-test", "n_cal": 5, "n_test": 5,
             "eps": 0.01, "transform": "clip", "certified_rate": 1.0, "mean_test_loss": 0.0,
             "mean_edge_threshold": 0.5, "naive_violation_rate": 0.5}
    assert "(accuracy lost against all-cloud" in R.guarantee_markdown(check, None, "exact")
    assert "(VQA accuracy lost against all-cloud" in R.guarantee_markdown(check, None)


def test_configured_compute_times_are_marked():
    """Model 1 (edge) has a configured compute time: cost cells of policies routing to it get a dagger;
    with the all-cloud reference configured, every policy's cuts vs cloud do too."""
    n = 4
    s = SimpleNamespace(score=np.ones((n, 3)), latency_s=np.tile([0.1, 0.2, 0.5], (n, 1)),
                        energy_j=np.tile([1.0, 2.0, 0.5], (n, 1)))
    tiers = ["edge", "edge", "cloud"]
    rows = {name: M.policy_metrics(np.eye(3)[idx], s, tiers, 2) for name, idx in
            (("all-edge (a)", [0] * n), ("router", [0, 1, 2, 2]), ("all-cloud (c)", [2] * n))}
    models = [{"name": "a", "tier": "edge"}, {"name": "b", "tier": "edge", "compute_source": "configured: vendor sheet"},
              {"name": "c", "tier": "cloud", "compute_source": "measured"}]
    marks, note = R.configured_costs(rows, models, 2)
    cost = {"latency (ms)", "p95 latency (ms)", "energy (J)", "latency cut vs cloud", "energy cut vs cloud"}
    assert marks == {"router": cost}
    assert note.startswith("† Compute time configured, not measured: b (configured: vendor sheet).")
    table = R.markdown(R.to_frame(rows), marks).splitlines()
    router = next(line for line in table if line.startswith("| router |")).split(" | ")
    assert router[4:] == ["325.00 †", "500.00 †", "1.0000 †", "+35.0% †", "-100.0% † |"]
    assert "†" not in next(line for line in table if line.startswith("| all-edge (a) |"))
    models[2]["compute_source"] = "configured: published throughput"
    marks, note = R.configured_costs(rows, models, 2)
    assert marks["all-edge (a)"] == {"latency cut vs cloud", "energy cut vs cloud"}
    assert marks["router"] == cost and marks["all-cloud (c)"] == cost
    assert "b (configured: vendor sheet); c (configured: published throughput)." in note
    assert R.configured_costs(rows, [{"name": m["name"]} for m in models], 2) == ({}, "")


def test_split_check_and_empty_questions():
    table = pd.DataFrame({"sample_id": [f"s{i}" for i in range(6)] * 2, "model": ["e"] * 6 + ["c"] * 6,
                          "split": ["router-train", "router-train", "router-val", "router-test", "router-test",
                                    "train"] * 2})
    info = pd.DataFrame({"sample_id": [f"s{i}" for i in range(6)], "group": ["g1", "g1", "g2", "g3", "g3", "g9"],
                         "empty_question": [False, True, False, False, True, True]})
    check = R.split_check(table, info)
    assert check == {"groups": 3, "straddling": {}}  # s5 lies in a reference-model split, not a router split
    assert R.split_lines("template", check, info) == [
        "Router splits by `template`: no group in two splits (3 groups).",
        "3 of 6 questions have an empty text (the image carries the question)."]
    info.loc[3, "group"] = "g2"  # g2 now in router-val and router-test
    check = R.split_check(table, info)
    assert check == {"groups": 3, "straddling": {"g2": ["router-test", "router-val"]}}
    line = R.split_lines("template", check, info)[0]
    assert line.startswith("**WARNING: 1 of 3 `template` groups lie in two router splits (e.g. 'g2' in router-test "
                           "and router-val)")
    old = info[["sample_id"]]  # an old caller's info: no group, no empty_question
    assert R.split_check(table, old) is None and R.split_lines("image_id", None, old) == ["Router splits by `image_id`."]
    assert R.split_lines("image_id", None, info.assign(empty_question=False)) == ["Router splits by `image_id`."]


def test_left_out_line():
    assert R.left_out_line({"cascade": 0, "combined": 0}, ["gpt-edge", "gemini"]) == \
        "cascade and combined left out: edge model gpt-edge's outcomes carry no confidence."
    assert R.left_out_line({"combined": 1}, ["a", "b", "c"]) == "combined left out: edge model b's outcomes carry no confidence."
    assert R.left_out_line({}, ["a"]) == ""


# ---------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_evaluate_report_top_on_real_outcomes(tiny_run, tmp_path):
    """The tiny run's outcomes with the edge model's confidences removed, the cloud's compute time marked
    configured, a missed target, one group in two splits and three empty questions."""
    from router_training import evaluate, pipeline
    from router_training.runtime import MANIFEST

    cfg, _ = tiny_run
    for kind in ("data", "checkpoints", "export"):  # outcomes, features, reference models, the router
        shutil.copytree(cfg.path(kind), tmp_path / kind / cfg.name)
    manifest_path = tmp_path / "export" / cfg.name / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["models"][1]["compute_source"] = "configured: published throughput"
    deployed = "every query to cloud (no trial met the target)"
    manifest["decision"].update(target_met=False, deployed=deployed)
    manifest_path.write_text(json.dumps(manifest))
    c = dataclasses.replace(cfg, workdir=tmp_path)
    table, splits = pipeline.load_splits(c)
    splits = {k: dataclasses.replace(s, confidence=s.confidence.copy()) for k, s in splits.items()}
    for s in splits.values():
        s.confidence[:, 0] = np.nan  # edge-small's outcomes carry no confidence
    info = pipeline.data.build_router_dataset(c).select_columns(["sample_id", "degradation", "severity"]).to_pandas()
    ids = table[["sample_id", "image_id", "split"]].drop_duplicates()
    info = info.merge(ids[["sample_id", "image_id"]], on="sample_id")
    info["group"] = info.pop("image_id").astype(str)
    bad = ids.groupby("split")["sample_id"].first()
    info.loc[info["sample_id"] == bad["router-test"], "group"] = "shared"
    info.loc[info["sample_id"] == bad["router-train"], "group"] = "shared"
    info["empty_question"] = np.arange(len(info)) < 3
    out = tmp_path / "report"
    main = evaluate.evaluate(c, table, pipeline.stage_features(c), splits, 1, info, out, bootstrap=100,
                             settings=pipeline.fit_settings(c))
    md = (out / "report.md").read_text().split("\n")
    rep = json.loads((out / "report.json").read_text())
    assert md[0].startswith("# Router report") and md[2].startswith("**The tuned decision did not meet its target.** "
                                                                     f"Deployed: {deployed}.")
    assert md[4].startswith("**Verdict: ") and md[4] == rep["verdict"]["text"].split("\n\n")[1]
    v = rep["verdict"]
    assert v["target_met"] is False and v["deployed"] == deployed
    assert v["router_apgr"] == pytest.approx(rep["intervals"]["router_routing"]["apgr"])
    assert v["skill"] == (v["router_apgr"][1] > 0.5 and v["gap"] > 0)  # (the tiny models tie: gap 0)
    refs = M.references(splits["router-test"], c.tiers, 1)
    assert v["gap"] == pytest.approx(refs["acc_cloud"] - refs["acc_edge"])
    assert ("routing skill detected" if v["skill"] else "no evidence of routing skill over random on this data") in md[4]
    best = v["best_baseline"]
    assert best == rep["paired"]["baseline"] and best not in ("cascade", "combined", "random", "oracle")
    assert v["best_baseline_apgr"] == pytest.approx(rep["intervals"][f"{best}_routing"]["apgr"])
    assert v["best_baseline_apgr"][0] == pytest.approx(rep["routing"][best]["apgr"])
    text = "\n".join(md)
    assert "cascade and combined left out: edge model edge-small's outcomes carry no confidence." in text
    assert "cascade" not in rep["routing"] and "combined" not in rep["routing"] and "| cascade |" not in text
    assert rep["left_out"] == {"cascade": "edge-small", "combined": "edge-small"}
    for name in ("qtype", "mlp_image", "knn"):  # baselines' intervals in the routing table
        lo, hi = rep["intervals"][f"{name}_routing"]["apgr"][1:]
        assert f"| {name} | {rep['routing'][name]['apgr']:.3f} [{lo:.3f}, {hi:.3f}] |" in text
    assert "Scorer: `vqa` (VQAv2 accuracy" in text and "| policy | VQA acc |" in main and rep["scorer"] == "vqa"
    assert "**WARNING: 1 of" in text and "'shared' in router-test and router-train" in text
    assert rep["splits"]["straddling"] == {"shared": ["router-test", "router-train"]}
    assert rep["splits"]["split_by"] == "image_id" and rep["empty_questions"] == 3
    assert f"3 of {len(info)} questions have an empty text" in text
    assert "† Compute time configured, not measured: cloud (configured: published throughput)." in text
    assert rep["configured_costs"] == [{"model": "cloud", "compute_source": "configured: published throughput"}]
    cloud_row = next(line for line in main.split("\n") if line.startswith("| all-cloud (cloud) |"))
    edge_row = next(line for line in main.split("\n") if line.startswith("| all-edge (edge-small) |"))
    assert cloud_row.count("†") == 5 and edge_row.count("†") == 2  # the edge row's cuts vs the configured cloud
