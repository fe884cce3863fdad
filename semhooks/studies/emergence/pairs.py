"""Macro and micro state pairs for information emergence, read in one pass per input set
through the activation reader (see the package docstring)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import ModelAdapter, Tokenized, adapt
from semhooks.data.columns import from_columns
from semhooks.extraction.reader import batch_from_ids, read
from semhooks.studies.emergence.inputs import EntityLists


def _check_finite(name: str, t: Tensor, where: str) -> None:
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise ValueError(
            f"EmergencePairs: {name} holds {int((~finite).sum())} non-finite values (NaN or "
            f"inf), first at index {bad} ({where}); the model produced overflowing states "
            "(run it in float32) or the states were corrupted"
        )


@dataclass
class EmergencePairs:
    """Macro and micro states for an information-emergence study.

    Depth ``j`` is the state entering block ``j``: ``j = 0`` the embedding output
    (``blocks.0.hook_resid_pre``), ``j >= 1`` the output of block ``j - 1``
    (``blocks.{j-1}.hook_resid_post``). Block ``l`` maps depth ``l`` to depth ``l + 1``.

    Attributes:
        macro: ``[depth, item, cell, d_model]`` state of sequence ``item`` at position
            ``positions[cell]``.
        micro: ``[depth, vocab, d_model]`` state of token ``micro_vocab[v]`` fed alone.
        micro_vocab: ``[vocab]`` the distinct token ids, sorted.
        token_ids: ``[item, slot]`` content tokens ``1..n_slots`` of each sequence
            (``n_slots = max(positions)``).
        positions: content-token position ``t`` (1-based, BOS excluded) of each cell.
        layers: the blocks studied.
        depths: the depths held, sorted (every ``l`` and ``l + 1``).
        provenance: model, backend, BOS convention (``micro_prefix``), hook names, ...
    """

    macro: Float[Tensor, "depth item cell d_model"]
    micro: Float[Tensor, "depth vocab d_model"]
    micro_vocab: Int[Tensor, " vocab"]
    token_ids: Int[Tensor, "item slot"]
    positions: list[int]
    layers: list[int]
    depths: list[int]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.macro.ndim != 4:
            raise ValueError(
                f"EmergencePairs: macro must be [depth, item, cell, d]; got {tuple(self.macro.shape)}"
            )
        n_depth, n_items, n_cells, d = self.macro.shape
        if n_depth != len(self.depths):
            raise ValueError(
                f"EmergencePairs: macro has {n_depth} depths but depths lists {len(self.depths)}"
            )
        if n_cells != len(self.positions):
            raise ValueError(
                f"EmergencePairs: macro has {n_cells} cells but {len(self.positions)} positions"
            )
        if self.micro.ndim != 3 or self.micro.shape[0] != n_depth or self.micro.shape[2] != d:
            raise ValueError(
                f"EmergencePairs: micro must be [depth={n_depth}, vocab, d={d}]; got "
                f"{tuple(self.micro.shape)}"
            )
        if self.micro_vocab.ndim != 1 or self.micro_vocab.shape[0] != self.micro.shape[1]:
            raise ValueError(
                f"EmergencePairs: {self.micro.shape[1]} micro states but "
                f"{self.micro_vocab.numel()} micro token ids; give one state per distinct token"
            )
        if self.token_ids.ndim != 2 or self.token_ids.shape[0] != n_items:
            raise ValueError(
                f"EmergencePairs: mismatched pair counts: macro holds {n_items} sequences but "
                f"token_ids has shape {tuple(self.token_ids.shape)}; both need one row per "
                "sequence"
            )
        if not self.positions or min(self.positions) < 1:
            raise ValueError(f"EmergencePairs: positions must be >= 1, got {self.positions}")
        if max(self.positions) > self.token_ids.shape[1]:
            raise ValueError(
                f"EmergencePairs: position {max(self.positions)} needs {max(self.positions)} "
                f"token slots; token_ids holds {self.token_ids.shape[1]}"
            )
        if sorted(set(self.depths)) != list(self.depths):
            raise ValueError(f"EmergencePairs: depths must be sorted and unique: {self.depths}")
        missing = [la for la in self.layers if la not in self.depths or la + 1 not in self.depths]
        if missing:
            raise ValueError(
                f"EmergencePairs: blocks {missing} need depths l and l+1; held: {self.depths}"
            )
        known = torch.isin(self.token_ids, self.micro_vocab)
        if not bool(known.all()):
            first = int(self.token_ids[~known][0])
            raise ValueError(
                f"EmergencePairs: token id {first} of token_ids has no micro state (not in "
                "micro_vocab)"
            )
        _check_finite("macro", self.macro, "[depth, item, cell, dim]")
        _check_finite("micro", self.micro, "[depth, vocab, dim]")

    @property
    def n_items(self) -> int:
        return int(self.macro.shape[1])

    @property
    def n_slots(self) -> int:
        return int(self.token_ids.shape[1])

    def _di(self, depth: int) -> int:
        return self.depths.index(depth)

    def macro_pair(
        self, layer: int, cell: int
    ) -> tuple[Float[Tensor, "item d_model"], Float[Tensor, "item d_model"]]:
        """``(x, y)``: states entering and leaving block ``layer`` at ``positions[cell]``."""
        return self.macro[self._di(layer), :, cell], self.macro[self._di(layer + 1), :, cell]

    def micro_index(self, slot: int) -> Int[Tensor, " item"]:
        """Row of ``micro`` for each sequence's token at content position ``slot``."""
        return torch.searchsorted(self.micro_vocab, self.token_ids[:, slot - 1].contiguous())

    def micro_pair(
        self, layer: int, slot: int
    ) -> tuple[Float[Tensor, "item d_model"], Float[Tensor, "item d_model"]]:
        """``(x, y)`` for the token at ``slot`` fed alone, entering and leaving block ``layer``."""
        idx = self.micro_index(slot)
        return self.micro[self._di(layer), idx], self.micro[self._di(layer + 1), idx]

    def distinct_prefixes(self, position: int) -> Int[Tensor, " item"]:
        """Label of each sequence's prefix ``1..position`` (equal labels = equal prefixes)."""
        return torch.unique(self.token_ids[:, :position], dim=0, return_inverse=True)[1]


