"""Wall time of outcome collection with two tiny random-weight transformers models (tests/tiny_vlms.py:
Idefics3 as edge, Qwen2-VL as cloud) on a 64-question folder dataset, on the CPU:

- one process (``outcomes.collect``, the default path of ``router-train collect``), and
- two processes (``distributed.collect``, strategy ddp_spawn on the CPU accelerator; includes starting
  the processes, which on a machine with few cores costs more than it saves).

Each mode collects into a fresh outcome folder and includes building the backends. Prints the measured
numbers; asserts nothing. On a small machine shared with other jobs, ``--threads 1`` can be much faster
than torch's default of one thread per core (threads waiting for each other on busy cores).

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python benchmarks/collect_tiny_vlms.py [--samples 64] [--batch-size 8]
        [--threads 1] [--skip-distributed]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tiny_vlms
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=64, help="questions (2 per image)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per generate call and per outcome part")
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the one-process run (default: torch's; Lightning gives each of the "
                        "two processes 1)")
    p.add_argument("--skip-distributed", action="store_true")
    args = p.parse_args()

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image, ImageDraw

    from router_training import config, data, distributed, outcomes, pipeline
    from tiny_vlms import build_idefics3, build_qwen2_vl

    root = Path(tempfile.mkdtemp(prefix="collect_tiny_vlms-"))
    try:
        models = {"edge": build_idefics3(root / "idefics3"), "cloud": build_qwen2_vl(root / "qwen2_vl")}
        (root / "images").mkdir()
        rows = []
        for i in range((args.samples + 1) // 2):
            rng = np.random.default_rng(i)
            im = Image.new("RGB", (96, 72), tuple(int(v) for v in rng.integers(0, 256, 3)))
            ImageDraw.Draw(im).ellipse((6, 6, 20 + i % 60, 18 + i % 50), fill=(255, 255, 255))
            im.save(root / "images" / f"{i:04d}.png")
            rows += [{"image": f"{i:04d}.png", "question": f"What color is the circle in picture {i}?",
                      "answers": ["white"]},
                     {"image": f"{i:04d}.png", "question": f"Is there a square in picture {i}?", "answers": ["no"]}]
        rows = rows[:args.samples]
        (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        opts = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
        cfg = config.from_dict({
            "name": "bench", "dataset": {"kind": "folder", "images_dir": "images", "questions": "questions.jsonl",
                                         "splits": {"router-train": 0.5, "router-val": 0.25, "router-test": 0.25}},
            "models": [{"name": "edge-idefics3", "tier": "edge", "backend": "transformers",
                        "options": {"model": str(models["edge"]), **opts}},
                       {"name": "cloud-qwen2vl", "tier": "cloud", "backend": "transformers",
                        "options": {"model": str(models["cloud"]), **opts}}],
            "profile": str(REPO / "configs" / "profiles" / "jetson_orin_lte.yaml"),
        }, base=root, workdir=root / "work")
        ds = data.build_router_dataset(cfg)
        print(f"{len(ds)} questions on {len(set(ds['image_id']))} images; models {cfg.model_names}; "
              f"batch size {args.batch_size}, max_new_tokens {args.max_new_tokens}; torch threads "
              f"{torch.get_num_threads()}, {os.cpu_count()} CPUs")

        def run(mode: str, collect_one) -> None:
            out = root / "work" / mode
            t0 = time.perf_counter()
            per_model = {}
            for m in cfg.models:
                t1 = time.perf_counter()
                collect_one(m, out / m.name)
                per_model[m.name] = time.perf_counter() - t1
            total = time.perf_counter() - t0
            t = outcomes.load(out, cfg.model_names)
            assert len(t) == len(ds) * len(cfg.models) and not t.duplicated(["sample_id", "model"]).any()
            print(f"{mode}: {total:.1f} s wall for {len(t)} outcome rows ({len(t) / total:.1f} rows/s); "
                  + ", ".join(f"{k} {v:.1f} s (backend compute {t.loc[t['model'] == k, 'compute_s'].sum():.1f} s)"
                              for k, v in per_model.items()))

        run("one-process", lambda m, out: outcomes.collect(
            ds, m.name, m.tier, functools.partial(pipeline.make_backend, cfg, m.name), out, batch_size=args.batch_size))
        if not args.skip_distributed:
            run("two-processes-ddp_spawn", lambda m, out: distributed.collect(
                ds, m.name, m.tier, functools.partial(pipeline.make_backend, cfg, m.name), out,
                batch_size=args.batch_size, devices=2, strategy="ddp_spawn", accelerator="cpu"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
