"""KV prefix cache: run a suffix on top of cached prefix positions, on either backend.

The bridge uses Hugging Face's own cache object (``DynamicCache``), whatever the wrapped
forward names its argument; HookedTransformer its ``HookedTransformerKeyValueCache``
(renamed between TransformerLens 3.x releases). Encoders never can: their prefix depends on
the tokens after it. :class:`~semhooks.backend.adapter.ModelAdapter` exposes these as
methods (``kv_cache_unsupported``, ``new_kv_cache``, ``forward_on_cache``...).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from semhooks.backend.hooks import HookFn, StopForward

if TYPE_CHECKING:  # pragma: no cover
    from semhooks.backend.adapter import ModelAdapter

__all__ = [
    "copy_kv_cache",
    "forward_on_cache",
    "hf_cache_kwarg",
    "hf_config",
    "kv_attention_modules",
    "kv_cache_length",
    "kv_cache_unsupported",
    "new_kv_cache",
    "tl_kv_cache_class",
]


def tl_kv_cache_class() -> Any:
    """HookedTransformer's KV cache class (renamed between TransformerLens 3.x releases)."""
    for module, cls in (
        ("transformer_lens.cache.key_value_cache", "TransformerLensKeyValueCache"),
        ("transformer_lens.past_key_value_caching", "HookedTransformerKeyValueCache"),
    ):
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            continue
    return None


def hf_config(model: Any) -> Any:
    """The config of the Hugging Face model a bridge wraps (``None`` when it wraps none)."""
    return getattr(getattr(model, "original_model", None), "config", None)


def hf_cache_kwarg(model: Any) -> str | None:
    """The name the wrapped Hugging Face forward gives its KV cache argument.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name is deprecated
    until 5.40), while TransformerLens 4.3's attention bridges still read
    ``past_key_values``; :func:`forward_on_cache` bridges the two.
    """
    hf = getattr(model, "original_model", None)
    try:
        params = inspect.signature(hf.forward).parameters  # type: ignore[union-attr]
    except (TypeError, ValueError, AttributeError):
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def kv_attention_modules(model: Any) -> list[Any]:
    """The bridge's attention components (those that update a KV cache)."""
    return [m for m in model.modules() if hasattr(m, "_update_kv_cache")]


def kv_cache_unsupported(adapter: ModelAdapter) -> str | None:
    """Why ``adapter``'s model cannot run a suffix on top of a cached prefix (None: it can)."""
    if adapter.is_encoder:
        return f"{adapter.name} is an encoder: its prefix states depend on later tokens"
    if adapter.backend == "hooked":
        if tl_kv_cache_class() is None:  # pragma: no cover - every TL 3.x has one
            return "this TransformerLens has no HookedTransformer KV cache class"
        return None
    if hf_config(adapter.model) is None:
        return f"{adapter.name}: this bridge wraps no Hugging Face model with a config"
    if adapter.hf_cache_kwarg is None:
        return (
            f"{adapter.name}: its Hugging Face forward takes neither `cache` nor `past_key_values`"
        )
    return None


def new_kv_cache(adapter: ModelAdapter) -> Any:
    """An empty KV cache for one row, in the backend's own cache type."""
    reason = kv_cache_unsupported(adapter)
    if reason is not None:
        raise ValueError(f"no KV prefix cache: {reason}")
    if adapter.backend == "hooked":
        return tl_kv_cache_class().init_cache(adapter.model.cfg, adapter.device, 1)
    from transformers import DynamicCache

    return DynamicCache(config=hf_config(adapter.model))


def kv_cache_length(cache: Any) -> int:
    """Positions held by a cache from :func:`new_kv_cache`."""
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    entries = getattr(cache, "entries", None)
    if entries:
        return int(entries[0].past_keys.shape[1])
    return 0


def copy_kv_cache(cache: Any) -> Any:
    """An independent copy of a cache (running on a cache extends it in place)."""
    return copy.deepcopy(cache)


@contextlib.contextmanager
def _cache_kwarg_shim(adapter: ModelAdapter) -> Iterator[None]:
    """Hand a ``cache=`` argument to bridge attention components that read
    ``past_key_values`` (TransformerLens 4.3 under transformers >= 5.24); a no-op when the
    names agree. Pre-hooks live only for the duration of the block."""
    if adapter.backend != "bridge" or adapter.hf_cache_kwarg != "cache":
        yield
        return

    def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs

    handles = [
        m.register_forward_pre_hook(pre, with_kwargs=True) for m in adapter.kv_attention_modules
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def forward_on_cache(
    adapter: ModelAdapter,
    input_ids: Int[Tensor, "1 pos"],
    cache: Any,
    fwd_hooks: list[tuple[str, HookFn]] | None = None,
) -> Tensor | None:
    """Run ``input_ids`` (one row, no padding) after the positions held in ``cache``, which
    is extended in place (copy it first to reuse a prefix). Autograd follows the caller's
    grad mode. Returns the logits, or None when a hook raised StopForward."""
    ids = input_ids.to(adapter.device)
    past = kv_cache_length(cache)
    model = adapter.model
    try:
        with _cache_kwarg_shim(adapter), adapter.hooks(fwd_hooks or []):
            if adapter.backend == "hooked":
                # HookedTransformer appends the new tokens' mask to the one it keeps.
                return model(ids, attention_mask=torch.ones_like(ids), past_kv_cache=cache)  # type: ignore[no-any-return]
            mask = torch.ones(ids.shape[0], past + ids.shape[1], dtype=torch.long)
            kwarg = adapter.hf_cache_kwarg
            assert kwarg is not None
            return model(  # type: ignore[no-any-return]
                ids, attention_mask=mask.to(adapter.device), use_cache=True, **{kwarg: cache}
            )
    except StopForward:
        return None
