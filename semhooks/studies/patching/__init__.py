"""Causal-intervention experiments: exact activation patching, attribution patching, concepts.

- :func:`activation_patching`: exact patching of a grid of sites (``resid_pre``,
  ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``, and per head: ``head`` outputs,
  ``q`` queries, ``k`` keys) x layers x positions, denoising or noising, many cells per
  forward, streamed by :func:`iter_activation_patching`.
- :func:`attribution_patching`: the same grid to first order from one forward and one
  backward pass, with AtP*'s query/key correction (the attention pattern recomputed exactly
  under a ``q``/``k`` patch) and GradDrop.
- :func:`concept_patching`: interchange or swap along a direction, with random and placebo
  controls.
- :class:`PatchingResult`: normalised scores (0 = corrupted, 1 = clean), ``plot``,
  ``save``/``load``, ``compare`` (Spearman, top-k overlap).

Clean and corrupted texts are aligned by characters (:mod:`.align`), so pairs may differ
in token count; positions are labels such as ``"span:last"`` and ``"last"``.
"""

from semhooks.studies.patching.align import AlignmentError, diff_span
from semhooks.studies.patching.attribution import attribution_patching
from semhooks.studies.patching.concept import concept_patching, orthonormal_basis
from semhooks.studies.patching.engine import GRID_SITES, HEAD_SITES, Cell, PatchingError
from semhooks.studies.patching.grid import (
    CellScore,
    activation_patching,
    iter_activation_patching,
    logit_diff,
)
from semhooks.studies.patching.result import PatchingResult, spearman

__all__ = [
    "GRID_SITES",
    "HEAD_SITES",
    "AlignmentError",
    "Cell",
    "CellScore",
    "PatchingError",
    "PatchingResult",
    "activation_patching",
    "attribution_patching",
    "concept_patching",
    "orthonormal_basis",
    "diff_span",
    "iter_activation_patching",
    "logit_diff",
    "spearman",
]
