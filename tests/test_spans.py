"""Substring -> token positions through offsets, on GPT-2, Llama and BERT style tokenizers."""

from __future__ import annotations

import pytest

import semhooks as sh
from semhooks.extraction.spans import SpanNotFoundError


def covered(batch, positions, row=0):
    text = batch.texts[row]
    start = int(batch.offsets[row, positions[0], 0])
    end = int(batch.offsets[row, positions[-1], 1])
    return text[start:end]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize(
    ("text", "word", "occurrence", "expect_start"),
    [
        ("The capital of France is Paris.", "Paris", "last", 25),
        ("The bank of the river. She went to the bank.", "bank", "first", 4),
        ("The bank of the river. She went to the bank.", "bank", "last", 39),
        ("The bank of the river. She went to the bank.", "bank", 1, 39),
        ("Él comió café en São Paulo.", "café", "last", 9),
        ("Él comió café en São Paulo.", "São Paulo", "last", 17),
        ("I hated this film: boring, dull!", "dull", "last", 27),
        ("naïve résumé façade", "résumé", "last", 6),
    ],
)
def test_span_covers_exactly_the_word(arch, text, word, occurrence, expect_start, request):
    a = sh.adapt(request.getfixturevalue(f"tiny_{arch}"))
    batch = a.tokenize([text])
    start, end = sh.char_span(text, word, occurrence)
    assert (start, text[start:end]) == (expect_start, word)
    pos = sh.find_span(batch, word, occurrence)
    assert pos == list(range(pos[0], pos[-1] + 1))  # contiguous
    got = covered(batch, pos)
    assert word.lower() in got.lower()
    # no more than the word: neighbours excluded, leading space at most
    assert len(got.strip()) <= len(word) + 1
    assert not batch.special[0, pos].any()


def test_multi_token_word_and_bos(tiny_gpt2):
    a = sh.adapt(tiny_gpt2)
    batch = a.tokenize(["The word antidisestablishment is long"])
    pos = sh.find_span(batch, "antidisestablishment")
    assert len(pos) > 1  # split into several tokens by the tiny BPE
    assert pos[0] > 0  # BOS at position 0 is never part of a span


def test_span_not_found_names_text_and_substring(tiny_gpt2):
    a = sh.adapt(tiny_gpt2)
    batch = a.tokenize(["The capital of France is Paris."])
    with pytest.raises(SpanNotFoundError, match=r"'Berlin' not found in text 'The capital"):
        sh.find_span(batch, "Berlin")
    with pytest.raises(SpanNotFoundError, match="occurrence 2"):
        sh.find_span(batch, "Paris", occurrence=2)


def test_spans_part_last_and_char_spans(tiny_llama):
    texts = ["Bat, Rabbit, Ant", "The capital of Italy is Rome"]
    a = sh.adapt(tiny_llama)
    batch = a.tokenize(texts, padding_side="left")
    spans = sh.Spans(["Rabbit", (15, 20)], part="last")
    assert len(spans.positions(batch, 0, 0)) == 1
    full = sh.Spans(["Rabbit", (15, 20)])
    assert covered(batch, full.positions(batch, 1, 1), row=1).strip() == "Italy"


@pytest.mark.real
def test_smollm2_tokenizer_spans(smollm2):
    a = sh.adapt(smollm2)
    text = "Él comió café en São Paulo, and the café was naïve."
    batch = a.tokenize([text])
    for word, occ in [
        ("café", "first"),
        ("café", "last"),
        ("São Paulo", "last"),
        ("naïve", "last"),
    ]:
        pos = sh.find_span(batch, word, occ)
        got = covered(batch, pos)
        assert word in got and len(got.strip()) <= len(word) + 1, (word, got)
    first, last = sh.find_span(batch, "café", "first"), sh.find_span(batch, "café", "last")
    assert first[-1] < last[0]
