"""Hook lifetime on a model: one thread at a time, early stop, counting, ordering, gating.

Hooks are global state on the model: semhooks adds them only inside ``model.hooks(...)``
contexts (:meth:`ModelAdapter.hooks <semhooks.backend.adapter.ModelAdapter.hooks>`), which
remove them in ``finally`` even when a hook raises, and reserves the model for the thread
that added them meanwhile.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ConcurrentUseError",
    "HookFn",
    "StopForward",
    "active_hook_count",
    "hook_gated_reason",
    "move_hook_last",
    "single_thread",
]

HookFn = Callable[[Tensor, Any], Any]


class StopForward(Exception):
    """Raised from a hook to end a forward pass once every requested layer has been read."""


class ConcurrentUseError(RuntimeError):
    """A model was run from a second thread while another thread had semhooks hooks on it.

    Hooks are global state on a model: they would act on the other thread's forwards too.
    Give each thread its own model (e.g. ``copy.deepcopy(model)``).
    """


# model -> [owning thread id, nesting depth, forward pre-hook handle]
_HOOK_OWNERS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
_HOOK_OWNERS_LOCK = threading.Lock()


def _concurrent(name: str, owner: int) -> ConcurrentUseError:
    return ConcurrentUseError(
        f"{name} has semhooks hooks attached by thread {owner}, and thread "
        f"{threading.get_ident()} tried to use it at the same time; hooks are global state on "
        "a model, so each would act on the other's forwards. Give each thread its own model "
        "(copy.deepcopy(model)) or run them one after the other."
    )


@contextlib.contextmanager
def single_thread(model: Any, name: str) -> Iterator[None]:
    """Reserve ``model`` for this thread while semhooks hooks are on it (nesting allowed).

    Another thread entering the block, or running a forward of the model meanwhile, gets a
    :class:`ConcurrentUseError` instead of silently running this thread's hooks.
    """
    me = threading.get_ident()
    with _HOOK_OWNERS_LOCK:
        try:
            entry = _HOOK_OWNERS.get(model)
        except TypeError:  # not weak-referenceable: nothing to guard with
            entry = [me, 0, None]
        if entry is not None and entry[0] != me:
            raise _concurrent(name, entry[0])
        if entry is None:
            handle = None
            if isinstance(model, torch.nn.Module):

                def pre(module: Any, args: Any) -> None:
                    if threading.get_ident() != me:
                        raise _concurrent(name, me)

                handle = model.register_forward_pre_hook(pre)
            entry = [me, 0, handle]
            _HOOK_OWNERS[model] = entry
        entry[1] += 1
    try:
        yield
    finally:
        with _HOOK_OWNERS_LOCK:
            entry[1] -= 1
            if entry[1] == 0:
                if _HOOK_OWNERS.get(model) is entry:
                    del _HOOK_OWNERS[model]
                if entry[2] is not None:
                    entry[2].remove()


def active_hook_count(model: Any) -> int:
    """Forward and backward hooks currently attached to the model's hook points."""
    hook_dict = getattr(model, "hook_dict", {})
    seen: set[int] = set()
    total = 0
    for hp in hook_dict.values():
        if id(hp) in seen:
            continue
        seen.add(id(hp))
        total += len(getattr(hp, "_forward_hooks", {})) + len(getattr(hp, "_backward_hooks", {}))
        total += len(getattr(hp, "fwd_hooks", [])) + len(getattr(hp, "bwd_hooks", []))
    return total


def hook_gated_reason(model: Any, name: str) -> str | None:
    """Why the model refuses a hook at ``name`` (``None``: it accepts one).

    TransformerBridge switches some hook points off (``use_hook_mlp_in``...) and refuses hooks
    there; HookedTransformer and plain modules gate nothing.
    """
    gate = getattr(model, "_gated_hook_reason", None)
    if not callable(gate):
        return None
    try:
        reason = gate(name)
    except Exception:  # a bridge that cannot judge a name does not gate it
        return None
    return None if reason is None else str(reason)


def move_hook_last(module: torch.nn.Module, handle: Any) -> None:
    """Run the forward hook behind ``handle`` after every other forward hook of ``module``
    (PyTorch runs a module's forward hooks in insertion order). A no-op when it is gone."""
    with contextlib.suppress(AttributeError, KeyError):
        # An OrderedDict at runtime (typed as a dict in torch's stubs).
        module._forward_hooks.move_to_end(handle.id)  # type: ignore[attr-defined]
