"""Tiny random Hugging Face models of many architecture families (for conformance tests).

Each entry builds a model from a small ``transformers`` config (random weights, offline) that
keeps the traits semhooks depends on: parallel attention + MLP (GPT-J, GPT-NeoX), tied or
untied and biased unembeddings, final norms with a ``1 + w`` offset (Gemma), logit
soft-capping (Gemma 2), embedding scaling (Gemma), rotary, learned and ALiBi positions
(BLOOM), sliding-window layers (Mistral, Gemma 2/3), grouped KV heads, mixture-of-experts
MLPs (Mixtral, Qwen2-MoE, OLMoE) and encoders (BERT, RoBERTa).

:func:`semhooks.testing.tiny_model` dispatches here; this module knows nothing of
TransformerLens and takes the tokenizer it is given, so its vocabulary size fixes the
config's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TinyArch:
    """One architecture family: its tokenizer style, traits, and a builder.

    ``build(tokenizer, n_layers, d_model)`` returns an untrained Hugging Face model.
    ``traits`` are the properties the conformance table reports (a short phrase each).
    """

    name: str
    tokenizer_style: str  # "gpt2" (byte-level BPE), "llama" (metaspace BPE), "bert", "roberta"
    hf_class: str
    traits: tuple[str, ...]
    build: Callable[[Any, int, int], Any]
    encoder: bool = False


def _ids(tok: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def _heads(d_model: int) -> dict[str, int]:
    return {"num_attention_heads": 4, "hidden_size": d_model, "intermediate_size": 2 * d_model}


def _make(class_name: str, config_name: str, **kwargs: Any) -> Any:
    import transformers

    config = getattr(transformers, config_name)(**kwargs)
    # What a checkpoint's config.json records; the bridge picks its adapter from it.
    config.architectures = [class_name]
    return getattr(transformers, class_name)(config)


def _llama_like(
    class_name: str, config_name: str, extra: dict[str, Any] | None = None
) -> Callable[[Any, int, int], Any]:
    def build(tok: Any, n_layers: int, d_model: int) -> Any:
        kwargs = {
            "num_hidden_layers": n_layers,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            **_heads(d_model),
            **_ids(tok),
            **(extra or {}),
        }
        return _make(class_name, config_name, **kwargs)

    return build


def _gpt2(tok: Any, n_layers: int, d_model: int) -> Any:
    return _make(
        "GPT2LMHeadModel",
        "GPT2Config",
        n_embd=d_model,
        n_layer=n_layers,
        n_head=4,
        n_positions=512,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _neox(tok: Any, n_layers: int, d_model: int) -> Any:
    return _make(
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        num_hidden_layers=n_layers,
        max_position_embeddings=512,
        rotary_pct=0.5,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        **_heads(d_model),
        **_ids(tok),
    )


def _gptj(tok: Any, n_layers: int, d_model: int) -> Any:
    return _make(
        "GPTJForCausalLM",
        "GPTJConfig",
        n_embd=d_model,
        n_layer=n_layers,
        n_head=4,
        rotary_dim=4,
        n_positions=512,
        tie_word_embeddings=False,
        **_ids(tok),
    )


def _opt(tok: Any, n_layers: int, d_model: int) -> Any:
    return _make(
        "OPTForCausalLM",
        "OPTConfig",
        hidden_size=d_model,
        ffn_dim=2 * d_model,
        word_embed_proj_dim=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        max_position_embeddings=512,
        **_ids(tok),
    )


def _bloom(tok: Any, n_layers: int, d_model: int) -> Any:
    return _make(
        "BloomForCausalLM",
        "BloomConfig",
        hidden_size=d_model,
        n_layer=n_layers,
        n_head=4,
        **_ids(tok),
    )


def _phi3(tok: Any, n_layers: int, d_model: int) -> Any:
    return _make(
        "Phi3ForCausalLM",
        "Phi3Config",
        num_hidden_layers=n_layers,
        num_key_value_heads=2,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        **_heads(d_model),
        **_ids(tok),
    )


def _encoder(class_name: str, config_name: str) -> Callable[[Any, int, int], Any]:
    def build(tok: Any, n_layers: int, d_model: int) -> Any:
        extra = {"type_vocab_size": 1} if config_name == "RobertaConfig" else {}
        return _make(
            class_name,
            config_name,
            num_hidden_layers=n_layers,
            max_position_embeddings=512,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            **_heads(d_model),
            **extra,
        )

    return build


_MOE = {"num_local_experts": 4, "num_experts_per_tok": 2}
_GEMMA = {"head_dim": 8, "hidden_activation": "gelu_pytorch_tanh"}

ARCHS: dict[str, TinyArch] = {
    a.name: a
    for a in [
        TinyArch(
            "gpt2",
            "gpt2",
            "GPT2LMHeadModel",
            ("learned positions", "LayerNorm", "tied unembedding"),
            _gpt2,
        ),
        TinyArch(
            "llama",
            "llama",
            "LlamaForCausalLM",
            ("rotary", "RMSNorm", "grouped KV heads", "untied unembedding"),
            _llama_like("LlamaForCausalLM", "LlamaConfig", {"tie_word_embeddings": False}),
        ),
        TinyArch(
            "neox",
            "gpt2",
            "GPTNeoXForCausalLM",
            ("parallel attention + MLP", "partial rotary", "untied unembedding"),
            _neox,
        ),
        TinyArch(
            "mistral",
            "llama",
            "MistralForCausalLM",
            ("rotary", "sliding window", "grouped KV heads"),
            _llama_like(
                "MistralForCausalLM",
                "MistralConfig",
                {"sliding_window": 4, "tie_word_embeddings": False},
            ),
        ),
        TinyArch(
            "qwen2",
            "gpt2",
            "Qwen2ForCausalLM",
            ("rotary", "QKV biases", "grouped KV heads", "tied unembedding"),
            _llama_like("Qwen2ForCausalLM", "Qwen2Config", {"tie_word_embeddings": True}),
        ),
        TinyArch(
            "qwen3",
            "gpt2",
            "Qwen3ForCausalLM",
            ("rotary", "QK norm", "grouped KV heads"),
            _llama_like("Qwen3ForCausalLM", "Qwen3Config", {"head_dim": 8}),
        ),
        TinyArch(
            "gemma",
            "llama",
            "GemmaForCausalLM",
            ("rotary", "RMSNorm 1 + w", "embedding scaling", "tied unembedding"),
            _llama_like("GemmaForCausalLM", "GemmaConfig", _GEMMA),
        ),
        TinyArch(
            "gemma2",
            "llama",
            "Gemma2ForCausalLM",
            ("logit soft-capping", "sliding-window layers", "RMSNorm 1 + w", "sandwich norms"),
            _llama_like(
                "Gemma2ForCausalLM",
                "Gemma2Config",
                {
                    **_GEMMA,
                    "sliding_window": 4,
                    # Caps small enough to bend tiny random logits and scores.
                    "final_logit_softcapping": 0.5,
                    "attn_logit_softcapping": 0.5,
                },
            ),
        ),
        TinyArch(
            "gemma3",
            "llama",
            "Gemma3ForCausalLM",
            ("sliding-window layers", "QK norm", "RMSNorm 1 + w", "embedding scaling"),
            _llama_like(
                "Gemma3ForCausalLM",
                "Gemma3TextConfig",
                {**_GEMMA, "sliding_window": 4, "layer_types": None},
            ),
        ),
        TinyArch(
            "phi3",
            "llama",
            "Phi3ForCausalLM",
            ("fused QKV", "fused gate/up", "rotary"),
            _phi3,
        ),
        TinyArch(
            "olmo",
            "gpt2",
            "OlmoForCausalLM",
            ("non-parametric LayerNorm", "rotary"),
            # As many KV heads as query heads, like the OLMo-1 checkpoints (TransformerLens
            # 3.x's OLMo conversion has no grouped KV heads).
            _llama_like(
                "OlmoForCausalLM",
                "OlmoConfig",
                {"tie_word_embeddings": False, "num_key_value_heads": 4},
            ),
        ),
        TinyArch(
            "gptj",
            "gpt2",
            "GPTJForCausalLM",
            ("parallel attention + MLP", "partial rotary", "biased unembedding"),
            _gptj,
        ),
        TinyArch(
            "opt",
            "gpt2",
            "OPTForCausalLM",
            ("learned positions with offset 2", "ReLU MLP", "tied unembedding"),
            _opt,
        ),
        TinyArch(
            "bloom",
            "gpt2",
            "BloomForCausalLM",
            ("ALiBi positions", "embedding LayerNorm", "tied unembedding"),
            _bloom,
        ),
        TinyArch(
            "mixtral",
            "llama",
            "MixtralForCausalLM",
            ("mixture of experts", "sliding window", "grouped KV heads"),
            _llama_like(
                "MixtralForCausalLM", "MixtralConfig", {**_MOE, "tie_word_embeddings": False}
            ),
        ),
        TinyArch(
            "qwen2_moe",
            "gpt2",
            "Qwen2MoeForCausalLM",
            ("mixture of experts", "shared expert", "QKV biases"),
            _llama_like(
                "Qwen2MoeForCausalLM",
                "Qwen2MoeConfig",
                {
                    "num_experts": 4,
                    "num_experts_per_tok": 2,
                    "moe_intermediate_size": 32,
                    "shared_expert_intermediate_size": 32,
                    "decoder_sparse_step": 1,
                },
            ),
        ),
        TinyArch(
            "olmoe",
            "gpt2",
            "OlmoeForCausalLM",
            ("mixture of experts", "QK norm"),
            _llama_like(
                "OlmoeForCausalLM", "OlmoeConfig", {"num_experts": 4, "num_experts_per_tok": 2}
            ),
        ),
        TinyArch(
            "bert",
            "bert",
            "BertForMaskedLM",
            ("encoder", "learned positions", "MLM head"),
            _encoder("BertForMaskedLM", "BertConfig"),
            encoder=True,
        ),
        TinyArch(
            "roberta",
            "roberta",
            "RobertaForMaskedLM",
            ("encoder", "positions offset by padding index", "MLM head"),
            _encoder("RobertaForMaskedLM", "RobertaConfig"),
            encoder=True,
        ),
    ]
}


def roberta_tokenizer(byte_level: Any) -> Any:
    """A RoBERTa-style tokenizer (``<s> A </s>``, ``<pad>``, ``<mask>``) from a byte-level one.

    ``byte_level`` is a GPT-2-style ``PreTrainedTokenizerFast``; its BPE is reused and the
    RoBERTa special tokens are appended to its vocabulary.
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(byte_level.backend_tokenizer.to_str())
    backend.add_special_tokens(["<s>", "</s>", "<pad>", "<mask>", "<unk>"])
    ids = {t: backend.token_to_id(t) for t in ("<s>", "</s>")}
    if None in ids.values():  # pragma: no cover - add_special_tokens just added them
        raise RuntimeError(f"RoBERTa special tokens missing after adding them: {ids}")
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", int(ids["</s>"] or 0)), ("<s>", int(ids["<s>"] or 0))
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    tok.init_kwargs["name_or_path"] = "semhooks-tiny-roberta"
    tok.init_kwargs["add_bos_token"] = True  # else TransformerLens reloads it by name
    return tok


