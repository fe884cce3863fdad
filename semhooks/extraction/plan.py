"""An extraction request as one value (:class:`ExtractionPlan`) and its run through the reader.

:func:`plan_extraction` validates what :func:`~semhooks.extract_states` was asked for once;
:func:`extract_items` then runs any slice of the corpus (all of it, one shard, one rank's
shards) batch by batch through :func:`~semhooks.extraction.reader.read`: each layer's hook
selects and pools the chosen tokens, so only ``[batch, d]`` (or the selected rows) leaves the
forward pass, and the pass stops after the deepest layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import ModelAdapter, adapt
from semhooks.extraction.layer_states import LayerStates
from semhooks.extraction.pooling import POOLS, pool_or_keep
from semhooks.extraction.reader import read
from semhooks.extraction.selection import (
    TokenSpec,
    as_selector,
    describe_tokens,
    select_tokens,
    token_index,
)
from semhooks.extraction.spans import Spans


@dataclass(frozen=True)
class ExtractionPlan:
    """Everything that decides an extraction's states, validated (see :func:`plan_extraction`).

    ``texts`` is the whole corpus; item ids (for explicit positions and spans given per text)
    index into it. ``provenance`` is the adapter's provenance for the requested hooks.
    """

    adapter: ModelAdapter
    texts: tuple[str, ...]
    layers: tuple[int, ...]
    site: str
    selector: TokenSpec
    pool: str | None
    pool_weights: Any = None
    batch_size: int = 16
    padding_side: str = "right"
    truncate: bool = False
    sort_by_length: bool = True
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def hook_names(self) -> dict[int, str]:
        """``{layer: hook name}`` of the requested site."""
        return {layer: self.adapter.hook_name(self.site, layer) for layer in self.layers}

    @property
    def tokens(self) -> str:
        """The token selection's short name."""
        return describe_tokens(self.selector)


def plan_extraction(
    model: Any,
    texts: Sequence[str],
    layers: int | Sequence[int] | str = "all",
    site: str = "resid_post",
    tokens: TokenSpec = "last",
    pool: str | None = "mean",
    *,
    pool_weights: Any = None,
    batch_size: int = 16,
    padding_side: str = "right",
    truncate: bool = False,
    sort_by_length: bool = True,
) -> ExtractionPlan:
    """Validate an extraction request (arguments as :func:`~semhooks.extract_states`)."""
    adapter = adapt(model)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("extract_states got an empty list of texts")
    if pool is not None and pool not in POOLS:
        raise ValueError(f"unknown pooling {pool!r}; choose one of {POOLS} or None")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    adapter.require_eval()
    layer_list = adapter.resolve_layers(layers) if site != "embed" else [0]
    names = {layer: adapter.hook_name(site, layer) for layer in layer_list}
    selector = as_selector(tokens)
    if not isinstance(selector, str) and not isinstance(selector, Spans):
        if len(selector) != len(texts):
            raise ValueError(f"{len(selector)} explicit positions for {len(texts)} texts")
    if isinstance(selector, Spans) and isinstance(selector.source, list):
        if len(selector.source) != len(texts):
            raise ValueError(f"{len(selector.source)} spans given for {len(texts)} texts")
    provenance = adapter.provenance(
        hook_names=[names[layer] for layer in layer_list], n_items=len(texts)
    )
    return ExtractionPlan(
        adapter=adapter,
        texts=tuple(texts),
        layers=tuple(layer_list),
        site=site,
        selector=selector,
        pool=pool,
        pool_weights=pool_weights,
        batch_size=batch_size,
        padding_side=padding_side,
        truncate=truncate,
        sort_by_length=sort_by_length,
        provenance=provenance,
    )


def length_batches(
    adapter: ModelAdapter, texts: Sequence[str], batch_size: int, sort: bool
) -> list[list[int]]:
    """Indices into ``texts`` in batches of ``batch_size``; longest first when ``sort`` (cuts
    padding)."""
    order = list(range(len(texts)))
    if sort and len(texts) > batch_size:
        lengths = [
            len(ids) for ids in adapter.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        ]
        order.sort(key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def extract_items(
    plan: ExtractionPlan,
    items: Sequence[int] | None = None,
    *,
    progress: bool = False,
    provenance: dict[str, Any] | None = None,
) -> LayerStates:
    """The states of corpus items ``items`` (default: all), in that order.

    ``provenance`` extends the plan's (e.g. the shard number). Returns :class:`LayerStates`
    with ``states[n_layers, len(items), d]`` (float32, CPU), or one row per selected token
    with ``pool=None``.
    """
    adapter, how = plan.adapter, plan.pool
    ids = list(range(len(plan.texts))) if items is None else list(items)
    texts = [plan.texts[i] for i in ids]
    layer_list = list(plan.layers)
    selection: list[Tensor] = []

    def take(layer: int, acts: Tensor) -> Tensor:
        sel = selection[0].to(acts.device)
        return pool_or_keep(acts, sel, how, plan.pool_weights, layer).float().cpu()

    n = len(texts)
    pooled = torch.empty(len(layer_list), n, adapter.d_model) if how is not None else None
    token_rows: list[list[Tensor]] = [[] for _ in layer_list]
    item_parts: list[Tensor] = []
    pos_parts: list[Tensor] = []
    n_truncated = 0
    batches = length_batches(adapter, texts, plan.batch_size, plan.sort_by_length)
    for idx in tqdm(batches, desc="extract_states", disable=not progress, unit="batch"):
        batch = adapter.tokenize(
            [texts[i] for i in idx], padding_side=plan.padding_side, truncate=plan.truncate
        )
        n_truncated += sum(batch.truncated)
        selection[:] = [select_tokens(batch, plan.selector, [ids[i] for i in idx])]
        got = read(adapter, batch, plan.hook_names, take).values
        if how is not None:
            assert pooled is not None
            for li, layer in enumerate(layer_list):
                pooled[li, idx] = got[layer]
        else:
            rows, pos = token_index(selection[0], batch, idx)
            item_parts.append(rows)
            pos_parts.append(pos)
            for li, layer in enumerate(layer_list):
                token_rows[li].append(got[layer])
    prov = {
        **plan.provenance,
        **(provenance or {}),
        "n_truncated": n_truncated,
        "pool": how,
        "site": plan.site,
    }
    if how is not None:
        assert pooled is not None
        return LayerStates(pooled, layer_list, plan.site, how, plan.tokens, prov)
    rows = torch.cat(item_parts)
    order = torch.argsort(rows * (1 << 20) + torch.cat(pos_parts), stable=True)
    states = torch.stack([torch.cat(parts)[order] for parts in token_rows])
    return LayerStates(
        states,
        layer_list,
        plan.site,
        None,
        plan.tokens,
        prov,
        rows[order],
        torch.cat(pos_parts)[order],
    )
