"""Choose decision thresholds and lambdas on router-val with Optuna (never on router-test).

Target (config ``tune``): keep at least ``min_cloud_accuracy_ratio`` of all-cloud VQA accuracy on
router-val and minimise mean latency (or energy). The accuracy floor is an Optuna constraint
(``Trial.set_constraint``, which TPE samples around; feasible trials have a value <= 0).
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
from .runtime import expected_costs

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


def tune(probs: np.ndarray, val: SplitArrays, spec: dict, tiers: list[str], cloud: int, tc: TuneConfig,
         storage: Path, study_name: str, start: dict | None = None) -> dict:
    """Run (or resume) the study in SQLite file ``storage`` until it holds ``tc.n_trials`` trials.

    ``probs`` float (n_val, K) predicted on router-val; ``start`` optional lambdas to enqueue first.
    Returns the best feasible decision dict plus ``trial`` (number), ``val_metrics``; when no trial
    meets the accuracy floor it falls back to all-cloud (thresholds above 1) and logs a warning.
    """
    cloud_acc = float(val.score[:, cloud].mean())
    floor = tc.min_cloud_accuracy_ratio * cloud_acc
    key = "mean_latency_s" if tc.minimize == "latency" else "mean_energy_j"

    def objective(trial: optuna.Trial) -> float:
        params = {f"threshold_{k}": trial.suggest_float(f"threshold_{k}", 0.3, 1.0)
                  for k, t in enumerate(tiers) if t == "edge"}
        params["lambda_latency"] = trial.suggest_float("lambda_latency", 0.0, 2.0)
        params["lambda_energy"] = trial.suggest_float("lambda_energy", 0.0, 2.0)
        m = evaluate(decision_params(params, tiers), probs, val, spec, tiers, cloud)
        trial.set_constraint("accuracy_floor", floor - m["accuracy"])
        trial.set_user_attr("accuracy", m["accuracy"])
        trial.set_user_attr("edge_share", m["edge_share"])
        return m[key]

    storage.parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=tc.seed)  # uses the trials' constraints (Optuna >= 5)
    study = optuna.create_study(study_name=study_name, storage=f"sqlite:///{storage}", sampler=sampler,
                                direction="minimize", load_if_exists=True)
    if start and not study.trials:
        study.enqueue_trial({**{f"threshold_{k}": 0.5 for k, t in enumerate(tiers) if t == "edge"}, **start})
    remaining = tc.n_trials - len(study.trials)
    if remaining > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, n_trials=remaining, show_progress_bar=True)
    feasible = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.constraints["accuracy_floor"] <= 0]
    if not feasible:
        log.warning("no trial kept %.1f%% of all-cloud accuracy on router-val; routing everything to the cloud",
                    100 * tc.min_cloud_accuracy_ratio)
        decision = {"thresholds": [1.01 if t == "edge" else 0.0 for t in tiers], "lambda_latency": 0.0,
                    "lambda_energy": 0.0}
        return {**decision, "trial": None, "val_metrics": evaluate(decision, probs, val, spec, tiers, cloud)}
    best = min(feasible, key=lambda t: t.value)
    decision = decision_params(best.params, tiers)
    return {**decision, "trial": best.number, "val_metrics": evaluate(decision, probs, val, spec, tiers, cloud)}


def calibrated(probs: np.ndarray, val: SplitArrays, spec: dict, tiers: list[str], cloud: int, gc: GuaranteeConfig,
               lambda_latency: float, lambda_energy: float) -> dict:
    """Guarantee mode: the edge threshold by Learn then Test on router-val (``guarantee.calibrate_router``,
    grid 1.0, 0.98, ..., 0.0), the lambdas given (the router section's: chosen without router-val, as the
    guarantee requires). Returns the decision dict plus ``trial`` None, ``val_metrics`` and ``guarantee``
    (eps, delta, transform, certified, the threshold's router-val loss and p-value, n). When nothing is
    certified every query goes to the cloud (thresholds above 1), which meets any eps."""
    from . import guarantee

    lat, en = expected_costs(spec, DeploymentProfile.from_dict(spec["profile"]))
    res = guarantee.calibrate_router(probs, val.score, tiers, cloud, gc.eps, gc.delta, lat, en, lambda_latency,
                                     lambda_energy, spec["ref_latency_s"], spec["ref_energy_j"],
                                     transform=gc.transform)
    t = res.threshold if res.certified else 1.01
    decision = {"thresholds": [t if tier == "edge" else 0.0 for tier in tiers], "lambda_latency": lambda_latency,
                "lambda_energy": lambda_energy}
    info = {"eps": gc.eps, "delta": gc.delta, "transform": gc.transform, "certified": res.certified, "n": res.n,
            "val_loss": float(res.val_loss[res.index]) if res.certified else None,
            "p_value": float(res.p_values[res.index]) if res.certified else None}
    if not res.certified:
        log.warning("no edge threshold certified at eps %.3f, delta %.2f on %d router-val samples: routing "
                    "everything to the cloud", gc.eps, gc.delta, res.n)
    return {**decision, "trial": None, "val_metrics": evaluate(decision, probs, val, spec, tiers, cloud),
            "guarantee": info}
