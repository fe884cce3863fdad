"""Multiply-add counts of the LRE Jacobian passes, and the machine's GEMM rate, so a
benchmark can print how far a measured time is from the arithmetic floor.

Counted per token per block (a decoder with grouped KV heads and a gated MLP, as SmolLM2):
``q`` and ``o`` projections ``2 d (h dh)``, ``k`` and ``v`` ``2 d (h_kv dh)``, the MLP
``3 d d_mlp``, attention scores and mixing ``2 h dh ctx`` (``ctx`` = positions attended).
A backward pass with respect to the inputs only (weights frozen) costs about one forward.
"""

from __future__ import annotations

import time

import torch


def block_macs(cfg, ctx: int) -> float:
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    h_kv = getattr(cfg, "n_key_value_heads", None) or h
    d_mlp = cfg.d_mlp
    gated = 3 if getattr(cfg, "gated_mlp", True) else 2
    return 2 * d * h * dh + 2 * d * h_kv * dh + gated * d * d_mlp + 2 * h * dh * ctx


def suffix_macs(
    cfg, preps, subject_layer: int, object_layer: int, directions: float, cached: bool
) -> float:
    """MACs of one differentiable suffix forward per prompt (blocks ``0..l_o`` on the suffix
    tokens, on top of the cached prefix; the whole prompt when not ``cached``) plus
    ``directions`` products, each one pass through blocks ``l_s+1..l_o`` of it."""
    total = 0.0
    for p in preps:
        start = p.subject_pos if cached else 0
        n_tok = p.input_ids.shape[1] - start
        per_layer = sum(block_macs(cfg, start + i + 1) for i in range(n_tok))
        total += per_layer * (object_layer + 1)  # the forward
        total += directions * per_layer * (object_layer - subject_layer)  # the products
    return total


def jacobian_gmacs(
    model, prompts, subject_layer: int, object_layer: int, rank: int, cached: bool
) -> tuple[float, float]:
    """``(exact, randomized)`` GMACs of the LRE Jacobian passes over ``prompts`` (``cached``:
    whether the fits ran on the KV prefix cache): exact is one suffix forward and ``d`` VJPs
    per prompt; randomized (``k = rank + 10``) is ``k + 1`` JVPs, each a double backward
    (about two passes), then ``k`` VJPs. Only tokenises (no prefix forwards)."""
    from semhooks.relations.jacobian import SubjectObjectMap

    fmap = SubjectObjectMap(model, subject_layer, object_layer, prefix_cache=False)
    preps, cfg, d = fmap.prepare(prompts), model.cfg, model.cfg.d_model
    k = min(rank + 10, d)

    def macs(directions: float) -> float:
        return suffix_macs(cfg, preps, subject_layer, object_layer, directions, cached)

    return macs(d) / 1e9, (macs(2 * (k + 1)) + macs(k)) / 1e9


def gemm_rate(d: int, d_mlp: int, rows: int = 4096, repeats: int = 5) -> float:
    """Measured multiply-adds per second of a float32 ``[rows, d] @ [d, d_mlp]`` product at
    the current thread count (the best of ``repeats``)."""
    a, b = torch.randn(rows, d), torch.randn(d, d_mlp)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return rows * d * d_mlp / best
