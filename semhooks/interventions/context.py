"""What intervention hooks know about the batch being run: its attention mask and prompt
length, captured from each forward call (:func:`install_mask_capture`) or set by hand
(:func:`batch_context`)."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BatchInfo",
    "batch_context",
    "current_batch",
    "install_mask_capture",
    "remove_mask_capture",
]


@dataclass(frozen=True)
class BatchInfo:
    """What a hook needs to know about the batch being run.

    ``attention_mask`` is ``[batch, pos]`` (1 = real token); ``prompt_length`` is the number
    of leading columns that belong to the (left-padded) prompt during generation.
    """

    attention_mask: Tensor | None = None
    prompt_length: int | None = None
    # True when the forward said where its padding is (a mask was passed, maybe all ones);
    # False when nobody did, so "last" cannot tell a padded column from a real one.
    mask_known: bool = False


_BATCH: ContextVar[BatchInfo] = ContextVar("semhooks_batch", default=BatchInfo())  # noqa: B039


def current_batch() -> BatchInfo:
    """The batch description hooks see right now."""
    return _BATCH.get()


@contextlib.contextmanager
def batch_context(
    attention_mask: Tensor | None = None, prompt_length: int | None = None
) -> Iterator[BatchInfo]:
    """Tell intervention hooks the attention mask and/or prompt length of the next forwards.

    Only needed when calling ``model.run_with_hooks`` yourself on a right-padded batch (for
    ``positions="last"``) or outside :func:`semhooks.studies.steering.generate` with
    ``"prompt_only"``/``"generated_only"``; :func:`intervene` captures the mask itself.
    """
    old = _BATCH.get()
    info = BatchInfo(
        attention_mask if attention_mask is not None else old.attention_mask,
        prompt_length if prompt_length is not None else old.prompt_length,
        attention_mask is not None or old.mask_known,
    )
    token = _BATCH.set(info)
    try:
        yield info
    finally:
        _BATCH.reset(token)


# One capture per model, however deeply intervene() blocks nest on it.
_CAPTURES: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def install_mask_capture(model: Any) -> bool:
    """Record the ``attention_mask`` keyword of each forward call for the hooks to read."""
    if not isinstance(model, torch.nn.Module):
        return False
    entry = _CAPTURES.get(model)
    if entry is not None:
        entry[0] += 1
        return True
    # One stack per thread: a model run from two threads must reset each thread's own
    # context token (a shared list handed one thread's token to the other: ValueError).
    local = threading.local()

    def stack() -> list[Any]:
        if not hasattr(local, "tokens"):
            local.tokens = []
        return local.tokens  # type: ignore[no-any-return]

    def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        known = isinstance(mask, Tensor)
        if isinstance(mask, Tensor) and bool(mask.all()):
            mask = None  # unpadded: hooks take the fast path (one check per forward, not per hook)
        old = _BATCH.get()
        if not known:  # an outer batch_context may know this batch's mask
            mask, known = old.attention_mask, old.mask_known
        stack().append(_BATCH.set(BatchInfo(mask, old.prompt_length, known)))

    def post(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        tokens = stack()
        if tokens:
            _BATCH.reset(tokens.pop())

    h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.register_forward_hook(post, with_kwargs=True, always_call=True)
    _CAPTURES[model] = [1, h1, h2]
    return True


def remove_mask_capture(model: Any) -> None:
    entry = _CAPTURES.get(model)
    if entry is None:
        return
    entry[0] -= 1
    if entry[0] <= 0:
        entry[1].remove()
        entry[2].remove()
        del _CAPTURES[model]
