"""Information emergence: how much more a block's output tells about its input for a whole
sequence than for its tokens taken one at a time.

Chen et al. 2024/2025, "Quantifying Semantic Emergence in Language Models" (arXiv 2405.12617);
METHODS.md section 7. The blocks of a decoder form a Markov chain
``h_0 -> h_1 -> ... -> h_L`` (``h_0`` the embedding output, ``h_{l+1}`` the output of block
``l``). For block ``l`` and token position ``t``:

.. math::
    IE(l, t) = I\\big(h^{macro}_{l+1,t};\\, h^{macro}_{l,t}\\big)
             - \\frac1t \\sum_{s=1}^{t} I\\big(h^{micro}_{l+1,s};\\, h^{micro}_{l,s}\\big)

- **macro**: the state at position ``t`` of the sequence, entering block ``l``
  (``blocks.{l}.hook_resid_pre``, i.e. the embedding for ``l = 0`` and
  ``blocks.{l-1}.hook_resid_post`` after) and leaving it (``blocks.{l}.hook_resid_post``).
  Position ``t`` attends to the whole prefix ``1..t``; the random variable is the prefix,
  the samples are the sequences.
- **micro**: the token at position ``s`` fed alone, with the model's BOS convention
  (SmolLM2: ``<|im_start|> token``, the state read at the token; a model without BOS gets the
  token alone at position 0), entering and leaving the same block. The random variable is
  the token at ``s``; the samples are again the sequences. The micro term of cell ``t`` is
  the plain mean over the content tokens ``s = 1..t`` (BOS excluded; for entity lists the
  separators count, and being constant they contribute exactly 0).
- Positions ``t`` count **content tokens from 1** (``t = 1`` is the first token after BOS).

Extraction (:func:`collect_pairs`): one forward pass over the sequences, cut after the last
needed token (a causal model's state at ``t`` does not depend on later tokens) and stopped
after the deepest needed block, reading the embedding output and every ``resid_post`` at the
requested positions; and one pass over the *distinct* tokens fed alone -- a micro state
depends only on the token id, so each distinct token is encoded once and indexed per sample.

Estimation (:func:`estimate_emergence`): one MI fit per (block, position) for the macro term
and per (block, token slot) for the micro term, with any estimator of :mod:`semhooks.estimators.mi`
(``fit(x, y)`` -> ``mi_`` in bits). States have ``d_model`` = 576 dimensions for SmolLM2 and
a study has ~2,000 samples, so the states are first reduced by PCA to ``reduce_dim``
components (default 32): one PCA per depth, fit on every sample that enters an MI fit at that
depth (macro states at all positions and micro states at all token slots, pooled), so the
macro and micro terms see the same projection. At ``t = 1`` the macro input (BOS + first
token) *is* the micro input, so ``IE(l, 1) = 0`` exactly for a seeded estimator: a built-in
check. By the data-processing inequality the MI of the projections is at most the MI of the
states: the reduction can only lower both terms.

Pitfalls this module surfaces rather than hides:

- A block is a deterministic (generically injective) map, so the true MI between its input
  and output is the entropy of the input: at most ``log2(#distinct inputs)``, which is
  ``log2(#distinct prefixes up to t)`` for the macro term and ``log2(#distinct tokens at s)``
  for the micro term. Both ceilings (and the plug-in entropies) are reported beside every
  estimate, with a warning when estimates come within ``warn_fraction`` of a ceiling.
  Estimated MI on such data measures how much dependence the estimator's critic can find
  in a few thousand samples, not a property of the block alone.
- DV/InfoNCE estimates from N held-out pairs saturate near ``log2 N`` (the estimator's own
  ceiling, also reported).
- Estimates are the estimator's held-out values (never the maximum over training steps) and
  every fit is seeded (the estimator's ``seed``, the same for every cell).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from jaxtyping import Float, Int
from matplotlib import colormaps as plt_colormaps
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import ModelAdapter, StopForward, Tokenized, adapt
from semhooks.data.loaders import load_entities, load_sentiment
from semhooks.estimators.mi import MINE, GaussianMI, InfoNCE
from semhooks.io.artifacts import ArtifactError, atomic_write_json, read_json
from semhooks.plots import heatmap, new_figure, save_figure

__all__ = [
    "ESTIMATOR_PRESETS",
    "EmergencePairs",
    "EmergenceResult",
    "EntityLists",
    "collect_pairs",
    "entity_lists",
    "estimate_emergence",
    "information_emergence",
    "make_estimator",
    "natural_sentences",
]

FloatArray = npt.NDArray[np.float64]

#: ``EmergenceResult.plot`` draws IE vs position as one line per block up to this many blocks.
PROFILE_LINES_MAX = 8

ESTIMATOR_PRESETS: dict[str, dict[str, Any]] = {
    # One fit on 2,000 pairs of 32 dimensions costs about 1 s of CPU time (one thread), so a
    # 30-block study of a few hundred fits takes minutes. Chosen on correlated Gaussians
    # (d = 32, n = 2000, true MI 0 / 2 / 6 bits): MINE gives 0.0 / 0.9 / 2.8 bits, InfoNCE
    # -0.05 / 0.5 / 2.3 bits. Both underestimate large MI; the semhooks.estimators.mi defaults (2,000
    # steps) get closer (MINE: 2.8 bits for 4 true at d = 32) at ~10x the cost.
    "mine": {
        "hidden": 128,
        "batch_size": 256,
        "lr": 1e-3,
        "max_steps": 300,
        "eval_every": 25,
        "eval_window": 4,
        "patience": 4,
    },
    "infonce": {
        "hidden": 128,
        "embed": 32,
        "batch_size": 256,
        "lr": 3e-4,
        "max_steps": 300,
        "eval_every": 25,
        "eval_window": 4,
        "patience": 4,
    },
    "gaussian": {},
}
"""Budgeted estimator settings used when ``estimator`` is given by name (see
:func:`make_estimator`)."""


def make_estimator(name: str, seed: int = 0) -> Any:
    """An unfitted estimator from its name: ``"mine"``, ``"infonce"`` or ``"gaussian"``.

    Neural estimators get the budgeted settings of :data:`ESTIMATOR_PRESETS` and ``seed``.
    """
    key = name.lower()
    if key == "mine":
        return MINE(seed=seed, **ESTIMATOR_PRESETS["mine"])
    if key == "infonce":
        return InfoNCE(seed=seed, **ESTIMATOR_PRESETS["infonce"])
    if key == "gaussian":
        return GaussianMI()
    raise ValueError(
        f"unknown estimator {name!r}; use 'mine', 'infonce', 'gaussian' or an estimator "
        "instance with fit(x, y) and mi_ (e.g. semhooks.estimators.mi.MINE(max_steps=1000))"
    )


# --------------------------------------------------------------------------------------------
# Inputs: synthetic entity lists and natural sentences
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntityLists:
    """Synthetic in-context lists such as ``"Bat,Rabbit,Ant,Fox,"``.

    Attributes:
        texts: one string per list: the ``k`` entities, each followed by ``separator``.
        items: the entities of each list, in order.
        k: entities per list (shots).
        separator: the string after each entity.
        entities: the entity pool the lists were drawn from.
        dropped: bundled entities left out because they are not one token in context.
        all_permutations: True when ``texts`` holds every ordered ``k``-list of the pool.
        seed: the sampling seed.
    """

    texts: list[str]
    items: list[tuple[str, ...]]
    k: int
    separator: str
    entities: list[str]
    dropped: list[str]
    all_permutations: bool
    seed: int

    def __len__(self) -> int:
        return len(self.texts)

    def positions(self, model: Any, at: Literal["entity", "separator"] = "entity") -> list[int]:
        """Content-token positions ``t`` (1-based, BOS excluded) of each entity.

        ``at="entity"`` reads the entity token itself (``1, 3, 5, ...``), ``"separator"`` the
        separator after it (``2, 4, 6, ...``). Every list must tokenize as
        ``entity, separator, entity, separator, ...`` with one token each (build the lists
        with ``entity_lists(model=...)`` to ensure it); otherwise a ``ValueError`` names the
        first list that does not.
        """
        if at not in ("entity", "separator"):
            raise ValueError(f"at must be 'entity' or 'separator', got {at!r}")
        adapter = adapt(model)
        batch = adapter.tokenize(self.texts)
        sep_ids: set[int] = set()
        for i, text in enumerate(self.texts):
            ids = _content_ids(batch, i)
            ok = len(ids) == 2 * self.k
            if ok:
                sep_ids.update(ids[1::2])
                ok = all(
                    adapter.tokenizer.decode([ids[2 * j]]).strip() == e
                    for j, e in enumerate(self.items[i])
                )
            if not ok or len(sep_ids) > 1:
                pieces = adapter.tokenizer.convert_ids_to_tokens(ids)
                raise ValueError(
                    f"entity list {i} ({text!r}) does not tokenize as one token per entity and "
                    f"per separator on {adapter.name}: {pieces}. Build the lists with "
                    "entity_lists(..., model=model), which keeps single-token entities only."
                )
        offset = 1 if at == "entity" else 2
        return [2 * j + offset for j in range(self.k)]


def _content_ids(batch: Tokenized, row: int) -> list[int]:
    keep = batch.attention_mask[row].bool() & ~batch.special[row]
    return [int(x) for x in batch.input_ids[row][keep]]


def _single_token_entities(
    adapter: ModelAdapter, pool: Sequence[str], separator: str
) -> tuple[list[str], list[str]]:
    keep, dropped = [], []
    # In context: at the start of a list and after a separator (BPE merges can differ).
    batch = adapter.tokenize([f"{e}{separator}{e}{separator}" for e in pool])
    for i, e in enumerate(pool):
        ids = _content_ids(batch, i)
        if len(ids) == 4 and ids[0] == ids[2] and ids[1] == ids[3]:
            keep.append(e)
        else:
            dropped.append(e)
    return keep, dropped


def entity_lists(
    k: int = 8,
    n: int | None = 2000,
    *,
    entities: Sequence[str] | None = None,
    separator: str = ",",
    model: Any = None,
    seed: int = 0,
    max_lists: int = 1_000_000,
) -> EntityLists:
    """Synthetic in-context entity lists ``"Bat,Rabbit,Ant,Fox,"`` (``k`` shots).

    Each list is ``k`` distinct entities, each followed by ``separator``. With ``n=None`` every
    ordered ``k``-list of the pool is returned (lexicographic order); otherwise a seeded
    sample of ``n`` distinct lists (all of them, shuffled, when there are at most ``n``).

    Args:
        k: entities per list.
        n: number of lists, or None for all permutations.
        entities: the pool (default: :func:`semhooks.data.loaders.load_entities`, 60 nouns).
        separator: the string after each entity.
        model: when given, keep only entities that are one token in context for its
            tokenizer (at the start of a list and after a separator), so that entity ``j``
            sits at content position ``2j - 1`` in every list. SmolLM2 with ``","`` keeps 19
            of the 60 bundled nouns (``"Rabbit"`` is ``Rab|bit``).
        seed: sampling seed.
        max_lists: refuse ``n=None`` when there are more permutations than this.
    """
    pool = list(entities) if entities is not None else load_entities()
    if len(set(pool)) != len(pool):
        raise ValueError("entity_lists: the entity pool has duplicates; give distinct entities")
    if not separator:
        raise ValueError("entity_lists: separator must be a non-empty string")
    dropped: list[str] = []
    if model is not None:
        pool, dropped = _single_token_entities(adapt(model), pool, separator)
    if k < 1:
        raise ValueError(f"entity_lists: k must be >= 1, got {k}")
    if k > len(pool):
        raise ValueError(
            f"entity_lists: k={k} entities per list but only {len(pool)} usable entities"
            + (f" ({len(dropped)} dropped as multi-token)" if dropped else "")
        )
    total = math.perm(len(pool), k)
    if n is not None and n < 1:
        raise ValueError(f"entity_lists: n must be >= 1 or None, got {n}")
    rng = random.Random(seed)
    every = n is None or n >= total
    if every:
        if total > max_lists:
            raise ValueError(
                f"entity_lists: n=None asks for all {total:,} ordered {k}-lists of "
                f"{len(pool)} entities (more than max_lists={max_lists:,}); pass n"
            )
        items = list(itertools.permutations(pool, k))
        if n is not None:
            rng.shuffle(items)
    else:
        assert n is not None
        if n > total // 2:
            items = rng.sample(list(itertools.permutations(pool, k)), n)
        else:
            seen: set[tuple[str, ...]] = set()
            items = []
            while len(items) < n:
                cand = tuple(rng.sample(pool, k))
                if cand not in seen:
                    seen.add(cand)
                    items.append(cand)
    texts = ["".join(e + separator for e in it) for it in items]
    return EntityLists(texts, items, k, separator, pool, dropped, every, seed)


NATURAL_SOURCES = ("sst2-train_sample", "sst2-dev", "amazon_cells", "yelp", "imdb")


def natural_sentences(
    model: Any,
    n: int = 2000,
    *,
    min_tokens: int = 12,
    sources: Sequence[str] = NATURAL_SOURCES,
    seed: int = 0,
) -> list[str]:
    """``n`` distinct natural sentences with at least ``min_tokens`` content tokens.

    Drawn (seeded) from the bundled sentiment corpora (:func:`semhooks.data.loaders.load_sentiment`;
    default: SST-2 train sample and dev, UCI Amazon, Yelp and IMDB). With
    ``positions=range(1, min_tokens + 1)`` every sentence then has a token at every position.
    """
    if n < 1 or min_tokens < 1:
        raise ValueError(f"natural_sentences: n and min_tokens must be >= 1; got {n}, {min_tokens}")
    tok = adapt(model).tokenizer
    pool: list[str] = []
    seen: set[str] = set()
    for name in sources:
        for text in load_sentiment(name).texts:
            if text not in seen:
                seen.add(text)
                pool.append(text)
    lengths = [len(ids) for ids in tok(pool, add_special_tokens=False)["input_ids"]]
    usable = [t for t, m in zip(pool, lengths, strict=True) if m >= min_tokens]
    if len(usable) < n:
        raise ValueError(
            f"natural_sentences: only {len(usable)} distinct sentences in {list(sources)} have "
            f">= {min_tokens} tokens; ask for fewer (n) or shorter (min_tokens)"
        )
    return random.Random(seed).sample(usable, n)


# --------------------------------------------------------------------------------------------
# Extraction: macro and micro pairs
# --------------------------------------------------------------------------------------------


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


class _DepthReader:
    """Hook closures that copy the states at chosen positions out of a forward pass."""

    def __init__(self, names: dict[int, str], deepest: int):
        self.names = names
        self.deepest = deepest
        self.index: Tensor | None = None
        self.out: dict[int, Tensor] = {}

    def hooks(self) -> list[tuple[str, Any]]:
        return [(name, self._hook(depth)) for depth, name in self.names.items()]

    def _hook(self, depth: int) -> Any:
        def hook(acts: Tensor, hook: Any = None) -> None:
            assert self.index is not None
            self.out[depth] = acts[:, self.index.to(acts.device)].detach().float().cpu()
            if depth == self.deepest:
                raise StopForward

        return hook


def _rect_batch(ids: Tensor, lead: int) -> Tokenized:
    b, w = ids.shape
    special = torch.zeros(b, w, dtype=torch.bool)
    special[:, :lead] = True
    return Tokenized(
        texts=[""] * b,
        input_ids=ids,
        attention_mask=torch.ones(b, w, dtype=torch.long),
        offsets=torch.zeros(b, w, 2, dtype=torch.long),
        special=special,
        padding_side="right",
        truncated=[False] * b,
    )


def _run_depths(
    adapter: ModelAdapter,
    ids: Tensor,
    lead: int,
    index: Tensor,
    reader: _DepthReader,
    batch_size: int,
    desc: str,
    progress: bool,
) -> Float[Tensor, "depth item cell d_model"]:
    depths = sorted(reader.names)
    out = torch.empty(len(depths), ids.shape[0], index.numel(), adapter.d_model)
    reader.index = index
    starts = range(0, ids.shape[0], batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        reader.out = {}
        adapter.forward(
            _rect_batch(ids[s : s + batch_size], lead), reader.hooks(), return_logits=False
        )
        missing = [d for d in depths if d not in reader.out]
        if missing:
            raise RuntimeError(f"hooks for depths {missing} did not fire on {adapter.name}")
        for di, d in enumerate(depths):
            out[di, s : s + batch_size] = reader.out[d]
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
    reader = _DepthReader(names, deepest=max(depths))
    macro = _run_depths(
        adapter,
        ids,
        lead,
        torch.tensor([lead + t - 1 for t in pos]),
        reader,
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
        reader,
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


# --------------------------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------------------------


@dataclass
class _Projection:
    """z-scoring and PCA of one depth, fit on the pooled macro and micro samples."""

    mean: Tensor
    scale: Tensor
    components: Tensor | None

    def __call__(self, x: Float[Tensor, "n d"]) -> np.ndarray:
        z = (x.double() - self.mean) / self.scale
        if self.components is not None:
            z = z @ self.components
        return z.float().numpy()


def _fit_projection(
    macro: Float[Tensor, "item cell d"],
    micro: Float[Tensor, "vocab d"],
    micro_weight: Float[Tensor, " vocab"],
    k: int | None,
    standardize: bool,
    rel_tol: float = 1e-9,
) -> _Projection:
    """PCA of one depth over every sample that enters an MI fit there.

    Rows: each sequence's macro state at every position, and each sequence's micro state at
    every token slot -- the latter as distinct tokens weighted by their count, which gives the
    same moments. Macro and micro share the projection, so a variable that is the same at
    both levels (t = 1: BOS + first token) is projected identically.
    """
    a = macro.reshape(-1, macro.shape[-1]).double()
    b = micro.double()
    w = micro_weight.double()
    total = a.shape[0] + w.sum()
    mean = (a.sum(0) + (w[:, None] * b).sum(0)) / total
    a, b = a - mean, b - mean
    var = ((a * a).sum(0) + (w[:, None] * b * b).sum(0)) / (total - 1)
    std = var.sqrt()
    scale = torch.where(std > 0, std, torch.ones_like(std)) if standardize else torch.ones_like(std)
    if k is None or k >= a.shape[1]:
        return _Projection(mean, scale, None)
    a, b = a / scale, b / scale
    cov = (a.T @ a + (w[:, None] * b).T @ b) / (total - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    # Directions with (numerically) no variance would be z-scored into rounding noise.
    keep = max(1, min(k, int((evals > rel_tol * evals[0].clamp(min=1e-300)).sum())))
    return _Projection(mean, scale, evecs[:, :keep].contiguous())


def _entropy_bits(labels: Tensor) -> float:
    counts = torch.unique(labels, return_counts=True)[1].double()
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum())


def _clone(estimator: Any) -> Any:
    if hasattr(estimator, "get_params"):
        return type(estimator)(**estimator.get_params())
    import copy

    return copy.deepcopy(estimator)


def _fit_cell(estimator: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    est = _clone(estimator)
    t0, c0 = time.perf_counter(), time.process_time()
    est.fit(x, y)
    return {
        "mi": float(est.mi_),
        "std": float(getattr(est, "mi_std_", float("nan"))),
        "ceiling": getattr(est, "ceiling_bits_", getattr(est, "bound_bits_", None)),
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }


def _fit_cell_worker(estimator: Any, x: np.ndarray, y: np.ndarray) -> Any:
    torch.set_num_threads(1)
    try:
        return _fit_cell(estimator, x, y)
    except ValueError as exc:
        return exc
    except torch.linalg.LinAlgError as exc:
        return exc


@dataclass
class _Task:
    kind: str  # "macro" | "micro"
    li: int
    j: int  # cell index (macro) or slot index (micro)
    x: np.ndarray
    y: np.ndarray
    n_distinct: int


def estimate_emergence(
    pairs: EmergencePairs,
    estimator: Any = "mine",
    *,
    reduce_dim: int | None = 32,
    pca_standardize: bool = True,
    n_jobs: int = 1,
    warn_fraction: float = 0.9,
    seed: int = 0,
    progress: bool = True,
) -> EmergenceResult:
    """IE per block and position from collected pairs, with one MI fit per cell.

    Args:
        pairs: from :func:`collect_pairs`.
        estimator: an unfitted estimator (``fit(x, y)`` -> ``mi_`` in bits; cloned for every
            cell) or a name for :func:`make_estimator`.
        reduce_dim: PCA components kept per depth (None: no reduction). One PCA per depth,
            fit on the pooled macro (every position) and micro (every token slot) samples,
            shared by both terms. Data-processing inequality: the MI of the projections is
            at most the MI of the states.
        pca_standardize: z-score each feature before the PCA (keeps a few large-magnitude
            residual dimensions from taking every component).
        n_jobs: MI fits run in this many worker processes (joblib; each fit single-threaded).
        warn_fraction: warn when an estimate exceeds this fraction of its ceiling.
        seed: seed for a named estimator (an instance keeps its own ``seed``).
        progress: tqdm bar over cells.

    Returns:
        :class:`EmergenceResult`. Cells whose input takes a single value (a constant token,
        e.g. a separator) have MI exactly 0 and are not fitted; cells the estimator cannot
        handle (a singular covariance for :class:`~semhooks.estimators.mi.GaussianMI`) are NaN with a
        warning.
    """
    est = make_estimator(estimator, seed) if isinstance(estimator, str) else estimator
    if not hasattr(est, "fit"):
        raise TypeError(f"estimator must have fit(x, y) and mi_; got {type(est).__name__}")
    if reduce_dim is not None and reduce_dim < 1:
        raise ValueError(f"reduce_dim must be >= 1 or None, got {reduce_dim}")
    if not 0 < warn_fraction <= 1:
        raise ValueError(f"warn_fraction must be in (0, 1], got {warn_fraction}")
    n = pairs.n_items
    layers, positions, n_slots = pairs.layers, pairs.positions, pairs.n_slots
    n_l, n_t = len(layers), len(positions)

    t0 = time.perf_counter()
    slot_index = [pairs.micro_index(s) for s in range(1, n_slots + 1)]
    micro_weight = torch.bincount(torch.cat(slot_index), minlength=pairs.micro.shape[1])
    macro_proj: dict[tuple[int, int], np.ndarray] = {}
    micro_proj: dict[int, Tensor] = {}
    for di, d in enumerate(pairs.depths):
        proj = _fit_projection(
            pairs.macro[di], pairs.micro[di], micro_weight, reduce_dim, pca_standardize
        )
        for c in range(n_t):
            macro_proj[(d, c)] = proj(pairs.macro[di, :, c])
        micro_proj[d] = torch.from_numpy(proj(pairs.micro[di]))
    pca_seconds = time.perf_counter() - t0

    n_macro = [int(pairs.distinct_prefixes(t).max()) + 1 for t in positions]
    n_micro = [int(torch.unique(pairs.token_ids[:, s]).numel()) for s in range(n_slots)]
    entropy_macro = [_entropy_bits(pairs.distinct_prefixes(t)) for t in positions]
    entropy_micro = [_entropy_bits(pairs.token_ids[:, s]) for s in range(n_slots)]

    tasks: list[_Task] = []
    for li, la in enumerate(layers):
        for c in range(n_t):
            tasks.append(
                _Task("macro", li, c, macro_proj[(la, c)], macro_proj[(la + 1, c)], n_macro[c])
            )
        for s in range(n_slots):
            idx = slot_index[s]
            x, y = micro_proj[la][idx].numpy(), micro_proj[la + 1][idx].numpy()
            tasks.append(_Task("micro", li, s, x, y, n_micro[s]))

    mi = {"macro": np.full((n_l, n_t), np.nan), "micro": np.full((n_l, n_slots), np.nan)}
    sd = {"macro": np.full((n_l, n_t), np.nan), "micro": np.full((n_l, n_slots), np.nan)}
    fit_seconds = fit_cpu = 0.0
    est_ceilings: list[float] = []
    failed: list[str] = []
    gaussian = isinstance(est, GaussianMI)

    def cell_name(task: _Task) -> str:
        if task.kind == "macro":
            return f"macro block {layers[task.li]} t={positions[task.j]}"
        return f"micro block {layers[task.li]} token {task.j + 1}"

    to_fit: list[_Task] = []
    for task in tasks:
        if task.n_distinct <= 1:
            mi[task.kind][task.li, task.j] = 0.0
            sd[task.kind][task.li, task.j] = 0.0
        elif gaussian and task.n_distinct <= task.x.shape[1] + task.y.shape[1] + 1 < n:
            # With fewer distinct rows than joint dimensions the sample covariance is singular
            # and the Gaussian MI of a deterministic map is infinite.
            failed.append(f"{cell_name(task)} ({task.n_distinct} distinct inputs)")
        else:
            to_fit.append(task)

    def handle(task: _Task, out: Any) -> None:
        nonlocal fit_seconds, fit_cpu
        if isinstance(out, torch.linalg.LinAlgError):
            failed.append(f"{cell_name(task)} ({out})")
            return
        if isinstance(out, ValueError):
            raise ValueError(
                f"information emergence: the estimator {type(est).__name__} refused the "
                f"{cell_name(task)} with {n} samples of dims ({task.x.shape[1]}, "
                f"{task.y.shape[1]}): {out} Use more sequences or a smaller reduce_dim."
            ) from out
        if not math.isfinite(out["mi"]):
            failed.append(f"{cell_name(task)} (estimate {out['mi']})")
            return
        mi[task.kind][task.li, task.j] = out["mi"]
        sd[task.kind][task.li, task.j] = out["std"]
        fit_seconds += out["seconds"]
        fit_cpu += out["cpu_seconds"]
        if out["ceiling"] is not None:
            est_ceilings.append(float(out["ceiling"]))

    bar = tqdm(total=len(to_fit), desc="emergence: MI fits", disable=not progress, unit="fit")
    t_fit = time.perf_counter()
    if n_jobs == 1:
        for task in to_fit:
            try:
                out: Any = _fit_cell(est, task.x, task.y)
            except (ValueError, torch.linalg.LinAlgError) as exc:
                out = exc
            handle(task, out)
            bar.update()
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_fit_cell_worker)(est, t.x, t.y) for t in to_fit
        )
        for task, out in zip(to_fit, results, strict=True):
            handle(task, out)
            bar.update()
    bar.close()
    wall = time.perf_counter() - t_fit
    if failed:
        warnings.warn(
            f"information emergence: {len(failed)} cell(s) set to NaN, the estimator could not "
            f"handle them: {failed[:4]}{' ...' if len(failed) > 4 else ''}",
            RuntimeWarning,
            stacklevel=2,
        )

    ceiling_macro = np.log2(np.asarray(n_macro, dtype=np.float64))
    ceiling_micro_token = np.log2(np.asarray(n_micro, dtype=np.float64))
    mi_micro = np.stack([mi["micro"][:, :t].mean(1) for t in positions], axis=1)
    est_ceiling = float(np.min(est_ceilings)) if est_ceilings else None
    result = EmergenceResult(
        model=str(pairs.provenance.get("model", "model")),
        layers=list(layers),
        positions=list(positions),
        ie=mi["macro"] - mi_micro,
        mi_macro=mi["macro"],
        mi_micro=mi_micro,
        mi_micro_token=mi["micro"],
        ceiling_macro=ceiling_macro,
        ceiling_micro=np.asarray([ceiling_micro_token[:t].mean() for t in positions]),
        ceiling_micro_token=ceiling_micro_token,
        entropy_macro=np.asarray(entropy_macro),
        entropy_micro_token=np.asarray(entropy_micro),
        estimator_ceiling=est_ceiling,
        mi_macro_std=sd["macro"],
        mi_micro_token_std=sd["micro"],
        protocol={
            "estimator": repr(est),
            "estimator_class": type(est).__name__,
            "reduce_dim": reduce_dim,
            "pca": "one per depth, fit on the pooled macro and micro samples",
            "pca_standardize": pca_standardize,
            "n_sequences": n,
            "n_fits": len(to_fit),
            "n_constant_cells": sum(t.n_distinct <= 1 for t in tasks),
            "n_failed_cells": len(failed),
            "fit_seconds_sum": fit_seconds,
            "fit_cpu_seconds_sum": fit_cpu,
            "fit_wall_seconds": wall,
            "pca_seconds": pca_seconds,
            "n_jobs": n_jobs,
            "warn_fraction": warn_fraction,
            "micro_mean": "plain mean over content tokens 1..t (BOS excluded)",
        },
        provenance=dict(pairs.provenance),
    )
    result._warn_near_ceiling(warn_fraction)
    return result


def information_emergence(
    model: Any,
    sequences: Sequence[str] | EntityLists,
    estimator: Any = "mine",
    *,
    layers: int | Sequence[int] | str = "all",
    positions: int | Sequence[int] | str | None = None,
    reduce_dim: int | None = 32,
    pca_standardize: bool = True,
    batch_size: int = 64,
    n_jobs: int = 1,
    warn_fraction: float = 0.9,
    seed: int = 0,
    progress: bool = True,
) -> EmergenceResult:
    """Information emergence ``IE[l, t]`` of ``model`` on ``sequences``.

    ``IE(l, t) = I(h_{l+1,t}; h_{l,t})_macro - mean_{s<=t} I(h_{l+1,s}; h_{l,s})_micro``
    (Chen et al. 2024, arXiv 2405.12617): :func:`collect_pairs` then
    :func:`estimate_emergence`; see those for every argument. The result holds the two MI
    terms, ``log2(#distinct inputs)`` ceilings and plug-in input entropies beside each cell.

    >>> lists = entity_lists(k=8, n=2000, model=model)            # doctest: +SKIP
    >>> res = information_emergence(model, lists, "mine")         # doctest: +SKIP
    >>> res.table(); res.plot(path="ie.png")                      # doctest: +SKIP
    """
    pairs = collect_pairs(
        model, sequences, layers=layers, positions=positions, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    return estimate_emergence(
        pairs,
        estimator,
        reduce_dim=reduce_dim,
        pca_standardize=pca_standardize,
        n_jobs=n_jobs,
        warn_fraction=warn_fraction,
        seed=seed,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


def _arr(x: Any) -> FloatArray:
    return np.asarray([np.nan if v is None else v for v in np.ravel(x)], dtype=np.float64).reshape(
        np.shape(x)
    )


def _jsonable(a: FloatArray) -> Any:
    return (
        [None if not np.isfinite(v) else float(v) for v in a]
        if a.ndim == 1
        else [_jsonable(row) for row in a]
    )


@dataclass
class EmergenceResult:
    """Information emergence per block ``l`` and content position ``t`` (all MI in bits).

    Attributes:
        model: model name.
        layers: blocks ``l`` (rows).
        positions: content positions ``t`` (columns, 1-based, BOS excluded).
        ie: ``[layer, position]`` ``mi_macro - mi_micro``.
        mi_macro: ``[layer, position]`` MI between the states entering and leaving block ``l``
            at position ``t`` of the sequences.
        mi_micro: ``[layer, position]`` the mean over tokens ``s = 1..t`` of
            ``mi_micro_token``.
        mi_micro_token: ``[layer, slot]`` micro MI of the token at content position ``s``
            (column ``s - 1``) fed alone.
        ceiling_macro: ``[position]`` ``log2(#distinct prefixes 1..t)``, the most any MI of
            the macro term can be (a block is deterministic).
        ceiling_micro: ``[position]`` mean over ``s <= t`` of ``ceiling_micro_token``.
        ceiling_micro_token: ``[slot]`` ``log2(#distinct tokens at s)``.
        entropy_macro, entropy_micro_token: plug-in entropies of the same inputs (the true MI
            of an injective block, over the empirical input distribution).
        estimator_ceiling: where the estimator saturates (``log2`` of its held-out pairs for
            MINE/InfoNCE), or None.
        mi_macro_std, mi_micro_token_std: spread of the estimator's final evaluations
            (optimisation noise, not a confidence interval; NaN when not reported).
        protocol: estimator, reduction and timings. provenance: model and extraction.
    """

    model: str
    layers: list[int]
    positions: list[int]
    ie: FloatArray
    mi_macro: FloatArray
    mi_micro: FloatArray
    mi_micro_token: FloatArray
    ceiling_macro: FloatArray
    ceiling_micro: FloatArray
    ceiling_micro_token: FloatArray
    entropy_macro: FloatArray
    entropy_micro_token: FloatArray
    estimator_ceiling: float | None = None
    mi_macro_std: FloatArray | None = None
    mi_micro_token_std: FloatArray | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.layers), len(self.positions))
        for name in ("ie", "mi_macro", "mi_micro"):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(
                    f"EmergenceResult.{name} has shape {np.shape(getattr(self, name))}, "
                    f"expected [layers, positions] = {shape}"
                )
        for name in ("ceiling_macro", "ceiling_micro", "entropy_macro"):
            if np.shape(getattr(self, name)) != (shape[1],):
                raise ValueError(f"EmergenceResult.{name} needs one value per position")

    # ---------------------------------------------------------------- summaries
    @property
    def near_ceiling(self) -> dict[str, list[tuple[int, int]]]:
        """Cells whose estimate is within ``warn_fraction`` of a ceiling:
        ``{"macro": [(layer, t)], "micro": [(layer, s)]}``."""
        frac = float(self.protocol.get("warn_fraction", 0.9))
        cap = self.estimator_ceiling if self.estimator_ceiling is not None else np.inf
        out: dict[str, list[tuple[int, int]]] = {"macro": [], "micro": []}
        for li, la in enumerate(self.layers):
            for c, t in enumerate(self.positions):
                ceil = min(self.ceiling_macro[c], cap)
                if ceil > 0 and self.mi_macro[li, c] >= frac * ceil:
                    out["macro"].append((la, t))
            for s in range(self.mi_micro_token.shape[1]):
                ceil = min(self.ceiling_micro_token[s], cap)
                if ceil > 0 and self.mi_micro_token[li, s] >= frac * ceil:
                    out["micro"].append((la, s + 1))
        return out

    def _warn_near_ceiling(self, fraction: float) -> None:
        near = self.near_ceiling
        parts = [f"{len(v)} {k}" for k, v in near.items() if v]
        if parts:
            warnings.warn(
                f"information emergence: {' and '.join(parts)} estimate(s) are within "
                f"{fraction:.0%} of their ceiling (log2 #distinct inputs, or the estimator's "
                f"log2 #held-out pairs = {self.estimator_ceiling}); they are saturated lower "
                "bounds, and differences between them mean little. See result.near_ceiling.",
                RuntimeWarning,
                stacklevel=3,
            )

    def profile(self) -> dict[str, FloatArray]:
        """IE vs position over blocks: ``mean``, ``median``, ``q25``, ``q75``, ``min``, ``max``."""
        ie = self.ie
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {
                "mean": np.nanmean(ie, 0),
                "median": np.nanmedian(ie, 0),
                "q25": np.nanpercentile(ie, 25, axis=0),
                "q75": np.nanpercentile(ie, 75, axis=0),
                "min": np.nanmin(ie, 0),
                "max": np.nanmax(ie, 0),
            }

    def table(self, what: Literal["ie", "macro", "micro"] = "ie", *, digits: int = 2) -> str:
        """Markdown table: one row per block, one column per position, then the ceilings.

        ``what``: ``"ie"``, ``"macro"`` (``mi_macro``) or ``"micro"`` (``mi_micro``, the
        mean over tokens). The last rows give the mean over blocks and the ceilings.
        """
        grids = {"ie": self.ie, "macro": self.mi_macro, "micro": self.mi_micro}
        if what not in grids:
            raise ValueError(f"what must be 'ie', 'macro' or 'micro'; got {what!r}")
        grid = grids[what]

        def fmt(v: float) -> str:
            return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"

        head = "| block | " + " | ".join(f"t={t}" for t in self.positions) + " |"
        lines = [head, "|---:|" + "---:|" * len(self.positions)]
        for li, la in enumerate(self.layers):
            lines.append(f"| {la} | " + " | ".join(fmt(v) for v in grid[li]) + " |")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(grid, 0)
        lines.append("| **mean** | " + " | ".join(f"**{fmt(v)}**" for v in mean) + " |")
        lines.append("| ceiling macro | " + " | ".join(fmt(v) for v in self.ceiling_macro) + " |")
        lines.append(
            "| ceiling micro (mean) | " + " | ".join(fmt(v) for v in self.ceiling_micro) + " |"
        )
        if self.estimator_ceiling is not None:
            lines.append(
                "| estimator ceiling | "
                + " | ".join(fmt(self.estimator_ceiling) for _ in self.positions)
                + " |"
            )
        return "\n".join(lines)

    # ---------------------------------------------------------------- plot
    def plot(self, *, path: str | os.PathLike[str] | None = None, title: str = "") -> Figure:
        """Three panels: the ``IE[l, t]`` heatmap (blocks x positions); IE vs position; and,
        at the last position, both MI terms and IE per block with the ceilings (dashed).

        IE vs position draws one line per block when there are at most
        ``PROFILE_LINES_MAX`` blocks (a quartile band over a handful of blocks would
        suggest a spread that was never sampled), else the mean over blocks with bands for
        the inter-quartile and min-max ranges, labelled with the number of blocks. Legends
        sit outside the panels so they hide no line (the ceilings included)."""
        fig, axes = new_figure(3, width=5.2, height=4.2)
        ax_h, ax_p, ax_l = axes
        heatmap(
            ax_h,
            self.ie,
            self.layers,
            self.positions,
            title="IE(l, t) = MI macro - mean MI micro (bits)",
            xlabel="position t (content tokens)",
            ylabel="block l",
            fmt="{:.1f}" if len(self.layers) * len(self.positions) <= 400 else "",
            cmap="RdBu_r",
            vmin=-float(np.nanmax(np.abs(self.ie))) if np.isfinite(self.ie).any() else None,
            vmax=float(np.nanmax(np.abs(self.ie))) if np.isfinite(self.ie).any() else None,
        )
        prof = self.profile()
        t = np.asarray(self.positions)
        n_blocks = len(self.layers)
        if n_blocks <= PROFILE_LINES_MAX:
            shades = plt_colormaps["viridis"](np.linspace(0.0, 0.85, n_blocks))
            for k, layer in enumerate(self.layers):
                ax_p.plot(t, self.ie[k], marker=".", linewidth=1.2, color=shades[k],
                          label=f"block {layer}")  # fmt: skip
            ax_p.set_title(f"IE vs position, one line per block ({n_blocks} blocks)")
        else:
            spread = f"over {n_blocks} blocks"
            if len(t) > 1:
                ax_p.fill_between(t, prof["min"], prof["max"], alpha=0.15, color="C0",
                                  label=f"min-max {spread}")  # fmt: skip
                ax_p.fill_between(t, prof["q25"], prof["q75"], alpha=0.35, color="C0",
                                  label=f"IQR {spread}")  # fmt: skip
            else:  # one position: the same spreads as error bars
                for lo, hi, width, label in (
                    ("min", "max", 1, "min-max"),
                    ("q25", "q75", 6, "IQR"),
                ):
                    ax_p.vlines(t, prof[lo], prof[hi], color="C0", alpha=0.5, linewidth=width,
                                label=f"{label} {spread}")  # fmt: skip
            ax_p.plot(t, prof["mean"], marker="o", color="C0", label=f"mean {spread}")
            ax_p.set_title(f"IE vs position (spread {spread})")
        ax_p.set_xticks(t)
        ax_p.axhline(0, color="grey", linewidth=0.8)
        ax_p.set_xlabel("position t (content tokens)")
        ax_p.set_ylabel("IE (bits)")
        ax_p.grid(True, alpha=0.3)
        ax_p.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))

        c = len(self.positions) - 1
        ly = np.asarray(self.layers)
        ax_l.plot(ly, self.mi_macro[:, c], marker=".", color="C1", label="MI macro")
        ax_l.plot(ly, self.mi_micro[:, c], marker=".", color="C2", label="mean MI micro")
        ax_l.plot(ly, self.ie[:, c], marker=".", color="C0", label="IE")
        ax_l.axhline(self.ceiling_macro[c], color="C1", linestyle="--", linewidth=1,
                     label=f"ceiling macro {self.ceiling_macro[c]:.2f}")  # fmt: skip
        ax_l.axhline(self.ceiling_micro[c], color="C2", linestyle="--", linewidth=1,
                     label=f"ceiling micro {self.ceiling_micro[c]:.2f}")  # fmt: skip
        if self.estimator_ceiling is not None:
            ax_l.axhline(self.estimator_ceiling, color="grey", linestyle=":", linewidth=1,
                         label=f"estimator ceiling {self.estimator_ceiling:.2f}")  # fmt: skip
        ax_l.set_xlabel("block l")
        ax_l.set_ylabel("bits")
        ax_l.set_title(f"MI terms per block at t={self.positions[c]}")
        ax_l.grid(True, alpha=0.3)
        ax_l.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        est = self.protocol.get("estimator_class", "")
        fig.suptitle(title or f"{self.model}: information emergence ({est}, "
                     f"PCA {self.protocol.get('reduce_dim')}, n={self.protocol.get('n_sequences')})")  # fmt: skip
        if path is not None:
            save_figure(fig, path)
        return fig

    # ---------------------------------------------------------------- I/O
    _ARRAYS = (
        "ie", "mi_macro", "mi_micro", "mi_micro_token", "ceiling_macro", "ceiling_micro",
        "ceiling_micro_token", "entropy_macro", "entropy_micro_token",
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN -> null); inverse: :meth:`from_dict`."""
        out: dict[str, Any] = {
            "kind": "EmergenceResult",
            "model": self.model,
            "layers": list(self.layers),
            "positions": list(self.positions),
            "estimator_ceiling": self.estimator_ceiling,
            "protocol": self.protocol,
            "provenance": self.provenance,
            "profile": {k: _jsonable(v) for k, v in self.profile().items()},
        }
        for name in self._ARRAYS:
            out[name] = _jsonable(np.asarray(getattr(self, name), dtype=np.float64))
        for name in ("mi_macro_std", "mi_micro_token_std"):
            value = getattr(self, name)
            out[name] = None if value is None else _jsonable(np.asarray(value, dtype=np.float64))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmergenceResult:
        if data.get("kind", "EmergenceResult") != "EmergenceResult":
            raise ValueError(f"not an EmergenceResult: kind={data.get('kind')!r}")
        arrays = {name: _arr(data[name]) for name in cls._ARRAYS}
        return cls(
            model=data["model"],
            layers=[int(x) for x in data["layers"]],
            positions=[int(x) for x in data["positions"]],
            estimator_ceiling=data.get("estimator_ceiling"),
            mi_macro_std=None if data.get("mi_macro_std") is None else _arr(data["mi_macro_std"]),
            mi_micro_token_std=(
                None if data.get("mi_micro_token_std") is None else _arr(data["mi_micro_token_std"])
            ),
            protocol=dict(data.get("protocol", {})),
            provenance=dict(data.get("provenance", {})),
            **arrays,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmergenceResult:
        """Read :meth:`save` output; a malformed file is an ``ArtifactError`` naming it."""
        doc = read_json(path, "EmergenceResult")
        try:
            return cls.from_dict(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{path} is not a valid EmergenceResult ({type(exc).__name__}: {exc})"
            ) from None
