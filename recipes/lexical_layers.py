"""Recipe ``lexical-layers``: WiC contextual word identification per layer, decoder and encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.core import ConfigError, RecipeConfig, RunContext, register


@dataclass
class LexicalLayersConfig(RecipeConfig):
    encoder: str | None = "minilm-l6"
    variants: list[str] = field(default_factory=lambda: ["base", "repeat", "prompt", "last"])
    layers: list[int] | None = None
    n_fit: int = 1000
    n_eval: int | None = None
    standardize: bool = True
    probe: bool = True
    batch_size: int = 16


def _check(config: LexicalLayersConfig, ctx: RunContext) -> None:
    import semhooks as sh
    from semhooks.lexical import VARIANTS

    bad = [v for v in config.variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"variants: unknown {bad}; choose from {list(VARIANTS)}")
    if config.layers is not None:
        try:
            sh.adapt(ctx.model).resolve_layers(config.layers)
        except ValueError as exc:
            raise ConfigError(f"layers: {exc}") from exc
    if config.n_fit < 10:
        raise ConfigError(f"n_fit: need at least 10 pairs to choose thresholds, got {config.n_fit}")


@register("lexical-layers", LexicalLayersConfig, check=_check)
def lexical_layers(config: LexicalLayersConfig, ctx: RunContext) -> dict[str, Any]:
    """WiC per layer (Liu et al. 2024): where lexical semantics peaks, decoder vs encoder."""
    from semhooks.lexical import WiCResult, wic_study

    def study(model: Any) -> WiCResult:
        return wic_study(
            model,
            variants=config.variants,
            layers=config.layers if config.layers is not None else "all",
            n_fit=config.n_fit,
            n_eval=config.n_eval,
            seed=config.seed,
            standardize=config.standardize,
            probe=config.probe,
            batch_size=config.batch_size,
            progress=ctx.progress,
        )

    dec = WiCResult.from_dict(ctx.cached_json("wic_decoder", lambda: study(ctx.model).to_dict()))
    results = {"decoder": dec}
    encoder = config.encoder
    if encoder:
        enc_dict = ctx.cached_json("wic_encoder", lambda: study(ctx.load_other(encoder)).to_dict())
        results["encoder"] = WiCResult.from_dict(enc_dict)
    fig = dec.plot(results.get("encoder"))
    ctx.save_figure("wic_layers", fig, "WiC dev accuracy per layer (threshold readout)")
    summary: dict[str, Any] = {}
    for role, res in results.items():
        for variant, layer in res.best_layer.items():
            summary[f"{role}_{variant}_best_layer"] = layer
            summary[f"{role}_{variant}_best_acc"] = res.best_accuracy[variant]
    return {
        "summary": summary,
        "tables": [f"### {role}\n\n{res.table()}" for role, res in results.items()],
        "results": {role: res.to_dict() for role, res in results.items()},
    }
