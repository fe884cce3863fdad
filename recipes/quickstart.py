"""Recipe ``quickstart``: a short tour on SmolLM2 (its report states the measured run time;
the README gives cold and warm timings).

Per-layer states -> lexical semantics by layer (WiC, small) -> a steering direction with
its random control -> one relation's concepts (randomized Jacobians) -> information
emergence on entity lists (Gaussian MI).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recipes.config import RecipeConfig
from recipes.core import RunContext, register


@dataclass
class QuickstartConfig(RecipeConfig):
    wic_pairs: int = 80
    relation: str = "substance_phase"
    emergence_lists: int = 300


def _steps(config: QuickstartConfig) -> list[tuple[str, str, Any]]:
    from recipes.concept_steering import ConceptSteeringConfig
    from recipes.emergence_profile import EmergenceProfileConfig
    from recipes.lexical_layers import LexicalLayersConfig
    from recipes.relation_concepts import RelationConceptsConfig

    common: dict[str, Any] = {
        "model": config.model,
        "seed": config.seed,
        "progress": config.progress,
    }
    return [
        ("wic", "lexical-layers", LexicalLayersConfig(
            **common, encoder=None, variants=["repeat"], n_fit=config.wic_pairs,
            n_eval=config.wic_pairs, probe=False)),
        ("steering", "concept-steering", ConceptSteeringConfig(
            **common, alphas=[-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0], max_new_tokens=6,
            prompts=["The movie was", "My day has been"])),
        ("relation", "relation-concepts", RelationConceptsConfig(
            **common, relations=[config.relation], rank=50, max_prompts=40, n_lre_prompts=10)),
        ("emergence", "emergence-profile", EmergenceProfileConfig(
            **common, n=config.emergence_lists, k=5, estimator="mine", reduce_dim=16,
            layers=[0, 10, 20, 29])),
    ]  # fmt: skip


def _check(config: QuickstartConfig, ctx: RunContext) -> None:
    from recipes.core import get_recipe

    for _, recipe_name, sub_config in _steps(config):
        recipe = get_recipe(recipe_name)
        if recipe.check is not None:
            recipe.check(sub_config, ctx)


@register("quickstart", QuickstartConfig, check=_check)
def quickstart(config: QuickstartConfig, ctx: RunContext) -> dict[str, Any]:
    """A short tour: states, WiC by layer, steering, relation concepts, emergence."""
    import time

    import semhooks as sh
    from recipes.core import get_recipe
    from semhooks.cli import SUMMARY_TEXTS

    summary: dict[str, Any] = {}
    tables: list[str] = []
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    states = ctx.cached_states(
        "summary_states",
        lambda: sh.extract_states(
            ctx.model, SUMMARY_TEXTS, tokens="last", pool="last", progress=False
        ),
    )
    summary["last_layer_mean_norm"] = float(states.states[-1].norm(dim=-1).mean())
    seconds["states"] = time.perf_counter() - t
    for name, recipe_name, sub_config in _steps(config):
        t = time.perf_counter()
        sub = get_recipe(recipe_name).run(sub_config, ctx)
        seconds[name] = time.perf_counter() - t
        for k, v in sub["summary"].items():
            summary[f"{name}.{k}"] = v
        tables += [f"## {name}\n\n{tab}" for tab in sub.get("tables", [])]
    summary.update({f"seconds.{k}": round(v, 1) for k, v in seconds.items()})
    ctx.define(
        "last_layer_mean_norm",
        f"mean L2 norm of the last-token state at the last layer over {len(SUMMARY_TEXTS)} "
        "short texts (the scale residual states have)",
        r"last_layer_mean_norm",
    )
    ctx.define(
        "seconds.<step>",
        "measured wall-clock seconds of each step of this run (states, wic, steering, "
        "relation, emergence), model loading excluded",
        r"^seconds\.",
    )
    ctx.notes.insert(
        0,
        "Metric names are `<step>.<metric>`, the step's recipe being wic: lexical-layers "
        "(WiC pairs from the dev split), steering: concept-steering, relation: "
        "relation-concepts, emergence: emergence-profile; each metric is defined below.",
    )
    return {"summary": summary, "tables": tables}
