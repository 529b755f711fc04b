"""Fit the complexity predictor: a small MLP from image/text features to each model's probability of a
correct answer, trained in Lightning with a latency-energy-accuracy loss."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from . import outcomes
from .config import Config, RouterConfig
from . import nets
from .core import ood
from .core.features import FEATURE_NAMES, PIXEL_FEATURES
from .core.decision import CostSpec, ModelCost
from .core.splits import SplitArrays


def split_arrays(table: pd.DataFrame, feats: pd.DataFrame, models: list[str], split: str) -> SplitArrays:
    """Arrays for ``split`` from an outcome table with costs (``outcomes.with_costs``) and the feature
    table (sample_id + FEATURE_NAMES). Raises ValueError when the split is empty or a sample lacks
    features or outcomes."""
    part = table[table["split"] == split]
    if part.empty:
        raise ValueError(f"split {split!r} has no outcome rows")
    ids = sorted(part["sample_id"].unique())
    f = feats.set_index("sample_id").reindex(ids)
    if f.isna().any().any():
        raise ValueError(f"sample {f.index[f.isna().any(axis=1)][0]!r} has no features; rerun `router-train features`")
    get = lambda col: outcomes.matrix(part, models, col, ids)  # noqa: E731
    # row-major (pandas gives column-major): training gathers rows, and gathering them column-major was
    # most of a thumbnail epoch's data time
    x = np.ascontiguousarray(f[list(FEATURE_NAMES)].to_numpy(np.float32))
    return SplitArrays(ids, x, get("score"), get("latency_s"),
                       get("energy_j"), outcomes.matrix(part, models, "confidence", ids, allow_nan=True))


def cost_spec(train: SplitArrays, table: pd.DataFrame, cfg: Config) -> CostSpec:
    """What the decision rule needs besides probabilities, measured on router-train: per model its tier,
    mean compute time (s), mean payload (bytes) and ``compute_source`` ("measured", or "configured: <the
    model config's compute_source>" when every compute time is the config's ``compute_s``); the all-cloud
    reference latency (s) and energy (J) (mean over router-train of the cheapest-latency cloud model);
    the deployment profile."""
    part = table[table["split"] == "router-train"]
    models = []
    for m in cfg.models:
        rows = part[part["model"] == m.name]
        configured = m.compute_s is not None and bool(np.all(rows["compute_s"].to_numpy() == m.compute_s))
        models.append(ModelCost(m.name, m.tier, float(rows["compute_s"].mean()), float(rows["payload_bytes"].mean()),
                                f"configured: {m.compute_source}" if configured else "measured"))
    cloud = [k for k, m in enumerate(cfg.models) if m.tier == "cloud"]
    ref = min(cloud, key=lambda k: train.latency_s[:, k].mean())
    return CostSpec(tuple(models), cfg.profile, float(train.latency_s[:, ref].mean()),
                    float(train.energy_j[:, ref].mean()))


class RouterModule(L.LightningModule):
    """Latency-energy-accuracy training of the complexity predictor: the network ``cfg["arch"]``
    (``nets.build``; its first ``n_features - n_pixels`` columns signals, then ``n_pixels`` thumbnail
    pixels) under this loss.

    Per sample i and model m with logit z_im, p_im = sigmoid(z_im), observed VQA score s_im, latency
    l_im (s) and energy e_im (J):

    - correctness loss: BCE(z_im, s_im), averaged (with ``label_smoothing`` eps the targets are
      s_im * (1 - eps) + eps / 2); with ``members`` > 1 each member's BCE on its own logits in
      training, the ensemble's (``nets.RouterNet.combine``) in validation;
    - realised cost c_im = -s_im + lambda_latency * l_im / L_ref + lambda_energy * e_im / E_ref, with
      L_ref, E_ref the all-cloud means on router-train;
    - soft routing distribution pi_i = softmax_m(-(-p_im + lambda_latency * Lbar_m / L_ref +
      lambda_energy * Ebar_m / E_ref) / temperature), the decision rule of ``decision.decide`` made
      differentiable (Lbar_m, Ebar_m: the model's expected cost, known before it runs);
    - loss = BCE + cost_weight * mean_i sum_m pi_im c_im (the expected cost of the soft routing).

    The second term is decision-focused: it moves probabilities where they change routing.
    """

    def __init__(self, n_features: int, n_models: int, cfg: dict, expected_latency_s, expected_energy_j,
                 ref_latency_s: float, ref_energy_j: float, n_pixels: int = 0):
        super().__init__()
        self.save_hyperparameters()
        rc = RouterConfig(**cfg)
        self.rc = rc
        self.net = nets.build(rc, n_features - n_pixels, n_pixels, n_models)
        self.register_buffer("prior_cost", torch.tensor(
            rc.lambda_latency * np.asarray(expected_latency_s) / ref_latency_s
            + rc.lambda_energy * np.asarray(expected_energy_j) / ref_energy_j, dtype=torch.float32))

    def forward(self, x):
        return self.net(x)

    def losses(self, batch, ensemble: bool = False):
        """(BCE, expected cost, loss, ensemble logits (n, K)) of a batch (class docstring)."""
        x, score, lat, en = batch
        members = self.net.member_logits(x)
        logits = self.net.combine(members)
        eps = self.rc.label_smoothing
        target = score * (1.0 - eps) + 0.5 * eps if eps else score
        # training: each member's own BCE, so each learns as it would alone; validation: the ensemble's
        bce = (F.binary_cross_entropy_with_logits(logits, target) if ensemble else
               F.binary_cross_entropy_with_logits(members, target.expand_as(members)))
        h = self.hparams
        realised = -score + self.rc.lambda_latency * lat / h.ref_latency_s + self.rc.lambda_energy * en / h.ref_energy_j
        pi = torch.softmax(-(-torch.sigmoid(logits) + self.prior_cost) / self.rc.temperature, dim=1)
        expected = (pi * realised).sum(1).mean()
        return bce, expected, bce + self.rc.cost_weight * expected, logits

    def training_step(self, batch, _):
        bce, expected, loss, _ = self.losses(batch)
        self.log_dict({"train_bce": bce, "train_expected_cost": expected, "train_loss": loss}, prog_bar=True)
        return loss

    def on_validation_epoch_start(self):
        self.val_probs = []  # router-val P(correct) (n_val, K) in row order, for callbacks (search.ValMetrics)

    def validation_step(self, batch, _):
        bce, expected, loss, logits = self.losses(batch, ensemble=True)
        self.val_probs.append(torch.sigmoid(logits).detach())
        self.log_dict({"val_bce": bce, "val_expected_cost": expected, "val_loss": loss}, prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.rc.lr, weight_decay=self.rc.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs))
        return [opt], [sched]


class RouterDataModule(L.LightningDataModule):
    """router-train / router-val arrays as tensors, standardised with router-train's mean and floored
    std (``ood.standard_scale``; the network clips the result to +-``ood.CLIP``). ``stats`` (``ood.stats``:
    mean, std, training range, default out-of-distribution limit from router-val) is what the exported
    manifest carries: store ``dm.stats`` as ``spec["features"]``."""

    def __init__(self, train: SplitArrays, val: SplitArrays, batch_size: int, columns: int | None = None):
        super().__init__()
        self.columns = columns  # the leading feature columns the network reads (nets.RouterNet.n_inputs; None: all)
        self.stats = ood.stats(train.x, val.x)
        self.mean = np.asarray(self.stats["mean"], dtype=np.float32)
        self.std = np.asarray(self.stats["std"], dtype=np.float32)
        self.sets = {k: self._tensors(s) for k, s in (("train", train), ("val", val))}
        self.batch_size = batch_size

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Raw features float (n, F) -> standardised float32 (n, F) (not yet clipped: the network clips)."""
        return ((x - self.mean) / self.std).astype(np.float32)

    def _tensors(self, s: SplitArrays):
        x = self.standardise(s.x)[:, :self.columns]  # a router without the CNN never reads the thumbnail
        return torch.utils.data.TensorDataset(*(torch.tensor(np.asarray(a), dtype=torch.float32) for a in
                                                (x, s.score, s.latency_s, s.energy_j)))

    def train_dataloader(self):
        return _Batches(self.sets["train"].tensors, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return _Batches(self.sets["val"].tensors, 4096, shuffle=False)


class _Batches:
    """Batches of a tuple of aligned tensors: consecutive slices of one permutation per epoch (torch's
    global generator, so ``seed_everything`` seeds it), each gathered in one indexing call. A DataLoader
    over a TensorDataset gathers row by row and stacks each batch: that was half of a search trial's time;
    gathering a permuted copy of the whole epoch at once cost a quarter of a thumbnail epoch (page faults
    of a fresh 66 MB tensor)."""

    def __init__(self, tensors: tuple, batch_size: int, shuffle: bool):
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self):
        data, n = self.tensors, len(self.tensors[0])
        if not self.shuffle:
            for i in range(0, n, self.batch_size):
                yield [t[i:i + self.batch_size] for t in data]
            return
        perm = torch.randperm(n)
        for i in range(0, n, self.batch_size):  # a batch-sized gather each: no epoch-sized copy to allocate
            rows = perm[i:i + self.batch_size]
            yield [t[rows] for t in data]


def fit(train: SplitArrays, val: SplitArrays, cost: CostSpec, rc: RouterConfig, out_dir: Path,
        loggers: bool | str = True, callbacks: list | None = None, progress: bool = True,
        wandb_options: dict | None = None, thumbnail: bool = True) -> tuple[RouterModule, RouterDataModule]:
    """Train a router (the network ``rc.arch``); the best epoch by ``val_loss`` is restored and saved as
    ``out_dir/best.ckpt``; training stops early after ``rc.patience`` epochs without a better ``val_loss``
    (0: never). ``thumbnail``: the columns of ``x`` are ``FEATURE_NAMES``, the thumbnail's
    ``PIXEL_FEATURES`` last (what the pipeline and the exported router use); False: ``x`` holds signal
    columns only (a baseline's subset). With ``loggers`` it logs to CSV and to wandb in offline mode under
    ``out_dir`` (``loggers="csv"``: CSV only; ``wandb_options``: further ``WandbLogger`` arguments, e.g.
    group, name, config, save_dir). An exception raised by a callback (e.g. ``optuna.TrialPruned``)
    propagates after the wandb run ends. Raises ValueError when ``thumbnail`` is set and ``x`` is not
    ``len(FEATURE_NAMES)`` wide. Returns the trained module (eval mode) and its data module (for the
    standardisation)."""
    if thumbnail and train.x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"features have {train.x.shape[1]} columns, expected {len(FEATURE_NAMES)} (FEATURE_NAMES, "
                         "thumbnail last); pass thumbnail=False for a subset of signal columns")
    L.seed_everything(rc.seed, verbose=False)
    n_pixels = len(PIXEL_FEATURES) if thumbnail else 0
    lat, en = cost.costs()
    module = RouterModule(train.x.shape[1], train.score.shape[1], dict(rc.__dict__), lat.tolist(), en.tolist(),
                          cost.ref_latency_s, cost.ref_energy_j, n_pixels)
    dm = RouterDataModule(train, val, rc.batch_size, columns=module.net.n_inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out_dir, filename="best", monitor="val_loss",
                                               enable_version_counter=False)
    # on real grades validation loss can bottom out within a few epochs and then climb: stop there
    stop = [L.pytorch.callbacks.EarlyStopping("val_loss", patience=rc.patience)] if rc.patience else []
    logs = False
    use_wandb = bool(loggers) and loggers != "csv"
    if loggers:
        logs = [L.pytorch.loggers.CSVLogger(out_dir, name="logs")]
    if use_wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")  # no per-run banner and summary in the CLI's output
        wb = L.pytorch.loggers.WandbLogger(**{"project": "router-training", "save_dir": str(out_dir),
                                              "offline": True, **(wandb_options or {})})
        # Lightning passes anonymous=None, which wandb >= 0.19 answers with a deprecation warning per run
        getattr(wb, "_wandb_init", {}).pop("anonymous", None)
        logs.append(wb)
    trainer = L.Trainer(max_epochs=rc.epochs, accelerator="cpu", logger=logs, log_every_n_steps=5,
                        callbacks=[ckpt, *stop, *(callbacks or [])], enable_model_summary=False,
                        enable_progress_bar=progress)
    try:
        trainer.fit(module, datamodule=dm)
    finally:
        if use_wandb:
            import wandb

            wandb.finish()
    best = RouterModule.load_from_checkpoint(ckpt.best_model_path, weights_only=False)
    return best.eval(), dm


@torch.inference_mode()
def predict(module: RouterModule, dm: RouterDataModule, x: np.ndarray) -> np.ndarray:
    """Raw features float (n, F) -> P(correct) float32 (n, K)."""
    return torch.sigmoid(module(torch.from_numpy(dm.standardise(x)))).numpy()
