"""Recipe ``patching``: where does a factual-recall prompt carry the subject? Exact
activation patching over layers x positions, attribution patching on the same grid, and how
well the first-order estimate ranks the cells."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.config import ConfigError, RecipeConfig
from recipes.core import RunContext, register


@dataclass
class PatchingConfig(RecipeConfig):
    relation: str = "country_capital_city"
    template: str = "The capital of {} is the city of"
    n_pairs: int = field(default=4, metadata={"min": 1})
    # Explicit pairs (all four lists, one entry per pair) replace the relation's pairs.
    clean: list[str] = field(default_factory=list, metadata={"allow_empty": True})
    corrupted: list[str] = field(default_factory=list, metadata={"allow_empty": True})
    answers: list[str] = field(default_factory=list, metadata={"allow_empty": True})
    wrong: list[str] = field(default_factory=list, metadata={"allow_empty": True})
    sites: list[str] = field(default_factory=lambda: ["resid_pre"])
    layers: list[int] = field(default_factory=list, metadata={"allow_empty": True})  # all
    # empty: every token of the template
    positions: list[str] = field(default_factory=list, metadata={"allow_empty": True})
    mode: str = "denoise"
    attribution: bool = True
    cells_per_forward: int = field(default=0, metadata={"min": 0})  # 0: automatic


def _check(config: PatchingConfig, ctx: RunContext) -> None:
    from semhooks.studies.patching import GRID_SITES

    explicit = [config.clean, config.corrupted, config.answers, config.wrong]
    if any(explicit) and len({len(x) for x in explicit}) != 1:
        raise ConfigError(
            "clean/corrupted/answers/wrong: give all four lists with one entry per pair "
            f"(got {[len(x) for x in explicit]})"
        )
    for s in config.sites:
        if s not in GRID_SITES:
            raise ConfigError(f"sites: unknown site {s!r}; choose from {list(GRID_SITES)}")
    if config.mode not in ("denoise", "noise"):
        raise ConfigError(f"mode: must be 'denoise' or 'noise', got {config.mode!r}")
    if config.layers:
        import semhooks as sh

        try:
            sh.adapt(ctx.model).resolve_layers(config.layers)
        except ValueError as exc:
            raise ConfigError(f"layers: {exc}") from exc


@register("patching", PatchingConfig, check=_check)
def patching(config: PatchingConfig, ctx: RunContext) -> dict[str, Any]:
    """Exact and attribution patching grids on factual-recall pairs, compared."""
    import semhooks as sh
    from semhooks.studies.patching import logit_diff
    from semhooks.studies.patching.study import factual_recall_pairs

    if config.clean:
        clean, corrupt = list(config.clean), list(config.corrupted)
        answers, wrong = list(config.answers), list(config.wrong)
    else:
        try:
            clean, corrupt, answers, wrong = factual_recall_pairs(
                ctx.model, config.n_pairs, template=config.template, relation=config.relation
            )
        except ValueError as exc:
            raise ConfigError(f"relation: {exc}") from exc
    metric = logit_diff(ctx.model, answers, wrong)
    kw: dict[str, Any] = dict(
        sites=config.sites,
        layers=config.layers or "all",
        positions=config.positions or None,
        mode=config.mode,
        progress=config.progress,
    )
    exact = sh.activation_patching(
        ctx.model, clean, corrupt, metric, cells_per_forward=config.cells_per_forward or None, **kw
    )
    exact.save(ctx.artifacts / "exact.safetensors")
    summary: dict[str, Any] = {
        "n_pairs": len(clean),
        "clean_metric": float(exact.clean_metric.mean()),
        "corrupted_metric": float(exact.corrupted_metric.mean()),
        "exact_seconds": round(exact.seconds, 2),
        "exact_forwards": exact.n_forwards,
    }
    ctx.save_figure(
        "exact",
        exact.plot(title="exact activation patching"),
        f"Exact {config.mode} patching, logit difference recovered (0 = corrupted, 1 = clean), "
        f"{len(clean)} pairs such as {clean[0]!r} / {corrupt[0]!r}",
    )
    tables = []
    rows = ["| site | top cell (layer, position) | score |", "|---|---|---|"]
    for s in exact.sites:
        layer, pos, score = exact.top(s, 1)[0]
        rows.append(f"| {s} | {layer}, {pos} | {score:.3f} |")
    tables.append("### Strongest cell per site (exact)\n\n" + "\n".join(rows))
    if config.attribution:
        approx = sh.attribution_patching(ctx.model, clean, corrupt, metric, **kw)
        approx.save(ctx.artifacts / "attribution.safetensors")
        ctx.save_figure(
            "attribution",
            approx.plot(title="attribution patching"),
            "Attribution patching (gradient x activation difference) on the same grid",
        )
        summary["attribution_seconds"] = round(approx.seconds, 2)
        summary["speedup_attribution_vs_exact"] = exact.seconds / max(approx.seconds, 1e-9)
        for s, c in approx.compare(exact).items():
            summary[f"{s}_spearman"] = c["spearman"]
            summary[f"{s}_spearman_live"] = c["spearman_live"]
            summary[f"{s}_top10_overlap"] = c["top10_overlap"]
    _define(ctx)
    return {"summary": summary, "tables": tables}


def _define(ctx: RunContext) -> None:
    ctx.define("n_pairs", "clean/corrupted prompt pairs (the corrupted names another subject)")
    ctx.define(
        "clean_metric",
        "mean over pairs of logit(clean answer) - logit(corrupted answer) at the last token of "
        "the clean prompt; corrupted_metric: the same on the corrupted prompt",
        r"clean_metric|corrupted_metric",
    )
    ctx.define(
        "score",
        "logit difference recovered: (mean patched - mean corrupted) / (mean clean - mean "
        "corrupted); 0 = the corrupted run, 1 = the clean run",
        r"score",
    )
    ctx.define(
        "*_seconds / exact_forwards",
        "wall-clock seconds of each grid (baseline runs included) and the exact grid's "
        "forward passes (many cells share one)",
        r"seconds|forwards",
    )
    ctx.define(
        "speedup_attribution_vs_exact",
        "exact grid seconds / attribution grid seconds",
        r"speedup",
    )
    ctx.define(
        "*_spearman",
        "Spearman rank correlation between the attribution and the exact scores over every "
        "cell of the site's grid (scores within 1e-5 of 0 count as 0); *_spearman_live: over "
        "the cells where either is nonzero",
        r"spearman",
    )
    ctx.define(
        "*_top10_overlap",
        "fraction of the 10 cells with the largest |exact score| that are also among the 10 "
        "largest |attribution scores|",
        r"top10_overlap",
    )
