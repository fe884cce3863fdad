"""Recipe ``emergence-profile``: information emergence per layer and position."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.config import ConfigError, RecipeConfig
from recipes.core import RunContext, register


@dataclass
class EmergenceProfileConfig(RecipeConfig):
    inputs: str = "entities"
    n: int = field(default=2000, metadata={"min": 50})
    k: int = field(default=8, metadata={"min": 2})
    estimator: str = "gaussian"
    reduce_dim: int = field(default=32, metadata={"min": 1})
    layers: list[int] | None = None


def _check(config: EmergenceProfileConfig, ctx: RunContext) -> None:
    import semhooks as sh

    if config.inputs not in ("entities", "sentences"):
        raise ConfigError(f"inputs: expected 'entities' or 'sentences', got {config.inputs!r}")
    if config.estimator not in ("gaussian", "mine", "infonce"):
        raise ConfigError(
            f"estimator: expected gaussian, mine or infonce, got {config.estimator!r}"
        )
    if config.n < 50:
        raise ConfigError(f"n: MI estimates need at least 50 sequences, got {config.n}")
    if config.layers is not None:
        try:
            sh.adapt(ctx.model).resolve_layers(config.layers)
        except ValueError as exc:
            raise ConfigError(f"layers: {exc}") from exc


@register("emergence-profile", EmergenceProfileConfig, check=_check)
def emergence_profile(config: EmergenceProfileConfig, ctx: RunContext) -> dict[str, Any]:
    """Information emergence (Chen et al. 2024): IE per layer and position, with ceilings."""
    import numpy as np

    from semhooks.studies.emergence import (
        EmergenceResult,
        entity_lists,
        information_emergence,
        natural_sentences,
    )

    def run() -> dict[str, Any]:
        positions: Any = None
        if config.inputs == "entities":
            seqs: Any = entity_lists(k=config.k, n=config.n, model=ctx.model, seed=config.seed)
        else:
            # sentences differ in length: read the first positions every sentence has
            seqs = natural_sentences(ctx.model, n=config.n, min_tokens=12, seed=config.seed)
            positions = list(range(1, 13))
        res = information_emergence(
            ctx.model,
            seqs,
            config.estimator,
            positions=positions,
            layers=config.layers if config.layers is not None else "all",
            reduce_dim=config.reduce_dim,
            seed=config.seed,
            progress=ctx.progress,
        )
        return res.to_dict()

    result = EmergenceResult.from_dict(ctx.cached_json("emergence", run))
    n_blocks = len(result.layers)
    ctx.save_figure(
        "emergence",
        result.plot(),
        f"Information emergence ({config.inputs}, {config.estimator} estimator, "
        f"n={result.protocol.get('n_sequences')} sequences, {n_blocks} blocks: "
        f"{', '.join(str(x) for x in result.layers)})",
    )
    ie = np.asarray(result.ie, dtype=float)
    finite = np.isfinite(ie)
    if not finite.any():
        raise ValueError(
            f"every IE cell is NaN with estimator {config.estimator!r} (too few distinct inputs "
            "for it, see the warnings); use estimator='mine' or more sequences"
        )
    best = int(np.nanargmax(np.where(finite, ie, -np.inf)))
    summary = {
        "mean_ie": float(ie[finite].mean()),
        "max_ie": float(ie.flat[best]),
        "argmax_layer": int(result.layers[best // ie.shape[1]]),
        "ceiling_macro_last": float(np.asarray(result.ceiling_macro)[-1]),
        "nan_cells": int((~finite).sum()),
    }
    _define(ctx)
    return {"summary": summary, "tables": [result.table()], "result": result.to_dict()}


def _define(ctx: RunContext) -> None:
    ctx.define(
        "IE",
        "information emergence IE(l, t) = MI(macro) - mean MI(micro), in bits: how much the "
        "block-l state at position t says about the whole prefix beyond what the states say "
        "about their own tokens (Chen et al. 2024); the MI values are estimates (lower bounds "
        "for MINE/InfoNCE)",
        r"(^|[._])(mean|max)_ie$|\| block \|",
    )
    ctx.define("mean_ie", "mean of IE over every finite (block, position) cell", r"mean_ie")
    ctx.define("max_ie", "the largest IE cell", r"max_ie")
    ctx.define(
        "argmax_layer",
        "the block of the largest IE cell (descriptive: picked on the same data)",
        r"argmax_layer",
    )
    ctx.define(
        "ceiling",
        "log2 of the number of distinct inputs (sequences for macro; tokens, averaged over "
        "positions, for micro): no MI estimate can exceed it, and one within 90% of it is "
        "saturated",
        r"ceiling",
    )
    ctx.define(
        "ceiling_macro_last",
        "the macro ceiling at the last position",
        r"ceiling_macro_last",
    )
    ctx.define(
        "nan_cells",
        "(block, position) cells without an estimate (too few distinct inputs for the estimator)",
        r"nan_cells",
    )
