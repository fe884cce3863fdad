"""Recipe ``pooling-sentiment``: which pooling of which layer carries sentence sentiment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.config import ConfigError, RecipeConfig
from recipes.core import RunContext, register
from recipes.report import add_proportion


@dataclass
class PoolingSentimentConfig(RecipeConfig):
    train: str = "sst2-train"
    test: str = "sst2-dev"
    transfer: list[str] = field(
        default_factory=lambda: ["amazon_cells", "yelp", "imdb"], metadata={"allow_empty": True}
    )
    n_train: int = field(default=1000, metadata={"min": 1})
    n_test: int | None = 400
    layers: list[int] | None = None
    poolings: list[str] = field(
        default_factory=lambda: ["mean", "max", "last", "first", "weighted"]
    )
    cv: int = field(default=5, metadata={"min": 2})
    batch_size: int = field(default=16, metadata={"min": 1})


def _dataset(name: str, n: int | None, seed: int) -> Any:
    from semhooks.data.loaders import load_sentiment

    data = load_sentiment("sst2-train_sample" if name == "sst2-train" else name)
    return data.subsample(n, seed) if n is not None and n < len(data) else data


def _default_layers(n_layers: int) -> list[int]:
    step = max(1, n_layers // 6)
    return sorted(set(list(range(0, n_layers, step)) + [n_layers - 1]))


def _check(config: PoolingSentimentConfig, ctx: RunContext) -> None:
    import semhooks as sh
    from semhooks.studies.probing import POOLINGS

    bad = [p for p in config.poolings if p not in POOLINGS]
    if bad:
        raise ConfigError(f"poolings: unknown {bad}; choose from {list(POOLINGS)}")
    for key in (config.train, config.test, *config.transfer):
        try:
            _dataset(key, None, 0)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise ConfigError(f"dataset {key!r}: {exc}") from exc
    if config.layers is not None:
        try:
            sh.adapt(ctx.model).resolve_layers(config.layers)
        except ValueError as exc:
            raise ConfigError(f"layers: {exc}") from exc


@register("pooling-sentiment", PoolingSentimentConfig, check=_check)
def pooling_sentiment(config: PoolingSentimentConfig, ctx: RunContext) -> dict[str, Any]:
    """Pooling x layer probe accuracy on sentiment (Xing et al. 2024), with transfer."""
    import semhooks as sh
    from semhooks.studies.probing import PoolingResult, pooling_study

    layers = config.layers or _default_layers(sh.adapt(ctx.model).n_layers)

    def study() -> dict[str, Any]:
        return pooling_study(
            ctx.model,
            _dataset(config.train, config.n_train, config.seed),
            _dataset(config.test, config.n_test, config.seed),
            transfer={t: _dataset(t, config.n_test, config.seed) for t in config.transfer},
            layers=layers,
            poolings=config.poolings,
            cv=config.cv,
            seed=config.seed,
            batch_size=config.batch_size,
            progress=ctx.progress,
        ).to_dict()

    result = PoolingResult.from_dict(ctx.cached_json("pooling_study", study))
    ctx.save_figure(
        "pooling_heatmap",
        result.plot(),
        f"Probe accuracy, layer x pooling (trained on {result.train_set}, "
        f"n={result.protocol.get('n_train')})",
    )
    summary: dict[str, Any] = {}
    optimistic = []
    for name in result.eval_sets:
        chosen = result.selected(name)
        if chosen is None:  # a result cached before cv_accuracy was recorded
            chosen = result.best(name)
            summary[f"{name}_selected_on"] = "evaluation set (optimistic)"
        else:
            summary[f"{name}_selected_on"] = "training-set cross-validation"
        summary[f"{name}_selected"] = f"layer {chosen['layer']} / {chosen['pooling']}"
        add_proportion(summary, f"{name}_selected_accuracy", chosen["accuracy"], chosen["n"])
        peak = result.best(name)
        optimistic.append(
            f"{name}: {peak['accuracy']:.3f} at layer {peak['layer']} / {peak['pooling']} "
            f"(n={peak['n']}, 95% CI [{peak['ci_low']:.3f}, {peak['ci_high']:.3f}])"
        )
    ctx.notes.append(
        "Selection: the (layer, pooling) of `*_selected` has the highest cross-validated "
        f"accuracy on the training set ({result.protocol.get('cv')}-fold, "
        f"n={result.protocol.get('n_train')}); the evaluation sets play no part in it, and the "
        "same choice is scored on every set. For comparison only, the peak over the table "
        "*chosen on each evaluation set itself* (optimistic): " + "; ".join(optimistic) + "."
    )
    _define(ctx)
    return {
        "summary": summary,
        "tables": [f"### {name}\n\n{result.table(name)}" for name in result.eval_sets],
        "result": result.to_dict(),
    }


def _define(ctx: RunContext) -> None:
    ctx.define(
        "<set>_selected",
        "the layer and pooling with the highest cross-validated accuracy of the probe on the "
        "training set",
        r"_selected$",
    )
    ctx.define(
        "<set>_selected_on",
        "where the selection was made (training-set cross-validation, or the evaluation set "
        "for a result cached by an older semhooks: then the accuracy is optimistic)",
        r"_selected_on$",
    )
    ctx.define(
        "<set>_selected_accuracy",
        "accuracy on that evaluation set of the probe at the selected layer and pooling "
        "(standardised states, logistic regression with C chosen by cross-validation); the "
        "first set is in-domain, the others are transfer sets",
        r"_selected_accuracy",
    )
    ctx.define(
        "table cells",
        "accuracy (%) with its 95% Wilson interval in brackets, per layer (rows) and pooling "
        "(columns); bold: the peak over the table on that set (optimistic)",
        r"\| layer \|",
    )
    ctx.define(
        "poolings",
        "mean/max/last over the content tokens (no BOS/CLS/SEP); first: position 0; weighted: "
        "a learned attention pooler",
        r"\| layer \|",
    )
