"""Recipe ``lexical-layers``: WiC contextual word identification per layer, decoder and encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.config import ConfigError, RecipeConfig
from recipes.core import RunContext, register
from recipes.report import add_proportion, ci95


@dataclass
class LexicalLayersConfig(RecipeConfig):
    encoder: str | None = "minilm-l6"
    variants: list[str] = field(default_factory=lambda: ["base", "repeat", "prompt", "last"])
    layers: list[int] | None = None
    n_fit: int = field(default=1000, metadata={"min": 1})
    n_eval: int | None = None
    standardize: bool = True
    probe: bool = True
    batch_size: int = field(default=16, metadata={"min": 1})


def _check(config: LexicalLayersConfig, ctx: RunContext) -> None:
    import semhooks as sh
    from semhooks.studies.lexical import VARIANTS

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
    from semhooks.studies.lexical import WiCResult, wic_study

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
    n_eval = dec.protocol.get("n_eval")
    ctx.save_figure(
        "wic_layers",
        fig,
        f"WiC {dec.protocol.get('eval_split', 'dev')} accuracy per layer (n={n_eval} pairs, "
        "cosine + threshold readout), with 95% Wilson bands; y from at most chance (0.5) to 1.0",
    )
    summary: dict[str, Any] = {}
    peaks = []
    for role, res in results.items():
        n = int(res.protocol.get("n_eval") or 0)
        for variant, layer in res.selected_layer.items():
            summary[f"{role}_{variant}_layer"] = layer
            add_proportion(summary, f"{role}_{variant}_accuracy", res.selected_accuracy[variant], n)
            peak, at = res.best_accuracy[variant], res.best_layer[variant]
            low, high = ci95(peak, n)
            peaks.append(
                f"{role} {variant}: {peak:.3f} at layer {at} (n={n}, 95% CI [{low:.3f}, {high:.3f}])"
            )
    ctx.notes.append(
        "Layer choice: each `*_layer` is chosen on the fit split "
        f"({dec.protocol.get('fit_split')}, n={dec.protocol.get('n_fit')} pairs) and "
        "`*_accuracy` is measured at that layer on the evaluation split "
        f"({dec.protocol.get('eval_split')}). For comparison only, the peak over layers *chosen "
        "on the evaluation split itself* (optimistic: the maximum of "
        f"{len(dec.layers)} noisy estimates): " + "; ".join(peaks) + "."
    )
    _define(ctx)
    return {
        "summary": summary,
        "tables": [f"### {role}\n\n{res.table()}" for role, res in results.items()],
        "results": {role: res.to_dict() for role, res in results.items()},
    }


def _define(ctx: RunContext) -> None:
    ctx.define(
        "decoder/encoder_<variant>_layer",
        "the layer (block output, `blocks.L.hook_resid_post`) with the highest accuracy on the "
        "fit split; the evaluation split plays no part in choosing it",
        r"(decoder|encoder)_\w+_layer$",
    )
    ctx.define(
        "decoder/encoder_<variant>_accuracy",
        "WiC accuracy on the evaluation split at that layer: the two sentences' target-word "
        "vectors (standardised, cosine) are called 'same sense' above a threshold chosen on "
        "the fit split",
        r"(decoder|encoder)_\w+_accuracy",
    )
    ctx.define(
        "<variant> cos / probe (table)",
        "evaluation accuracy (%) per layer of the cosine + threshold readout (cos) or the "
        "logistic probe on [|a-b|, a*b] (probe), with the 95% Wilson interval in brackets; "
        "bold: the column's peak over layers on the evaluation split (optimistic)",
        r"\w+ (cos|probe) \|",
    )
    ctx.define(
        "variants",
        "the word's vector is read: base, from its tokens in the sentence; repeat, from its "
        "tokens in the second copy of the sentence written twice; prompt, at the last token "
        "of a template asking for the word's meaning; last, at the sentence's last token",
        r"(decoder|encoder)_(base|repeat|prompt|last)_",
    )
