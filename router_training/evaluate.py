"""The evaluation harness behind `router-train evaluate` (and the report stage of `run`).

Everything is scored on router-test through the exported artifact (the runtime a device runs);
thresholds and temperatures come from router-val. Writes into ``runs/<run>/``: report.md, report.json,
pareto.png (accuracy vs latency and vs energy: sweeps as curves, baselines as points, oracle marked),
reliability_<model>.png, bandwidth.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import data, metrics, outcomes, policies, report
from .config import Config
from .core.splits import SplitArrays
from .fit import split_arrays
from .runtime import Router

BANDWIDTHS_MBPS = (1, 2, 5, 10, 20, 50, 100)
PLOTTED_BASELINES = ("cascade", "knn", "hybrid_det", "minilm_clf", "mlp_image", "mlp_text")


def router_sweep(router: Router, train: SplitArrays, test: SplitArrays, tiers: list[str], cloud: int,
                 models: list[str]) -> tuple[list[dict], list[np.ndarray]]:
    """The router's routing curve on ``test``, from all-edge to all-cloud: its predicted P(correct) ranked
    and swept exactly as every per-model predictor among the baselines is (``baselines.Predicted``:
    query i goes to the edge model with the highest predicted P(correct) when that exceeds the cloud
    reference's by at least the knob; knobs at quantiles of that gap, as RouteLLM sweeps). So the curves
    compare what the predictors know; the tuned thresholds and lambdas (an operating point that also
    weighs latency and energy) are the "router" row of the policy table. Returns (sweep points with
    ``metrics.policy_metrics`` keys and ``threshold`` = knob, assignments (n, K) per point)."""
    from . import baselines

    b = baselines.Predicted(lambda s: router.predict(s.x)).fit(train, baselines.Context(tiers, cloud))
    points = baselines.sweep(b, test, models=models)
    return points, [b.assign(test, p["threshold"]) for p in points]


def guarantee_check(cfg: Config, router: Router, splits: dict[str, SplitArrays], cloud: int) -> dict:
    """The Learn-then-Test check on this run's real outcomes (``guarantee.resplit_check``), with
    ``tune.guarantee``'s eps / delta / transform / resplits (GuaranteeConfig defaults when unset) and
    the exported router's probabilities and lambdas. The pool is data the router never trained on:
    router-val + router-test when the exported router was calibrated in guarantee mode (its manifest
    records it; each calibration part is then as large as router-val, the set its threshold was
    calibrated on), router-test alone otherwise (router-val chose the best epoch and the tuned or searched
    thresholds). Returns the check's dict plus ``pool``, and the deployed decision's own behaviour on the
    same resplits' test parts (``guarantee.fixed_policy_check``: the manifest's exact thresholds and
    lambdas through ``router.decide``, not recalibrated): ``deployed_violation_rate`` (share of resplits
    whose test part loses more than ``deployed_eps`` against all-cloud: the guarantee's eps, else the
    loss the ``tune`` target allows), ``deployed_mean_loss`` (mean test loss,
    fraction of accuracy) and ``deployed_edge_share``."""
    from . import guarantee
    from .config import GuaranteeConfig

    rec = router.manifest.tuning.get("guarantee")
    gc = cfg.tune.guarantee or GuaranteeConfig()
    if rec:  # check the guarantee the artifact was calibrated for
        gc = GuaranteeConfig(eps=rec["eps"], delta=rec["delta"], transform=rec["transform"], resplits=gc.resplits)
    calibrated = rec is not None
    names = ("router-val", "router-test") if calibrated else ("router-test",)
    x = np.concatenate([splits[s].x for s in names])
    score = np.concatenate([splits[s].score for s in names])
    rule, cost = router.rule, router.cost
    lat, en = cost.costs()
    grid = guarantee.DEFAULT_GRID
    probs = router.predict(x)
    assign = guarantee.router_assign(probs, router.tiers, lat, en, rule.lambda_latency, rule.lambda_energy,
                                     cost.ref_latency_s, cost.ref_energy_j)
    assigns = [assign(t) for t in grid]
    losses = np.stack([guarantee.per_sample_loss(a, score, cloud) for a in assigns])
    is_edge = np.array(router.tiers) == "edge"
    edge = np.stack([a[:, is_edge].sum(1) for a in assigns])
    chosen = router.decide(probs)  # the deployed policy, exactly as the device runs it
    # its own tolerance: the guarantee's eps, else the accuracy the tune target allows it to lose
    cloud_acc = float(score[:, cloud].mean())
    dep_eps = gc.eps if calibrated else cloud_acc - cfg.tune.accuracy_floor(cloud_acc)
    fixed = guarantee.fixed_policy_check(
        guarantee.per_sample_loss(np.eye(len(router.tiers))[chosen], score, cloud), dep_eps, gc.resplits,
        edge=is_edge[chosen])
    return {**guarantee.resplit_check(losses, grid, gc.eps, gc.delta, gc.transform, gc.resplits, edge=edge),
            "pool": " + ".join(names), "deployed_violation_rate": fixed["violation_rate"], "deployed_eps": dep_eps,
            "deployed_mean_loss": fixed["mean_test_loss"], "deployed_edge_share": fixed["mean_edge_share"]}


def ood_summary(router: Router, x: np.ndarray) -> dict | None:
    """The out-of-distribution score (``ood.ood_score``) of router-test's raw features ``x`` (n, F):
    quantiles (50, 90, 99, max), the limit in force and the share of questions above it, so a user can
    set ``ood_max_score`` / ``ood_policy``. None when the artifact records no training range."""
    scores = router.ood_scores(x)
    if scores is None:
        return None
    limit, policy = router.ood_settings()
    return {"quantiles": {q: float(np.quantile(scores, q / 100)) for q in (50, 90, 99)}, "max": float(scores.max()),
            "limit": limit, "policy": policy, "flagged": None if limit is None else float((scores > limit).mean())}


def bandwidth_table(cfg: Config, table: pd.DataFrame, feats: pd.DataFrame, router: Router, cloud: int) -> list[dict]:
    """The router re-deciding with the current uplink (no retraining): per bandwidth (Mbit/s), its
    accuracy, edge share and mean latency/energy, and all-cloud's, with realised costs recomputed under
    the profile at that bandwidth."""
    rows = []
    for bw in BANDWIDTHS_MBPS:
        test = split_arrays(outcomes.with_costs(table, cfg.profile.with_network(uplink_mbps=bw)), feats,
                            cfg.model_names, "router-test")
        assign = np.eye(len(cfg.models))[router.decide(router.predict(test.x), uplink_mbps=bw)]
        m = policies.metrics(assign, test, cfg.tiers, cloud)
        rows.append({"uplink_mbps": bw, "accuracy": m["accuracy"], "edge_share": m["edge_share"],
                     "mean_latency_s": m["mean_latency_s"], "mean_energy_j": m["mean_energy_j"],
                     "cloud_latency_s": float(test.latency_s[:, cloud].mean()),
                     "cloud_energy_j": float(test.energy_j[:, cloud].mean())})
    return rows


def compare_baselines(cfg: Config, splits: dict[str, SplitArrays], cloud: int, router: Router, out: Path,
                      settings: dict, router_assigns: list[np.ndarray], bootstrap: int = 1000) -> tuple[dict, dict]:
    """Fit every baseline of ``baselines`` on router-train (router-val for early stopping) and sweep it on
    router-test: (name -> {"points", "summary", "fit_s"} plus, for each baseline that decides before
    running a model, "interval": ``metrics.bootstrap_routing`` of its sweep's assignments ({key: (point,
    lo, hi)}, the resamples the router's interval uses), paired), where ``paired`` compares the router's
    sweep (``router_assigns``) with the best such baseline on the same bootstrap resamples:
    {"baseline": name, "difference": {key: (point, lo, hi)}} of router minus baseline
    (``metrics.bootstrap_routing`` with ``minus``). The confidence baselines are left out where
    ``baselines.confidence_left_out`` names them. Cached in ``out/baselines.json`` for ``settings`` and
    the router's decision (the combined policy starts from it)."""
    from . import baselines

    key = {**settings, "decision": router.manifest.to_dict()["decision"], "report": 2}
    cache = out / "baselines.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("settings") == key:
            return cached["baselines"], cached["paired"]
    ctx = baselines.Context(
        cfg.tiers, cloud, questions=baselines.questions_by_sample(cfg), val=splits["router-val"],
        cost_spec=router.cost,
        router_config=cfg.router, epochs=min(cfg.router.epochs, 20),
        router=lambda s: np.eye(len(cfg.models))[router.decide(router.predict(s.x))])
    test = splits["router-test"]
    fitted: dict = {}
    result = baselines.compare(splits["router-train"], test, ctx, models=cfg.model_names, fitted=fitted)
    assigns = {k: [fitted[k].assign(test, float(p["threshold"])) for p in result[k]["points"]]
               for k in result if k not in report.PRE_DECISION_EXCLUDED}
    for k, a in assigns.items():
        result[k]["interval"] = metrics.bootstrap_routing(a, test, cfg.tiers, cloud, B=bootstrap)
    paired = {}
    if assigns:
        best = report.best_pre_decision({k: result[k]["summary"] for k in assigns})
        paired = {"baseline": best, "difference": metrics.bootstrap_routing(router_assigns, test, cfg.tiers, cloud,
                                                                            B=bootstrap, minus=assigns[best])}
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"settings": key, "baselines": result, "paired": paired}, default=float))
    return result, paired


