"""The stages of a run, each reusing what an earlier run left (``force`` recomputes):
data -> reference -> collect -> features -> fit -> tune -> export -> report.

Within a ``session`` (``run`` and every CLI command open one) each stage's product is computed or read
once per config: a stage that needs an earlier one's reuses it instead of reading its files again."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import time

import datasets
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import backends, data, fit, outcomes, tune
from .config import Config
from .core import features
from .core.decision import CostSpec
from .core.manifest import Manifest
from .core.splits import SplitArrays
from .runtime import MANIFEST, ONNX_FILE, Router

log = logging.getLogger(__name__)
SPLITS = ("router-train", "router-val", "router-test")
_SESSION: contextvars.ContextVar[dict | None] = contextvars.ContextVar("router_training_session", default=None)


@contextlib.contextmanager
def session():
    """A scope in which every ``_once`` stage (the router dataset, the outcome table, the features, the
    splits, the fitted router, the decision) is computed or loaded once per config object. Re-entrant: an
    inner session uses the outer one's products."""
    if _SESSION.get() is not None:
        yield
        return
    token = _SESSION.set({})
    try:
        yield
    finally:
        _SESSION.reset(token)


def _once(fn):
    """``fn(cfg, ...)`` memoised per config inside a ``session`` (outside one it runs every time);
    ``force=True`` recomputes and replaces the memo. The products are shared: callers do not modify them."""
    forcible = "force" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        memo = _SESSION.get()
        key = (fn.__name__, id(cfg))
        if memo is None or (forcible and kwargs.get("force")) or key not in memo:
            out = fn(cfg, *args, **kwargs)
            if memo is None:
                return out
            memo[key] = out
        return memo[key]

    return wrapper


@_once
def router_dataset(cfg: Config):
    """The run's router dataset (``data.build_router_dataset``)."""
    return data.build_router_dataset(cfg)


def reference_dir(cfg: Config):
    """Folder of the run's trained reference models: checkpoints/<run>/reference/."""
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
    """The backend of model ``name`` (``backends.build``: a registered kind or "package.module:ClassName",
    given ``name`` and the model's options); reference models load from ``reference_dir``. Raises
    ValueError for a replay model (collected by ``outcomes.replay``) or a backend that cannot be resolved."""
    m = next(m for m in cfg.models if m.name == name)
    if m.backend == "replay":
        raise ValueError(f"model {name!r} replays outcomes from {m.options.get('path')}; it has no backend to run")
    if m.backend == "reference":
        return backends.build("reference", name=m.name, weights=reference_dir(cfg) / f"{m.name}.safetensors")
    return backends.build(m.backend, name=m.name, **m.options)


@_once
def stage_collect(cfg: Config) -> pd.DataFrame:
    """Outcome table (all models, router splits) with latency_s and energy_j under the config's profile.
    Trains missing reference models first; ``replay`` models are read from their outcome files.

    With a distributed ``collect`` section (``CollectConfig.distributed``) the models run on Lightning's
    distributed prediction (``distributed.collect``). A process started as a rank other than 0 (by
    Lightning's ``ddp`` re-running the command, or by a cluster launcher) takes part in every model's
    collection and then exits (SystemExit 0): only rank 0 goes on to the later stages."""
    from . import distributed

    ds = router_dataset(cfg)  # first: refuses a changed dataset section before anything is trained
    stage_reference(cfg)
    root = cfg.path("data") / "outcomes"
    cc = cfg.collect
    worker = cc.distributed and distributed.is_worker()
    grade = outcomes.grader(cfg.dataset.scorer, cfg.dataset.numeric_rel_tol)
    for m in cfg.models:
        if m.backend == "replay":  # outcomes from the user's file, no model is run
            if not worker:
                o = m.options
                _replay_stamp(root / m.name, m)
                outcomes.replay(ds, m.name, m.tier, o["path"], o.get("columns"), root / m.name,
                                model_column=o.get("model_column"), model_value=o.get("model_value", m.name),
                                compute_s=m.compute_s, grade=grade,
                                image_payload=functools.partial(image_payloads, cfg, ds))
        elif cc.distributed:
            distributed.collect(ds, m.name, m.tier, functools.partial(make_backend, cfg, m.name), root / m.name,
                                cc.batch_size, devices=cc.devices, strategy=cc.strategy or "ddp",
                                num_nodes=cc.num_nodes, accelerator=cc.accelerator, num_workers=cc.num_workers,
                                grade=grade)
        else:
            outcomes.collect(ds, m.name, m.tier, lambda name=m.name: make_backend(cfg, name), root / m.name,
                             batch_size=cc.batch_size, grade=grade)
    if worker:
        log.info("collection done in this worker process; rank 0 goes on")
        raise SystemExit(0)
    if cc.distributed:
        distributed.end_process_group()
    return outcomes.with_costs(outcomes.load(root, cfg.model_names), cfg.profile)


