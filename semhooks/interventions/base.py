"""The base of every intervention: where it acts (layers, site, positions), the hook
plumbing (per-call state only, never stored on the instance), serialisation, and the
resolution of ``positions=`` into a selection of (row, column) pairs.

See :mod:`semhooks.interventions` for the equations and the meaning of each position word.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Literal, Union

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.backend.sites import hook_layer
from semhooks.extraction.states import LayerStates
from semhooks.interventions.context import BatchInfo, current_batch

__all__ = [
    "POSITION_WORDS",
    "Intervention",
    "InterventionError",
    "LayerSpec",
    "PositionSpec",
    "Selection",
    "as_alpha",
    "as_direction",
    "check_positions",
    "layer_of",
    "resolve_positions",
    "selection",
    "unit_vector",
]

LayerSpec = Union[int, Sequence[int], str, range, None]
PositionSpec = Union[str, int, Sequence[int], Sequence[Sequence[int]], Tensor]
POSITION_WORDS = ("all", "last", "prompt_only", "generated_only")


class InterventionError(ValueError):
    """An intervention was asked to do something it cannot (bad direction, shape, layer)."""


# ---------------------------------------------------------------------- directions
def as_direction(obj: Any, name: str = "direction") -> Float[Tensor, "*batch d_model"]:
    """A direction as a float32 CPU tensor ``[d]`` or ``[batch, d]``.

    Accepts a tensor, a NumPy array, a list, or any object with a ``direction_`` (fitted
    semhooks/scikit-learn style estimator) or ``vector`` (an LRC concept) attribute.
    Refuses zero, non-finite and wrongly shaped directions.
    """
    source = obj
    for attr in ("direction_", "vector"):
        if not isinstance(source, (Tensor, np.ndarray, list, tuple)) and hasattr(source, attr):
            source = getattr(source, attr)
            break
    if isinstance(source, Tensor):
        t = source.detach().to("cpu", torch.float32)
    elif isinstance(source, (np.ndarray, list, tuple)):
        t = torch.as_tensor(np.asarray(source, dtype=np.float32))
    else:
        raise TypeError(
            f"{name} must be a tensor, an array, or an object with a .direction_ or .vector "
            f"attribute; got {type(obj).__name__}"
        )
    if t.ndim not in (1, 2) or t.shape[-1] == 0:
        raise InterventionError(
            f"{name} must have shape [d_model] or [batch, d_model]; got {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise InterventionError(f"{name} has non-finite entries (NaN or inf)")
    norms = t.norm(dim=-1)
    if (norms == 0).any():
        which = "" if t.ndim == 1 else f" (rows {(norms == 0).nonzero().flatten().tolist()})"
        raise InterventionError(f"{name} is a zero vector{which}; it defines no direction")
    return t.contiguous()


def unit_vector(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _tensor_to_data(x: Any) -> Any:
    if isinstance(x, Tensor):
        return {"__tensor__": x.detach().cpu().tolist(), "dtype": str(x.dtype).split(".")[-1]}
    if isinstance(x, LayerStates):
        fields = ("states", "layers", "site", "pool", "tokens", "item_index", "positions")
        return {"__layer_states__": {k: _tensor_to_data(getattr(x, k)) for k in fields}}
    if not isinstance(x, (dict, str)) and hasattr(x, "keys") and hasattr(x, "__getitem__"):
        return {str(k): _tensor_to_data(x[k]) for k in x.keys()}  # an ActivationCache
    if isinstance(x, range):
        return list(x)
    if isinstance(x, (list, tuple)):
        return [_tensor_to_data(y) for y in x]
    if isinstance(x, dict):
        return {str(k): _tensor_to_data(y) for k, y in x.items()}
    return x


def _data_to_tensor(x: Any) -> Any:
    if isinstance(x, dict) and "__tensor__" in x:
        return torch.tensor(x["__tensor__"], dtype=getattr(torch, x.get("dtype", "float32")))
    if isinstance(x, dict) and "__layer_states__" in x:
        return LayerStates(**{k: _data_to_tensor(v) for k, v in x["__layer_states__"].items()})
    if isinstance(x, list):
        return [_data_to_tensor(y) for y in x]
    if isinstance(x, dict):
        return {k: _data_to_tensor(y) for k, y in x.items()}
    return x


# ---------------------------------------------------------------------- base class
_COUNT_LOCK = threading.Lock()


def as_alpha(owner: str, alpha: Any) -> float:
    """``alpha`` as a finite float, or an InterventionError naming the parameter and value
    (NaN or inf would make every logit non-finite)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(alpha, bool) or not math.isfinite(value):
        raise InterventionError(f"{owner}: alpha must be a finite number, got alpha={alpha!r}")
    return value


_REGISTRY: dict[str, type[Intervention]] = {}


