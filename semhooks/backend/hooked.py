"""Build a TransformerLens 3.x ``HookedTransformer`` from a Hugging Face model in hand.

semhooks' primary backend is TransformerLens 4.x ``TransformerBridge``. TransformerLens 3.x
ships ``HookedTransformer`` (removed in 4.x), whose ``from_pretrained`` only accepts model
names from its own registry and re-loads tokenizers by name. This module builds one from an
already-loaded Hugging Face model and tokenizer, offline, for every architecture
TransformerLens 3.x runs as a ``HookedTransformer`` (Llama, Mistral, Mixtral, Qwen2/3,
Phi-3, Gemma 1/2/3, OLMo, OLMoE, GPT-2, GPT-NeoX, GPT-J, OPT, BLOOM: see
:mod:`semhooks.backend.hooked_configs`): a ``HookedTransformerConfig`` read off
``hf_model.config`` (by its ``model_type``, never by a checkpoint name), TransformerLens' own
weight conversion for the architecture
(``transformer_lens.pretrained.weight_conversions.convert_*_weights``), and
``HookedTransformer.load_and_process_state_dict``. Other architectures are refused with the
reason.

No weight processing by default
-------------------------------
``HookedTransformer.from_pretrained`` folds the RMSNorm gains into the next linear layers,
centres the writing weights and centres the unembedding (``center_unembed`` subtracts the
mean over the vocabulary from every column of ``W_U``). Those keep log-probabilities but
change the residual stream (``fold_ln``/``center_writing_weights``) and ``W_U`` itself, so
every pseudo-inverse, vocabulary basis and logit-lens reading in semhooks would differ from
the Hugging Face model's. :func:`hooked_transformer_from_hf` therefore applies **no**
processing by default: ``blocks.{l}.hook_resid_post`` equals Hugging Face's
``hidden_states[l + 1]`` (up to float rounding) and ``unembed.W_U`` is ``lm_head.weight.T``.
Turn a flag on only if you want TransformerLens' processed basis, and record it: semhooks
remembers the flag beside the model (``semhooks.adapt(model).weights_processed``) for
provenance.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any, Literal

import torch

from semhooks.backend.hooked_configs import hooked_arch

if TYPE_CHECKING:  # pragma: no cover - import only for type checkers
    from transformer_lens import HookedTransformer, HookedTransformerConfig

__all__ = [
    "hooked_config_from_hf",
    "hooked_transformer_available",
    "hooked_transformer_from_hf",
    "is_hooked_transformer",
]

#: Context length used when the caller gives none. HookedTransformer allocates a
#: ``[n_ctx, n_ctx]`` causal mask per layer and ``[n_ctx, d_head]`` rotary tables, so a
#: model's full window (8192 for SmolLM2) would cost ~2 GB of masks for no use in analysis.
DEFAULT_MAX_N_CTX = 2048

_INSTALL_HINT = (
    "HookedTransformer was removed in TransformerLens 4.x. From a semhooks checkout, `make tl3` "
    "builds a separate environment .venv-tl3 with TransformerLens 3.x (scripts/setup_tl3.sh); "
    "run your code with .venv-tl3/bin/python. Elsewhere: pip install 'transformer-lens>=3.9,<4' "
    "(needs transformers>=5.9). Or use the default TransformerBridge backend "
    "(semhooks.load_model(..., backend='bridge'))."
)


def _installed_transformer_lens_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformer-lens")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "unknown"


def hooked_transformer_available() -> bool:
    """Whether the installed TransformerLens provides ``HookedTransformer`` (3.x does, 4.x not).

    Imports ``transformer_lens`` (slow the first time) but never raises.
    """
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def _import_hooked() -> tuple[Any, Any]:
    """Return ``(HookedTransformer, HookedTransformerConfig)`` or raise ``ImportError``."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:
        raise ImportError(
            f"transformer_lens {_installed_transformer_lens_version()} has no HookedTransformer. "
            + _INSTALL_HINT
        ) from err
    return HookedTransformer, HookedTransformerConfig


def _weight_converter(name: str) -> Any:
    """TransformerLens' ``convert_*_weights`` function called ``name`` (3.x layout, or the
    per-architecture modules of 2.x)."""
    import importlib

    for module in (
        "transformer_lens.pretrained.weight_conversions",
        f"transformer_lens.pretrained.weight_conversions.{name[len('convert_') : -len('_weights')]}",
    ):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(
        f"transformer_lens {_installed_transformer_lens_version()} has HookedTransformer but no "
        f"{name}; install transformer-lens 3.x (>=3.9,<4)"
    )


