"""Edits along directions: :class:`Steer`, :class:`Ablate`, :class:`Clamp` and the LRC
concept :class:`Swap` (equations in :mod:`semhooks.interventions`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from semhooks.interventions.base import (
    Intervention,
    InterventionError,
    as_alpha,
    as_direction,
    unit_vector,
)

__all__ = ["Ablate", "Clamp", "Steer", "Swap"]


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
        self.alpha = as_alpha(type(self).__name__, self.alpha)

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
        self._unit = unit_vector(self.direction)
        self.alpha = as_alpha(type(self).__name__, self.alpha)

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
        self._unit = unit_vector(self.direction)
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
        self._u_from = unit_vector(self.v_from)
        self._delta = unit_vector(self.v_to) - self._u_from
        self.alpha = as_alpha(type(self).__name__, self.alpha)

    def _edit(
        self, h: Tensor, rows: Tensor | None, cols: Tensor | None, hook: Any, call: Any = None
    ) -> Tensor:
        delta = self._per_row(self._delta, h, rows)
        if self.scale == "norm":
            size = h.norm(dim=-1, keepdim=True)
        else:
            size = (h * self._per_row(self._u_from, h, rows)).sum(-1, keepdim=True)
        return h + self.alpha * size * delta