def _resolve_positions(positions: Any, lengths: list[int], texts: list[str]) -> list[int]:
    equal = len(set(lengths)) == 1
    if isinstance(positions, str):
        if positions != "last":
            raise ValueError(
                f"positions must be 'last', an int or a list of ints; got {positions!r}"
            )
        positions = [-1]
    items = [positions] if isinstance(positions, int) else list(positions)
    if not items:
        raise ValueError("positions is empty; give at least one content-token position")
    out = []
    for p in items:
        if not isinstance(p, (int, np.integer)) or isinstance(p, bool):
            raise TypeError(f"positions must be ints (content tokens from 1); got {p!r}")
        p = int(p)
        if p == 0:
            raise ValueError(
                "position 0 is not a content position: positions count content tokens from 1 "
                "(BOS excluded); use -1 for the last token"
            )
        if p < 0:
            if not equal:
                raise ValueError(
                    f"position {p} counts from the end, but the sequences have different token "
                    f"counts ({min(lengths)}..{max(lengths)}): their last tokens are different "
                    "positions. Pass positive positions <= the shortest sequence "
                    f"({min(lengths)} tokens); a causal model's state at t ignores later tokens"
                )
            p += lengths[0] + 1
            if p < 1:
                raise ValueError(f"position {p - lengths[0] - 1} is before the first token")
        out.append(p)
    out = sorted(set(out))
    short = [i for i, m in enumerate(lengths) if m < out[-1]]
    if short:
        i = short[0]
        raise ValueError(
            f"position {out[-1]} is past the end of {len(short)} sequence(s), e.g. sequence "
            f"{i} with {lengths[i]} content tokens: {texts[i][:60]!r}. Drop short sequences "
            "(natural_sentences(min_tokens=...)) or ask for earlier positions"
        )
    return out


