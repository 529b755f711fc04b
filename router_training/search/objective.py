"""A trial on router-val: ``Scorer`` (decisions and their metrics, single mode's threshold sweep), the
Lightning callbacks ``ValMetrics`` (per-epoch router-val metrics, what the pruner sees) and
``TrialTimer``, and ``Objective`` (train one router with a trial's parameters and score it)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import optuna
import torch

from .. import fit, tune
from ..config import Config, RouterConfig
from ..core.features import PIXEL_FEATURES
from ..core.decision import NEVER_THRESHOLD, CostSpec, DecisionRule
from ..core.splits import SplitArrays
from .space import ALL_GROUPS, distributions, feature_mask, ignore_masked_inputs, masked, router_config, suggest

OBJECTIVES = {"single": ["edge_share"], "multi": ["accuracy", "mean_latency_s", "mean_energy_j"]}
METRIC_KEYS = ("accuracy", "pct_cloud_accuracy", "edge_share", "mean_latency_s", "mean_energy_j",
               "latency_reduction", "energy_reduction")
# The decision lambdas single mode's sweep tries, each pair with every threshold: none, then latency
# alone and energy alone from 0.25 to 2 (``router-train tune`` searches both in [0, 2], tune.py).
LAMBDA_GRID = [(0.0, 0.0)] + [(v, 0.0) for v in (0.25, 0.5, 1.0, 2.0)] + [(0.0, v) for v in (0.25, 0.5, 1.0, 2.0)]


class Scorer:
    """Decisions and their metrics on router-val (``mode`` "single" or "multi"). ``floor`` = ``ratio`` x
    all-cloud accuracy (None: no floor); single mode sweeps ``grid`` thresholds (``thresholds``: quantiles
    of the predicted edge probabilities) plus all-cloud."""

    def __init__(self, val: SplitArrays, cost: CostSpec, tiers: list[str], cloud: int, mode: str,
                 ratio: float | None, grid: int = 101):
        self.val, self.cost, self.tiers, self.cloud, self.mode = val, cost, tiers, cloud, mode
        self.cloud_accuracy = float(val.score[:, cloud].mean())
        self.floor = None if ratio is None else float(ratio) * self.cloud_accuracy
        self.n_grid = grid
        self.edge = np.array([t == "edge" for t in tiers])
        self.lat, self.en = cost.costs()
        # what ``_sweep`` sums per query and model (n, K): score, is-edge, latency (s)
        self._per_model = (val.score, np.broadcast_to(self.edge.astype(np.float64), val.score.shape), val.latency_s)

    def thresholds(self, probs: np.ndarray) -> list[float]:
        """The sweep: ``grid`` quantiles of the edge models' predicted P(correct) on router-val (so a router
        whose probabilities lie in a narrow band still gets a fine sweep there), 0 and all-cloud."""
        edge = probs[:, [k for k, t in enumerate(self.tiers) if t == "edge"]].ravel()
        qs = np.quantile(edge, np.linspace(0.0, 1.0, self.n_grid)) if edge.size else []
        return sorted({0.0, *map(float, qs)}) + [NEVER_THRESHOLD]  # the last: no edge model eligible

    def decision(self, threshold: float, lambda_latency: float, lambda_energy: float) -> dict:
        return DecisionRule.edge_threshold(threshold, self.tiers, lambda_latency, lambda_energy).to_dict()

    def metrics(self, probs: np.ndarray, decision: dict) -> dict:
        return tune.evaluate(decision, probs, self.val, self.cost, self.tiers, self.cloud)

    def feasible(self, m: dict) -> bool:
        return self.floor is None or m["accuracy"] >= self.floor - 1e-12

    def best(self, probs: np.ndarray, lambdas: list[tuple[float, float]] | None = None) -> tuple[dict, dict]:
        """Single mode's decision sweep: every threshold of ``thresholds`` with every (lambda_latency,
        lambda_energy) pair of ``lambdas`` (default ``LAMBDA_GRID``); the decision with the largest edge
        share among those meeting the floor (ties: higher accuracy, then lower latency, then the earlier
        pair); the most accurate one when none does. The lambdas are the decision's, chosen here as
        ``router-train tune`` chooses them, not the trial's training-loss weights: when an edge model costs
        more energy than the cloud (BlindTest's configured costs), a trial's ``lambda_energy`` would
        otherwise keep every query off the edge whatever the network learned. The sweep is
        ``decision.decide``'s rule for every threshold at once (``_sweep``; it runs after every epoch of every
        trial); the chosen decision's full metrics come from ``metrics``."""
        probs = np.asarray(probs, dtype=np.float64)
        ts = np.asarray(self.thresholds(probs))
        pairs = LAMBDA_GRID if lambdas is None else lambdas
        acc, share, latency = map(np.array, zip(*(self._sweep(probs, ts, ll, le) for ll, le in pairs)))  # (P, T)
        latency = latency.round(12)  # sums in another order: equal latencies must tie
        n_t = len(ts)
        ok = acc >= self.floor - 1e-12 if self.floor is not None else np.ones(acc.shape, bool)
        cand = np.flatnonzero(ok) if ok.any() else np.arange(acc.size)  # flat (pair, threshold) indices
        keys = (cand, latency.flat[cand], -acc.flat[cand]) + ((-share.flat[cand],) if ok.any() else ())
        flat = cand[np.lexsort(keys)[0]]  # the last key first; ties: the earlier pair, the lower threshold
        best = self.decision(ts[flat % n_t], *pairs[flat // n_t])
        return best, self.metrics(probs, best)

    def _sweep(self, probs: np.ndarray, ts: np.ndarray, ll: float, le: float):
        """(accuracy, edge share, mean latency (s)) on router-val, each float64 (T,), of ``decision.decide``
        with one (lambda_latency ``ll``, lambda_energy ``le``) and every threshold of ``ts`` for the edge
        models. Exact and O(n K log n): a query's choice changes only where the threshold passes one of
        its edge probabilities (that edge model becomes eligible), so each metric is a sum of step
        functions: its all-cloud value plus, per query and edge model, the change at that probability."""
        n = len(probs)
        rows = np.arange(n)
        cost = -probs + ll * self.lat / self.cost.ref_latency_s + le * self.en / self.cost.ref_energy_j
        cloud = np.flatnonzero(~self.edge)
        best = cloud[np.argmin(cost[:, cloud], axis=1)]  # every threshold above the probabilities: the cloud
        best_cost = cost[rows, best]
        metrics = self._per_model
        base = [m[rows, best].sum() for m in metrics]
        edge = np.flatnonzero(self.edge)
        by_p = edge[np.argsort(-probs[:, edge], axis=1, kind="stable")]  # (n, E) edge models, likeliest first
        steps, deltas = [], [[] for _ in metrics]
        for j in range(by_p.shape[1]):  # the j-th likeliest edge model joins once the threshold <= its P
            k = by_p[:, j]
            c = cost[rows, k]
            take = (c < best_cost) | ((c == best_cost) & (k < best))  # decide's argmin: the first of equal costs
            new = np.where(take, k, best)
            steps.append(probs[rows, k])
            for d, m in zip(deltas, metrics):
                d.append(m[rows, new] - m[rows, best])
            best, best_cost = new, np.where(take, c, best_cost)
        if not steps:
            return tuple(np.full(len(ts), b / n) for b in base)
        at = np.concatenate(steps)
        order = np.argsort(-at, kind="stable")
        at = at[order]
        count = np.searchsorted(-at, -ts, side="right")  # steps with probability >= each threshold
        out = []
        for b, d in zip(base, deltas):
            cum = np.concatenate([[0.0], np.cumsum(np.concatenate(d)[order])])
            out.append((b + cum[count]) / n)
        return tuple(out)

    def objective(self, m: dict) -> float:
        """Single mode's intermediate objective: the edge share when the floor is met, else the (negative)
        accuracy shortfall, so an infeasible router ranks below every feasible one."""
        return m["edge_share"] if self.feasible(m) else m["accuracy"] - self.floor

    def values(self, m: dict) -> list[float]:
        return [m[k] for k in OBJECTIVES[self.mode]]


class ValMetrics(L.Callback):
    """After every validation epoch, log the trial's router-val metrics of the current weights:
    ``val_accuracy``, ``val_edge_share``, ``val_mean_latency_s``, ``val_mean_energy_j`` and, in single
    mode, ``val_objective`` (``Scorer.objective``: what the pruning callback reports).
    ``decide(probs, router_config) -> (decision, metrics)``. The probabilities are those the validation
    epoch computed (``RouterModule.val_probs``), not a second pass over router-val."""

    def __init__(self, scorer: Scorer, decide):
        self.scorer, self.decide = scorer, decide

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        _, m = self.decide(torch.cat(pl_module.val_probs).cpu().numpy(), pl_module.rc)
        logged = {f"val_{k}": m[k] for k in ("accuracy", "edge_share", "mean_latency_s", "mean_energy_j")}
        if self.scorer.mode == "single":
            logged["val_objective"] = self.scorer.objective(m)
        for k, v in logged.items():
            pl_module.log(k, float(v))


class TrialTimer(L.Callback):
    """Where a trial's time goes (s), for the search benchmark: ``setup`` (from the trial's start to the
    first training batch: masking, standardisation, Trainer and DataLoaders), ``train`` (training epochs),
    ``validate`` (validation epochs, with ``ValMetrics``' threshold sweep) and ``epochs`` run. Put it last
    in the callback list so the validation time includes the other callbacks'."""

    def __init__(self):
        self.start = time.perf_counter()
        self.times = {"setup": 0.0, "train": 0.0, "validate": 0.0}
        self.epochs, self._t = 0, None

    def on_train_start(self, trainer, pl_module):
        self.times["setup"] = time.perf_counter() - self.start

    def on_train_epoch_start(self, trainer, pl_module):
        self._t, self._validated = time.perf_counter(), self.times["validate"]

    def on_train_epoch_end(self, trainer, pl_module):  # Lightning validates inside the training epoch
        self.times["train"] += time.perf_counter() - self._t - (self.times["validate"] - self._validated)
        self.epochs += 1

    def on_validation_epoch_start(self, trainer, pl_module):
        self._v = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.times["validate"] += time.perf_counter() - self._v


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's per-fit banners and warnings, once per trial, drown the search's own log."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning\..*")
            warnings.filterwarnings("ignore", category=UserWarning, message=r".*(num_workers|log_every_n_steps|"
                                    r"Checkpoint directory|does not have many workers).*")
            yield
    finally:
        logger.setLevel(level)


class Objective:
    """One study's objective: train a router with the trial's parameters, choose its decision on
    router-val, record metrics, decision and checkpoint folder as user attributes, set the accuracy
    constraint, return the objective value(s)."""

    def __init__(self, cfg: Config, train: SplitArrays, val: SplitArrays, cost: CostSpec, cloud: int,
                 study_name: str, n_trials: int):
        self.cfg, self.sc = cfg, cfg.search
        self.train, self.val, self.cost = train, val, cost
        self.scorer = Scorer(val, cost, cfg.tiers, cloud, cfg.search.mode, cfg.search.min_cloud_accuracy_ratio,
                             cfg.search.threshold_grid)
        self.dists = distributions(cfg.search)
        self.study_name, self.n_trials = study_name, n_trials
        self.trial_root = cfg.path("checkpoints") / "search" / study_name
        self.out_dir = cfg.path("runs") / "search" / study_name

    def decide(self, probs: np.ndarray, rc: RouterConfig, params: dict) -> tuple[dict, dict]:
        if "threshold" in params:
            d = self.scorer.decision(params["threshold"], rc.lambda_latency, rc.lambda_energy)
            return d, self.scorer.metrics(probs, d)
        return self.scorer.best(probs)

    def train_router(self, params: dict, out: Path, trial: optuna.Trial | None = None, loggers=False):
        """Train the router of ``params`` into ``out``; with ``trial`` its per-epoch router-val metrics
        are logged and (single mode, a pruner set) reported for pruning. Returns (module with masked
        inputs ignored, data module, RouterConfig, feature mask)."""
        rc = router_config(self.cfg.router, params)
        if "members" not in params:  # a trial trains search.members networks, not router.members
            rc = dataclasses.replace(rc, members=self.sc.members)
        mask = feature_mask(params.get("feature_groups"))
        if not mask[-len(PIXEL_FEATURES):].any() and rc.image_embedding:
            rc = dataclasses.replace(rc, image_embedding=0)  # no thumbnail: no CNN to train on constant zeros
        train, val = masked(self.train, mask), masked(self.val, mask)
        callbacks = []
        if trial is not None:
            callbacks.append(ValMetrics(self.scorer, lambda p, r: self.decide(p, r, params)))
            if self.sc.mode == "single" and not isinstance(trial.study.pruner, optuna.pruners.NopPruner):
                from optuna_integration import PyTorchLightningPruningCallback

                callbacks.append(PyTorchLightningPruningCallback(trial, monitor="val_objective"))
            callbacks.append(self.timer)
        wandb = None
        if loggers is True:
            wandb = {"group": self.study_name, "name": f"{self.study_name}-trial-{trial.number}",
                     "job_type": "search", "save_dir": str(self.out_dir),
                     "config": {"study": self.study_name, "trial": trial.number, **params}}
            self.out_dir.mkdir(parents=True, exist_ok=True)
        with _quiet_lightning():
            module, dm = fit.fit(train, val, self.cost, rc, out, loggers=loggers, callbacks=callbacks,
                                 progress=False, wandb_options=wandb)
        return ignore_masked_inputs(module, mask), dm, rc, mask

    def __call__(self, trial: optuna.Trial):
        params = {name: suggest(trial, name, d) for name, d in self.dists.items()}
        out = self.trial_root / f"trial-{trial.number:04d}"
        trial.set_user_attr("checkpoint_dir", str(out))
        trial.set_user_attr("worker_pid", os.getpid())
        self.timer = TrialTimer()
        try:
            module, dm, rc, mask = self.train_router(params, out, trial, loggers=True if self.sc.wandb else "csv")
        finally:  # a pruned trial's too
            trial.set_user_attr("epochs", self.timer.epochs)
            trial.set_user_attr("time_s", {k: round(v, 3) for k, v in self.timer.times.items()})
        t0 = time.perf_counter()
        probs = fit.predict(module, dm, masked(self.val, mask).x)
        decision, m = self.decide(probs, rc, params)
        spec = {**self.cost.to_dict(), "features": dm.stats,
                "router": dict(rc.__dict__), "feature_groups": params.get("feature_groups", ALL_GROUPS)}
        (out / "spec.json").write_text(json.dumps(spec, indent=2))
        trial.set_user_attr("decision", decision)
        for k in METRIC_KEYS:
            trial.set_user_attr(k, m[k])
        if self.scorer.floor is not None:
            trial.set_constraint("accuracy_floor", self.scorer.floor - m["accuracy"])
        trial.set_user_attr("time_s", {**trial.user_attrs["time_s"], "after": round(time.perf_counter() - t0, 3),
                                       "total": round(time.perf_counter() - self.timer.start, 3)})
        values = self.scorer.values(m)
        return values[0] if len(values) == 1 else values
