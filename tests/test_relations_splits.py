"""semhooks.relations.splits: train/test stratified by object, balanced LRE prompt subsets."""

from __future__ import annotations

from collections import Counter

import pytest

from semhooks.relations.prompts import RelationPrompt
from semhooks.relations.splits import balanced_subset, split


def _prompts(counts, relation="r"):
    return [
        RelationPrompt(f"{o}{i} is", f"{o}{i}", o, relation) for o, n in counts for i in range(n)
    ]


def test_split_keeps_a_training_prompt_for_every_object():
    prompts = _prompts([("a", 5), ("b", 2), ("c", 1)])
    train, test = split(prompts, seed=0)
    assert Counter(p.object for p in train) == {"a": 3, "b": 1, "c": 1}  # c: training only
    assert Counter(p.object for p in test) == {"a": 2, "b": 1}
    assert split(prompts, seed=0) == (train, test)
    assert split(prompts, seed=3) != (train, test)
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(prompts)
    assert train == [p for p in prompts if p in train]  # input order kept
    assert split(prompts, 1.0, seed=0) == (prompts, [])


def test_split_is_scikit_learns_stratified_shuffle_split():
    """Each object's share of the training size is proportional to its count, and the draw
    is StratifiedShuffleSplit's for that size and seed."""
    import numpy as np
    from sklearn.model_selection import StratifiedShuffleSplit

    prompts = _prompts([("x", 10), ("y", 6), ("z", 4)])
    train, _ = split(prompts, seed=1)
    assert Counter(p.object for p in train) == {"x": 5, "y": 3, "z": 2}
    labels = np.array([p.object for p in prompts])
    sss = StratifiedShuffleSplit(n_splits=1, train_size=10, test_size=10, random_state=1)
    chosen, _ = next(sss.split(np.zeros((20, 1)), labels))
    assert train == [prompts[i] for i in sorted(chosen)]
    assert {p.subject for p in train} != {p.subject for p in split(prompts, seed=2)[0]}


def test_split_refuses_what_an_lrc_could_not_use():
    skewed = _prompts([("rare", 2), ("big", 9)])
    with pytest.raises(ValueError, match="without a training prompt.*'rare'"):
        split(skewed, 0.1, seed=0)  # 2 training prompts shared 9:2 leave 'rare' out
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="train_fraction must be in"):
            split(skewed, bad)


def test_balanced_subset_takes_equal_counts_per_object():
    prompts = _prompts([("a", 9), ("b", 3), ("c", 1)])
    sub = balanced_subset(prompts, 7, seed=0)
    assert Counter(p.object for p in sub) == {"a": 3, "b": 3, "c": 1}  # round robin: 1+1+1, 2, 3
    assert sub == [p for p in prompts if p in sub]
    assert balanced_subset(prompts, 7, seed=0) == sub
    four = Counter(p.object for p in balanced_subset(prompts, 4, seed=0))
    assert four["c"] == 1 and sorted(four.values()) == [1, 1, 2]
    assert len(balanced_subset(prompts, 100, seed=0)) == len(prompts)
    with pytest.raises(ValueError, match="n must be >= 1"):
        balanced_subset(prompts, 0)
