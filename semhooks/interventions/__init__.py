"""Interventions along directions: steer, ablate, clamp, patch and the LRC concept swap.

Each intervention is a small dataclass (plain, serialisable data: ``to_dict``/``from_dict``)
that is also a TransformerLens hook function ``fn(activation, hook) -> activation``. A
notebook that has never heard of semhooks can use one directly::

    steer = Steer(v, alpha=4.0, positions="last")
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.6.hook_resid_post", steer)])

and semhooks code composes them, resolving layers and sites through the model adapter::

    with semhooks.intervene(model, Steer(v, 4.0, layers=6), Ablate(u, layers="all")):
        logits = model(tokens)          # any forward, generate(...) or extract_states(...)

Hooks are global state on the model: :func:`intervene` adds them inside the model's own
``hooks(...)`` context, which removes them in ``finally`` even when the block raises, and
nested ``intervene`` blocks stack.

Equations (``h`` the activation at one selected position, ``u = v / ||v||``):

- :class:`Steer` ``h + alpha v`` (``v`` raw, *not* normalised: ``alpha`` multiplies the
  direction exactly as given, so a mean-difference vector at ``alpha = 1`` moves a state
  by one class-mean gap).
- :class:`Ablate` ``h - alpha (h . u) u`` (``alpha = 1`` removes the component fully).
- :class:`Clamp` ``h + (value - h . u) u`` (the component along ``u`` becomes ``value``).
- :class:`Patch` ``h + alpha (s - h)`` with ``s`` a cached activation (``alpha = 1``: replace).
- :class:`Swap` (Chanin et al. 2024, LRC causal swap) ``h + alpha ||h|| (u_to - u_from)``
  (``scale="norm"``), or ``h + alpha (h . u_from) (u_to - u_from)`` (``scale="projection"``:
  at ``alpha = 1`` the state's component along ``u_from`` is moved onto ``u_to``).

Positions (``positions=``):

- ``"all"``: every position (every attended one when the attention mask is known).
- ``"last"``: the last attended token of each row. The hook learns the attention mask from
  the forward call: inside :func:`intervene` a forward pre-hook on the model reads the
  ``attention_mask=`` keyword of every call (``adapter.forward``, ``extract_states``,
  :func:`semhooks.studies.steering.generate` and plain ``model(ids, attention_mask=...)`` all pass it).
  Without a mask (a bare ``run_with_hooks`` in a notebook) ``"last"`` is the final column,
  which is right for unpadded and left-padded batches; for right padding, wrap the call in
  :func:`batch_context` or pass explicit positions.
- an int or a list of ints: the same columns for every row; a list of lists of ints: one
  list per row (e.g. from :func:`semhooks.find_span`); a bool tensor ``[batch, pos]``.
  Explicit positions are column indices in the padded batch the model runs (exactly what
  ``find_span`` returns for that batch); negative values count from the last column.
- ``"prompt_only"`` / ``"generated_only"``: columns before / from the prompt length, which
  :func:`semhooks.studies.steering.generate` (left padding, full forwards) sets for each step.

Directions may be ``[d_model]`` (every row) or ``[batch, d_model]`` (one per row); they are
stored in float32 and cast to the activation's device and dtype when the hook runs.

Controls: :func:`random_control` is the same intervention with a random direction of equal
norm (seeded); :func:`placebo` keeps the size of the edit at every position and replaces its
direction with a fixed random one (any intervention, including :class:`Patch`).

Modules: :mod:`~semhooks.interventions.base` (the :class:`Intervention` base class, directions,
positions), :mod:`~semhooks.interventions.edits` (Steer, Ablate, Clamp, Swap),
:mod:`~semhooks.interventions.patch`, :mod:`~semhooks.interventions.controls`,
:mod:`~semhooks.interventions.context` (the batch a hook sees) and
:mod:`~semhooks.interventions.guards` (NaN/Inf guard); :func:`intervene` lives here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.interventions.base import (
    Intervention,
    InterventionError,
    as_direction,
    resolve_positions,
)
from semhooks.interventions.context import (
    BatchInfo,
    batch_context,
    current_batch,
    install_mask_capture,
    remove_mask_capture,
)
from semhooks.interventions.controls import Placebo, placebo, random_control
from semhooks.interventions.edits import Ablate, Clamp, Steer, Swap
from semhooks.interventions.patch import Patch


# ---------------------------------------------------------------------- intervene
def _flatten(items: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for it in items:
        if isinstance(it, (list, tuple)) and not (
            len(it) == 2 and isinstance(it[0], str) and callable(it[1])
        ):
            out.extend(_flatten(it))
        elif it is not None:
            out.append(it)
    return out


@contextlib.contextmanager
def intervene(
    model: Any,
    *interventions: Any,
    attention_mask: Tensor | None = None,
    prompt_length: int | None = None,
) -> Iterator[list[Any]]:
    """Run any forward (``model(...)``, ``generate``, ``extract_states``) under interventions.

    ``interventions`` are :class:`Intervention` objects, lists of them, or raw
    ``(hook_name, fn)`` pairs. Every hook is validated (size, layer range, site) before any
    is attached; all are removed on exit, also when the block raises; nested blocks stack.
    The attention mask of each forward call is captured for ``positions="last"``; pass
    ``attention_mask``/``prompt_length`` to fix them for calls that do not pass a mask.
    Yields the list of interventions (read their ``n_fired``).
    """
    items = _flatten(interventions)
    hooks: list[tuple[str, Any]] = []
    for it in items:
        if isinstance(it, Intervention):
            hooks.extend(it.fwd_hooks(model))
        elif isinstance(it, tuple) and len(it) == 2 and callable(it[1]):
            hooks.append(it)
        else:
            raise TypeError(
                f"intervene takes Intervention objects or (hook_name, fn) pairs; got {it!r}"
            )
    adapter = adapt(model)
    captured = install_mask_capture(model)
    try:
        with batch_context(attention_mask, prompt_length), adapter.hooks(hooks):
            yield items
    finally:
        if captured:
            remove_mask_capture(model)


__all__ = [
    "Ablate",
    "BatchInfo",
    "Clamp",
    "Intervention",
    "InterventionError",
    "Patch",
    "Placebo",
    "Steer",
    "Swap",
    "as_direction",
    "batch_context",
    "current_batch",
    "intervene",
    "placebo",
    "random_control",
    "resolve_positions",
]
