"""Baseline routers to compare the learned router against, each trained on router-train of the same
outcome table and each with one scalar knob whose sweep traces an accuracy-vs-cloud-share curve
(for APGR / CPT, ``metrics.routing_summary``).

Interface
---------
``make(name, **options) -> Baseline`` (registry ``BASELINES``: name -> factory), then

- ``b.fit(train: SplitArrays, ctx: Context) -> b``: train on router-train; ``ctx`` carries the tiers,
  the all-cloud reference index, router-val (model selection), the cost spec and, for the text
  baselines, the question of every sample (``Context.questions``: sample_id -> question, e.g.
  ``questions_by_sample(cfg)``) and the question embedder (default: the bundled all-MiniLM-L6-v2,
  ``reference.QuestionEncoder``);
- ``b.assign(split, knob) -> (n, K)``: the assignment matrix of ``policies`` (row i: the probability
  of sending sample i to each model) at that knob; for ``cascade`` / ``combined`` the matrix of the
  model whose answer is *used*: right for accuracy and shares, not for costs (both models run);
- ``b.metrics(split, knob, models=None) -> dict``: ``metrics.policy_metrics`` keys (accuracy,
  pct_cloud_accuracy, edge_share, cloud_share, mean/p95 latency, mean energy, reductions, pgr, shares,
  share_<model>); cascades count both models' costs (``escalation_metrics``);
- ``b.knobs(split, n) -> array``: a sweep grid spanning all-edge to all-cloud (quantiles of the
  baseline's score on ``split``, as RouteLLM's ``evaluate.py`` sweeps quantile thresholds, plus the
  endpoints); ``b.all_edge_knob`` / ``b.all_cloud_knob``: knobs giving cloud share 0 / 1;
- ``sweep(b, split)``, ``summary(points, split, tiers, cloud)``, ``compare(train, split, ctx)``.

Binary routing. Routers choose between edge-tier models and the all-cloud reference ``ctx.cloud``
(other cloud models get no traffic). Per-model correctness predictors route sample i to the edge
model e_i with the highest predicted P(correct) when the predicted gap
``u_i = p[i, e_i] - p[i, cloud] >= knob``, else to the cloud: ranking queries by the predicted accuracy
lost on the edge is the accuracy-optimal order for a cloud-call budget when the predictions are
calibrated. Score baselines use ``all_edge_knob = -2`` and ``all_cloud_knob = 2`` (u lies in [-1, 1]).

Sources
-------
- Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", arXiv:2406.18665, 2024
  (BERT classifier and matrix-factorisation routers, similarity-weighted ranking, APGR / CPT sweeps;
  code ``routellm/routers/matrix_factorization/model.py``).
- Ding et al., "Hybrid LLM: Cost-Efficient and Quality-Aware Query Routing", ICLR 2024,
  arXiv:2404.14618 (routers on P(q(small) >= q(large) - t), deterministic / probabilistic labels).
- Shnitzer et al., "Large Language Model Routing with Benchmark Datasets", arXiv:2309.15789, 2023,
  and Hu et al., "RouterBench", arXiv:2403.12031, 2024 (kNN routers on query embeddings).
- Chen, Zaharia & Zou, "FrugalGPT", arXiv:2305.05176, 2023, and Varshney & Baral, "Model Cascading:
  Towards Jointly Improving Efficiency and Accuracy of NLP Systems", EMNLP 2022 (confidence cascades).
- Antol et al., "VQA: Visual Question Answering", ICCV 2015, and Kafle & Kanan, "An Analysis of Visual
  Question Answering Algorithms", ICCV 2017 (accuracy differs by question type: the type rule).
- Reimers & Gurevych, "Sentence-BERT", EMNLP 2019 (the MiniLM sentence embeddings).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics as M
from . import policies
from .config import RouterConfig
from .core.features import FEATURE_NAMES, IMAGE_FEATURES, PIXEL_FEATURES, QUESTION_TYPES, TEXT_FEATURES
from .core.splits import SplitArrays

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- context

@dataclass
class Context:
    """What baselines need besides router-train.

    ``tiers`` per-model tier ("edge" / "cloud"), config order; ``cloud`` index of the all-cloud reference
    (``pipeline.cloud_index``). ``questions``: sample_id -> question text, covering every split that is
    fitted or routed (``questions_by_sample(cfg)``); needed by the text baselines only. ``embed``: list of
    questions -> float (n, d) embeddings (default: ``reference.QuestionEncoder``, 384-d MiniLM, loaded on
    first use). ``val``: router-val, for model selection (best epoch); without it a seeded 20% of
    router-train is held out for ``fit.fit``. ``spec``: ``fit.cost_spec`` (the project MLP's cost prior;
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
    spec: dict | None = None
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
            from .reference import QuestionEncoder

            self._encoder = QuestionEncoder()
        fn = self.embed or self._encoder
        out = np.asarray(fn(texts), dtype=np.float32)
        if out.ndim != 2 or len(out) != len(texts):
            raise ValueError(f"embed returned shape {out.shape} for {len(texts)} questions")
        return out


def questions_by_sample(cfg) -> dict[str, str]:
    """sample_id -> question of every row of the run's router dataset (``data.build_router_dataset``)."""
    from . import data

    ds = data.build_router_dataset(cfg).select_columns(["sample_id", "question"])
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


# ---------------------------------------------------------------------------------------------- escalation

def escalation_outcomes(s: SplitArrays, assign: np.ndarray, knob: float, tiers: Sequence[str], cloud: int) -> dict:
    """Outcomes when a query the router sends to an edge model m escalates to the cloud model ``cloud``
    whenever m's own confidence ``s.confidence[i, m] < knob`` (the edge answer is then discarded).

    Returns (n, K) arrays indexed by the *routed* model: ``score`` (the used answer's), ``latency_s`` and
    ``energy_j`` (edge cost plus cloud cost when escalated: the device waits for both, sequentially),
    ``final`` (int, the model whose answer is used), ``escalated`` (bool). Raises ValueError when an
    edge model the router uses has no confidence (NaN) while ``knob > 0``."""
    edge = np.array([t == "edge" for t in tiers])
    conf = np.asarray(s.confidence, dtype=np.float64)
    used = (np.asarray(assign) > 0) & edge[None, :]
    if knob > 0 and np.isnan(conf[used]).any():
        i, m = np.argwhere(used & np.isnan(conf))[0]
        raise ValueError(f"edge model {m} has no confidence for sample {s.sample_ids[i]!r}: a confidence cascade "
                         "needs the edge model's answer probability (replay files: map a confidence column)")
    with np.errstate(invalid="ignore"):
        esc = edge[None, :] & (conf < knob)
    k = s.score.shape[1]
    return {"score": np.where(esc, s.score[:, [cloud]], s.score),
            "latency_s": s.latency_s + esc * s.latency_s[:, [cloud]],
            "energy_j": s.energy_j + esc * s.energy_j[:, [cloud]],
            "final": np.where(esc, cloud, np.arange(k)[None, :]), "escalated": esc}


def escalation_metrics(s: SplitArrays, assign: np.ndarray, knob: float, tiers: Sequence[str], cloud: int,
                       models: Sequence[str] | None = None) -> dict:
    """``metrics.policy_metrics`` keys for a router ``assign`` (n, K) followed by confidence escalation
    (``escalation_outcomes``), as exact expectations under ``assign``.

    ``shares`` / ``share_<model>`` / ``edge_share`` / ``cloud_share`` count the model whose answer is
    used (so ``cloud_share`` is the fraction of queries that call the cloud); costs include every model
    run. Extra keys: ``edge_compute_share`` (fraction of queries that run an edge model, escalated or
    not) and ``escalation_share`` (fraction escalated from edge to cloud)."""
    assign = np.asarray(assign, dtype=np.float64)
    o = escalation_outcomes(s, assign, knob, tiers, cloud)
    n, k = assign.shape
    edge = np.array([t == "edge" for t in tiers])
    acc = float((assign * o["score"]).sum(1).mean())
    lat = float((assign * o["latency_s"]).sum(1).mean())
    en = float((assign * o["energy_j"]).sum(1).mean())
    shares = np.zeros(k)
    np.add.at(shares, o["final"].ravel(), assign.ravel())
    shares /= n
    cloud_acc, cloud_lat, cloud_en = (float(a[:, cloud].mean()) for a in (s.score, s.latency_s, s.energy_j))
    out = {"accuracy": acc, "pct_cloud_accuracy": 100.0 * acc / cloud_acc if cloud_acc else float("nan"),
           "edge_share": float(shares[edge].sum()), "mean_latency_s": lat, "mean_energy_j": en,
           "latency_reduction": 1.0 - lat / cloud_lat, "energy_reduction": 1.0 - en / cloud_en,
           "shares": shares.tolist(), "cloud_share": float(shares[~edge].sum()),
           "p95_latency_s": M.weighted_quantile(o["latency_s"], assign / n, 0.95),
           "pgr": M.pgr(acc, M.references(s, tiers, cloud)),
           "edge_compute_share": float(assign[:, edge].sum(1).mean()),
           "escalation_share": float((assign * o["escalated"]).sum(1).mean())}
    names = list(models) if models is not None else [str(j) for j in range(k)]
    out.update({f"share_{m}": v for m, v in zip(names, out["shares"])})
    return out


def cascade_outcomes(s: SplitArrays, knob: float, edge: int, cloud: int, tiers: Sequence[str] | None = None) -> dict:
    """Per-sample outcomes (n,) of the edge-confidence cascade: model ``edge`` answers every query; when
    its confidence < ``knob`` the query is re-asked to ``cloud``. ``score`` (the used answer's),
    ``latency_s`` = edge latency + cloud latency if escalated, ``energy_j`` likewise, ``escalated``."""
    tiers = tiers or ["edge" if j == edge else "cloud" for j in range(s.score.shape[1])]
    o = escalation_outcomes(s, _one_hot(np.full(len(s), edge), s.score.shape[1]), knob, tiers, cloud)
    return {key: o[key][:, edge] for key in ("score", "latency_s", "energy_j", "escalated")}


def cascade_metrics(s: SplitArrays, knob: float, tiers: Sequence[str], cloud: int, edge: int | None = None,
                    models: Sequence[str] | None = None) -> dict:
    """Metrics (``escalation_metrics``; ``policies.metrics`` keys and more) of the edge-confidence
    cascade: the edge model ``edge`` (default: the best edge model on ``s``; the ``cascade`` baseline
    passes router-train's) answers first and escalates to ``cloud`` when its confidence < ``knob``,
    paying both. knob 0: all-edge; knob > 1: every query runs on both (costlier than all-cloud)."""
    edge = best_edge(s, tiers) if edge is None else edge
    return escalation_metrics(s, _one_hot(np.full(len(s), edge), s.score.shape[1]), knob, tiers, cloud, models)


def combined_outcomes(s: SplitArrays, assign: np.ndarray, knob: float, tiers: Sequence[str], cloud: int) -> dict:
    """Per-sample expected outcomes (n,) of router ``assign`` then confidence escalation: ``score``,
    ``latency_s``, ``energy_j``, ``escalated`` (probability of escalation)."""
    o = escalation_outcomes(s, assign, knob, tiers, cloud)
    return {key: (assign * o[key]).sum(1) for key in ("score", "latency_s", "energy_j", "escalated")}


def combined_metrics(s: SplitArrays, assign: np.ndarray, knob: float, tiers: Sequence[str], cloud: int,
                     models: Sequence[str] | None = None) -> dict:
    """The router decides first (``assign`` (n, K), e.g. the tuned router's); a query it keeps on edge
    model m still escalates to ``cloud`` when m's confidence < ``knob``, paying both.

    What holds for every split (per query, hence for the means):

    1. knob <= 0 (no confidence is below it): exactly the router's metrics;
    2. latency and energy are non-decreasing in knob; accuracy differs from the router's only on
       escalated queries, by s_cloud - s_m there;
    3. cost = router cost + cloud cost on escalated queries <= router cost + cloud cost;
    4. against the cascade (same edge model, same knob): equal on the queries the router keeps on that
       edge model; on a query the router sends straight to the cloud it saves the edge call when the
       cascade would escalate it, but costs cloud - edge more when the cascade would keep it on edge.
       So combined <= cascade in cost when every query sent to the cloud is one the cascade escalates;
       it is not cheaper in general."""
    return escalation_metrics(s, assign, knob, tiers, cloud, models)


# ---------------------------------------------------------------------------------------------- training helpers

def _mlp(d_in: int, hidden: Sequence[int], d_out: int) -> nn.Sequential:
    layers, width = [], d_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.GELU()]
        width = h
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


