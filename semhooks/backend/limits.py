"""Per-architecture differences the backend must honour: what semhooks refuses by name
instead of returning a wrong number, and the bridge's post-unembedding transform.

Found by the conformance suite (``tests/test_conformance.py``, issue 16). Each refusal names
the model, its ``model_type`` and the feature, and says what to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# TransformerBridge defects semhooks cannot work around: model_type -> (dtypes, why).
BRIDGE_DTYPE_LIMITS: dict[str, tuple[frozenset[torch.dtype], str]] = {
    "olmo": (
        frozenset({torch.float16, torch.bfloat16}),
        "TransformerLens 4.3's bridge applies OLMo's float32 rotary tables without casting "
        "queries and keys back, so attention mixes dtypes and fails",
    ),
}
# Post-LN encoder blocks: the bridge's hook_attn_out is the attention sublayer after its
# LayerNorm and hook_resid_mid the pre-LN sum of the MLP sublayer, so neither means what the
# site names for a pre-LN decoder.
POST_LN_SITES = {"attn_out": "attention output", "resid_mid": "residual after attention"}


def check_site(adapter: Any, site: str, name: str, layer: int) -> None:
    """Raise ``ValueError`` when ``site`` (hook ``name``) does not exist or does not mean
    what it says on this model (``adapter``: a ModelAdapter)."""
    label = f"{adapter.name} ({adapter.model_type})"
    if adapter.is_encoder and site in POST_LN_SITES:
        raise ValueError(
            f"{label}, a post-LN encoder, has no site {site!r}: its bridge hook {name!r} is not "
            f"the {POST_LN_SITES[site]} (each sum goes through a LayerNorm); use resid_pre, "
            "resid_post or mlp_out"
        )
    hook_dict = getattr(adapter.model, "hook_dict", None)
    if hook_dict is not None and name not in hook_dict:
        why = " (parallel attention and MLP read one input)" if site == "resid_mid" else ""
        raise ValueError(f"{label} has no hook {name!r} (site {site!r}, layer {layer}){why}")


def check_dtype(adapter: Any) -> None:
    """Raise ``NotImplementedError`` for a dtype this architecture's bridge mishandles."""
    limit = BRIDGE_DTYPE_LIMITS.get(adapter.model_type)
    if adapter.backend == "bridge" and limit is not None and adapter.dtype in limit[0]:
        raise NotImplementedError(
            f"{adapter.name} ({adapter.model_type}) in {str(adapter.dtype).removeprefix('torch.')}"
            f": {limit[1]}; run this architecture in float32"
        )


def output_transform(model: Any, backend: str) -> Callable[[Tensor], Tensor] | None:
    """The post-unembedding transform of ``model`` (``backend``: ``"bridge"`` or
    ``"hooked"``), or ``None`` where it has none: Gemma 2's ``cap * tanh(logits / cap)`` (the
    bridge's own transform, or a HookedTransformer's ``cfg.output_logits_soft_cap``, which
    TransformerLens applies in ``forward`` after ``unembed``), Cohere's logit scale. Without
    it the readout of a soft-capped model is not its logits. Resolved once per model by
    :class:`~semhooks.backend.adapter.ModelAdapter`, not on every readout."""
    transform = getattr(getattr(model, "adapter", None), "apply_output_logits_transform", None)
    if callable(transform):
        return transform  # type: ignore[no-any-return]
    cap = getattr(getattr(model, "cfg", None), "output_logits_soft_cap", None)
    if backend == "hooked" and isinstance(cap, (int, float)) and cap > 0:
        return lambda logits: cap * torch.tanh(logits / cap)
    return None
