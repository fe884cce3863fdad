"""Per-architecture ``HookedTransformerConfig`` fields read off a Hugging Face config.

TransformerLens 3.x's ``HookedTransformer.from_pretrained`` finds a model's config by name
(its registry, partly hard-coded per checkpoint for Gemma and OLMo) and downloads it.
:func:`semhooks.backend.hooked.hooked_transformer_from_hf` needs the same fields for a model
already in memory, so this module maps a Hugging Face config (keyed by its own
``config.model_type``, never by a checkpoint name) to the architecture-specific
``HookedTransformerConfig`` fields and names the TransformerLens weight conversion
(``transformer_lens.pretrained.weight_conversions.convert_*_weights``) that matches them.

Each mapping reproduces what the Hugging Face model computes (checked per architecture by
``tests/test_conformance.py``: hidden states and logits equal the Hugging Face model's).
Architectures TransformerLens 3.x has no ``HookedTransformer`` for are refused with the
reason (:data:`UNSUPPORTED`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HOOKED_ARCHS",
    "UNSUPPORTED",
    "HookedArch",
    "hooked_arch",
    "refusal",
    "rope_settings",
]


@dataclass(frozen=True)
class HookedArch:
    """One architecture TransformerLens 3.x runs as a ``HookedTransformer``.

    ``hf_class``: the Hugging Face class (``cfg.original_architecture``; TransformerLens
    switches some behaviour on it). ``converter``: the name of TransformerLens' weight
    conversion in ``transformer_lens.pretrained.weight_conversions``. ``fields(config)``:
    the architecture-specific ``HookedTransformerConfig`` fields.
    """

    hf_class: str
    converter: str
    fields: Callable[[Any], dict[str, Any]]


#: Hugging Face ``model_type`` -> why TransformerLens 3.x builds no HookedTransformer for it.
UNSUPPORTED: dict[str, str] = {
    "qwen2_moe": "TransformerLens 3.x has no HookedTransformer conversion for Qwen2-MoE "
    "(shared expert)",
    "bert": "TransformerLens 3.x runs BERT as HookedEncoder, not HookedTransformer (semhooks' "
    "hooked backend adapts HookedTransformer)",
    "roberta": "TransformerLens 3.x has no HookedTransformer (nor HookedEncoder) conversion "
    "for RoBERTa",
}


# ---------------------------------------------------------------------- shared pieces
def _get(c: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` that ``c`` has and is not None."""
    for name in names:
        value = getattr(c, name, None)
        if value is not None:
            return value
    return default


def _rope_params(c: Any) -> dict[str, Any]:
    """Rotary fields from either config layout: transformers < 5 keeps ``rope_theta`` and
    ``rope_scaling`` at the top level, transformers 5 moves both into ``rope_parameters``
    (per layer type for Gemma 3: ``{"full_attention": {...}, "sliding_attention": {...}}``)."""
    params = getattr(c, "rope_parameters", None)
    params = dict(params) if isinstance(params, dict) else {}
    if "full_attention" in params and isinstance(params["full_attention"], dict):
        params = dict(params["full_attention"])
    scaling = getattr(c, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
    return params


def rope_settings(c: Any) -> dict[str, Any]:
    """Rotary base and scaling fields for HookedTransformerConfig (default and llama3 rope).

    Raises:
        NotImplementedError: another rotary scaling type (yarn, linear, dynamic...).
    """
    params = _rope_params(c)
    theta = getattr(c, "rope_theta", None)
    if theta is None:
        theta = params.get("rope_theta", 10000.0)
    out: dict[str, Any] = {"rotary_base": float(theta)}
    rope_type = str(params.get("rope_type") or params.get("type") or "default").lower()
    if rope_type == "llama3":
        out.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=int(
                params.get("original_max_position_embeddings", c.max_position_embeddings)
            ),
            NTK_by_parts_low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            NTK_by_parts_high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            NTK_by_parts_factor=float(params.get("factor", 8.0)),
        )
    elif rope_type != "default":
        raise NotImplementedError(
            f"rope_type {rope_type!r} in {type(c).__name__} (model_type="
            f"{getattr(c, 'model_type', None)!r}) is not supported by hooked_transformer_from_hf "
            "(only 'default' and 'llama3'); use the TransformerBridge backend for this model"
        )
    return out