@contextlib.contextmanager
def single_thread():
    """Run torch on one intra-op thread, restoring the setting after: the baselines' nets are tiny, and
    on a busy machine extra threads only spin (a 30x slowdown measured on 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)`` without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _train_bce(net: nn.Module, x: np.ndarray, y: np.ndarray, val: tuple | None = None, epochs: int = 100,
               lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0) -> nn.Module:
    """AdamW on BCE-with-logits (targets in [0, 1], soft targets allowed), shuffled minibatches from a
    seeded generator. With ``val`` = (x, y) the epoch with the lowest validation BCE is kept."""
    with single_thread():
        return _train_loop(net, x, y, val, epochs, lr, weight_decay, batch_size, seed)


def _train_loop(net, x, y, val, epochs, lr, weight_decay, batch_size, seed):
    xt, yt = torch.tensor(np.asarray(x), dtype=torch.float32), torch.tensor(np.asarray(y), dtype=torch.float32)
    vt = None if val is None else tuple(torch.tensor(np.asarray(a), dtype=torch.float32) for a in val)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    best, state = float("inf"), None
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.binary_cross_entropy_with_logits(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if vt is not None:
            net.eval()
            with torch.no_grad():
                vl = float(F.binary_cross_entropy_with_logits(net(vt[0]), vt[1]))
            if vl < best:
                best, state = vl, copy.deepcopy(net.state_dict())
    if state is not None:
        net.load_state_dict(state)
    return net.eval()


def _logits(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad(), single_thread():
        return net(torch.as_tensor(x, dtype=torch.float32)).numpy().astype(np.float64)


def derived_spec(train: SplitArrays, tiers: Sequence[str], cloud: int) -> dict:
    """A ``fit.cost_spec``-shaped spec whose expected latencies are router-train's mean latencies (zero
    payload and round trip; device power = edge / cloud energy over latency summed per tier), for
    training the project MLP without the outcome table. Prefer ``fit.cost_spec`` when it is at hand."""
    lat, en = train.latency_s.mean(0), train.energy_j.mean(0)
    edge = np.array([t == "edge" for t in tiers])

    def power(mask):
        return float(en[mask].sum() / lat[mask].sum()) if lat[mask].sum() > 0 else 1.0

    pe, pc = power(edge), power(~edge)
    return {"models": [{"name": f"m{k}", "tier": t, "mean_compute_s": float(lat[k]), "mean_payload_bytes": 0.0}
                       for k, t in enumerate(tiers)],
            "profile": {"name": "derived", "edge_power_w": pe, "idle_power_w": pc, "radio_tx_power_w": pc,
                        "uplink_mbps": 1.0, "downlink_mbps": 1.0, "rtt_s": 0.0, "response_bytes": 0},
            "ref_latency_s": float(lat[cloud]), "ref_energy_j": float(pc * lat[cloud])}


_SIGNALS = slice(0, len(FEATURE_NAMES) - len(PIXEL_FEATURES))  # FEATURE_NAMES ends with the PIXEL_FEATURES


class _Inputs:
    """Router inputs from a split: "features" (the hand-crafted and word signals, every column but the
    thumbnail's raw pixels, standardised with router-train's mean / std), "embedding" (question
    embeddings), or "both" (concatenated). Raw pixels are left out: an MLP on them overfits a few
    thousand questions (measured: Hybrid-LLM on the features plus an 8 x 8 thumbnail, APGR 0.829 against
    0.862 without); the router embeds them with its CNN."""

    def __init__(self, kind: str, train: SplitArrays, ctx: Context):
        if kind not in ("features", "embedding", "both"):
            raise ValueError(f"inputs must be features, embedding or both, not {kind!r}")
        self.kind, self.ctx = kind, ctx
        x = train.x[:, _SIGNALS]
        self.mean = x.mean(0)
        self.std = np.where(x.std(0) > 1e-8, x.std(0), 1.0)

    def __call__(self, s: SplitArrays) -> np.ndarray:
        parts = []
        if self.kind in ("features", "both"):
            parts.append((s.x[:, _SIGNALS] - self.mean) / self.std)
        if self.kind in ("embedding", "both"):
            parts.append(self.ctx.embeddings(s))
        return np.concatenate(parts, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- base classes

class Baseline:
    """A baseline router: ``fit(train, ctx)``, then ``assign`` / ``metrics`` / ``knobs`` (module docstring)."""

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
    ``max_e p_e - p_cloud`` over edge models e, choice = that argmax (module docstring)."""

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


