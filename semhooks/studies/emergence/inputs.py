"""Inputs for information emergence: synthetic entity lists and natural sentences."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from semhooks.backend.adapter import ModelAdapter, Tokenized, adapt
from semhooks.data.loaders import load_entities, load_sentiment


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
