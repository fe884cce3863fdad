"""Activation patching: :class:`Patch` writes cached activations (a tensor, an
ActivationCache or :class:`~semhooks.LayerStates`) back into a forward."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.backend.sites import layers_in, site_hook_name
from semhooks.extraction.states import LayerStates
from semhooks.interventions.base import (
    Intervention,
    InterventionError,
    Selection,
    as_alpha,
    layer_of,
)
from semhooks.interventions.context import current_batch

__all__ = ["Patch"]


@dataclass(eq=False, repr=False)
class Patch(Intervention):
    """Replace activations with cached ones: ``h + alpha (s - h)`` (``alpha = 1``: ``s``).

    ``source`` is one of:

    - a tensor ``[batch, pos, d]`` (the activation of a run on the same padded batch
      layout) or ``[batch, d]`` (one vector per row, written at every selected position);
    - a mapping from layer (int) or hook name to such tensors, e.g. a TransformerLens
      ``ActivationCache`` or ``dict(cache)``;
    - a :class:`semhooks.LayerStates`: token-level (``extract_states(pool=None)``: each
      stored token is written back at its own position, mapped into the current batch's
      padding through the attention mask) or pooled (one vector per item and layer).

    ``layers`` defaults to the layers the source holds.
    """

    source: Any
    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = as_alpha(type(self).__name__, self.alpha)
        self._layer_states = isinstance(self.source, LayerStates)
        if not (self._layer_states or isinstance(self.source, (Tensor, Mapping))) and not (
            hasattr(self.source, "keys") and hasattr(self.source, "__getitem__")
        ):
            raise InterventionError(
                "Patch source must be a tensor, a mapping of layer/hook name to tensors (an "
                f"ActivationCache), or LayerStates; got {type(self.source).__name__}"
            )
        if (
            isinstance(self.source, Mapping)
            and self.source
            and not hasattr(self.source, "cache_dict")
        ):
            self.source = {
                (int(k) if isinstance(k, str) and k.isdigit() else k): v
                for k, v in self.source.items()
            }

    def _source_layers(self) -> list[int] | None:
        if self._layer_states:
            return list(self.source.layers)
        if isinstance(self.source, Tensor):
            return None
        keys = list(self.source.keys())
        out = [k for k in keys if isinstance(k, int)]
        out += layers_in([k for k in keys if not isinstance(k, int)], self.site)
        return sorted(set(out)) or None

    def _layer_list(self, model: Any) -> list[int]:
        if self.layers is None:
            found = self._source_layers()
            if found is None:
                raise InterventionError(
                    "Patch with a single tensor source needs layers=...; say which layer's "
                    "activation it holds"
                )
            return adapt(model).resolve_layers(found)
        return super()._layer_list(model)

    def check(self, model: Any) -> None:
        d = adapt(model).d_model
        sizes = []
        if isinstance(self.source, Tensor):
            sizes.append(self.source.shape[-1])
        elif self._layer_states:
            sizes.append(self.source.d_model)
        if any(s != d for s in sizes):
            raise InterventionError(
                f"Patch source has size {sizes[0]} but {adapt(model).name} has d_model={d}"
            )

    def _lookup(self, hook: Any) -> Any:
        if isinstance(self.source, Tensor) or self._layer_states:
            return self.source
        keys = list(self.source.keys())
        layer = layer_of(hook)
        # The bridge reports canonical hook names (blocks.3.hook_out) while caches and users
        # use TransformerLens names (blocks.3.hook_resid_post): match on site and layer first.
        if layer is not None:
            wanted = site_hook_name(self.site, layer)
            if wanted in keys:
                return self.source[wanted]
        name = getattr(hook, "name", None)
        if name is not None and name in keys:
            return self.source[name]
        if layer is not None and layer in keys:
            return self.source[layer]
        raise InterventionError(
            f"Patch source has no {self.site} activation for hook {name!r} (layer {layer}); "
            f"it holds {keys[:8]}"
        )

    def _full_source(self, hook: Any, act: Tensor) -> tuple[Tensor, Tensor | None]:
        """Source values ``[B, T, d]`` and where they are defined ``[B, T]`` (None: all)."""
        b, t, d = act.shape
        src = self._lookup(hook)
        if self._layer_states:
            layer = layer_of(hook)
            states = src
            if layer is None or layer not in states.layers:
                raise InterventionError(
                    f"Patch LayerStates hold layers {states.layers}, not the one hooked at "
                    f"{getattr(hook, 'name', '?')}"
                )
            x = states.layer(layer)
            if states.item_index is None:
                src = x
            else:
                if states.n_items != b:
                    raise InterventionError(
                        f"Patch LayerStates hold {states.n_items} items but the batch has {b} rows"
                    )
                mask = current_batch().attention_mask
                first = (
                    torch.zeros(b, dtype=torch.long)
                    if mask is None
                    else mask.cpu().long().argmax(1)
                )
                cols = first[states.item_index] + states.positions
                if bool((cols >= t).any()):
                    raise InterventionError(
                        "Patch LayerStates positions fall outside the current batch (width "
                        f"{t}); run the same texts with the same padding"
                    )
                full = torch.zeros(b, t, d, dtype=act.dtype, device=act.device)
                defined = torch.zeros(b, t, dtype=torch.bool, device=act.device)
                idx = states.item_index.to(act.device)
                cols = cols.to(act.device)
                full[idx, cols] = x.to(act.device, act.dtype)
                defined[idx, cols] = True
                return full, defined
        src = src.to(act.device, act.dtype)
        if src.ndim == 2 and tuple(src.shape) == (b, d):
            return src[:, None, :].expand(b, t, d), None
        if tuple(src.shape) != (b, t, d):
            raise InterventionError(
                f"Patch source at {getattr(hook, 'name', '?')} has shape {tuple(src.shape)}; "
                f"the activation is {(b, t, d)}"
            )
        return src, None

    def _prepare(self, act: Tensor, hook: Any) -> tuple[Tensor, Tensor | None]:
        return self._full_source(hook, act)

    def _select(self, act: Tensor, call: Any = None) -> Selection:
        sel = super()._select(act, call)
        defined = call[1]
        if defined is None or sel.kind == "none":
            return sel
        where = sel.as_mask(act.shape[0], act.shape[1], act.device)
        return Selection("mask", defined if where is None else where & defined)

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        full, _ = call
        s = full if rows is None else full[rows, cols]
        if self.alpha == 1.0:
            return s.clone()
        return h + self.alpha * (s - h)
