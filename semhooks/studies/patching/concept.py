"""Concept-level causality on the patching grid: interchange or swap along a direction.

Instead of replacing a whole activation, a cell moves only its component along a concept
(an LRC :class:`~semhooks.Concept`, a fitted :class:`~semhooks.MeanDifference`, or any
vector or ``[k, d]`` subspace):

- ``kind="interchange"`` (subspace patching; Geiger et al.'s interchange intervention along
  a direction): with ``U`` an orthonormal basis of the subspace (rows),
  ``h_r <- h_r + ((h_s - h_r) U^T) U``: the receiver takes the source's coordinates in the
  subspace and keeps everything orthogonal to it.
- ``kind="swap"``: the receiver alone is edited by a :class:`~semhooks.Swap` (Chanin et al.
  2024): ``h <- h + alpha ||h|| (u_to - u_from)``; no source activation is read.

Every concept grid comes with its controls on the same cells, scored the same way
(0 = corrupted, 1 = clean):

- ``"random"``: the same edit along a random subspace of the same rank (a seeded Gaussian
  basis; for swaps :func:`semhooks.random_control`, same angle between ``u_from``/``u_to``);
- ``"placebo"``: the concept edit's size kept at every vector, its direction replaced by one
  fixed random unit vector (:func:`semhooks.placebo` for swaps).

A concept that is causal moves the metric where its random and placebo controls do not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from semhooks.interventions import Swap, as_direction, placebo, random_control
from semhooks.studies.patching.engine import (
    HEAD_SITES,
    Cell,
    Edit,
    Metric,
    Mode,
    PatchingError,
    prepare,
    resolve_grid,
)
from semhooks.studies.patching.grid import collect, iter_activation_patching, plan_cells
from semhooks.studies.patching.result import PatchingResult


def orthonormal_basis(direction: Any) -> Tensor:
    """``[k, d]`` orthonormal rows spanning ``direction`` (a vector, ``[k, d]``, a fitted
    estimator with ``direction_`` or a concept with ``vector``)."""
    v = as_direction(direction, "direction")
    v = v[None] if v.ndim == 1 else v
    q, r = torch.linalg.qr(v.double().T)
    rank = int((r.diagonal().abs() > 1e-8 * r.diagonal().abs().max()).sum())
    return q[:, :rank].T.float().contiguous()


def interchange_edit(basis: Tensor) -> Edit:
    """``h_r + ((h_s - h_r) U^T) U`` for orthonormal rows ``U``."""

    def edit(recv: Tensor, src: Tensor, cell: Cell) -> Tensor:
        u = basis.to(recv.device, torch.float32)
        d = (src.float() - recv.float()) @ u.T
        return recv.float() + d @ u

    return edit


def placebo_edit(inner: Edit, d_model: int, seed: int) -> Edit:
    """``h + ||f(h) - h|| r``: the size of ``inner``'s edit, a fixed random direction."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(d_model, generator=g)
    r = r / r.norm()

    def edit(recv: Tensor, src: Tensor, cell: Cell) -> Tensor:
        size = (inner(recv, src, cell).float() - recv.float()).norm(dim=-1, keepdim=True)
        return recv.float() + size * r.to(recv.device)

    return edit


def swap_edit(intervention: Any) -> Edit:
    """Apply a semhooks intervention (a :class:`Swap` or its controls) to the vectors."""

    def edit(recv: Tensor, src: Tensor, cell: Cell) -> Tensor:
        return intervention(recv[None])[0]  # type: ignore[no-any-return]

    return edit


