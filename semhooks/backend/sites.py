"""Sites and hook names: the one place that maps a semhooks site to a TransformerLens hook
name and parses a hook name back into ``(site, layer)``.

A site is a semhooks word for a point in the residual stream (``"resid_post"``...); the hook
name is TransformerLens' (``blocks.6.hook_resid_post``, built with TransformerLens'
``get_act_name``). TransformerLens 4.x's ``TransformerBridge`` accepts those names as
aliases but hands hooks its own canonical names (``blocks.6.hook_out``); :func:`parse_hook_name`
reads both styles, so an intervention or a guard called with either knows where it is.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

__all__ = [
    "ATTENTION_SITES",
    "SITES",
    "HookSite",
    "Site",
    "attention_hook_name",
    "hook_layer",
    "layers_in",
    "parse_hook_name",
    "site_hook_name",
]

Site = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "embed"]
SITES: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    # The embedding output as it enters block 0 (token + position embeddings).
    "embed": "blocks.0.hook_resid_pre",
}

#: Per-head attention hook points, by TransformerLens' short names: ``q``, ``k``, ``v`` and
#: ``z`` are ``[batch, pos, head, d_head]`` (``k``/``v``: key-value heads under grouped-query
#: attention), ``attn_scores`` (masked, before the softmax) and ``pattern`` (after it) are
#: ``[batch, head, query_pos, key_pos]``. TransformerBridge accepts the same names as aliases.
ATTENTION_SITES = ("q", "k", "v", "z", "attn_scores", "pattern")

# TransformerBridge's canonical names for the same points (TransformerLens 4.x): the block's
# input and output, the attention and MLP outputs, the second norm's input (resid_mid).
# BERT-style MLPs end in an ``out`` sub-module.
_BRIDGE_SUFFIXES: dict[str, str] = {
    "hook_in": "resid_pre",
    "hook_out": "resid_post",
    "attn.hook_out": "attn_out",
    "ln2.hook_in": "resid_mid",
    "mlp.hook_out": "mlp_out",
    "mlp.out.hook_out": "mlp_out",
}
_TL_SUFFIXES: dict[str, str] = {
    pattern.split("{layer}.", 1)[1]: site for site, pattern in SITES.items() if site != "embed"
}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)$")


class HookSite(NamedTuple):
    """Where a hook name points: ``site`` (``None``: not a semhooks site), ``layer``
    (``None``: outside the blocks) and the naming ``style`` (``"transformer_lens"``,
    ``"bridge"`` canonical, or ``"other"``)."""

    site: str | None
    layer: int | None
    style: Literal["transformer_lens", "bridge", "other"]


@functools.cache
def _get_act_name() -> Any:
    """TransformerLens' ``get_act_name`` (``utilities`` in 4.x, ``utils`` in 3.x)."""
    for module in ("transformer_lens.utilities", "transformer_lens.utils"):
        try:
            return importlib.import_module(module).get_act_name
        except (ImportError, AttributeError):
            continue
    raise ImportError("this TransformerLens has no get_act_name")


def _act_name(site: str, layer: int) -> str:
    return str(_get_act_name()(site, layer))


def site_hook_name(site: str, layer: int) -> str:
    """The TransformerLens hook name of ``site`` at ``layer`` (``"embed"``: block 0's
    ``hook_resid_pre``, whatever ``layer``). Raises ValueError for an unknown site."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {sorted(SITES)}")
    if site == "embed":
        return SITES["embed"]
    return _act_name(site, int(layer))


def attention_hook_name(site: str, layer: int) -> str:
    """The TransformerLens hook name of a per-head attention site (:data:`ATTENTION_SITES`)
    at ``layer``, e.g. ``blocks.3.attn.hook_q``. Raises ValueError for another site."""
    if site not in ATTENTION_SITES:
        raise ValueError(f"unknown attention site {site!r}; choose one of {list(ATTENTION_SITES)}")
    return _act_name(site, int(layer))


def parse_hook_name(name: str) -> HookSite:
    """``(site, layer, style)`` of a hook name in either style the adapter meets.

    >>> parse_hook_name("blocks.3.hook_resid_post")
    HookSite(site='resid_post', layer=3, style='transformer_lens')
    >>> parse_hook_name("blocks.3.attn.hook_out")
    HookSite(site='attn_out', layer=3, style='bridge')
    >>> parse_hook_name("blocks.3.attn.hook_pattern")
    HookSite(site=None, layer=3, style='other')
    """
    m = _BLOCK.match(str(name))
    if m is None:
        return HookSite(None, None, "other")
    layer, rest = int(m.group(1)), m.group(2)
    if rest in _TL_SUFFIXES:
        return HookSite(_TL_SUFFIXES[rest], layer, "transformer_lens")
    if rest in _BRIDGE_SUFFIXES:
        return HookSite(_BRIDGE_SUFFIXES[rest], layer, "bridge")
    return HookSite(None, layer, "other")


def hook_layer(hook: Any) -> int | None:
    """The block index of a hook point (or a hook name); ``None`` outside the blocks."""
    name = hook if isinstance(hook, str) else getattr(hook, "name", None)
    return parse_hook_name(str(name or "")).layer


def layers_in(names: Iterable[Any], site: str) -> list[int]:
    """Sorted layers for which ``names`` (e.g. an ActivationCache's keys) hold the
    TransformerLens hook name of ``site`` (``"embed"``: ``[0]`` when block 0's
    ``hook_resid_pre`` is there)."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {sorted(SITES)}")
    if site == "embed":
        return [0] if any(str(n) == SITES["embed"] for n in names) else []
    found = set()
    for n in names:
        parsed = parse_hook_name(str(n))
        if parsed.site == site and parsed.style == "transformer_lens":
            found.add(parsed.layer)
    return sorted(x for x in found if x is not None)
