"""Sweeping a fitted baseline over its knob and comparing the registered ones: ``sweep``, ``summary``,
``available``, ``compare``."""

from __future__ import annotations

import logging
import time
from typing import Mapping, Sequence

from .. import metrics as M
from ..core.splits import SplitArrays
from .base import BASELINES, Baseline, Context, confidence_left_out, make

log = logging.getLogger(__package__)  # "router_training.baselines", as before the split


def sweep(b: Baseline, split: SplitArrays, knobs: Sequence[float] | None = None, n: int = 41,
          models: Sequence[str] | None = None) -> list[dict]:
    """``b.metrics`` at each knob (default ``b.knobs(split, n)``), each with a ``threshold`` key (the
    knob): the point list ``metrics.routing_summary`` takes."""
    knobs = b.knobs(split, n) if knobs is None else knobs
    return [{"threshold": float(k), **b.metrics(split, float(k), models)} for k in knobs]


def summary(points: Sequence[dict], split: SplitArrays, tiers: Sequence[str], cloud: int) -> dict:
    """``metrics.routing_summary`` (APGR on cloud share / latency / energy, CPT(50), CPT(80)) of a sweep,
    relative to ``split``'s references (best edge model and the all-cloud model)."""
    return M.routing_summary(points, M.references(split, tiers, cloud))


def available(ctx: Context) -> list[str]:
    """The registered baselines that can run with ``ctx``: the text ones only when it has questions."""
    return [nm for nm in BASELINES if ctx.questions is not None or not make(nm).needs_text]


def compare(train: SplitArrays, split: SplitArrays, ctx: Context, names: Sequence[str] | None = None, n: int = 41,
            options: Mapping[str, dict] | None = None, models: Sequence[str] | None = None,
            fitted: dict | None = None) -> dict:
    """Fit each baseline on ``train`` and sweep it on ``split``: name -> {"points": sweep dicts,
    "summary": ``summary``, "fit_s": seconds}. ``names`` default: every registered baseline, less the
    text ones when ``ctx.questions`` is None. ``options``: name -> options for ``make``. ``fitted``: a
    dict that receives name -> the fitted Baseline (to route with it again). The confidence baselines
    are skipped (never fitted on NaN) where ``confidence_left_out(ctx.tiers, train, split)`` names them."""
    names = available(ctx) if names is None else names
    skip = confidence_left_out(ctx.tiers, train, split)
    out = {}
    for nm in names:
        if nm in skip:
            log.info("baseline %s left out: edge model %d has no confidence", nm, skip[nm])
            continue
        t0 = time.perf_counter()
        b = make(nm, **(options or {}).get(nm, {})).fit(train, ctx)
        fit_s = time.perf_counter() - t0
        if fitted is not None:
            fitted[nm] = b
        points = sweep(b, split, n=n, models=models)
        out[nm] = {"points": points, "summary": summary(points, split, ctx.tiers, ctx.cloud), "fit_s": fit_s}
        log.info("baseline %s: APGR %.3f (fit %.1f s)", nm, out[nm]["summary"]["apgr"], fit_s)
    return out