def concept_patching(
    model: Any,
    clean: Sequence[str],
    corrupted: Sequence[str],
    metric: Metric,
    direction: Any,
    *,
    kind: Literal["interchange", "swap"] = "interchange",
    site: str = "resid_post",
    layers: Any = "all",
    positions: Sequence[str] | str | None = None,
    mode: Mode = "denoise",
    spans: Sequence[tuple[str, str]] | None = None,
    controls: Sequence[str] = ("random", "placebo"),
    seed: int = 0,
    cells_per_forward: int | None = None,
    progress: bool = True,
) -> PatchingResult:
    """Patch along a concept over layers x positions, with random and placebo controls.

    ``direction``: for ``kind="interchange"`` a vector, a ``[k, d]`` subspace, a fitted
    ``MeanDifference``/``ProbeDirection`` or an LRC ``Concept``; for ``kind="swap"`` a
    :class:`semhooks.Swap` (its ``layers``/``positions`` are ignored: the grid places it).
    Other arguments as :func:`~semhooks.studies.patching.activation_patching`. Returns a
    :class:`PatchingResult` (``method="concept"``) with ``scores["concept"]`` and one grid
    per control, each ``[layer, position]``.
    """
    t0 = time.perf_counter()
    from semhooks.backend.adapter import adapt

    adapter = adapt(model)
    if site in HEAD_SITES:
        raise PatchingError(
            f"concept patching acts on d_model vectors, not the per-head site {site!r}; "
            "choose a residual site"
        )
    for c in controls:
        if c not in ("random", "placebo"):
            raise PatchingError(f"unknown control {c!r}; use 'random' and/or 'placebo'")
    sites, layer_list = resolve_grid(adapter, [site], layers)
    edits: dict[str, Edit] = {}
    if kind == "interchange":
        basis = orthonormal_basis(direction)
        if basis.shape[1] != adapter.d_model:
            raise PatchingError(
                f"direction has size {basis.shape[1]} but {adapter.name} has "
                f"d_model={adapter.d_model}; fit it on this model's states"
            )
        g = torch.Generator().manual_seed(seed)
        rand = orthonormal_basis(torch.randn(basis.shape, generator=g))
        edits["concept"] = interchange_edit(basis)
        if "random" in controls:
            edits["random"] = interchange_edit(rand)
        if "placebo" in controls:
            edits["placebo"] = placebo_edit(edits["concept"], adapter.d_model, seed)
    elif kind == "swap":
        if not isinstance(direction, Swap):
            raise PatchingError(
                f"kind='swap' takes a semhooks.Swap(v_from, v_to, alpha); got "
                f"{type(direction).__name__}"
            )
        if direction.v_from.shape[-1] != adapter.d_model:
            raise PatchingError(
                f"Swap directions have size {direction.v_from.shape[-1]}; {adapter.name} has "
                f"d_model={adapter.d_model}"
            )
        free = Swap(direction.v_from, direction.v_to, direction.alpha, scale=direction.scale)
        edits["concept"] = swap_edit(free)
        if "random" in controls:
            edits["random"] = swap_edit(random_control(free, seed=seed))
        if "placebo" in controls:
            edits["placebo"] = swap_edit(placebo(free, seed=seed))
    else:
        raise PatchingError(f"kind must be 'interchange' or 'swap', got {kind!r}")
    setup = prepare(
        model, clean, corrupted, metric, mode=mode, spans=spans,
        hooks=[(site, layer) for layer in layer_list],
    )  # fmt: skip
    labels = setup.labels(positions)
    cells = plan_cells(sites, layer_list, labels, {})
    parts = {}
    for name, edit in edits.items():
        stream = iter_activation_patching(
            setup, cells, cells_per_forward=cells_per_forward, edit=edit, progress=progress
        )
        parts[name] = collect(setup, sites, layer_list, labels, stream, {}, method="concept")
    result = parts["concept"]
    result.scores = {name: part.scores[site] for name, part in parts.items()}
    result.raw = {name: part.raw[site] for name, part in parts.items()}
    result.provenance |= {"site": site, "kind": kind, "controls": list(controls), "seed": seed}
    result.seconds = time.perf_counter() - t0
    result.n_forwards = setup.n_forwards
    return result