def _partial_rotary(c: Any) -> float:
    params = _rope_params(c)
    return float(
        _get(c, "rotary_pct", "partial_rotary_factor", default=None)
        or params.get("partial_rotary_factor", 1.0)
    )


def _heads(c: Any, always_group: bool = False) -> dict[str, Any]:
    """Head counts of a Llama-style config. TransformerLens groups queries whenever
    ``n_key_value_heads`` is not None: it is left None for as many KV heads as query heads,
    unless the architecture's weight conversion needs it (``always_group``)."""
    n_heads = int(c.num_attention_heads)
    d_head = int(_get(c, "head_dim", default=0) or c.hidden_size // n_heads)
    n_kv = int(_get(c, "num_key_value_heads", default=n_heads))
    if n_heads % n_kv:
        raise ValueError(
            f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}"
        )
    return {
        "d_model": int(c.hidden_size),
        "n_heads": n_heads,
        "d_head": d_head,
        "n_key_value_heads": n_kv if always_group or n_kv != n_heads else None,
    }


def refusal(model_type: Any, why: str) -> ValueError:
    """The error for a config TransformerLens 3.x cannot run as a HookedTransformer."""
    return ValueError(
        f"hooked_transformer_from_hf cannot build model_type={model_type!r}: {why}. Supported "
        f"model types: {', '.join(sorted(HOOKED_ARCHS))}; use the TransformerBridge backend "
        "(semhooks.load_model(..., backend='bridge')) for this model"
    )


def _no_bias(c: Any) -> None:
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise refusal(
            c.model_type,
            "this config has attention_bias/mlp_bias=True, which TransformerLens' weight "
            "conversion for it drops",
        )


def _act(c: Any, allowed: tuple[str, ...], *names: str) -> str:
    act = str(_get(c, *names, default=allowed[0]))
    if act not in allowed:
        raise ValueError(
            f"expected {' or '.join(map(repr, allowed))} as the activation of a "
            f"{getattr(c, 'model_type', '?')} model, got {act!r}"
        )
    return "silu" if act == "swish" else act


def _rms_gated(c: Any, always_group: bool = False) -> dict[str, Any]:
    """Pre-RMSNorm decoder with a gated MLP and rotary on whole heads (Llama's layout)."""
    heads = _heads(c, always_group)
    return {
        **heads,
        "d_mlp": int(c.intermediate_size),
        "eps": float(_get(c, "rms_norm_eps", default=1e-6)),
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "positional_embedding_type": "rotary",
        "rotary_dim": heads["d_head"],
        "rotary_adjacent_pairs": False,  # HF rotates halves, not adjacent pairs
        **rope_settings(c),
    }


def _window(c: Any, layer_types: list[str] | None = None) -> dict[str, Any]:
    """Sliding-window attention: every layer (Mistral-style) or per ``layer_types``."""
    window = getattr(c, "sliding_window", None)
    types = layer_types if layer_types is not None else getattr(c, "layer_types", None)
    if not window:
        return {}
    if types:
        attn_types = ["local" if t == "sliding_attention" else "global" for t in types]
    else:
        attn_types = ["local"] * int(c.num_hidden_layers)
    if "local" not in attn_types:
        return {}
    return {"use_local_attn": True, "window_size": int(window), "attn_types": attn_types}


def _silu_gated(c: Any, always_group: bool = False) -> dict[str, Any]:
    """:func:`_rms_gated` with Llama's SiLU activation (``hidden_act``)."""
    return {**_rms_gated(c, always_group), "act_fn": _act(c, ("silu", "swish"), "hidden_act")}


# ---------------------------------------------------------------------- per architecture
def _llama(c: Any, always_group: bool = False) -> dict[str, Any]:
    _no_bias(c)
    return _silu_gated(c, always_group)


def _mistral(c: Any) -> dict[str, Any]:
    return {**_llama(c, always_group=True), **_window(c)}


def _mixtral(c: Any) -> dict[str, Any]:
    return {
        **_mistral(c),
        "num_experts": int(c.num_local_experts),
        "experts_per_token": int(c.num_experts_per_tok),
        # Mixtral's router renormalises its top-k weights unconditionally.
        "norm_topk_prob": True,
    }


