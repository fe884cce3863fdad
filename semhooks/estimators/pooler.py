"""A learned attention-style pooler: ``a = softmax(w . h_t)`` fit jointly with a linear probe.

A scikit-learn estimator (``clone`` works; :class:`sklearn.exceptions.NotFittedError` before
``fit``). After ``fit``, pass it as ``pool_weights`` with ``pool="weighted"`` to
:func:`semhooks.extract_states`, or call :meth:`AttentionPooler.transform` on token states.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.extraction.pooling import pool_weighted

__all__ = ["AttentionPooler"]


class AttentionPooler(BaseEstimator):
    """Learned attention-style pooling: ``a = softmax(w . h_t)`` fit jointly with a linear probe.

    One scorer ``w`` (and one logistic/softmax probe) per layer, trained with Adam and L2
    weight decay on token states kept per token (``extract_states(..., pool=None)``).
    After ``fit``, pass the pooler as ``pool_weights`` with ``pool="weighted"`` to
    :func:`semhooks.extract_states`, or call :meth:`transform` on token states.

    Attributes (after fit): ``scorers_`` dict layer -> ``[d]`` tensor, ``classes_``,
    ``train_accuracy_`` dict layer -> float.
    """

    def __init__(
        self,
        *,
        epochs: int = 100,
        lr: float = 1e-2,
        weight_decay: float = 1e-3,
        seed: int = 0,
        progress: bool = True,
    ):
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.progress = progress

    def fit(self, token_states: Any, labels: Any) -> AttentionPooler:
        """Fit on a ``LayerStates`` with ``pool=None`` (one row per token) and item labels."""
        from semhooks.extraction.states import LayerStates

        if not isinstance(token_states, LayerStates) or token_states.item_index is None:
            raise ValueError("AttentionPooler.fit needs LayerStates from extract_states(pool=None)")
        y_raw = np.asarray(labels)
        self.classes_, y_idx = np.unique(y_raw, return_inverse=True)
        if len(y_raw) != token_states.n_items:
            raise ValueError(
                f"{len(y_raw)} labels for {token_states.n_items} items; give one label per text"
            )
        y = torch.as_tensor(y_idx, dtype=torch.long)
        self.scorers_: dict[int, Tensor] = {}
        self.train_accuracy_: dict[int, float] = {}
        self.mean_: dict[int, Tensor] = {}
        self.std_: dict[int, Tensor] = {}
        gen = torch.Generator().manual_seed(self.seed)
        layers = tqdm(token_states.layers, desc="attention pooler", disable=not self.progress)
        for layer in layers:
            padded, mask = token_states.padded(layer)
            padded = padded.float()
            flat = padded[mask]
            mu, sd = flat.mean(0), flat.std(0) + 1e-6
            x = (padded - mu) / sd
            d = x.shape[-1]
            w = (torch.randn(d, generator=gen) * 0.01).requires_grad_()
            probe = torch.nn.Linear(d, len(self.classes_))
            with torch.no_grad():
                probe.weight.copy_(torch.randn(probe.weight.shape, generator=gen) * 0.01)
                probe.bias.zero_()
            opt = torch.optim.Adam(
                [w, *probe.parameters()], lr=self.lr, weight_decay=self.weight_decay
            )
            for _ in range(self.epochs):
                pooled = pool_weighted(x, mask, x @ w)
                loss = torch.nn.functional.cross_entropy(probe(pooled), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                pred = probe(pool_weighted(x, mask, x @ w)).argmax(-1)
            self.scorers_[layer] = w.detach()
            self.mean_[layer], self.std_[layer] = mu, sd
            self.train_accuracy_[layer] = float((pred == y).float().mean())
        return self

    def scores(self, acts: Float[Tensor, "b t d"], layer: int) -> Float[Tensor, "b t"]:
        check_is_fitted(
            self,
            "scorers_",
            msg="AttentionPooler is not fitted; call fit(token_states, labels) first",
        )
        if layer not in self.scorers_:
            raise ValueError(
                f"AttentionPooler was fit on layers {sorted(self.scorers_)}, not {layer}"
            )
        w = self.scorers_[layer].to(acts.device)
        x = (acts.float() - self.mean_[layer].to(acts.device)) / self.std_[layer].to(acts.device)
        return x @ w

    def transform(self, token_states: Any) -> Any:
        """Pool token states (``pool=None``) into one vector per item with the learned weights."""
        return token_states.repool("weighted", pool_weights=self)
