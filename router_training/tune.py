"""Choose decision thresholds and lambdas on router-val with Optuna (never on router-test).

Two targets (config ``tune``):

- an accuracy floor: stay at or above ``tc.accuracy_floor(all-cloud accuracy)`` on router-val
  (``min_cloud_accuracy_ratio`` of all-cloud accuracy, or ``max_accuracy_drop`` points below it) and
  minimise mean latency (or energy);
- a latency budget (``max_latency_s``): the best router-val accuracy whose mean latency is within the
  budget (ties: the lower latency). The budget makes the accuracy-latency trade-off explicit, so the
  thresholds depend on the network: ``tune_grid`` tunes them again at each uplink of a grid (router-val's
  latencies recomputed there, ``network_splits``) and the runtime uses the entry for its current uplink
  (``runtime.Router.decision_at``).

The target is an Optuna constraint (``Trial.set_constraint``, which TPE samples around; feasible trials
have a value <= 0).

Each edge model's threshold is searched over the predicted P(correct) actually observed on router-val
(``threshold_range``): a router trained on real VLM grades often predicts all of an edge model's
probabilities in a narrow band (say all below 0.3), where a fixed range would hold no useful threshold.

When no trial meets the floor, every query goes to the most accurate cloud model on router-val
(``DecisionRule.single_model``: that model's threshold 0, every other one ``NEVER_THRESHOLD``), so
the runtime needs no special case; when no trial meets a budget, the fastest trial is deployed. The
decision dict then says ``target_met`` False and what was ``deployed``.

The decision rule's expected costs are the manifest's (mean compute time and payload per model) unless
``payload_bytes`` gives each router-val query's own payload, as the gateway decides with each request's
(``serve``); the realised costs scored are always each query's own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import optuna

from . import policies
from .config import GuaranteeConfig, TuneConfig
from .core.decision import CostSpec, DecisionRule
from .core.profile import DeploymentProfile
from .core.splits import SplitArrays

log = logging.getLogger(__name__)


def decision_params(trial_params: dict, tiers: list[str]) -> dict:
    """Optuna parameters -> decision dict (``DecisionRule.to_dict``: thresholds per model, 0 for cloud
    models; lambdas)."""
    return DecisionRule(tuple(trial_params.get(f"threshold_{k}", 0.0) if t == "edge" else 0.0
                              for k, t in enumerate(tiers)),
                        trial_params["lambda_latency"], trial_params["lambda_energy"]).to_dict()


def evaluate(decision: dict, probs: np.ndarray, split: SplitArrays, cost: CostSpec, tiers: list[str], cloud: int,
             profile: DeploymentProfile | None = None, payload_bytes: np.ndarray | None = None) -> dict:
    """Metrics (``policies.metrics``) of the router with ``decision`` on a split whose predictions are
    ``probs`` (n, K) and whose realised costs are the split's; the decision rule's expected costs are
    ``cost.costs`` under ``profile`` (default the spec's) with ``payload_bytes`` (n,) per query when
    given, else the spec's mean payloads."""
    lat, en = cost.costs(profile, payload_bytes)
    assign = policies.make("router", probs=lambda s: probs, expected_latency_s=lat, expected_energy_j=en,
                           ref_latency_s=cost.ref_latency_s, ref_energy_j=cost.ref_energy_j,
                           **DecisionRule.from_dict(decision).to_dict())(split)
    return policies.metrics(assign, split, tiers, cloud)


def network_splits(table, feats, profile: DeploymentProfile, models: list[str], cloud: int, uplinks,
                   split: str = "router-val") -> tuple[dict, np.ndarray]:
    """({uplink: SplitArrays of ``split`` with latency and energy recomputed under ``profile`` at that
    uplink (Mbit/s)}, payload bytes (n,) per query of the reference cloud model ``cloud``) from an
    outcome table (``outcomes`` schema) and the feature table."""
    from . import outcomes
    from .fit import split_arrays

    out = {float(u): split_arrays(outcomes.with_costs(table, profile.with_network(uplink_mbps=float(u))), feats,
                                  models, split) for u in uplinks}
    first = next(iter(out.values()))
    part = table[table["split"] == split]
    payload = outcomes.matrix(part, models, "payload_bytes", first.sample_ids)[:, cloud]
    return out, payload


def threshold_range(p: np.ndarray) -> tuple[float, float]:
    """Search range of one edge model's threshold from its router-val probabilities ``p`` (n,):
    [min(p), max(p) + margin], so that "every query eligible" (threshold min(p)) and "none eligible"
    (above max(p)) are both reachable; the margin is 1% of the observed spread. A constant column c gets
    [c - 1e-6, c + 1e-6]: half the range makes the model eligible for every query, half for none."""
    lo, hi = float(np.min(p)), float(np.max(p))
    if hi - lo < 1e-9:
        return lo - 1e-6, hi + 1e-6
    return lo, hi + 0.01 * (hi - lo)


def best_cloud_model(val: SplitArrays, tiers: list[str], cloud: int) -> int:
    """Index of the most accurate cloud model on router-val (ties: the all-cloud reference ``cloud``,
    then the first)."""
    clouds = [k for k, t in enumerate(tiers) if t == "cloud"]
    return max(clouds, key=lambda k: (float(val.score[:, k].mean()), k == cloud, -k))


def tune(probs: np.ndarray, val: SplitArrays, cost: CostSpec, tiers: list[str], cloud: int, tc: TuneConfig,
         storage: Path | None, study_name: str, start: dict | None = None, *, models: list[str],
         profile: DeploymentProfile | None = None, payload_bytes: np.ndarray | None = None) -> dict:
    """Run (or resume) the study in SQLite file ``storage`` (None: in memory, not resumable, and about 40x
    faster per trial on a disk whose commits are slow) until it holds ``tc.n_trials`` trials.

    ``probs`` float (n_val, K) predicted on router-val; ``models`` the K model names (keyword only);
    ``start`` optional parameters (lambdas, thresholds ``threshold_<k>``) to enqueue first. Edge model
    k's threshold ranges over ``threshold_range(probs[:, k])``. The floor is ``tc.accuracy_floor`` of
    the reference ``cloud``'s router-val accuracy (a warning when it allows less than one question of
    router-val); with ``tc.max_latency_s`` the target is the budget instead (module docstring).
    ``profile`` (default the spec's) and ``payload_bytes`` (n_val,) set the decision rule's expected
    costs (``evaluate``); ``val``'s realised costs must be under the same profile.

    Returns the best feasible decision dict (thresholds, lambdas) plus ``trial`` (number),
    ``params`` (the trial's Optuna parameters), ``val_metrics``, ``target_met`` True and ``deployed``
    "router". When no trial meets the target: under a floor, every query to the most accurate cloud
    model on router-val (``DecisionRule.single_model``), ``trial`` None; under a budget, the fastest trial;
    ``target_met`` False, ``deployed`` a sentence naming what was deployed and the target, and a warning.
    """
    n_val = len(val.score)
    cloud_acc = float(val.score[:, cloud].mean())
    budget = tc.max_latency_s
    floor = tc.accuracy_floor(cloud_acc)
    if budget is None and cloud_acc - floor < 1.0 / n_val - 1e-12:
        log.warning("the target (%s) allows losing %.4f of all-cloud's router-val accuracy %.4f, less than one "
                    "question of the %d on router-val (1/%d = %.4f): on this many questions it cannot be told "
                    "apart from all-cloud; ask for a larger drop or collect more router-val questions",
                    tc.target_text(), cloud_acc - floor, cloud_acc, n_val, n_val, 1.0 / n_val)
    key = "mean_latency_s" if tc.minimize == "latency" or budget is not None else "mean_energy_j"
    ranges = {k: threshold_range(probs[:, k]) for k, t in enumerate(tiers) if t == "edge"}

    def objective(trial: optuna.Trial) -> float:
        params = {f"threshold_{k}": trial.suggest_float(f"threshold_{k}", lo, hi) for k, (lo, hi) in ranges.items()}
        params["lambda_latency"] = trial.suggest_float("lambda_latency", 0.0, 2.0)
        params["lambda_energy"] = trial.suggest_float("lambda_energy", 0.0, 2.0)
        m = evaluate(decision_params(params, tiers), probs, val, cost, tiers, cloud, profile, payload_bytes)
        trial.set_user_attr("accuracy", m["accuracy"])
        trial.set_user_attr("edge_share", m["edge_share"])
        trial.set_user_attr("mean_latency_s", m["mean_latency_s"])
        # slack for float rounding: an accuracy (latency) exactly at the floor (budget) meets it
        if budget is not None:
            trial.set_constraint("latency_budget", m["mean_latency_s"] - budget - 1e-12)
            return -m["accuracy"]
        trial.set_constraint("accuracy_floor", floor - m["accuracy"] - 1e-12)
        return m[key]

    if storage is not None:
        storage.parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=tc.seed)  # uses the trials' constraints (Optuna >= 5)
    study = optuna.create_study(study_name=study_name, storage=f"sqlite:///{storage}" if storage else None,
                                sampler=sampler, direction="minimize", load_if_exists=True)
    if start and not study.trials:
        first = {f"threshold_{k}": float(np.clip(0.5, lo, hi)) for k, (lo, hi) in ranges.items()}
        for name, v in start.items():
            lo, hi = ranges.get(int(name.split("_")[1]), (v, v)) if name.startswith("threshold_") else (0.0, 2.0)
            first[name] = float(np.clip(v, lo, hi))
        study.enqueue_trial(first)
    remaining = tc.n_trials - len(study.trials)
    if remaining > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, n_trials=remaining, show_progress_bar=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    constraint = "latency_budget" if budget is not None else "accuracy_floor"
    feasible = [t for t in done if t.constraints[constraint] <= 0]
    if not feasible and budget is not None and done:
        best = min(done, key=lambda t: t.user_attrs["mean_latency_s"])
        decision = decision_params(best.params, tiers)
        val_m = evaluate(decision, probs, val, cost, tiers, cloud, profile, payload_bytes)
        deployed = (f"the fastest trial found (mean latency {1e3 * val_m['mean_latency_s']:.1f} ms on router-val; "
                    f"no trial met {tc.target_text()})")
        log.warning("no trial met %s on router-val (%d trials): deploying %s", tc.target_text(), len(done), deployed)
        return {**decision, "trial": best.number, "params": best.params, "val_metrics": val_m, "target_met": False,
                "deployed": deployed}
    if not feasible:
        best = best_cloud_model(val, tiers, cloud)
        deployed = (f"every query to {models[best]} (the most accurate cloud model on router-val; no trial met "
                    f"{tc.target_text()})")
        log.warning("no trial met %s on router-val (all-cloud accuracy %.4f, floor %.4f, %d trials): deploying %s",
                    tc.target_text(), cloud_acc, floor, len(study.trials), deployed)
        decision = DecisionRule.single_model(best, len(tiers)).to_dict()
        return {**decision, "trial": None, "params": None,
                "val_metrics": evaluate(decision, probs, val, cost, tiers, cloud, profile, payload_bytes),
                "target_met": False, "deployed": deployed}
    if budget is not None:  # the best accuracy, then the lower latency
        best = min(feasible, key=lambda t: (round(t.value, 12), t.user_attrs.get("mean_latency_s", 0.0)))
    else:
        best = min(feasible, key=lambda t: t.value)
    decision = decision_params(best.params, tiers)
    return {**decision, "trial": best.number, "params": best.params,
            "val_metrics": evaluate(decision, probs, val, cost, tiers, cloud, profile, payload_bytes),
            "target_met": True, "deployed": "router"}


