"""LRE fitting across processes and machines (``accelerate``): the Jacobians of a relation's
prompts spread over the ranks of a data-parallel run.

:func:`mean_jacobian_distributed` gives rank ``r`` the prompts ``r, r + w, ...``, gathers
every ``J_i`` and sums them in prompt order, so the mean Jacobian is bit-identical to one
process's :func:`~semhooks.relations.jacobian.mean_jacobian`; :func:`fit_lre_distributed`
fits an :class:`~semhooks.relations.lre.LRE` with it. The process group, the gather and the
all-ranks error barrier are :mod:`semhooks.extraction.distributed`'s (launch as described
there).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from semhooks.backend.adapter import adapt
from semhooks.extraction.distributed import (
    all_gather_object,
    check_all_ranks,
    distributed_state,
    resolve_model,
)
from semhooks.relations.checks import check_prompts
from semhooks.relations.jacobian import JacobianResult, mean_jacobian

__all__ = ["fit_lre_distributed", "mean_jacobian_distributed"]


def mean_jacobian_distributed(
    model: Any,
    prompts: Sequence[Any],
    subject_layer: int,
    object_layer: int,
    *,
    aggregation: str = "mean",
    chunk_size: int | None = None,
    prefix_cache: bool | str = "auto",
    progress: bool = True,
    state: Any = None,
) -> Any:
    """:func:`~semhooks.relations.jacobian.mean_jacobian` with the prompts spread over ranks.

    ``W = mean_i J_i`` (Hernandez et al. 2023, Eq. 4): rank ``r`` computes ``J_i`` (``d``
    VJPs each), ``s_i``, ``o_i`` and ``J_i s_i`` for prompts ``i = r, r + w, ...``; every
    rank then gathers all of them and sums the ``J_i`` in prompt order, exactly as the
    single-process function does, so the result is bit-identical to it (and identical on
    every rank). Memory: the gather holds ``n_prompts x d x d`` float64 on each rank
    (2.6 MB per prompt for ``d = 576``).

    Args:
        model: a model, a semhooks model name or a factory returning one (as
            :func:`~semhooks.extraction.distributed.extract_states_distributed`).
        prompts: the same list of ``RelationPrompt`` on every rank.
        Other arguments: as ``mean_jacobian``.

    Returns:
        A ``JacobianResult`` (``weight [d, d]`` float64, ``subject_states``,
        ``object_states``, ``js`` ``[n, d]``) on every rank.
    """
    state = distributed_state(state)
    rank, world = int(state.process_index), int(state.num_processes)
    prompts = list(prompts)
    t0 = time.perf_counter()
    error: str | None = None
    parts: list[tuple[int, Any, Any, Any, Any, bool]] = []
    try:
        if not prompts:
            raise ValueError("no prompts given (empty list)")
        adapter = adapt(resolve_model(model, state))
        mine = range(rank, len(prompts), world)
        for i in tqdm(mine, desc=f"jacobians (rank {rank}/{world})", disable=not progress):
            res = mean_jacobian(
                adapter,
                [prompts[i]],
                subject_layer,
                object_layer,
                aggregation=aggregation,  # type: ignore[arg-type]
                chunk_size=chunk_size,
                prefix_cache=prefix_cache,  # type: ignore[arg-type]
                progress=False,
            )
            # one prompt: res.weight is J_i itself (0 + J_i, divided by 1)
            parts.append(
                (
                    i,
                    res.weight.cpu(),
                    res.subject_states[0],
                    res.object_states[0],
                    res.js[0],
                    res.prefix_cache,
                )
            )
    except Exception:
        error = traceback.format_exc()
    check_all_ranks(error, state, "computing Jacobians")
    by_index = {p[0]: p for rank_parts in all_gather_object(parts, state) for p in rank_parts}
    ordered = [by_index[i] for i in range(len(prompts))]
    total = torch.zeros_like(ordered[0][1])
    for part in ordered:
        total += part[1]
    return JacobianResult(
        weight=total / len(ordered),
        subject_states=torch.stack([p[2] for p in ordered]),
        object_states=torch.stack([p[3] for p in ordered]),
        js=torch.stack([p[4] for p in ordered]),
        seconds=time.perf_counter() - t0,
        method="exact",
        prefix_cache=any(p[5] for p in ordered),
    )


def fit_lre_distributed(lre: Any, model: Any, prompts: Sequence[Any], state: Any = None) -> Any:
    """``lre.fit(model, prompts)`` with the Jacobians computed across ranks.

    Every rank gets the same fitted :class:`~semhooks.relations.lre.LRE`, bit-identical to
    a single-process ``fit`` (``method="exact"`` only: the randomized sketch shares one
    set of random probes across prompts and is not split here).
    """
    if lre.method != "exact":
        raise ValueError(
            f"fit_lre_distributed supports method='exact'; got {lre.method!r} (the randomized "
            "sketch couples prompts through shared random probes)"
        )
    state = distributed_state(state)
    resolved = resolve_model(model, state)
    adapter = adapt(resolved)
    lre.check_params(adapter)
    prompts = check_prompts(prompts, "fit_lre_distributed")
    res = mean_jacobian_distributed(
        adapter, prompts, lre.subject_layer, lre.object_layer, **lre.jacobian_kwargs(), state=state
    )
    return lre.fit_from_jacobian(adapter, prompts, res, world_size=int(state.num_processes))
