"""The SAELens folder layout: ``cfg.json`` plus ``sae_weights.safetensors``.

A SAELens SAE folder holds a JSON configuration and a safetensors file (no pickle). The
configuration comes in two generations: the older flat one (``hook_name``, ``hook_layer``,
``model_name``, ``activation_fn_str``/``activation_fn_kwargs`` at the top level) and SAELens 6's,
which moves provenance under ``metadata`` and writes ``k`` at the top level for top-k SAEs.
:func:`parse_config` reads both into one :class:`SAEConfig` and refuses, naming the field,
anything that would change the computation and that semhooks does not implement (an unknown
architecture, a normalisation mode, per-head hooks, a fine-tuning scale) and any field it does
not recognise at all (``strict=False`` lets unknown *provenance-only* fields through).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")

# The tensors each architecture reads from sae_weights.safetensors (W_enc [d_in, d_sae],
# W_dec [d_sae, d_in], b_dec [d_in], the rest [d_sae]).
WEIGHTS: dict[str, tuple[str, ...]] = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
}

# Fields that only describe where the SAE came from or how it was trained: read, kept in
# ``SAEConfig.metadata``, never used in encode/decode.
PROVENANCE_FIELDS = frozenset(
    {
        "model_name",
        "hook_layer",
        "hook_name",
        "context_size",
        "prepend_bos",
        "dataset_path",
        "dataset_trust_remote_code",
        "model_from_pretrained_kwargs",
        "model_class_name",
        "seqpos_slice",
        "exclude_special_tokens",
        "sae_lens_version",
        "sae_lens_training_version",
        "neuronpedia_id",
        "device",
        "dtype",
        "training_tokens",
        "l1_coefficient",
        "lp_norm",
        "lr",
        "train_batch_size_tokens",
        "store_batch_size_prompts",
        "n_batches_in_buffer",
        "normalize_sae_decoder",
        "noise_scale",
        "decoder_orthogonal_init",
        "decoder_heuristic_init",
        "init_encoder_as_decoder_transpose",
        "mse_loss_normalization",
        "use_ghost_grads",
        "d_sae_multiplier",
        "expansion_factor",
        "semhooks",  # semhooks' own provenance block (SAETrainer)
    }
)

# Fields that change the computation; parsed below.
COMPUTE_FIELDS = frozenset(
    {
        "architecture",
        "d_in",
        "d_sae",
        "k",
        "activation_fn",
        "activation_fn_str",
        "activation_fn_kwargs",
        "apply_b_dec_to_input",
        "normalize_activations",
        "hook_head_index",
        "reshape_activations",
        "finetuning_scaling_factor",
        "rescale_acts_by_decoder_norm",
        "metadata",
    }
)

NO_NORMALIZATION = (None, "none", "None")
ACTIVATIONS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}


class SAEConfigError(ValueError):
    """A ``cfg.json`` semhooks cannot read faithfully; the message names the field."""


@dataclass
class SAEConfig:
    """What encode/decode need from a SAELens ``cfg.json``, plus its provenance.

    ``hook_name`` is the TransformerLens hook the SAE reads (``blocks.6.hook_resid_post``);
    ``metadata`` holds every provenance field as written.
    """

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    apply_b_dec_to_input: bool = True
    hook_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A SAELens-style ``cfg.json`` (both generations' hook fields, so either reads it)."""
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "hook_name": self.hook_name,
            "dtype": "float32",
            "device": "cpu",
        }
        if self.architecture == "topk":
            out["k"] = self.k
            out["activation_fn"] = "topk"
            out["activation_fn_kwargs"] = {"k": self.k}
        meta = {k: v for k, v in self.metadata.items() if k not in out}
        return {**out, **meta}


def _int_field(cfg: Mapping[str, Any], name: str) -> int:
    value = cfg.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SAEConfigError(f"cfg.json field {name!r} must be a positive integer; got {value!r}")
    return value


