"""semhooks.studies.probing: poolings from one token-level pass, probe study, Wilson intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import semhooks
from semhooks.data.loaders import TextClassificationDataset, load_sst2
from semhooks.studies.probing import (
    POOLINGS,
    PoolingResult,
    pooled_features,
    pooling_study,
    token_states,
    wilson_interval,
)

TEXTS = [
    "I loved this movie.",
    "It was boring, dull and far too long!",
    "Paris",
    "The capital of France is Paris. The capital of Germany is Berlin.",
    "She plays the violin.",
]


def test_wilson_interval_known_values():
    # reference values worked by hand from the closed form, z = 1.96
    assert wilson_interval(50, 100) == pytest.approx((0.403832, 0.596168), abs=1e-6)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)
    assert wilson_interval(81, 100) == pytest.approx((0.722212, 0.874852), abs=1e-5)
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="0..n=5"):
        wilson_interval(6, 5)


def _manual(model, text, layers):
    """Unpadded single-text run_with_cache: per layer, content-token states and position 0."""
    adapter = semhooks.adapt(model)
    batch = adapter.tokenize([text])
    with torch.inference_mode():
        _, cache = model.run_with_cache(batch.input_ids)
    content = ~batch.special[0]
    out = {}
    for layer in layers:
        acts = cache[f"blocks.{layer}.hook_resid_post"][0].float()
        out[layer] = (acts[content], acts[0])
    return out


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_bert"])
def test_poolings_ignore_padding_oracle_against_unpadded_runs(arch, request):
    model = request.getfixturevalue(arch)
    feats = pooled_features(model, TEXTS, layers=[0, 2], batch_size=5, progress=False)
    for i, text in enumerate(TEXTS):
        manual = _manual(model, text, (0, 2))
        for layer in (0, 2):
            content, first = manual[layer]
            expected = {
                "mean": content.mean(0),
                "max": content.amax(0),
                "last": content[-1],
                "first": first,
            }
            for how, want in expected.items():
                torch.testing.assert_close(feats[how].layer(layer)[i], want, atol=1e-5, rtol=1e-5)


def test_first_is_the_constant_bos_state_for_a_decoder(tiny_llama):
    adapter = semhooks.adapt(tiny_llama)
    assert adapter.prepend_bos
    feats = pooled_features(tiny_llama, TEXTS, layers=[1], poolings=["first"], progress=False)
    x = feats["first"].layer(1)
    torch.testing.assert_close(x, x[:1].expand_as(x))


def test_token_states_hold_every_token_with_special_flags(tiny_bert):
    tok = token_states(tiny_bert, TEXTS[:3], layers=[0], progress=False)
    batch = semhooks.adapt(tiny_bert).tokenize(TEXTS[:3])
    assert tok.states.states.shape[1] == int(batch.attention_mask.sum())
    assert int(tok.special.sum()) == 2 * 3  # [CLS] and [SEP] per text
    sub = tok.items([2, 0])
    assert sub.n_items == 2
    assert sub.states.item_index is not None
    assert sub.states.item_index.tolist()[0] == 0  # text 2 is now item 0
    twice = tok.items([1, 1])
    assert twice.n_items == 2
    torch.testing.assert_close(twice.content().repool("mean").states[:, 0], twice.content().repool("mean").states[:, 1])  # fmt: skip
    n2 = int(batch.attention_mask[2].sum())
    torch.testing.assert_close(sub.states.states[:, :n2], tok.states.states[:, tok.states.item_index == 2])  # fmt: skip


def test_weighted_needs_a_fitted_pooler(tiny_llama):
    with pytest.raises(ValueError, match="AttentionPooler"):
        pooled_features(tiny_llama, TEXTS, layers=[0], poolings=["weighted"], progress=False)
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        pooled_features(tiny_llama, TEXTS, layers=[0], poolings=["median"], progress=False)


# --------------------------------------------------------------------------------------------
# the study on a toy task with a known answer
# --------------------------------------------------------------------------------------------


def _keyword_task(n: int, seed: int, name: str) -> TextClassificationDataset:
    """Label 1 iff the text contains 'wonderful' (else 'boring'); fillers vary."""
    rng = np.random.default_rng(seed)
    fillers = ["the movie was", "this film is", "I think it was", "she said it was", "a"]
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        word = "wonderful" if label else "boring"
        texts.append(f"{fillers[rng.integers(len(fillers))]} {word} and {fillers[rng.integers(len(fillers))]} long")  # fmt: skip
        labels.append(label)
    return TextClassificationDataset(texts, np.array(labels), name=name)


_TOY = {
    "toy": _keyword_task(60, 0, "toy"),
    "toy-test": _keyword_task(40, 1, "toy-test"),
    "other": _keyword_task(30, 2, "other"),
}


@pytest.fixture(scope="module")
def toy_result(tiny_llama) -> PoolingResult:
    from semhooks import AttentionPooler

    return pooling_study(
        tiny_llama,
        _TOY["toy"],
        _TOY["toy-test"],
        transfer={"other": _TOY["other"]},
        layers=[0, 2],
        Cs=(0.01, 1.0),
        cv=3,
        pooler=AttentionPooler(epochs=30, seed=0, progress=False),
        progress=False,
        batch_size=32,
    )


def test_study_finds_the_keyword_and_reports_intervals(toy_result):
    r = toy_result
    assert r.layers == [0, 2] and r.poolings == list(POOLINGS)
    assert r.eval_sets == ["toy-test", "other"]
    assert len(r.rows) == 2 * 2 * len(POOLINGS)
    acc = r.matrix()
    assert acc.shape == (2, len(POOLINGS))
    # the keyword's token is in every text: mean and max pooling separate the classes
    assert acc[0, r.poolings.index("mean")] >= 0.9
    assert acc[0, r.poolings.index("max")] >= 0.9
    # the decoder's BOS state is constant: 'first' can only predict one class
    assert acc[0, r.poolings.index("first")] == pytest.approx(0.5)
    for row in r.rows:
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
        lo, hi = wilson_interval(round(row["accuracy"] * row["n"]), row["n"])
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi))
        assert row["fit_seconds"] > 0 and row["C"] in (0.01, 1.0)
    assert r.best()["accuracy"] == np.nanmax(acc)
    assert set(r.best_layer("other")) == set(POOLINGS)
    texts = {t for name in ("toy", "toy-test", "other") for t in _TOY[name].texts}
    assert r.protocol["n_texts_encoded"] == len(texts)  # each unique text encoded once


def test_result_round_trip_table_and_heatmap(toy_result, tmp_path):
    back = PoolingResult.from_dict(json.loads(json.dumps(toy_result.to_dict())))
    np.testing.assert_array_equal(back.matrix("other"), toy_result.matrix("other"))
    table = toy_result.table()
    assert table.splitlines()[0] == "| layer | mean | max | last | first | weighted |"
    assert len(table.splitlines()) == 2 + 2 and table.count("**") == 2
    assert "[" in table.splitlines()[2]  # confidence intervals
    assert len(toy_result.table(cost=True).splitlines()) == 4
    fig = toy_result.plot(path=tmp_path / "pool.png")
    assert len([ax for ax in fig.get_axes() if ax.get_title()]) == 2
    assert (tmp_path / "pool.png").stat().st_size > 1000
    with pytest.raises(KeyError, match="no evaluation set 'nope'"):
        toy_result.table("nope")


def test_study_splits_train_when_no_test_is_given(tiny_gpt2):
    data = _keyword_task(40, 3, "kw")
    r = pooling_study(
        tiny_gpt2, data, layers=[0], poolings=["mean"], test_size=10, cv=2, Cs=(1.0,),
        progress=False,
    )  # fmt: skip
    assert r.protocol["n_train"] == 30 and r.protocol["eval_sizes"] == {r.eval_sets[0]: 10}


def test_study_refuses_bad_inputs(tiny_llama):
    data = _keyword_task(20, 0, "kw")
    empty = TextClassificationDataset([], np.array([], dtype=np.int64), name="empty")
    with pytest.raises(ValueError, match="training set is empty"):
        pooling_study(tiny_llama, empty, data, progress=False)
    with pytest.raises(ValueError, match="'empty' is empty"):
        pooling_study(tiny_llama, data, empty, progress=False)
    one_class = data.take(np.flatnonzero(data.labels == 1))
    with pytest.raises(ValueError, match="single class"):
        pooling_study(tiny_llama, one_class, data, progress=False)
    other = TextClassificationDataset(data.texts, data.labels, ("bad", "good"), name="o")
    with pytest.raises(ValueError, match="same label ids"):
        pooling_study(tiny_llama, data, data, transfer={"o": other}, progress=False)
    with pytest.raises(ValueError, match="used twice"):
        pooling_study(tiny_llama, data, data, transfer={"kw": data}, progress=False)
    with pytest.raises(ValueError, match="unknown pooling"):
        pooling_study(tiny_llama, data, data, poolings=["mode"], progress=False)


# --------------------------------------------------------------------------------------------
# the real decoder
# --------------------------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_mean_pooling_middle_layer_beats_chance_on_sst2(smollm2):
    # 300 balanced SST-2 training rows, 300 balanced dev sentences, layer 15 of 30.
    # Measured (CPU): mean 79.3% [74.4, 83.5], last 84.0%, max 70.7%; chance is 50%.
    r = pooling_study(
        smollm2,
        load_sst2("train_sample", limit=300),
        load_sst2("dev", limit=300),
        layers=[15],
        poolings=["mean"],
        cv=3,
        Cs=(0.01, 0.1, 1.0),
        progress=False,
        batch_size=32,
    )
    assert r.matrix()[0, 0] > 0.72
    assert r.matrix(key="ci_low")[0, 0] > 0.6
