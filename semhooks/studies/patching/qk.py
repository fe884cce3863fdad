"""AtP*'s correction for query and key patches (Kramar et al. 2024, section 3.1.1).

A patch that moves a query or a key acts on the metric only through that layer's attention
pattern. First-order patching linearises through the softmax, ``(x_s - x_r) . dm/dx``, and
fails where the softmax saturates: a patched query whose scores overtake the receiver's top
key moves the pattern by up to 1 while the gradient at the saturated receiver is about 0.
AtP* instead recomputes the pattern *exactly* under the patch and linearises only after the
softmax. For a cell (site ``q`` or ``k``, a layer, a position label, a head) this module
computes

    S' = S + J (x_s - x_r)            # the patched scores, exact: S is linear in q and in k
    A' = softmax(S')                  # the patched pattern, exact
    m(patched) ~ m(receiver) + sum_{head, query, key} (A' - A) * dm/dA

where ``S``/``A`` are the receiver's masked scores (``attn.hook_attn_scores``) and pattern
(``attn.hook_pattern``), ``x`` its query or key (``attn.hook_q``/``attn.hook_k``) and ``J``
the map from ``x`` to ``S`` (rotary embedding, scale). ``J (x_s - x_r)`` is computed by the
model's own autograd (the Jacobian-vector product of a linear map, by double backward), so
no rotary convention is re-implemented here; a query moves one row of its head's scores, a
key one column of every query head that reads it (grouped-query attention). The estimate is
exact whenever the metric is linear in that layer's pattern.

Cost: per (site, layer) one double-backward through the score computation, batched over
position labels, and a softmax over ``[label, pair, head, query, key]``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from semhooks.studies.patching.engine import LabelIndex, PatchingError

#: Most elements of one batch of patched patterns (labels are chunked to stay under it).
MAX_PATTERN_ELEMENTS = 1 << 24


def check_pattern(
    scores: Float[Tensor, "pair head query key"],
    pattern: Float[Tensor, "pair head query key"],
    where: str,
) -> Float[Tensor, "pair head query key"]:
    """Refuse a model whose hooked scores do not softmax to its hooked pattern (a bias, a
    sink or a cap added between the two hooks would make the recomputed pattern wrong);
    return that recomputed pattern (float32, detached)."""
    if scores.shape != pattern.shape or scores.ndim != 4:
        raise PatchingError(
            f"{where}: attention scores {tuple(scores.shape)} and pattern "
            f"{tuple(pattern.shape)} must both be [batch, head, query, key]"
        )
    again = _softmax(scores.detach())
    tol = 1e-5 if pattern.dtype == torch.float32 else 2e-3
    if not torch.allclose(again, pattern.detach().float(), atol=tol, rtol=0):
        err = float((again - pattern.detach().float()).abs().max())
        raise PatchingError(
            f"{where}: softmax(attn.hook_attn_scores) differs from attn.hook_pattern by {err:.2e}"
            " on this model, so the query/key correction cannot recompute the pattern; pass "
            "qk_correction=False for the plain first-order estimate"
        )
    return again


def _softmax(scores: Tensor) -> Tensor:
    """Softmax over keys in float32; a row with no visible key is 0 (as the hooks see it)."""
    return torch.nan_to_num(torch.softmax(scores.float(), dim=-1), nan=0.0)


def corrected_effects(
    x: Float[Tensor, "pair pos xhead d_head"],
    scores: Float[Tensor, "pair head query key"],
    pattern: Float[Tensor, "pair head query key"],
    grad_pattern: Float[Tensor, "pair head query key"],
    source: Float[Tensor, "pair src_pos xhead d_head"],
    index: LabelIndex,
    where: str = "attention",
) -> Float[Tensor, "pair label xhead"]:
    """The corrected metric change of patching ``source`` into ``x`` for every (position
    label, head) of one layer's query or key site.

    Args:
        x: the receiver's query or key, a live tensor of the forward that produced
            ``scores`` (its graph to ``scores`` still held).
        scores: that forward's masked attention scores (live).
        pattern: its attention pattern (checked against ``softmax(scores)``:
            :func:`check_pattern`, ``where`` naming the layer in the error).
        grad_pattern: ``dm/dA``, the summed metric's gradient with respect to the pattern.
        source: the source run's query or key (``[pair, pos, head, d_head]``).
        index: where each label sits in the receiver and the source (:func:`label_index`).

    Returns:
        ``[pair, label, head]``: ``sum (A' - A) * dm/dA`` over the query heads each head of
        ``x`` feeds (itself for a query; its group for a grouped key, query head ``h`` reading
        key head ``h // (n_heads / n_kv_heads)`` as in ``repeat_interleave``).
    """
    # the receiver's pattern recomputed the same way (equal to ``pattern`` to rounding), so
    # a head the patch does not reach contributes exactly 0
    a = check_pattern(scores, pattern, where)
    n_pairs, _, x_heads, _ = x.shape
    n_heads = scores.shape[1]
    if n_heads % x_heads:
        raise PatchingError(f"{n_heads} query heads cannot share {x_heads} key heads evenly")
    diff = torch.zeros((index.n_labels, *x.shape), dtype=x.dtype, device=x.device)
    at = (index.label, index.pair, index.receiver)
    src = source.to(x.device, x.dtype)[index.pair, index.source]
    diff[at] = src - x.detach()[index.pair, index.receiver]
    base = scores.detach().float()
    g = grad_pattern.detach().float()
    tangent = torch.zeros_like(scores, requires_grad=True)
    # J^T u as a function of u; its gradient against u along diff is J diff (linear in x)
    (pullback,) = torch.autograd.grad(scores, x, tangent, create_graph=True)
    per_label = max(1, MAX_PATTERN_ELEMENTS // max(1, scores.numel()))
    parts = []
    for start in range(0, index.n_labels, per_label):
        chunk = diff[start : start + per_label]
        (d_scores,) = torch.autograd.grad(
            pullback, tangent, chunk, is_grads_batched=True, retain_graph=True
        )
        moved = _softmax(base.unsqueeze(0) + d_scores.float()) - a
        parts.append((moved * g).sum((-1, -2)))  # [label, pair, head]
    change = torch.cat(parts)
    per_x_head = change.view(index.n_labels, n_pairs, x_heads, n_heads // x_heads).sum(-1)
    return per_x_head.transpose(0, 1).float().cpu()
