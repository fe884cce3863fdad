"""The one activation reader: a batch through the model, chosen sites out, stop after the last.

Every semhooks path that needs activations (``extract_states``, relation prompt states,
relation Jacobians, emergence, calibration, patching) reads them here:

1. the batch is a :class:`~semhooks.backend.adapter.Tokenized` (built by the adapter's
   tokenizer, or by :func:`batch_from_ids` for token ids a caller already has), run with its
   attention mask, or (one row) on top of a KV cache of the positions before it
   (``cache=``: the Jacobian's prefix-cached suffix pass);
2. one hook per requested site applies ``take(key, acts)`` inside the forward pass (select
   rows and positions, pool them), so only what was asked for leaves the pass;
3. once every requested hook has fired, the last one raises
   :class:`~semhooks.backend.adapter.StopForward`: the blocks after the deepest site and the
   unembedding never run (unless the logits are asked for).

Hooks live only inside the adapter's ``hooks`` context, which removes them in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from semhooks.backend.adapter import HookFn, ModelAdapter, StopForward, Tokenized

K = TypeVar("K", bound=Hashable)
Take = Callable[[Any, Tensor], Tensor]


@dataclass(frozen=True)
class Readout:
    """What one forward pass gave: ``values[key]`` per requested site, and the logits
    ``[batch, pos, vocab]`` when asked for (None otherwise: the pass stopped early)."""

    values: dict[Any, Tensor]
    logits: Float[Tensor, "batch pos vocab"] | None = None
    #: with ``logit_positions``: row ``r``'s logits at ``logit_positions[r]``, ``[k_r, vocab]``
    position_logits: list[Float[Tensor, "k vocab"]] | None = None


def raw(key: Any, acts: Tensor) -> Tensor:
    """The default ``take``: the whole activation ``[batch, pos, d]`` as it is."""
    return acts


def batch_from_ids(
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    *,
    lead: int = 0,
    texts: Sequence[str] | None = None,
) -> Tokenized:
    """A :class:`Tokenized` for token ids that did not come from the adapter's tokenizer.

    ``lead`` leading positions of every row are marked special (BOS); padding (mask 0) is
    special too. Without texts, offsets are zero (no character spans can be found in it).
    Padding side: left when any row starts with padding, else right.
    """
    b, w = input_ids.shape
    mask = (
        torch.ones(b, w, dtype=torch.long)
        if attention_mask is None
        else attention_mask.detach().long().cpu()
    )
    if tuple(mask.shape) != (b, w):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids has {(b, w)}")
    special = ~mask.bool()
    special[:, :lead] = True
    return Tokenized(
        texts=list(texts) if texts is not None else [""] * b,
        input_ids=input_ids.detach().long().cpu(),
        attention_mask=mask,
        offsets=torch.zeros(b, w, 2, dtype=torch.long),
        special=special,
        padding_side="left" if bool((mask[:, 0] == 0).any()) else "right",
        truncated=[False] * b,
    )


def read(
    adapter: ModelAdapter,
    batch: Tokenized,
    sites: Mapping[K, str],
    take: Take = raw,
    *,
    grad: bool = False,
    logits: bool = False,
    edits: Sequence[tuple[str, HookFn]] = (),
    logit_positions: Sequence[Sequence[int]] | None = None,
    cache: Any = None,
) -> Readout:
    """Run ``batch`` once and return ``take(key, acts)`` for every ``key -> hook name``.

    Args:
        adapter: the model's :class:`~semhooks.backend.adapter.ModelAdapter`.
        batch: the padded batch; its attention mask is always passed.
        sites: ``{key: hook name}`` (several keys may share one hook name).
        take: ``(key, acts [batch, pos, d]) -> tensor``, applied inside the hook (select
            rows/positions, pool). Without ``grad`` the result is detached.
        grad: run with autograd following the caller's grad mode (for Jacobians); without
            it the pass runs under ``torch.inference_mode``.
        logits: run to the end and return the logits; otherwise the pass stops as soon as
            every requested hook has fired (nothing after the deepest site runs).
        edits: hooks that change activations (``fn(acts, hook) -> acts``), attached before
            the reading hooks, e.g. to write a value into the residual stream.
        logit_positions: also the logits at ``logit_positions[r]`` of each row ``r``
            (:meth:`~semhooks.backend.adapter.ModelAdapter.logits_at`: a decoder's pass
            stops after the last block and only those positions are unembedded), in
            ``Readout.position_logits``. ``sites`` may then be empty. Not with ``grad`` or
            ``logits``.
        cache: a KV cache (:meth:`~semhooks.backend.adapter.ModelAdapter.new_kv_cache`)
            holding the positions before ``batch``, which must then be one row without
            padding. The pass runs ``batch`` on top of it
            (:meth:`~semhooks.backend.adapter.ModelAdapter.forward_on_cache`) and extends
            the cache in place: pass ``adapter.copy_kv_cache(c)`` to reuse a prefix, or an
            empty cache to fill it with ``batch``'s positions. ``take`` sees only ``batch``'s
            positions (position 0 is the first one after the cache). Without ``grad`` the
            pass runs under ``torch.no_grad`` (not inference mode: a cache filled here may
            feed a later differentiable pass). Not with ``logit_positions``.

    Raises:
        RuntimeError naming the hooks that did not fire.
    """
    if logit_positions is not None and (grad or logits):
        raise ValueError("read(logit_positions=...) runs without autograd and full logits")
    if cache is not None:
        if logit_positions is not None:
            raise ValueError("read(cache=...) does not take logit_positions")
        if batch.input_ids.shape[0] != 1 or not bool(batch.attention_mask.bool().all()):
            raise ValueError(
                "read(cache=...) runs one row without padding on top of a KV cache; got "
                f"{batch.input_ids.shape[0]} rows, {int((batch.attention_mask == 0).sum())} "
                "padded positions"
            )
    if not sites and logit_positions is None:
        raise ValueError("read() needs at least one site to read")
    by_name: dict[str, list[Any]] = {}
    for key, name in sites.items():
        by_name.setdefault(name, []).append(key)
    values: dict[Any, Tensor] = {}
    fired: set[str] = set()

    def reader(name: str, keys: list[Any]) -> HookFn:
        def hook(acts: Tensor, hook: Any = None) -> None:
            for key in keys:
                out = take(key, acts)
                values[key] = out if grad else out.detach()
            fired.add(name)
            if not logits and logit_positions is None and len(fired) == len(by_name):
                raise StopForward

        return hook

    hooks = [*edits, *((name, reader(name, keys)) for name, keys in by_name.items())]
    at: list[Tensor] | None = None
    if logit_positions is not None:
        out = None
        at = adapter.logits_at(batch, logit_positions, hooks)
    elif cache is not None:
        with contextlib.nullcontext() if grad else torch.no_grad():
            out = adapter.forward_on_cache(batch.input_ids, cache, hooks)
    elif grad:
        out = adapter.run_differentiable(batch.input_ids, batch.attention_mask, hooks)
    else:
        out = adapter.forward(batch, hooks, return_logits=logits)
    missing = sorted(set(by_name) - fired)
    if missing:
        raise RuntimeError(
            f"hooks {missing} did not fire on {adapter.name}; the model has no such site in "
            "its forward pass"
        )
    return Readout(values, out if logits else None, at)


def read_batches(
    adapter: ModelAdapter,
    batches: Sequence[Tokenized],
    sites: Mapping[K, str],
    take: Take = raw,
    **kwargs: Any,
) -> list[Readout]:
    """:func:`read` over several batches (one forward pass each), in order."""
    return [read(adapter, batch, sites, take, **kwargs) for batch in batches]
