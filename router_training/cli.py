"""``router-train``: the pipeline's command line.

    router-train run CONFIG            all stages, printing the report table
    router-train STAGE CONFIG          one stage: data, reference, collect, features, fit, tune, export, report
    router-train route --artifact DIR --image PATH --question TEXT
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

STAGES = ("data", "reference", "collect", "features", "fit", "tune", "export", "report")


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
    r = sub.add_parser("route", help="route one query with an exported router (no torch needed)")
    r.add_argument("--artifact", required=True, help="export folder with manifest.json and router.onnx")
    r.add_argument("--image", required=True)
    r.add_argument("--question", required=True)
    r.add_argument("--uplink-mbps", type=float, default=None, help="current uplink bandwidth (Mbit/s)")
    r.add_argument("--rtt-s", type=float, default=None, help="current network round trip (s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "route":
        from PIL import Image

        from .runtime import Router

        d = Router.load(args.artifact).route(Image.open(args.image), args.question, args.uplink_mbps, args.rtt_s)
        print(json.dumps({"model": d.model, "tier": d.tier, "p_correct": d.scores}, indent=2))
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here loads from a hub
    from . import config, data, pipeline

    try:
        cfg = config.load(args.config, args.workdir)
    except (FileNotFoundError, ValueError) as e:
        print(f"router-train: {e}", file=sys.stderr)
        return 2
    cmd = args.command
    if cmd == "run":
        print(pipeline.run(cfg))
    elif cmd == "data":
        ds = data.build_router_dataset(cfg)
        print(ds.to_pandas().groupby(["split", "degradation"]).size().unstack(fill_value=0))
    elif cmd == "reference":
        pipeline.stage_reference(cfg)
    elif cmd == "collect":
        table = pipeline.stage_collect(cfg)
        print(table.groupby(["split", "model"])["score"].agg(["mean", "size"]))
    elif cmd == "features":
        print(pipeline.stage_features(cfg).describe().T)
    elif cmd == "fit":
        pipeline.stage_fit(cfg, force=args.force)
    elif cmd == "tune":
        print(json.dumps(pipeline.stage_tune(cfg, force=args.force), indent=2))
    elif cmd == "export":
        print(json.dumps(pipeline.stage_export(cfg), indent=2))
    elif cmd == "report":
        print(pipeline.stage_report(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
