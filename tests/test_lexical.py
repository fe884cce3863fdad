"""semhooks.studies.lexical: WiC variants, span mapping, one pass per text, z-scoring, thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import semhooks
from semhooks.data.loaders import WiCItem, load_wic
from semhooks.studies.lexical import (
    DEFAULT_PROMPT,
    VARIANTS,
    WiCResult,
    _request_positions,
    choose_threshold,
    cosine_scores,
    pair_features,
    variant_input,
    wic_study,
    wic_vectors,
    zscore_stats,
)


def item(
    s1: str, i1: int, s2: str, i2: int, label: bool | None = True, lemma: str = "w"
) -> WiCItem:
    return WiCItem(lemma, "N", s1, s2, i1, i2, label)


# --------------------------------------------------------------------------------------------
# variants: which text, which characters
# --------------------------------------------------------------------------------------------


def test_variant_inputs_point_at_the_target_word():
    it = item("He nailed boards across the windows .", 2, "Room and board .", 2)
    s, span = it.sentence1, it.char_span1
    text, chars, part = variant_input(s, span, "base")
    assert (text, text[slice(*chars)], part) == (s, "boards", "span")
    text, chars, part = variant_input(s, span, "repeat")
    assert text == f"{s} {s}" and text[slice(*chars)] == "boards" and part == "span"
    assert chars[0] > len(s)  # the second copy, which has seen the whole sentence
    text, chars, part = variant_input(s, span, "prompt")
    assert text == f'In this sentence "{s}", "boards" means in one word: "'
    assert (chars, part) == ((len(text) - 1, len(text)), "final")
    text, chars, part = variant_input(s, span, "last")
    assert (text, text[slice(*chars)], part) == (s, ".", "final")
    text, _, _ = variant_input(s, span, "prompt", template="{word} in <{sentence}> ->")
    assert text == f"boards in <{s}> ->"


def test_variant_input_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown WiC input variant 'reverse'"):
        variant_input("a b", (0, 1), "reverse")
    with pytest.raises(ValueError, match="outside the sentence"):
        variant_input("a b", (2, 9), "base")
    with pytest.raises(ValueError, match=r"\{sentence\}"):
        variant_input("a b", (0, 1), "prompt", template="what does {word} mean")
    with pytest.raises(ValueError, match="only the fields"):
        variant_input("a b", (0, 1), "prompt", template="{sentence} {lemma}")


# --------------------------------------------------------------------------------------------
# span mapping on three tokenizers (byte-level BPE, Llama-style BPE, WordPiece)
# --------------------------------------------------------------------------------------------

SPAN_CASES = [
    # (sentence, whitespace index, word): punctuation next to the target, repeated words,
    # long words split into sub-words, hyphen and apostrophe inside a token
    ("Room and board .", 2, "board"),
    ("He saw the bank and the bank saw him .", 6, "bank"),
    ("The antidisestablishmentarianism debate continued .", 1, "antidisestablishmentarianism"),
    ("It was a well-known fact , wasn't it ?", 3, "well-known"),
    ("Circulate a rumor .", 0, "Circulate"),
    ("Who will bell the cat ?", 2, "bell"),
]


@pytest.mark.parametrize(
    "arch",
    [
        "tiny_gpt2",
        pytest.param("smollm2", marks=pytest.mark.real),
        pytest.param("minilm", marks=pytest.mark.real),
    ],
)
def test_target_span_maps_to_exactly_the_word_tokens(arch, request):
    model = request.getfixturevalue(arch)
    adapter = semhooks.adapt(model)
    items = [item(s, i, s, i) for s, i, _ in SPAN_CASES]
    requests, texts, words = [], [], []
    for it, (_, _, word) in zip(items, SPAN_CASES, strict=True):
        for variant in ("base", "repeat"):
            text, chars, part = variant_input(it.sentence1, it.char_span1, variant)
            texts.append(text)
            requests.append((len(texts) - 1, chars, part))
            words.append((word, chars))
    positions = _request_positions(adapter, texts, requests)
    batch = adapter.tokenize(texts)
    for row, (pos, (word, chars)) in enumerate(zip(positions, words, strict=True)):
        offs = batch.offsets[row]
        covered = "".join(texts[row][slice(*offs[p].tolist())] for p in pos)
        assert covered.strip() == word, (arch, texts[row], covered)
        assert pos == list(range(pos[0], pos[-1] + 1))  # contiguous
        # the neighbours do not belong to the word
        for q in (pos[0] - 1, pos[-1] + 1):
            if 0 <= q < batch.attention_mask[row].sum() and not batch.special[row, q]:
                s, e = offs[q].tolist()
                assert e <= chars[0] or s >= chars[1]
        if "bank" == word:  # the second 'bank' of the sentence (and of the second copy)
            assert chars[0] == texts[row].rindex("bank")
    long_word = positions[4]  # base variant of the long word
    assert len(long_word) >= 2, f"{arch} did not split the long word into sub-words"


@pytest.mark.real
def test_final_token_is_the_closing_punctuation_for_real_tokenizers(smollm2, minilm):
    for model in (smollm2, minilm):
        adapter = semhooks.adapt(model)
        s = "He hooked a snake accidentally , and was so scared ."
        requests = [(0, (len(s) - 1, len(s)), "final")]
        (pos,) = _request_positions(adapter, [s], requests)
        batch = adapter.tokenize([s])
        assert s[slice(*batch.offsets[0, pos[0]].tolist())].strip() == "."
        # BERT: the token before [SEP]; decoders: the last token
        assert pos[0] == int(batch.attention_mask[0].sum()) - (2 if adapter.is_encoder else 1)


# --------------------------------------------------------------------------------------------
# vectors: oracle against extract_states, one pass per unique text
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_items() -> list[WiCItem]:
    return load_wic("dev")[:6]


def test_vectors_equal_direct_extraction_for_every_variant(tiny_llama, dev_items):
    vec = wic_vectors(tiny_llama, dev_items, progress=False)
    assert set(vec.vectors) == set(VARIANTS)
    assert vec.vectors["base"].shape == (3, len(dev_items), 2, 64)
    for k, which in ((0, "1"), (1, "2")):
        sentences = [getattr(it, f"sentence{which}") for it in dev_items]
        spans = [getattr(it, f"char_span{which}") for it in dev_items]
        base = semhooks.extract_states(
            tiny_llama, sentences, tokens=semhooks.Spans(spans), progress=False
        )
        torch.testing.assert_close(vec.vectors["base"][:, :, k], base.states)
        last = semhooks.extract_states(tiny_llama, sentences, tokens="last", progress=False)
        torch.testing.assert_close(vec.vectors["last"][:, :, k], last.states)
        shifted = [(a + len(s) + 1, b + len(s) + 1) for s, (a, b) in zip(sentences, spans, strict=True)]  # fmt: skip
        rep = semhooks.extract_states(
            tiny_llama, [f"{s} {s}" for s in sentences], tokens=semhooks.Spans(shifted),
            progress=False,
        )  # fmt: skip
        torch.testing.assert_close(vec.vectors["repeat"][:, :, k], rep.states)
        prompts = [
            DEFAULT_PROMPT.format(sentence=s, word=s[a:b])
            for s, (a, b) in zip(sentences, spans, strict=True)
        ]
        prm = semhooks.extract_states(tiny_llama, prompts, tokens="last", progress=False)
        torch.testing.assert_close(vec.vectors["prompt"][:, :, k], prm.states)
    assert vec.labels is not None and vec.labels.tolist() == [it.label for it in dev_items]


def test_each_unique_text_is_run_once(tiny_llama, monkeypatch):
    shared = "The bank was closed ."
    items = [
        item(shared, 1, "He sat on the bank .", 4),
        item(shared, 1, "The bank approved the loan .", 1),
        item("He sat on the bank .", 4, shared, 1),
    ]
    adapter = semhooks.adapt(tiny_llama)
    seen: list[str] = []
    original = adapter.forward

    def counting(batch, *args, **kwargs):
        seen.extend(batch.texts)
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(adapter, "forward", counting)
    vec = wic_vectors(tiny_llama, items, progress=False, batch_size=2)
    # 3 unique sentences, each run as S (base and last), "S S" and one prompt ("bank")
    assert vec.n_texts == 3 * 3
    assert len(seen) == vec.n_texts and len(set(seen)) == len(seen)
    assert vec.n_requests == len(items) * 2 * len(VARIANTS)
    # the shared sentence gives identical vectors wherever it appears
    torch.testing.assert_close(vec.vectors["base"][:, 0, 0], vec.vectors["base"][:, 2, 1])


def test_vectors_do_not_depend_on_batch_size(tiny_gpt2, dev_items):
    a = wic_vectors(tiny_gpt2, dev_items[:4], ["base", "prompt"], batch_size=1, progress=False)
    b = wic_vectors(tiny_gpt2, dev_items[:4], ["base", "prompt"], batch_size=5, progress=False)
    for v in ("base", "prompt"):
        torch.testing.assert_close(a.vectors[v], b.vectors[v], atol=1e-5, rtol=1e-5)


def test_layers_subset_and_encoder(tiny_bert, dev_items):
    vec = wic_vectors(tiny_bert, dev_items, ["base"], layers=[-1, 0], progress=False)
    assert vec.layers == [0, 2]
    full = wic_vectors(tiny_bert, dev_items, ["base"], progress=False)
    torch.testing.assert_close(vec.vectors["base"], full.vectors["base"][[0, 2]])


# --------------------------------------------------------------------------------------------
# scores and thresholds: hand-made cases
# --------------------------------------------------------------------------------------------


def test_cosine_scores_known_values_and_zscore():
    a = torch.tensor([1.0, 0.0])
    x = torch.stack([torch.stack([a, a]), torch.stack([a, torch.tensor([0.0, 1.0])])])[None]
    raw = cosine_scores(x, standardize=False)
    torch.testing.assert_close(raw, torch.tensor([[1.0, 0.0]]))
    # a shared offset (anisotropy) makes raw cosines all near 1; z-scoring removes it
    rng = torch.Generator().manual_seed(0)
    v = torch.randn(1, 200, 2, 16, generator=rng)
    shifted = v + 50.0
    assert float(cosine_scores(shifted, standardize=False).min()) > 0.99
    torch.testing.assert_close(cosine_scores(shifted), cosine_scores(v), atol=1e-4, rtol=1e-4)
    # statistics are over the whole split: a permutation of pairs permutes the scores
    perm = torch.randperm(200, generator=rng)
    torch.testing.assert_close(cosine_scores(v[:, perm]), cosine_scores(v)[:, perm])
    mean, std = zscore_stats(v)
    torch.testing.assert_close(mean[0], v[0].reshape(-1, 16).mean(0))
    # a reference set's statistics are used as given
    ref = (torch.zeros(1, 16), torch.ones(1, 16))
    torch.testing.assert_close(cosine_scores(v, stats=ref), cosine_scores(v, standardize=False))
    feats = pair_features(x, standardize=False)
    torch.testing.assert_close(feats[0, 1], torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_threshold_search_on_a_toy_case():
    scores = [0.12, 0.31, 0.33, 0.58, 0.61, 0.9]
    labels = [False, False, True, False, True, True]
    grid = choose_threshold(scores, labels)
    # 5/6 correct for thresholds in [0.31, 0.33) and [0.58, 0.61); only 0.60 is on the grid
    assert grid.threshold == pytest.approx(0.6) and grid.accuracy == pytest.approx(5 / 6)
    assert grid.predict([0.6, 0.61]).tolist() == [False, True]
    best = choose_threshold(scores, labels, "optimal")
    # both gaps give 5/6; ties go to the smaller cut, the midpoint of 0.31 and 0.33
    assert best.threshold == pytest.approx(0.32) and best.accuracy == pytest.approx(5 / 6)
    # a perfectly separable case: the optimal cut is the midpoint of the gap
    sep = choose_threshold([-0.4, -0.2, 0.5, 0.7], [0, 0, 1, 1], "optimal")
    assert sep.threshold == pytest.approx(0.15) and sep.accuracy == 1.0
    # the grid cannot go below 0: negatives are all predicted False
    assert choose_threshold([-0.4, -0.2, 0.5, 0.7], [0, 0, 1, 1]).accuracy == 1.0
    # all True: cut below every score; all False: at the top score
    assert choose_threshold([0.2, 0.4], [True, True], "optimal").predict([0.2, 0.4]).all()
    assert not choose_threshold([0.2, 0.4], [False, False], "optimal").predict([0.2, 0.4]).any()
    # ties cannot be split
    tie = choose_threshold([0.5, 0.5, 0.5], [True, False, True], "optimal")
    assert tie.accuracy == pytest.approx(2 / 3)
    assert choose_threshold([0.3, 0.7], [0, 1], grid=[0.8, 0.5]).threshold == 0.5


def test_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match="empty dataset"):
        choose_threshold([], [])
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        choose_threshold([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="'grid' or 'optimal'"):
        choose_threshold([0.1], [True], "best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        choose_threshold([float("nan")], [True])


# --------------------------------------------------------------------------------------------
# study and result object
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_result(tiny_llama) -> WiCResult:
    return wic_study(
        tiny_llama, n_fit=24, n_eval=16, probe=True, probe_cv=2, probe_Cs=(0.1,), progress=False,
        batch_size=32,
    )  # fmt: skip


def test_study_reports_per_variant_per_layer(tiny_result):
    r = tiny_result
    assert r.variants == list(VARIANTS) and r.layers == [0, 1, 2]
    for v in VARIANTS:
        assert len(r.accuracy[v]) == len(r.thresholds[v]) == len(r.fit_accuracy[v]) == 3
        assert all(0.0 <= a <= 1.0 for a in r.accuracy[v])
        assert all(t in r.protocol["grid"] for t in r.thresholds[v])
        assert r.best_layer[v] == r.layers[int(np.argmax(r.accuracy[v]))]
        assert r.best_accuracy[v] == max(r.accuracy[v])
    assert r.probe_accuracy is not None and len(r.probe_accuracy["base"]) == 3
    assert (r.protocol["n_fit"], r.protocol["n_eval"]) == (24, 16)
    assert (r.protocol["fit_split"], r.protocol["eval_split"]) == ("train", "dev")


def test_study_threshold_accuracy_matches_manual_computation(tiny_llama):
    fit = load_wic("train")[:16]
    ev = load_wic("dev")[:10]
    r = wic_study(
        tiny_llama, fit=fit, evaluate=ev, variants=["repeat"], probe=False, threshold="optimal",
        progress=False,
    )  # fmt: skip
    vf = wic_vectors(tiny_llama, fit, ["repeat"], progress=False)
    ve = wic_vectors(tiny_llama, ev, ["repeat"], progress=False)
    sf, se = cosine_scores(vf.vectors["repeat"]), cosine_scores(ve.vectors["repeat"])
    for li in range(3):
        cut = choose_threshold(sf[li].numpy(), vf.labels, "optimal")
        assert r.thresholds["repeat"][li] == pytest.approx(cut.threshold)
        expected = float((cut.predict(se[li].numpy()) == ve.labels).mean())
        assert r.accuracy["repeat"][li] == pytest.approx(expected)
    # stats_from="fit" applies the fit split's statistics to the evaluation split
    r2 = wic_study(
        tiny_llama, fit=fit, evaluate=ev, variants=["repeat"], probe=False, stats_from="fit",
        progress=False,
    )  # fmt: skip
    stats = zscore_stats(vf.vectors["repeat"])
    se2 = cosine_scores(ve.vectors["repeat"], stats=stats)
    cut = choose_threshold(sf[0].numpy(), vf.labels)
    assert r2.accuracy["repeat"][0] == pytest.approx(
        float((cut.predict(se2[0].numpy()) == ve.labels).mean())
    )


def test_result_round_trip_table_and_plot(tiny_result, tiny_bert, tmp_path):
    data = json.loads(json.dumps(tiny_result.to_dict()))
    back = WiCResult.from_dict(data)
    assert back.accuracy == tiny_result.accuracy and back.best_layer == tiny_result.best_layer
    table = tiny_result.table()
    lines = table.splitlines()
    assert lines[0].startswith("| layer | base cos | repeat cos") and "probe" in lines[0]
    assert len(lines) == 2 + 3 and table.count("**") == 2 * 8
    assert tiny_result.table("threshold").count("probe") == 0
    enc = wic_study(tiny_bert, n_fit=16, n_eval=10, variants=["base"], probe=False, progress=False)
    assert enc.is_encoder
    fig = enc.plot(tiny_result, path=tmp_path / "wic.png")
    axes = fig.get_axes()
    assert len(axes) == 2
    assert "decoder" in axes[0].get_title() and "encoder" in axes[1].get_title()
    assert (tmp_path / "wic.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no probe readout"):
        enc.plot(readout="probe")
    with pytest.raises(ValueError, match="probe was not run"):
        enc.table("probe")


# --------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------


def test_malformed_wic_lines_name_the_line(tmp_path: Path):
    good = "bank\tN\t1-3\tThe bank is closed .\tHe sat on the bank ."
    path = tmp_path / "mine.data.txt"
    path.write_text(f"{good}\nbank\tN\t1+3\tThe bank .\tThe bank .\n")
    with pytest.raises(ValueError, match=r"mine\.data\.txt:2: third field must be"):
        load_wic(path)
    path.write_text(f"{good}\n{good}\nbank\tN\t1-3\tonly four fields\n")
    with pytest.raises(ValueError, match=r":3: expected 5 tab-separated fields"):
        load_wic(path)
    path.write_text(f"{good}\nbank\tN\t9-3\tThe bank is closed .\tHe sat on the bank .\n")
    with pytest.raises(ValueError, match=r":2: index1=9 is out of range"):
        load_wic(path)
    path.write_text("")
    with pytest.raises(ValueError, match="empty WiC file"):
        load_wic(path)
    path.write_text(good + "\n")
    (tmp_path / "mine.gold.txt").write_text("X\n")
    with pytest.raises(ValueError, match=r"mine\.gold\.txt:1: expected a gold label"):
        load_wic(path)
    with pytest.raises(ValueError, match="out of range"):
        item("Room and board .", 7, "Room and board .", 2)


def test_study_and_vectors_refuse_bad_inputs(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="empty dataset"):
        wic_vectors(tiny_llama, [], progress=False)
    with pytest.raises(ValueError, match="fit split is empty"):
        wic_study(tiny_llama, fit=[], progress=False)
    unlabeled = [item("The bank .", 1, "A bank .", 1, label=None)]
    with pytest.raises(ValueError, match="no gold label"):
        wic_study(tiny_llama, fit=unlabeled, progress=False)
    with pytest.raises(ValueError, match="unknown WiC input variant"):
        wic_vectors(tiny_llama, unlabeled, ["mean"], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        wic_vectors(tiny_llama, unlabeled, layers=[7], progress=False)
    with pytest.raises(ValueError, match="stats_from"):
        wic_study(tiny_llama, stats_from="batch", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="test split is not bundled"):
        wic_study(tiny_llama, evaluate="test", progress=False)
    with pytest.warns(UserWarning, match="both 'dev'"):
        wic_study(tiny_llama, fit="dev", n_fit=10, n_eval=10, variants=["base"], probe=False,
                  progress=False)  # fmt: skip
    data = tmp_path / "x.data.txt"
    data.write_text("bank\tN\t1-3\tThe bank is closed .\tHe sat on the bank .\n")
    with pytest.raises(ValueError, match="no gold label"):
        wic_study(tiny_llama, fit=data, progress=False)


# --------------------------------------------------------------------------------------------
# the real decoder
# --------------------------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_wic_best_layer_is_clearly_above_chance(smollm2):
    # 200 seeded dev pairs, grid thresholds chosen on 300 seeded train pairs, repeat variant,
    # layers 4..10 (the pass stops after layer 10). Measured (CPU, torch 2.13): 55.5, 59.0,
    # 62.5, 61.0% at layers 4, 6, 8, 10 (full dev: see docs/results/lexical_pooling.md);
    # asserted with a margin of about 1.3 standard errors (n = 200).
    r = wic_study(
        smollm2, n_fit=300, n_eval=200, variants=["repeat"], layers=[4, 6, 8, 10],
        probe=False, progress=False, batch_size=32,
    )  # fmt: skip
    assert r.protocol["n_eval"] == 200
    assert max(r.accuracy["repeat"]) > 0.58
    assert r.best_layer["repeat"] in (6, 8, 10)
