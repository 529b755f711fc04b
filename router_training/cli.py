"""``router-train``: the pipeline's command line.

    router-train run CONFIG            all stages, printing the report table
    router-train STAGE CONFIG          one stage: data, reference, collect, features, fit, tune, export,
                                       report (= evaluate: the full evaluation report)
    router-train collect CONFIG --devices 4 --strategy ddp     collection on 4 processes (Lightning DDP)
    router-train route --artifact DIR --image PATH --question TEXT
    router-train serve --artifact DIR --endpoints endpoints.yaml   OpenAI-compatible routing gateway
    router-train search CONFIG [--storage URL --study NAME]   hyperparameter search (start N times: N workers)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

STAGES = ("data", "reference", "collect", "features", "fit", "tune", "export", "report", "evaluate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", *STAGES):
        s = sub.add_parser(name, help="all stages" if name == "run" else f"the {name} stage")
        s.add_argument("config", help="run config YAML (e.g. configs/easyvqa.yaml)")
        s.add_argument("--workdir", default=".", help="where data/, checkpoints/, export/, runs/ go (default: .)")
        if name in ("fit", "tune"):
            s.add_argument("--force", action="store_true", help="recompute even if cached")
        if name in ("run", "collect"):
            g = s.add_argument_group("distributed collection (override the config's collect section)")
            g.add_argument("--devices", help="processes per node: an int, 'auto', or device indices '0,1'")
            g.add_argument("--strategy", help="Lightning strategy: ddp (re-runs this command per process) or ddp_spawn")
            g.add_argument("--num-nodes", type=int, help="nodes taking part (default 1)")
            g.add_argument("--accelerator", help="cpu, gpu or auto")
    s = sub.add_parser("search", help="hyperparameter search: one router trained per Optuna trial; exports the best",
                       description="Hyperparameter search over the config's search section. Start the same "
                                   "command N times (any machines sharing --storage) to run N workers on one "
                                   "study; each runs trials until the study holds n_trials, and the outputs and "
                                   "export are written once the study is done.")
    s.add_argument("config", help="run config YAML (e.g. configs/easyvqa.yaml)")
    s.add_argument("--workdir", default=".", help="where data/, checkpoints/, export/, runs/ go (default: .)")
    s.add_argument("--storage", help="SQLAlchemy URL of the study storage (default sqlite:///<workdir>/data/<run>/optuna.db), "
                                     "e.g. postgresql+psycopg2://user:pass@host:5432/db")
    s.add_argument("--study", help="study name (default: <run>-search-<mode>-<digest of the settings>)")
    s.add_argument("--n-trials", type=int, help="total trials over all workers (default: search.n_trials)")
    s.add_argument("--pick", type=int, metavar="N", help="export trial N (e.g. a Pareto point from front.md) "
                                                        "instead of the best trial")
    s.add_argument("--no-export", action="store_true", help="only run trials and write the plots and tables")
    s.add_argument("--worker-index", type=int, help="sampler seed = search.seed + this (default: a random seed, "
                                                    "so identical workers explore differently)")
    s.add_argument("--threads", type=int, help="torch CPU threads of each worker (default: cores / search.workers)")
    r = sub.add_parser("route", help="route one query with an exported router (no torch needed)")
    r.add_argument("--artifact", required=True, help="export folder with manifest.json and router.onnx")
    r.add_argument("--image", required=True)
    r.add_argument("--question", required=True)
    r.add_argument("--uplink-mbps", type=float, default=None, help="current uplink bandwidth (Mbit/s)")
    r.add_argument("--rtt-s", type=float, default=None, help="current network round trip (s)")
    r.add_argument("--max-pixels", type=int, default=None,
                   help="pixel budget: refuse a larger image before decoding it (default 64000000; 0: none)")
    r.add_argument("--ood-max-score", type=float, default=None,
                   help="out-of-distribution limit, 0..1 (default: the manifest's, router-val's 99%% quantile)")
    r.add_argument("--ood-policy", choices=("route", "cloud"), default=None,
                   help="above the limit: route as usual (flagged) or send to the cloud (default: the manifest's)")
    v = sub.add_parser("serve", help="OpenAI-compatible routing gateway in front of the artifact's models "
                                     "(needs the serve extra)")
    v.add_argument("--artifact", required=True, help="export folder with manifest.json and router.onnx")
    v.add_argument("--endpoints", required=True, help="endpoints.yaml: each model's URL or in-process backend")
    v.add_argument("--host", default=None, help="address to bind (default: the file's server.host, 127.0.0.1)")
    v.add_argument("--port", type=int, default=None, help="port (default: the file's server.port, 8080)")
    v.add_argument("--decision-log", default=None, help="JSONL decision log (default: the file's decision_log.path)")
    return p


def _devices(value: str | None):
    """--devices: "4" -> 4, "0,1" -> [0, 1], "auto" stays."""
    if value is None or "," not in value:
        return value
    return [int(v) for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("router_training").setLevel(logging.INFO)
    from PIL import Image

    try:
        return _run(args)
    # bad input (config, files, images, artifacts): a message, not a traceback; DecompressionBombError
    # (an image over Pillow's pixel limit) is neither a ValueError nor an OSError
    except (ValueError, OSError, Image.DecompressionBombError) as e:
        print(f"router-train: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a runtime-only install running a training stage
        if args.command == "serve" and e.name in ("starlette", "uvicorn", "httpx", "h11", "anyio"):
            print(f"router-train: {e}; `serve` needs the gateway's dependencies: pip install 'router-training[serve]'",
                  file=sys.stderr)
            return 2
        print(f"router-train: {e}; `{args.command}` needs the training dependencies: "
              f"pip install 'router-training[train]' (the runtime alone needs numpy, pillow, onnxruntime)",
              file=sys.stderr)
        return 2


# Lightning's set-up chatter and advertising, not information about this run
_NOISE = ("litlogger", "Tip: For seamless cloud logging", "GPU available:", "TPU available:", "HPU available:",
          "LOCAL_RANK:")


def _drop_noise(record: logging.LogRecord) -> bool:
    return not any(n in record.getMessage() for n in _NOISE)


def _one_line_per_message() -> None:
    """Lightning gives the "lightning" logger a console handler of its own and lets it propagate to ours,
    so each of its messages printed twice: keep ours (one format) and drop its noise (``_NOISE``)."""
    import warnings

    import lightning

    # raised inside Lightning itself on every fit with this torch; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # a refit
    lg = logging.getLogger(lightning.__name__)
    for h in list(lg.handlers):
        lg.removeHandler(h)
    for h in logging.getLogger().handlers:
        h.addFilter(_drop_noise)


def _run(args) -> int:
    if args.command == "serve":
        from .serve.app import serve

        serve(args.artifact, args.endpoints, args.host, args.port, args.decision_log)
        return 0
    if args.command == "route":
        from .runtime import Router

        for name, v, low in (("--uplink-mbps", args.uplink_mbps, "> 0"), ("--rtt-s", args.rtt_s, ">= 0")):
            if v is not None and not ((v > 0 if low == "> 0" else v >= 0) and v < float("inf")):
                raise ValueError(f"{name} must be a finite number {low}, got {v}")
        router = Router.load(args.artifact)
        if args.max_pixels is not None:
            router.max_pixels = args.max_pixels or None
        router.ood_max_score, router.ood_policy = args.ood_max_score, args.ood_policy
        try:
            d = router.route(args.image, args.question, args.uplink_mbps, args.rtt_s)  # a path: JPEG draft decoding
        except OSError as e:  # Pillow's messages ("Truncated File Read") do not name the file
            raise OSError(f"{args.image}: {e}") from None
        limit, policy = router.ood_settings()
        profile = router.profile.with_network(args.uplink_mbps, args.rtt_s)
        lat, en = router.cost.costs(profile)
        print(json.dumps({"model": d.model, "tier": d.tier, "p_correct": d.scores,
                          "network": {"uplink_mbps": profile.uplink_mbps, "rtt_s": profile.rtt_s},
                          "expected_latency_s": dict(zip(router.models, lat.tolist())),
                          "expected_energy_j": dict(zip(router.models, en.tolist())),
                          "ood": {"score": d.ood_score, "max_score": limit, "flagged": d.ood, "policy": policy},
                          "warnings": d.warnings}, indent=2))
        for w in d.warnings:
            print(f"router-train route: warning: {w}", file=sys.stderr)
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here loads from a hub
    from . import config, pipeline

    _one_line_per_message()
    cfg = config.load(args.config, args.workdir)
    cmd = args.command
    if cmd in ("run", "collect"):
        try:
            over = {k: v for k, v in (("devices", _devices(args.devices)), ("strategy", args.strategy),
                                      ("num_nodes", args.num_nodes), ("accelerator", args.accelerator))
                    if v is not None}
            cfg.collect = dataclasses.replace(cfg.collect, **over)
        except ValueError as e:
            print(f"router-train: {e}", file=sys.stderr)
            return 2
    def fit(c):
        pipeline.stage_fit(c, force=args.force)

    stages = {  # command -> what it prints (None: nothing)
        "run": pipeline.run,
        "data": lambda c: pipeline.router_dataset(c).to_pandas().groupby(["split", "degradation"]).size()
        .unstack(fill_value=0),
        "reference": pipeline.stage_reference,
        "collect": lambda c: pipeline.stage_collect(c).groupby(["split", "model"])["score"].agg(["mean", "size"]),
        "features": lambda c: pipeline.stage_features(c).describe().T,
        "fit": fit,
        "tune": lambda c: json.dumps(pipeline.stage_tune(c, force=args.force), indent=2),
        "export": lambda c: json.dumps(pipeline.stage_export(c), indent=2),
        "report": pipeline.stage_report,
        "evaluate": pipeline.stage_report,  # the report stage is the evaluation harness
    }
    if cmd in stages:
        with pipeline.session():
            out = stages[cmd](cfg)
        if out is not None:
            print(out)
    elif cmd == "search":
        from . import search

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        try:
            with pipeline.session():
                summary = search.stage_search(cfg, storage=args.storage, study_name=args.study, n_trials=args.n_trials,
                                              pick=args.pick, export=not args.no_export,
                                              worker_index=args.worker_index, threads=args.threads)
        except search.SearchError as e:
            print(f"router-train: {e}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
