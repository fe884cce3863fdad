"""Layer and rank sweeps of LRC accuracy (and causality) for one relation, with ``.plot()``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from semhooks.relations.data import Relation
from semhooks.relations.evaluation.relation import relation_prompts
from semhooks.relations.evaluation.swap import causal_swap
from semhooks.relations.evaluation.tables import fmt_cell
from semhooks.relations.lrc import LRC
from semhooks.relations.prompts import validate
from semhooks.relations.splits import split

__all__ = ["SweepResult", "sweep"]


@dataclass
class SweepResult:
    """LRC accuracy (and causality) over subject layers and ranks for one relation.

    ``records``: dicts with ``subject_layer``, ``rank``, ``accuracy``, optionally
    ``causality`` and ``control``, and ``n_test``.
    """

    relation: str
    object_layer: int
    records: list[dict[str, Any]]

    def table(self) -> str:
        keys = list(self.records[0]) if self.records else []
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(fmt_cell(r[k]) for k in keys) + " |" for r in self.records]
        return "\n".join(lines)

    def plot(self, ax: Any = None, metric: str = "accuracy") -> Any:
        """Lines of ``metric`` against subject layer, one per rank; returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        ranks = sorted({r["rank"] for r in self.records})
        for rank in ranks:
            pts = sorted(
                (r["subject_layer"], r[metric])
                for r in self.records
                if r["rank"] == rank and metric in r
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"rank {rank}")
        ax.set_xlabel("subject layer")
        ax.set_ylabel(metric)
        ax.set_title(f"LRC {metric}: {self.relation} (object layer {self.object_layer})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        return ax


def sweep(
    model: Any,
    relation: Relation | str,
    *,
    subject_layers: Sequence[int],
    object_layer: int,
    ranks: Sequence[int],
    n_shot: int = 3,
    method: Literal["exact", "randomized"] = "exact",
    max_prompts: int | None = None,
    causality: bool = False,
    alpha: float = 0.05,
    swap_layers: int | Sequence[int] | Literal["all"] = "all",
    seed: int = 0,
    progress: bool = False,
) -> SweepResult:
    """LRC accuracy for every (subject layer, rank), on one validated split.

    One LRE per subject layer (fitted at the largest rank for ``method="randomized"``);
    each rank only re-inverts it.
    """
    rel, prompts = relation_prompts(relation, n_shot, max_prompts=max_prompts, seed=seed)
    kept = validate(model, prompts, progress=progress).kept
    train, test = split(kept, seed=seed)
    if not test:
        raise ValueError(f"relation {rel.name!r} has no test prompts after the split")
    ranks = sorted(ranks)
    records = []
    for layer in subject_layers:
        base = LRC(
            layer, object_layer, max(ranks), method=method, seed=seed, progress=progress
        ).fit(model, train)
        h = base.subject_states(model, test)
        for rank in ranks:
            lrc = base if rank == base.rank else base.with_rank(rank)
            pred = lrc.predict_states(h)
            rec: dict[str, Any] = {
                "subject_layer": base.layer_,
                "rank": rank,
                "accuracy": float(
                    np.mean([a == p.object for a, p in zip(pred, test, strict=True)])
                ),
                "n_test": len(test),
            }
            if causality:
                sw = causal_swap(lrc, model, test, alpha=alpha, layers=swap_layers, seed=seed)
                rec.update(causality=sw.score, control=sw.control_score)
            records.append(rec)
    return SweepResult(rel.name, object_layer, records)