def tune_grid(probs: np.ndarray, val_at: dict, cost: CostSpec, tiers: list[str], cloud: int, tc: TuneConfig,
              storage: Path | None, study_name: str, start: dict | None = None, *, models: list[str],
              payload_bytes: np.ndarray | None = None) -> list[dict]:
    """Thresholds tuned on router-val at each uplink of ``val_at`` ({uplink Mbit/s: router-val SplitArrays
    with its costs at that uplink}, e.g. ``network_splits``): one ``tune`` study per uplink (named
    ``<study_name>-uplink-<u>``, in ``storage``; None: in memory, the pipeline caches the result in
    decision.json), the decision rule costed under the spec's profile at
    that uplink, each study starting from the previous uplink's best parameters (and the first from
    ``start``). Returns the manifest's ``network_grid``: ascending by uplink, one dict each with
    ``uplink_mbps``, ``thresholds``, ``lambda_latency``, ``lambda_energy``, ``target_met``, ``trial`` and
    ``val_metrics`` (accuracy, edge_share, mean_latency_s, mean_energy_j)."""
    base = cost.profile
    grid, params = [], dict(start or {})
    for u in sorted(val_at):
        d = tune(probs, val_at[u], cost, tiers, cloud, tc, storage, f"{study_name}-uplink-{u:g}", params or None,
                 models=models, profile=base.with_network(uplink_mbps=u), payload_bytes=payload_bytes)
        params = dict(d["params"] or {})
        m = d["val_metrics"]
        grid.append({"uplink_mbps": u, "thresholds": d["thresholds"], "lambda_latency": d["lambda_latency"],
                     "lambda_energy": d["lambda_energy"], "target_met": d["target_met"], "trial": d["trial"],
                     "val_metrics": {k: m[k] for k in ("accuracy", "edge_share", "mean_latency_s", "mean_energy_j")}})
        log.info("uplink %g Mbit/s: router-val accuracy %.4f, edge share %.3f, mean latency %.1f ms%s", u,
                 m["accuracy"], m["edge_share"], 1e3 * m["mean_latency_s"], "" if d["target_met"] else " (target missed)")
    return grid


