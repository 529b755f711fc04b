"""How router training time grows with the size of the outcome table: ``fit.fit`` (the real Lightning
path, loggers and progress bar off, checkpointing on as always) for 2 epochs on synthetic splits of
10k, 100k and 1M router-train rows, timing each epoch.

Two routers, each in its own table: the default router (``cnn``: all ``len(FEATURE_NAMES)`` columns, so
the thumbnail CNN of ``nets.ThumbnailCNN`` runs on the last ``len(PIXEL_FEATURES)``) and the router without
the thumbnail (``mlp``: the hand-crafted and word signals only, an MLP). The splits are
``core.splits.SplitArrays`` with those widths and 3 models (2 edge, 1 cloud), latency and energy from the
shipped Jetson Orin + LTE profile (``_bench_common.synthetic_split``); router-val has ``--val-fraction``
of the rows. The router is the default ``RouterConfig`` (MLP [64, 64], batch 256) with ``epochs=2``.
A size whose float32 feature matrix would exceed ``--max-gb`` is skipped and says so (with the
thumbnail a row holds 3,232 float32 features, 12.9 KB: 1M rows are 12.9 GB per copy, and training holds
the raw and the standardised copy).

What is timed, per epoch, with a Lightning callback: ``train`` = the optimisation steps (epoch start
to validation start), ``epoch`` = epoch start to epoch end (steps + validation + the best-checkpoint
save). The tables use the last epoch (the first can carry one-off warm-up costs; both are printed).
``fit total`` is the whole ``fit.fit`` call (data module, sanity check, 2 epochs, reloading the best
checkpoint); building the synthetic arrays is not included.

How to read it: ``x per 10x rows`` is the epoch time at a size divided by the epoch time at the size
10x smaller, measured in the same run. About 10 means cost grows linearly with rows (the per-step
cost dominates: steps per epoch = rows / batch size); well below 10 means fixed per-epoch costs
(validation set-up, checkpoint save) still dominate at the smaller size. ``us per row`` is the epoch
time divided by router-train rows; ``cnn / mlp`` is the CNN router's epoch time over the MLP's at the
same size. Absolute seconds depend on the CPU, torch threads and load.

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python benchmarks/router_training_scaling.py [--sizes 10000 100000 1000000]
        [--routers cnn mlp] [--threads N] [--batch-size 256] [--max-gb 6]
    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python benchmarks/router_training_scaling.py --quick   # 1k and 10k rows
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path

import _bench_common as common


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="router-train rows")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--val-fraction", type=float, default=0.1, help="router-val rows as a fraction of router-train")
    p.add_argument("--batch-size", type=int, default=None, help="default: RouterConfig's (256)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--routers", nargs="+", choices=["cnn", "mlp"], default=["cnn", "mlp"])
    p.add_argument("--max-gb", type=float, default=6.0, help="skip sizes whose float32 features exceed this")
    p.add_argument("--quick", action="store_true", help="smoke run: 1k and 10k rows")
    args = p.parse_args()
    if args.quick:
        args.sizes = [1_000, 10_000]

    import lightning as L
    import torch

    from router_training.config import RouterConfig
    from router_training.core.features import FEATURE_NAMES, PIXEL_FEATURES
    from router_training.core.decision import CostSpec
    from router_training.fit import fit

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")

    class EpochTimer(L.Callback):
        def __init__(self):
            self.start = self.val_start = None
            self.epochs: list[tuple[float, float]] = []  # (train steps s, whole epoch s)

        def on_train_epoch_start(self, trainer, module):
            self.start, self.val_start = time.perf_counter(), None

        def on_validation_start(self, trainer, module):
            if self.start is not None:  # not the sanity check
                self.val_start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            end = time.perf_counter()
            self.epochs.append(((self.val_start or end) - self.start, end - self.start))

    rc = RouterConfig(epochs=args.epochs)
    if args.batch_size:
        rc = dataclasses.replace(rc, batch_size=args.batch_size)
    spec = common.synthetic_spec()
    widths = {"cnn": len(FEATURE_NAMES), "mlp": len(FEATURE_NAMES) - len(PIXEL_FEATURES)}
    results: dict[str, list] = {r: [] for r in args.routers}
    skipped = []
    for router in args.routers:
        width = widths[router]
        for n in sorted(set(args.sizes)):
            gb = n * width * 4 / 1e9
            if gb > args.max_gb:
                skipped.append(f"{router}: {n:,} rows x {width} features = {gb:.1f} GB float32 > --max-gb {args.max_gb}")
                continue
            train = common.synthetic_split(n, seed=0, width=width)
            val = common.synthetic_split(max(1, int(n * args.val_fraction)), seed=1, width=width)
            timer = EpochTimer()
            with tempfile.TemporaryDirectory(prefix="router-scaling-") as tmp:
                t0 = time.perf_counter()
                fit(train, val, CostSpec.from_dict(spec), rc, Path(tmp), loggers=False, callbacks=[timer], progress=False)
                total = time.perf_counter() - t0
            del train, val
            results[router].append((n, max(1, int(n * args.val_fraction)), timer.epochs, total))
            print(f"  done: {router}, {n:,} rows, epochs {[round(e, 2) for _, e in timer.epochs]} s, "
                  f"fit total {total:.1f} s", flush=True)

    print(f"router training scaling{' (--quick: 1k/10k rows only)' if args.quick else ''}: fit.fit, "
          f"{args.epochs} epochs, 3 models, MLP {rc.hidden}, batch {rc.batch_size}, "
          f"val {args.val_fraction:.0%} of rows; {common.machine_line()}")
    mlp_epoch = {n: e[-1][1] for n, _, e, _ in results.get("mlp", [])}
    for router, rows in results.items():
        print(f"\n{router}: {widths[router]} features"
              + (f" (thumbnail CNN, embedding {rc.image_embedding})" if router == "cnn" else " (no thumbnail)"))
        head = (f"{'train rows':>11} {'val rows':>9} {'steps/epoch':>11} {'train s':>9} {'epoch s':>9} "
                f"{'epochs s (all)':>16} {'us per row':>10} {'x per 10x rows':>15} {'fit total s':>11} {'cnn / mlp':>9}")
        print(head)
        print("-" * len(head))
        prev = None
        for n, nv, epochs, total in rows:
            train_s, epoch_s = epochs[-1]
            ratio = "-"
            if prev is not None:
                pn, pe = prev  # sizes are distinct and sorted, so n > pn
                ratio = f"{(epoch_s / pe) ** (1.0 / math.log10(n / pn)):.2f}"
            vs = f"{epoch_s / mlp_epoch[n]:.2f}" if router == "cnn" and n in mlp_epoch else "-"
            print(f"{n:>11,} {nv:>9,} {-(-n // rc.batch_size):>11,} {train_s:>9.2f} {epoch_s:>9.2f} "
                  f"{'/'.join(f'{e:.2f}' for _, e in epochs):>16} {1e6 * epoch_s / n:>10.1f} {ratio:>15} "
                  f"{total:>11.1f} {vs:>9}")
            prev = (n, epoch_s)
    for line in skipped:
        print(f"skipped {line}")
    print("x per 10x rows: last-epoch time / the previous size's (normalised to a 10x step when sizes are "
          "not 10x apart); ~10 = linear in rows.")


if __name__ == "__main__":
    main()
