"""Hyperparameter search at scale (``router-train search``): one router trained per Optuna trial.

Each trial draws router hyperparameters from the config's ``search.space`` (``config.SearchConfig``),
trains through ``fit.fit`` (the Lightning code of ``router-train fit``), chooses its decision threshold
on router-val and is scored on router-val only. router-test is read only by the export's parity check
and by the report, never by a trial.

Modes:

- ``single``: maximise the edge share subject to accuracy >= ``min_cloud_accuracy_ratio`` x all-cloud
  accuracy on router-val. The floor is an Optuna constraint (``Trial.set_constraint("accuracy_floor",
  floor - accuracy)``, feasible when <= 0); the threshold is the best of a sweep of ``threshold_grid``
  quantiles of the predicted edge probabilities on router-val (plus 0 and all-cloud). After every epoch the same objective of the current weights is
  logged as ``val_objective`` and reported to Optuna by ``optuna_integration``'s
  ``PyTorchLightningPruningCallback``, so the pruner can stop the trial (state PRUNED).
- ``multi``: (accuracy, mean latency, mean energy) on router-val, maximise / minimise / minimise, with
  NSGA-II; the threshold is a searched parameter; the study's best trials are the Pareto front.
  Optuna cannot prune multi-objective trials, so no pruner runs.

Workers: any number of processes, on machines sharing a SQLAlchemy URL, run one study. Each runs trials
until the study holds ``n_trials`` live trials (complete, pruned, running or waiting) and none is still
running. Two workers that find n_trials - 1 live trials at the same instant both start one, so a study
may end with up to (workers - 1) trials more than ``n_trials``: such a trial is run like any other (the
worker would otherwise only wait for the others to finish) and ends COMPLETE or PRUNED, never FAIL, so a
finished study holds no failed trial unless a worker died. With an RDB storage every running
trial records a heartbeat every ``heartbeat_interval`` s; a trial whose heartbeat is older than
``grace_period`` (its worker was killed) is marked FAIL by the next worker's check and retried once
with the same parameters (``RetryHeartbeatStaleTrialCallback``), so it is never lost silently.

Files: per trial ``checkpoints/<run>/search/<study>/trial-NNNN/`` (best.ckpt, spec.json, CSV logs under
logs/); per study ``runs/<run>/search/<study>/`` (trials.csv, front.md, pareto_accuracy_latency.png,
pareto_accuracy_energy.png, param_importances.png, optimization_history.png, summary.json, and the
trials' offline wandb runs under wandb/, grouped by study). The default storage is
``sqlite:///data/<run>/optuna.db``, the file that also holds ``router-train tune``'s studies.

Modules: ``space`` (distributions, a trial's RouterConfig, feature-group masks), ``objective`` (Scorer,
the Lightning callbacks ValMetrics and TrialTimer, Objective), ``study`` (storage, sampler, pruner,
study, worker loop), ``outputs`` (Pareto front, selection, trials.csv, front.md, plots); this one holds
the stage (``stage_search``, ``chosen_router``, ``val_objective_of``) and re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .. import fit, pipeline
from ..config import Config
from ..core.decision import CostSpec
from ..core.manifest import Manifest
from ..runtime import MANIFEST
from .objective import (METRIC_KEYS, OBJECTIVES, Objective, Scorer, TrialTimer,
                        ValMetrics)
from .outputs import feasible, pareto_front, select, write_outputs
from .space import ALL_GROUPS, distributions, feature_mask, ignore_masked_inputs, masked, router_config, suggest
from .study import (DIRECTIONS, FINISHED, LIVE, SearchError, _file_lock, default_storage, default_study_name,
                    make_pruner, make_sampler, open_storage, open_study, run_worker, safe_url)

__all__ = ["ALL_GROUPS", "DIRECTIONS", "FINISHED", "LIVE", "METRIC_KEYS", "OBJECTIVES",
           "Objective", "Scorer", "SearchError", "TrialTimer", "ValMetrics", "chosen_router", "default_storage",
           "default_study_name", "distributions", "feasible", "feature_mask", "ignore_masked_inputs",
           "make_pruner", "make_sampler", "masked", "open_storage", "open_study", "pareto_front",
           "router_config", "run_worker", "safe_url", "select", "stage_search", "suggest", "val_objective_of",
           "write_outputs"]

log = logging.getLogger(__name__)


def chosen_router(cfg: Config, objective: Objective, trial: optuna.trial.FrozenTrial, storage_url: str) -> dict:
    """What ``pipeline.stage_export(cfg, chosen=...)`` needs for ``trial``: its router (loaded from the
    trial's checkpoint, or retrained with its parameters and seed when the checkpoint was written on
    another machine), spec, decision and the manifest's search record (study, trial, parameters)."""
    d = Path(trial.user_attrs["checkpoint_dir"])
    mask = feature_mask(trial.params.get("feature_groups"))
    if (d / "best.ckpt").is_file() and (d / "spec.json").is_file():
        module = fit.RouterModule.load_from_checkpoint(d / "best.ckpt", weights_only=False).eval()
        ignore_masked_inputs(module, mask)
        spec = json.loads((d / "spec.json").read_text())
    else:
        log.info("trial %d's checkpoint %s is not here (trained by a worker on another machine?): retraining "
                 "it with its parameters", trial.number, d)
        module, dm, rc, _ = objective.train_router(trial.params, d, loggers=False)
        spec = {**objective.cost.to_dict(), "features": dm.stats,
                "router": dict(rc.__dict__), "feature_groups": trial.params.get("feature_groups", ALL_GROUPS)}
    record = {"study": objective.study_name, "trial": trial.number, "params": dict(trial.params),
              "mode": cfg.search.mode, "storage": safe_url(storage_url),
              "values": dict(zip(OBJECTIVES[cfg.search.mode], trial.values)),
              "val_metrics": {k: trial.user_attrs[k] for k in METRIC_KEYS},
              "feature_groups": spec.get("feature_groups"), "router": spec.get("router")}
    target = pipeline.settings(cfg, "search")["search"]
    return {"module": module, "spec": spec, "decision": trial.user_attrs["decision"],
            "extra": {"tuning": {"study": objective.study_name, "trial": trial.number, "target": target},
                      "search": record}}


