"""Causal-intervention experiments: exact activation patching, attribution patching, concepts."""

from semhooks.studies.patching.align import AlignmentError, diff_span
from semhooks.studies.patching.attribution import attribution_patching
from semhooks.studies.patching.concept import concept_patching, orthonormal_basis
from semhooks.studies.patching.engine import GRID_SITES, Cell, PatchingError
from semhooks.studies.patching.grid import (
    CellScore,
    activation_patching,
    iter_activation_patching,
    logit_diff,
)
from semhooks.studies.patching.result import PatchingResult, spearman

__all__ = [
    "GRID_SITES",
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
