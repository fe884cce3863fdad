"""Mask-aware pooling of token states.

All poolers take activations ``[batch, pos, d]`` and a boolean selection ``[batch, pos]``
(True for the tokens to pool: padding and unselected tokens are False), and return
``[batch, d]``. ``mean`` and ``max`` ignore unselected positions entirely, so a padded batch
pools exactly like the same texts one by one.

``weighted`` is the attention-style weighted sum of METHODS.md section 1:
``sum_t a_t h_t`` with ``a = softmax(w . h_t)`` over the selected tokens, where the scores
come from a callable or from a fitted learned pooler
(:class:`semhooks.estimators.pooler.AttentionPooler`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import torch
from jaxtyping import Bool, Float
from torch import Tensor

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


def is_learned_pooler(obj: Any) -> bool:
    """Whether ``obj`` is a learned pooler (an estimator with ``fit`` and ``scores(acts,
    layer)``, such as :class:`semhooks.estimators.pooler.AttentionPooler`) rather than a plain
    score callable."""
    return callable(getattr(obj, "scores", None)) and callable(getattr(obj, "fit", None))


def scores_for(pool_weights: Any, acts: Tensor, layer: int) -> Tensor:
    """Attention scores from a user callable or a fitted :class:`AttentionPooler`."""
    if pool_weights is None:
        raise ValueError(
            "pool='weighted' needs pool_weights: a callable (acts, layer) -> scores [batch, pos] "
            "or a fitted semhooks.AttentionPooler"
        )
    if is_learned_pooler(pool_weights):
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
