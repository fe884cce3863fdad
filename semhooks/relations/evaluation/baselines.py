"""Linear baselines for LRCs at the subject layer: logistic regression, linear SVM and
mean-difference directions (:class:`semhooks.MeanDifference`), on the same states and split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import Tensor

from semhooks.estimators.directions import MeanDifference

__all__ = ["Baseline", "fit_baselines"]


@dataclass
class Baseline:
    """A linear baseline at the subject layer: a classifier plus one direction per object.

    ``kind``: ``"logistic"``, ``"svm"`` or ``"mean_difference"``. ``vectors`` ``[C, d]``
    are unit directions (the per-class weight vectors; for two classes ``+w`` and ``-w``),
    used for the causal swap; :meth:`predict` uses the fitted classifier (with intercepts).
    """

    kind: str
    classes: list[str]
    vectors: Float[Tensor, "c d"]
    estimator: Any = None

    def predict_states(self, states: Float[Tensor, "n d"]) -> list[str]:
        h = torch.atleast_2d(torch.as_tensor(states, dtype=torch.float32))
        if self.estimator is None:
            idx = (h @ self.vectors.T).argmax(-1).tolist()
            return [self.classes[i] for i in idx]
        return [str(c) for c in self.estimator.predict(h.numpy())]


def fit_baselines(
    states: Float[Tensor, "n d"],
    objects: Sequence[str],
    kinds: Sequence[str] = ("logistic", "svm", "mean_difference"),
    *,
    seed: int = 0,
) -> dict[str, Baseline]:
    """Fit the baselines on subject-layer training states and their objects.

    - ``logistic``: multinomial logistic regression (scikit-learn, L2, C = 1) on
      standardised states; directions are the class weights mapped back to raw states.
    - ``svm``: one-vs-rest linear SVM (``LinearSVC``, C = 1) on standardised states.
    - ``mean_difference``: ``v_o = normalize(mean(h | o) - mean(h | not o))``, classify by
      ``argmax_o v_o . h`` (like the LRC).
    """
    X = torch.as_tensor(states, dtype=torch.float32)
    y = np.asarray(list(objects))
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise ValueError("baselines need training states of at least two objects")
    out: dict[str, Baseline] = {}
    for kind in kinds:
        if kind == "mean_difference":
            V = torch.stack(
                [MeanDifference(pos_label=c, normalize=True).fit(X, y).direction_ for c in classes]
            )
            out[kind] = Baseline(kind, classes, V)
            continue
        if kind == "logistic":
            clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
        elif kind == "svm":
            clf = LinearSVC(C=1.0, max_iter=5000, random_state=seed)
        else:
            raise ValueError(f"unknown baseline {kind!r}; use logistic, svm or mean_difference")
        pipe = make_pipeline(StandardScaler(), clf).fit(X.numpy(), y)
        scale = pipe[0].scale_
        coef = np.asarray(pipe[-1].coef_) / scale  # back to raw-state coordinates
        if coef.shape[0] == 1:  # binary: one weight vector for classes[1]
            coef = np.concatenate([-coef, coef])
        model_classes = [str(c) for c in pipe[-1].classes_]
        order = [model_classes.index(c) for c in classes]
        V = torch.as_tensor(coef[order], dtype=torch.float32)
        out[kind] = Baseline(kind, classes, V / V.norm(dim=-1, keepdim=True), pipe)
    return out
