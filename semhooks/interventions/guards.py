"""Numerical guards: find the hook where non-finite activations (NaN, +-Inf) first appear.

A bad intervention (a huge steering coefficient, a zero-norm direction, a half-precision
overflow) poisons every activation downstream of it, so the useful answer is *where* the
first non-finite value shows up. :class:`FiniteGuard` watches hook points in execution order
and reports the first one whose output is not finite, with its layer, the batch rows and
positions affected and the last hook that was still finite::

    with semhooks.guard_finite(model):              # raises NonFiniteError at the first bad hook
        model(tokens)

    with semhooks.intervene(model, Steer(v, 1e40, layers=2)):
        with semhooks.guard_finite(model, on_nonfinite="record") as guard:
            model(tokens)
    guard.first                                       # NonFiniteReport(hook='blocks.2.hook_resid_post', layer=2, ...)

The guard works with any forward (``model(...)``, ``run_with_hooks``, ``generate``,
:func:`~semhooks.extract_states`). Its hooks are plain PyTorch forward hooks on the
TransformerLens hook points, moved behind every other hook at the start of each forward, so
the value checked at a hook point is the one the rest of the model reads (after any
intervention at that point), whichever order the contexts were entered in. For a bare
``model.run_with_hooks`` in a notebook, :meth:`FiniteGuard.fwd_hooks` gives TransformerLens
hook pairs instead (put them last in ``fwd_hooks``).

Not counted as non-finite: ``-inf`` in attention scores (masking; ``allow_inf``), values at
padding positions when the forward's ``attention_mask`` is known (``attended_only``), and
integer tensors (token ids). Cost: one ``isfinite(...).all()`` per hook point per forward
(a device sync each on GPU), so keep it for debugging runs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.backend.sites import parse_hook_name, site_hook_name

__all__ = ["FiniteGuard", "NonFiniteError", "NonFiniteReport", "guard_finite"]

OnNonFinite = Literal["raise", "record", "warn"]
_MAX_LISTED = 8


@dataclass(frozen=True)
class NonFiniteReport:
    """Where non-finite values first appeared in one forward pass.

    ``rows`` are batch rows holding a bad value; ``positions`` the token positions (dim 1)
    with a bad value in the first of them (both cut to 8 entries). ``previous_hook`` is the
    last hook checked finite before this one in the same forward (``None`` when this was the
    first hook checked). ``text`` is the decoded input of the first bad row, when known.
    """

    hook: str
    layer: int | None
    forward: int
    shape: tuple[int, ...]
    dtype: str
    n_nan: int
    n_posinf: int
    n_neginf: int
    n_values: int
    rows: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()
    previous_hook: str | None = None
    aliases: tuple[str, ...] = ()
    text: str | None = None

    @property
    def where(self) -> str:
        """``"layer 3"``, ``"the embedding"``, or ``"after the last block"``."""
        if self.layer is not None:
            return f"layer {self.layer}"
        if self.hook == "output":
            return "the model output"
        if self.hook.startswith(("embed", "hook_embed", "pos_embed", "hook_pos_embed")):
            return "the embedding"
        return "after the last block" if self.previous_hook else "the first hook"

    def describe(self) -> str:
        counts = f"{self.n_nan} NaN, {self.n_posinf} +Inf, {self.n_neginf} -Inf"
        parts = [
            f"non-finite activations first appear at {self.hook} ({self.where}, forward "
            f"{self.forward}): {counts} among {self.n_values} checked values of a "
            f"{list(self.shape)} {self.dtype} tensor"
        ]
        if self.rows:
            parts.append(f"batch rows {list(self.rows)}")
        if self.positions:
            parts.append(f"positions {list(self.positions)} in row {self.rows[0]}")
        if self.previous_hook:
            parts.append(f"the previous hook checked, {self.previous_hook}, was finite")
        if self.text is not None:
            parts.append(f"text of row {self.rows[0] if self.rows else 0}: {self.text[:80]!r}")
        return (
            "; ".join(parts) + ". A hook or intervention at or just before this point produced "
            "them (e.g. a huge coefficient, a zero-norm direction, a half-precision overflow)."
        )

    def __str__(self) -> str:
        return self.describe()


class NonFiniteError(FloatingPointError):
    """Non-finite activations appeared; ``.report`` says where first."""

    def __init__(self, report: NonFiniteReport):
        super().__init__(report.describe())
        self.report = report


@dataclass
class _Watched:
    name: str
    aliases: tuple[str, ...]
    layer: int | None
    allow_inf: bool


def _canonical(names: list[str]) -> str:
    """The name to report for a hook point with aliases: a semhooks site name if any."""
    for name in names:
        parsed = parse_hook_name(name)
        if parsed.site is not None and parsed.style == "transformer_lens":
            return name
    return names[0]


def _position_dim(x: Tensor, mask: Tensor | None) -> int | None:
    """The token-position dimension of ``x``, when it can be told apart from heads."""
    if mask is not None:
        b, t = mask.shape
        if x.ndim >= 2 and x.shape[0] == b and x.shape[1] == t:
            return 1  # [batch, pos, ...]
        if x.ndim == 4 and x.shape[0] == b and x.shape[2] == t and x.shape[1] != t:
            return 2  # [batch, head, pos, d_head]
        return None
    return 1 if x.ndim == 3 else None  # [batch, pos, d_model]


def _attended(x: Tensor, mask: Tensor | None) -> Tensor | None:
    """A mask broadcastable to ``x`` that keeps attended positions, or None (keep all)."""
    if mask is None:
        return None
    dim = _position_dim(x, mask)
    if dim is None:
        return None
    keep = mask.to(x.device).bool()
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    shape[dim] = x.shape[dim]
    return keep.reshape(shape)


@dataclass
class FiniteGuard:
    """Watch hook points for NaN/Inf and report the first one per forward pass.

    Args:
        hooks: ``"all"`` (every hook point), ``"blocks"`` (the semhooks sites
            resid_pre/attn_out/resid_mid/mlp_out/resid_post of every layer), or a list of
            hook names.
        on_nonfinite: ``"raise"`` :class:`NonFiniteError` at the first bad hook (stopping
            the forward), ``"record"`` it in :attr:`reports`, or ``"warn"`` and record.
        allow_inf: hook-name fragments where ``-inf``/``+inf`` are legitimate (masked
            attention scores); NaN is still reported there.
        attended_only: ignore padding positions when the forward's ``attention_mask`` is
            known (``[batch, pos]`` tensors and wider ones that start with those dims).
    """

    hooks: str | Sequence[str] = "all"
    on_nonfinite: OnNonFinite = "raise"
    allow_inf: Sequence[str] = ("attn_scores",)
    attended_only: bool = True
    reports: list[NonFiniteReport] = field(default_factory=list, init=False)
    n_checked: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.on_nonfinite not in ("raise", "record", "warn"):
            raise ValueError(
                f"on_nonfinite must be 'raise', 'record' or 'warn', got {self.on_nonfinite!r}"
            )
        self._forward = -1
        self._bad_in_forward = False
        self._previous: str | None = None
        self._mask: Tensor | None = None
        self._ids: Tensor | None = None
        self._tokenizer: Any = None

    # ------------------------------------------------------------------ results
    @property
    def first(self) -> NonFiniteReport | None:
        """The first report since the guard was created or :meth:`reset`."""
        return self.reports[0] if self.reports else None

    @property
    def ok(self) -> bool:
        return not self.reports

    def raise_if_found(self) -> None:
        if self.reports:
            raise NonFiniteError(self.reports[0])

    def reset(self) -> None:
        self.reports.clear()
        self.n_checked = 0
        self._forward = -1
        self.new_forward()

    def new_forward(
        self, attention_mask: Tensor | None = None, input_ids: Tensor | None = None
    ) -> None:
        """Start a new forward pass (called for you when the guard is attached)."""
        self._forward += 1
        self._bad_in_forward = False
        self._previous = None
        self._mask = attention_mask if isinstance(attention_mask, Tensor) else None
        self._ids = input_ids if isinstance(input_ids, Tensor) else None

    # ------------------------------------------------------------------ which hooks
    def _watch_list(self, model: Any) -> list[tuple[Any, _Watched]]:
        hook_dict = getattr(model, "hook_dict", None)
        if not hook_dict:
            raise TypeError(
                f"guard_finite needs a TransformerLens model with hook points; got "
                f"{type(model).__name__}"
            )
        by_module: dict[int, tuple[Any, list[str]]] = {}
        for name, hp in hook_dict.items():
            by_module.setdefault(id(hp), (hp, []))[1].append(name)
        if isinstance(self.hooks, str):
            if self.hooks == "all":
                wanted = None
            elif self.hooks == "blocks":
                adapter = adapt(model)
                wanted = set()
                for layer in range(adapter.n_layers):
                    for site in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
                        name = site_hook_name(site, layer)
                        if name in hook_dict:
                            wanted.add(name)
            else:
                raise ValueError(
                    f"hooks must be 'all', 'blocks' or a list of hook names; got {self.hooks!r}"
                )
        else:
            wanted = set(self.hooks)
            unknown = sorted(wanted - set(hook_dict))
            if unknown:
                raise ValueError(
                    f"unknown hook names {unknown[:5]}; the model has e.g. {list(hook_dict)[:5]}"
                )
        out = []
        for hp, names in by_module.values():
            if wanted is not None and not wanted & set(names):
                continue
            name = _canonical(names)
            out.append(
                (
                    hp,
                    _Watched(
                        name,
                        tuple(n for n in names if n != name),
                        parse_hook_name(name).layer,
                        any(fragment in n for n in names for fragment in self.allow_inf),
                    ),
                )
            )
        return out

    # ------------------------------------------------------------------ the check
    def check(self, activation: Any, watched: _Watched) -> None:
        """Check one hook point's output; report (and maybe raise) if it is not finite."""
        if not isinstance(activation, Tensor) or not activation.is_floating_point():
            return
        if self._bad_in_forward and self.on_nonfinite != "raise":
            return
        self.n_checked += 1
        x = activation.detach()
        if bool(torch.isfinite(x).all()):
            self._previous = watched.name
            return
        bad = torch.isnan(x) if watched.allow_inf else ~torch.isfinite(x)
        keep = _attended(x, self._mask) if self.attended_only else None
        if keep is not None:
            bad = bad & keep
            n_values = int(keep.expand_as(x).sum())
        else:
            n_values = x.numel()
        if not bool(bad.any()):
            self._previous = watched.name
            return
        report = self._report(x, bad, n_values, watched)
        self._bad_in_forward = True
        self.reports.append(report)
        if self.on_nonfinite == "raise":
            raise NonFiniteError(report)
        if self.on_nonfinite == "warn":
            warnings.warn(report.describe(), RuntimeWarning, stacklevel=2)

    def _report(self, x: Tensor, bad: Tensor, n_values: int, watched: _Watched) -> NonFiniteReport:
        rows: tuple[int, ...] = ()
        positions: tuple[int, ...] = ()
        if x.ndim >= 2:
            per_row = bad.reshape(x.shape[0], -1).any(-1)
            rows = tuple(per_row.nonzero().flatten()[:_MAX_LISTED].tolist())
            pos_dim = _position_dim(x, self._mask)
            if rows and pos_dim is not None:
                row_bad = bad[rows[0]].movedim(pos_dim - 1, 0).reshape(x.shape[pos_dim], -1)
                positions = tuple(row_bad.any(-1).nonzero().flatten()[:_MAX_LISTED].tolist())
        text = None
        if self._ids is not None and self._tokenizer is not None and x.ndim >= 2:
            row = rows[0] if rows else 0
            if row < self._ids.shape[0]:
                ids = self._ids[row]
                if self._mask is not None and tuple(self._mask.shape) == tuple(self._ids.shape):
                    ids = ids[self._mask[row].bool().to(ids.device)]
                with contextlib.suppress(Exception):
                    text = str(self._tokenizer.decode(ids.tolist(), skip_special_tokens=True))
        sel = bad
        return NonFiniteReport(
            hook=watched.name,
            layer=watched.layer,
            forward=max(self._forward, 0),
            shape=tuple(x.shape),
            dtype=str(x.dtype).replace("torch.", ""),
            n_nan=int((torch.isnan(x) & sel).sum()),
            n_posinf=int((torch.isposinf(x) & sel).sum()),
            n_neginf=int((torch.isneginf(x) & sel).sum()),
            n_values=n_values,
            rows=rows,
            positions=positions,
            previous_hook=self._previous,
            aliases=watched.aliases,
            text=text,
        )

    # ------------------------------------------------------------------ as TL hooks
    def fwd_hooks(self, model: Any) -> list[tuple[str, Any]]:
        """``[(hook_name, fn), ...]`` for ``model.run_with_hooks``/``model.hooks``.

        List them *after* any hook that edits activations (TransformerBridge squeezes a
        batch of one to ``[pos, d]`` before plain hooks see it). Without :meth:`attach` the
        guard cannot see where one forward ends: call :meth:`new_forward` between calls
        to get one report per forward (otherwise only the first is kept).
        """
        self._tokenizer = getattr(model, "tokenizer", None)
        watch = self._watch_list(model)
        adapter = adapt(model)
        pairs = []
        for hp, watched in watch:
            # TransformerBridge refuses hooks on points it has switched off (use_hook_mlp_in...).
            if adapter.hook_gated_reason(getattr(hp, "name", None) or watched.name) is not None:
                continue

            def fn(activation: Tensor, hook: Any = None, _w: _Watched = watched) -> None:
                self.check(activation, _w)

            pairs.append((watched.name, fn))
        return pairs

    # ------------------------------------------------------------------ attached
    @contextlib.contextmanager
    def attach(self, model: Any) -> Iterator[FiniteGuard]:
        """Watch every forward of ``model`` inside the block; hooks always removed."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"guard_finite needs a torch model, got {type(model).__name__}")
        watch = self._watch_list(model)
        adapter = adapt(model)
        self._tokenizer = getattr(model, "tokenizer", None)
        handles: list[tuple[Any, Any]] = []

        def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            ids = args[0] if args else kwargs.get("input")
            self.new_forward(kwargs.get("attention_mask"), ids if isinstance(ids, Tensor) else None)
            # Run after every other hook at each point: check what the model goes on to read.
            for hp, handle in handles:
                adapter.move_hook_last(hp, handle)

        output = _Watched("output", (), None, False)

        def post(module: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
            logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
            if logits is not None:
                self.check(logits, output)

        try:
            for hp, watched in watch:

                def hook(module: Any, inputs: Any, out: Any, _w: _Watched = watched) -> None:
                    self.check(out, _w)

                handles.append((hp, hp.register_forward_hook(hook)))
            model_handles = [
                model.register_forward_pre_hook(pre, with_kwargs=True),
                model.register_forward_hook(post, with_kwargs=True),
            ]
            try:
                yield self
            finally:
                for h in model_handles:
                    h.remove()
        finally:
            for _, handle in handles:
                handle.remove()


@contextlib.contextmanager
def guard_finite(
    model: Any,
    hooks: str | Sequence[str] = "all",
    *,
    on_nonfinite: OnNonFinite = "raise",
    allow_inf: Sequence[str] = ("attn_scores",),
    attended_only: bool = True,
) -> Iterator[FiniteGuard]:
    """Watch ``model`` for NaN/Inf inside the block; see :class:`FiniteGuard`.

    Yields the guard: ``guard.first`` is the first :class:`NonFiniteReport` (``None`` when
    everything stayed finite), ``guard.reports`` one per forward that went non-finite.
    """
    target = adapt(model).model
    guard = FiniteGuard(hooks, on_nonfinite, allow_inf, attended_only)
    with guard.attach(target):
        yield guard
