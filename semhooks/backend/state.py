"""Per-model memory that semhooks keeps *beside* a model, never on it.

semhooks writes no attribute onto a user's model object. What it must remember about a
model (the name it was loaded under, whether TransformerLens processed its weights, how many
hooks it carried when first seen, whether its KV-cached forward was checked) lives in a
:class:`ModelState` held in a :class:`weakref.WeakKeyDictionary`: it goes when the model goes,
and a ``copy.deepcopy(model)`` starts with a fresh one.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelState", "model_state"]


@dataclass
class ModelState:
    """What semhooks remembers about one model (holds no reference to the model).

    ``name``: the name :func:`~semhooks.load_model` or :func:`~semhooks.testing.tiny_model`
    loaded it under (``None``: read ``cfg.model_name``). ``weights_processed``: set by
    :func:`~semhooks.hooked_transformer_from_hf` (``None``: not known). ``baseline_hooks``: the
    hooks the model carried when semhooks first adapted it. ``prefix_cache_verified`` /
    ``prefix_cache_error``: whether the KV-prefix-cached forward was checked equal to the
    full one, and the relative error found (``None``: not checked yet). ``model_type``: the
    Hugging Face ``model_type`` a HookedTransformer was converted from (set by
    :func:`~semhooks.hooked_transformer_from_hf`; ``None``: not known).
    """

    name: str | None = None
    weights_processed: bool | None = None
    baseline_hooks: int | None = None
    prefix_cache_verified: bool | None = None
    prefix_cache_error: float | None = None
    model_type: str | None = None


_STATES: weakref.WeakKeyDictionary[Any, ModelState] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def model_state(model: Any) -> ModelState:
    """The :class:`ModelState` of ``model``, created empty on first use.

    A model that cannot be weakly referenced gets a fresh state each call (nothing is
    remembered for it).
    """
    with _LOCK:
        try:
            state = _STATES.get(model)
        except TypeError:
            return ModelState()
        if state is None:
            state = ModelState()
            _STATES[model] = state
        return state
