"""``manifest.json``, the artifact's description, typed: the one reader and writer of it (numpy-free).

Layout (JSON; ``Manifest.to_dict``): ``format``; ``features`` {version, names, mean, std, clip, min, max}
(``FeatureStats``: the standardisation and training range, len(names) each); ``ood`` {max_score, policy,
max_score_source}; ``models`` and ``profile`` (``CostSpec``); ``decision`` {thresholds, lambda_latency,
lambda_energy (``DecisionRule``), ref_latency_s, ref_energy_j (``CostSpec``), target_met, deployed};
``versions``; ``onnx_sha256``; and, when present, ``name``, ``tuning`` (study, trial, target,
guarantee), ``search`` (the trial ``router-train search`` chose) and ``network_grid`` (rules tuned per
uplink: ``tune.tune_grid``). Any other key is kept as it is (``extra``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .decision import CostSpec, DecisionRule

FORMAT = "router-training/1"
_REQUIRED = ("onnx_sha256", "features", "models", "profile", "decision")
_KNOWN = {"format", "features", "ood", "models", "profile", "decision", "versions", "onnx_sha256", "name", "tuning",
          "search", "network_grid"}


@dataclass(frozen=True)
class FeatureStats:
    """What the runtime needs of the training features: their ``version`` and ``names`` (must equal the
    runtime's ``features.FEATURE_VERSION`` / ``FEATURE_NAMES``), the standardisation ``mean`` and ``std``
    (floats, one per name), the ``clip`` applied inside the network, and router-train's range ``min`` /
    ``max`` (None for an artifact exported before the range was recorded: no OOD score then)."""

    version: int | None
    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: float | None = None
    min: tuple[float, ...] | None = None
    max: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        """The manifest's ``features`` section (``min`` / ``max`` only when recorded)."""
        d = {"version": self.version, "names": list(self.names), "mean": list(self.mean), "std": list(self.std),
             "clip": self.clip}
        if self.min is not None:
            d.update(min=list(self.min), max=list(self.max))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureStats":
        """From a manifest's ``features`` section. Raises KeyError without ``mean`` or ``std``."""
        rng = (tuple(d["min"]), tuple(d["max"])) if "min" in d else (None, None)
        return cls(d.get("version"), tuple(d.get("names", ())), tuple(d["mean"]), tuple(d["std"]), d.get("clip"), *rng)


@dataclass(frozen=True)
class Manifest:
    """The artifact's description (module docstring). ``cost`` and ``rule`` are the deployed decision;
    ``target_met`` / ``deployed`` whether tuning met its target and what was deployed instead when not."""

    features: FeatureStats
    cost: CostSpec
    rule: DecisionRule
    onnx_sha256: str
    ood: dict = field(default_factory=dict)
    target_met: bool = True
    deployed: str = "router"
    versions: dict = field(default_factory=dict)
    name: str = ""
    tuning: dict = field(default_factory=dict)
    search: dict | None = None
    network_grid: tuple[dict, ...] = ()
    format: str = FORMAT
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON layout of manifest.json (module docstring); optional sections only when set."""
        cost = self.cost.to_dict()
        d = {"format": self.format, "features": self.features.to_dict(), "ood": self.ood, "models": cost["models"],
             "profile": cost["profile"],
             "decision": {**self.rule.to_dict(), "ref_latency_s": cost["ref_latency_s"],
                          "ref_energy_j": cost["ref_energy_j"], "target_met": self.target_met, "deployed": self.deployed},
             "versions": self.versions, "onnx_sha256": self.onnx_sha256}
        for key in ("name", "tuning", "search", "network_grid"):
            value = getattr(self, key)
            if value:
                d[key] = list(value) if key == "network_grid" else value
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "Manifest":
        """Raises ValueError naming ``where`` when a required section is missing (not a router-training
        manifest)."""
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"{where}: no {', '.join(missing)}; not a router-training manifest "
                             "(re-export the router with `router-train export`)")
        dec = d["decision"]
        return cls(FeatureStats.from_dict(d["features"]), CostSpec.from_dict(d), DecisionRule.from_dict(dec),
                   d["onnx_sha256"], d.get("ood") or {}, bool(dec.get("target_met", True)), dec.get("deployed", "router"),
                   d.get("versions") or {}, d.get("name", ""), d.get("tuning") or {}, d.get("search"),
                   tuple(d.get("network_grid") or ()), d.get("format", FORMAT),
                   {k: v for k, v in d.items() if k not in _KNOWN})

    @classmethod
    def read(cls, path: str | Path) -> "Manifest":
        """Parse ``path`` (raises ValueError as ``from_dict``, and for a file that is not JSON)."""
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e}); re-export the router") from None
        return cls.from_dict(d, str(path))

    def write(self, path: str | Path) -> None:
        """Write ``to_dict`` as indented JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))