@dataclass(eq=False, repr=False)
class Intervention:
    """Base class: where to act (layers, site, positions) and the hook plumbing.

    Subclasses implement :meth:`_edit` on the selected vectors. Instances are hook functions
    ``fn(activation, hook)``; ``n_fired`` counts the hook calls that acted (every call
    except those whose selection is empty by construction, e.g. ``"generated_only"`` before
    the first generated token) and ``n_edited`` the vectors edited (row x position, summed
    over calls and layers); :meth:`reset` zeroes both. Hooks never synchronise with the
    device: ``n_edited`` is summed lazily and read when you ask for it.

    Positions and padding: ``positions="last"`` means each row's last *real* token, which
    needs the attention mask. Inside :func:`intervene` the mask passed to the forward is
    read; a bare ``model.run_with_hooks`` on a batch of several rows passes none (and
    TransformerLens pads on the right), so there ``"last"`` raises
    :class:`InterventionError` instead of editing a padding column, unless the call is
    wrapped in :func:`batch_context` (``attention_mask=...``). ``"all"`` edits every column
    (padding included; harmless to real tokens of a causal model). Called at a hook point
    outside its declared ``layers`` (``blocks.20`` for ``layers=[3]``), an intervention
    raises rather than act silently.
    """

    _: KW_ONLY
    layers: LayerSpec = None
    site: str = "resid_post"
    positions: PositionSpec = "all"
    n_fired: int = field(default=0, init=False, compare=False)
    _n_edited: Any = field(default=0, init=False, compare=False)
    _cast: dict[Any, Any] = field(default_factory=dict, init=False, compare=False)

    _tensor_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __post_init__(self) -> None:
        check_positions(self.positions)
        if isinstance(self.layers, range):
            self.layers = list(self.layers)

    # ---------------------------------------------------------------- description
    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                text = f"Tensor{list(value.shape)}"
            elif isinstance(value, Intervention):
                text = repr(value)
            else:
                text = repr(value)
                if len(text) > 60:
                    text = f"<{type(value).__name__}>"
            parts.append(f"{f.name}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable; tensors become nested lists)."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = (
                    value.to_dict() if isinstance(value, Intervention) else _tensor_to_data(value)
                )
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Intervention:
        """Rebuild any intervention from :meth:`to_dict` output."""
        kind = data.get("type")
        if kind not in _REGISTRY:
            raise InterventionError(
                f"unknown intervention type {kind!r}; known: {sorted(_REGISTRY)}"
            )
        cls = _REGISTRY[kind]
        kwargs: dict[str, Any] = {}
        for k, v in data.items():
            if k == "type":
                continue
            if isinstance(v, Mapping) and "type" in v and v["type"] in _REGISTRY:
                kwargs[k] = Intervention.from_dict(v)
            else:
                kwargs[k] = _data_to_tensor(v)
        return cls(**kwargs)

    def reset(self) -> None:
        """Zero the fired/edited counters."""
        self.n_fired = 0
        self._n_edited = 0

    def with_alpha(self, alpha: float) -> Intervention:
        """A copy with a different strength (used by steering curves)."""
        return dataclasses.replace(self, alpha=as_alpha(type(self).__name__, alpha))  # type: ignore[call-arg]

    # ---------------------------------------------------------------- model wiring
    def _layer_list(self, model: Any) -> list[int]:
        if self.layers is None:
            raise InterventionError(
                f"{type(self).__name__} has no layers; say where to act, e.g. layers=6, "
                "layers=[2, 4] or layers='all'"
            )
        return adapt(model).resolve_layers(self.layers)  # type: ignore[arg-type]

    def check(self, model: Any) -> None:
        """Raise a clear error if the intervention cannot act on ``model``."""
        d = adapt(model).d_model
        for name in self._tensor_fields:
            v = getattr(self, name)
            if isinstance(v, Tensor) and v.shape[-1] != d:
                raise InterventionError(
                    f"{type(self).__name__}.{name} has size {v.shape[-1]} but "
                    f"{adapt(model).name} has d_model={d}; fit the direction on this model's "
                    "states"
                )

    def hook_names(self, model: Any) -> list[str]:
        """The hook names this intervention attaches to on ``model``."""
        adapter = adapt(model)
        layers = self._layer_list(model)
        if self.site == "embed":
            return [adapter.hook_name("embed", 0)]
        return [adapter.hook_name(self.site, layer) for layer in layers]

    def fwd_hooks(self, model: Any) -> list[tuple[str, Intervention]]:
        """``[(hook_name, self), ...]`` for ``model.hooks``/``run_with_hooks``."""
        self.check(model)
        return [(name, self) for name in self.hook_names(model)]

    # ---------------------------------------------------------------- the hook
    def _vec(self, v: Tensor, like: Tensor) -> Tensor:
        key = (id(v), like.device, like.dtype)
        cached = self._cast.get(key)
        if cached is None or cached[0] is not v:
            cached = (v, v.to(like.device, like.dtype))
            self._cast[key] = cached
        return cached[1]

    def _per_row(self, v: Tensor, like: Tensor, rows: Tensor | None) -> Tensor:
        """Direction broadcastable against ``like`` (``[B, T, d]`` or gathered ``[n, d]``);
        per-row directions were checked against the batch by :meth:`_check_rows`."""
        vv = self._vec(v, like)
        if vv.ndim == 1:
            return vv
        return vv[:, None, :] if rows is None else vv[rows]

    def _check_rows(self, batch: int) -> None:
        for name in self._tensor_fields:
            v = getattr(self, name)
            if isinstance(v, Tensor) and v.ndim == 2 and v.shape[0] != batch:
                raise InterventionError(
                    f"{type(self).__name__} has one direction per row ({v.shape[0]} rows) but "
                    f"the batch has {batch} rows"
                )

    def _check_hook_layer(self, hook: Any) -> None:
        """Refuse a hook point outside the declared layers (``Steer(layers=[3])`` attached
        by hand to ``blocks.20``); negative layers need the model, so they are not checked."""
        layer = layer_of(hook)
        declared = self.layers
        if layer is None or declared is None or declared == "all" or self.site == "embed":
            return
        items = [declared] if isinstance(declared, int) else list(declared)  # type: ignore[arg-type]
        if any(not isinstance(x, int) or x < 0 for x in items):
            return
        if layer not in items:
            raise InterventionError(
                f"{type(self).__name__}(layers={items}) was called at {hook.name!r} (layer "
                f"{layer}); attach it with model.hooks(fwd_hooks=intervention.fwd_hooks(model)) "
                "or semhooks.intervene, or declare that layer"
            )

    def _prepare(self, act: Tensor, hook: Any) -> Any:
        """Per-call state, made before positions are resolved (Patch: its source values).

        It is returned and handed to :meth:`_select` and :meth:`_edit`, never stored on
        the instance: one intervention may act in several threads (and models) at once.
        """
        return None

    def _select(self, act: Tensor, call: Any = None) -> Selection:
        return selection(self.positions, act, current_batch())

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        raise NotImplementedError

    def _count(self, edited: Any) -> None:
        with _COUNT_LOCK:  # += on shared counters is not atomic across threads
            self._n_edited = self._n_edited + edited
            self.n_fired += 1

    @property
    def n_edited(self) -> int:
        """Vectors (row, position, layer) edited since the last :meth:`reset`."""
        return int(self._n_edited)

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        squeeze = activation.ndim == 2
        act = activation[None] if squeeze else activation
        if act.ndim != 3:
            raise InterventionError(
                f"{type(self).__name__} expects activations [batch, pos, d_model]; got "
                f"{tuple(activation.shape)} at {getattr(hook, 'name', '?')}"
            )
        for name in self._tensor_fields:
            v = getattr(self, name)
            if isinstance(v, Tensor) and v.shape[-1] != act.shape[-1]:
                raise InterventionError(
                    f"{type(self).__name__}.{name} has size {v.shape[-1]} but the activation at "
                    f"{getattr(hook, 'name', '?')} has d_model={act.shape[-1]}"
                )
        self._check_hook_layer(hook)
        self._check_rows(act.shape[0])
        call = self._prepare(act, hook)
        sel = self._select(act, call)
        # No host-device synchronisation below: counts of masked edits stay tensors until read.
        if sel.kind == "none":
            return activation
        edited: Any
        if sel.kind == "all":
            out = self._edit(act, None, None, hook, call).to(act.dtype)
            edited = act.shape[0] * act.shape[1]
        elif sel.kind == "mask":
            assert sel.mask is not None
            new = self._edit(act, None, None, hook, call).to(act.dtype)
            out = torch.where(sel.mask[..., None], new, act)
            edited = sel.mask.sum()
        else:
            rows, cols = sel.rows, sel.cols
            assert rows is not None and cols is not None
            new = self._edit(act[rows, cols], rows, cols, hook, call)
            out = act.clone()
            out[rows, cols] = new.to(act.dtype)
            edited = rows.numel()
        self._count(edited)
        return out[0] if squeeze else out


def check_positions(spec: Any) -> None:
    if isinstance(spec, str):
        if spec not in POSITION_WORDS:
            raise InterventionError(
                f"unknown positions {spec!r}; use one of {POSITION_WORDS}, an int, a list of "
                "ints, one list of ints per row, or a bool mask [batch, pos]"
            )
    elif isinstance(spec, Tensor):
        if spec.dtype != torch.bool or spec.ndim != 2:
            raise InterventionError(
                f"a positions tensor must be a bool mask [batch, pos]; got {spec.dtype} "
                f"{tuple(spec.shape)}"
            )
    elif not isinstance(spec, (int, Sequence)):
        raise InterventionError(f"cannot use {spec!r} as positions")


@dataclass(frozen=True)
class Selection:
    """Where to edit: everywhere, nowhere, a bool mask, or (rows, cols) index pairs."""

    kind: Literal["all", "none", "mask", "idx"]
    mask: Tensor | None = None
    rows: Tensor | None = None
    cols: Tensor | None = None

    def as_mask(self, b: int, t: int, device: Any) -> Tensor | None:
        if self.kind == "all":
            return None
        out = torch.zeros(b, t, dtype=torch.bool, device=device)
        if self.kind == "mask":
            assert self.mask is not None
            return self.mask.to(device)
        if self.kind == "idx":
            out[self.rows, self.cols] = True
        return out


def selection(spec: PositionSpec, act: Tensor, info: BatchInfo) -> Selection:
    b, t = act.shape[:2]
    dev = act.device
    mask = info.attention_mask
    if mask is not None:
        if tuple(mask.shape) != (b, t):
            raise InterventionError(
                f"the attention mask has shape {tuple(mask.shape)} but the activation is "
                f"[{b}, {t}, d]; the hook is running inside another batch's context"
            )
        mask = mask.to(dev).bool()
    if isinstance(spec, str):
        if spec == "all":
            return Selection("all") if mask is None else Selection("mask", mask)
        if spec == "last":
            rows = torch.arange(b, device=dev)
            if mask is None:
                if b > 1 and not info.mask_known:
                    raise InterventionError(
                        f"positions='last' on a batch of {b} rows whose attention mask this "
                        "hook cannot see: the last column is padding for the shorter rows "
                        "under TransformerLens' default right padding. Pass the mask to the "
                        "forward (model(tokens, attention_mask=mask) inside semhooks.intervene), "
                        "or wrap a bare run_with_hooks in "
                        "semhooks.interventions.batch_context(attention_mask=mask), or run "
                        "one row at a time"
                    )
                return Selection("idx", rows=rows, cols=torch.full_like(rows, t - 1))
            return Selection("idx", rows=rows, cols=(t - 1) - mask.flip(1).int().argmax(1))
        p = info.prompt_length
        if p is None:
            if spec == "prompt_only":
                return Selection("all") if mask is None else Selection("mask", mask)
            raise InterventionError(
                "positions='generated_only' needs the prompt length; run under "
                "semhooks.generate(...) or semhooks.interventions.batch_context(prompt_length=...)"
            )
        if (spec == "generated_only" and p >= t) or (spec == "prompt_only" and p <= 0):
            return Selection("none")
        cols = torch.arange(t, device=dev)[None].expand(b, t)
        sel = cols < p if spec == "prompt_only" else cols >= p
        return Selection("mask", sel if mask is None else sel & mask)
    if isinstance(spec, Tensor):
        if tuple(spec.shape) != (b, t):
            raise InterventionError(
                f"the positions mask has shape {tuple(spec.shape)}; the activation is [{b}, {t}, d]"
            )
        return Selection("mask", spec.to(dev))
    if isinstance(spec, (int, np.integer)):
        per_row: list[Any] = [[spec]] * b
    elif all(isinstance(p, (int, np.integer)) for p in spec):
        per_row = [list(spec)] * b
    else:
        per_row = [[p] if isinstance(p, (int, np.integer)) else list(p) for p in spec]
        if len(per_row) != b:
            raise InterventionError(
                f"positions has {len(per_row)} per-row lists but the batch has {b} rows"
            )
    pairs = set()
    for r, ps in enumerate(per_row):
        for p in ps:
            q = int(p) + t if p < 0 else int(p)
            if not 0 <= q < t:
                raise InterventionError(
                    f"position {p} (row {r}) is out of range for a batch of width {t}"
                )
            pairs.add((r, q))
    if not pairs:
        return Selection("none")
    idx = torch.tensor(sorted(pairs), dtype=torch.long).to(dev)
    return Selection("idx", rows=idx[:, 0], cols=idx[:, 1])


def resolve_positions(
    spec: PositionSpec, act: Tensor, info: BatchInfo | None = None
) -> Bool[Tensor, "batch pos"] | None:
    """The ``[batch, pos]`` bool selection for ``spec`` (``None`` = every position)."""
    check_positions(spec)
    sel = selection(spec, act, info or BatchInfo())
    return sel.as_mask(act.shape[0], act.shape[1], act.device)


def layer_of(hook: Any) -> int | None:
    """The block index of the hook point a hook function was called at (None: outside)."""
    return hook_layer(str(getattr(hook, "name", "") or ""))