def _child_worker(cfg: Config, storage: str, study_name: str, n_trials: int, worker_index: int | None,
                  threads: int, ready) -> None:
    """A worker process ``stage_search`` starts (``search.workers``): trials only, on ``threads`` threads;
    sets the event ``ready`` once it is about to run them."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    cfg.search = dataclasses.replace(cfg.search, workers=1)
    stage_search(cfg, storage=storage, study_name=study_name, n_trials=n_trials, export=False, outputs=False,
                 worker_index=worker_index, on_ready=ready.set)


def _start_workers(cfg: Config, url: str, name: str, n_trials: int, n_workers: int, worker_index: int | None,
                   threads: int | None) -> tuple[list, int | None]:
    """Start ``n_workers - 1`` worker processes (spawned: a fresh interpreter, no forked torch thread
    pools) and set this process's torch threads as theirs. Returns (processes, threads to restore)."""
    if n_workers <= 1:
        return [], None
    import multiprocessing

    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per = threads or max(1, cpus // n_workers)
    ctx = multiprocessing.get_context("spawn")
    children = []
    for i in range(1, n_workers):
        ready = ctx.Event()
        c = ctx.Process(target=_child_worker, daemon=True, name=f"search-worker-{i}",
                        args=(cfg, url, name, n_trials, None if worker_index is None else worker_index * n_workers + i,
                              per, ready))
        c.ready = ready
        c.start()
        children.append(c)
    restore = torch.get_num_threads()
    torch.set_num_threads(per)
    log.info("%d workers on this machine, %d torch thread(s) each", n_workers, per)
    return children, restore


def _await_workers(children: list, timeout_s: float = 120.0) -> None:
    """Wait until every started worker is about to run trials (or has exited, or ``timeout_s`` passed),
    so that the first trials are shared rather than all taken by this process while the others import."""
    deadline = time.monotonic() + timeout_s
    for c in children:
        while not c.ready.wait(0.1) and c.is_alive() and time.monotonic() < deadline:
            pass


def _join_workers(children: list, restore: int | None) -> None:
    for c in children:
        c.join()
        if c.exitcode:
            log.warning("search worker %s exited with code %s (its trials are in the study)", c.name, c.exitcode)
    if restore is not None:
        import torch

        torch.set_num_threads(restore)


def stage_search(cfg: Config, storage: str | None = None, study_name: str | None = None,
                 n_trials: int | None = None, pick: int | None = None, export: bool = True,
                 outputs: bool = True, worker_index: int | None = 0, threads: int | None = None,
                 on_ready=None) -> dict:
    """Run this process's share of the study, then (once the study is done) write the outputs and export
    the chosen trial's router to export/<run>/ (``pipeline.stage_export``; the manifest's ``search``
    records study, trial and parameters).

    ``storage``: SQLAlchemy URL (default ``sqlite:///data/<run>/optuna.db``); ``study_name`` (default
    ``default_study_name``); ``n_trials`` overrides ``search.n_trials``; ``pick`` exports that trial
    (number) instead of the best; ``worker_index``: the sampler's seed is ``search.seed + worker_index``
    (None: a random seed, so identical workers explore differently). With ``search.workers`` N > 1 this
    process starts N - 1 worker processes on the same study (worker indices ``worker_index * N + i``, or
    random) and every worker runs on ``threads`` torch threads (default: this process's CPUs // N); the
    outputs and the export are written here once all are done; this process starts its trials once they
    are ready to start theirs (``on_ready``, a callable, is called at that moment). Only router-train and
    router-val are loaded for the trials. Returns a summary dict."""
    sc = cfg.search
    if cfg.tune.guarantee:
        log.warning("tune.guarantee does not apply to `router-train search`: each trial's threshold comes from "
                    "the search target on router-val, so the exported router carries no Learn-then-Test "
                    "guarantee (run `router-train tune` and `export` for one)")
    n_trials = n_trials or sc.n_trials
    url = storage or default_storage(cfg)
    name = study_name or default_study_name(cfg)
    table = pipeline.stage_collect(cfg)
    feats = pipeline.stage_features(cfg)
    n_workers = min(sc.worker_count(), n_trials)
    # after collect and features (the workers find them cached), before this process's own set-up
    children, restore = _start_workers(cfg, url, name, n_trials, n_workers, worker_index, threads)
    train = fit.split_arrays(table, feats, cfg.model_names, "router-train")
    val = fit.split_arrays(table, feats, cfg.model_names, "router-val")
    cost = fit.cost_spec(train, table, cfg)
    cloud = pipeline.cloud_index(cfg, train)
    seed = sc.seed + worker_index if worker_index is not None else random.SystemRandom().randrange(2**31)
    study = open_study(open_storage(url, sc), name, sc, seed)
    objective = Objective(cfg, train, val, cost, cloud, name, n_trials)
    log.info("study %s in %s: %d trials wanted, %d live; sampler seed %d", name, safe_url(url), n_trials,
             len(study.get_trials(deepcopy=False, states=LIVE)), seed)
    _await_workers(children)
    if on_ready is not None:
        on_ready()
    t0 = time.perf_counter()
    try:
        mine = run_worker(study, objective, n_trials, poll_s=min(5.0, sc.heartbeat_interval))
    finally:
        _join_workers(children, restore)
    trials = study.get_trials(deepcopy=False)
    count = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    summary = {"study": name, "storage": safe_url(url), "mode": sc.mode, "workers": n_workers, "worker_trials": mine,
               "worker_seconds": round(time.perf_counter() - t0, 2), "n_trials": n_trials, "trials": count}
    if not (outputs or export):
        return summary
    out = objective.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with _file_lock(cfg.path("runs") / "search" / ".outputs.lock"):  # one worker at a time writes
        picked = select(study, sc.mode, objective.scorer.floor, pick)
        stamp = {"study": name, "finished": sorted(t.number for t in trials if t.state in FINISHED),
                 "picked": None if picked is None else picked.number, "export": export}
        manifest = cfg.path("export") / MANIFEST
        done_before = ((out / "selected.json").is_file() and json.loads((out / "selected.json").read_text()) == stamp
                       and (not export or picked is None or (manifest.is_file() and (
                           Manifest.read(manifest).search or {}).get("trial") == picked.number)))
        if picked is not None:
            summary["picked"] = {"trial": picked.number, "params": dict(picked.params),
                                 **{k: picked.user_attrs[k] for k in METRIC_KEYS}}
        if done_before:
            log.info("another worker already wrote this study's outputs")
            summary["outputs"] = {"dir": str(out), "written_by": "another worker"}
            return summary
        if outputs:
            summary["outputs"] = write_outputs(study, objective.scorer, out, sc.mode, picked)
        if export:
            if picked is None:
                log.warning("no complete trial (pruned ones do not count) meets the accuracy floor on router-val: "
                            "nothing exported")
            else:
                par = pipeline.stage_export(cfg, chosen=chosen_router(cfg, objective, picked, url))
                summary["export"] = {"dir": str(cfg.path("export")), **par}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (out / "selected.json").write_text(json.dumps(stamp))
    return summary


def val_objective_of(cfg: Config, module, spec: dict) -> dict:
    """Single mode's objective for an already trained router (e.g. ``pipeline.stage_fit``'s untuned
    default): the decision sweep on router-val (``Scorer.best``), as every trial is scored. Returns the chosen decision's
    metrics plus ``objective``."""
    table = pipeline.stage_collect(cfg)
    feats = pipeline.stage_features(cfg)
    train = fit.split_arrays(table, feats, cfg.model_names, "router-train")
    val = fit.split_arrays(table, feats, cfg.model_names, "router-val")
    scorer = Scorer(val, CostSpec.from_dict(spec), cfg.tiers, pipeline.cloud_index(cfg, train), "single",
                    cfg.search.min_cloud_accuracy_ratio or 0.99, cfg.search.threshold_grid)
    _, m = scorer.best(pipeline.predict(module, spec, val.x))
    return {**m, "objective": scorer.objective(m), "feasible": scorer.feasible(m)}