def _replay_stamp(out_dir, m) -> None:
    """Replayed outcomes are a pure function of the model's options, configured compute time and outcome
    file, and cheap to redo: when any changed since they were written (the file's content included), drop
    them so they are replayed again."""
    wanted = json.loads(json.dumps({"options": m.options, "compute_s": m.compute_s, "tier": m.tier,
                                    "sha256": data.file_digest(m.options["path"])}))
    stamp = out_dir / "replay.json"
    if stamp.exists() and json.loads(stamp.read_text()) != wanted:
        log.info("replay settings or outcome file of %s changed: replaying its outcomes again", m.name)
        for p in outcomes.parts(out_dir):
            p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(wanted, indent=2))


def image_payloads(cfg: Config, ds, image_ids: set) -> dict[str, int]:
    """Payload bytes of each image in ``image_ids`` (``outcomes.image_payloads``), computed once per image
    for every replayed model and kept in data/<run>/payload_bytes.parquet (image_id, payload_bytes)."""
    path = cfg.path("data") / "payload_bytes.parquet"
    known = dict(pd.read_parquet(path).itertuples(index=False)) if path.exists() else {}
    todo = set(image_ids) - set(known)
    if todo:
        known.update(outcomes.image_payloads(ds, todo))
        tmp = path.with_suffix(".tmp")
        pd.DataFrame({"image_id": list(known), "payload_bytes": list(known.values())}).to_parquet(tmp, index=False)
        tmp.rename(path)
    return known


