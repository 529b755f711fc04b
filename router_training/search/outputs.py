"""A finished study's selection and outputs: feasibility, the Pareto front, the trial to export, and
trials.csv, front.md, the Pareto plots and Optuna's plots."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from .objective import Scorer
from .study import SearchError

log = logging.getLogger(__name__)


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
