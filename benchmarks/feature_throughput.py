"""Throughput of the router's hand-crafted features (``router_training.core.features``), one call at a time
as on the device: ``image_parts`` (the image features and the CNN's 32 px thumbnail) on square RGB
images of 64, 224 and 640 px, and
``question_features`` (hand-crafted text signals + hashed words) on short VQA questions.

What it measures: wall time of ``features.image_parts(image)`` per image (the images are
synthetic but photo-like, see ``_bench_common.synthetic_image``: gradients, shapes, blur, sensor noise;
already decoded RGB, so file decoding is not included) and of ``features.question_features(question)``
per question, in one process on one thread (numpy and Pillow here do not multi-thread these operations).
Each size is timed in ``--rounds`` rounds over ``--images`` distinct images; a round's rate is
images / seconds, and the table shows the median round (and the slowest-fastest range).

How to read it: the numbers that carry over to other machines are the ratios in the same run, not the
absolute rates. ``time x vs 64 px`` is how much longer one image takes than a 64 px image and
``pixels x`` how many more pixels it has. Above 64 px the pixel statistics run on a 64 px thumbnail and
a native 64 px crop (and the thumbnail is made from that 64 px view), so no step reads every pixel: time should grow much slower than
pixels (a fixed per-call cost, then one cheap pass over the image). The text row
compares one question with one 64 px image. The absolute rates depend on the CPU and on what else runs.

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python benchmarks/feature_throughput.py [--rounds 7] [--images 16]
    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python benchmarks/feature_throughput.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import time

import _bench_common as common


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224, 640], help="square image sides (px)")
    p.add_argument("--images", type=int, default=16, help="distinct images per size")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per size (median reported)")
    p.add_argument("--question-reps", type=int, default=200, help="passes over the questions per round")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 images, 2 rounds, 20 question passes")
    args = p.parse_args()
    if args.quick:
        args.images, args.rounds, args.question_reps = 4, 2, 20

    from router_training.core import features

    base = min(args.sizes)
    rows = []
    for size in sorted(set(args.sizes)):
        imgs = [common.synthetic_image(size, seed=i) for i in range(args.images)]
        for im in imgs[:1]:
            features.image_parts(im)  # warm-up (imports, allocator)
        per_round = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for im in imgs:
                features.image_parts(im)
            per_round.append((time.perf_counter() - t0) / len(imgs))
        rows.append((f"image {size}x{size} px", size * size, per_round))

    qs = list(common.QUESTIONS)
    features.question_features(qs[0])
    per_round = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(args.question_reps):
            for q in qs:
                features.question_features(q)
        per_round.append((time.perf_counter() - t0) / (args.question_reps * len(qs)))
    rows.append(("text (one question)", None, per_round))

    print(f"feature throughput{' (--quick: few images and rounds; noisy)' if args.quick else ''}: "
          f"{args.images} images per size, {args.rounds} rounds, {len(qs)} questions x {args.question_reps} "
          f"per round; {common.machine_line()}")
    ref_t = common.med(rows[0][2])
    ref_px = rows[0][1]
    head = (f"{'input':<22} {'per s (median)':>15} {'ms each':>9} {'range ms':>15} "
            f"{'time x vs ' + str(base) + ' px':>16} {'rate x vs ' + str(base) + ' px':>16} {'pixels x':>9}")
    print(head)
    print("-" * len(head))
    for name, px, ts in rows:
        t = common.med(ts)
        print(f"{name:<22} {1.0 / t:>15.1f} {1e3 * t:>9.3f} {common.spread(ts):>15} {t / ref_t:>16.3f} "
              f"{ref_t / t:>16.3f} {(f'{px / ref_px:.1f}' if px else '-'):>9}")


if __name__ == "__main__":
    main()