def _qwen2(c: Any) -> dict[str, Any]:
    # QKV biases: convert_qwen2_weights carries them.
    return {
        **_silu_gated(c, always_group=c.model_type == "qwen2"),
        **(_window(c) if getattr(c, "use_sliding_window", False) else {}),
    }


def _qwen3(c: Any) -> dict[str, Any]:
    _no_bias(c)
    return {
        **_qwen2(c),
        "use_qk_norm": True,  # per-head RMSNorm of queries and keys
    }


def _phi3(c: Any) -> dict[str, Any]:
    if _partial_rotary(c) != 1.0:
        raise refusal(c.model_type, "partial rotary, which TransformerLens' Phi-3 lacks")
    return {**_llama(c), **_window(c)}


def _gemma(c: Any) -> dict[str, Any]:
    out = {
        **_rms_gated(c, always_group=True),
        "act_fn": _act(c, ("gelu_pytorch_tanh", "gelu"), "hidden_activation", "hidden_act"),
    }
    scalar = getattr(c, "query_pre_attn_scalar", None)
    if scalar is not None and int(scalar) != out["d_head"]:
        out["attn_scale"] = math.sqrt(float(scalar))
    return out


def _gemma2(c: Any) -> dict[str, Any]:
    out = {**_gemma(c), "use_normalization_before_and_after": True}
    types = getattr(c, "layer_types", None) or [
        "sliding_attention" if i % 2 == 0 else "full_attention"
        for i in range(int(c.num_hidden_layers))
    ]
    out.update(_window(c, list(types)))
    if getattr(c, "attn_logit_softcapping", None):
        out["attn_scores_soft_cap"] = float(c.attn_logit_softcapping)
    if getattr(c, "final_logit_softcapping", None):
        out["output_logits_soft_cap"] = float(c.final_logit_softcapping)
    return out


def _gemma3(c: Any) -> dict[str, Any]:
    out = {**_gemma2(c), "use_qk_norm": True}
    params = getattr(c, "rope_parameters", None)
    local = None
    if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
        local = params["sliding_attention"].get("rope_theta")
    local = _get(c, "rope_local_base_freq", default=local)
    if local is not None:
        out["rotary_base_local"] = float(local)
    return out


def _olmo(c: Any) -> dict[str, Any]:
    _no_bias(c)
    if _heads(c)["n_key_value_heads"] is not None:
        raise refusal(
            c.model_type,
            "grouped KV heads (num_key_value_heads < num_attention_heads), which "
            "TransformerLens' OLMo conversion lacks (OLMo-1 checkpoints have none)",
        )
    return {
        **_silu_gated(c),
        # OLMo-1's LayerNorm has no parameters: convert_olmo_weights writes ones and zeros.
        "normalization_type": "LN",
        "final_rms": False,
        "eps": 1e-5,
        "clip_qkv": getattr(c, "clip_qkv", None),
    }


def _olmoe(c: Any) -> dict[str, Any]:
    return {
        **_llama(c, always_group=True),
        "num_experts": int(c.num_experts),
        "experts_per_token": int(c.num_experts_per_tok),
        "norm_topk_prob": bool(getattr(c, "norm_topk_prob", False)),
        "clip_qkv": getattr(c, "clip_qkv", None),
    }


def _layer_norm(d_model: int, n_heads: int, eps: float, act: str) -> dict[str, Any]:
    """Pre-LayerNorm decoder fields (GPT-2 style)."""
    return {
        "d_model": d_model,
        "n_heads": n_heads,
        "d_head": d_model // n_heads,
        "eps": float(eps),
        "act_fn": act,
        "normalization_type": "LN",
    }


def _gpt2(c: Any) -> dict[str, Any]:
    if getattr(c, "add_cross_attention", False):
        raise refusal(c.model_type, "cross-attention, which HookedTransformer lacks")
    return {
        **_layer_norm(c.n_embd, c.n_head, c.layer_norm_epsilon, c.activation_function),
        "d_mlp": int(_get(c, "n_inner", default=4 * c.n_embd)),
        "positional_embedding_type": "standard",
        "use_attn_scale": bool(getattr(c, "scale_attn_weights", True)),
        "scale_attn_by_inverse_layer_idx": bool(c.scale_attn_by_inverse_layer_idx),
    }


