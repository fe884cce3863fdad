"""Tokenisation with character offsets, the model's BOS convention and an attention mask.

TransformerLens issue 1609: left padding without a mask silently changes TransformerBridge
outputs, so every batch semhooks builds carries its mask.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

__all__ = ["Tokenized", "tokenize_texts"]


def _visible(char: str) -> bool:
    """Not whitespace, a control character or a zero-width/format character (U+200B...)."""
    return not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf")


@dataclass
class Tokenized:
    """A padded batch with everything needed to map characters to positions.

    ``offsets[b, t]`` is the character span of token t in ``texts[b]``; special and padding
    tokens have ``special[b, t] = True`` and offsets (0, 0).
    """

    texts: list[str]
    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    offsets: Int[Tensor, "batch pos 2"]
    special: Bool[Tensor, "batch pos"]
    padding_side: str
    truncated: list[bool]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(-1)

    def __len__(self) -> int:
        return len(self.texts)

    def row(self, i: int) -> Tokenized:
        """Row ``i`` without padding (a batch of one)."""
        keep = self.attention_mask[i].bool()
        return Tokenized(
            texts=[self.texts[i]],
            input_ids=self.input_ids[i, keep][None],
            attention_mask=self.attention_mask[i, keep][None],
            offsets=self.offsets[i, keep][None],
            special=self.special[i, keep][None],
            padding_side=self.padding_side,
            truncated=[self.truncated[i]],
        )


def tokenize_texts(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    model_name: str,
    bos_token_id: int | None,
    pad_token_id: int,
    add_bos: bool,
    limit: int,
    padding_side: str | None = None,
    truncate: bool = False,
) -> Tokenized:
    """Tokenise ``texts`` into a padded :class:`Tokenized` batch (see
    :meth:`ModelAdapter.tokenize <semhooks.backend.adapter.ModelAdapter.tokenize>`).

    ``add_bos`` prepends ``bos_token_id`` where the tokenizer did not; ``limit`` is the most
    tokens a row may have (longer rows raise, or are cut on the right with ``truncate``).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given (empty list)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is a {type(t).__name__}, expected str")
        if not t.strip():
            raise ValueError(f"text {i} is empty or whitespace only: {t!r}")
        if not any(_visible(c) for c in t):
            raise ValueError(
                f"text {i} holds only control or zero-width characters: {t!r}; it has no "
                "content for the model to read"
            )
    side = padding_side or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    enc = tokenizer(
        texts,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        add_special_tokens=True,
    )
    rows = []
    truncated = []
    for i, text in enumerate(texts):
        ids = list(enc["input_ids"][i])
        offs = [tuple(o) for o in enc["offset_mapping"][i]]
        spec = [bool(s) for s in enc["special_tokens_mask"][i]]
        if add_bos and bos_token_id is not None and (not ids or ids[0] != bos_token_id):
            ids, offs, spec = [bos_token_id] + ids, [(0, 0)] + offs, [True] + spec
        if len(ids) > limit:
            if not truncate:
                raise ValueError(
                    f"text {i} has {len(ids)} tokens, more than the context window of {limit} "
                    f"for {model_name}: {text[:60]!r}...; pass truncate=True to cut it"
                )
            tail = 0  # closing special tokens ([SEP], EOS) stay at the end
            while tail < len(spec) and spec[len(spec) - 1 - tail]:
                tail += 1
            tail = tail if tail < limit else 0
            cut = slice(len(ids) - tail, len(ids))
            keep = limit - tail
            ids, offs, spec = (
                ids[:keep] + ids[cut],
                offs[:keep] + offs[cut],
                spec[:keep] + spec[cut],
            )
            truncated.append(True)
        else:
            truncated.append(False)
        rows.append((ids, offs, spec))
    width = max(len(r[0]) for r in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    offsets = torch.zeros((n, width, 2), dtype=torch.long)
    special = torch.ones((n, width), dtype=torch.bool)
    for i, (ids, offs, spec) in enumerate(rows):
        k = len(ids)
        sl = slice(width - k, width) if side == "left" else slice(0, k)
        input_ids[i, sl] = torch.tensor(ids)
        mask[i, sl] = 1
        offsets[i, sl] = torch.tensor(offs, dtype=torch.long).reshape(k, 2)
        special[i, sl] = torch.tensor(spec)
    return Tokenized(texts, input_ids, mask, offsets, special, side, truncated)
