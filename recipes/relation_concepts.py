"""Recipe ``relation-concepts``: validate -> LRE -> LRC -> classification vs baselines -> causal swap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.config import ConfigError, RecipeConfig
from recipes.core import RunContext, register
from recipes.report import add_proportion


@dataclass
class RelationConceptsConfig(RecipeConfig):
    relations: list[str] = field(
        default_factory=lambda: ["landmark_on_continent", "substance_phase", "country_language"]
    )
    subject_layer: int = 15
    object_layer: int = 29
    rank: int = field(default=100, metadata={"min": 1})
    n_shot: int = 3
    method: str = "randomized"
    n_lre_prompts: int = field(default=20, metadata={"min": 1})
    max_prompts: int | None = 60
    alpha: float = 0.05
    causality: bool = True


def _check(config: RelationConceptsConfig, ctx: RunContext) -> None:
    import semhooks as sh
    from semhooks.relations import list_relations

    known = list_relations()
    bad = [r for r in config.relations if r not in known]
    if bad:
        import difflib

        close = sorted({c for r in bad for c in difflib.get_close_matches(r, known, n=3)})
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"relations: unknown {bad}.{hint} The {len(known)} bundled relations: "
            f"{', '.join(sorted(known))}"
        )
    a = sh.adapt(ctx.model)
    for key in ("subject_layer", "object_layer"):
        try:
            a.resolve_layers(getattr(config, key))
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    if not 0 < config.rank <= a.d_model:
        raise ConfigError(f"rank: must be in 1..d_model={a.d_model}, got {config.rank}")
    if config.method not in ("exact", "randomized"):
        raise ConfigError(f"method: expected 'exact' or 'randomized', got {config.method!r}")


@register("relation-concepts", RelationConceptsConfig, check=_check)
def relation_concepts(config: RelationConceptsConfig, ctx: RunContext) -> dict[str, Any]:
    """LRCs (Chanin et al. 2024) per relation: accuracy and causality vs baselines."""
    from semhooks.relations import evaluate_relation, table_markdown
    from semhooks.relations.evaluation import RelationEvaluation

    evaluations = []
    rows: dict[str, Any] = {}
    for name in config.relations:

        def run(name: str = name) -> dict[str, Any]:
            try:
                ev = evaluate_relation(
                    ctx.model,
                    name,
                    subject_layer=config.subject_layer,
                    object_layer=config.object_layer,
                    rank=config.rank,
                    n_shot=config.n_shot,
                    method=config.method,  # type: ignore[arg-type]
                    n_lre_prompts=config.n_lre_prompts,
                    max_prompts=config.max_prompts,
                    alpha=config.alpha,
                    causality=config.causality,
                    seed=config.seed,
                    progress=ctx.progress,
                )
            except ValueError as exc:
                return {"skipped": str(exc)}
            return {
                "rows": ev.rows,
                "n_valid": ev.n_valid,
                "n_prompts": ev.n_prompts,
                "n_test": ev.n_test,
                "n_train": ev.n_train,
                "n_objects": ev.n_objects,
                "faithfulness": ev.faithfulness,
                "category": ev.category,
            }

        result = ctx.cached_json(f"relation_{name}", run)
        rows[name] = result
        if "rows" in result:
            evaluations.append(
                RelationEvaluation(
                    relation=name,
                    category=result.get("category"),
                    rows=result["rows"],
                    n_prompts=result["n_prompts"],
                    n_valid=result["n_valid"],
                    n_train=result.get("n_train", 0),
                    n_test=result["n_test"],
                    n_objects=result.get("n_objects", 0),
                    faithfulness=result.get("faithfulness"),
                )
            )
    if not evaluations:
        reasons = "; ".join(f"{name}: {res['skipped']}" for name, res in rows.items())
        raise RuntimeError(
            f"relation-concepts: no relation could be evaluated on {config.model!r} ({reasons}). "
            "A model that does not know the facts keeps no valid prompts; a relation needs at "
            "least two valid prompts for some object to have a test split."
        )
    summary: dict[str, Any] = {}
    for name, res in rows.items():
        if "rows" not in res:
            summary[f"{name}_skipped"] = res["skipped"][:80]
            continue
        n = int(res["n_test"])
        by = {r["method"]: r for r in res["rows"]}
        for method, r in by.items():
            add_proportion(summary, f"{name}_{method}_accuracy", r["accuracy"], n)
            if r.get("causality") is not None:
                add_proportion(summary, f"{name}_{method}_causality", r["causality"], n)
        if by.get("LRC", {}).get("control") is not None:
            add_proportion(summary, f"{name}_LRC_control", by["LRC"]["control"], n)
        summary[f"{name}_n_test"] = n
    ctx.notes.append(
        f"Settings: subject states at layer {config.subject_layer}, object states at layer "
        f"{config.object_layer}, LRE rank {config.rank} ({config.method} Jacobians, "
        f"{config.n_lre_prompts} prompts per LRE), {config.n_shot}-shot prompts; train/test: "
        "half of the valid prompts of each object, seeded. Intervention scale of the causal "
        "swap: h <- h + alpha ||h|| (u_target - u_source) at the subject's last token, at every "
        f"layer, alpha = {config.alpha:g}: at each layer a vector of norm alpha ||h|| "
        f"||u_target - u_source|| (at most {2 * config.alpha:g} ||h||) is added."
    )
    _define(ctx)
    # one table: a row per relation, then the unweighted mean per category and overall
    table = table_markdown(evaluations, by_category=True, ci=True)
    return {"summary": summary, "tables": [table], "relations": rows}


def _define(ctx: RunContext) -> None:
    ctx.define(
        "<method> accuracy / acc",
        "fraction of held-out test prompts whose subject state (subject layer, subject's "
        "last token) the method assigns to the right object; LRC: nearest relational concept "
        "(Chanin et al. 2024); logistic, svm, mean_difference: linear baselines on the same "
        "states and split",
        r"_(LRC|logistic|svm|mean_difference)_accuracy|\bacc\b",
    )
    ctx.define(
        "causal / causality",
        "causal swap success: fraction of test prompts where, after moving the subject state "
        "from the source object's concept towards another object's (the swap above), the "
        "model's probability of the target answer (minimum over its tokens, teacher forced) "
        "beats the original answer's",
        r"causal",
    )
    ctx.define(
        "LRC control (swap)",
        "the LRC's causal swap with random unit vectors at the same angle in place of the "
        "concepts (what a swap of that size does without meaning); same n and success rule",
        r"LRC[ _]control",
    )
    ctx.define(
        "LRE faith.",
        "LRE faithfulness: fraction of test prompts where the linear relational embedding's "
        "decoded top token equals the model's own top next token (Hernandez et al. 2023)",
        r"faith",
    )
    ctx.define("n_test", "held-out test prompts of the relation", r"n_test")
    ctx.define("n_obj", "distinct objects (answers) among the valid prompts", r"n_obj")
    ctx.define(
        "skipped",
        "the relation could not be evaluated on this model (reason given)",
        r"_skipped$",
    )
