"""Interventions along directions: steer, ablate, clamp, patch and the LRC concept swap.

Each intervention is a small dataclass (plain, serialisable data: ``to_dict``/``from_dict``)
that is also a TransformerLens hook function ``fn(activation, hook) -> activation``. A
notebook that has never heard of semhooks can use one directly::

    steer = Steer(v, alpha=4.0, positions="last")
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.6.hook_resid_post", steer)])

and semhooks code composes them, resolving layers and sites through the model adapter::

    with semhooks.intervene(model, Steer(v, 4.0, layers=6), Ablate(u, layers="all")):
        logits = model(tokens)          # any forward, generate(...) or extract_states(...)

Hooks are global state on the model: :func:`intervene` adds them inside the model's own
``hooks(...)`` context, which removes them in ``finally`` even when the block raises, and
nested ``intervene`` blocks stack.

Equations (``h`` the activation at one selected position, ``u = v / ||v||``):

- :class:`Steer` ``h + alpha v`` (``v`` raw, *not* normalised: ``alpha`` multiplies the
  direction exactly as given, so a mean-difference vector at ``alpha = 1`` moves a state
  by one class-mean gap).
- :class:`Ablate` ``h - alpha (h . u) u`` (``alpha = 1`` removes the component fully).
- :class:`Clamp` ``h + (value - h . u) u`` (the component along ``u`` becomes ``value``).
- :class:`Patch` ``h + alpha (s - h)`` with ``s`` a cached activation (``alpha = 1``: replace).
- :class:`Swap` (Chanin et al. 2024, LRC causal swap) ``h + alpha ||h|| (u_to - u_from)``
  (``scale="norm"``), or ``h + alpha (h . u_from) (u_to - u_from)`` (``scale="projection"``:
  at ``alpha = 1`` the state's component along ``u_from`` is moved onto ``u_to``).

Positions (``positions=``):

- ``"all"``: every position (every attended one when the attention mask is known).
- ``"last"``: the last attended token of each row. The hook learns the attention mask from
  the forward call: inside :func:`intervene` a forward pre-hook on the model reads the
  ``attention_mask=`` keyword of every call (``adapter.forward``, ``extract_states``,
  :func:`semhooks.studies.steering.generate` and plain ``model(ids, attention_mask=...)`` all pass it).
  Without a mask (a bare ``run_with_hooks`` in a notebook) ``"last"`` is the final column,
  which is right for unpadded and left-padded batches; for right padding, wrap the call in
  :func:`batch_context` or pass explicit positions.
- an int or a list of ints: the same columns for every row; a list of lists of ints: one
  list per row (e.g. from :func:`semhooks.find_span`); a bool tensor ``[batch, pos]``.
  Explicit positions are column indices in the padded batch the model runs (exactly what
  ``find_span`` returns for that batch); negative values count from the last column.
- ``"prompt_only"`` / ``"generated_only"``: columns before / from the prompt length, which
  :func:`semhooks.studies.steering.generate` (left padding, full forwards) sets for each step.

Directions may be ``[d_model]`` (every row) or ``[batch, d_model]`` (one per row); they are
stored in float32 and cast to the activation's device and dtype when the hook runs.

Controls: :func:`random_control` is the same intervention with a random direction of equal
norm (seeded); :func:`placebo` keeps the size of the edit at every position and replaces its
direction with a fixed random one (any intervention, including :class:`Patch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Literal, Union

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.backend.sites import hook_layer, layers_in, site_hook_name

LayerSpec = Union[int, Sequence[int], str, range, None]
PositionSpec = Union[str, int, Sequence[int], Sequence[Sequence[int]], Tensor]
POSITION_WORDS = ("all", "last", "prompt_only", "generated_only")


class InterventionError(ValueError):
    """An intervention was asked to do something it cannot (bad direction, shape, layer)."""


# ---------------------------------------------------------------------- batch context
@dataclass(frozen=True)
class BatchInfo:
    """What a hook needs to know about the batch being run.

    ``attention_mask`` is ``[batch, pos]`` (1 = real token); ``prompt_length`` is the number
    of leading columns that belong to the (left-padded) prompt during generation.
    """

    attention_mask: Tensor | None = None
    prompt_length: int | None = None
    # True when the forward said where its padding is (a mask was passed, maybe all ones);
    # False when nobody did, so "last" cannot tell a padded column from a real one.
    mask_known: bool = False


_BATCH: ContextVar[BatchInfo] = ContextVar("semhooks_batch", default=BatchInfo())  # noqa: B039


def current_batch() -> BatchInfo:
    """The batch description hooks see right now."""
    return _BATCH.get()


@contextlib.contextmanager
def batch_context(
    attention_mask: Tensor | None = None, prompt_length: int | None = None
) -> Iterator[BatchInfo]:
    """Tell intervention hooks the attention mask and/or prompt length of the next forwards.

    Only needed when calling ``model.run_with_hooks`` yourself on a right-padded batch (for
    ``positions="last"``) or outside :func:`semhooks.studies.steering.generate` with
    ``"prompt_only"``/``"generated_only"``; :func:`intervene` captures the mask itself.
    """
    old = _BATCH.get()
    info = BatchInfo(
        attention_mask if attention_mask is not None else old.attention_mask,
        prompt_length if prompt_length is not None else old.prompt_length,
        attention_mask is not None or old.mask_known,
    )
    token = _BATCH.set(info)
    try:
        yield info
    finally:
        _BATCH.reset(token)


# One capture per model, however deeply intervene() blocks nest on it.
_CAPTURES: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _install_mask_capture(model: Any) -> bool:
    """Record the ``attention_mask`` keyword of each forward call for the hooks to read."""
    if not isinstance(model, torch.nn.Module):
        return False
    entry = _CAPTURES.get(model)
    if entry is not None:
        entry[0] += 1
        return True
    # One stack per thread: a model run from two threads must reset each thread's own
    # context token (a shared list handed one thread's token to the other: ValueError).
    local = threading.local()

    def stack() -> list[Any]:
        if not hasattr(local, "tokens"):
            local.tokens = []
        return local.tokens  # type: ignore[no-any-return]

    def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        known = isinstance(mask, Tensor)
        if isinstance(mask, Tensor) and bool(mask.all()):
            mask = None  # unpadded: hooks take the fast path (one check per forward, not per hook)
        old = _BATCH.get()
        if not known:  # an outer batch_context may know this batch's mask
            mask, known = old.attention_mask, old.mask_known
        stack().append(_BATCH.set(BatchInfo(mask, old.prompt_length, known)))

    def post(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        tokens = stack()
        if tokens:
            _BATCH.reset(tokens.pop())

    h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.register_forward_hook(post, with_kwargs=True, always_call=True)
    _CAPTURES[model] = [1, h1, h2]
    return True


def _remove_mask_capture(model: Any) -> None:
    entry = _CAPTURES.get(model)
    if entry is None:
        return
    entry[0] -= 1
    if entry[0] <= 0:
        entry[1].remove()
        entry[2].remove()
        del _CAPTURES[model]


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


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _tensor_to_data(x: Any) -> Any:
    if isinstance(x, Tensor):
        return {"__tensor__": x.detach().cpu().tolist(), "dtype": str(x.dtype).split(".")[-1]}
    if type(x).__name__ == "LayerStates":
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
        from semhooks.extraction.states import LayerStates

        return LayerStates(**{k: _data_to_tensor(v) for k, v in x["__layer_states__"].items()})
    if isinstance(x, list):
        return [_data_to_tensor(y) for y in x]
    if isinstance(x, dict):
        return {k: _data_to_tensor(y) for k, y in x.items()}
    return x


# ---------------------------------------------------------------------- base class
_COUNT_LOCK = threading.Lock()


def _as_alpha(owner: str, alpha: Any) -> float:
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
        _check_positions(self.positions)
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
        return dataclasses.replace(self, alpha=_as_alpha(type(self).__name__, alpha))  # type: ignore[call-arg]

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
        layer = _layer_of(hook)
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

    def _select(self, act: Tensor, call: Any = None) -> _Selection:
        return _selection(self.positions, act, _BATCH.get())

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


def _check_positions(spec: Any) -> None:
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
class _Selection:
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


def _selection(spec: PositionSpec, act: Tensor, info: BatchInfo) -> _Selection:
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
            return _Selection("all") if mask is None else _Selection("mask", mask)
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
                return _Selection("idx", rows=rows, cols=torch.full_like(rows, t - 1))
            return _Selection("idx", rows=rows, cols=(t - 1) - mask.flip(1).int().argmax(1))
        p = info.prompt_length
        if p is None:
            if spec == "prompt_only":
                return _Selection("all") if mask is None else _Selection("mask", mask)
            raise InterventionError(
                "positions='generated_only' needs the prompt length; run under "
                "semhooks.generate(...) or semhooks.interventions.batch_context(prompt_length=...)"
            )
        if (spec == "generated_only" and p >= t) or (spec == "prompt_only" and p <= 0):
            return _Selection("none")
        cols = torch.arange(t, device=dev)[None].expand(b, t)
        sel = cols < p if spec == "prompt_only" else cols >= p
        return _Selection("mask", sel if mask is None else sel & mask)
    if isinstance(spec, Tensor):
        if tuple(spec.shape) != (b, t):
            raise InterventionError(
                f"the positions mask has shape {tuple(spec.shape)}; the activation is [{b}, {t}, d]"
            )
        return _Selection("mask", spec.to(dev))
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
        return _Selection("none")
    idx = torch.tensor(sorted(pairs), dtype=torch.long).to(dev)
    return _Selection("idx", rows=idx[:, 0], cols=idx[:, 1])


def resolve_positions(
    spec: PositionSpec, act: Tensor, info: BatchInfo | None = None
) -> Bool[Tensor, "batch pos"] | None:
    """The ``[batch, pos]`` bool selection for ``spec`` (``None`` = every position)."""
    _check_positions(spec)
    sel = _selection(spec, act, info or BatchInfo())
    return sel.as_mask(act.shape[0], act.shape[1], act.device)


def _layer_of(hook: Any) -> int | None:
    return hook_layer(str(getattr(hook, "name", "") or ""))


# ---------------------------------------------------------------------- the interventions
@dataclass(eq=False, repr=False)
class Steer(Intervention):
    """Add ``alpha * direction`` (the raw vector, not normalised): ``h + alpha v``.

    ``direction`` is ``[d_model]`` or ``[batch, d_model]`` (one per row).
    """

    direction: Any
    alpha: float = 1.0
    _tensor_fields: ClassVar[tuple[str, ...]] = ("direction",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.direction = as_direction(self.direction)
        self.alpha = _as_alpha(type(self).__name__, self.alpha)

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        return h + self.alpha * self._per_row(self.direction, h, rows)


@dataclass(eq=False, repr=False)
class Ablate(Intervention):
    """Remove the component along ``u = v / ||v||``: ``h - alpha (h . u) u``.

    ``alpha = 1`` (default) is full directional ablation; the direction is normalised.
    """

    direction: Any
    alpha: float = 1.0
    _tensor_fields: ClassVar[tuple[str, ...]] = ("direction",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.direction = as_direction(self.direction)
        self._unit = _unit(self.direction)
        self.alpha = _as_alpha(type(self).__name__, self.alpha)

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        u = self._per_row(self._unit, h, rows)
        return h - self.alpha * (h * u).sum(-1, keepdim=True) * u


@dataclass(eq=False, repr=False)
class Clamp(Intervention):
    """Set the component along ``u = v / ||v||`` to ``value``: ``h + (value - h . u) u``.

    ``value`` is a float or one per row (``[batch]``). ``alpha`` is an alias for ``value``
    in :meth:`with_alpha` (steering curves sweep the clamped value).
    """

    direction: Any
    value: Any = 0.0
    _tensor_fields: ClassVar[tuple[str, ...]] = ("direction",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.direction = as_direction(self.direction)
        self._unit = _unit(self.direction)
        val = torch.as_tensor(self.value, dtype=torch.float32)
        if not torch.isfinite(val).all() or val.ndim > 1:
            raise InterventionError(
                f"Clamp value must be a finite float or one per row; got {self.value!r}"
            )
        self._value = val

    @property
    def alpha(self) -> float:
        return float(self._value) if self._value.ndim == 0 else float("nan")

    def with_alpha(self, alpha: float) -> Intervention:
        return dataclasses.replace(self, value=float(alpha))

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        u = self._per_row(self._unit, h, rows)
        value = self._vec(self._value, h)
        if value.ndim == 1:
            value = value[:, None, None] if rows is None else value[rows][:, None]
        return h + (value - (h * u).sum(-1, keepdim=True)) * u


@dataclass(eq=False, repr=False)
class Swap(Intervention):
    """LRC concept swap (Chanin et al. 2024): ``h + alpha ||h|| (u_to - u_from)``.

    ``v_from``/``v_to`` are normalised (``[d]`` or ``[batch, d]``). ``scale="projection"``
    uses ``h + alpha (h . u_from) (u_to - u_from)`` instead: at ``alpha = 1`` the state's
    component along ``u_from`` is moved onto ``u_to`` (exactly, when they are orthogonal).
    Chanin et al. use ``scale="norm"`` at the subject's last token, ``alpha`` about
    0.05-0.075 at every layer or larger at one layer.
    """

    v_from: Any
    v_to: Any
    alpha: float = 0.05
    scale: Literal["norm", "projection"] = "norm"
    _tensor_fields: ClassVar[tuple[str, ...]] = ("v_from", "v_to")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.v_from = as_direction(self.v_from, "v_from")
        self.v_to = as_direction(self.v_to, "v_to")
        if self.scale not in ("norm", "projection"):
            raise InterventionError(f"scale must be 'norm' or 'projection', got {self.scale!r}")
        if self.v_from.shape[-1] != self.v_to.shape[-1]:
            raise InterventionError(
                f"v_from has size {self.v_from.shape[-1]} but v_to has {self.v_to.shape[-1]}"
            )
        self._u_from = _unit(self.v_from)
        self._delta = _unit(self.v_to) - self._u_from
        self.alpha = _as_alpha(type(self).__name__, self.alpha)

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        delta = self._per_row(self._delta, h, rows)
        if self.scale == "norm":
            size = h.norm(dim=-1, keepdim=True)
        else:
            size = (h * self._per_row(self._u_from, h, rows)).sum(-1, keepdim=True)
        return h + self.alpha * size * delta


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
        self.alpha = _as_alpha(type(self).__name__, self.alpha)
        self._layer_states = type(self.source).__name__ == "LayerStates"
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
        layer = _layer_of(hook)
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
            layer = _layer_of(hook)
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
                mask = _BATCH.get().attention_mask
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

    def _select(self, act: Tensor, call: Any = None) -> _Selection:
        sel = super()._select(act, call)
        defined = call[1]
        if defined is None or sel.kind == "none":
            return sel
        where = sel.as_mask(act.shape[0], act.shape[1], act.device)
        return _Selection("mask", defined if where is None else where & defined)

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        full, _ = call
        s = full if rows is None else full[rows, cols]
        if self.alpha == 1.0:
            return s.clone()
        return h + self.alpha * (s - h)


# ---------------------------------------------------------------------- controls
@dataclass(eq=False, repr=False)
class Placebo(Intervention):
    """Norm-matched placebo: the displacement of ``inner`` with its size kept per position
    and its direction replaced by one fixed random unit vector (seeded).

    ``h + ||f(h) - h|| r`` with ``f`` the wrapped intervention and ``||r|| = 1``. Works for
    any intervention, including :class:`Patch`. Acts where ``inner`` acts.
    """

    inner: Any
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.inner, Mapping):
            self.inner = Intervention.from_dict(self.inner)
        if not isinstance(self.inner, Intervention):
            raise InterventionError(f"Placebo wraps an Intervention, got {type(self.inner)}")
        self.layers = self.inner.layers
        self.site = self.inner.site
        self.positions = self.inner.positions
        super().__post_init__()
        self._r: dict[int, Tensor] = {}

    def hook_names(self, model: Any) -> list[str]:
        return self.inner.hook_names(model)

    def check(self, model: Any) -> None:
        self.inner.check(model)

    def with_alpha(self, alpha: float) -> Intervention:
        return Placebo(self.inner.with_alpha(alpha), seed=self.seed)

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        out = self.inner(activation, hook)
        if out is activation:  # the inner intervention selected nothing in this call
            return activation
        d = activation.shape[-1]
        if d not in self._r:
            g = torch.Generator().manual_seed(self.seed)
            self._r[d] = _unit(torch.randn(d, generator=g))
        r = self._vec(self._r[d], activation)
        size = (out - activation).float().norm(dim=-1, keepdim=True).to(activation.dtype)
        changed = size > 0
        self._count(changed.sum())
        return torch.where(changed, activation + size * r, activation)


def _random_like(v: Tensor, g: torch.Generator, keep_norm: bool = True) -> Tensor:
    r = torch.randn(v.shape, generator=g)
    r = _unit(r)
    return r * v.norm(dim=-1, keepdim=True) if keep_norm else r


def random_control(intervention: Intervention, seed: int = 0) -> Intervention:
    """The same intervention with random direction(s) of equal norm (seeded).

    :class:`Steer`, :class:`Ablate`, :class:`Clamp`: the direction (each row's, when per row)
    is replaced by a Gaussian direction of the same norm. :class:`Swap`: ``v_from``/``v_to``
    become random unit vectors at the same angle, so ``||u_to - u_from||`` (the size of the
    edit) is unchanged. :class:`Patch` has no direction: its control is :func:`placebo`.
    """
    g = torch.Generator().manual_seed(seed)
    iv = intervention
    if isinstance(iv, (Steer, Ablate, Clamp)):
        return dataclasses.replace(iv, direction=_random_like(iv.direction, g))
    if isinstance(iv, Swap):
        uf, ut = _unit(iv.v_from), _unit(iv.v_to)
        if uf.ndim < ut.ndim:
            uf = uf.expand_as(ut)
        elif ut.ndim < uf.ndim:
            ut = ut.expand_as(uf)
        cos = (uf * ut).sum(-1, keepdim=True).clamp(-1, 1)
        a = _unit(torch.randn(uf.shape, generator=g))
        w = torch.randn(uf.shape, generator=g)
        w = _unit(w - (w * a).sum(-1, keepdim=True) * a)
        b = cos * a + torch.sqrt(1 - cos**2) * w
        return dataclasses.replace(iv, v_from=a, v_to=b)
    if isinstance(iv, Patch):
        return Placebo(iv, seed=seed)
    if isinstance(iv, Placebo):
        return Placebo(iv.inner, seed=seed)
    raise InterventionError(f"no random control defined for {type(iv).__name__}")


def placebo(intervention: Intervention, seed: int = 0) -> Placebo:
    """The norm-matched placebo of ``intervention`` (see :class:`Placebo`)."""
    return Placebo(intervention, seed=seed)


# ---------------------------------------------------------------------- intervene
def _flatten(items: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for it in items:
        if isinstance(it, (list, tuple)) and not (
            len(it) == 2 and isinstance(it[0], str) and callable(it[1])
        ):
            out.extend(_flatten(it))
        elif it is not None:
            out.append(it)
    return out


@contextlib.contextmanager
def intervene(
    model: Any,
    *interventions: Any,
    attention_mask: Tensor | None = None,
    prompt_length: int | None = None,
) -> Iterator[list[Any]]:
    """Run any forward (``model(...)``, ``generate``, ``extract_states``) under interventions.

    ``interventions`` are :class:`Intervention` objects, lists of them, or raw
    ``(hook_name, fn)`` pairs. Every hook is validated (size, layer range, site) before any
    is attached; all are removed on exit, also when the block raises; nested blocks stack.
    The attention mask of each forward call is captured for ``positions="last"``; pass
    ``attention_mask``/``prompt_length`` to fix them for calls that do not pass a mask.
    Yields the list of interventions (read their ``n_fired``).
    """
    items = _flatten(interventions)
    hooks: list[tuple[str, Any]] = []
    for it in items:
        if isinstance(it, Intervention):
            hooks.extend(it.fwd_hooks(model))
        elif isinstance(it, tuple) and len(it) == 2 and callable(it[1]):
            hooks.append(it)
        else:
            raise TypeError(
                f"intervene takes Intervention objects or (hook_name, fn) pairs; got {it!r}"
            )
    adapter = adapt(model)
    captured = _install_mask_capture(model)
    try:
        with batch_context(attention_mask, prompt_length), adapter.hooks(hooks):
            yield items
    finally:
        if captured:
            _remove_mask_capture(model)


__all__ = [
    "Ablate",
    "BatchInfo",
    "Clamp",
    "Intervention",
    "InterventionError",
    "Patch",
    "Placebo",
    "Steer",
    "Swap",
    "as_direction",
    "batch_context",
    "current_batch",
    "intervene",
    "placebo",
    "random_control",
    "resolve_positions",
]