def calibrated(probs: np.ndarray, val: SplitArrays, cost: CostSpec, tiers: list[str], cloud: int, gc: GuaranteeConfig,
               lambda_latency: float, lambda_energy: float, *, models: list[str]) -> dict:
    """Guarantee mode: the edge threshold by Learn then Test on router-val (``guarantee.calibrate_router``,
    grid ``guarantee.DEFAULT_GRID``), the lambdas given (the router section's: chosen without router-val,
    as the guarantee requires). Returns the decision dict plus ``trial`` None, ``val_metrics``,
    ``guarantee`` (eps, delta, transform, certified, the threshold's router-val loss and p-value, n),
    ``target_met`` (whether a threshold was certified) and ``deployed`` ("router", or a sentence naming
    the model and the guarantee). When nothing is certified every query goes to the most accurate cloud
    model on router-val (``DecisionRule.single_model``): when that is the all-cloud reference ``cloud`` (as
    usual) its loss against all-cloud is 0 on every query, which meets any eps; another cloud model is
    not covered by the guarantee (its loss against the reference is only measured)."""
    from . import guarantee

    lat, en = cost.costs()
    res = guarantee.calibrate_router(probs, val.score, tiers, cloud, gc.eps, gc.delta, lat, en, lambda_latency,
                                     lambda_energy, cost.ref_latency_s, cost.ref_energy_j,
                                     transform=gc.transform)
    info = {"eps": gc.eps, "delta": gc.delta, "transform": gc.transform, "certified": res.certified, "n": res.n,
            "val_loss": float(res.val_loss[res.index]) if res.certified else None,
            "p_value": float(res.p_values[res.index]) if res.certified else None}
    if res.certified:
        decision = DecisionRule.edge_threshold(res.threshold, tiers, lambda_latency, lambda_energy).to_dict()
        deployed = "router"
    else:
        best = best_cloud_model(val, tiers, cloud)
        decision = DecisionRule.single_model(best, len(tiers), lambda_latency, lambda_energy).to_dict()
        deployed = (f"every query to {models[best]} (the most accurate cloud model on router-val; no edge threshold "
                    f"certified by Learn then Test at eps {gc.eps:g}, delta {gc.delta:g}, {gc.transform} losses)")
        log.warning("no edge threshold certified at eps %.3f, delta %.2f on %d router-val samples: deploying %s",
                    gc.eps, gc.delta, res.n, deployed)
    return {**decision, "trial": None, "val_metrics": evaluate(decision, probs, val, cost, tiers, cloud),
            "guarantee": info, "target_met": res.certified, "deployed": deployed}


def grid_for_run(probs: np.ndarray, table, feats, cost: CostSpec, cfg, cloud: int, study_name: str,
                 start: dict | None = None) -> list[dict]:
    """The pipeline's call: ``tune_grid`` at ``cfg.tune.grid()``'s uplinks on router-val (``network_splits``
    of the outcome ``table`` and feature table ``feats`` under ``cfg.profile``), studies in memory;
    ``probs`` router-val's predictions, ``start`` the base decision's parameters. [] when the config
    asks for no grid or tunes with a guarantee."""
    uplinks = cfg.tune.grid()
    if not uplinks or cfg.tune.guarantee:
        return []
    val_at, _ = network_splits(table, feats, cfg.profile, cfg.model_names, cloud, uplinks)
    return tune_grid(probs, val_at, cost, cfg.tiers, cloud, cfg.tune, None, study_name, start, models=cfg.model_names)
