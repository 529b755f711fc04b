"""Storage, sampler, pruner and study of a search, and the worker loop that many processes run on one
study (see the package docstring)."""

from __future__ import annotations

import contextlib
import logging
import random
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .. import data, pipeline
from ..config import Config, SearchConfig
from .objective import OBJECTIVES

log = logging.getLogger(__name__)

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
DIRECTIONS = {"single": ["maximize"], "multi": ["maximize", "minimize", "minimize"]}


class SearchError(ValueError):
    """A user error: an unknown --pick, a study name taken by another mode."""


def default_storage(cfg: Config) -> str:
    return f"sqlite:///{cfg.path('data') / 'optuna.db'}"


def default_study_name(cfg: Config) -> str:
    """One study per (data, models, profile, base router, search settings other than n_trials and the
    worker plumbing): a relaunch with the same config resumes; a changed space starts a new study."""
    s = pipeline.settings(cfg, "dataset", "models", "profile", "router", "search")
    for k in ("n_trials", "heartbeat_interval", "grace_period", "wandb", "workers"):
        s["search"].pop(k, None)
    files = data.input_files(cfg)  # edited questions or outcomes: a new study, not stale trials
    if files:
        s["input_files"] = files
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
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
