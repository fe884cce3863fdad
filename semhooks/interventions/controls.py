"""Controls: :func:`random_control` (the same intervention along random directions of
equal norm) and :class:`Placebo` (the same size of edit, a fixed random direction)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from semhooks.interventions.base import Intervention, InterventionError, unit_vector
from semhooks.interventions.edits import Ablate, Clamp, Steer, Swap
from semhooks.interventions.patch import Patch

__all__ = ["Placebo", "placebo", "random_control"]


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
            self._r[d] = unit_vector(torch.randn(d, generator=g))
        r = self._vec(self._r[d], activation)
        size = (out - activation).float().norm(dim=-1, keepdim=True).to(activation.dtype)
        changed = size > 0
        self._count(changed.sum())
        return torch.where(changed, activation + size * r, activation)


def _random_like(v: Tensor, g: torch.Generator, keep_norm: bool = True) -> Tensor:
    r = torch.randn(v.shape, generator=g)
    r = unit_vector(r)
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
        uf, ut = unit_vector(iv.v_from), unit_vector(iv.v_to)
        if uf.ndim < ut.ndim:
            uf = uf.expand_as(ut)
        elif ut.ndim < uf.ndim:
            ut = ut.expand_as(uf)
        cos = (uf * ut).sum(-1, keepdim=True).clamp(-1, 1)
        a = unit_vector(torch.randn(uf.shape, generator=g))
        w = torch.randn(uf.shape, generator=g)
        w = unit_vector(w - (w * a).sum(-1, keepdim=True) * a)
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
