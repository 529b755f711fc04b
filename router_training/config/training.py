"""The ``router``, ``tune`` and ``collect`` sections: RouterConfig, TuneConfig (with GuaranteeConfig)
and CollectConfig."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import _build


@dataclass
class RouterConfig:
    """Complexity predictor and its latency-energy-accuracy loss (see ``fit.RouterModule``). ``arch``:
    the network (``nets``: a registered name or "package.module:ClassName"), built with ``arch_options``
    as keyword arguments; both are checked here, naming an unknown architecture or option."""

    arch: str = "thumbnail_cnn"
    arch_options: dict = field(default_factory=dict)
    hidden: list = field(default_factory=lambda: [64, 64])
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 60
    batch_size: int = 256
    lambda_latency: float = 0.2
    lambda_energy: float = 0.1
    cost_weight: float = 0.1
    temperature: float = 0.1
    label_smoothing: float = 0.0  # BCE targets s * (1 - eps) + eps / 2
    image_embedding: int = 16  # width of the CNN embedding of the thumbnail (nets.ThumbnailCNN); 0: no thumbnail
    patience: int = 10  # early stopping: epochs without a better val_loss before training stops; 0: off
    members: int = 3  # deep ensemble: networks averaged (nets.ThumbnailCNN); 1: a single network
    seed: int = 0

    def __post_init__(self):
        p = self.patience
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"router.patience must be an integer >= 0 (0: no early stopping), got {p!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"router.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        m = self.members
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"router.members must be an integer >= 1 (1: a single network), got {m!r}")
        e = self.image_embedding
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"router.image_embedding must be an integer >= 0 (0: no thumbnail CNN), got {e!r}")
        if not isinstance(self.arch, str) or not isinstance(self.arch_options, dict):
            raise ValueError(f"router.arch must be a string and router.arch_options a mapping, got "
                             f"{self.arch!r} and {self.arch_options!r}")
        from .. import nets  # torch: only where a router section is built

        nets.check_options(self.arch, self.arch_options)


@dataclass
class GuaranteeConfig:
    """Threshold calibration with a distribution-free guarantee (``guarantee.py``, Learn then Test):
    the accuracy lost against all-cloud on new data exceeds ``eps`` (VQA-accuracy points as a fraction,
    0.01 = one point) with probability at most ``delta``. ``transform``: "clip" (tighter when routed
    answers rarely beat the cloud's) or "shift" (see ``guarantee.to_unit``). ``resplits``: how many random
    router-val / router-test resplits the report's empirical check runs."""

    eps: float = 0.01
    delta: float = 0.1
    transform: str = "clip"
    resplits: int = 200

    def __post_init__(self):
        for key in ("eps", "delta"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"tune.guarantee.{key} must be a number, got {v!r}")
        if not 0 <= self.eps < 1 or not 0 < self.delta < 1:
            raise ValueError(f"tune.guarantee needs 0 <= eps < 1 and 0 < delta < 1, got eps {self.eps}, "
                             f"delta {self.delta}")
        if self.transform not in ("clip", "shift"):
            raise ValueError(f"tune.guarantee.transform must be 'clip' or 'shift', got {self.transform!r}")
        if not isinstance(self.resplits, int) or self.resplits < 1:
            raise ValueError(f"tune.guarantee.resplits must be a positive int, got {self.resplits!r}")


@dataclass
class TuneConfig:
    """Threshold search on router-val: keep ``min_cloud_accuracy_ratio`` of all-cloud accuracy (or, with
    ``max_accuracy_drop``, lose at most that many accuracy points as a fraction: 0.01 = one point below
    all-cloud; it replaces the ratio) and minimise ``minimize`` ("latency" or "energy"). When no trial
    meets the target, every query goes to the most accurate cloud model on router-val and the report
    says so at its top.

    With ``guarantee`` (a mapping of GuaranteeConfig fields, e.g. ``{eps: 0.01, delta: 0.1}``) the
    Optuna search is replaced by Learn-then-Test calibration on router-val: the lambdas stay the router
    section's, the edge threshold is the most permissive one certified, and the router's best epoch is
    chosen on a held-out fifth of router-train so router-val is untouched by training (the guarantee's
    exchangeability assumption, ``guarantee.py``).

    With ``max_latency_s`` (s) the target is instead the best router-val accuracy whose mean latency is
    within that budget (the accuracy keys and ``minimize`` do not apply). ``uplink_grid_mbps`` (Mbit/s)
    tunes the thresholds again at each of these uplinks, with router-val's latencies recomputed there,
    and stores them in the artifact (``tune.tune_grid``, manifest ``network_grid``) so the runtime uses
    the ones for its current uplink; None: (1, 2, 5, 10, 20, 50, 100) with ``max_latency_s`` (a budget
    is met only if the thresholds follow the network), no grid otherwise; [] no grid."""

    n_trials: int = 300
    min_cloud_accuracy_ratio: float | None = None  # None: 0.99 unless max_accuracy_drop is given
    max_accuracy_drop: float | None = None
    minimize: str = "latency"
    seed: int = 0
    guarantee: GuaranteeConfig | None = None
    max_latency_s: float | None = None
    uplink_grid_mbps: list | None = None

    def __post_init__(self):
        r, d = self.min_cloud_accuracy_ratio, self.max_accuracy_drop
        b = self.max_latency_s
        if b is not None:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not (0 < b < float("inf")):
                raise ValueError(f"tune.max_latency_s must be a finite number of seconds > 0, got {b!r}")
            if r is not None or d is not None:
                raise ValueError("tune: max_latency_s (best accuracy within a latency budget) replaces "
                                 "min_cloud_accuracy_ratio / max_accuracy_drop; give one target")
            if self.guarantee is not None:
                raise ValueError("tune: max_latency_s and guarantee are two different targets; give one")
        g = self.uplink_grid_mbps
        if g is not None:
            if not isinstance(g, (list, tuple)) or not all(
                    isinstance(u, (int, float)) and not isinstance(u, bool) and 0 < u < float("inf") for u in g):
                raise ValueError(f"tune.uplink_grid_mbps must be a list of uplinks in Mbit/s (> 0), got {g!r}")
            self.uplink_grid_mbps = sorted({float(u) for u in g})
        if r is not None and d is not None:
            raise ValueError("tune: give min_cloud_accuracy_ratio or max_accuracy_drop, not both")
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 2):
            raise ValueError(f"tune.min_cloud_accuracy_ratio must be a number in (0, 2], got {r!r}")
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1):
            raise ValueError(f"tune.max_accuracy_drop must be a fraction in [0, 1) (0.01 = one accuracy point), "
                             f"got {d!r}")
        if r is None and d is None and b is None:
            self.min_cloud_accuracy_ratio = 0.99
        if self.minimize not in ("latency", "energy"):
            raise ValueError(f"tune.minimize must be 'latency' or 'energy', got {self.minimize!r}")
        if isinstance(self.guarantee, dict):
            self.guarantee = _build(GuaranteeConfig, self.guarantee, "tune.guarantee")
        elif self.guarantee is not None and not isinstance(self.guarantee, GuaranteeConfig):
            raise ValueError(f"tune.guarantee must be a mapping such as {{eps: 0.01, delta: 0.1}}, got "
                             f"{self.guarantee!r}")

    def accuracy_floor(self, cloud_accuracy: float) -> float:
        """The least accuracy (a fraction) that meets the target, given all-cloud's ``cloud_accuracy``
        (0.0 under a latency budget, which has no accuracy floor)."""
        if self.max_latency_s is not None:
            return 0.0
        if self.max_accuracy_drop is not None:
            return cloud_accuracy - self.max_accuracy_drop
        return self.min_cloud_accuracy_ratio * cloud_accuracy

    def grid(self) -> list[float]:
        """The uplinks (Mbit/s) to tune thresholds at (``uplink_grid_mbps``, or its default)."""
        if self.uplink_grid_mbps is not None:
            return list(self.uplink_grid_mbps)
        return [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0] if self.max_latency_s is not None else []

    def target_text(self) -> str:
        """The target in words, e.g. "97% of all-cloud accuracy" or "at most 1 point below all-cloud"."""
        if self.max_latency_s is not None:
            return f"the best accuracy within a mean latency of {1e3 * self.max_latency_s:g} ms"
        if self.max_accuracy_drop is not None:
            return f"at most {100 * self.max_accuracy_drop:g} accuracy points below all-cloud"
        return f"{100 * self.min_cloud_accuracy_ratio:g}% of all-cloud accuracy"


