"""Information emergence: how much more a block's output tells about its input for a whole
sequence than for its tokens taken one at a time.

Chen et al. 2024/2025, "Quantifying Semantic Emergence in Language Models" (arXiv 2405.12617);
METHODS.md section 7. The blocks of a decoder form a Markov chain
``h_0 -> h_1 -> ... -> h_L`` (``h_0`` the embedding output, ``h_{l+1}`` the output of block
``l``). For block ``l`` and token position ``t``:

.. math::
    IE(l, t) = I\\big(h^{macro}_{l+1,t};\\, h^{macro}_{l,t}\\big)
             - \\frac1t \\sum_{s=1}^{t} I\\big(h^{micro}_{l+1,s};\\, h^{micro}_{l,s}\\big)

- **macro**: the state at position ``t`` of the sequence, entering block ``l``
  (``blocks.{l}.hook_resid_pre``, i.e. the embedding for ``l = 0`` and
  ``blocks.{l-1}.hook_resid_post`` after) and leaving it (``blocks.{l}.hook_resid_post``).
  Position ``t`` attends to the whole prefix ``1..t``; the random variable is the prefix,
  the samples are the sequences.
- **micro**: the token at position ``s`` fed alone, with the model's BOS convention
  (SmolLM2: ``<|im_start|> token``, the state read at the token; a model without BOS gets the
  token alone at position 0), entering and leaving the same block. The random variable is
  the token at ``s``; the samples are again the sequences. The micro term of cell ``t`` is
  the plain mean over the content tokens ``s = 1..t`` (BOS excluded; for entity lists the
  separators count, and being constant they contribute exactly 0).
- Positions ``t`` count **content tokens from 1** (``t = 1`` is the first token after BOS).

Extraction (:func:`collect_pairs`): one forward pass over the sequences, cut after the last
needed token (a causal model's state at ``t`` does not depend on later tokens) and stopped
after the deepest needed block, reading the embedding output and every ``resid_post`` at the
requested positions; and one pass over the *distinct* tokens fed alone -- a micro state
depends only on the token id, so each distinct token is encoded once and indexed per sample.

Estimation (:func:`estimate_emergence`): one MI fit per (block, position) for the macro term
and per (block, token slot) for the micro term, with any estimator of :mod:`semhooks.estimators.mi`
(``fit(x, y)`` -> ``mi_`` in bits). States have ``d_model`` = 576 dimensions for SmolLM2 and
a study has ~2,000 samples, so the states are first reduced by PCA to ``reduce_dim``
components (default 32): one PCA per depth, fit on every sample that enters an MI fit at that
depth (macro states at all positions and micro states at all token slots, pooled), so the
macro and micro terms see the same projection. At ``t = 1`` the macro input (BOS + first
token) *is* the micro input, so ``IE(l, 1) = 0`` exactly for a seeded estimator: a built-in
check. By the data-processing inequality the MI of the projections is at most the MI of the
states: the reduction can only lower both terms.

Pitfalls this module surfaces rather than hides:

- A block is a deterministic (generically injective) map, so the true MI between its input
  and output is the entropy of the input: at most ``log2(#distinct inputs)``, which is
  ``log2(#distinct prefixes up to t)`` for the macro term and ``log2(#distinct tokens at s)``
  for the micro term. Both ceilings (and the plug-in entropies) are reported beside every
  estimate, with a warning when estimates come within ``warn_fraction`` of a ceiling.
  Estimated MI on such data measures how much dependence the estimator's critic can find
  in a few thousand samples, not a property of the block alone.
- DV/InfoNCE estimates from N held-out pairs saturate near ``log2 N`` (the estimator's own
  ceiling, also reported).
- Estimates are the estimator's held-out values (never the maximum over training steps) and
  every fit is seeded (the estimator's ``seed``, the same for every cell).
"""

from __future__ import annotations

from semhooks.studies.emergence.estimate import (
    ESTIMATOR_PRESETS,
    estimate_emergence,
    information_emergence,
    make_estimator,
)
from semhooks.studies.emergence.inputs import EntityLists, entity_lists, natural_sentences
from semhooks.studies.emergence.pairs import EmergencePairs, collect_pairs
from semhooks.studies.emergence.result import PROFILE_LINES_MAX, EmergenceResult

__all__ = [
    "ESTIMATOR_PRESETS",
    "PROFILE_LINES_MAX",
    "EmergencePairs",
    "EmergenceResult",
    "EntityLists",
    "collect_pairs",
    "entity_lists",
    "estimate_emergence",
    "information_emergence",
    "make_estimator",
    "natural_sentences",
]
