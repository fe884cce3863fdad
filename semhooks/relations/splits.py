"""Splits of relation prompts: train/test stratified by object, and balanced LRE subsets.

:func:`split` holds out test prompts per object with scikit-learn's ``StratifiedShuffleSplit``
(seeded), keeping at least one training prompt for every object: an LRC classifies a subject
among the objects it saw in training. :func:`balanced_subset` picks the prompts an LRE is fitted
on, equal counts per object (Chanin et al.).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit

if TYPE_CHECKING:
    from semhooks.relations.prompts import RelationPrompt


def _group_by_object(prompts: Iterable[RelationPrompt]) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((p.relation, p.object), []).append(i)
    return groups


def split(
    prompts: Sequence[RelationPrompt],
    train_fraction: float = 0.5,
    *,
    seed: int = 0,
) -> tuple[list[RelationPrompt], list[RelationPrompt]]:
    """Split stratified by object (seeded), with scikit-learn's ``StratifiedShuffleSplit``.

    Each object ``o`` with ``n_o`` prompts asks for ``t_o = round(train_fraction * n_o)``
    training prompts (halves round up, at least one). An object that leaves no test prompt
    (a single prompt, or ``t_o = n_o``) goes to training only: it can be classified, not
    tested. The other objects' prompts are split by ``StratifiedShuffleSplit(train_size=
    sum_o t_o, random_state=seed)``, which shares that training size out across objects in
    proportion to their counts (largest remainders, ties broken by the seed), so one object
    may get a prompt more or less than its own ``t_o``. With ``train_fraction >= 0.5`` every
    object keeps a training prompt; a lower fraction that leaves an object without one is
    refused (an LRC cannot classify an object it never saw). Order within each part follows
    the input order.

    Returns:
        ``(train, test)``.

    Raises:
        ValueError: ``train_fraction`` outside ``(0, 1]``, or an object left with no
            training prompt.
    """
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    prompts = list(prompts)
    groups = _group_by_object(prompts)
    train_idx: set[int] = set()
    rows: list[int] = []
    labels: list[int] = []
    n_train = 0
    for label, idx in enumerate(groups.values()):
        wanted = min(len(idx), max(1, math.floor(train_fraction * len(idx) + 0.5)))
        if wanted == len(idx):  # no test prompt left: training only
            train_idx.update(idx)
            continue
        rows += idx
        labels += [label] * len(idx)
        n_train += wanted
    if rows:
        splitter = StratifiedShuffleSplit(
            n_splits=1, train_size=n_train, test_size=len(rows) - n_train, random_state=seed
        )
        chosen, _ = next(splitter.split(np.zeros((len(rows), 1)), np.asarray(labels)))
        train_idx.update(rows[int(i)] for i in chosen)
    unseen = [obj for (_, obj), idx in groups.items() if train_idx.isdisjoint(idx)]
    if unseen:
        raise ValueError(
            f"train_fraction={train_fraction} leaves {len(unseen)} object(s) without a "
            f"training prompt ({', '.join(map(repr, unseen[:5]))}): an LRC cannot classify an "
            "object it never saw. Use train_fraction >= 0.5, or more prompts per object"
        )
    train = [p for i, p in enumerate(prompts) if i in train_idx]
    test = [p for i, p in enumerate(prompts) if i not in train_idx]
    return train, test


def balanced_subset(
    prompts: Sequence[RelationPrompt], n: int = 20, *, seed: int = 0
) -> list[RelationPrompt]:
    """Up to ``n`` prompts balanced across objects: round robin over shuffled objects.

    Chanin et al. fit each LRE on about 20 prompts spread over the relation's objects, so
    that no object dominates the mean Jacobian. Equal counts per object (round robin), not
    scikit-learn's proportional stratification, which would let a large object dominate.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    groups = [list(idx) for idx in _group_by_object(prompts).values()]
    for g in groups:
        rng.shuffle(g)
    rng.shuffle(groups)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n and any(depth < len(g) for g in groups):
        for g in groups:
            if depth < len(g) and len(chosen) < n:
                chosen.append(g[depth])
        depth += 1
    return [prompts[i] for i in sorted(chosen)]
