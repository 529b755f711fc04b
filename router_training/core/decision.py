"""The decision rule and what it needs, typed: shared by fit (the loss's prior cost), tune, the policies,
the guarantee, search, evaluate, export and the device runtime (numpy only).

- ``CostSpec``: per model its tier, mean compute time (s) and payload (bytes), measured on router-train;
  the deployment profile; the all-cloud reference latency (s) and energy (J) that normalise the costs.
  ``CostSpec.costs`` prices each model under a profile (the device's current network, a query's own
  payload).
- ``DecisionRule``: per-model thresholds and the latency / energy lambdas. ``DecisionRule.choose``
  applies ``decide``.
- ``decide``: each model m gets the predicted cost ``-p_m + lambda_latency * L_m / L_ref +
  lambda_energy * E_m / E_ref``; models whose p_m is below their threshold are not eligible (a model with
  threshold 0, a cloud model, always is); the eligible model with the lowest cost is chosen.

Both serialise to the JSON layout of ``manifest.json`` and ``spec.json`` (``to_dict`` / ``from_dict``), so
artifacts and caches written before these types read the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .profile import DeploymentProfile

# A threshold no predicted P(correct) (a probability, at most 1) ever reaches: the model it is given is
# never eligible. "Every query to model k" is the rule with k's threshold 0 and every other model's this.
NEVER_THRESHOLD = 1.01


def decide(probs: np.ndarray, latency_s: np.ndarray, energy_j: np.ndarray, thresholds: np.ndarray,
           lambda_latency: float, lambda_energy: float, ref_latency_s: float, ref_energy_j: float) -> np.ndarray:
    """Route a batch. ``probs`` float (n, K) predicted P(correct); ``latency_s``, ``energy_j`` float (K,)
    or (n, K) expected cost per model; ``thresholds`` float (K,) (0 for cloud models).
    Returns int64 (n,) indices into the model list. Raises ValueError when no model is ever eligible."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if not (thresholds <= 0).any():
        raise ValueError("at least one model (a cloud model) must have threshold 0 so every query has a route")
    cost = (-probs + lambda_latency * np.asarray(latency_s) / ref_latency_s
            + lambda_energy * np.asarray(energy_j) / ref_energy_j)
    cost = np.where(probs >= thresholds, cost, np.inf)
    return cost.argmin(axis=1)


@dataclass(frozen=True)
class ModelCost:
    """One model as the decision rule prices it: ``tier`` "edge" or "cloud", ``mean_compute_s`` (s) and
    ``mean_payload_bytes`` (bytes) over router-train, ``compute_source`` ("measured", or "configured:
    ..." when the times are the config's ``compute_s``)."""

    name: str
    tier: str
    mean_compute_s: float
    mean_payload_bytes: float
    compute_source: str = "measured"


@dataclass(frozen=True)
class CostSpec:
    """What the decision rule needs besides probabilities (module docstring). ``models`` in the model
    order of every (n, K) array."""

    models: tuple[ModelCost, ...]
    profile: DeploymentProfile
    ref_latency_s: float
    ref_energy_j: float

    @property
    def names(self) -> list[str]:
        """The models' names, in model order."""
        return [m.name for m in self.models]

    @property
    def tiers(self) -> list[str]:
        """The models' tiers ("edge" / "cloud"), in model order."""
        return [m.tier for m in self.models]

    def costs(self, profile: DeploymentProfile | None = None,
              payload_bytes: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-model expected latency (s) and energy (J), float64 (K,), from the mean compute time and
        payload under ``profile`` (default this spec's). ``payload_bytes`` (a scalar, or (n,) for n
        queries: then the arrays are (n, K)), when given, is what each query really sends off-device and
        replaces every model's mean payload (and the profile's ``request_bytes``)."""
        profile = profile or self.profile
        compute = [m.mean_compute_s for m in self.models]
        if payload_bytes is None:
            return profile.cost(self.tiers, compute, [m.mean_payload_bytes for m in self.models])
        payload = np.asarray(payload_bytes, dtype=np.float64)
        if profile.request_bytes is not None:  # the query's own size beats the profile's planning figure
            profile = dataclasses.replace(profile, request_bytes=None)
        return profile.cost(self.tiers, compute, payload[..., None] if payload.ndim else payload)

    def to_dict(self) -> dict:
        """The JSON layout of ``spec.json``: {"models": [...], "profile": {...}, "ref_latency_s", "ref_energy_j"}."""
        return {"models": [dataclasses.asdict(m) for m in self.models], "profile": self.profile.to_dict(),
                "ref_latency_s": self.ref_latency_s, "ref_energy_j": self.ref_energy_j}

    @classmethod
    def from_dict(cls, d: dict) -> "CostSpec":
        """From ``to_dict``'s layout (other keys, e.g. a fitted router's "features" and "settings", are
        ignored) or a manifest's (the references under "decision"). Raises KeyError for a missing key."""
        ref = d if "ref_latency_s" in d else d["decision"]
        return cls(tuple(ModelCost(**{k: m[k] for k in m if k in _MODEL_KEYS}) for m in d["models"]),
                   DeploymentProfile.from_dict(d["profile"]), float(ref["ref_latency_s"]), float(ref["ref_energy_j"]))


