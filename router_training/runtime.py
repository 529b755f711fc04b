"""On-device router runtime: numpy, pillow and onnxruntime only (no torch).

An artifact folder holds ``router.onnx`` (standardised features -> per-model probability of a correct
answer) and ``manifest.json`` (feature names and normalisation, models with tiers and mean compute
time / payload, decision thresholds and lambdas, deployment profile, versions, the ONNX file's sha256).

Decision rule: ``core.decision`` (``DecisionRule`` with the manifest's ``CostSpec``), the expected
latency and energy under the current deployment profile. A manifest may also hold ``network_grid``:
thresholds and lambdas tuned on router-val per uplink (``tune.tune_grid``); the rule then uses those of
the current uplink (``Router.decision_at``). The cloud's expected cost uses a query's own payload when
the caller gives it (the gateway: the request body), else the manifest's mean.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .core import features, images, ood
from .core.decision import DecisionRule
from .core.manifest import Manifest

MANIFEST = "manifest.json"
ONNX_FILE = "router.onnx"


@dataclass
class Decision:
    """A routing decision: the chosen ``model`` name and its ``tier``; ``scores`` maps each model to
    its predicted probability of answering correctly; ``ood_score`` the query's out-of-distribution
    score (``ood.ood_score``: share of features outside the training range, 0..1; None for an artifact
    exported without the training range) and ``ood`` whether it is above the router's limit;
    ``warnings`` what the caller should know (an empty question, an out-of-distribution query and what
    the policy did with it)."""

    model: str
    tier: str
    scores: dict
    ood_score: float | None = None
    ood: bool = False
    warnings: list = field(default_factory=list)


class Router:
    """A loaded router artifact. Use ``Router.load(folder)`` then ``route(image, question)``.

    Device settings, plain attributes a deployment may set after ``load``: ``max_pixels`` (the pixel
    budget: ``route`` refuses a larger image with ``images.ImageTooLarge`` before decoding it; None: no
    budget); ``ood_max_score`` (the out-of-distribution limit; None: the manifest's ``ood.max_score``,
    router-val's 99% quantile) and ``ood_policy`` ("route": route as usual and flag the decision;
    "cloud": send a query above the limit to the cloud; None: the manifest's ``ood.policy``)."""

    max_pixels: int | None = images.DEFAULT_MAX_PIXELS
    ood_max_score: float | None = None
    ood_policy: str | None = None

    def __init__(self, manifest: Manifest, session):
        self.manifest = manifest
        self.session = session
        self.cost, self.rule = manifest.cost, manifest.rule
        self.models, self.tiers, self.profile = self.cost.names, self.cost.tiers, self.cost.profile
        self.mean = np.asarray(manifest.features.mean, dtype=np.float32)
        self.std = np.asarray(manifest.features.std, dtype=np.float32)
        self._costs = self.cost.costs()  # at the profile's own network figures
        self._input = session.get_inputs()[0].name
        # thresholds tuned on router-val per uplink (tune.tune_grid), ascending; [] = the decision's alone
        self._grid = sorted(manifest.network_grid, key=lambda g: g["uplink_mbps"])
        self._grid_rules = [DecisionRule.from_dict(g) for g in self._grid]
        # route()'s rule at the profile's network, in plain Python (None: the rule is invalid, so decide raises)
        try:
            self._choose_one = self.rule.chooser(self.cost, *self._costs)
        except ValueError:
            self._choose_one = None

    @classmethod
    def load(cls, path: str | Path) -> "Router":
        """Load ``path/manifest.json`` and ``path/router.onnx``. Raises FileNotFoundError when either is
        missing, ValueError when the ONNX file's sha256 differs from the manifest's or the manifest's
        feature version or names differ from this runtime's ``features.FEATURE_VERSION`` /
        ``FEATURE_NAMES``."""
        import onnxruntime as ort

        path = Path(path)
        manifest_path, onnx_path = path / MANIFEST, path / ONNX_FILE
        for p in (manifest_path, onnx_path):
            if not p.is_file():
                raise FileNotFoundError(f"router artifact incomplete: {p} missing (run `router-train export`)")
        manifest = Manifest.read(manifest_path)
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        if digest != manifest.onnx_sha256:
            raise ValueError(f"{onnx_path}: sha256 {digest} does not match the manifest; re-export the router")
        version = manifest.features.version
        if version != features.FEATURE_VERSION:
            raise ValueError(f"the artifact was trained on other features (version {version}) than this runtime "
                             f"computes (version {features.FEATURE_VERSION}); re-export it with this version of "
                             "router-training")
        if list(manifest.features.names) != list(features.FEATURE_NAMES):
            raise ValueError(f"the artifact's feature names differ from this runtime's (both version {version}); "
                             "the manifest was edited or written by other code: re-export the router")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        return cls(manifest, ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"]))

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """Raw features float (n, F) -> predicted P(correct) float32 (n, K)."""
        x = ((np.atleast_2d(feats) - self.mean) / self.std).astype(np.float32, copy=False)
        return self.session.run(None, {self._input: x})[0]

    def decision_at(self, uplink_mbps: float | None = None) -> DecisionRule:
        """The decision rule in force at ``uplink_mbps`` (Mbit/s; None: the profile's). Without a
        ``network_grid`` in the manifest: the decision's own. With one (thresholds tuned on router-val per
        uplink): the entry of the largest grid uplink not above ``uplink_mbps`` (the smallest entry below
        the grid), so a target met at that uplink (a latency budget) holds at any faster one."""
        if not self._grid or uplink_mbps is None:
            return self.rule
        k = max([i for i, g in enumerate(self._grid) if g["uplink_mbps"] <= uplink_mbps], default=0)
        return self._grid_rules[k]

    def decide(self, probs: np.ndarray, uplink_mbps: float | None = None, rtt_s: float | None = None,
               payload_bytes: float | np.ndarray | None = None) -> np.ndarray:
        """Model indices (n,) for predicted probabilities (n, K); the current uplink (Mbit/s) and
        round trip (s), when given, replace the profile's (and choose the rule: ``decision_at``);
        ``payload_bytes`` (scalar or (n,)), when given, is what each query sends to a cloud model,
        replacing the manifest's mean payload in the cloud's expected cost."""
        lat, en = (self._costs if uplink_mbps is None and rtt_s is None and payload_bytes is None
                   else self.cost.costs(self.profile.with_network(uplink_mbps, rtt_s), payload_bytes))
        return self.decision_at(uplink_mbps).choose(probs, self.cost, lat, en)

    def route(self, image: Image.Image | str | Path, question: str, uplink_mbps: float | None = None,
              rtt_s: float | None = None, payload_bytes: float | None = None) -> Decision:
        """Decide where one query runs. ``image`` any PIL image or an image file's path, bytes or file
        object (``images.load``: any Pillow mode, EXIF orientation, a JPEG decoded at reduced scale, no
        copy of an RGB image that needs nothing); ``question`` a string, read by
        ``features.check_question`` (the data stage's rule: an empty one is routed with a warning).
        Returns a Decision with the query's out-of-distribution score; a query above the limit is sent
        to the cloud when the policy says so (class docstring).

        Raises images.ImageTooLarge above ``max_pixels`` (before decoding), features.QuestionError for a
        question the rule refuses, ValueError / OSError for an image that cannot be read.

        The cloud models' network cost is that of ``payload_bytes`` (what this query sends, e.g. the
        request body the gateway forwards) when given, else of the mean payload measured at collection
        (``Router.cost.models[k].mean_payload_bytes``), not this image's size."""
        feats, warning = features.query(image, question, self.max_pixels)
        feats = feats[None]
        probs = self.predict(feats)
        score = self.ood_scores(feats)
        limit, policy = self.ood_settings()
        flagged = score is not None and limit is not None and bool(score[0] > limit)
        warnings = [warning] if warning else []
        if flagged:
            warnings.append(f"out of distribution: score {score[0]:.3f} > limit {limit:.3f}; "
                            + ("sent to the cloud (ood policy 'cloud')" if policy == "cloud" else "routed as usual"))
        choose = np.where(self._cloud, probs, -np.inf) if flagged and policy == "cloud" else probs
        if self._choose_one is not None and uplink_mbps is None and rtt_s is None and payload_bytes is None:
            k = self._choose_one(choose[0].tolist())  # = decide(choose)[0]
        else:
            k = int(self.decide(choose, uplink_mbps, rtt_s, payload_bytes)[0])
        return Decision(self.models[k], self.tiers[k], dict(zip(self.models, probs[0].tolist())),
                        None if score is None else float(score[0]), flagged, warnings)

    def ood_scores(self, feats: np.ndarray) -> np.ndarray | None:
        """``ood.ood_score`` float64 (n,) of raw features float (n, F) against the manifest's training
        range; None when the artifact has none (exported before the range was recorded)."""
        if not hasattr(self, "_range"):
            f = self.manifest.features
            self._range = (None if f.min is None else
                           (np.asarray(f.min, dtype=np.float32), np.asarray(f.max, dtype=np.float32)))
            self._cloud = np.array([t == "cloud" for t in self.tiers])
        return None if self._range is None else ood.ood_score(feats, *self._range)

    def ood_settings(self) -> tuple[float | None, str]:
        """(limit, policy) in force: the attributes ``ood_max_score`` / ``ood_policy`` when set, else the
        manifest's ``ood`` section ("route" when it has none). Raises ValueError for another policy."""
        m = self.manifest.ood
        limit = self.ood_max_score if self.ood_max_score is not None else m.get("max_score")
        policy = self.ood_policy or m.get("policy") or "route"
        if policy not in ("route", "cloud"):
            raise ValueError(f"ood_policy must be 'route' or 'cloud', got {policy!r}")
        return limit, policy
