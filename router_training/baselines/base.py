"""The baselines' shared parts: ``Context`` (what a baseline needs besides router-train), the base classes
(``Baseline``, ``ScoreBaseline``, ``ProbBaseline``, ``Predicted``), the registry (``BASELINES``,
``register``, ``make``) and small helpers (``best_edge``, ``confidence_left_out``, ``quantile_knobs``).
No torch."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .. import metrics as M
from ..config import RouterConfig
from ..core.decision import CostSpec
from ..core.splits import SplitArrays


# ---------------------------------------------------------------------------------------------- context

@dataclass
class Context:
    """What baselines need besides router-train.

    ``tiers`` per-model tier ("edge" / "cloud"), config order; ``cloud`` index of the all-cloud reference
    (``pipeline.cloud_index``). ``questions``: sample_id -> question text, covering every split that is
    fitted or routed (``questions_by_sample(cfg)``); needed by the text baselines only. ``embed``: list of
    questions -> float (n, d) embeddings (default: ``reference.QuestionEncoder``, 384-d MiniLM, loaded on
    first use). ``val``: router-val, for model selection (best epoch); without it a seeded 20% of
    router-train is held out for ``fit.fit``. ``cost_spec``: ``fit.cost_spec`` (the project MLP's cost prior;
    derived from router-train means when None). ``router_config``: the project MLP's settings (default
    ``RouterConfig()``), with ``epochs`` overriding its epochs when not None. ``router``: the router the
    ``combined`` policy starts from (split -> (n, K) assignment, e.g. the tuned router). ``cost``: the cost
    column that orders models by price ("latency_s" or "energy_j").
    """

    tiers: Sequence[str]
    cloud: int
    questions: Mapping[str, str] | None = None
    embed: Callable[[list[str]], np.ndarray] | None = None
    val: SplitArrays | None = None
    cost_spec: CostSpec | None = None
    router_config: RouterConfig | None = None
    epochs: int | None = 20
    router: Callable[[SplitArrays], np.ndarray] | None = None
    cost: str = "latency_s"
    seed: int = 0
    _encoder: Callable | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.tiers = list(self.tiers)
        if "edge" not in self.tiers:
            raise ValueError("baselines need at least one edge-tier model")
        if not 0 <= self.cloud < len(self.tiers) or self.tiers[self.cloud] != "cloud":
            raise ValueError(f"cloud index {self.cloud} is not a cloud-tier model (tiers {self.tiers})")
        if self.cost not in ("latency_s", "energy_j"):
            raise ValueError(f"cost must be 'latency_s' or 'energy_j', not {self.cost!r}")

    def texts(self, split: SplitArrays) -> list[str]:
        """The questions of ``split`` in sample order. Raises ValueError without ``questions`` or when a
        sample has none."""
        if self.questions is None:
            raise ValueError("this baseline routes on the question text: pass Context(questions=...), "
                             "e.g. baselines.questions_by_sample(cfg)")
        missing = [s for s in split.sample_ids if s not in self.questions]
        if missing:
            raise ValueError(f"no question for sample {missing[0]!r} ({len(missing)} missing) in Context.questions")
        return [self.questions[s] for s in split.sample_ids]

    def embeddings(self, split: SplitArrays) -> np.ndarray:
        """float32 (n, d) question embeddings of ``split`` (``embed``, default MiniLM)."""
        texts = self.texts(split)
        if self.embed is None and self._encoder is None:
            from ..reference import QuestionEncoder

            self._encoder = QuestionEncoder()
        fn = self.embed or self._encoder
        out = np.asarray(fn(texts), dtype=np.float32)
        if out.ndim != 2 or len(out) != len(texts):
            raise ValueError(f"embed returned shape {out.shape} for {len(texts)} questions")
        return out


def questions_by_sample(cfg) -> dict[str, str]:
    """sample_id -> question of every row of the run's router dataset (``pipeline.router_dataset``)."""
    from .. import pipeline

    ds = pipeline.router_dataset(cfg).select_columns(["sample_id", "question"])
    return dict(zip(ds["sample_id"], ds["question"]))


def best_edge(s: SplitArrays, tiers: Sequence[str]) -> int:
    """Index of the edge-tier model with the highest mean score on ``s`` (lowest index on ties)."""
    edge = [k for k, t in enumerate(tiers) if t == "edge"]
    return edge[int(np.argmax(s.score[:, edge].mean(0)))]


CONFIDENCE_BASELINES = ("cascade", "combined")  # the baselines that read SplitArrays.confidence


def confidence_left_out(tiers: Sequence[str], train: SplitArrays, *splits: SplitArrays) -> dict[str, int]:
    """The confidence baselines that cannot run: name -> index of the edge model whose confidence
    (``SplitArrays.confidence``, NaN where a model's outcomes carry none) has a NaN on ``train`` or any
    of ``splits``. ``cascade`` reads router-train's best edge model (``best_edge(train)``); ``combined``
    reads every edge model a router may keep queries on, so it is left out when any edge model lacks
    confidence (the best edge model named first). Empty when every edge model has confidences."""
    edge = [k for k, t in enumerate(tiers) if t == "edge"]
    gaps = [k for k in edge if any(np.isnan(np.asarray(s.confidence[:, k], dtype=np.float64)).any()
                                   for s in (train, *splits))]
    if not gaps:
        return {}
    first = best_edge(train, tiers)
    out = {"cascade": first} if first in gaps else {}
    out["combined"] = first if first in gaps else gaps[0]
    return out


