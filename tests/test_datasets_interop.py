"""Hugging Face ``datasets`` interop: a Dataset (or Column) with named columns is accepted
wherever texts, labelled texts, spans or relation prompts are, with results equal to the
list inputs; shard folders open as an Arrow-backed Dataset whose rows equal the shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")

from semhooks import (  # noqa: E402
    ShardedStates,
    Steer,
    TextClassificationDataset,
    adapt,
    extract_states,
    generate,
    steering_curve,
)
from semhooks.data.columns import from_columns  # noqa: E402
from semhooks.extraction.hf_datasets import shards_to_dataset  # noqa: E402
from semhooks.relations import RelationPrompt, build_prompts, validate  # noqa: E402
from semhooks.studies.vocab import vocab_lens  # noqa: E402

SPANS = ["Paris", "movie", "bank", "film", "Water"]
TEXTS = ["The capital of France is Paris.", "I loved this movie", "The bank of the river",
         "A dull film", "Water is wet"]  # fmt: skip


def test_from_columns_texts_labels_records_and_passthrough():
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": ["pos", "neg", "pos", "neg", "pos"]})
    assert from_columns(ds) == TEXTS
    assert from_columns(ds["text"]) == TEXTS  # a Column in datasets 4+, a list before
    assert from_columns(TEXTS) is TEXTS and from_columns("last") == "last"
    labelled = from_columns(ds, "labelled")
    assert isinstance(labelled, TextClassificationDataset)
    assert labelled.label_names == ("neg", "pos") and labelled.labels.tolist() == [1, 0, 1, 0, 1]
    cl = ds.cast_column("label", datasets.ClassLabel(names=["pos", "neg"]))
    got = from_columns(cl, "labelled")
    assert got.label_names == ("pos", "neg") and got.labels.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(KeyError, match=r"column 'sentence'.*\['text', 'label'\]"):
        from_columns(ds, columns=["sentence"])
    prompts = build_prompts("substance_phase", n_shot=1)[:4]
    pds = datasets.Dataset.from_list([{"text": p.text, "subject": p.subject, "object": p.object,
                                       "relation": p.relation, "extra": 1} for p in prompts])  # fmt: skip
    back = from_columns(pds, "records", build=RelationPrompt)
    assert [(p.text, p.subject, p.object, p.relation) for p in back] == [
        (p.text, p.subject, p.object, p.relation) for p in prompts
    ]


def test_entry_points_take_a_dataset_and_give_the_list_result(tiny_llama):
    ds = datasets.Dataset.from_dict({"text": TEXTS, "span": ["Paris", "movie", "bank",
                                                             "film", "Water"]})  # fmt: skip
    a = extract_states(tiny_llama, TEXTS, [1], progress=False)
    b = extract_states(tiny_llama, ds, [1], progress=False)
    assert torch.equal(a.states, b.states)
    spans = extract_states(tiny_llama, ds, [1], tokens=ds["span"], progress=False)
    by_list = extract_states(tiny_llama, TEXTS, [1], tokens=list(SPANS), progress=False)
    assert torch.equal(spans.states, by_list.states)
    lens = vocab_lens(tiny_llama, ds, [1]).semantic_ids
    assert torch.equal(lens, vocab_lens(tiny_llama, TEXTS, [1]).semantic_ids)
    assert generate(tiny_llama, ds, max_new_tokens=2) == generate(
        tiny_llama, TEXTS, max_new_tokens=2
    )
    steer = Steer(torch.ones(adapt(tiny_llama).d_model), layers=1)
    c1 = steering_curve(tiny_llama, ds, steer, [0.0, 2.0], " the", control=None)
    c2 = steering_curve(tiny_llama, TEXTS, steer, [0.0, 2.0], " the", control=None)
    assert c1.per_prompt_prob == c2.per_prompt_prob
    prompts = build_prompts("substance_phase", n_shot=1)[:4]
    pds = datasets.Dataset.from_list([{"text": p.text, "subject": p.subject, "object": p.object}
                                      for p in prompts])  # fmt: skip
    r1 = validate(tiny_llama, pds, on_empty="return", progress=False)
    r2 = validate(tiny_llama, prompts, on_empty="return", progress=False)
    assert [p.text for p in r1.prompts] == [p.text for p in prompts]
    assert (r1.correct, r1.top1) == (r2.correct, r2.top1)


def test_shards_open_as_an_arrow_dataset_equal_to_the_shard_tensors(tiny_llama, tmp_path):
    extract_states(tiny_llama, TEXTS, [0, 2], progress=False, out_dir=tmp_path / "shards",
                   shard_size=2)  # fmt: skip
    sharded = ShardedStates.open(tmp_path / "shards")
    ds = shards_to_dataset(sharded, cache_dir=tmp_path / "hf")
    assert ds.column_names == ["item", "layer_0", "layer_2"] and len(ds) == len(TEXTS)
    assert ds.cache_files  # Arrow on disk, memory-mapped
    t = ds.with_format("torch")[:]
    for layer in (0, 2):
        assert torch.equal(t[f"layer_{layer}"], sharded.layer(layer))
    assert t["item"].tolist() == list(range(len(TEXTS)))
    one = shards_to_dataset(tmp_path / "shards", [2], cache_dir=tmp_path / "hf")
    np.testing.assert_array_equal(np.asarray(one["layer_2"], dtype=np.float32),
                                  sharded.layer(2).numpy())  # fmt: skip
    with pytest.raises(KeyError, match="layer 1 not extracted"):
        shards_to_dataset(sharded, [1])