# ---------------------------------------------------------------------------------------------- baselines

@register("random")
class RandomBaseline(Baseline):
    """Random routing at edge share ``knob`` (best router-train edge model with probability knob, else the
    cloud), scored in expectation: ``policies.random``. Its curve is the chord: APGR ~0.5."""

    all_edge_knob, all_cloud_knob = 1.0, 0.0

    def assign(self, split, knob):
        shares = np.zeros(split.score.shape[1])
        shares[self.edge], shares[self.cloud] = knob, 1.0 - knob
        return policies.make("random", shares=shares)(split)

    def knobs(self, split, n=41):
        return np.linspace(0.0, 1.0, n)


@register("oracle")
class OracleBaseline(Baseline):
    """Hindsight point (no knob): ``policies.oracle`` with ``ctx.cost`` (cheapest model that answers
    correctly). ``knobs`` is [0]; for a hindsight *curve* see ``oracle_curve``."""

    all_edge_knob = all_cloud_knob = None

    def assign(self, split, knob=0.0):
        return policies.make("oracle", cost=self.ctx.cost)(split)

    def knobs(self, split, n=41):
        return np.array([0.0])


@register("oracle_curve")
class OracleCurve(Baseline):
    """Hindsight routing at cloud share ``knob`` in [0, 1]: samples sorted by realised gain
    ``score_cloud - score_edge`` (router-train's best edge model), the top ``knob * n`` (fractionally at
    the boundary) sent to the cloud. The most accurate edge/cloud routing at every cloud share, so its
    APGR bounds that of every router between this edge model and the cloud on the same split
    (``knobs`` includes the breakpoints, so the trapezoid area is exact)."""

    all_edge_knob, all_cloud_knob = 0.0, 1.0

    def _order(self, split):
        gain = split.score[:, self.cloud] - split.score[:, self.edge]
        return np.argsort(-gain, kind="stable"), gain

    def assign(self, split, knob):
        order, _ = self._cached(split, self._order)
        n = len(split)
        mass = np.clip(knob * n - np.arange(n), 0.0, 1.0)  # cloud probability by rank
        to_cloud = np.empty(n)
        to_cloud[order] = mass
        out = np.zeros((n, split.score.shape[1]))
        out[:, self.cloud] = to_cloud
        out[:, self.edge] += 1.0 - to_cloud
        return out

    def knobs(self, split, n=41):
        order, gain = self._cached(split, self._order)
        g = gain[order]
        breaks = np.flatnonzero(np.diff(g) != 0) + 1  # rank where the gain changes
        return np.unique(np.r_[np.linspace(0.0, 1.0, n), breaks / len(split)])