@dataclass
class CollectConfig:
    """How outcomes are collected (``pipeline.stage_collect``). ``batch_size``: samples per backend call
    and per outcome part. By default one process runs the models (``outcomes.collect``); with
    ``devices`` other than 1, ``num_nodes`` > 1 or a ``strategy``, collection runs on Lightning's
    distributed prediction (``distributed.collect``): ``devices`` processes per node (an int, "auto" or a
    list of device indices), ``num_nodes`` nodes, ``strategy`` "ddp" (default then; re-runs the command
    per process) or "ddp_spawn", ``accelerator`` "cpu", "gpu" or "auto". ``num_workers``: DataLoader
    processes per rank that decode images. ``router-train collect/run --devices N --strategy S`` override."""

    devices: int | str | list = 1
    strategy: str | None = None
    num_nodes: int = 1
    accelerator: str = "auto"
    batch_size: int = 64
    num_workers: int = 0

    def __post_init__(self):
        if isinstance(self.devices, str) and self.devices.lstrip("-").isdigit():
            self.devices = int(self.devices)
        d = self.devices
        if not ((isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1)) or d == "auto"
                or (isinstance(d, list) and d and all(isinstance(i, int) for i in d))):
            raise ValueError(f"collect.devices must be a positive int, -1, 'auto' or a list of device indices, "
                             f"got {d!r}")
        for key in ("num_nodes", "batch_size"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"collect.{key} must be a positive int, got {v!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"collect.num_workers must be an int >= 0, got {self.num_workers!r}")
        if self.strategy is not None and not isinstance(self.strategy, str):
            raise ValueError(f"collect.strategy must be a Lightning strategy name such as 'ddp', got {self.strategy!r}")

    @property
    def distributed(self) -> bool:
        """Whether collection runs on Lightning's distributed prediction (else the single-process path)."""
        return self.devices != 1 or self.num_nodes > 1 or self.strategy is not None