def failed_outcomes(table: pd.DataFrame) -> dict:
    """Per model with any, its outcome rows that failed (a non-empty ``error``: the backend failed, or the
    replay file lacks the sample): {model: {"count", "of" (the model's rows), "example" (an error)}}."""
    out = {}
    for m, rows in table.groupby("model", sort=False):
        bad = rows["error"][rows["error"] != ""]
        if len(bad):
            out[m] = {"count": len(bad), "of": len(rows), "example": bad.iloc[0]}
    return out


def evaluate(cfg: Config, table: pd.DataFrame, feats: pd.DataFrame, splits: dict[str, SplitArrays],
             cloud: int, info: pd.DataFrame, out: Path, bootstrap: int = 1000, settings: dict | None = None) -> str:
    """Write the report folder ``out``; returns the Markdown of the main policy table.
    ``info`` has sample_id, degradation, severity (analysis only) and, from current pipelines, ``group``
    (each sample's ``cfg.dataset.split_by`` value) and ``empty_question`` (bool); without them the split
    check and the empty-question count are skipped. With ``settings`` (what the router was trained
    from) the baselines are fitted and compared too (``compare_baselines``). The report opens with
    ``report.verdict``; report.json holds it as ``verdict`` (``report.verdict_data`` plus ``text``)."""
    from . import baselines

    test, val = splits["router-test"], splits["router-val"]
    scorer = cfg.dataset.scorer
    router = Router.load(cfg.path("export"))
    probs = router.predict(test.x)
    assign = np.eye(len(cfg.models))[router.decide(probs)]
    rows = {name: metrics.policy_metrics(a, test, cfg.tiers, cloud, cfg.model_names)
            for name, a in report.baseline_assignments(test, cfg.model_names, cfg.tiers, assign).items()}
    routing, curves, sweep, sweep_assigns, paired, left_out = {}, {}, [], [], {}, {}
    intervals = {"router": metrics.bootstrap_metrics(assign, test, cfg.tiers, cloud, B=bootstrap)}
    if "edge" in cfg.tiers:  # routing curves need an edge model to route to
        sweep, sweep_assigns = router_sweep(router, splits["router-train"], test, cfg.tiers, cloud, cfg.model_names)
        routing = {"router": metrics.routing_summary(sweep, metrics.references(test, cfg.tiers, cloud))}
        curves = {"router (sweep)": sweep}
        intervals["router_routing"] = metrics.bootstrap_routing(sweep_assigns, test, cfg.tiers, cloud, B=bootstrap)
    if routing and settings is not None:
        left_out = baselines.confidence_left_out(cfg.tiers, splits["router-train"], test)
        compared, paired = compare_baselines(cfg, splits, cloud, router, out, settings, sweep_assigns, bootstrap)
        routing.update({name: r["summary"] for name, r in compared.items()})
        intervals.update({f"{name}_routing": r["interval"] for name, r in compared.items() if "interval" in r})
        curves.update({name: compared[name]["points"] for name in PLOTTED_BASELINES if name in compared})
    calib = metrics.calibration_table(router.predict(val.x), val.score, probs, test.score, cfg.model_names)
    temps = np.array([calib[m]["temperature"] for m in cfg.model_names])
    out.mkdir(parents=True, exist_ok=True)
    metrics.reliability_plot(out, probs, test.score, cfg.model_names, scaled=metrics.apply_temperature(probs, temps))
    bw = bandwidth_table(cfg, table, feats, router, cloud)
    check = guarantee_check(cfg, router, splits, cloud) if "edge" in cfg.tiers else None
    report.pareto_plot(out / "pareto.png", curves, rows,
                       f"{cfg.name}: router-test, profile {cfg.profile.name}", report.accuracy_label(scorer, False))
    report.bandwidth_plot(out / "bandwidth.png", bw, cfg.profile.name)
    by_deg = report.accuracy_by_degradation(table[table["split"] == "router-test"], info, cfg.model_names,
                                            cfg.dataset.severity) if info["degradation"].nunique() > 1 else None
    manifest = router.manifest.to_dict()  # the JSON layout the report's helpers read
    decision = manifest["decision"]
    marks, cost_note = report.configured_costs(rows, manifest["models"], cloud)
    main = report.markdown(report.to_frame(rows, scorer), marks)
    split = report.split_check(table, info)
    refs = metrics.references(test, cfg.tiers, cloud) if routing else None
    verdict = {**report.verdict_data(routing, intervals, paired, decision, refs),
               "text": report.verdict(routing, intervals, paired, decision, refs, cfg.model_names)}
    left_line = report.left_out_line(left_out, cfg.model_names)
    sections = [f"# Router report: {cfg.name} (router-test, {len(test)} questions)", "", verdict["text"], "",
                f"Router: {report.router_origin(router.manifest)}. Thresholds and temperatures were chosen on "
                "router-val; every figure below is on router-test.", "", report.scorer_line(scorer), "",
                *[x for line in report.split_lines(cfg.dataset.split_by, split, info) for x in (line, "")],
                main, "", *([cost_note, ""] if cost_note else []), report.interval_lines(intervals["router"]), ""]
    if routing:
        sections += ["## Routing curves (sweeps from all-edge to all-cloud)", "", report.routing_markdown(routing, intervals), "",
                     report.ORACLE_NOTE, "", *([left_line, ""] if left_line else []),
                     report.comparison_lines(routing, intervals.get("router_routing"), paired), "",
                     "![pareto](pareto.png)", ""]
    if check is not None:
        sections += ["## Accuracy-loss guarantee (Learn then Test)", "",
                     report.guarantee_markdown(check, router.manifest.tuning.get("guarantee"), scorer), ""]
    sections += ["## Calibration of predicted P(correct)", "", report.calibration_markdown(calib), "",
                 "## Uplink bandwidth (the router re-decides at run time, no retraining)", "",
                 report.bandwidth_markdown(bw), "", "![bandwidth](bandwidth.png)", ""]
    ood = ood_summary(router, test.x)
    if ood is not None:
        sections += ["## Out-of-distribution score (share of features outside router-train's range)", "",
                     report.ood_markdown(ood), ""]
    skipped = len(data.bad_rows(cfg))
    if skipped:
        sections += [f"{skipped} rows of the dataset were skipped as unusable (`dataset.on_bad_row: skip`); "
                     f"they and their reasons are in {cfg.path('data') / data.BAD_ROWS}.", ""]
    failed = failed_outcomes(table)
    if failed:
        sections += ["Outcomes recorded as failures (score 0, at an attempt's compute time), all splits: "
                     + "; ".join(f"{m}: {f['count']} of {f['of']} (e.g. {f['example']!r})" for m, f in failed.items())
                     + ".", ""]
    if by_deg is not None:
        sections += ["## Reference-model accuracy by degradation", "", by_deg.round(3).to_markdown(index=False), ""]
    configured = [{"model": m.name, "compute_source": m.compute_source} for m in router.cost.models
                  if m.compute_source != "measured"]
    (out / "report.md").write_text("\n".join(sections))
    (out / "report.json").write_text(json.dumps(
        {"verdict": verdict, "scorer": scorer, "policies": rows, "sweep": sweep, "routing": routing,
         "intervals": intervals, "paired": paired, "left_out": {k: cfg.model_names[v] for k, v in left_out.items()},
         "configured_costs": configured, "splits": {"split_by": cfg.dataset.split_by, **(split or {})},
         "empty_questions": int(info["empty_question"].sum()) if "empty_question" in info.columns else None,
         "ood": ood, "skipped_rows": skipped, "failed_outcomes": failed,
         "calibration": calib, "bandwidth": bw, "guarantee_check": check, "decision": decision,
         "profile": cfg.profile.to_dict()}, indent=2, default=float))
    return main
