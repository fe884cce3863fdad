"""Mutual-information estimators with scikit-learn-style ``fit`` / ``mi_``.

Three estimators of I(X; Y) for paired samples ``x: [n, dx]``, ``y: [n, dy]``, all reported
in **bits**:

- :class:`MINE`: the Donsker-Varadhan (DV) lower bound of Belghazi et al. 2018 ("MINE:
  Mutual Information Neural Estimation"), with an MLP critic on the concatenated pair,
  shuffled pairs standing in for the product of marginals, and the paper's moving-average
  gradient correction. This is the estimator used by Chen et al. 2024 ("Quantifying Semantic
  Emergence in Language Models", arXiv 2405.12617).
- :class:`InfoNCE`: the contrastive bound of van den Oord et al. 2018 / Poole et al. 2019,
  with a separable or bilinear critic. It can never exceed ``log2`` of the number of
  candidates it scores against.
- :class:`GaussianMI`: the closed form for jointly Gaussian variables, with the exact
  finite-sample bias correction of the log-determinants. Cheap, and a reference: it is exact
  for Gaussians and a lower bound on the MI of any distribution with the same covariance
  (hence blind to non-linear dependence).

Pitfalls the estimators surface rather than hide:

- Neural estimates are computed on **held-out** pairs, and the reported value is the mean over
  the last ``eval_window`` evaluations, never the maximum over training steps (the maximum is
  an upward-biased statistic). Every evaluation is kept in ``history_``.
- Lower bounds estimated from N samples saturate near ``log2 N`` (McAllester & Stratos 2020):
  ``MINE.ceiling_bits_`` and ``InfoNCE.bound_bits_`` say where. A deterministic map (e.g. a
  transformer block) has MI bounded only by ``log2(#distinct inputs)``; report that beside
  the estimate.
- Everything is seeded with a private ``torch.Generator``; the global RNG is not touched.
- Dimension versus sample size: a critic must be *learned* from the training split, and what
  it fits to noise costs it on held-out pairs (about ``dx*dy / (2 n_train ln 2)`` bits for a
  bilinear critic). On correlated Gaussians with n = 4000 (``benchmarks/mi_validation.py``)
  the neural estimators are within ~0.1-0.4 bits of the truth up to 4 bits at d = 16, recover
  about half of it at d = 64, and read ~0 at d = 576 even for 8 true bits, where
  :class:`GaussianMI` is within ~0.35 bits. For d in the hundreds, use :class:`GaussianMI`
  as the reference, or reduce the dimension first (any fixed map of x or y can only lower
  the MI, so the estimate stays a lower bound).

``correlated_gaussians`` makes pairs with a known MI and ``validate_estimator`` tabulates an
estimator's error on them.

The package: :mod:`.base` (input checks, the estimator base), :mod:`.neural` (the shared
training loop), :mod:`.mine`, :mod:`.stacked` (many MINE fits of equal shapes trained as one
stacked model: ``fit_stacked``), :mod:`.infonce`, :mod:`.gaussian`, :mod:`.validation`. It
imports nothing else from semhooks.
"""

from semhooks.estimators.mi.base import MIEstimator, NotFittedError
from semhooks.estimators.mi.gaussian import GaussianMI
from semhooks.estimators.mi.infonce import InfoNCE
from semhooks.estimators.mi.mine import MINE
from semhooks.estimators.mi.stacked import can_stack, fit_stacked
from semhooks.estimators.mi.validation import (
    ValidationRow,
    correlated_gaussians,
    validate_estimator,
    validation_table_markdown,
)

__all__ = [
    "MINE",
    "InfoNCE",
    "GaussianMI",
    "MIEstimator",
    "NotFittedError",
    "ValidationRow",
    "can_stack",
    "correlated_gaussians",
    "fit_stacked",
    "validate_estimator",
    "validation_table_markdown",
]
