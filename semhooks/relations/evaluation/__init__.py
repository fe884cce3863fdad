"""Evaluating LREs and LRCs: faithfulness, causality, concept swaps, baselines, tables, sweeps.

- :func:`faithfulness` (Hernandez et al. 2023): on held-out prompts, the LRE's top-1
  decoded token (``LRE(s)`` through final norm and unembedding) equals the model's own top-1
  next token.
- :func:`hernandez_causality`: for a prompt with object ``o`` and a target prompt with object
  ``o'``, add ``delta s = W^+_rho (o' - o)`` (``o``, ``o'`` the model's own object-layer
  states of the two prompts, ``W^+_rho`` the rank-``rho`` pseudo-inverse) to the subject
  state at the subject layer; success when the model's top-1 next token becomes the first
  token of ``o'``.
- :func:`causal_swap` (Chanin et al. 2024): at the subject's last token,
  ``h <- h + alpha ||h|| (v_target - v_source)`` at every layer or one layer (through
  :class:`semhooks.interventions.Swap`); success when the target answer's probability (the
  minimum over its tokens, teacher forced) beats the original answer's. The control swaps
  random unit vectors at the same angle (``interventions.random_control``).
- :func:`fit_baselines`: logistic regression, linear SVM and mean-difference directions on
  the same subject-layer states and split, evaluated by accuracy and by the same swap.
- :func:`evaluate_relation` / :func:`evaluate_relations` make the tables (per relation and
  per category); :func:`sweep` runs layer and rank sweeps with a ``.plot()``.
"""

from semhooks.relations.evaluation.baselines import Baseline, fit_baselines
from semhooks.relations.evaluation.lre_metrics import (
    CausalityResult,
    FaithfulnessResult,
    faithfulness,
    hernandez_causality,
)
from semhooks.relations.evaluation.relation import (
    RelationEvaluation,
    evaluate_relation,
    evaluate_relations,
    relation_prompts,
)
from semhooks.relations.evaluation.swap import SwapResult, causal_swap
from semhooks.relations.evaluation.sweeps import SweepResult, sweep
from semhooks.relations.evaluation.tables import table_markdown

__all__ = [
    "Baseline",
    "CausalityResult",
    "FaithfulnessResult",
    "RelationEvaluation",
    "SwapResult",
    "SweepResult",
    "causal_swap",
    "evaluate_relation",
    "evaluate_relations",
    "faithfulness",
    "fit_baselines",
    "hernandez_causality",
    "relation_prompts",
    "sweep",
    "table_markdown",
]
