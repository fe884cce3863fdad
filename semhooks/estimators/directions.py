"""Directions from data, scikit-learn style: ``fit(X, y)`` then ``direction_``.

- :class:`MeanDifference`: ``v = mean(X[y = pos]) - mean(X[y != pos])`` (the class-mean gap;
  not normalised by default, so ``Steer(v, alpha=1)`` moves a state by one gap).
- :class:`ProbeDirection`: the weight vector ``w`` of an L2 logistic-regression probe
  ``p(pos | x) = sigmoid(w . x + b)``, normalised to unit length by default.
- :class:`PCADirection`: the first principal direction of paired differences
  ``d_k = x_k^pos - x_k^neg`` (the top right singular vector of the uncentred difference
  matrix by default, so a consistent shift is found even when all differences agree),
  oriented so that the mean difference projects positively.

``X`` is ``[n, d_model]`` (tensor or array) or a :class:`semhooks.LayerStates` together with
the estimator's ``layer``. ``direction_`` is a float32 CPU tensor ``[d_model]``, accepted by
every intervention (``Steer(est, alpha)`` or ``Steer(est.direction_, alpha)``). Linear
algebra runs in float64 on CPU whatever the model's dtype.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from semhooks.io.artifacts import load_artifact, save_artifact


def _as_matrix(X: Any, layer: int | None, who: str) -> tuple[np.ndarray, dict[str, Any]]:
    """``[n, d]`` float64 array from a tensor, an array or LayerStates at ``layer``."""
    from semhooks.extraction.states import LayerStates

    info: dict[str, Any] = {}
    if isinstance(X, LayerStates):
        if layer is None:
            raise ValueError(
                f"{who} got LayerStates holding layers {X.layers}; say which one with "
                f"{who}(layer=...)"
            )
        if X.item_index is not None:
            raise ValueError(
                f"{who} needs one state per item; these LayerStates are token-level "
                "(pool=None): pool them first with .repool('mean') or extract with pool=..."
            )
        info = {"layer": int(layer), "site": X.site, "pool": X.pool, "tokens": X.tokens}
        info["provenance"] = dict(X.provenance)
        X = X.layer(layer)
    if isinstance(X, Tensor):
        arr = X.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{who} needs X of shape [n_items, d_model]; got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{who}: X has NaN or inf entries")
    return arr, info


def _binary_labels(y: Any, n: int, pos_label: Any, who: str) -> np.ndarray:
    if y is None:
        raise ValueError(f"{who}.fit needs labels y (1 / pos_label for the positive class)")
    labels = np.asarray(y.cpu() if isinstance(y, Tensor) else y)
    if labels.shape != (n,):
        raise ValueError(f"{who}: y has shape {labels.shape}, expected ({n},) to match X")
    pos = labels == pos_label
    if pos.all() or not pos.any():
        raise ValueError(
            f"{who}: y must contain both the positive class ({pos_label!r}) and at least one "
            f"other label; got {sorted(set(labels.tolist()))[:5]}"
        )
    return pos


class _Direction(TransformerMixin, BaseEstimator):
    """Shared behaviour: refusal before fit, projection, save/load."""

    _kind = "Direction"

    def _check_fitted(self) -> None:
        check_is_fitted(
            self,
            "direction_",
            msg=f"this {type(self).__name__} is not fitted yet; call fit(X, y) before using it",
        )

    @property
    def vector(self) -> Float[Tensor, " d_model"]:
        """Alias of ``direction_`` (the name LRC concepts use)."""
        self._check_fitted()
        return self.direction_

    @property
    def unit_(self) -> Float[Tensor, " d_model"]:
        self._check_fitted()
        return self.direction_ / self.direction_.norm()

    def _finish(self, v: np.ndarray, info: dict[str, Any], n: int) -> None:
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError(
                f"{type(self).__name__} found a zero direction (the two classes have the same "
                "mean/identical states); check the labels and the layer"
            )
        self.norm_ = norm
        if getattr(self, "normalize", False):
            v = v / norm
        self.direction_ = torch.as_tensor(v, dtype=torch.float32)
        self.n_features_in_ = int(v.shape[0])
        self.n_samples_ = int(n)
        self.source_ = info

    def transform(self, X: Any) -> np.ndarray:
        """Projection on the unit direction: ``[n, 1]`` (``x . v / ||v||``)."""
        self._check_fitted()
        arr, _ = _as_matrix(X, getattr(self, "layer", None), type(self).__name__)
        if arr.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {arr.shape[1]} features but this direction has {self.n_features_in_}"
            )
        u = self.unit_.double().numpy()
        return (arr @ u)[:, None]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomic safetensors + JSON (hyper-parameters, source layer/site, provenance)."""
        self._check_fitted()
        meta = {
            "estimator": type(self).__name__,
            "params": self.get_params(),
            "norm": self.norm_,
            "n_samples": self.n_samples_,
            "source": self.source_,
            "provenance": self.source_.get("provenance", {}),
        }
        return save_artifact(path, self._kind, {"direction": self.direction_}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> _Direction:
        tensors, meta = load_artifact(path, cls._kind)
        if meta.get("estimator") != cls.__name__:
            raise ValueError(f"{path} holds a {meta.get('estimator')}, not a {cls.__name__}")
        est = cls(**meta["params"])
        est.direction_ = tensors["direction"]
        est.norm_ = float(meta["norm"])
        est.n_features_in_ = int(est.direction_.shape[0])
        est.n_samples_ = int(meta["n_samples"])
        est.source_ = dict(meta.get("source", {}))
        return est


class MeanDifference(_Direction):
    """``v = mean(X[y == pos_label]) - mean(X[y != pos_label])`` at ``layer``.

    Parameters: ``layer`` (used when ``X`` is LayerStates), ``pos_label``, ``normalize``
    (unit length; default False keeps the class-mean gap). Learned: ``direction_`` ``[d]``,
    ``norm_`` (length of the raw gap), ``mean_pos_``, ``mean_neg_``.
    """

    _kind = "MeanDifference"

    def __init__(self, layer: int | None = None, pos_label: Any = 1, normalize: bool = False):
        self.layer = layer
        self.pos_label = pos_label
        self.normalize = normalize

    def fit(self, X: Any, y: Any) -> MeanDifference:
        arr, info = _as_matrix(X, self.layer, "MeanDifference")
        pos = _binary_labels(y, arr.shape[0], self.pos_label, "MeanDifference")
        self.mean_pos_ = torch.as_tensor(arr[pos].mean(0), dtype=torch.float32)
        self.mean_neg_ = torch.as_tensor(arr[~pos].mean(0), dtype=torch.float32)
        self._finish(arr[pos].mean(0) - arr[~pos].mean(0), info, arr.shape[0])
        return self


class ProbeDirection(_Direction):
    """Weight vector of a logistic-regression probe: ``p(pos | x) = sigmoid(w . x + b)``.

    Parameters: ``layer``, ``C`` (inverse L2 strength), ``pos_label``, ``normalize`` (unit
    ``w``, default True: the raw norm depends on ``C``), ``max_iter``. Learned:
    ``direction_`` (points towards the positive class), ``norm_`` (``||w||``), ``probe_``
    (the fitted ``LogisticRegression``: ``predict``/``score`` go through it).
    """

    _kind = "ProbeDirection"

    def __init__(
        self,
        layer: int | None = None,
        C: float = 1.0,
        pos_label: Any = 1,
        normalize: bool = True,
        max_iter: int = 2000,
    ):
        self.layer = layer
        self.C = C
        self.pos_label = pos_label
        self.normalize = normalize
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any) -> ProbeDirection:
        from sklearn.linear_model import LogisticRegression

        arr, info = _as_matrix(X, self.layer, "ProbeDirection")
        pos = _binary_labels(y, arr.shape[0], self.pos_label, "ProbeDirection")
        probe = LogisticRegression(C=self.C, max_iter=self.max_iter)
        probe.fit(arr, pos.astype(int))
        self.probe_ = probe
        self._finish(probe.coef_[0].copy(), info, arr.shape[0])
        return self

    def predict(self, X: Any) -> np.ndarray:
        """1 where the probe says positive."""
        self._check_fitted()
        arr, _ = _as_matrix(X, self.layer, "ProbeDirection")
        return self.probe_.predict(arr)

    def score(self, X: Any, y: Any) -> float:
        """Probe accuracy on ``(X, y)``."""
        self._check_fitted()
        arr, _ = _as_matrix(X, self.layer, "ProbeDirection")
        pos = np.asarray(y.cpu() if isinstance(y, Tensor) else y) == self.pos_label
        return float(self.probe_.score(arr, pos.astype(int)))