@register("qtype")
class QuestionTypeRule(Baseline):
    """Per question type (``features.question_type``, read from the ``qtype_*`` feature columns), the
    cheapest edge model (router-train mean ``ctx.cost``) whose router-train accuracy on that type is within
    ``knob`` of the cloud model's (``acc_cloud - acc_edge <= knob``); the cloud when none is. Types with
    fewer than ``min_count`` router-train samples use the overall accuracies. knob 2: all-edge (the
    cheapest edge model); knob -2: all-cloud. A lookup-table baseline: question types alone separate
    VQA difficulty (Antol et al. 2015; Kafle & Kanan 2017)."""

    all_edge_knob, all_cloud_knob = 2.0, -2.0

    def __init__(self, min_count: int = 5):
        self.min_count = min_count

    @staticmethod
    def types(s: SplitArrays) -> np.ndarray:
        if s.x.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"features have {s.x.shape[1]} columns, expected {len(FEATURE_NAMES)} (FEATURE_NAMES)")
        cols = [FEATURE_NAMES.index("qtype_" + t.replace("/", "_")) for t in QUESTION_TYPES]
        return s.x[:, cols].argmax(1)

    def _fit(self, train):
        t = self.types(train)
        overall = train.score.mean(0)
        self.acc = np.stack([train.score[t == j].mean(0) if (t == j).sum() >= self.min_count else overall
                             for j in range(len(QUESTION_TYPES))])
        cost = getattr(train, self.ctx.cost).mean(0)
        self.edge_by_cost = sorted((k for k, tier in enumerate(self.tiers) if tier == "edge"), key=lambda k: cost[k])

    def table(self, knob: float) -> np.ndarray:
        """int (len(QUESTION_TYPES),): the model each question type goes to at ``knob``."""
        out = np.full(len(QUESTION_TYPES), self.cloud)
        for j in range(len(QUESTION_TYPES)):
            ok = [k for k in self.edge_by_cost if self.acc[j, self.cloud] - self.acc[j, k] <= knob]
            if ok:
                out[j] = ok[0]
        return out

    def assign(self, split, knob):
        return _one_hot(self.table(knob)[self.types(split)], split.score.shape[1])

    def knobs(self, split, n=41):
        edge = [k for k, t in enumerate(self.tiers) if t == "edge"]
        gaps = (self.acc[:, [self.cloud]] - self.acc[:, edge]).ravel()
        return np.unique(np.r_[self.all_cloud_knob, gaps, self.all_edge_knob])