def _one_hot(idx: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(idx), k))
    out[np.arange(len(idx)), idx] = 1.0
    return out


def quantile_knobs(values: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """Sweep knobs: ``n`` quantiles of ``values`` (finite ones) and the endpoints, sorted, unique."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    qs = np.quantile(v, np.linspace(0.0, 1.0, n)) if len(v) else np.empty(0)
    return np.unique(np.r_[lo, qs, hi])


# ---------------------------------------------------------------------------------------------- base classes

class Baseline:
    """A baseline router: ``fit(train, ctx)``, then ``assign`` / ``metrics`` / ``knobs`` (the package docstring)."""

    name = "baseline"
    needs_text = False
    all_edge_knob: float | None = -2.0
    all_cloud_knob: float | None = 2.0

    def fit(self, train: SplitArrays, ctx: Context) -> "Baseline":
        if train.score.shape[1] != len(ctx.tiers):
            raise ValueError(f"split has {train.score.shape[1]} models but the context {len(ctx.tiers)} tiers")
        self.ctx, self.tiers, self.cloud = ctx, list(ctx.tiers), ctx.cloud
        self.edge = best_edge(train, self.tiers)
        self._cache: tuple | None = None
        self._fit(train)
        return self

    def _fit(self, train: SplitArrays) -> None:
        pass

    def _cached(self, split: SplitArrays, fn: Callable[[SplitArrays], object]):
        """``fn(split)``, remembered for the last split object (a sweep routes one split many times)."""
        if self._cache is None or self._cache[0] is not split:
            self._cache = (split, fn(split))
        return self._cache[1]

    def assign(self, split: SplitArrays, knob: float) -> np.ndarray:
        raise NotImplementedError

    def metrics(self, split: SplitArrays, knob: float, models: Sequence[str] | None = None) -> dict:
        return M.policy_metrics(self.assign(split, knob), split, self.tiers, self.cloud, models)

    def knobs(self, split: SplitArrays, n: int = 41) -> np.ndarray:
        return np.linspace(self.all_edge_knob, self.all_cloud_knob, n)


class ScoreBaseline(Baseline):
    """Routes sample i to edge model ``choice[i]`` when its edge score ``u[i] >= knob``, else to the cloud."""

    def edge_score(self, split: SplitArrays) -> tuple[np.ndarray, np.ndarray]:
        """(u float (n,), choice int (n,)): the edge score and the edge model it refers to."""
        return self._cached(split, self._edge_score)

    def _edge_score(self, split: SplitArrays) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def assign(self, split: SplitArrays, knob: float) -> np.ndarray:
        u, choice = self.edge_score(split)
        return _one_hot(np.where(u >= knob, choice, self.cloud), split.score.shape[1])

    def knobs(self, split: SplitArrays, n: int = 41) -> np.ndarray:
        return quantile_knobs(self.edge_score(split)[0], n, self.all_edge_knob, self.all_cloud_knob)


class ProbBaseline(ScoreBaseline):
    """A per-model correctness predictor ``probs(split)`` (n, K); edge score = the predicted gap
    ``max_e p_e - p_cloud`` over edge models e, choice = that argmax (the package docstring)."""

    def probs(self, split: SplitArrays) -> np.ndarray:
        raise NotImplementedError

    def _edge_score(self, split):
        p = np.asarray(self.probs(split), dtype=np.float64)
        edge = np.array([k for k, t in enumerate(self.tiers) if t == "edge"])
        j = p[:, edge].argmax(1)
        return p[np.arange(len(p)), edge[j]] - p[:, self.cloud], edge[j]


class Predicted(ProbBaseline):
    """An already trained per-model correctness predictor ``probs(split) -> (n, K)``, e.g. the exported
    router (``lambda s: router.predict(s.x)``), swept exactly like the baselines (``fit`` only records
    the context). Not in the registry: it needs the predictor."""

    def __init__(self, probs: Callable[[SplitArrays], np.ndarray]):
        self._probs = probs

    def probs(self, split):
        return self._probs(split)


# ---------------------------------------------------------------------------------------------- registry

BASELINES: dict[str, Callable[..., Baseline]] = {}


def register(name: str, **defaults):
    """Register a Baseline class (or factory) under ``name`` with default options."""
    def deco(cls):
        BASELINES[name] = functools.partial(cls, **defaults) if defaults else cls
        return cls
    return deco


def make(name: str, **options) -> Baseline:
    """An unfitted baseline by registered name; ``options`` override its defaults. Raises ValueError for
    unknown names."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    b = BASELINES[name](**options)
    b.name = name
    return b
