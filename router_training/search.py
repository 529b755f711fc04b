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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from . import fit, pipeline, tune
from .config import FEATURE_GROUPS, Config, RouterConfig, SearchConfig
from .core.features import FEATURE_NAMES, IMAGE_FEATURES, PIXEL_FEATURES, TEXT_FEATURES, THUMBNAIL_SIDE, WORD_FEATURES
from .core.profile import DeploymentProfile
from .core.splits import SplitArrays
from .runtime import NEVER_THRESHOLD, decide, expected_costs

log = logging.getLogger(__name__)

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
OBJECTIVES = {"single": ["edge_share"], "multi": ["accuracy", "mean_latency_s", "mean_energy_j"]}
DIRECTIONS = {"single": ["maximize"], "multi": ["maximize", "minimize", "minimize"]}
METRIC_KEYS = ("accuracy", "pct_cloud_accuracy", "edge_share", "mean_latency_s", "mean_energy_j",
               "latency_reduction", "energy_reduction")
ALL_CLOUD_THRESHOLD = NEVER_THRESHOLD  # above any probability: no edge model is eligible
ALL_GROUPS = "+".join(FEATURE_GROUPS)
_GROUP_COLUMNS = {"image": IMAGE_FEATURES, "text": TEXT_FEATURES, "words": WORD_FEATURES, "thumbnail": PIXEL_FEATURES}


class SearchError(ValueError):
    """A user error: an unknown --pick, a study name taken by another mode."""


# ---------------------------------------------------------------------------------------------------
# search space
# ---------------------------------------------------------------------------------------------------


