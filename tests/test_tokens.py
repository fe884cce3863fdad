"""semhooks.backend.tokens (property-based, hypothesis): empty and whitespace-only texts are
refused clearly; texts longer than the context window are refused or truncated, on GPT-2
byte-level BPE, Llama-style metaspace BPE and BERT WordPiece tokenizers."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import semhooks as sh
from semhooks.extraction.spans import SpanNotFoundError

PROPS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPS
@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
@given(blank=st.text(st.sampled_from(list(" \t\n\r\u00a0\u2003\u3000\x0b\x0c")), max_size=8))
def test_empty_and_whitespace_only_texts_are_refused_clearly(adapters, arch, blank):
    with pytest.raises(ValueError, match="text 1 is empty or whitespace only"):
        adapters[arch].tokenize(["fine", blank])
    with pytest.raises(ValueError, match="empty or whitespace only"):
        sh.extract_states(adapters[arch], ["fine", blank], progress=False)


@PROPS
@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
@given(
    words=st.lists(st.sampled_from(["Paris", "river", "🙂", "naïve", "中文", "bank"]), min_size=1)
)
def test_texts_beyond_the_context_window(adapters, arch, words):
    a = adapters[arch]
    n_ctx = a.n_ctx
    text = " ".join(words * (n_ctx // len(words) + 2)) + " END"
    with pytest.raises(
        ValueError, match=rf"more than the context window of {n_ctx}.*truncate=True"
    ):
        a.tokenize([text])
    batch = a.tokenize([text, "short"], truncate=True)
    assert batch.truncated == [True, False]
    assert int(batch.attention_mask[0].sum()) == n_ctx
    with pytest.raises(SpanNotFoundError, match="truncated"):
        sh.find_span(batch, "END")
    assert sh.find_span(batch, words[0], "first")  # the start survives
