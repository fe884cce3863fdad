"""One relation end to end: build, validate and split prompts; fit the LRC and baselines;
score accuracy, the causal swap with its control, and the LRE's faithfulness."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from semhooks.relations.data import Relation, load
from semhooks.relations.evaluation.baselines import fit_baselines
from semhooks.relations.evaluation.lre_metrics import faithfulness
from semhooks.relations.evaluation.swap import causal_swap
from semhooks.relations.evaluation.tables import table_markdown
from semhooks.relations.lrc import LRC
from semhooks.relations.prompts import (
    NoValidPromptsError,
    RelationPrompt,
    build_prompts,
    prompt_states,
    validate,
)
from semhooks.relations.splits import split

__all__ = ["RelationEvaluation", "evaluate_relation", "evaluate_relations", "relation_prompts"]


def relation_prompts(
    relation: Relation | str, n_shot: int, *, max_prompts: int | None = None, seed: int = 0
) -> tuple[Relation, list[RelationPrompt]]:
    """The relation and its ``n_shot`` prompts, on a seeded sample of at most ``max_prompts``
    subjects (in the relation's order)."""
    rel = relation if isinstance(relation, Relation) else load(relation)
    subjects = None
    if max_prompts is not None and len(rel.samples) > max_prompts:
        rng = random.Random(seed)
        subjects = sorted(rng.sample(rel.subjects, max_prompts), key=rel.subjects.index)
    return rel, build_prompts(rel, n_shot, subjects=subjects, seed=seed)


@dataclass
class RelationEvaluation:
    """Accuracy and causality of the LRC and the baselines on one relation's test split.

    ``rows``: one dict per method with ``method``, ``accuracy``, ``causality``,
    ``control`` (random-direction swap), ``n_test``; plus the LRE's ``faithfulness`` and
    the validation yield ``n_valid``/``n_prompts``.
    """

    relation: str
    category: str | None
    rows: list[dict[str, Any]]
    n_prompts: int
    n_valid: int
    n_train: int
    n_test: int
    n_objects: int
    lrc: LRC | None = None
    faithfulness: float | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def row(self, method: str) -> dict[str, Any]:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)

    def to_markdown(self) -> str:
        return table_markdown([self])


def evaluate_relation(
    model: Any,
    relation: Relation | str,
    *,
    subject_layer: int,
    object_layer: int,
    rank: int,
    n_shot: int = 3,
    method: Literal["exact", "randomized"] = "exact",
    object_aggregation: Literal["mean", "first"] = "mean",
    n_lre_prompts: int = 20,
    max_prompts: int | None = None,
    train_fraction: float = 0.5,
    alpha: float = 0.05,
    swap_layers: int | Sequence[int] | Literal["all"] = "all",
    baselines: Sequence[str] = ("logistic", "svm", "mean_difference"),
    causality: bool = True,
    beta: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    **lrc_kwargs: Any,
) -> RelationEvaluation:
    """Build, validate and split prompts; fit the LRC and baselines; score them on the test
    split (accuracy, causal swap with control) and the LRE's faithfulness.

    Args:
        max_prompts: cap on the prompts built (a seeded sample of subjects).
        causality: run the causal swaps (two teacher-forced forwards per prompt and method).
        beta: the LRE slope scale used for faithfulness (Hernandez et al.: 2-8).
    """
    t0 = time.perf_counter()
    rel, prompts = relation_prompts(relation, n_shot, max_prompts=max_prompts, seed=seed)
    report = validate(model, prompts, progress=progress)
    kept = report.kept
    train, test = split(kept, train_fraction, seed=seed)
    if not test:
        raise ValueError(
            f"relation {rel.name!r}: all {len(kept)} valid prompts went to training (every "
            "object has a single valid prompt); nothing to test on"
        )
    lrc = LRC(
        subject_layer,
        object_layer,
        rank,
        object_aggregation=object_aggregation,
        n_lre_prompts=n_lre_prompts,
        method=method,
        seed=seed,
        progress=progress,
        **lrc_kwargs,
    ).fit(model, train)
    layer = lrc.layer_
    st_train = prompt_states(model, train, layer, aggregation="first", with_answer=False)
    st_test = prompt_states(model, test, layer, aggregation="first", with_answer=False)
    h_train, h_test = st_train.subject[layer], st_test.subject[layer]
    truth = [p.object for p in test]
    methods: list[tuple[str, Any]] = [("LRC", lrc)]
    if baselines:
        fitted = fit_baselines(h_train, [p.object for p in train], baselines, seed=seed)
        methods += [(k, b) for k, b in fitted.items()]
    rows = []
    first_swap = None
    # test prompts whose object has a concept: all of them by construction of the split
    for name, est in methods:
        pred = est.predict_states(h_test)
        row: dict[str, Any] = {
            "method": name,
            "accuracy": float(np.mean([a == b for a, b in zip(pred, truth, strict=True)])),
            "n_test": len(test),
        }
        if causality:
            sw = causal_swap(
                est, model, test, alpha=alpha, layers=swap_layers, seed=seed, baseline=first_swap
            )
            first_swap = first_swap or sw
            row.update(causality=sw.score, control=sw.control_score, baseline=sw.baseline_score)
        rows.append(row)
    lre = copy.copy(lrc.lre_).set_params(beta=beta)
    faith = faithfulness(lre, model, test).score
    return RelationEvaluation(
        relation=rel.name,
        category=rel.category,
        rows=rows,
        n_prompts=len(prompts),
        n_valid=len(kept),
        n_train=len(train),
        n_test=len(test),
        n_objects=len({p.object for p in kept}),
        lrc=lrc,
        faithfulness=faith,
        seconds=time.perf_counter() - t0,
        settings={
            "subject_layer": subject_layer,
            "object_layer": object_layer,
            "rank": rank,
            "n_shot": n_shot,
            "method": method,
            "alpha": alpha,
            "swap_layers": swap_layers,
            "beta": beta,
            "seed": seed,
        },
    )


def evaluate_relations(
    model: Any, relations: Sequence[Relation | str], **kwargs: Any
) -> list[RelationEvaluation]:
    """:func:`evaluate_relation` for each relation (skipping, with a note, those that fail
    validation or have a single object); see :func:`table_markdown`."""
    out = []
    for rel in relations:
        try:
            out.append(evaluate_relation(model, rel, **kwargs))
        except (NoValidPromptsError, ValueError) as exc:
            name = rel if isinstance(rel, str) else rel.name
            print(f"[semhooks] skipped relation {name!r}: {exc}")
    return out