def _run_depths(
    adapter: ModelAdapter,
    ids: Tensor,
    lead: int,
    index: Tensor,
    names: dict[int, str],
    batch_size: int,
    desc: str,
    progress: bool,
) -> Float[Tensor, "depth item cell d_model"]:
    """States at token columns ``index`` of the rectangular batch ``ids`` (``lead`` leading
    special tokens), at every depth of ``names``, batch by batch through the reader."""
    depths = sorted(names)
    out = torch.empty(len(depths), ids.shape[0], index.numel(), adapter.d_model)

    def take(depth: int, acts: Tensor) -> Tensor:
        return acts[:, index.to(acts.device)].float().cpu()

    starts = range(0, ids.shape[0], batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        got = read(adapter, batch_from_ids(ids[s : s + batch_size], lead=lead), names, take).values
        for di, d in enumerate(depths):
            out[di, s : s + batch_size] = got[d]
    return out


def collect_pairs(
    model: Any,
    sequences: Sequence[str] | EntityLists,
    *,
    layers: int | Sequence[int] | str = "all",
    positions: int | Sequence[int] | str | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> EmergencePairs:
    """Macro and micro states for :func:`estimate_emergence`, in one pass per input set.

    Args:
        model: a causal decoder (TransformerBridge / HookedTransformer / adapter). Encoders
            are refused: their position ``t`` sees the tokens after it.
        sequences: texts, or an :class:`EntityLists` (whose entity tokens are then the
            default positions).
        layers: blocks ``l`` to study (``"all"``, an int or a list; negatives allowed).
        positions: content-token positions ``t`` (1-based, BOS excluded; negatives count from
            the end and need equal-length sequences), ``"last"``, or None: the entity
            positions of an :class:`EntityLists`, else ``"last"``.
        batch_size: sequences per forward pass.
        progress: tqdm bars.

    Returns:
        :class:`EmergencePairs`: macro ``[depth, item, cell, d]`` and micro
        ``[depth, vocab, d]`` float32 CPU states.
    """
    adapter = adapt(model)
    adapter.require_eval()
    if adapter.is_encoder:
        raise ValueError(
            f"information emergence needs a causal decoder; {adapter.name} is an encoder "
            "(bidirectional attention: the state at t also sees the tokens after t)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    entity: EntityLists | None = None
    sequences = from_columns(sequences)
    if isinstance(sequences, EntityLists):
        entity = sequences
        texts = list(sequences.texts)
    else:
        texts = list(sequences)
    if isinstance(sequences, str) or not texts:
        raise ValueError("sequences must be a non-empty list of texts (or an EntityLists)")
    if positions is None:
        positions = entity.positions(adapter) if entity is not None else "last"

    layer_list = adapter.resolve_layers(layers)
    depths = sorted({d for la in layer_list for d in (la, la + 1)})
    names = {
        d: adapter.hook_name("embed", 0) if d == 0 else adapter.hook_name("resid_post", d - 1)
        for d in depths
    }

    batch = adapter.tokenize(texts)
    content = batch.attention_mask.bool() & ~batch.special
    lengths = [int(x) for x in content.sum(-1)]
    lead = _leading_specials(batch, content)
    pos = _resolve_positions(positions, lengths, texts)
    n_slots = pos[-1]
    width = lead + n_slots
    # Cut every row after the last needed token: the model is causal, so the states at
    # positions <= n_slots are those of the full text, and the batch becomes a rectangle.
    ids = batch.input_ids[:, :width].clone()
    prefix_ids = [int(x) for x in ids[0, :lead]]
    token_ids = ids[:, lead:]

    t0 = time.perf_counter()
    macro = _run_depths(
        adapter,
        ids,
        lead,
        torch.tensor([lead + t - 1 for t in pos]),
        names,
        batch_size,
        "emergence: macro",
        progress,
    )
    vocab = torch.unique(token_ids)
    micro_ids = torch.cat(
        [torch.tensor(prefix_ids, dtype=torch.long).expand(len(vocab), lead), vocab[:, None]], 1
    )
    micro = _run_depths(
        adapter,
        micro_ids,
        lead,
        torch.tensor([lead]),
        names,
        max(batch_size, 256),
        "emergence: micro",
        progress,
    )[:, :, 0]
    tok = adapter.tokenizer
    provenance = adapter.provenance(
        hook_names=[names[d] for d in depths],
        n_items=len(texts),
        positions=pos,
        micro_prefix=tok.convert_ids_to_tokens(prefix_ids),
        micro_convention=(
            "each distinct token fed alone after the model's leading special tokens "
            f"{tok.convert_ids_to_tokens(prefix_ids)}, state read at the token"
        ),
        n_distinct_tokens=len(vocab),
        extraction_seconds=time.perf_counter() - t0,
        inputs=(
            {"kind": "entity_lists", "k": entity.k, "separator": entity.separator,
             "n_entities": len(entity.entities), "dropped": entity.dropped,
             "all_permutations": entity.all_permutations, "seed": entity.seed}
            if entity is not None else {"kind": "texts"}
        ),
    )  # fmt: skip
    return EmergencePairs(macro, micro, vocab, token_ids, pos, layer_list, depths, provenance)


def _leading_specials(batch: Tokenized, content: Tensor) -> int:
    leads = set()
    for i in range(len(batch)):
        idx = content[i].nonzero().flatten()
        if idx.numel() == 0:
            raise ValueError(f"text {i} has no content tokens: {batch.texts[i]!r}")
        first, last = int(idx[0]), int(idx[-1])
        if int(idx.numel()) != last - first + 1:
            raise ValueError(
                f"text {i} has special tokens between its content tokens: {batch.texts[i][:60]!r}"
            )
        leads.add(first)
    if len(leads) != 1:
        raise ValueError(f"the texts start with different numbers of special tokens: {leads}")
    lead = leads.pop()
    if lead and not bool((batch.input_ids[:, :lead] == batch.input_ids[0, :lead]).all()):
        raise ValueError("the texts start with different special tokens")
    return lead