def is_hooked_transformer(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``HookedTransformer`` (or a subclass).

    Decided from the class hierarchy's names and modules, so it never imports
    ``HookedTransformer`` and works (returning ``False`` for a bridge) under TransformerLens 4.x.
    """
    for cls in type(model).__mro__:
        if cls.__name__ == "HookedTransformer" and cls.__module__.startswith("transformer_lens"):
            return True
    return False


# --------------------------------------------------------------------------- config


def hooked_config_from_hf(
    hf_config: Any,
    *,
    n_ctx: int | None = None,
    default_prepend_bos: bool = True,
    fold_ln: bool = False,
    device: str | torch.device = "cpu",
    n_devices: int = 1,
    dtype: torch.dtype = torch.float32,
    model_name: str | None = None,
) -> HookedTransformerConfig:
    """A ``HookedTransformerConfig`` for a Hugging Face config (no network, no registry).

    The architecture-specific fields come from :mod:`semhooks.backend.hooked_configs`
    (keyed by ``hf_config.model_type``); this adds the shared ones.

    Args:
        hf_config: the Hugging Face model's config (a ``model_type`` in
            ``semhooks.backend.hooked_configs.HOOKED_ARCHS``).
        n_ctx: context window of the HookedTransformer; default
            ``min(max_position_embeddings, DEFAULT_MAX_N_CTX)``.
        default_prepend_bos: TransformerLens' convention (``True``): ``to_tokens`` and string
            inputs get the tokenizer's BOS prepended.
        fold_ln: whether the norms will be folded (the config then uses ``"LNPre"`` /
            ``"RMSPre"``).
        device, dtype: where and in which dtype the HookedTransformer's weights live.
        model_name: ``cfg.model_name``; default the config's ``_name_or_path`` basename.

    Raises:
        ValueError: an architecture TransformerLens 3.x does not run as a HookedTransformer
            (the message says why), or a variant its weight conversion would get wrong
            (biases it drops, another activation, inconsistent head sizes).
        NotImplementedError: a rotary scaling type other than default or llama3.
    """
    _, HookedTransformerConfig = _import_hooked()
    c = hf_config
    arch = hooked_arch(c)
    fields = arch.fields(c)
    max_pos = int(
        getattr(c, "max_position_embeddings", None)
        or getattr(c, "n_positions", None)
        or DEFAULT_MAX_N_CTX
    )
    if n_ctx is None:
        n_ctx = min(max_pos, DEFAULT_MAX_N_CTX)
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be positive, got {n_ctx}")
    if fields.get("positional_embedding_type") == "standard" and n_ctx > max_pos:
        raise ValueError(
            f"n_ctx={n_ctx} exceeds the {max_pos} learned positions of this {c.model_type} model"
        )
    if fold_ln and fields.get("normalization_type") in ("LN", "RMS"):
        fields["normalization_type"] += "Pre"
    default = str(getattr(c, "model_type", "") or "model")
    name = model_name or str(getattr(c, "_name_or_path", "") or default).rstrip("/")
    name = name.split("/")[-1] or default

    return HookedTransformerConfig(
        model_name=name,
        original_architecture=arch.hf_class,
        n_layers=int(getattr(c, "num_hidden_layers", None) or c.n_layer),
        d_vocab=int(c.vocab_size),
        d_vocab_out=int(c.vocab_size),
        n_ctx=int(n_ctx),
        **fields,
        default_prepend_bos=default_prepend_bos,
        init_weights=False,
        device=str(device),
        n_devices=n_devices,
        dtype=dtype,
    )


# --------------------------------------------------------------------------- model


def _attach_tokenizer(
    model: Any, tokenizer: Any, padding_side: Literal["left", "right"] | None
) -> None:
    """Give ``model`` the tokenizer as ``HookedTransformer.set_tokenizer`` would, without reload.

    ``set_tokenizer`` re-creates any tokenizer that does not add BOS itself with
    ``AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_bos_token=True)``. That fails
    for tokenizers built in memory (KeyError 'name_or_path'), re-reads or fails for GGUF
    tokenizers (the ``gguf_file`` is not in ``init_kwargs``), and goes to the Hub for names.
    Keeping the tokenizer as given is what TransformerLens itself falls back to: when the
    tokenizer does not prepend BOS, ``to_tokens`` prepends the BOS token's text.
    The caller's tokenizer is copied (not mutated) if a pad token or padding side must be set.
    """
    needs_pad = getattr(tokenizer, "pad_token", None) is None
    needs_side = padding_side is not None and tokenizer.padding_side != padding_side
    if needs_pad or needs_side:
        tokenizer = copy.deepcopy(tokenizer)
    if needs_side:
        tokenizer.padding_side = padding_side
    if tokenizer.padding_side is None:  # pragma: no cover - HF always sets one
        tokenizer.padding_side = "right"
    if needs_pad:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token; "
                "set tokenizer.pad_token before building the HookedTransformer"
            )
        tokenizer.pad_token = tokenizer.eos_token
    model.tokenizer = tokenizer
    model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0


def check_n_devices(n_devices: int, device: str | torch.device | None) -> None:
    """Refuse a split over more devices than there are (TransformerLens splits over CUDA)."""
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    if n_devices == 1:
        return
    if device is not None and not str(device).startswith("cuda"):
        raise ValueError(f"n_devices={n_devices} splits over CUDA devices, but device={device!r}")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < n_devices:
        raise ValueError(
            f"n_devices={n_devices} needs {n_devices} CUDA devices; this machine has {available}"
        )


def hooked_transformer_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    default_prepend_bos: bool = True,
    default_padding_side: Literal["left", "right"] | None = None,
    n_ctx: int | None = None,
    device: str | torch.device = "cpu",
    n_devices: int = 1,
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """A TransformerLens 3.x ``HookedTransformer`` with the weights of a HF model in hand.

    Nothing is downloaded and no model registry is consulted: the config is read off
    ``hf_model.config`` (see :func:`hooked_config_from_hf`) and the weights are converted with
    TransformerLens' own conversion for the architecture (``convert_llama_weights``,
    ``convert_gpt2_weights``, ...: ``W_Q: [n_heads, d_model, d_head]``,
    ``W_U = lm_head.weight.T: [d_model, d_vocab]``; tied embeddings become two copies).
    Every converted tensor must land on a parameter of the HookedTransformer and every
    parameter but zero-filled biases must be converted, else ``ValueError`` (TransformerLens
    itself would drop or fill them silently).

    With the defaults (no processing), for token ids ``x``::

        model(x, return_type="logits")             == hf_model(x).logits
        cache["blocks.{l}.hook_resid_post"]        == hf_model(x, output_hidden_states=True)
                                                        .hidden_states[l + 1]  (l < L - 1)
        cache["blocks.{L-1}.hook_resid_post"]      == the last decoder layer's output, before
                                                        the final norm (HF's hidden_states[L] is
                                                        after it)

    up to float32 rounding (``tests/test_hooked_backend.py`` for Llama,
    ``tests/test_conformance.py`` for every architecture).

    Args:
        hf_model: a loaded Hugging Face causal LM of an architecture in
            ``semhooks.backend.hooked_configs.HOOKED_ARCHS`` (float weights; dequantized GGUF
            is fine, bitsandbytes-quantized weights are refused).
        tokenizer: its Hugging Face tokenizer. Used as given (not re-loaded by name); copied
            if a pad token (set to eos) or a padding side has to be set.
        fold_ln, center_writing_weights, center_unembed, fold_value_biases: TransformerLens'
            weight processing, all off by default so that residual states and ``W_U`` equal
            Hugging Face's. ``center_unembed`` changes ``W_U`` and logits (not log-probs);
            ``fold_ln``/``center_writing_weights`` change the residual stream basis.
        default_prepend_bos: TransformerLens' ``cfg.default_prepend_bos`` (``True``, its
            convention for both backends): string inputs get BOS prepended.
        default_padding_side: padding side for ``to_tokens``; default the tokenizer's.
        n_ctx: context window; default ``min(max_position_embeddings, 2048)``.
        device, dtype: where and in which dtype the HookedTransformer lives.

    Returns:
        a ``HookedTransformer`` in eval mode; ``semhooks.adapt(model).weights_processed``
        says whether any weight processing was applied.

    Raises:
        ImportError: the installed TransformerLens has no ``HookedTransformer`` (4.x).
        ValueError: an architecture TransformerLens 3.x does not run as a HookedTransformer
            (the message names it and says why), quantized weights, weights the conversion
            does not account for, or an unusable tokenizer.
    """
    HookedTransformer, _ = _import_hooked()
    config = getattr(hf_model, "config", None)
    head = getattr(hf_model, "get_output_embeddings", lambda: None)()
    if config is None or head is None:
        raise ValueError(
            f"hf_model must be a Hugging Face causal LM with .config and an output embedding "
            f"(e.g. LlamaForCausalLM), got {type(hf_model).__name__}"
        )
    non_float = sorted(
        {str(p.dtype) for p in hf_model.parameters() if not torch.is_floating_point(p)}
    )
    if non_float:
        raise ValueError(
            f"hf_model has quantized (non-float) weights ({', '.join(non_float)}); load it "
            "dequantized (e.g. from_pretrained without a bitsandbytes quantization_config)"
        )
    check_n_devices(n_devices, device)
    arch = hooked_arch(config)
    cfg = hooked_config_from_hf(
        config,
        n_ctx=n_ctx,
        default_prepend_bos=default_prepend_bos,
        fold_ln=fold_ln,
        device=device,
        n_devices=n_devices,
        dtype=dtype,
    )
    convert = _weight_converter(arch.converter)

    with warnings.catch_warnings():
        # TL 3.x warns on every construction that HookedTransformer is deprecated in favour
        # of TransformerBridge; a caller of this function has chosen the 3.x backend.
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        model = HookedTransformer(cfg, tokenizer=None, move_to_device=True)
    _attach_tokenizer(model, tokenizer, default_padding_side)

    with torch.no_grad():
        state_dict = convert(hf_model, cfg)
        pos = state_dict.get("pos_embed.W_pos")
        if pos is not None and pos.shape[0] > cfg.n_ctx:  # learned positions beyond n_ctx
            state_dict["pos_embed.W_pos"] = pos[: cfg.n_ctx]
        _check_converted(model, state_dict, config.model_type, folded=fold_ln)
        # Detached copies in the target dtype/device: load_state_dict copies anyway, and the
        # HF parameters (and their autograd graph) must not be shared with the new model.
        state_dict = {
            k: v.detach().to(device=cfg.device, dtype=cfg.dtype) for k, v in state_dict.items()
        }
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=False,
        )
    model.eval()
    processed = fold_ln or center_writing_weights or center_unembed or fold_value_biases
    from semhooks.backend.state import model_state

    state = model_state(model)
    state.weights_processed = bool(processed)
    state.model_type = str(config.model_type)
    return model


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lstrip("_").startswith("b")


def _check_converted(
    model: Any, state_dict: dict[str, Any], model_type: str, *, folded: bool = False
) -> None:
    """Refuse a conversion that leaves a weight out or converts one the model lacks.

    ``load_and_process_state_dict`` loads key by key with ``strict=False`` (an unknown key
    is dropped) after filling missing keys from the fresh model (biases with zeros, other
    weights with whatever the uninitialised model holds): both would be silent errors.
    Allowed: a missing bias (TransformerLens fills zeros), an all-zero bias the model lacks
    (e.g. LayerNorm biases written for an RMSNorm model), the unused ``W_pos`` of a
    rotary or ALiBi model, and (``folded``) the norm weights that ``fold_ln`` folds into the
    next layers (kept for it).
    """
    params = dict(model.named_parameters())

    def folds(k: str) -> bool:
        return folded and k.rsplit(".", 2)[-2].startswith("ln") and k[-2:] in (".w", ".b")

    unexpected = sorted(
        k
        for k, v in state_dict.items()
        if k not in params
        and not folds(k)
        and not (_is_bias(k) and not bool(torch.count_nonzero(v)))
    )
    unused = set() if model.cfg.positional_embedding_type == "standard" else {"pos_embed.W_pos"}
    missing = sorted(
        k for k in params if k not in state_dict and not _is_bias(k) and k not in unused
    )
    if unexpected or missing:
        raise ValueError(
            f"TransformerLens' weight conversion for model_type={model_type!r} does not match "
            f"the HookedTransformer built for it: converted weights the model lacks "
            f"{unexpected[:4]}, weights not converted {missing[:4]}; use the TransformerBridge "
            "backend for this model"
        )
    for k in [k for k in state_dict if k not in params and not folds(k)]:
        del state_dict[k]
    for k in unused & set(params) - set(state_dict):  # zeros, not an uninitialised tensor
        state_dict[k] = torch.zeros_like(params[k])
