"""WiC readouts: anisotropy z-scoring, cosine scores, thresholds chosen on a fit split, and
the pair features ``[|a - b|, a * b]`` of the probe readout (Liu et al. 2024; METHODS.md 2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "DEFAULT_GRID",
    "ThresholdFit",
    "choose_threshold",
    "cosine_scores",
    "pair_features",
    "zscore_stats",
]

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(20))
"""Threshold grid 0.00, 0.05, ..., 0.95."""


def zscore_stats(
    vectors: Float[Tensor, "layer pair 2 d"], eps: float = 1e-6
) -> tuple[Float[Tensor, "layer d"], Float[Tensor, "layer d"]]:
    """Per-layer mean and standard deviation of each dimension over all ``2 * pair`` vectors.

    Returns ``(mean, std)``, each ``[layer, d]``; ``eps`` is added to the std so constant
    dimensions do not divide by zero.
    """
    flat = vectors.reshape(vectors.shape[0], -1, vectors.shape[-1]).double()
    return flat.mean(1).float(), (flat.std(1, unbiased=False) + eps).float()


def cosine_scores(
    vectors: Float[Tensor, "layer pair 2 d"],
    *,
    standardize: bool = True,
    stats: tuple[Tensor, Tensor] | None = None,
) -> Float[Tensor, "layer pair"]:
    """``cos(z(a), z(b))`` per layer and pair, with ``z(x) = (x - mean) / std`` per dimension.

    Args:
        vectors: ``[layer, pair, 2, d]`` target vectors (sentence 1, sentence 2).
        standardize: apply the z-score (anisotropy removal); False gives the raw cosine.
        stats: ``(mean, std)`` each ``[layer, d]`` (e.g. from a reference set via
            :func:`zscore_stats`); default: the statistics of ``vectors`` themselves.
    """
    x = vectors.float()
    if standardize:
        mean, std = stats if stats is not None else zscore_stats(x)
        x = (x - mean[:, None, None, :]) / std[:, None, None, :]
    return torch.nn.functional.cosine_similarity(x[:, :, 0], x[:, :, 1], dim=-1)


def pair_features(
    vectors: Float[Tensor, "layer pair 2 d"],
    *,
    standardize: bool = True,
    stats: tuple[Tensor, Tensor] | None = None,
) -> Float[Tensor, "layer pair feature"]:
    """Probe features ``[|a - b|, a * b]`` (``2 d`` per pair) of optionally z-scored vectors."""
    x = vectors.float()
    if standardize:
        mean, std = stats if stats is not None else zscore_stats(x)
        x = (x - mean[:, None, None, :]) / std[:, None, None, :]
    a, b = x[:, :, 0], x[:, :, 1]
    return torch.cat([(a - b).abs(), a * b], dim=-1)


@dataclass(frozen=True)
class ThresholdFit:
    """A decision threshold: predict True when ``score > threshold``.

    Attributes:
        threshold: the cut.
        accuracy: accuracy on the data it was chosen on.
    """

    threshold: float
    accuracy: float

    def predict(self, scores: Any) -> npt.NDArray[np.bool_]:
        return np.asarray(scores, dtype=np.float64) > self.threshold


def choose_threshold(
    scores: Any,
    labels: Any,
    method: Literal["grid", "optimal"] = "grid",
    grid: Sequence[float] | None = None,
) -> ThresholdFit:
    """The threshold with the best accuracy of ``score > threshold`` against ``labels``.

    Args:
        scores: ``[n]`` similarity scores.
        labels: ``[n]`` booleans (True = same sense).
        method: ``"grid"``: the best value of ``grid`` (default 0.00 .. 0.95, step 0.05, as in
            Liu et al. 2024); ``"optimal"``: the accuracy-optimal cut over all distinct scores
            (midpoints between consecutive sorted scores, or just below/above all of them).
        grid: the candidate thresholds for ``method="grid"``.

    Ties go to the smallest threshold.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.size == 0:
        raise ValueError("cannot choose a threshold on zero scores (empty dataset)")
    if y.shape != s.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels; give one label per score")
    if y.dtype != bool:
        if not np.isin(y, [0, 1]).all():
            raise ValueError("labels must be booleans (or 0/1)")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    if method == "grid":
        cand = np.asarray(DEFAULT_GRID if grid is None else list(grid), dtype=np.float64)
        if cand.size == 0:
            raise ValueError("empty threshold grid")
        acc = ((s[None, :] > cand[:, None]) == y[None, :]).mean(1)
        best = int(np.argmax(acc))
        return ThresholdFit(float(cand[best]), float(acc[best]))
    if method != "optimal":
        raise ValueError(f"unknown threshold method {method!r}; use 'grid' or 'optimal'")
    order = np.argsort(s, kind="stable")
    ss, yy = s[order], y[order]
    n = s.size
    # cutting after the first k sorted scores predicts False for them and True for the rest
    false_below = np.concatenate([[0], np.cumsum(~yy)])
    true_above = np.concatenate([np.cumsum(yy[::-1])[::-1], [0]])
    correct = false_below + true_above  # k = 0 .. n
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = ss[1:] > ss[:-1]  # a cut between equal scores is impossible
    correct = np.where(valid, correct, -1)
    k = int(np.argmax(correct))
    if k == 0:
        threshold = float(ss[0]) - 1e-6 * max(1.0, abs(float(ss[0])))
    elif k == n:
        threshold = float(ss[-1])
    else:
        threshold = float((ss[k - 1] + ss[k]) / 2)
    return ThresholdFit(threshold, float(correct[k]) / n)