def distributions(sc: SearchConfig) -> dict[str, BaseDistribution]:
    """The search space (``sc.space``, already checked by ``config.parse_search_space``) as Optuna
    distributions; multi mode adds ``threshold`` (float in [0, 1]) when the space lacks it."""
    out: dict[str, BaseDistribution] = {}
    for name, spec in sc.space.items():
        if "categorical" in spec:
            out[name] = CategoricalDistribution(spec["categorical"])
        elif "float" in spec:
            out[name] = FloatDistribution(*spec["float"], log=spec["log"], step=spec["step"])
        else:
            out[name] = IntDistribution(*spec["int"], log=spec["log"], step=spec["step"] or 1)
    if sc.mode == "multi" and "threshold" not in out:
        out["threshold"] = FloatDistribution(0.0, 1.0)
    return out


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution):
    """``trial.suggest_*`` for one distribution."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)


def router_config(base: RouterConfig, params: dict) -> RouterConfig:
    """``base`` with the trial's parameters: RouterConfig fields replace the base values and
    ``hidden_width`` / ``depth`` give ``hidden = [hidden_width] * depth`` (the missing one from ``base``)."""
    d = dict(base.__dict__)
    fields = {f.name for f in dataclasses.fields(RouterConfig)}
    d.update({k: v for k, v in params.items() if k in fields})
    if "hidden_width" in params or "depth" in params:
        width = params.get("hidden_width", base.hidden[0] if base.hidden else 64)
        depth = params.get("depth", len(base.hidden))
        d["hidden"] = [int(width)] * int(depth)
    return RouterConfig(**d)


def feature_mask(groups: str | None) -> np.ndarray:
    """bool (F,) over ``FEATURE_NAMES``: True for the columns of the groups named in ``groups``
    (e.g. "image+text+words", "image"; None = all)."""
    keep = set((groups or ALL_GROUPS).split("+"))
    cols = {c for g in keep for c in _GROUP_COLUMNS[g]}
    return np.array([name in cols for name in FEATURE_NAMES])


def masked(split: SplitArrays, mask: np.ndarray) -> SplitArrays:
    """The split with the masked-out feature columns set to 0 (constant, so standardised to 0)."""
    return dataclasses.replace(split, x=np.where(mask, split.x, 0.0).astype(np.float32))


def ignore_masked_inputs(module: fit.RouterModule, mask: np.ndarray) -> fit.RouterModule:
    """Make the router ignore the masked-out feature columns whatever values the runtime computes for
    them: it was trained on constant zeros there, so the MLP's first-layer weights on masked signal
    columns are zeroed; a masked thumbnail's CNN is removed, its embedding replaced by the constant it
    had in training (the embedding of an all-zero thumbnail, folded into the first layer's bias), so the
    exported router does not run a CNN whose output nothing reads."""
    import torch

    n = module.net.n_signals
    with torch.no_grad():
        for net in module.net.members:
            first = net.mlp[0]
            first.weight[:, :n][:, torch.from_numpy(~mask[:n])] = 0.0
            if net.cnn is not None and not mask[n:].any():
                emb = net.cnn(torch.zeros(1, 3, THUMBNAIL_SIDE, THUMBNAIL_SIDE))[0]
                folded = torch.nn.Linear(n, first.out_features)
                folded.weight.copy_(first.weight[:, :n])
                folded.bias.copy_(first.bias + first.weight[:, n:] @ emb)
                net.mlp[0], net.cnn = folded, None
    return module


# ---------------------------------------------------------------------------------------------------
# scoring on router-val
# ---------------------------------------------------------------------------------------------------


class Scorer:
    """Decisions and their metrics on router-val (``mode`` "single" or "multi"). ``floor`` = ``ratio`` x
    all-cloud accuracy (None: no floor); single mode sweeps ``grid`` thresholds (``thresholds``: quantiles
    of the predicted edge probabilities) plus all-cloud."""

    def __init__(self, val: SplitArrays, spec: dict, tiers: list[str], cloud: int, mode: str,
                 ratio: float | None, grid: int = 101):
        self.val, self.spec, self.tiers, self.cloud, self.mode = val, spec, tiers, cloud, mode
        self.cloud_accuracy = float(val.score[:, cloud].mean())
        self.floor = None if ratio is None else float(ratio) * self.cloud_accuracy
        self.n_grid = grid

    def thresholds(self, probs: np.ndarray) -> list[float]:
        """The sweep: ``grid`` quantiles of the edge models' predicted P(correct) on router-val (so a router
        whose probabilities lie in a narrow band still gets a fine sweep there), 0 and all-cloud."""
        edge = probs[:, [k for k, t in enumerate(self.tiers) if t == "edge"]].ravel()
        qs = np.quantile(edge, np.linspace(0.0, 1.0, self.n_grid)) if edge.size else []
        return sorted({0.0, *map(float, qs)}) + [ALL_CLOUD_THRESHOLD]

    def decision(self, threshold: float, lambda_latency: float, lambda_energy: float) -> dict:
        return {"thresholds": [float(threshold) if t == "edge" else 0.0 for t in self.tiers],
                "lambda_latency": float(lambda_latency), "lambda_energy": float(lambda_energy)}

    def metrics(self, probs: np.ndarray, decision: dict) -> dict:
        return tune.evaluate(decision, probs, self.val, self.spec, self.tiers, self.cloud)

    def feasible(self, m: dict) -> bool:
        return self.floor is None or m["accuracy"] >= self.floor - 1e-12

    def best(self, probs: np.ndarray, lambda_latency: float, lambda_energy: float) -> tuple[dict, dict]:
        """Single mode's threshold sweep: the decision with the largest edge share among those meeting
        the floor (ties: higher accuracy, then lower latency); the most accurate one when none does.
        The sweep is ``runtime.decide``'s rule on whole arrays (it runs after every epoch of every trial);
        the chosen decision's full metrics come from ``metrics``."""
        lat, en = expected_costs(self.spec, DeploymentProfile.from_dict(self.spec["profile"]))
        rows, edge = np.arange(len(probs)), np.array([t == "edge" for t in self.tiers])
        cands = []
        for t in self.thresholds(probs):
            d = self.decision(t, lambda_latency, lambda_energy)
            idx = decide(probs, lat, en, d["thresholds"], lambda_latency, lambda_energy, self.spec["ref_latency_s"],
                         self.spec["ref_energy_j"])
            acc = float(self.val.score[rows, idx].mean())
            cands.append((d, acc, float(edge[idx].mean()), float(self.val.latency_s[rows, idx].mean())))
        ok = [c for c in cands if self.feasible({"accuracy": c[1]})]
        if ok:
            d = max(ok, key=lambda c: (c[2], c[1], -c[3]))[0]
        else:
            d = max(cands, key=lambda c: (c[1], -c[3]))[0]
        return d, self.metrics(probs, d)

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
    ``decide(probs, router_config) -> (decision, metrics)``; ``val_x`` raw (masked) router-val features."""

    def __init__(self, scorer: Scorer, val_x: np.ndarray, decide):
        self.scorer, self.val_x, self.decide = scorer, val_x, decide

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        with torch.no_grad():
            probs = torch.sigmoid(pl_module(torch.from_numpy(trainer.datamodule.standardise(self.val_x))))
        _, m = self.decide(probs.cpu().numpy(), pl_module.rc)
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


# ---------------------------------------------------------------------------------------------------
# storage, study, worker loop
# ---------------------------------------------------------------------------------------------------


def default_storage(cfg: Config) -> str:
    return f"sqlite:///{cfg.path('data') / 'optuna.db'}"


def default_study_name(cfg: Config) -> str:
    """One study per (data, models, profile, base router, search settings other than n_trials and the
    worker plumbing): a relaunch with the same config resumes; a changed space starts a new study."""
    s = pipeline.settings(cfg, "dataset", "models", "profile", "router", "search")
    for k in ("n_trials", "heartbeat_interval", "grace_period", "wandb"):
        s["search"].pop(k, None)
    return f"{cfg.name}-search-{cfg.search.mode}-{pipeline._digest(s)}"


def safe_url(url: str) -> str:
    """The URL with any password hidden (for logs and the manifest)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: leave it to RDBStorage to complain
        return url


