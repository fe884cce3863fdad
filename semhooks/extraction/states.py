"""Per-layer states of chosen tokens, pooled inside the hook: :func:`extract_states`.

:func:`extract_states` runs texts through the model once, batch by batch, through the one
activation reader (:mod:`semhooks.extraction.reader`). A hook on each requested layer
selects tokens (last, first, all, a span, explicit positions), pools them (mask-aware) and
copies only ``[batch, d]`` out of the forward pass; the deepest hook then stops the pass, so
later blocks and the unembedding never run. Memory is ``O(n_layers x n_items x d)``, never a
full activation cache.

The pieces live one idea per module: :mod:`~semhooks.extraction.selection` (which tokens),
:mod:`~semhooks.extraction.layer_states` (:class:`LayerStates`),
:mod:`~semhooks.extraction.plan` (:class:`ExtractionPlan`, the run),
:mod:`~semhooks.extraction.shards` (:class:`ShardedStates`, streaming and resume). Their
public names are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semhooks.data.columns import from_columns
from semhooks.extraction.layer_states import LayerStates, stack_layers
from semhooks.extraction.plan import ExtractionPlan, extract_items, plan_extraction
from semhooks.extraction.selection import TokenSpec, select_tokens
from semhooks.extraction.shards import (
    FolderLockedError,
    ShardedStates,
    check_shard_size,
    extract_sharded,
    folder_lock,
)

__all__ = [
    "ExtractionPlan",
    "FolderLockedError",
    "LayerStates",
    "ShardedStates",
    "TokenSpec",
    "check_shard_size",
    "extract_states",
    "folder_lock",
    "plan_extraction",
    "select_tokens",
    "stack_layers",
]


def extract_states(
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
    progress: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    shard_size: int = 1024,
) -> Any:
    """Per-layer states of chosen tokens, pooled inside the hook.

    Args:
        model: a TransformerBridge, HookedTransformer or :class:`ModelAdapter`.
        texts: the texts (a list of non-empty strings).
        layers: ``"all"``, a layer or a list of layers (negative indices allowed).
        site: ``resid_pre | resid_mid | resid_post | attn_out | mlp_out | embed``.
        tokens: which tokens to read, see :func:`select_tokens`.
        pool: ``mean | max | last | first | weighted`` over the selected tokens, or ``None``
            to keep one row per selected token.
        pool_weights: for ``pool="weighted"``: a fitted :class:`AttentionPooler` or a
            callable ``(acts [batch, pos, d], layer) -> scores [batch, pos]``.
        batch_size: texts per forward pass (batches are formed by length to cut padding).
        padding_side: ``"right"`` or ``"left"``; results do not depend on it.
        truncate: cut texts longer than the context window (flagged in provenance) instead
            of raising.
        out_dir: stream pooled states to shards of ``shard_size`` items in this folder (for
            corpora larger than memory); returns a :class:`ShardedStates`. Re-running with
            the same arguments recomputes only the missing or damaged shards (a damaged
            ``manifest.json`` is rebuilt). The folder is keyed by a content hash of every
            input (model weights and tokenizer, texts, token selection, pooling weights,
            layers, site, pooling): any other extraction into it raises ``ArtifactError``
            naming what differs, and a second process writing it at the same time raises
            :class:`FolderLockedError`.
        shard_size: items per shard file (an integer >= 1).

    Returns:
        :class:`LayerStates` with ``states[n_layers, n_items, d_model]`` (float32, CPU).
    """
    texts, tokens = from_columns(texts), from_columns(tokens, columns=("span",))
    plan = plan_extraction(
        model,
        texts,
        layers,
        site,
        tokens,
        pool,
        pool_weights=pool_weights,
        batch_size=batch_size,
        padding_side=padding_side,
        truncate=truncate,
        sort_by_length=sort_by_length,
    )
    shard_size = check_shard_size(shard_size)
    if out_dir is not None:
        return extract_sharded(plan, Path(out_dir), shard_size, progress=progress)
    return extract_items(plan, progress=progress)