class PCADirection(_Direction):
    """First principal direction of paired differences ``d_k = x_k^pos - x_k^neg``.

    ``fit(X, y)`` pairs the k-th positive row with the k-th negative row (equal counts, in
    order); ``fit(D)`` (``y=None``) takes the differences ``D [n_pairs, d]`` directly.
    ``center=False`` (default) takes the top right singular vector of ``D`` itself, which
    maximises the mean squared projection ``mean_k (d_k . u)^2`` and so finds a consistent
    shift; ``center=True`` subtracts the mean difference first (the direction of largest
    variance). The sign is chosen so that ``mean_k d_k . u > 0``. Learned: ``direction_``
    (unit by default; with ``normalize=False`` its length is the RMS projection),
    ``explained_variance_ratio_`` (share of ``sum ||d_k||^2`` along ``u``).
    """

    _kind = "PCADirection"

    def __init__(
        self,
        layer: int | None = None,
        pos_label: Any = 1,
        center: bool = False,
        normalize: bool = True,
    ):
        self.layer = layer
        self.pos_label = pos_label
        self.center = center
        self.normalize = normalize

    def fit(self, X: Any, y: Any = None) -> PCADirection:
        arr, info = _as_matrix(X, self.layer, "PCADirection")
        if y is None:
            diffs = arr
        else:
            pos = _binary_labels(y, arr.shape[0], self.pos_label, "PCADirection")
            if pos.sum() != (~pos).sum():
                raise ValueError(
                    f"PCADirection pairs positives with negatives in order, so it needs as "
                    f"many of each; got {int(pos.sum())} positive and {int((~pos).sum())} "
                    "negative (or pass the differences with y=None)"
                )
            diffs = arr[pos] - arr[~pos]
        if diffs.shape[0] < 2 and self.center:
            raise ValueError("PCADirection(center=True) needs at least 2 pairs")
        mat = diffs - diffs.mean(0) if self.center else diffs
        _, s, vt = np.linalg.svd(mat, full_matrices=False)
        u = vt[0]
        if diffs.mean(0) @ u < 0:
            u = -u
        total = float((s**2).sum())
        self.explained_variance_ratio_ = float(s[0] ** 2 / total) if total > 0 else 0.0
        rms = float(s[0] / np.sqrt(mat.shape[0]))
        self._finish(u * rms, info, diffs.shape[0])
        return self


__all__ = ["MeanDifference", "PCADirection", "ProbeDirection"]
