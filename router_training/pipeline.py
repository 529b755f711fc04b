"""The stages of a run, each reusing what an earlier run left (``force`` recomputes):
data -> reference -> collect -> features -> fit -> tune -> export -> report."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import backends, data, features, fit, outcomes, policies, report, tune
from .config import Config
from .runtime import Router, expected_costs

log = logging.getLogger(__name__)
SPLITS = ("router-train", "router-val", "router-test")


def reference_dir(cfg: Config):
    return cfg.path("checkpoints") / "reference"


def stage_reference(cfg: Config) -> None:
    """Train the config's reference models that are not cached yet (in config order, so a model
    named by another's ``init`` option is trained first)."""
    from .reference import is_trained, train_reference

    def fingerprint(m):
        return {"options": m.options, "seed": cfg.dataset.seed, "limit_train_images": cfg.dataset.limit_train_images}

    todo = [m for m in cfg.models if m.backend == "reference"
            and not is_trained(reference_dir(cfg), m.name, fingerprint(m))]
    if not todo:
        return
    train = data.load_easyvqa("train", cfg.dataset.limit_train_images, cfg.dataset.seed)
    for m in todo:
        t0 = time.perf_counter()
        train_reference(m.name, m.options, train, data.answer_vocab(), reference_dir(cfg), cfg.dataset.seed,
                        fingerprint(m))
        log.info("trained reference model %s in %.0f s", m.name, time.perf_counter() - t0)


def make_backend(cfg: Config, name: str):
    m = next(m for m in cfg.models if m.name == name)
    if m.backend == "replay":
        raise ValueError(f"model {name!r} replays outcomes from {m.options.get('path')}; it has no backend to run")
    if m.backend == "reference":
        return backends.build("reference", name=m.name, weights=reference_dir(cfg) / f"{m.name}.safetensors")
    return backends.build(m.backend, name=m.name, **m.options)


def stage_collect(cfg: Config) -> pd.DataFrame:
    """Outcome table (all models, router splits) with latency_s and energy_j under the config's profile.
    Trains missing reference models first; ``replay`` models are read from their outcome files."""
    stage_reference(cfg)
    ds = data.build_router_dataset(cfg)
    root = cfg.path("data") / "outcomes"
    for m in cfg.models:
        if m.backend == "replay":  # outcomes from the user's file, no model is run
            outcomes.replay(ds, m.name, m.tier, m.options["path"], m.options.get("columns"), root / m.name)
        else:
            outcomes.collect(ds, m.name, m.tier, lambda name=m.name: make_backend(cfg, name), root / m.name)
    return outcomes.with_costs(outcomes.load(root, cfg.model_names), cfg.profile)