_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelCost)}


@dataclass(frozen=True)
class DecisionRule:
    """Per-model ``thresholds`` (K,) (0: always eligible; ``NEVER_THRESHOLD``: never) and the latency and
    energy weights of the predicted cost (``decide``)."""

    thresholds: tuple[float, ...]
    lambda_latency: float = 0.0
    lambda_energy: float = 0.0

    @classmethod
    def single_model(cls, model: int, n_models: int, lambda_latency: float = 0.0,
                     lambda_energy: float = 0.0) -> "DecisionRule":
        """Every query to model ``model``: its threshold 0, every other ``NEVER_THRESHOLD``."""
        return cls(tuple(0.0 if k == model else NEVER_THRESHOLD for k in range(n_models)), lambda_latency,
                   lambda_energy)

    @classmethod
    def edge_threshold(cls, threshold: float, tiers, lambda_latency: float = 0.0,
                       lambda_energy: float = 0.0) -> "DecisionRule":
        """One ``threshold`` for every edge model, 0 (always eligible) for every cloud model."""
        return cls(tuple(float(threshold) if t == "edge" else 0.0 for t in tiers), float(lambda_latency),
                   float(lambda_energy))

    def choose(self, probs: np.ndarray, cost: CostSpec, latency_s: np.ndarray | None = None,
               energy_j: np.ndarray | None = None) -> np.ndarray:
        """``decide`` with these thresholds and lambdas and ``cost``'s references: model indices int64 (n,)
        for ``probs`` (n, K); the expected costs default to ``cost.costs()``."""
        if latency_s is None or energy_j is None:
            latency_s, energy_j = cost.costs()
        return decide(probs, latency_s, energy_j, np.asarray(self.thresholds), self.lambda_latency,
                      self.lambda_energy, cost.ref_latency_s, cost.ref_energy_j)

    def chooser(self, cost: CostSpec, latency_s: np.ndarray, energy_j: np.ndarray):
        """``choose`` for one query at fixed expected costs ``latency_s``, ``energy_j`` float (K,), in plain
        Python: a function of the query's K probabilities (a sequence of floats) -> model index (int).
        It does ``decide``'s float64 operations in the same order and takes the first minimum, so it gives
        the same index; on a handful of models one numpy call costs more than the whole rule (the device
        runtime decides one query at a time). Raises ValueError as ``decide`` does."""
        if not any(t <= 0 for t in self.thresholds):
            raise ValueError("at least one model (a cloud model) must have threshold 0 so every query has a route")
        terms = [(float(t), self.lambda_latency * float(lat) / cost.ref_latency_s,
                  self.lambda_energy * float(en) / cost.ref_energy_j)
                 for t, lat, en in zip(self.thresholds, latency_s, energy_j)]

        def choose_one(probs) -> int:
            best, chosen = np.inf, 0  # no eligible model (NaN probabilities): index 0, as argmin of all-inf
            for k, (p, (t, lat_term, en_term)) in enumerate(zip(probs, terms)):
                if p >= t:
                    c = -p + lat_term + en_term
                    if c < best:
                        best, chosen = c, k
            return chosen

        return choose_one

    def to_dict(self) -> dict:
        """{"thresholds": [...], "lambda_latency", "lambda_energy"}: the layout of a manifest's decision."""
        return {"thresholds": [float(t) for t in self.thresholds], "lambda_latency": float(self.lambda_latency),
                "lambda_energy": float(self.lambda_energy)}

    @classmethod
    def from_dict(cls, d: dict) -> "DecisionRule":
        """From a decision's or a manifest decision's mapping (other keys ignored)."""
        return cls(tuple(float(t) for t in d["thresholds"]), float(d.get("lambda_latency", 0.0)),
                   float(d.get("lambda_energy", 0.0)))
