"""Recipe ``concept-steering``: a direction from contrastive prompts, its steering curve vs a
random control of equal norm, and greedy generations under it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.config import ConfigError, RecipeConfig
from recipes.core import RunContext, register

POSITIVE = [
    "I loved this movie; it was wonderful.",
    "What a delightful, beautiful day.",
    "The food was excellent and the staff were lovely.",
    "This is the best book I have ever read.",
    "An amazing, heartwarming performance.",
    "I am so happy with this purchase.",
]
NEGATIVE = [
    "I hated this movie; it was awful.",
    "What a miserable, ugly day.",
    "The food was terrible and the staff were rude.",
    "This is the worst book I have ever read.",
    "A boring, painful performance.",
    "I am so disappointed with this purchase.",
]


@dataclass
class ConceptSteeringConfig(RecipeConfig):
    layer: int = 12
    positive: list[str] = field(default_factory=lambda: list(POSITIVE), metadata={"min_len": 2})
    negative: list[str] = field(default_factory=lambda: list(NEGATIVE), metadata={"min_len": 2})
    prompts: list[str] = field(
        default_factory=lambda: [
            "The movie was",
            "Honestly, the food tasted",
            "My day has been",
            "The new album sounds",
        ]
    )
    target_tokens: list[str] = field(default_factory=lambda: [" great", " good", " wonderful"])
    contrast_tokens: list[str] = field(default_factory=lambda: [" terrible", " bad", " awful"])
    alphas: list[float] = field(default_factory=lambda: [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    generate_alpha: float = 3.0
    max_new_tokens: int = field(default=12, metadata={"min": 1})


def _check(config: ConceptSteeringConfig, ctx: RunContext) -> None:
    import semhooks as sh

    a = sh.adapt(ctx.model)
    if a.is_encoder:
        raise ConfigError(f"model: {config.model} is an encoder; steering curves need a decoder")
    try:
        a.resolve_layers(config.layer)
    except ValueError as exc:
        raise ConfigError(f"layer: {exc}") from exc
    if len(config.positive) < 2 or len(config.negative) < 2:
        raise ConfigError("positive/negative: need at least 2 prompts each")
    for tok in [*config.target_tokens, *config.contrast_tokens]:
        if not a.to_token_ids([tok])[0]:
            raise ConfigError(f"target/contrast token {tok!r} does not tokenise")


@register("concept-steering", ConceptSteeringConfig, check=_check)
def concept_steering(config: ConceptSteeringConfig, ctx: RunContext) -> dict[str, Any]:
    """Mean-difference direction -> steering curve with a random control -> generations."""
    import numpy as np

    import semhooks as sh
    from semhooks.estimators.directions import MeanDifference
    from semhooks.interventions import Steer
    from semhooks.studies.steering import generate, steering_curve

    texts = list(config.positive) + list(config.negative)
    states = ctx.cached_states(
        "contrast_states",
        lambda: sh.extract_states(
            ctx.model, texts, layers=[config.layer], tokens="all", pool="mean", progress=False
        ),
    )
    y = np.array([1] * len(config.positive) + [0] * len(config.negative))
    direction = MeanDifference(layer=config.layer).fit(states, y)
    steer = Steer(direction.direction_, alpha=1.0, layers=[config.layer], positions="all")
    curve = steering_curve(
        ctx.model,
        config.prompts,
        steer,
        config.alphas,
        config.target_tokens,
        contrast_tokens=config.contrast_tokens,
        seed=config.seed,
    )
    norm = float(direction.direction_.norm())
    last = sh.extract_states(
        ctx.model, config.prompts, layers=[config.layer], tokens="last", pool="last", progress=False
    )
    resid = float(last.layer(config.layer).norm(dim=-1).mean())
    alphas = ", ".join(f"{a:g}" for a in sorted(config.alphas))
    ctx.save_figure(
        "steering_curve",
        curve.plot(),
        f"Steering at layer {config.layer} (resid_post, all positions), ||v|| = {norm:.3g}, "
        f"alpha in [{alphas}]: P(target tokens) and mean logit(targets) - mean logit(contrast "
        "tokens), against a random direction of the same norm (dashed)",
    )
    g = config.generate_alpha
    base = generate(ctx.model, config.prompts, [], config.max_new_tokens)
    pos = generate(ctx.model, config.prompts, [steer.with_alpha(g)], config.max_new_tokens)
    neg = generate(ctx.model, config.prompts, [steer.with_alpha(-g)], config.max_new_tokens)
    rows = [
        f"| prompt | no steering | alpha = +{g:g} (+ direction) | alpha = -{g:g} (- direction) |",
        "|---|---|---|---|",
    ]
    for p, b, s_pos, s_neg in zip(config.prompts, base, pos, neg, strict=True):
        rows.append(f"| {p} | {b!r} | {s_pos!r} | {s_neg!r} |")
    effect, control = curve.effect("logit_diff")
    push, push_control = curve.effect("logit_diff", signed=True)
    nan = float("nan")
    ctx.notes.append(
        f"Intervention scale: h <- h + alpha v at `blocks.{config.layer}.hook_resid_post`, every "
        f"position, v = mean state of the positive texts minus mean state of the negative ones "
        f"({len(config.positive)} + {len(config.negative)} texts, token-mean pooled), "
        f"||v|| = {norm:.4g}. The prompts' last-token residual norm at that layer is "
        f"{resid:.4g} on average, so alpha = 1 adds {norm / resid:.2%} of it. Curve: alpha in "
        f"[{alphas}]; greedy generations ({config.max_new_tokens} new tokens) at alpha = "
        f"+/-{g:g} (||alpha v|| = {abs(g) * norm:.4g}, {abs(g) * norm / resid:.2%} of the "
        "residual norm)."
    )
    _define(ctx)
    return {
        "summary": {
            "layer": config.layer,
            "direction_norm": norm,
            "residual_norm": resid,
            "generate_alpha": g,
            # logit difference (target - contrast) at the largest alpha minus at the smallest
            "logit_diff_push": push,
            "control_logit_diff_push": push_control if push_control is not None else nan,
            # largest absolute change from the no-hook baseline (disruption counts too)
            "logit_diff_max_change": effect,
            "control_logit_diff_max_change": control if control is not None else nan,
        },
        "tables": ["### Greedy generations\n\n" + "\n".join(rows)],
        "curve": curve.to_dict(),
    }


def _define(ctx: RunContext) -> None:
    ctx.define("layer", "the block whose output (`resid_post`) is steered", r"(^|\.)layer$")
    ctx.define(
        "direction_norm",
        "||v||, the L2 norm of the mean-difference direction v (positive minus negative "
        "texts); the steering adds alpha v",
        r"direction_norm",
    )
    ctx.define(
        "residual_norm",
        "mean L2 norm of the prompts' last-token residual state at that layer, unsteered (the "
        "scale alpha ||v|| is to be compared with)",
        r"residual_norm",
    )
    ctx.define(
        "generate_alpha",
        "the alpha of the greedy generations (+alpha and -alpha columns)",
        r"generate_alpha",
    )
    ctx.define(
        "logit difference",
        "at the prompt's last token, mean logit of the target tokens minus mean logit of the "
        "contrast tokens, averaged over prompts",
        r"logit_diff",
    )
    ctx.define(
        "logit_diff_push",
        "logit difference at the largest alpha minus at the smallest: how far pushing along v "
        "moves the output towards the target tokens (signed)",
        r"logit_diff_push",
    )
    ctx.define(
        "logit_diff_max_change",
        "largest absolute change of the logit difference from the unsteered baseline over the "
        "alphas (unsigned: disruption counts too)",
        r"max_change",
    )
    ctx.define(
        "control_* (steering)",
        "the same measurement with a random direction of the same norm as v in place of v "
        "(one seeded draw, fixed across alphas): what steering by that much does when the "
        "direction carries no meaning",
        r"control_logit",
    )
