"""Benchmark `router-train search`: a single-objective search with pruning (40 trials by default) on a
config's already-collected data, against the untuned default router.

    python benchmarks/search_easyvqa.py configs/easyvqa.yaml --workdir WORK [--n-trials 40]

WORK must hold the run's collected outcomes and features (`router-train collect` / `features`; run
them first, or this script runs them). The study goes to WORK/data/<run>/optuna.db under a fresh name
(``<run>-search-benchmark-<time>``); nothing is exported. Prints: wall time of the search, trials
complete / pruned, the best trial's router-val objective (edge share with accuracy >=
``search.min_cloud_accuracy_ratio`` x all-cloud) and the same objective of the untuned default router
(``router-train fit``'s router from the config's ``router`` section, trained when not cached), both with
the threshold chosen by the same sweep on router-val; the median per-trial time split into its parts
(``search.TrialTimer``: setup, train, validate, after (predict, decide, write the spec), other) and the
epochs at which trials were pruned. Any config works (e.g. configs/blindtest/blindtest.yaml).

The search runs with the config's settings, ``search.workers`` included (default: one process per CPU),
so the per-trial times are those of trials sharing the CPUs. What made a BlindTest thumbnail trial go
from 305 s to about 30 s (measured on this machine, one at a time): one network per trial
(``search.members``, 3x); the validation epoch's probabilities reused instead of a second pass over
router-val; the CNN in channels-last memory with pooling before the ReLU (1.7x per epoch); the feature
matrix row-major (gathering rows of pandas' column-major array took a quarter of an epoch); the
threshold sweep as step functions (74 -> 17 ms per epoch on easy-VQA, with the decision lambdas swept
too); two one-thread workers instead of one two-thread one (1.56x the throughput).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default="configs/easyvqa.yaml", help="run config (default: %(default)s)")
    p.add_argument("--workdir", default=".", help="work directory holding data/<run>/ (default: .)")
    p.add_argument("--n-trials", type=int, default=40)
    p.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///WORK/data/<run>/optuna.db)")
    p.add_argument("--study", help="study name (default: <run>-search-benchmark-<time>)")
    p.add_argument("--no-wandb", action="store_true", help="CSV logs only (wandb offline costs ~0.5 s a trial)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from router_training import config, pipeline, search

    cfg = config.load(args.config, args.workdir)
    over = {"mode": "single"}
    if args.no_wandb:
        over["wandb"] = False
    cfg.search = dataclasses.replace(cfg.search, **over)
    if cfg.search.pruner is None or "none" in cfg.search.pruner:
        print("note: the config's search.pruner is off: no trial will be pruned", file=sys.stderr)
    study = args.study or f"{cfg.name}-search-benchmark-{time.strftime('%Y%m%d-%H%M%S')}"

    pipeline.stage_collect(cfg)  # cached: only checks what is there
    pipeline.stage_features(cfg)
    t0 = time.perf_counter()
    summary = search.stage_search(cfg, storage=args.storage, study_name=study, n_trials=args.n_trials,
                                  export=False, worker_index=0)
    wall = time.perf_counter() - t0

    import optuna
    import statistics

    st = optuna.load_study(study_name=summary["study"], storage=args.storage or search.default_storage(cfg))
    done = [t for t in st.trials if "time_s" in t.user_attrs]
    parts = ("setup", "train", "validate", "after", "total")
    med = {k: statistics.median(t.user_attrs["time_s"][k] for t in done if k in t.user_attrs["time_s"])
           for k in parts if any(k in t.user_attrs["time_s"] for t in done)}
    complete = [t for t in done if "total" in t.user_attrs["time_s"]]
    if complete:  # what no named part covers: checkpoint writes and reload, logger start and finish, loop overhead
        med["other"] = statistics.median(t.user_attrs["time_s"]["total"] - sum(t.user_attrs["time_s"][k] for k in
                                         ("setup", "train", "validate", "after")) for t in complete)
    pruned = sorted(t.user_attrs.get("epochs", 0) for t in st.trials if t.state.name == "PRUNED")
    epochs = [t.user_attrs.get("epochs", 0) for t in complete]

    t1 = time.perf_counter()
    module, spec = pipeline.stage_fit(cfg)  # the untuned default router (cached when `fit` ran before)
    default = search.val_objective_of(cfg, module, spec)
    default_s = time.perf_counter() - t1
    picked = summary.get("picked")
    rows = [
        ("study", f"{summary['study']} ({summary['storage']})"),
        ("trials", f"{summary['n_trials']}: {summary['trials']['complete']} complete, "
                   f"{summary['trials']['pruned']} pruned, {summary['trials']['fail']} failed"),
        ("search wall time", f"{wall:.1f} s ({wall / max(1, summary['n_trials']):.2f} s a trial)"),
        ("best trial", "none meets the accuracy floor" if picked is None else
         f"#{picked['trial']}: val edge share {picked['edge_share']:.4f}, accuracy {picked['accuracy']:.4f} "
         f"({picked['pct_cloud_accuracy']:.1f}% of cloud), latency {1e3 * picked['mean_latency_s']:.1f} ms"),
        ("default router", f"val edge share {default['edge_share']:.4f}, accuracy {default['accuracy']:.4f} "
                           f"({default['pct_cloud_accuracy']:.1f}% of cloud), latency "
                           f"{1e3 * default['mean_latency_s']:.1f} ms (fit/load {default_s:.1f} s)"),
        ("objective: best vs default", f"{picked['edge_share'] if picked else float('nan'):.4f} vs "
                                       f"{default['objective']:.4f}"),
        ("per-trial time (median s)", ", ".join(f"{k} {v:.2f}" for k, v in med.items()) + " (complete trials' total)"),
        ("epochs run", f"complete trials: median {statistics.median(epochs) if epochs else 0}, max "
                       f"{max(epochs, default=0)}; pruned after epochs {pruned}"),
        ("outputs", summary.get("outputs", {}).get("dir", "-")),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(json.dumps({"wall_s": round(wall, 2), "n_trials": summary["n_trials"], "trials": summary["trials"],
                      "best_val_objective": picked["edge_share"] if picked else None,
                      "default_val_objective": default["objective"], "study": summary["study"],
                      "median_trial_s": med, "pruned_at_epochs": pruned}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
