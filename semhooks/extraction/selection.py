"""Token selection: which positions of each row of a batch to read (last, first, all, spans,
explicit positions), as a boolean ``[batch, pos]`` mask, and back to per-text positions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from semhooks.backend.adapter import Tokenized
from semhooks.extraction.spans import Spans

TokenSpec = Any  # "last" | "first" | "all" | Spans | list[str] | callable | list[int | list[int]]


def describe_tokens(tokens: TokenSpec) -> str:
    """A short name for a token selection (recorded in provenance and shard configs)."""
    if isinstance(tokens, str):
        return tokens
    if isinstance(tokens, Spans):
        return tokens.describe()
    if callable(tokens):
        return "span(callable)"
    return "explicit"


def as_selector(tokens: TokenSpec) -> TokenSpec:
    """A token selection in canonical form: a word, a :class:`Spans`, or one position list per text."""
    if isinstance(tokens, str):
        if tokens not in ("last", "first", "all"):
            raise ValueError(
                f"unknown token selection {tokens!r}; use 'last', 'first', 'all', a list of "
                "substrings (one per text), semhooks.Spans(...), or explicit positions"
            )
        return tokens
    if isinstance(tokens, Spans):
        return tokens
    if callable(tokens):
        return Spans(tokens)
    if isinstance(tokens, Sequence) and tokens and all(isinstance(t, str) for t in tokens):
        return Spans(list(tokens))
    if isinstance(tokens, (Sequence, Tensor)):
        return list(tokens)
    raise TypeError(f"cannot select tokens with {tokens!r}")


def select_tokens(
    batch: Tokenized, tokens: TokenSpec, item_ids: Sequence[int] | None = None
) -> Bool[Tensor, "batch pos"]:
    """Boolean selection ``[batch, pos]`` of the tokens to pool in each row.

    - ``"last"``: the last content token (the last non-special, non-pad token; for decoders
      the last token, for BERT the token before [SEP]).
    - ``"first"``: the first non-pad token (BOS or CLS when the model has one).
    - ``"all"``: every content token (BOS/CLS/SEP and padding excluded).
    - :class:`Spans` or a list of substrings: the span's tokens via character offsets.
    - explicit positions: one int or list of ints per text, indices into the unpadded token
      sequence (BOS included); negative values count from its end.
    """
    sel = as_selector(tokens)
    attn = batch.attention_mask.bool()
    content = attn & ~batch.special
    ids = list(item_ids) if item_ids is not None else list(range(len(batch)))
    if isinstance(sel, str):
        if sel == "all":
            # A row of special tokens only (possible for empty content) falls back to all tokens.
            empty = ~content.any(-1, keepdim=True)
            return torch.where(empty, attn, content)
        base = torch.where(~content.any(-1, keepdim=True), attn, content) if sel == "last" else attn
        pos = torch.arange(attn.shape[1]).expand_as(attn)
        if sel == "last":
            idx = torch.where(base, pos, -1).amax(1)
        else:
            idx = torch.where(base, pos, attn.shape[1]).amin(1)
        return pos == idx[:, None]
    mask = torch.zeros_like(attn)
    for row, item in enumerate(ids):
        if isinstance(sel, Spans):
            positions = sel.positions(batch, row, item)
        else:
            spec = sel[item]
            spec = [spec] if isinstance(spec, int) else list(spec)
            n = int(attn[row].sum())
            start = attn.shape[1] - n if batch.padding_side == "left" else 0
            positions = []
            for p in spec:
                q = p + n if p < 0 else p
                if not 0 <= q < n:
                    raise ValueError(
                        f"position {p} is out of range for text {item} with {n} tokens "
                        f"({batch.texts[row][:60]!r})"
                    )
                positions.append(start + q)
        mask[row, positions] = True
    return mask


def token_index(
    selection: Bool[Tensor, "batch pos"], batch: Tokenized, item_ids: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """``(item, position)`` of every selected token, row-major: the item id of its row and its
    position in the unpadded sequence."""
    rows, cols = selection.nonzero(as_tuple=True)
    n = batch.attention_mask.sum(-1)
    start = (
        (batch.attention_mask.shape[1] - n) if batch.padding_side == "left" else torch.zeros_like(n)
    )
    items = torch.as_tensor(list(item_ids), dtype=torch.long)[rows]
    return items, cols - start[rows]