@_once
def stage_features(cfg: Config) -> pd.DataFrame:
    """Feature table: sample_id + ``features.FEATURE_NAMES`` (float32), cached in
    data/<run>/features-v<FEATURE_VERSION>.parquet. Image features are computed once per image."""
    path = cfg.path("data") / f"features-v{features.FEATURE_VERSION}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    ds = router_dataset(cfg)
    per_image: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # image_id -> (image features, thumbnail)
    rows = []
    # undecoded cells: images.load decodes each image once, as the device does a file (a JPEG at draft scale)
    for r in tqdm(ds.cast_column("image", datasets.Image(decode=False)), desc="features", unit="q"):
        if r["image_id"] not in per_image:
            per_image[r["image_id"]] = features.image_parts(r["image"])
        img, pixels = per_image[r["image_id"]]
        rows.append(features.assemble(img, features.question_features(r["question"]), pixels))
    df = pd.DataFrame(np.stack(rows), columns=list(features.FEATURE_NAMES))
    df.insert(0, "sample_id", ds["sample_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return df


@_once
def load_splits(cfg: Config) -> tuple[pd.DataFrame, dict[str, SplitArrays]]:
    """(outcome table, {split: SplitArrays}) of the run."""
    table = stage_collect(cfg)
    feats = stage_features(cfg)
    return table, {s: fit.split_arrays(table, feats, cfg.model_names, s) for s in SPLITS}


def cloud_index(cfg: Config, split: SplitArrays) -> int:
    """The all-cloud reference: the most accurate cloud model on router-train."""
    clouds = [k for k, t in enumerate(cfg.tiers) if t == "cloud"]
    return max(clouds, key=lambda k: split.score[:, k].mean())


def settings(cfg: Config, *parts: str) -> dict:
    """The named config parts as plain JSON data: what a cached result was computed from."""
    return json.loads(json.dumps({p: getattr(cfg, p) for p in parts},
                                 default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o)))


def _digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def fit_settings(cfg: Config) -> dict:
    """What the fitted router depends on: dataset, models, profile, router settings, the feature version,
    whether its best epoch is chosen on router-val or (guarantee mode) on held-out router-train, and the
    content of the user's questions and outcome files (``data.input_files``)."""
    files = data.input_files(cfg)  # their content: a file edited in place retrains (absent for easy-VQA runs)
    return {**settings(cfg, "dataset", "models", "profile", "router"), "feature_version": features.FEATURE_VERSION,
            "best_epoch_on": "router-train holdout" if cfg.tune.guarantee else "router-val",
            **({"input_files": files} if files else {})}


@_once
def stage_fit(cfg: Config, force: bool = False, loggers: bool = True):
    """Train the router, or load it when it was trained with the same ``fit_settings``. The best epoch
    is chosen on router-val, or in guarantee mode (``tune.guarantee``) on a seeded fifth of router-train,
    so that router-val stays exchangeable with new data for the calibration. Returns (module, spec);
    spec holds the cost spec (``CostSpec.to_dict``'s keys; ``CostSpec.from_dict(spec)`` reads it), the
    normalisation ("features") and those settings ("settings")."""
    out = cfg.path("checkpoints") / "router"
    spec_path = out / "spec.json"
    wanted = fit_settings(cfg)
    if spec_path.exists() and (out / "best.ckpt").exists() and not force:
        spec = json.loads(spec_path.read_text())
        if spec.get("settings") == wanted:
            return fit.RouterModule.load_from_checkpoint(out / "best.ckpt", weights_only=False).eval(), spec
        log.info("what the router was trained from changed (settings or the questions / outcome files): refitting")
    table, splits = load_splits(cfg)
    cost = fit.cost_spec(splits["router-train"], table, cfg)
    spec = {**cost.to_dict(), "settings": wanted}
    train, val = splits["router-train"], splits["router-val"]
    if cfg.tune.guarantee:
        train, val = train.holdout(0.2, cfg.router.seed)
    module, dm = fit.fit(train, val, cost, cfg.router, out, loggers=loggers)
    spec["features"] = dm.stats  # mean, floored std, training range, OOD limit (``ood.stats``)
    spec_path.write_text(json.dumps(spec, indent=2))
    return module, spec


def predict(module, spec: dict, x: np.ndarray) -> np.ndarray:
    """Raw features float (n, F) -> P(correct) float32 (n, K), standardised with ``spec["features"]``
    (the torch twin of ``runtime.Router.predict``)."""
    import torch

    mean, std = (np.asarray(spec["features"][k], dtype=np.float32) for k in ("mean", "std"))
    with torch.inference_mode():
        return torch.sigmoid(module(torch.from_numpy(((x - mean) / std).astype(np.float32)))).numpy()


def study_name(cfg: Config, spec: dict) -> str:
    """One study per (fitted router, tune settings): a refit or a new target starts a new study in the
    same SQLite file, while an interrupted study resumes."""
    return f"{cfg.name}-thresholds-{_digest({'fit': spec['settings'], **settings(cfg, 'tune')})}"


@_once
def stage_tune(cfg: Config, force: bool = False) -> dict:
    """Thresholds and lambdas chosen on router-val (Optuna, or Learn-then-Test calibration with
    ``tune.guarantee``); saved to data/<run>/decision.json."""
    module, spec = stage_fit(cfg)
    path = cfg.path("data") / "decision.json"
    name = study_name(cfg, spec)
    if path.exists() and not force:
        decision = json.loads(path.read_text())
        if decision.get("study") == name:
            return decision
    table, splits = load_splits(cfg)
    val = splits["router-val"]
    db = cfg.path("data") / "optuna.db"
    if force and db.exists():  # drop this study only: the file also holds `router-train search` studies
        import optuna

        try:
            optuna.delete_study(study_name=name, storage=f"sqlite:///{db}")
        except KeyError:
            pass
    cloud = cloud_index(cfg, splits["router-train"])
    cost = CostSpec.from_dict(spec)
    if cfg.tune.guarantee:
        decision = tune.calibrated(predict(module, spec, val.x), val, cost, cfg.tiers, cloud, cfg.tune.guarantee,
                                   cfg.router.lambda_latency, cfg.router.lambda_energy, models=cfg.model_names)
    else:
        probs = predict(module, spec, val.x)
        decision = tune.tune(probs, val, cost, cfg.tiers, cloud, cfg.tune, db, name,
                             start={"lambda_latency": cfg.router.lambda_latency,
                                    "lambda_energy": cfg.router.lambda_energy}, models=cfg.model_names)
        # with a latency budget: thresholds tuned per uplink, which the runtime picks by the current estimate
        grid = tune.grid_for_run(probs, table, stage_features(cfg), cost, cfg, cloud, name,
                                 start=decision.get("params"))
        if grid:
            decision["network_grid"] = grid
    decision["study"] = name
    path.write_text(json.dumps(decision, indent=2))
    return decision


def stage_export(cfg: Config, chosen: dict | None = None, force: bool = False) -> dict:
    """ONNX + manifest in export/<run>/, then parity on router-test (max abs diff <= 1e-5 and identical
    decisions, else RuntimeError). Returns the parity dict. By default the configured router
    (``stage_fit``) with the thresholds of ``stage_tune``, cached: an artifact exported from the same
    checkpoint (sha256) and decision (study) is kept, with the parity it passed (checkpoints/<run>/router/
    export.json), unless ``force``. ``chosen`` (from ``search.chosen_router``: keys module, spec, decision,
    extra) exports a router trained by ``router-train search`` instead, with ``extra`` (study, trial,
    parameters) added to the manifest."""
    from . import export

    stamp_path, stamp = cfg.path("checkpoints") / "router" / "export.json", None
    if chosen is None:
        module, spec = stage_fit(cfg)
        decision = stage_tune(cfg)
        ckpt = cfg.path("checkpoints") / "router" / "best.ckpt"
        stamp = {"study": decision["study"], "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
        kept = json.loads(stamp_path.read_text()) if stamp_path.exists() and not force else {}
        if {k: kept.get(k) for k in stamp} == stamp and _artifact_sha(cfg) == kept.get("onnx_sha256"):
            return kept["parity"]
        target = settings(cfg, "tune")["tune"]
        if "guarantee" in decision:  # the Optuna target is not used then
            target = {"guarantee": target["guarantee"]}
        extra = {"tuning": {"study": decision["study"], "trial": decision["trial"], "target": target,
                            **({"guarantee": decision["guarantee"]} if "guarantee" in decision else {})}}
        if decision.get("network_grid"):
            extra["network_grid"] = decision["network_grid"]
    else:
        module, spec, decision, extra = chosen["module"], chosen["spec"], chosen["decision"], chosen["extra"]
    _, splits = load_splits(cfg)
    out = cfg.path("export")
    stamp_path.unlink(missing_ok=True)  # the artifact is about to change
    mean, std = (np.asarray(spec["features"][k], dtype=np.float32) for k in ("mean", "std"))
    export.export(module, mean, std, spec, decision, out, extra={"name": cfg.name, **extra})
    par = export.parity(module, mean, std, out, splits["router-test"].x)
    if par["max_abs_diff"] > 1e-5 or not par["same_decisions"]:
        raise RuntimeError(f"ONNX parity failed on router-test: {par}")
    if stamp is not None:
        stamp_path.write_text(json.dumps({**stamp, "onnx_sha256": _artifact_sha(cfg), "parity": par}, indent=2))
    return par


def _artifact_sha(cfg: Config) -> str | None:
    """The sha256 the exported artifact's manifest records for its ONNX file (None: no artifact, or one
    whose ONNX file does not match it)."""
    out = cfg.path("export")
    try:
        recorded = Manifest.read(out / MANIFEST).onnx_sha256
        return recorded if hashlib.sha256((out / ONNX_FILE).read_bytes()).hexdigest() == recorded else None
    except (OSError, ValueError):
        return None


def stage_report(cfg: Config, bootstrap: int = 1000, baselines: bool = True) -> str:
    """Evaluate the exported router on router-test (``evaluate.evaluate``), with the baselines unless
    ``baselines`` is False: writes runs/<run>/; returns the main policy table (Markdown)."""
    from . import evaluate

    manifest = Router.load(cfg.path("export")).manifest
    if manifest.search:  # kept: `search` chose it; the report names it
        log.warning("evaluating the router exported by `router-train search` (study %s, trial %s); "
                    "`router-train export` re-exports the configured one", manifest.search["study"],
                    manifest.search["trial"])
    elif manifest.tuning.get("study") != stage_tune(cfg).get("study"):
        log.info("the exported router predates the current config: re-exporting")
        stage_export(cfg)
    table, splits = load_splits(cfg)
    ds = router_dataset(cfg)
    cols = ["sample_id", "degradation", "severity", "question", *(["group"] if "group" in ds.column_names else [])]
    info = ds.select_columns(cols).to_pandas()
    info["empty_question"] = info.pop("question").str.strip() == ""
    if "group" not in info:  # a router dataset built before split_by: grouped by image
        info["group"] = ds["image_id"]
    return evaluate.evaluate(cfg, table, stage_features(cfg), splits, cloud_index(cfg, splits["router-train"]),
                             info, cfg.path("runs"), bootstrap,
                             fit_settings(cfg) if baselines else None)


def run(cfg: Config) -> str:
    """All stages, in one ``session``; returns the report table."""
    with session():
        stage_collect(cfg)
        stage_features(cfg)
        stage_fit(cfg)
        stage_tune(cfg)
        par = stage_export(cfg)
        log.info("ONNX parity on %d router-test samples: max abs diff %.2e, same decisions %s",
                 par["n"], par["max_abs_diff"], par["same_decisions"])
        return stage_report(cfg)
