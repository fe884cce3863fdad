"""The model's vocabulary as a coordinate system: the semantic basis ``s_i = e_i W_U^+``.

A low wing (it reads the backend only), so that estimators and studies can both build on it.
"""

from semhooks.vocabulary.basis import (
    BasisReport,
    SemanticBasis,
    basis_report,
    label_basis,
    label_token_ids,
    self_consistency,
    semantic_basis,
    unembedding_hash,
)

__all__ = [
    "BasisReport",
    "SemanticBasis",
    "basis_report",
    "label_basis",
    "label_token_ids",
    "self_consistency",
    "semantic_basis",
    "unembedding_hash",
]