def open_storage(url: str, sc: SearchConfig) -> optuna.storages.RDBStorage:
    """RDBStorage with heartbeats (stale trials fail and are retried once). SQLite gets a long lock
    timeout (several processes write the file); creation is retried, since workers starting together on
    an empty database race to create its tables."""
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 120}}
    else:
        engine = {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=sc.heartbeat_interval,
                    grace_period=sc.grace_period,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        except Exception as e:  # noqa: BLE001 - e.g. two workers creating the tables at once
            if attempt == 5 or isinstance(e, (ValueError, ImportError, ModuleNotFoundError)):
                raise
            log.info("opening storage %s failed (%s); retrying", safe_url(url), type(e).__name__)
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def make_sampler(sc: SearchConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    name, kw = next(iter((sc.sampler or {"tpe" if sc.mode == "single" else "nsga2": {}}).items()))
    cls = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
           "random": optuna.samplers.RandomSampler}[name]
    return cls(**{"seed": seed, **kw})


def make_pruner(sc: SearchConfig) -> optuna.pruners.BasePruner:
    if sc.mode == "multi" or sc.pruner is None:
        return optuna.pruners.NopPruner()
    name, kw = next(iter(sc.pruner.items()))
    cls = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "percentile": optuna.pruners.PercentilePruner, "hyperband": optuna.pruners.HyperbandPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
           "threshold": optuna.pruners.ThresholdPruner}[name]
    return cls(**kw)


def open_study(storage, name: str, sc: SearchConfig, seed: int | None) -> optuna.Study:
    """Create or load the study; raises SearchError when it exists with other directions (mode)."""
    study = optuna.create_study(storage=storage, study_name=name, directions=DIRECTIONS[sc.mode],
                                sampler=make_sampler(sc, seed), pruner=make_pruner(sc), load_if_exists=True)
    want = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in DIRECTIONS[sc.mode]]
    if list(study.directions) != want:
        raise SearchError(f"study {name!r} exists with directions {[d.name for d in study.directions]}; "
                         f"search.mode {sc.mode!r} needs {DIRECTIONS[sc.mode]}: use another --study")
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(OBJECTIVES[sc.mode])
    return study