def _neox(c: Any) -> dict[str, Any]:
    out = _layer_norm(c.hidden_size, c.num_attention_heads, c.layer_norm_eps, c.hidden_act)
    return {
        **out,
        "d_mlp": int(c.intermediate_size),
        "parallel_attn_mlp": bool(getattr(c, "use_parallel_residual", True)),
        "positional_embedding_type": "rotary",
        "rotary_dim": round(_partial_rotary(c) * out["d_head"]),
        "rotary_adjacent_pairs": False,
        **rope_settings(c),
    }


def _gptj(c: Any) -> dict[str, Any]:
    out = _layer_norm(c.n_embd, c.n_head, c.layer_norm_epsilon, c.activation_function)
    return {
        **out,
        "d_mlp": int(_get(c, "n_inner", default=4 * c.n_embd)),
        "parallel_attn_mlp": True,
        "positional_embedding_type": "rotary",
        "rotary_dim": int(_get(c, "rotary_dim", default=out["d_head"])),
        "rotary_adjacent_pairs": True,  # GPT-J rotates interleaved pairs
    }


def _opt(c: Any) -> dict[str, Any]:
    if not getattr(c, "do_layer_norm_before", True) or (
        getattr(c, "word_embed_proj_dim", c.hidden_size) != c.hidden_size
    ):
        raise refusal(
            c.model_type,
            "post-LN blocks (do_layer_norm_before=False, OPT-350m) or an embedding projection "
            "(word_embed_proj_dim != hidden_size), which TransformerLens' OPT conversion lacks",
        )
    return {
        **_layer_norm(c.hidden_size, c.num_attention_heads, 1e-5, c.activation_function),
        "d_mlp": int(c.ffn_dim),
        "positional_embedding_type": "standard",
    }


def _bloom(c: Any) -> dict[str, Any]:
    return {
        **_layer_norm(c.hidden_size, c.n_head, c.layer_norm_epsilon, "gelu_fast"),
        "d_mlp": 4 * int(c.hidden_size),
        "post_embedding_ln": True,
        "positional_embedding_type": "alibi",
    }


#: Hugging Face ``model_type`` -> how TransformerLens 3.x builds it.
HOOKED_ARCHS: dict[str, HookedArch] = {
    "llama": HookedArch("LlamaForCausalLM", "convert_llama_weights", _llama),
    "mistral": HookedArch("MistralForCausalLM", "convert_mistral_weights", _mistral),
    "mixtral": HookedArch("MixtralForCausalLM", "convert_mixtral_weights", _mixtral),
    "qwen2": HookedArch("Qwen2ForCausalLM", "convert_qwen2_weights", _qwen2),
    "qwen3": HookedArch("Qwen3ForCausalLM", "convert_qwen3_weights", _qwen3),
    "phi3": HookedArch("Phi3ForCausalLM", "convert_phi3_weights", _phi3),
    "gemma": HookedArch("GemmaForCausalLM", "convert_gemma_weights", _gemma),
    "gemma2": HookedArch("Gemma2ForCausalLM", "convert_gemma_weights", _gemma2),
    "gemma3_text": HookedArch("Gemma3ForCausalLM", "convert_gemma_weights", _gemma3),
    "olmo": HookedArch("OlmoForCausalLM", "convert_olmo_weights", _olmo),
    "olmoe": HookedArch("OlmoeForCausalLM", "convert_olmoe_weights", _olmoe),
    "gpt2": HookedArch("GPT2LMHeadModel", "convert_gpt2_weights", _gpt2),
    "gpt_neox": HookedArch("GPTNeoXForCausalLM", "convert_neox_weights", _neox),
    "gptj": HookedArch("GPTJForCausalLM", "convert_gptj_weights", _gptj),
    "opt": HookedArch("OPTForCausalLM", "convert_opt_weights", _opt),
    "bloom": HookedArch("BloomForCausalLM", "convert_bloom_weights", _bloom),
}


def hooked_arch(hf_config: Any) -> HookedArch:
    """The :class:`HookedArch` for a Hugging Face config, or a ``ValueError`` saying why not."""
    model_type = getattr(hf_config, "model_type", None)
    arch = HOOKED_ARCHS.get(str(model_type))
    if arch is not None:
        return arch
    why = UNSUPPORTED.get(str(model_type), "TransformerLens 3.x has no HookedTransformer for it")
    raise refusal(model_type, why)
