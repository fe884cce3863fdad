"""Validation harness: correlated Gaussians with a known MI, and an estimator's error on them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from semhooks.estimators.mi.base import LN2, MIEstimator

__all__ = [
    "ValidationRow",
    "correlated_gaussians",
    "validate_estimator",
    "validation_table_markdown",
]


def correlated_gaussians(
    n: int, dim: int, mi_bits: float, seed: int = 0
) -> tuple[Float[Tensor, "n dim"], Float[Tensor, "n dim"], float]:
    r"""Pairs ``(x, y)`` of standard Gaussians with a known mutual information.

    ``x ~ N(0, I_dim)`` and ``y = ρ x + sqrt(1-ρ²) ε`` with ``ε ~ N(0, I_dim)``, the same ``ρ`` in
    every dimension, chosen so that

    .. math:: I(X;Y) = -\tfrac12 \sum_{i=1}^{dim} \log_2(1-\rho^2) = \text{mi\_bits},
       \quad \rho^2 = 1 - 2^{-2\,\text{mi\_bits}/dim}.

    ``mi_bits = 0`` gives independent pairs.

    Returns:
        ``x: [n, dim]``, ``y: [n, dim]`` (float32) and the true MI in bits.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"correlated_gaussians: n and dim must be >= 1; got n={n}, dim={dim}.")
    if not (mi_bits >= 0.0 and math.isfinite(mi_bits)):
        raise ValueError(f"correlated_gaussians: mi_bits must be finite and >= 0; got {mi_bits}.")
    rho = math.sqrt(-math.expm1(-2.0 * mi_bits * LN2 / dim))
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    eps = torch.randn(n, dim, generator=g, dtype=torch.float64)
    # sqrt(1 - rho^2) = 2^(-mi/dim), computed directly so large MI keeps its precision
    y = rho * x + 2.0 ** (-mi_bits / dim) * eps
    return x.float(), y.float(), float(mi_bits)


@dataclass(frozen=True)
class ValidationRow:
    """One cell of :func:`validate_estimator`: an estimate against the truth (bits)."""

    estimator: str
    dim: int
    n: int
    true_bits: float
    estimate_bits: float
    error_bits: float
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process (all threads); fairer on a shared machine


def validate_estimator(
    estimator_factory: Callable[[], MIEstimator],
    dims: Sequence[int],
    mi_values: Sequence[float],
    n: int = 4000,
    seed: int = 0,
    name: str | None = None,
) -> list[ValidationRow]:
    """Fit a fresh estimator on :func:`correlated_gaussians` for every ``(dim, mi)`` cell.

    Args:
        estimator_factory: zero-argument callable returning an unfitted estimator (a class
            or a ``lambda: MINE(max_steps=500)``).
        dims: dimensions of x and y.
        mi_values: true MI values in bits (0 gives independent pairs).
        n: pairs per cell.
        seed: base seed; each cell's data seed is derived from it, its dim and its MI index.
        name: label for the rows (default: the estimator's class name).

    Returns:
        One :class:`ValidationRow` per cell, ``error_bits = estimate - true``.
    """
    rows: list[ValidationRow] = []
    for dim in dims:
        for j, mi in enumerate(mi_values):
            x, y, true_bits = correlated_gaussians(
                n, dim, mi, seed=seed * 1_000_003 + dim * 1_009 + j
            )
            est = estimator_factory()
            t0, c0 = time.perf_counter(), time.process_time()
            est.fit(x, y)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append(
                ValidationRow(
                    estimator=name or type(est).__name__,
                    dim=dim,
                    n=n,
                    true_bits=true_bits,
                    estimate_bits=float(est.mi_),
                    error_bits=float(est.mi_) - true_bits,
                    seconds=secs,
                    cpu_seconds=cpu,
                )
            )
    return rows


def validation_table_markdown(rows: Sequence[ValidationRow]) -> str:
    """A markdown table of validation rows (estimator, dim, n, true, estimate, error, times)."""
    lines = [
        "| estimator | dim | n | true (bits) | estimate (bits) | error (bits) "
        "| CPU time (s) | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.estimator} | {r.dim} | {r.n} | {r.true_bits:.2f} | {r.estimate_bits:.2f} "
            f"| {r.error_bits:+.2f} | {r.cpu_seconds:.1f} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)
