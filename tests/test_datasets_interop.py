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


def _sentiment_dataset():
    pos = ["I loved this movie", "wonderful and moving", "it was wonderful", "loved it"]
    neg = ["I hated this film", "boring and dull", "far too long", "dull, boring film"]
    texts = (pos + neg) * 3
    labels = [1] * 4 + [0] * 4
    labels = labels * 3
    features = datasets.Features(
        {"text": datasets.Value("string"),
         "label": datasets.ClassLabel(names=["negative", "positive"])}
    )  # fmt: skip
    ds = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return ds, TextClassificationDataset(texts, np.array(labels), ("negative", "positive"))


def test_studies_take_labelled_datasets_and_give_the_list_result(tiny_gpt2):
    from semhooks.studies.calibration import calibration_study
    from semhooks.studies.probing import pooling_study

    ds, data = _sentiment_dataset()
    half = len(ds) // 2
    tr_ds, te_ds = ds.select(range(half)), ds.select(range(half, len(ds)))
    tr, te = data.take(np.arange(half), ""), data.take(np.arange(half, len(ds)), "")
    kw = dict(layers=[1], poolings=("mean", "last"), Cs=(1.0,), cv=2, progress=False)
    a = pooling_study(tiny_gpt2, tr_ds, te_ds, transfer={"again": te_ds}, **kw)
    b = pooling_study(tiny_gpt2, tr, te, transfer={"again": te}, **kw)

    def cells(res):
        return [(r["layer"], r["pooling"], r["accuracy"]) for r in res.rows]

    assert len(a.rows) == 4 and cells(a) == cells(b)
    kw = dict(k_shot=0, knn_k=3, calibrator_params={"max_epochs": 2}, progress=False)
    c = calibration_study(tiny_gpt2, tr_ds, te_ds, ["bad", "good"], **kw)
    d = calibration_study(tiny_gpt2, tr, te, ["bad", "good"], **kw)
    assert [(s.method, s.accuracy) for s in c.scores] == [(s.method, s.accuracy) for s in d.scores]


def test_emergence_pairs_take_a_text_dataset(tiny_llama):
    from semhooks.studies.emergence import collect_pairs

    texts = ["a b c d", "e f g h", "i j k l", "m n o p"]
    a = collect_pairs(
        tiny_llama, datasets.Dataset.from_dict({"text": texts}), positions=[1, 2], progress=False
    )
    b = collect_pairs(tiny_llama, texts, positions=[1, 2], progress=False)
    assert torch.equal(a.macro, b.macro) and torch.equal(a.micro, b.micro)
    assert torch.equal(a.token_ids, b.token_ids)


def test_wic_datasets_in_both_layouts_become_the_same_items(tiny_llama):
    from semhooks.data.columns import wic_items
    from semhooks.data.loaders import load_wic
    from semhooks.studies.lexical import wic_study

    items = load_wic("dev")[:24]
    own = datasets.Dataset.from_list(
        [{"lemma": i.lemma, "pos": i.pos, "sentence1": i.sentence1, "sentence2": i.sentence2,
          "index1": i.index1, "index2": i.index2, "label": i.label} for i in items]
    )  # fmt: skip
    glue = datasets.Dataset.from_list(
        [{"word": i.lemma, "sentence1": i.sentence1, "sentence2": i.sentence2,
          "start1": i.char_span1[0], "end1": i.char_span1[1],
          "start2": i.char_span2[0], "end2": i.char_span2[1], "label": int(i.label)}
         for i in items]
    )  # fmt: skip
    assert wic_items(own) == items
    assert [(i.sentence1, i.index1, i.index2, i.label) for i in wic_items(glue)] == [
        (i.sentence1, i.index1, i.index2, i.label) for i in items
    ]
    with pytest.raises(KeyError, match="needs columns"):
        wic_items(datasets.Dataset.from_dict({"text": ["x"]}))
    kw = dict(n_fit=None, n_eval=None, variants=["base"], probe=False, progress=False)
    a = wic_study(tiny_llama, fit=own.select(range(16)), evaluate=own.select(range(16, 24)), **kw)
    b = wic_study(tiny_llama, fit=items[:16], evaluate=items[16:], **kw)
    assert a.accuracy == b.accuracy and a.thresholds == b.thresholds