def stage_features(cfg: Config) -> pd.DataFrame:
    """Feature table: sample_id + ``features.FEATURE_NAMES`` (float32), cached in data/<run>/features.parquet.
    Image features are computed once per image."""
    path = cfg.path("data") / "features.parquet"
    if path.exists():
        return pd.read_parquet(path)
    ds = data.build_router_dataset(cfg)
    image_feats: dict[str, np.ndarray] = {}
    rows = []
    for r in tqdm(ds, desc="features", unit="q"):
        if r["image_id"] not in image_feats:
            image_feats[r["image_id"]] = features.image_features(r["image"])
        rows.append(np.concatenate([image_feats[r["image_id"]], features.text_features(r["question"])]))
    df = pd.DataFrame(np.stack(rows), columns=list(features.FEATURE_NAMES))
    df.insert(0, "sample_id", ds["sample_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return df


def load_splits(cfg: Config) -> tuple[pd.DataFrame, dict[str, fit.SplitArrays]]:
    table = stage_collect(cfg)
    feats = stage_features(cfg)
    return table, {s: fit.split_arrays(table, feats, cfg.model_names, s) for s in SPLITS}


def cloud_index(cfg: Config, split: fit.SplitArrays) -> int:
    """The all-cloud reference: the most accurate cloud model on router-train."""
    clouds = [k for k, t in enumerate(cfg.tiers) if t == "cloud"]
    return max(clouds, key=lambda k: split.score[:, k].mean())


def stage_fit(cfg: Config, force: bool = False, loggers: bool = True):
    """Train (or load) the router. Returns (module, spec); spec holds the cost spec and normalisation."""
    out = cfg.path("checkpoints") / "router"
    spec_path = out / "spec.json"
    if spec_path.exists() and (out / "best.ckpt").exists() and not force:
        return fit.RouterModule.load_from_checkpoint(out / "best.ckpt", weights_only=False).eval(), \
            json.loads(spec_path.read_text())
    table, splits = load_splits(cfg)
    spec = fit.cost_spec(splits["router-train"], table, cfg)
    module, dm = fit.fit(splits["router-train"], splits["router-val"], spec, cfg.router, out, loggers=loggers)
    spec["features"] = {"mean": dm.mean.tolist(), "std": dm.std.tolist()}
    spec_path.write_text(json.dumps(spec, indent=2))
    return module, spec


def predict(module, spec: dict, x: np.ndarray) -> np.ndarray:
    import torch

    mean, std = (np.asarray(spec["features"][k], dtype=np.float32) for k in ("mean", "std"))
    with torch.inference_mode():
        return torch.sigmoid(module(torch.from_numpy(((x - mean) / std).astype(np.float32)))).numpy()


def stage_tune(cfg: Config, force: bool = False) -> dict:
    """Thresholds and lambdas chosen on router-val; saved to data/<run>/decision.json."""
    path = cfg.path("data") / "decision.json"
    if path.exists() and not force:
        return json.loads(path.read_text())
    module, spec = stage_fit(cfg)
    _, splits = load_splits(cfg)
    val = splits["router-val"]
    db = cfg.path("data") / "optuna.db"
    if force and db.exists():
        db.unlink()
    decision = tune.tune(predict(module, spec, val.x), val, spec, cfg.tiers, cloud_index(cfg, splits["router-train"]),
                         cfg.tune, db, f"{cfg.name}-thresholds",
                         start={"lambda_latency": cfg.router.lambda_latency, "lambda_energy": cfg.router.lambda_energy})
    path.write_text(json.dumps(decision, indent=2))
    return decision


def stage_export(cfg: Config) -> dict:
    """ONNX + manifest in export/<run>/, then parity on router-test (max abs diff <= 1e-5 and identical
    decisions, else RuntimeError). Returns the parity dict."""
    from . import export

    module, spec = stage_fit(cfg)
    decision = stage_tune(cfg)
    _, splits = load_splits(cfg)
    out = cfg.path("export")
    mean, std = (np.asarray(spec["features"][k], dtype=np.float32) for k in ("mean", "std"))
    export.export(module, mean, std, spec, decision, out, extra={"name": cfg.name, "tuning": {
        "study": f"{cfg.name}-thresholds", "trial": decision["trial"], "target": cfg.tune.__dict__}})
    par = export.parity(module, mean, std, out, splits["router-test"].x)
    if par["max_abs_diff"] > 1e-5 or not par["same_decisions"]:
        raise RuntimeError(f"ONNX parity failed on router-test: {par}")
    return par


def stage_report(cfg: Config) -> str:
    """Report on router-test through the exported artifact (the runtime the device runs). Writes
    runs/<run>/report.md, report.json, sweep.png; returns the policy table (Markdown)."""
    table, splits = load_splits(cfg)
    test = splits["router-test"]
    router = Router.load(cfg.path("export"))
    cloud = cloud_index(cfg, splits["router-train"])
    probs = router.predict(test.x)
    assign = np.eye(len(cfg.models))[router.decide(probs)]
    rows = report.baseline_table(test, cfg.model_names, cfg.tiers, cloud, assign)
    d = router.manifest["decision"]
    lat, en = expected_costs(router.manifest, router.profile)
    sweep = []
    for t in np.linspace(0.0, 1.0, 41):
        thr = [t if tier == "edge" else 0.0 for tier in cfg.tiers]
        a = policies.make("router", probs=lambda s: probs, thresholds=thr, lambda_latency=d["lambda_latency"],
                          lambda_energy=d["lambda_energy"], ref_latency_s=d["ref_latency_s"],
                          ref_energy_j=d["ref_energy_j"], expected_latency_s=lat, expected_energy_j=en)(test)
        sweep.append({"threshold": float(t), **policies.metrics(a, test, cfg.tiers, cloud)})
    out = cfg.path("runs")
    out.mkdir(parents=True, exist_ok=True)
    report.sweep_plot(out / "sweep.png", {"router (threshold sweep)": sweep}, rows,
                      f"{cfg.name}: router-test, profile {cfg.profile.name}")
    info = data.build_router_dataset(cfg).select_columns(["sample_id", "degradation", "severity"]).to_pandas()
    by_deg = report.accuracy_by_degradation(table[table["split"] == "router-test"], info, cfg.model_names,
                                            cfg.dataset.severity)
    return report.write(out, rows, by_deg, {"sweep": sweep, "decision": d, "profile": cfg.profile.to_dict()})


def run(cfg: Config) -> str:
    """All stages; returns the report table."""
    stage_collect(cfg)
    stage_features(cfg)
    stage_fit(cfg)
    stage_tune(cfg)
    par = stage_export(cfg)
    log.info("ONNX parity on %d router-test samples: max abs diff %.2e, same decisions %s",
             par["n"], par["max_abs_diff"], par["same_decisions"])
    return stage_report(cfg)
