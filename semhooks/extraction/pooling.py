"""Mask-aware pooling of token states, and a learned attention-style pooler.

All poolers take activations ``[batch, pos, d]`` and a boolean selection ``[batch, pos]``
(True for the tokens to pool: padding and unselected tokens are False), and return
``[batch, d]``. ``mean`` and ``max`` ignore unselected positions entirely, so a padded batch
pools exactly like the same texts one by one.

``weighted`` is the attention-style weighted sum of METHODS.md section 1:
``sum_t a_t h_t`` with ``a = softmax(w . h_t)`` over the selected tokens, where the scores
come from a callable or from a fitted :class:`AttentionPooler`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

PoolName = Literal["mean", "max", "last", "first", "weighted"]
POOLS = ("mean", "max", "last", "first", "weighted")


class ScoreFn(Protocol):
    def __call__(
        self, acts: Float[Tensor, "batch pos d"], layer: int
    ) -> Float[Tensor, "batch pos"]: ...


def _check(acts: Tensor, mask: Tensor) -> None:
    if acts.ndim != 3 or mask.shape != acts.shape[:2]:
        raise ValueError(
            f"pooling expects acts [batch, pos, d] and mask [batch, pos]; got acts "
            f"{tuple(acts.shape)} and mask {tuple(mask.shape)}"
        )
    empty = ~mask.any(-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"no token selected to pool in batch rows {rows}")


def pool_mean(acts: Float[Tensor, "b t d"], mask: Bool[Tensor, "b t"]) -> Float[Tensor, "b d"]:
    m = mask.to(acts.dtype).unsqueeze(-1)
    return (acts * m).sum(1) / m.sum(1)


def pool_max(acts: Float[Tensor, "b t d"], mask: Bool[Tensor, "b t"]) -> Float[Tensor, "b d"]:
    return acts.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


def _edge_index(mask: Tensor, last: bool) -> Tensor:
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    if last:
        return torch.where(mask, pos, -1).amax(1)
    return torch.where(mask, pos, mask.shape[1]).amin(1)


def pool_last(acts: Float[Tensor, "b t d"], mask: Bool[Tensor, "b t"]) -> Float[Tensor, "b d"]:
    idx = _edge_index(mask, last=True)
    return acts[torch.arange(acts.shape[0], device=acts.device), idx]


def pool_first(acts: Float[Tensor, "b t d"], mask: Bool[Tensor, "b t"]) -> Float[Tensor, "b d"]:
    idx = _edge_index(mask, last=False)
    return acts[torch.arange(acts.shape[0], device=acts.device), idx]


def pool_weighted(
    acts: Float[Tensor, "b t d"], mask: Bool[Tensor, "b t"], scores: Float[Tensor, "b t"]
) -> Float[Tensor, "b d"]:
    """``sum_t softmax(scores)_t h_t`` over the selected tokens only."""
    s = scores.to(acts.dtype).masked_fill(~mask, float("-inf"))
    a = torch.softmax(s, dim=1).unsqueeze(-1)
    return (a * acts).sum(1)


def pool(
    acts: Float[Tensor, "b t d"],
    mask: Bool[Tensor, "b t"],
    how: str,
    *,
    scores: Float[Tensor, "b t"] | None = None,
) -> Float[Tensor, "b d"]:
    """Pool ``acts`` over the selected tokens of each row with ``how`` (see :data:`POOLS`)."""
    _check(acts, mask)
    if how == "mean":
        return pool_mean(acts, mask)
    if how == "max":
        return pool_max(acts, mask)
    if how == "last":
        return pool_last(acts, mask)
    if how == "first":
        return pool_first(acts, mask)
    if how == "weighted":
        if scores is None:
            raise ValueError(
                "pool='weighted' needs scores (pool_weights=callable or AttentionPooler)"
            )
        return pool_weighted(acts, mask, scores)
    raise ValueError(f"unknown pooling {how!r}; choose one of {POOLS} or None")


def scores_for(pool_weights: Any, acts: Tensor, layer: int) -> Tensor:
    """Attention scores from a user callable or a fitted :class:`AttentionPooler`."""
    if pool_weights is None:
        raise ValueError(
            "pool='weighted' needs pool_weights: a callable (acts, layer) -> scores [batch, pos] "
            "or a fitted semhooks.AttentionPooler"
        )
    if isinstance(pool_weights, AttentionPooler):
        return pool_weights.scores(acts, layer)
    if callable(pool_weights):
        out = pool_weights(acts, layer)
        if out.shape != acts.shape[:2]:
            raise ValueError(
                f"pool_weights returned scores of shape {tuple(out.shape)}, expected "
                f"{tuple(acts.shape[:2])} (one score per token)"
            )
        return out
    raise TypeError(
        f"pool_weights must be callable or an AttentionPooler, got {type(pool_weights)}"
    )


class AttentionPooler:
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
        # Duck-typed (no import of LayerStates: the states module imports this one).
        if getattr(token_states, "item_index", None) is None or not hasattr(token_states, "padded"):
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
        self._mean: dict[int, Tensor] = {}
        self._std: dict[int, Tensor] = {}
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
            self._mean[layer], self._std[layer] = mu, sd
            self.train_accuracy_[layer] = float((pred == y).float().mean())
        return self

    def scores(self, acts: Float[Tensor, "b t d"], layer: int) -> Float[Tensor, "b t"]:
        if not hasattr(self, "scorers_"):
            raise RuntimeError(
                "AttentionPooler is not fitted; call fit(token_states, labels) first"
            )
        if layer not in self.scorers_:
            raise ValueError(
                f"AttentionPooler was fit on layers {sorted(self.scorers_)}, not {layer}"
            )
        w = self.scorers_[layer].to(acts.device)
        x = (acts.float() - self._mean[layer].to(acts.device)) / self._std[layer].to(acts.device)
        return x @ w

    def transform(self, token_states: Any) -> Any:
        """Pool token states (``pool=None``) into one vector per item with the learned weights."""
        return token_states.repool("weighted", pool_weights=self)


PoolFn = Callable[[Tensor, Tensor], Tensor]


def pool_or_keep(
    acts: Float[Tensor, "batch pos d"],
    selection: Bool[Tensor, "batch pos"],
    how: str | None,
    pool_weights: Any = None,
    layer: int = 0,
) -> Float[Tensor, "batch_or_token d"]:
    """The selected tokens of ``acts`` pooled per row (``[batch, d]``), or with ``how=None``
    every selected token kept as a row (``[n_selected, d]``, row-major).

    ``pool_weights`` (for ``how="weighted"``): an :class:`AttentionPooler` or a callable
    ``(acts, layer) -> scores [batch, pos]``.
    """
    if how is None:
        return acts[selection]
    scores = scores_for(pool_weights, acts, layer) if how == "weighted" else None
    return pool(acts, selection, how, scores=scores)