_COLUMNS = {"image": [FEATURE_NAMES.index(f) for f in IMAGE_FEATURES],
            "text": [FEATURE_NAMES.index(f) for f in TEXT_FEATURES],
            "both": [FEATURE_NAMES.index(f) for f in IMAGE_FEATURES + TEXT_FEATURES],
            "signals": list(range(len(FEATURE_NAMES)))[_SIGNALS],
            "all": list(range(len(FEATURE_NAMES)))}


@register("mlp_signals", columns="signals")
@register("mlp_both_minilm", columns="both", embedding=True)
@register("mlp_both", columns="both")
@register("mlp_text", columns="text")
@register("mlp_image", columns="image")  # decorators apply bottom-up: registry order image, text, both, ...
class FeatureMLP(ProbBaseline):
    """The project's complexity predictor (``fit.RouterNet`` trained by ``fit.fit``: BCE plus the
    expected cost of soft routing) on a subset of the features: ``columns`` "image" (IMAGE_FEATURES),
    "text" (TEXT_FEATURES), "both" (the two: hand-crafted signals without learned embeddings),
    "signals" (both + the WORD_FEATURES the router learns word embeddings from; no thumbnail, so no
    learned image embedding) or "all" (the router's own inputs); with ``embedding`` the MiniLM question
    embedding is appended (frozen pretrained embeddings). The feature ablation of the router: image-only,
    text-only, both, both + MiniLM, and without its learned image embedding; the router itself is "all".
    Routed by the predicted gap (``ProbBaseline``), so they differ only in their inputs."""

    def __init__(self, columns: str = "all", embedding: bool = False):
        if columns not in _COLUMNS:
            raise ValueError(f"columns must be one of {sorted(_COLUMNS)}, not {columns!r}")
        self.columns, self.embedding = columns, embedding
        self.needs_text = embedding

    def _inputs(self, s: SplitArrays) -> np.ndarray:
        if s.x.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"features have {s.x.shape[1]} columns, expected {len(FEATURE_NAMES)} (FEATURE_NAMES)")
        x = s.x[:, _COLUMNS[self.columns]]
        if self.embedding:
            x = np.concatenate([x, self.ctx.embeddings(s)], 1)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _fit(self, train):
        from . import fit

        ctx = self.ctx
        val = ctx.val
        tr = train
        if val is None:  # hold out a seeded 20% of router-train for fit.fit's best epoch
            tr, val = train.holdout(0.2, ctx.seed)
        tr, va = (dataclasses.replace(s, x=self._inputs(s)) for s in (tr, val))
        spec = ctx.spec or derived_spec(train, self.tiers, self.cloud)
        rc = ctx.router_config or RouterConfig()
        rc = dataclasses.replace(rc, seed=ctx.seed, **({"epochs": ctx.epochs} if ctx.epochs else {}))
        with tempfile.TemporaryDirectory(prefix="baseline-") as tmp, single_thread():
            self.module, self.dm = fit.fit(tr, va, spec, rc, Path(tmp), loggers=False, progress=False)

    def probs(self, split):
        from . import fit

        x = self._inputs(split)
        with single_thread():
            return fit.predict(self.module, self.dm, x).astype(np.float64)