def build_hf_model(arch: str, tokenizer: Any, seed: int, n_layers: int, d_model: int) -> Any:
    """The untrained Hugging Face model of family ``arch`` in eval mode (seeded)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {sorted(ARCHS)}")
    if d_model % 8:
        raise ValueError(f"d_model must be a multiple of 8 (4 heads, rotary), got {d_model}")
    torch.manual_seed(seed)
    model = ARCHS[arch].build(tokenizer, n_layers, d_model).eval()
    # Norm weights start at one (zero for Gemma's 1 + w) and biases at zero; random values
    # make a dropped bias, a missing norm offset or a skipped final norm visible to oracles.
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.2 * torch.randn_like(param))
    return model


def dispatch(hf: Any, devices: list[str]) -> Any:
    """Split ``hf``'s decoder layers over ``devices`` in contiguous runs (accelerate).

    Everything outside the layer list (embeddings, final norm, head) goes to the first
    device, so the residual stream leaves and comes back across devices.
    """
    from accelerate import dispatch_model

    if len(devices) < 2:
        raise ValueError(f"device_map needs at least two devices, got {devices}")
    layer_list = next(
        (n for n, m in hf.named_modules() if isinstance(m, torch.nn.ModuleList) and n), None
    )
    if layer_list is None:
        raise ValueError(f"{type(hf).__name__} has no layer list to split over devices")
    n = len(hf.get_submodule(layer_list))
    device_map: dict[str, str] = {}
    params = list(hf.named_parameters(remove_duplicate=False))
    for name, _ in params + list(hf.named_buffers(remove_duplicate=False)):
        module = name.rpartition(".")[0]
        if module.startswith(layer_list + "."):
            index = int(module[len(layer_list) + 1 :].split(".")[0])
            device_map[f"{layer_list}.{index}"] = devices[index * len(devices) // n]
        else:
            device_map[module or name] = devices[0]
    return dispatch_model(hf, device_map=device_map)
