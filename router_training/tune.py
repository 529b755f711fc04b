"""Choose decision thresholds and lambdas on router-val with Optuna (never on router-test).

Target (config ``tune``): stay at or above ``tc.accuracy_floor(all-cloud accuracy)`` on router-val
(``min_cloud_accuracy_ratio`` of all-cloud accuracy, or ``max_accuracy_drop`` points below it) and
minimise mean latency (or energy). The accuracy floor is an Optuna constraint
(``Trial.set_constraint``, which TPE samples around; feasible trials have a value <= 0).

Each edge model's threshold is searched over the predicted P(correct) actually observed on router-val
(``threshold_range``): a router trained on real VLM grades often predicts all of an edge model's
probabilities in a narrow band (say all below 0.3), where a fixed range would hold no useful threshold.

When no trial meets the target, every query goes to the most accurate cloud model on router-val
(``single_model_decision``: that model's threshold 0, every other one ``runtime.NEVER_THRESHOLD``), so
the runtime needs no special case; the decision dict then says ``target_met`` False and what was
``deployed``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import optuna

from . import policies
from .config import GuaranteeConfig, TuneConfig
from .fit import SplitArrays
from .profile import DeploymentProfile
from .runtime import NEVER_THRESHOLD, expected_costs

log = logging.getLogger(__name__)


def decision_params(trial_params: dict, tiers: list[str]) -> dict:
    """Optuna parameters -> decision dict (thresholds per model, 0 for cloud models; lambdas)."""
    return {"thresholds": [trial_params.get(f"threshold_{k}", 0.0) if t == "edge" else 0.0
                           for k, t in enumerate(tiers)],
            "lambda_latency": trial_params["lambda_latency"], "lambda_energy": trial_params["lambda_energy"]}


def evaluate(decision: dict, probs: np.ndarray, split: SplitArrays, spec: dict, tiers: list[str], cloud: int) -> dict:
    """Metrics (``policies.metrics``) of the router with ``decision`` on a split whose predictions are
    ``probs`` (n, K)."""
    lat, en = expected_costs(spec, DeploymentProfile.from_dict(spec["profile"]))
    assign = policies.make("router", probs=lambda s: probs, expected_latency_s=lat, expected_energy_j=en,
                           ref_latency_s=spec["ref_latency_s"], ref_energy_j=spec["ref_energy_j"],
                           **decision)(split)
    return policies.metrics(assign, split, tiers, cloud)


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


def single_model_decision(model: int, n_models: int, lambda_latency: float = 0.0,
                          lambda_energy: float = 0.0) -> dict:
    """A decision that sends every query to model index ``model`` through thresholds alone: 0 for it,
    ``NEVER_THRESHOLD`` (never reached by a probability) for every other model."""
    return {"thresholds": [0.0 if k == model else NEVER_THRESHOLD for k in range(n_models)],
            "lambda_latency": lambda_latency, "lambda_energy": lambda_energy}


def tune(probs: np.ndarray, val: SplitArrays, spec: dict, tiers: list[str], cloud: int, tc: TuneConfig,
         storage: Path, study_name: str, start: dict | None = None, *, models: list[str]) -> dict:
    """Run (or resume) the study in SQLite file ``storage`` until it holds ``tc.n_trials`` trials.

    ``probs`` float (n_val, K) predicted on router-val; ``models`` the K model names (keyword only);
    ``start`` optional lambdas to enqueue first. Edge model k's threshold ranges over
    ``threshold_range(probs[:, k])``; the floor is ``tc.accuracy_floor`` of the reference ``cloud``'s
    router-val accuracy (a warning when it allows less than one question of router-val).

    Returns the best feasible decision dict (thresholds, lambdas) plus ``trial`` (number),
    ``val_metrics``, ``target_met`` True and ``deployed`` "router". When no trial meets the floor:
    every query to the most accurate cloud model on router-val (``single_model_decision``), ``trial``
    None, ``target_met`` False, ``deployed`` a sentence naming that model and the target, and a warning.
    """
    n_val = len(val.score)
    cloud_acc = float(val.score[:, cloud].mean())
    floor = tc.accuracy_floor(cloud_acc)
    if cloud_acc - floor < 1.0 / n_val - 1e-12:
        log.warning("the target (%s) allows losing %.4f of all-cloud's router-val accuracy %.4f, less than one "
                    "question of the %d on router-val (1/%d = %.4f): on this many questions it cannot be told "
                    "apart from all-cloud; ask for a larger drop or collect more router-val questions",
                    tc.target_text(), cloud_acc - floor, cloud_acc, n_val, n_val, 1.0 / n_val)
    key = "mean_latency_s" if tc.minimize == "latency" else "mean_energy_j"
    ranges = {k: threshold_range(probs[:, k]) for k, t in enumerate(tiers) if t == "edge"}

    def objective(trial: optuna.Trial) -> float:
        params = {f"threshold_{k}": trial.suggest_float(f"threshold_{k}", lo, hi) for k, (lo, hi) in ranges.items()}
        params["lambda_latency"] = trial.suggest_float("lambda_latency", 0.0, 2.0)
        params["lambda_energy"] = trial.suggest_float("lambda_energy", 0.0, 2.0)
        m = evaluate(decision_params(params, tiers), probs, val, spec, tiers, cloud)
        # slack for float rounding: an accuracy exactly at the floor meets it
        trial.set_constraint("accuracy_floor", floor - m["accuracy"] - 1e-12)
        trial.set_user_attr("accuracy", m["accuracy"])
        trial.set_user_attr("edge_share", m["edge_share"])
        return m[key]

    storage.parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=tc.seed)  # uses the trials' constraints (Optuna >= 5)
    study = optuna.create_study(study_name=study_name, storage=f"sqlite:///{storage}", sampler=sampler,
                                direction="minimize", load_if_exists=True)
    if start and not study.trials:
        study.enqueue_trial({**{f"threshold_{k}": float(np.clip(0.5, lo, hi)) for k, (lo, hi) in ranges.items()},
                             **start})
    remaining = tc.n_trials - len(study.trials)
    if remaining > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, n_trials=remaining, show_progress_bar=True)
    feasible = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.constraints["accuracy_floor"] <= 0]
    if not feasible:
        best = best_cloud_model(val, tiers, cloud)
        deployed = (f"every query to {models[best]} (the most accurate cloud model on router-val; no trial met "
                    f"{tc.target_text()})")
        log.warning("no trial met %s on router-val (all-cloud accuracy %.4f, floor %.4f, %d trials): deploying %s",
                    tc.target_text(), cloud_acc, floor, len(study.trials), deployed)
        decision = single_model_decision(best, len(tiers))
        return {**decision, "trial": None, "val_metrics": evaluate(decision, probs, val, spec, tiers, cloud),
                "target_met": False, "deployed": deployed}
    best = min(feasible, key=lambda t: t.value)
    decision = decision_params(best.params, tiers)
    return {**decision, "trial": best.number, "val_metrics": evaluate(decision, probs, val, spec, tiers, cloud),
            "target_met": True, "deployed": "router"}


def calibrated(probs: np.ndarray, val: SplitArrays, spec: dict, tiers: list[str], cloud: int, gc: GuaranteeConfig,
               lambda_latency: float, lambda_energy: float, *, models: list[str]) -> dict:
    """Guarantee mode: the edge threshold by Learn then Test on router-val (``guarantee.calibrate_router``,
    grid ``guarantee.DEFAULT_GRID``), the lambdas given (the router section's: chosen without router-val,
    as the guarantee requires). Returns the decision dict plus ``trial`` None, ``val_metrics``,
    ``guarantee`` (eps, delta, transform, certified, the threshold's router-val loss and p-value, n),
    ``target_met`` (whether a threshold was certified) and ``deployed`` ("router", or a sentence naming
    the model and the guarantee). When nothing is certified every query goes to the most accurate cloud
    model on router-val (``single_model_decision``): when that is the all-cloud reference ``cloud`` (as
    usual) its loss against all-cloud is 0 on every query, which meets any eps; another cloud model is
    not covered by the guarantee (its loss against the reference is only measured)."""
    from . import guarantee

    lat, en = expected_costs(spec, DeploymentProfile.from_dict(spec["profile"]))
    res = guarantee.calibrate_router(probs, val.score, tiers, cloud, gc.eps, gc.delta, lat, en, lambda_latency,
                                     lambda_energy, spec["ref_latency_s"], spec["ref_energy_j"],
                                     transform=gc.transform)
    info = {"eps": gc.eps, "delta": gc.delta, "transform": gc.transform, "certified": res.certified, "n": res.n,
            "val_loss": float(res.val_loss[res.index]) if res.certified else None,
            "p_value": float(res.p_values[res.index]) if res.certified else None}
    if res.certified:
        decision = {"thresholds": [res.threshold if tier == "edge" else 0.0 for tier in tiers],
                    "lambda_latency": lambda_latency, "lambda_energy": lambda_energy}
        deployed = "router"
    else:
        best = best_cloud_model(val, tiers, cloud)
        decision = single_model_decision(best, len(tiers), lambda_latency, lambda_energy)
        deployed = (f"every query to {models[best]} (the most accurate cloud model on router-val; no edge threshold "
                    f"certified by Learn then Test at eps {gc.eps:g}, delta {gc.delta:g}, {gc.transform} losses)")
        log.warning("no edge threshold certified at eps %.3f, delta %.2f on %d router-val samples: deploying %s",
                    gc.eps, gc.delta, res.n, deployed)
    return {**decision, "trial": None, "val_metrics": evaluate(decision, probs, val, spec, tiers, cloud),
            "guarantee": info, "target_met": res.certified, "deployed": deployed}
