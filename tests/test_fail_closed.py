"""Bad input and damaged files fail closed with a clear error (issue 15).

Texts without content, truncation that would drop closing special tokens, artifacts whose
checksum is missing or whose metadata was edited, malformed JSON results, stale temporary
files of a killed save.
"""

from __future__ import annotations

import pytest
import torch

import semhooks as sh

INVISIBLE = ["\u200b", "\u200b\u200c\u200d", "\ufeff", "\x00\x01", "\u2060 \u200b", "\x7f\t"]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_texts_of_only_control_or_zero_width_characters_are_refused(arch, request):
    """Before: they were accepted (a BERT then pooled only [CLS]/[SEP])."""
    model = request.getfixturevalue(f"tiny_{arch}")
    for text in INVISIBLE:
        with pytest.raises(ValueError, match=r"text 1 holds only control or zero-width"):
            sh.adapt(model).tokenize(["fine text", text])
        with pytest.raises(ValueError, match=r"text 1 holds only control or zero-width"):
            sh.extract_states(model, ["fine text", text], progress=False)
    # visible content next to such characters is kept
    assert sh.adapt(model).tokenize(["a\u200bb"]).attention_mask.sum() >= 1


def test_bert_truncation_keeps_the_closing_sep(tiny_bert):
    """Before: truncate=True cut the [SEP] off a long text."""
    a = sh.adapt(tiny_bert)
    long_text = "word " * 600
    batch = a.tokenize([long_text, "a short text"], truncate=True)
    n = int(batch.attention_mask[0].sum())
    assert n == a.n_ctx and batch.truncated == [True, False]
    tokens = a.tokenizer.convert_ids_to_tokens(batch.input_ids[0, :n].tolist())
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 1
    assert batch.special[0, n - 1] and not batch.special[0, n - 2]
    # the cut text is the uncut prefix: its last content token is the one before [SEP]
    last = sh.extract_states(tiny_bert, [long_text], truncate=True, progress=False)
    prefix = a.tokenizer.convert_tokens_to_string(tokens[1:-1])
    ref = sh.extract_states(tiny_bert, [prefix], progress=False)
    torch.testing.assert_close(last.states, ref.states, atol=1e-5, rtol=1e-5)


def test_decoder_truncation_still_cuts_on_the_right(tiny_gpt2):
    a = sh.adapt(tiny_gpt2)
    batch = a.tokenize(["word " * 600], truncate=True)
    full = a.tokenizer("word " * 600)["input_ids"]
    n = int(batch.attention_mask[0].sum())
    assert (
        n == a.n_ctx and batch.input_ids[0, :n].tolist()[-5:] == full[: n - int(a.prepend_bos)][-5:]
    )