@register("minilm_clf")
class EmbeddingClassifier(ProbBaseline):
    """RouteLLM's BERT-classifier router in its usual frozen-encoder form: logistic regression
    (``hidden`` = ()) or a small MLP on the 384-d MiniLM question embedding, one output per model
    predicting its correctness (BCE on the VQA score as a soft target; AdamW, weight decay; best epoch on
    router-val when given). RouteLLM fine-tunes BERT on strong-vs-weak win labels; here the encoder is
    frozen and the labels are per-model correctness."""

    needs_text = True

    def __init__(self, hidden: Sequence[int] = (), epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4):
        self.hidden, self.epochs, self.lr, self.weight_decay = tuple(hidden), epochs, lr, weight_decay

    def _fit(self, train):
        e = self.ctx.embeddings(train)
        val = None if self.ctx.val is None else (self.ctx.embeddings(self.ctx.val), self.ctx.val.score)
        self.net = _train_bce(_seeded(lambda: _mlp(e.shape[1], self.hidden, train.score.shape[1]), self.ctx.seed),
                              e, train.score, val, self.epochs, self.lr, self.weight_decay, seed=self.ctx.seed)

    def probs(self, split):
        return 1.0 / (1.0 + np.exp(-_logits(self.net, self.ctx.embeddings(split))))


