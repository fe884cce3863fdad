"""Recipe reports: ``report.md`` from a run's ``metrics.json`` document, with the metric
definitions a recipe registered, proportions shown with their n and 95% Wilson interval, and
every warning raised during the run."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from semhooks.stats import wilson_interval

if TYPE_CHECKING:
    from recipes.core import Recipe, RunContext

__all__ = [
    "COMMON_DEFINITIONS",
    "Definition",
    "add_proportion",
    "ci95",
    "render_report",
    "report_definitions",
    "undefined_metrics",
]


@dataclass(frozen=True)
class Definition:
    """One entry of a report's definitions section (see :meth:`RunContext.define`)."""

    term: str
    text: str
    pattern: str

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text) is not None


#: Definitions every report may need; recipes add their own with ``ctx.define``.
COMMON_DEFINITIONS = (
    Definition(
        "accuracy",
        "fraction of evaluation items predicted correctly, shown with n (the evaluation "
        "items) and its 95% interval",
        r"accuracy",
    ),
    Definition(
        "95% CI",
        "Wilson score interval for a binomial proportion (the value times n successes out "
        "of n); it covers sampling noise of the evaluation items only, not seeds or layer "
        "choice",
        r"_ci95$|95% CI",
    ),
    Definition("n", "number of evaluation items behind a proportion", r"_n$|n_test|\bn="),
    Definition("seconds", "wall-clock seconds measured in this run", r"(^|[._])seconds"),
)


def ci95(value: float, n: int) -> list[float]:
    """95% Wilson interval ``[low, high]`` of a proportion ``value`` measured on ``n`` items
    (``value * n`` is rounded to the nearest count of successes)."""
    n = int(n)
    successes = min(n, max(0, round(float(value) * n)))
    low, high = wilson_interval(successes, n)
    return [low, high]


def add_proportion(summary: dict[str, Any], key: str, value: float, n: int) -> None:
    """``summary[key] = value`` with ``key_n`` and ``key_ci95`` beside it (rendered as one
    cell: ``0.725 (n=80, 95% CI [0.62, 0.81])``)."""
    summary[key] = float(value)
    summary[f"{key}_n"] = int(n)
    summary[f"{key}_ci95"] = ci95(value, n) if n > 0 and math.isfinite(value) else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _summary_rows(summary: dict[str, Any]) -> list[str]:
    """Table rows; a proportion's ``_n`` and ``_ci95`` siblings go into its own cell."""
    rows = []
    for k, v in summary.items():
        base = re.sub(r"_(n|ci95)$", "", k)
        if base != k and base in summary and f"{base}_n" in summary:
            continue
        cell = _fmt(v)
        if f"{k}_n" in summary and f"{k}_ci95" in summary:
            ci = summary[f"{k}_ci95"]
            interval = f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            cell = f"{_fmt(v)} (n={summary[f'{k}_n']}{interval})"
        rows.append(f"| {k} | {cell} |")
    return rows


def report_definitions(
    summary: dict[str, Any], texts: list[str], definitions: list[Definition]
) -> list[Definition]:
    """The definitions whose pattern occurs in a summary key or in one of ``texts``."""
    keys = list(summary)
    out: list[Definition] = []
    for d in [*definitions, *COMMON_DEFINITIONS]:
        if any(d.matches(k) for k in keys) or any(d.matches(t) for t in texts):
            if all(o.term != d.term for o in out):
                out.append(d)
    return out


def undefined_metrics(summary: dict[str, Any], definitions: list[Definition]) -> list[str]:
    """Summary keys that no definition covers (a report must have none)."""
    every = [*definitions, *COMMON_DEFINITIONS]
    return [k for k in summary if not any(d.matches(k) for d in every)]


def render_report(recipe: Recipe, doc: dict[str, Any], ctx: RunContext) -> str:
    prov = doc["provenance"]
    metrics = doc["metrics"] if isinstance(doc["metrics"], dict) else {}
    detail = doc.get("seconds_detail") or {}
    lines = [f"# {recipe.name}", "", recipe.description, ""]
    lines += [
        f"Model `{prov.get('model', doc['config'].get('model'))}` "
        f"({prov.get('backend', '?')}, TransformerLens {prov.get('transformer_lens_version', '?')}), "
        f"semhooks {prov.get('semhooks_version')}, {prov.get('date')}.",
        "",
    ]
    timing = f"Measured run time: {doc['seconds']} s"
    if detail:
        timing += (
            f" ({detail.get('check_and_model_load')} s config check and model load, "
            f"{detail.get('recipe')} s recipe)"
        )
    lines += [timing + ".", ""]
    recorded = doc.get("warnings") or []
    if recorded:
        lines += [
            f"**{len(recorded)} distinct warning(s) were raised during this run; see "
            "[Warnings](#warnings-raised-during-the-run).**",
            "",
        ]
    if doc["resumed_artifacts"]:
        lines += [f"Resumed from cached artifacts: {', '.join(doc['resumed_artifacts'])}.", ""]
    summary = metrics.get("summary")
    summary = summary if isinstance(summary, dict) else {}
    if summary:
        lines += ["| metric | value |", "|---|---|", *_summary_rows(summary), ""]
    tables = list(metrics.get("tables", []))
    for table in tables:
        lines += [table, ""]
    for note in ctx.notes:
        lines += [note, ""]
    for fname, caption in ctx.figures:
        lines += [f"![{caption or fname}]({fname})", ""]
        if caption:
            lines += [f"*{caption}*", ""]
    found = report_definitions(summary, [*tables, *ctx.notes], ctx.definitions)
    undefined = undefined_metrics(summary, ctx.definitions)
    if found or undefined:
        lines += ["## Definitions", ""]
        lines += [f"- `{d.term}`: {d.text}." for d in found]
        lines += [f"- `{k}`: no definition given by the recipe." for k in undefined]
        lines.append("")
    lines += ["## Warnings raised during the run", ""]
    if recorded:
        for w in recorded:
            times = f", {w['count']} times" if w["count"] > 1 else ""
            lines.append(f"- `{w['category']}` ({w['source']}{times}): {w['message']}")
    else:
        lines.append("None.")
    lines.append("")
    lines += ["## Config", "", "```json", json.dumps(doc["config"], indent=2), "```", ""]
    return "\n".join(lines)
