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

Layout
------
``base`` (``Context``, the base classes, the registry, helpers), ``escalation`` (confidence escalation
outcomes and metrics), ``training`` (the torch nets and training loop), the baselines by family
(``reference_points``: random, oracle, oracle_curve; ``rules``: qtype; ``learned``: mlp_*, minilm_clf,
knn, mf; ``hybrid``: hybrid_det, hybrid_soft; ``cascades``: cascade, combined) and ``sweeps`` (sweep,
summary, available, compare). A new baseline is one new module here with ``@register("name")`` on a
``Baseline`` subclass, plus one import line below; the registry (and so the report) lists baselines in
the order they register: the order of these imports, then of the decorators within a module.
"""

from __future__ import annotations

from .base import (BASELINES, CONFIDENCE_BASELINES, Baseline, Context, Predicted, ProbBaseline, ScoreBaseline,
                   _one_hot, best_edge, confidence_left_out, make, quantile_knobs, questions_by_sample, register)
from .escalation import (cascade_metrics, cascade_outcomes, combined_metrics, combined_outcomes, escalation_metrics,
                         escalation_outcomes)
from .training import _SIGNALS, _Inputs, _logits, _mlp, _seeded, _train_bce, _train_loop, single_thread

# the baselines, in registry order (each module registers its own on import)
from .reference_points import OracleBaseline, OracleCurve, RandomBaseline
from .rules import QuestionTypeRule
from .learned import _COLUMNS, _MF, EmbeddingClassifier, FeatureMLP, KNNRouter, MatrixFactorisation, derived_spec
from .hybrid import HybridLLM
from .cascades import Cascade, Combined

from .sweeps import available, compare, summary, sweep