@register("knn")
class KNNRouter(ProbBaseline):
    """kNN on question embeddings (Shnitzer et al. 2023; RouterBench's KNN router; cf. RouteLLM's
    similarity-weighted ranking): P(correct) of each model = its mean router-train score over the ``k``
    router-train questions with the highest cosine similarity. Ties (repeated questions) are broken by
    ``np.argpartition``, deterministically."""

    needs_text = True

    def __init__(self, k: int = 10):
        self.k = k

    def _fit(self, train):
        self.emb = self._unit(self.ctx.embeddings(train))
        self.score = train.score

    @staticmethod
    def _unit(e):
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def probs(self, split):
        q = self._unit(self.ctx.embeddings(split))
        k = min(self.k, len(self.emb))
        out = np.empty((len(q), self.score.shape[1]))
        for i in range(0, len(q), 1024):  # bounded memory: 1024 x n_train similarities at a time
            sim = q[i:i + 1024] @ self.emb.T
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            out[i:i + 1024] = self.score[top].mean(1)
        return out


class _MF(nn.Module):
    """logit(q, m) = w . (normalize(v_m) * W q) + b_m (RouteLLM's MFModel plus a per-model bias)."""

    def __init__(self, text_dim: int, n_models: int, dim: int):
        super().__init__()
        self.P = nn.Embedding(n_models, dim)
        self.text_proj = nn.Linear(text_dim, dim, bias=False)
        self.classifier = nn.Linear(dim, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(n_models))

    def forward(self, q):
        v = F.normalize(self.P.weight, p=2, dim=1)  # (K, dim)
        return self.classifier(v[None] * self.text_proj(q)[:, None, :]).squeeze(-1) + self.bias


@register("mf")
class MatrixFactorisation(ProbBaseline):
    """RouteLLM's matrix-factorisation router adapted to per-model correctness: model embeddings v_m
    (unit-normalised), a linear projection W of the MiniLM query embedding and a linear read-out w, as in
    ``routellm/routers/matrix_factorization/model.py``; logit = w . (v_m * W q) + b_m, trained with BCE on
    each (query, model) correctness (RouteLLM trains sigmoid(s_strong - s_weak) on pairwise wins; with
    absolute labels a per-model bias b_m carries the base rate)."""

    needs_text = True

    def __init__(self, dim: int = 32, epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4):
        self.dim, self.epochs, self.lr, self.weight_decay = dim, epochs, lr, weight_decay

    def _fit(self, train):
        e = self.ctx.embeddings(train)
        val = None if self.ctx.val is None else (self.ctx.embeddings(self.ctx.val), self.ctx.val.score)
        self.net = _train_bce(_seeded(lambda: _MF(e.shape[1], train.score.shape[1], self.dim), self.ctx.seed),
                              e, train.score, val, self.epochs, self.lr, self.weight_decay, seed=self.ctx.seed)

    def probs(self, split):
        return 1.0 / (1.0 + np.exp(-_logits(self.net, self.ctx.embeddings(split))))


