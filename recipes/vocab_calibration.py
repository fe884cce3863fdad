"""Recipe ``vocab-calibration``: semantic calibration vs zero-shot, ICL, kNN and a probe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.config import ConfigError, RecipeConfig
from recipes.core import RunContext, register
from recipes.report import add_proportion


@dataclass
class VocabCalibrationConfig(RecipeConfig):
    datasets: list[str] = field(default_factory=lambda: ["sst2", "yelp", "amazon_cells"])
    label_words: list[str] = field(default_factory=lambda: ["negative", "positive"])
    n_train: int = field(default=600, metadata={"min": 1})
    n_test: int = field(default=300, metadata={"min": 1})
    layer: int = -1
    k_shot: int = field(default=4, metadata={"min": 0})
    icl_limit: int = 200


def _split(name: str, n_train: int, n_test: int, seed: int) -> tuple[Any, Any]:
    from semhooks.data.loaders import load_sentiment

    if name == "sst2":
        train = load_sentiment("sst2-train_sample").subsample(n_train, seed)
        test = load_sentiment("sst2-dev")
        return train, test.subsample(min(n_test, len(test)), seed)
    data = load_sentiment(name)
    train, test = data.split(0.4, seed)
    return train.subsample(min(n_train, len(train)), seed), test.subsample(
        min(n_test, len(test)), seed
    )


def _check(config: VocabCalibrationConfig, ctx: RunContext) -> None:
    from semhooks.studies.vocab import label_token_ids

    try:
        label_token_ids(ctx.model, config.label_words)
    except ValueError as exc:
        raise ConfigError(f"label_words: {exc}") from exc
    for name in config.datasets:
        try:
            _split(name, 4, 4, 0)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise ConfigError(f"datasets: {name!r}: {exc}") from exc


@register("vocab-calibration", VocabCalibrationConfig, check=_check)
def vocab_calibration(config: VocabCalibrationConfig, ctx: RunContext) -> dict[str, Any]:
    """Semantic calibration (Gu et al. 2024) beside zero-shot, ICL, kNN and logistic probes."""
    from semhooks.studies.calibration import calibration_study

    results = {}
    for name in config.datasets:

        def run(name: str = name) -> dict[str, Any]:
            train, test = _split(name, config.n_train, config.n_test, config.seed)
            res = calibration_study(
                ctx.model,
                train,
                test,
                config.label_words,
                layer=config.layer,
                k_shot=config.k_shot,
                icl_limit=config.icl_limit,
                seed=config.seed,
                progress=ctx.progress,
                name=name,
            )
            return {"table": res.table(), "scores": [vars(s) for s in res.scores]}

        results[name] = ctx.cached_json(f"calibration_{name}", run)
    summary: dict[str, Any] = {}
    for name, res in results.items():
        for s in res["scores"]:
            short = s["method"].split(" (")[0].replace(" ", "_")
            add_proportion(summary, f"{name}.{short}.accuracy", s["accuracy"], s["n_test"])
            summary[f"{name}.{short}.ari"] = s["ari"]
    _define(ctx, config)
    return {
        "summary": summary,
        "tables": [r["table"] for r in results.values()],
        "results": results,
    }


def _define(ctx: RunContext, config: VocabCalibrationConfig) -> None:
    ctx.define(
        "<dataset>.<method>.accuracy",
        "fraction of the dataset's test items classified correctly by that method (the "
        "1-shot/k-shot ICL row is scored on at most `icl_limit` items, hence its smaller n)",
        r"\.accuracy$",
    )
    ctx.define(
        "ari",
        "adjusted Rand index between the predicted and the true classes (0: chance "
        "agreement, 1: identical partitions), on the same test items",
        r"\.ari$|ARI",
    )
    ctx.define(
        "methods",
        f"zero-shot / ICL: the label words' ({', '.join(config.label_words)}) next-token "
        "logits; kNN and logistic regression: trained on the raw states; nearest label basis: "
        "the label words' semantic basis before calibration; semantic calibration: after it "
        "(Gu et al. 2024)",
        r"semantic_calibration|semantic calibration",
    )
