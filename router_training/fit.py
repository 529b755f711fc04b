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
from torch import nn

from . import outcomes
from .config import Config, RouterConfig
from .core import ood
from .core.features import FEATURE_NAMES, PIXEL_FEATURES, THUMBNAIL_SIDE
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


class Member(nn.Module):
    """One network of the router: signal columns float32 (n, S) and the thumbnail (n, 3, side, side) or
    None -> correctness logits (n, K). With the thumbnail, a small CNN (three 3x3 convolutions of 8, 16
    and ``image_embedding`` channels with ReLU, 2x2 max pooling after the first two, global max pooling)
    embeds it and the MLP sees the signals ++ that learned image embedding. Convolutions and global
    pooling recognise a shape or colour wherever it lies, which an MLP on the raw pixels cannot learn
    from a few thousand questions."""

    def __init__(self, n_signals: int, n_models: int, hidden: list, dropout: float, image_embedding: int):
        super().__init__()
        self.cnn = None
        if image_embedding:
            # ReLU: in onnxruntime a third cheaper than GELU's erf here. Pooling before the ReLU is the same
            # function (max and ReLU commute) on a quarter of the values; parameters keep indices 0, 3, 6.
            self.cnn = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                nn.Conv2d(16, image_embedding, 3, padding=1), nn.AdaptiveMaxPool2d(1), nn.ReLU(), nn.Flatten())
        layers, width = [], n_signals + (image_embedding if self.cnn is not None else 0)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_models))
        self.mlp = nn.Sequential(*layers)

    def forward(self, signals, image):
        if self.cnn is None:
            return self.mlp(signals)
        # channels-last: torch's CPU convolutions and pooling run about 1.7x faster on it (the same function;
        # the float rounding order differs, so training results move as with a seed)
        return self.mlp(torch.cat([signals, self.cnn(image.contiguous(memory_format=torch.channels_last))], 1))


class RouterNet(nn.Module):
    """Standardised features float32 (n, F) -> correctness logits (n, K): a deep ensemble of ``members``
    independently initialised ``Member`` networks, its P(correct) the mean of theirs (Lakshminarayanan
    et al., NeurIPS 2017); the logits returned are that mean's. On real grades one network's ranking
    of queries varies with its seed (BlindTest, threshold for 97% of cloud accuracy chosen on router-val,
    on router-test: five seeds gave edge share 0.36 to 0.46 at 96.7% to 98.1%); the mean of three
    varies less and ranks better (0.43 at 97.8%). The cost: ``members`` times the training time and
    about 0.15 ms more per ONNX decision.

    With ``n_pixels`` > 0 the last ``n_pixels`` columns are the THUMBNAIL_SIDE x THUMBNAIL_SIDE RGB
    thumbnail (``features.PIXEL_FEATURES``), which each member's CNN embeds; ``image_embedding`` 0 drops
    the thumbnail columns. Raises ValueError when ``n_pixels`` is neither 0 nor len(PIXEL_FEATURES)."""

    def __init__(self, n_features: int, n_models: int, hidden: list, dropout: float, n_pixels: int = 0,
                 image_embedding: int = 16, members: int = 1):
        super().__init__()
        if n_pixels and n_pixels != len(PIXEL_FEATURES):
            raise ValueError(f"n_pixels must be len(PIXEL_FEATURES) = {len(PIXEL_FEATURES)}, got {n_pixels}")
        self.n_signals = n_features - n_pixels
        embed = image_embedding if n_pixels else 0
        self.members = nn.ModuleList(Member(self.n_signals, n_models, hidden, dropout, embed) for _ in range(members))

    def member_logits(self, x):
        """Standardised features float32 (n, F) -> each member's logits, (members, n, K)."""
        x = x.clamp(-ood.CLIP, ood.CLIP)  # standardised inputs clipped (ood module docstring), in the ONNX graph too
        signals, image = x[:, :self.n_signals], None
        if x.shape[1] > self.n_signals:
            image = x[:, self.n_signals:].reshape(-1, 3, THUMBNAIL_SIDE, THUMBNAIL_SIDE)  # PIXEL_FEATURES: channel-first
        return torch.stack([m(signals, image) for m in self.members])

    @staticmethod
    def combine(z):
        """Members' logits (members, n, K) -> the ensemble's logits (n, K): the logit of the mean P."""
        if len(z) == 1:
            return z[0]
        p = torch.sigmoid(z).mean(0).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)

    def forward(self, x):
        return self.combine(self.member_logits(x))


class RouterModule(L.LightningModule):
    """Latency-energy-accuracy training of the complexity predictor.

    Per sample i and model m with logit z_im, p_im = sigmoid(z_im), observed VQA score s_im, latency
    l_im (s) and energy e_im (J):

    - correctness loss: BCE(z_im, s_im), averaged (with ``label_smoothing`` eps the targets are
      s_im * (1 - eps) + eps / 2); with ``members`` > 1 each member's BCE on its own logits in
      training, the ensemble's (``RouterNet.combine``) in validation;
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
        self.net = RouterNet(n_features, n_models, rc.hidden, rc.dropout, n_pixels, rc.image_embedding, rc.members)
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
        self.columns = columns  # the leading feature columns the network reads (None: all)
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
        wandb_options: dict | None = None) -> tuple[RouterModule, RouterDataModule]:
    """Train a router; the best epoch by ``val_loss`` is restored and saved as ``out_dir/best.ckpt``;
    training stops early after ``rc.patience`` epochs without a better ``val_loss`` (0: never).
    With ``loggers`` it logs to CSV and to wandb in offline mode under ``out_dir`` (``loggers="csv"``:
    CSV only; ``wandb_options``: further ``WandbLogger`` arguments, e.g. group, name, config, save_dir).
    An exception raised by a callback (e.g. ``optuna.TrialPruned``) propagates after the wandb run ends.
    Returns the trained module (eval mode) and its data module (for the standardisation)."""
    L.seed_everything(rc.seed, verbose=False)
    # all FEATURE_NAMES columns: the last ones are the thumbnail (a column subset, as baselines use, has none)
    n_pixels = len(PIXEL_FEATURES) if train.x.shape[1] == len(FEATURE_NAMES) else 0
    dm = RouterDataModule(train, val, rc.batch_size,
                          columns=train.x.shape[1] - n_pixels if n_pixels and not rc.image_embedding else None)
    lat, en = cost.costs()
    module = RouterModule(train.x.shape[1], train.score.shape[1], dict(rc.__dict__), lat.tolist(), en.tolist(),
                          cost.ref_latency_s, cost.ref_energy_j, n_pixels)
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