@register("hybrid_soft", labels="soft")
@register("hybrid_det", labels="det")
class HybridLLM(ScoreBaseline):
    """Hybrid-LLM quality-gap router (Ding et al., ICLR 2024): a classifier of
    P(q_edge >= q_cloud - t) for router-train's best edge model vs the cloud; edge when it is >= knob.

    Labels (``labels``): "det" (r_det): 1[score_edge >= score_cloud - t]; "soft" (r_prob): the probability
    of that event when each model's answer is correct with probability equal to its VQA score
    (independent Bernoulli: 1 - (1 - s_edge) s_cloud for 0 <= t < 1; the paper estimates it from 10
    sampled responses, which a single greedy answer per model cannot give). With 0/1 scores the two
    coincide. Inputs (``inputs``): "both" (default: standardised features ++ MiniLM question embedding;
    the paper routes on the text alone, a VQA query is image + question), "features" or "embedding".
    Classifier: MLP ``hidden`` trained with BCE (soft targets), best epoch on router-val when given."""

    def __init__(self, labels: str = "det", t: float = 0.0, inputs: str = "both", hidden: Sequence[int] = (64,),
                 epochs: int = 100, lr: float = 3e-3, weight_decay: float = 1e-4):
        if labels not in ("det", "soft"):
            raise ValueError(f"labels must be 'det' or 'soft', not {labels!r}")
        if labels == "soft" and not 0.0 <= t < 1.0:
            raise ValueError("soft labels need 0 <= t < 1 (for t >= 1 every label is 1)")
        self.labels, self.t, self.inputs_kind, self.hidden = labels, t, inputs, tuple(hidden)
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.needs_text = inputs != "features"

    def target(self, s: SplitArrays) -> np.ndarray:
        """The labels (n, 1) for split ``s`` (see the class docstring)."""
        se, sc = s.score[:, self.edge], s.score[:, self.cloud]
        y = (se >= sc - self.t).astype(np.float64) if self.labels == "det" else 1.0 - (1.0 - se) * sc
        return y[:, None]

    def _fit(self, train):
        self.inputs = _Inputs(self.inputs_kind, train, self.ctx)
        x = self.inputs(train)
        val = None if self.ctx.val is None else (self.inputs(self.ctx.val), self.target(self.ctx.val))
        self.net = _train_bce(_seeded(lambda: _mlp(x.shape[1], self.hidden, 1), self.ctx.seed), x, self.target(train),
                              val, self.epochs, self.lr, self.weight_decay, seed=self.ctx.seed)

    def _edge_score(self, split):
        p = 1.0 / (1.0 + np.exp(-_logits(self.net, self.inputs(split))[:, 0]))
        return p, np.full(len(split), self.edge)


@register("cascade")
class Cascade(Baseline):
    """Edge-confidence cascade (FrugalGPT-style; Varshney & Baral 2022): router-train's best edge model
    answers every query; when its own confidence (``SplitArrays.confidence``) < knob the query goes to the
    cloud as well, paying both (``cascade_metrics``). knob 0: all-edge; knob 2: every query runs on both.
    ``assign`` gives the answering model only; use ``metrics`` for costs."""

    all_edge_knob, all_cloud_knob = 0.0, 2.0

    def assign(self, split, knob):
        with np.errstate(invalid="ignore"):
            esc = split.confidence[:, self.edge] < knob
        return _one_hot(np.where(esc, self.cloud, self.edge), split.score.shape[1])

    def metrics(self, split, knob, models=None):
        return cascade_metrics(split, knob, self.tiers, self.cloud, self.edge, models)

    def knobs(self, split, n=41):
        return quantile_knobs(split.confidence[:, self.edge], n, self.all_edge_knob, self.all_cloud_knob)


@register("combined")
class Combined(Baseline):
    """Router first, then confidence escalation (``combined_metrics``): a query the router keeps on an
    edge model escalates to the cloud when that model's confidence < knob, paying both. The router is
    ``router`` (split -> (n, K)), else ``ctx.router`` (e.g. the tuned router), else the ``mlp_both``
    baseline trained here at knob ``base_knob`` (0: edge when predicted at least as accurate as the
    cloud). The curve starts at the router's cloud share (knob 0) and rises to all-cloud-plus-edge (knob
    2), so its APGR is not comparable with full-range sweeps. ``assign`` gives the answering model."""

    all_edge_knob, all_cloud_knob = None, 2.0

    def __init__(self, router: Callable[[SplitArrays], np.ndarray] | None = None, base_knob: float = 0.0):
        self.router_fn, self.base_knob = router, base_knob

    def _fit(self, train):
        fn = self.router_fn or self.ctx.router
        if fn is None:
            base = make("mlp_both").fit(train, self.ctx)
            fn = functools.partial(base.assign, knob=self.base_knob)
        self.route = fn

    def router_assign(self, split):
        return self._cached(split, self.route)

    def assign(self, split, knob):
        a = self.router_assign(split)
        o = escalation_outcomes(split, a, knob, self.tiers, self.cloud)
        out = np.zeros_like(a, dtype=np.float64)
        np.add.at(out, (np.repeat(np.arange(len(a)), a.shape[1]), o["final"].ravel()), a.ravel())
        return out

    def metrics(self, split, knob, models=None):
        return combined_metrics(split, self.router_assign(split), knob, self.tiers, self.cloud, models)

    def knobs(self, split, n=41):
        a = self.router_assign(split)
        edge = np.array([t == "edge" for t in self.tiers])
        conf = split.confidence[(a > 0) & edge[None, :]]
        return quantile_knobs(conf, n, 0.0, self.all_cloud_knob)


# ---------------------------------------------------------------------------------------------- sweeps

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