def run_worker(study: optuna.Study, objective, n_trials: int, poll_s: float = 5.0) -> list[int]:
    """Run trials of ``study`` until it holds ``n_trials`` live trials and none is running (others'
    trials included: a worker returns when the study is done). Stale trials of dead workers are failed
    (and retried) before every step. Returns the numbers of the trials this worker finished
    (complete or pruned)."""
    mine: list[int] = []

    def record(_, t):
        if t.state in FINISHED:
            mine.append(t.number)

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False, states=LIVE)
        running = any(t.state == TrialState.RUNNING for t in trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if len(trials) < n_trials or waiting:
            study.optimize(objective, n_trials=1, callbacks=[record], show_progress_bar=False)
        elif running:
            time.sleep(poll_s)
        else:
            return mine


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

    def __init__(self, cfg: Config, train: SplitArrays, val: SplitArrays, spec: dict, cloud: int,
                 study_name: str, n_trials: int):
        self.cfg, self.sc = cfg, cfg.search
        self.train, self.val, self.spec = train, val, spec
        self.scorer = Scorer(val, spec, cfg.tiers, cloud, cfg.search.mode, cfg.search.min_cloud_accuracy_ratio,
                             cfg.search.threshold_grid)
        self.dists = distributions(cfg.search)
        self.study_name, self.n_trials = study_name, n_trials
        self.trial_root = cfg.path("checkpoints") / "search" / study_name
        self.out_dir = cfg.path("runs") / "search" / study_name

    def decide(self, probs: np.ndarray, rc: RouterConfig, params: dict) -> tuple[dict, dict]:
        if "threshold" in params:
            d = self.scorer.decision(params["threshold"], rc.lambda_latency, rc.lambda_energy)
            return d, self.scorer.metrics(probs, d)
        return self.scorer.best(probs, rc.lambda_latency, rc.lambda_energy)

    def train_router(self, params: dict, out: Path, trial: optuna.Trial | None = None, loggers=False):
        """Train the router of ``params`` into ``out``; with ``trial`` its per-epoch router-val metrics
        are logged and (single mode, a pruner set) reported for pruning. Returns (module with masked
        inputs ignored, data module, RouterConfig, feature mask)."""
        rc = router_config(self.cfg.router, params)
        mask = feature_mask(params.get("feature_groups"))
        if not mask[-len(PIXEL_FEATURES):].any() and rc.image_embedding:
            rc = dataclasses.replace(rc, image_embedding=0)  # no thumbnail: no CNN to train on constant zeros
        train, val = masked(self.train, mask), masked(self.val, mask)
        callbacks = []
        if trial is not None:
            callbacks.append(ValMetrics(self.scorer, val.x, lambda p, r: self.decide(p, r, params)))
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
            module, dm = fit.fit(train, val, self.spec, rc, out, loggers=loggers, callbacks=callbacks,
                                 progress=False, wandb_options=wandb)
        return ignore_masked_inputs(module, mask), dm, rc, mask

    def __call__(self, trial: optuna.Trial):
        params = {name: suggest(trial, name, d) for name, d in self.dists.items()}
        out = self.trial_root / f"trial-{trial.number:04d}"
        trial.set_user_attr("checkpoint_dir", str(out))
        self.timer = TrialTimer()
        try:
            module, dm, rc, mask = self.train_router(params, out, trial, loggers=True if self.sc.wandb else "csv")
        finally:  # a pruned trial's too
            trial.set_user_attr("epochs", self.timer.epochs)
            trial.set_user_attr("time_s", {k: round(v, 3) for k, v in self.timer.times.items()})
        t0 = time.perf_counter()
        probs = fit.predict(module, dm, masked(self.val, mask).x)
        decision, m = self.decide(probs, rc, params)
        spec = {**self.spec, "features": dm.stats,
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


# ---------------------------------------------------------------------------------------------------
# selection, outputs, export
# ---------------------------------------------------------------------------------------------------


def feasible(t: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def pareto_front(trials: list) -> list:
    """Feasible complete trials not dominated in (accuracy max, mean latency min, mean energy min),
    read from their user attributes; sorted by latency."""
    pts = [t for t in trials if t.state == TrialState.COMPLETE and feasible(t)]
    key = lambda t: np.array([-t.user_attrs["accuracy"], t.user_attrs["mean_latency_s"],  # noqa: E731
                              t.user_attrs["mean_energy_j"]])
    front = [t for t in pts if not any((key(o) <= key(t)).all() and (key(o) < key(t)).any() for o in pts)]
    return sorted(front, key=lambda t: (t.user_attrs["mean_latency_s"], t.number))


def select(study: optuna.Study, mode: str, floor: float | None, pick: int | None = None):
    """The trial to export: ``pick`` (a complete trial's number), else in single mode the feasible trial
    with the largest edge share (ties: higher accuracy), in multi mode the Pareto point with the lowest
    mean latency among those meeting the floor (the most accurate one when none does or there is no
    floor). None when no complete feasible trial exists."""
    trials = study.get_trials(deepcopy=False)
    if pick is not None:
        t = next((t for t in trials if t.number == pick), None)
        if t is None or t.state != TrialState.COMPLETE:
            states = {t.number: t.state.name for t in trials}
            raise SearchError(f"--pick {pick}: no complete trial {pick} in study {study.study_name!r} "
                             f"(trial states: {states})")
        return t
    front = pareto_front(trials)
    if not front:
        return None
    if mode == "single":
        return max(front, key=lambda t: (t.value, t.user_attrs["accuracy"], -t.number))
    ok = [t for t in front if floor is not None and t.user_attrs["accuracy"] >= floor - 1e-12]
    if ok:
        return min(ok, key=lambda t: (t.user_attrs["mean_latency_s"], t.number))
    return max(front, key=lambda t: (t.user_attrs["accuracy"], -t.number))


def _markdown_front(front: list, picked, scorer: Scorer) -> str:
    names = sorted({k for t in front for k in t.params})
    head = ["trial", "accuracy", "% of cloud", "edge share", "latency (ms)", "energy (J)", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in front:
        a = t.user_attrs
        cells = [f"{t.number}{' (picked)' if picked is not None and t.number == picked.number else ''}",
                 f"{a['accuracy']:.4f}", f"{a['pct_cloud_accuracy']:.1f}", f"{a['edge_share']:.3f}",
                 f"{1e3 * a['mean_latency_s']:.1f}", f"{a['mean_energy_j']:.3f}"]
        cells += [f"{t.params[n]:.4g}" if isinstance(t.params.get(n), float) else str(t.params.get(n, ""))
                  for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    floor = "" if scorer.floor is None else f", accuracy floor {scorer.floor:.4f}"
    return (f"Pareto front on router-val (accuracy up, mean latency and energy down; feasible complete "
            f"trials{floor}; all-cloud accuracy {scorer.cloud_accuracy:.4f}).\n\n" + "\n".join(lines) + "\n")


def _pareto_plot(path: Path, trials: list, front: list, picked, scorer: Scorer, cost: str, title: str) -> None:
    """Accuracy vs ``cost`` ("mean_latency_s" or "mean_energy_j") on router-val: every complete trial,
    the front, all-cloud, the floor and the picked trial (the one exported)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, label = (1e3, "mean latency (ms)") if cost == "mean_latency_s" else (1.0, "mean energy (J)")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for group, style in (([t for t in done if feasible(t)], dict(c="tab:blue", marker="o", label="trial")),
                             ([t for t in done if not feasible(t)],
                              dict(c="0.6", marker="x", label="trial below the accuracy floor"))):
            if group:
                ax.scatter([scale * t.user_attrs[cost] for t in group], [t.user_attrs["accuracy"] for t in group],
                           s=18, alpha=0.7, **style)
        if front:
            f = sorted(front, key=lambda t: t.user_attrs[cost])
            ax.plot([scale * t.user_attrs[cost] for t in f], [t.user_attrs["accuracy"] for t in f], "-o",
                    c="tab:red", ms=5, label="Pareto front (3 objectives)")
        cloud_cost = float(getattr(scorer.val, cost.replace("mean_", ""))[:, scorer.cloud].mean())
        ax.scatter([scale * cloud_cost], [scorer.cloud_accuracy], marker="*", s=160, c="k", label="all-cloud")
        if scorer.floor is not None:
            ax.axhline(scorer.floor, ls="--", c="0.4", lw=1, label="accuracy floor")
        if picked is not None:
            ax.scatter([scale * picked.user_attrs[cost]], [picked.user_attrs["accuracy"]], s=180,
                       facecolors="none", edgecolors="k", linewidths=1.5, label=f"picked (trial {picked.number})")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (router-val)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)


def _optuna_plots(study: optuna.Study, out: Path, mode: str) -> list[str]:
    """Optuna's optimisation history and parameter importances (matplotlib) as PNG; returns the names of
    the plots that could not be drawn (e.g. too few complete trials for importances)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    target = {} if mode == "single" else {"target": lambda t: t.values[0], "target_name": "accuracy"}
    skipped = []
    for name, fn, kw in (("optimization_history.png", ovm.plot_optimization_history, target),
                         ("param_importances.png", ovm.plot_param_importances, {})):
        try:
            with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna sets the ggplot style globally
                warnings.simplefilter("ignore")
                ax = fn(study, **kw)
                fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
                fig.set_size_inches(8, 5)
                fig.tight_layout()
                fig.savefig(out / name, dpi=110)
                plt.close(fig)
        except Exception as e:  # noqa: BLE001 - a plot the study cannot support yet is skipped, not fatal
            log.warning("%s not drawn: %s: %s", name, type(e).__name__, e)
            skipped.append(name)
    return skipped


def write_outputs(study: optuna.Study, scorer: Scorer, out: Path, mode: str, picked) -> dict:
    """trials.csv, front.md, Pareto plots and Optuna plots under ``out``. Returns file names and front."""
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(trials)
    df = study.trials_dataframe(attrs=("number", "state", "value" if mode == "single" else "values", "params",
                                       "user_attrs", "duration", "datetime_start", "datetime_complete"))
    df.to_csv(out / "trials.csv", index=False)
    (out / "front.md").write_text(_markdown_front(front, picked, scorer))
    title = f"{study.study_name}: {len(trials)} trials"
    _pareto_plot(out / "pareto_accuracy_latency.png", trials, front, picked, scorer, "mean_latency_s", title)
    _pareto_plot(out / "pareto_accuracy_energy.png", trials, front, picked, scorer, "mean_energy_j", title)
    skipped = _optuna_plots(study, out, mode)
    return {"dir": str(out), "front": [t.number for t in front], "plots_skipped": skipped}


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
        spec = {**objective.spec, "features": dm.stats,
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


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stage_search(cfg: Config, storage: str | None = None, study_name: str | None = None,
                 n_trials: int | None = None, pick: int | None = None, export: bool = True,
                 outputs: bool = True, worker_index: int | None = 0) -> dict:
    """Run this process's share of the study, then (once the study is done) write the outputs and export
    the chosen trial's router to export/<run>/ (``pipeline.stage_export``; the manifest's ``search``
    records study, trial and parameters).

    ``storage``: SQLAlchemy URL (default ``sqlite:///data/<run>/optuna.db``); ``study_name`` (default
    ``default_study_name``); ``n_trials`` overrides ``search.n_trials``; ``pick`` exports that trial
    (number) instead of the best; ``worker_index``: the sampler's seed is ``search.seed + worker_index``
    (None: a random seed, so identical workers explore differently). Only router-train and router-val
    are loaded for the trials. Returns a summary dict."""
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
    train = fit.split_arrays(table, feats, cfg.model_names, "router-train")
    val = fit.split_arrays(table, feats, cfg.model_names, "router-val")
    spec = fit.cost_spec(train, table, cfg)
    cloud = pipeline.cloud_index(cfg, train)
    seed = sc.seed + worker_index if worker_index is not None else random.SystemRandom().randrange(2**31)
    study = open_study(open_storage(url, sc), name, sc, seed)
    objective = Objective(cfg, train, val, spec, cloud, name, n_trials)
    log.info("study %s in %s: %d trials wanted, %d live; sampler seed %d", name, safe_url(url), n_trials,
             len(study.get_trials(deepcopy=False, states=LIVE)), seed)
    t0 = time.perf_counter()
    mine = run_worker(study, objective, n_trials, poll_s=min(5.0, sc.heartbeat_interval))
    trials = study.get_trials(deepcopy=False)
    count = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    summary = {"study": name, "storage": safe_url(url), "mode": sc.mode, "worker_trials": mine,
               "worker_seconds": round(time.perf_counter() - t0, 2), "n_trials": n_trials, "trials": count}
    if not (outputs or export):
        return summary
    out = objective.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with _file_lock(cfg.path("runs") / "search" / ".outputs.lock"):  # one worker at a time writes
        picked = select(study, sc.mode, objective.scorer.floor, pick)
        stamp = {"study": name, "finished": sorted(t.number for t in trials if t.state in FINISHED),
                 "picked": None if picked is None else picked.number, "export": export}
        manifest = cfg.path("export") / "manifest.json"
        done_before = ((out / "selected.json").is_file() and json.loads((out / "selected.json").read_text()) == stamp
                       and (not export or picked is None or (manifest.is_file() and json.loads(
                           manifest.read_text()).get("search", {}).get("trial") == picked.number)))
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
    default): the threshold sweep on router-val with the config's lambdas. Returns the chosen decision's
    metrics plus ``objective``."""
    table = pipeline.stage_collect(cfg)
    feats = pipeline.stage_features(cfg)
    train = fit.split_arrays(table, feats, cfg.model_names, "router-train")
    val = fit.split_arrays(table, feats, cfg.model_names, "router-val")
    scorer = Scorer(val, spec, cfg.tiers, pipeline.cloud_index(cfg, train), "single",
                    cfg.search.min_cloud_accuracy_ratio or 0.99, cfg.search.threshold_grid)
    _, m = scorer.best(pipeline.predict(module, spec, val.x), cfg.router.lambda_latency, cfg.router.lambda_energy)
    return {**m, "objective": scorer.objective(m), "feasible": scorer.feasible(m)}
