"""Recipe ``pooling-sentiment``: which pooling of which layer carries sentence sentiment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.core import ConfigError, RecipeConfig, RunContext, register


@dataclass
class PoolingSentimentConfig(RecipeConfig):
    train: str = "sst2-train"
    test: str = "sst2-dev"
    transfer: list[str] = field(default_factory=lambda: ["amazon_cells", "yelp", "imdb"])
    n_train: int = 1000
    n_test: int | None = 400
    layers: list[int] | None = None
    poolings: list[str] = field(
        default_factory=lambda: ["mean", "max", "last", "first", "weighted"]
    )
    cv: int = 5
    batch_size: int = 16


def _dataset(name: str, n: int | None, seed: int) -> Any:
    from semhooks.datasets import load_sentiment

    data = load_sentiment("sst2-train_sample" if name == "sst2-train" else name)
    return data.subsample(n, seed) if n is not None and n < len(data) else data


def _default_layers(n_layers: int) -> list[int]:
    step = max(1, n_layers // 6)
    return sorted(set(list(range(0, n_layers, step)) + [n_layers - 1]))


def _check(config: PoolingSentimentConfig, ctx: RunContext) -> None:
    import semhooks as sh
    from semhooks.probing import POOLINGS

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
    from semhooks.probing import PoolingResult, pooling_study

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
    ctx.save_figure("pooling_heatmap", result.plot(), "Probe accuracy, layer x pooling")
    summary: dict[str, Any] = {}
    for name in result.eval_sets:
        best = result.best(name)
        summary[f"{name}_best_accuracy"] = best["accuracy"]
        summary[f"{name}_best"] = f"layer {best['layer']} / {best['pooling']}"
    return {
        "summary": summary,
        "tables": [f"### {name}\n\n{result.table(name)}" for name in result.eval_sets],
        "result": result.to_dict(),
    }
