"""Markdown tables of relation evaluations: per relation, then per category and overall."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from semhooks.stats import wilson_interval

if TYPE_CHECKING:
    from semhooks.relations.evaluation.relation import RelationEvaluation

__all__ = ["fmt_cell", "table_markdown"]


def fmt_cell(x: Any) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def table_markdown(
    results: Sequence[RelationEvaluation], *, by_category: bool = True, ci: bool = False
) -> str:
    """Markdown tables: one row per relation (accuracy / causality per method, n_test), then
    per category (unweighted mean over its relations) and overall.

    ``ci=True`` writes the 95% Wilson interval over the ``n_test`` prompts beside every
    proportion of the per-relation rows (faithfulness, accuracy, causal, control); the
    category rows are unweighted means over relations and carry none.
    """
    if not results:
        return "(no relations evaluated)"
    methods = [r["method"] for r in results[0].rows]
    has_causal = "causality" in results[0].rows[0]
    head = ["relation", "category", "n_test", "n_obj", "LRE faith."]
    for m in methods:
        head += [f"{m} acc"] + ([f"{m} causal"] if has_causal else [])
    if has_causal:
        head.append("LRC control")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(r: RelationEvaluation) -> list[Any]:
        row: list[Any] = [r.relation, r.category, r.n_test, r.n_objects, r.faithfulness]
        for m in methods:
            mr = r.row(m)
            row += [mr["accuracy"]] + ([mr.get("causality")] if has_causal else [])
        if has_causal:
            row.append(r.row("LRC").get("control"))
        return row

    def with_ci(value: Any, n: int) -> str:
        if not ci or not isinstance(value, float) or not np.isfinite(value) or n < 1:
            return fmt_cell(value)
        low, high = wilson_interval(min(n, max(0, round(value * n))), n)
        return f"{value:.2f} [{low:.2f}, {high:.2f}]"

    for r in results:
        row = cells(r)
        text = [fmt_cell(c) for c in row[:4]] + [with_ci(c, r.n_test) for c in row[4:]]
        lines.append("| " + " | ".join(text) + " |")
    if by_category:
        groups: dict[str, list[RelationEvaluation]] = {}
        for r in results:
            groups.setdefault(r.category or "other", []).append(r)
        groups["all"] = list(results)
        lines += ["", "| category | relations | n_test | " + " | ".join(head[4:]) + " |"]
        lines.append("|" + "---|" * (len(head) - 1) + "")
        for cat, rs in groups.items():
            rows = [cells(r)[4:] for r in rs]
            means = [
                float(np.nanmean([np.nan if v is None else v for v in col]))
                for col in zip(*rows, strict=True)
            ]
            n_test = sum(r.n_test for r in rs)
            lines.append(
                f"| {cat} | {len(rs)} | {n_test} | " + " | ".join(fmt_cell(m) for m in means) + " |"
            )
    return "\n".join(lines)
