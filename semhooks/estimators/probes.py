"""Linear probes: a standardised logistic regression with ``C`` chosen by stratified CV.

The probe is a scikit-learn :class:`~sklearn.pipeline.Pipeline` (so the estimator contract,
``clone`` and ``NotFittedError`` come from scikit-learn itself).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["fit_logistic_probe"]


def fit_logistic_probe(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[Any],
    Cs: Sequence[float],
    cv: int,
    seed: int,
) -> Any:
    """Standardise, then logistic regression with ``C`` chosen by stratified, shuffled,
    seeded ``cv``-fold cross-validation (liblinear). Returns the fitted pipeline."""
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(
            Cs=list(Cs),
            cv=folds,
            solver="liblinear",
            max_iter=1000,
            scoring="accuracy",
            random_state=seed,
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x, y)
    return clf
