"""The shared part of the mutual-information estimators: input checks and the estimator base.

Every estimator here is a :class:`sklearn.base.BaseEstimator` (parameters read from the
``__init__`` signature, so ``get_params``/``set_params``/``clone``/``repr`` come from
scikit-learn) and refuses use before ``fit`` with :class:`sklearn.exceptions.NotFittedError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

__all__ = [
    "LN2",
    "MIN_EVAL",
    "MIN_TRAIN",
    "ArrayLike2D",
    "MIBase",
    "MIEstimator",
    "NotFittedError",
    "as_2d",
    "check_pair",
    "standardize",
    "varying",
]

ArrayLike2D: TypeAlias = "Tensor | np.ndarray"

LN2 = math.log(2.0)
# Smallest held-out split a neural estimator accepts: below this the held-out estimate is
# noise and log2(n_eval) is a ceiling of a few bits.
MIN_EVAL = 16
MIN_TRAIN = 32


class MIEstimator(Protocol):
    """Anything with ``fit(x, y) -> self`` and a fitted ``mi_`` in bits."""

    mi_: float

    def fit(self, x: Any, y: Any) -> Any: ...


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def as_2d(name: str, a: Any, who: str, dtype: torch.dtype) -> Tensor:
    if isinstance(a, Tensor):
        t = a.detach().to("cpu")
    elif isinstance(a, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
    else:
        raise ValueError(
            f"{who}.fit: {name} must be a torch.Tensor or numpy.ndarray of shape [n, d]; "
            f"got {type(a).__name__}."
        )
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{who}.fit: {name} must be real-valued; got dtype {t.dtype}.")
    if t.ndim != 2:
        hint = f" For a single feature use {name}.reshape(-1, 1)." if t.ndim == 1 else ""
        raise ValueError(
            f"{who}.fit: {name} must be 2-D [n_samples, n_features]; got shape "
            f"{tuple(t.shape)} ({t.ndim}-D).{hint}"
        )
    if t.shape[1] == 0:
        raise ValueError(f"{who}.fit: {name} has no features (shape {tuple(t.shape)}).")
    t = t.to(dtype)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad_rows = (~finite).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{who}.fit: {name} contains non-finite values (NaN or inf) in "
            f"{bad_rows.numel()} of {t.shape[0]} rows (first: row {int(bad_rows[0])}). "
            f"Drop or impute those rows in both x and y."
        )
    return t


def check_pair(
    x: Any,
    y: Any,
    *,
    who: str,
    min_samples: Callable[[int, int], int],
    dtype: torch.dtype,
    hint: str = "",
) -> tuple[Tensor, Tensor]:
    xt = as_2d("x", x, who, dtype)
    yt = as_2d("y", y, who, dtype)
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(
            f"{who}.fit: x and y must hold the same number of paired samples (rows); got "
            f"x {tuple(xt.shape)} and y {tuple(yt.shape)}."
        )
    n, needed = xt.shape[0], min_samples(xt.shape[1], yt.shape[1])
    if n < needed:
        raise ValueError(
            f"{who}.fit: too few samples: got n={n} pairs, need at least {needed} for "
            f"dx={xt.shape[1]}, dy={yt.shape[1]} with these settings.{hint}"
        )
    return xt, yt


def varying(a: Tensor) -> Tensor:
    """Columns of ``a`` that vary by more than rounding of their values: ``[d]`` bool.

    Scale-free: a feature measured in units of 1e-13 varies as much as one in units of 1
    (an absolute threshold such as ``std > 1e-12`` called it constant). Only spread at
    the level of floating-point rounding of the column's magnitude counts as constant.
    """
    std = a.std(dim=0)
    size = a.abs().amax(dim=0)
    eps = torch.finfo(a.dtype).eps
    return std > 8 * eps * size


def standardize(a: Tensor, ref: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """z-score ``a`` with the mean and std of ``ref`` (default: ``a``); constant columns -> 0."""
    ref = a if ref is None else ref
    mean = ref.mean(dim=0)
    std = ref.std(dim=0)
    scale = torch.where(varying(ref), std, torch.ones_like(std))
    return (a - mean) / scale, mean, scale


# --------------------------------------------------------------------------------------------
# scikit-learn parameter protocol without importing scikit-learn
# --------------------------------------------------------------------------------------------


class MIBase(BaseEstimator):
    """scikit-learn's estimator contract for the MI estimators: ``fit(x, y)`` sets ``mi_``."""

    def _check_fitted(self, what: str) -> None:
        check_is_fitted(
            self,
            "mi_",
            msg=f"This %(name)s is not fitted yet; call fit(x, y) before {what}.",
        )