def _architecture(cfg: Mapping[str, Any]) -> str:
    arch = cfg.get("architecture")
    act = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    if arch is None:
        arch = ACTIVATIONS.get(str(act), "standard") if act is not None else "standard"
    if arch not in ARCHITECTURES:
        raise SAEConfigError(
            f"cfg.json field 'architecture' is {arch!r}; semhooks implements {ARCHITECTURES}"
        )
    if arch == "standard" and act == "topk":
        arch = "topk"  # the older layout: architecture 'standard' with a top-k activation
    if act is not None and act not in ("relu", "topk", "jumprelu"):
        name = "activation_fn" if "activation_fn" in cfg else "activation_fn_str"
        raise SAEConfigError(
            f"cfg.json field {name!r} is {act!r}; semhooks implements 'relu', 'topk' and "
            "'jumprelu' (tanh-relu and others are not implemented)"
        )
    if act == "topk" and arch != "topk":
        raise SAEConfigError(
            f"cfg.json says architecture {arch!r} with activation_fn 'topk'; only the 'standard' "
            "and 'topk' architectures take a top-k activation"
        )
    return str(arch)


def parse_config(cfg: Mapping[str, Any], *, strict: bool = True) -> SAEConfig:
    """Read a SAELens ``cfg.json`` dict (either generation) into an :class:`SAEConfig`.

    Raises :class:`SAEConfigError` naming the field for anything unsupported: an unknown
    ``architecture``/``activation_fn``, ``normalize_activations`` other than ``"none"``, a
    ``hook_head_index``, ``reshape_activations`` other than ``"none"``, a true
    ``finetuning_scaling_factor`` or ``rescale_acts_by_decoder_norm``, a missing or bad
    ``d_in``/``d_sae``/``k``, and (``strict``) any field that is neither computational nor
    known provenance.
    """
    if not isinstance(cfg, Mapping):
        raise SAEConfigError(f"cfg.json must hold a JSON object; got {type(cfg).__name__}")
    meta_block = cfg.get("metadata") or {}
    if not isinstance(meta_block, Mapping):
        raise SAEConfigError(f"cfg.json field 'metadata' must be an object; got {meta_block!r}")
    unknown = sorted(set(cfg) - COMPUTE_FIELDS - PROVENANCE_FIELDS)
    if unknown and strict:
        raise SAEConfigError(
            f"cfg.json has fields semhooks does not understand: {unknown}. If they only "
            "describe provenance, load with strict=False; if they change encode/decode, "
            "this SAE cannot be read faithfully"
        )
    arch = _architecture(cfg)
    d_in, d_sae = _int_field(cfg, "d_in"), _int_field(cfg, "d_sae")
    norm = cfg.get("normalize_activations", "none")
    if norm not in NO_NORMALIZATION:
        raise SAEConfigError(
            f"cfg.json field 'normalize_activations' is {norm!r}; semhooks implements only "
            "'none' (normalise the activations yourself and fold the factor into the weights)"
        )
    if cfg.get("hook_head_index") is not None:
        raise SAEConfigError(
            f"cfg.json field 'hook_head_index' is {cfg['hook_head_index']!r}; per-head SAEs "
            "are not implemented (semhooks SAEs read a [batch, pos, d_in] hook)"
        )
    if cfg.get("reshape_activations", "none") not in NO_NORMALIZATION:
        raise SAEConfigError(
            f"cfg.json field 'reshape_activations' is {cfg['reshape_activations']!r}; only "
            "'none' is implemented"
        )
    for flag in ("finetuning_scaling_factor", "rescale_acts_by_decoder_norm"):
        if cfg.get(flag):
            raise SAEConfigError(f"cfg.json field {flag!r} is true; semhooks does not implement it")
    k = None
    if arch == "topk":
        kwargs = cfg.get("activation_fn_kwargs") or {}
        k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, Mapping) else None)
        k = _int_field({"k": k}, "k")
        if k > d_sae:
            raise SAEConfigError(f"cfg.json field 'k' is {k} but d_sae is {d_sae}")
    apply = cfg.get("apply_b_dec_to_input", True)
    if not isinstance(apply, bool):
        raise SAEConfigError(
            f"cfg.json field 'apply_b_dec_to_input' must be true or false; got {apply!r}"
        )
    metadata = {k2: v for k2, v in cfg.items() if k2 not in COMPUTE_FIELDS}
    metadata.update({k2: v for k2, v in meta_block.items() if k2 not in metadata})
    hook_name = metadata.get("hook_name")
    return SAEConfig(arch, d_in, d_sae, k, apply, hook_name, metadata)


def replace_hook(config: SAEConfig, hook_name: str | None) -> SAEConfig:
    """A copy with another hook name (also in the metadata)."""
    meta = dict(config.metadata)
    if hook_name is not None:
        meta["hook_name"] = hook_name
    return dataclasses.replace(config, hook_name=hook_name, metadata=meta)
