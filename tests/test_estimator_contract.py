"""One estimator contract for everything semhooks learns (issue 14).

Every estimator is a scikit-learn ``BaseEstimator``: parameters read from the ``__init__``
signature (``get_params``/``set_params`` round trip), :class:`sklearn.exceptions.NotFittedError`
before ``fit``, :func:`sklearn.base.clone` works, and a clone fitted on the same data gives
the same result (the oracle: fitting depends on the parameters and the data alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

import semhooks as sh
from semhooks.estimators.mi import MINE, GaussianMI, InfoNCE, correlated_gaussians
from semhooks.relations import LRC, LRE, RelationPrompt


def _xy(n: int = 60, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(0)
    y = np.arange(n) % 2
    X = g.normal(size=(n, d)) + 1.5 * y[:, None] * np.eye(d)[0]
    return X, y


def _token_states() -> tuple[Any, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    n, t, d = 40, 4, 6
    x = torch.randn(n, t, d, generator=g)
    y = torch.arange(n) % 2
    x[:, 1, 0] = (y * 2 - 1).float() * 2
    item = torch.arange(n).repeat_interleave(t)
    pos = torch.arange(t).repeat(n)
    states = sh.LayerStates(
        x.reshape(1, n * t, d), [0], "resid_post", None, "all", {"n_items": n}, item, pos
    )
    return states, y.numpy()


def _prompts() -> list[RelationPrompt]:
    subjects = ["France", "Italy", "Spain", "Germany", "Paris", "Rome"]
    return [
        RelationPrompt(f"The capital of {s} is", s, o, "toy")
        for s, o in zip(subjects, ["Cat", "Dog"] * 3, strict=True)
    ]


@dataclass
class Case:
    """How to make, fit, use-before-fit and read the result of one estimator."""

    make: Callable[[], BaseEstimator]
    fit: Callable[[BaseEstimator, Any], BaseEstimator]
    use: Callable[[BaseEstimator], Any]  # raises NotFittedError on an unfitted estimator
    result: Callable[[BaseEstimator], Any]


def _mi_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _ = correlated_gaussians(200, 2, 1.0, seed=0)
    return x, y


CASES: dict[str, Case] = {
    "MeanDifference": Case(
        lambda: sh.MeanDifference(),
        lambda e, _: e.fit(*_xy()),
        lambda e: e.transform(_xy()[0]),
        lambda e: e.direction_,
    ),
    "ProbeDirection": Case(
        lambda: sh.ProbeDirection(C=0.5),
        lambda e, _: e.fit(*_xy()),
        lambda e: e.transform(_xy()[0]),
        lambda e: e.direction_,
    ),
    "PCADirection": Case(
        lambda: sh.PCADirection(),
        lambda e, _: e.fit(_xy()[0], _xy()[1]),
        lambda e: e.transform(_xy()[0]),
        lambda e: e.direction_,
    ),
    "AttentionPooler": Case(
        lambda: sh.AttentionPooler(epochs=20, lr=5e-2, progress=False),
        lambda e, _: e.fit(*_token_states()),
        lambda e: e.scores(torch.zeros(2, 4, 6), 0),
        lambda e: e.scorers_[0],
    ),
    "SemanticCalibrator": Case(
        lambda: sh.SemanticCalibrator(
            torch.eye(8)[:2], max_epochs=3, batch_size=16, progress=False
        ),
        lambda e, _: e.fit(*_xy()),
        lambda e: e.predict(_xy()[0]),
        lambda e: e.predict_proba(_xy()[0]),
    ),
    "GaussianMI": Case(
        lambda: GaussianMI(),
        lambda e, _: e.fit(*_mi_data()),
        lambda e: check_is_fitted(e),
        lambda e: e.mi_,
    ),
    "MINE": Case(
        lambda: MINE(hidden=16, batch_size=64, max_steps=20, eval_every=5, eval_window=2),
        lambda e, _: e.fit(*_mi_data()),
        lambda e: e.score(*_mi_data()),
        lambda e: e.history_,
    ),
    "InfoNCE": Case(
        lambda: InfoNCE(hidden=16, embed=8, batch_size=64, max_steps=20, eval_every=5),
        lambda e, _: e.fit(*_mi_data()),
        lambda e: e.score(*_mi_data()),
        lambda e: e.history_,
    ),
    "LRE": Case(
        lambda: LRE(0, 2, beta=2.0, progress=False),
        lambda e, model: e.fit(model, _prompts()[:2]),
        lambda e: e.predict(torch.zeros(1, 64)),
        lambda e: e.weight_,
    ),
    "LRC": Case(
        lambda: LRC(0, 2, rank=8, n_lre_prompts=2, progress=False),
        lambda e, model: e.fit(model, _prompts()),
        lambda e: e.decision_function(torch.zeros(1, 64)),
        lambda e: e.vectors_,
    ),
    "SAETrainer": Case(
        lambda: sh.SAETrainer(d_sae=16, k=4, n_steps=30, batch_size=32),
        lambda e, _: e.fit(_xy(n=80)[0].astype(np.float32)),
        lambda e: e.transform(_xy(n=4)[0].astype(np.float32)),
        lambda e: e.sae_.W_dec_,
    ),
}
#: estimators whose learned state is loaded, not fitted: ``fit`` only checks it is there
LOADED_NOT_FITTED = {"SparseAutoencoder": "weights come from load_sae or SAETrainer"}


def _same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_public_estimator_is_covered():
    public = {
        name
        for name in sh.__all__
        if isinstance(getattr(sh, name), type) and hasattr(getattr(sh, name), "fit")
    }
    assert public <= set(CASES) | set(LOADED_NOT_FITTED), sorted(public - set(CASES))


def test_a_loaded_sparse_autoencoder_clones_unfitted_and_fit_only_checks():
    trainer = sh.SAETrainer(d_sae=16, k=4, n_steps=30, batch_size=32)
    sae = trainer.fit(_xy(n=80)[0].astype(np.float32)).sae_
    assert isinstance(sae, BaseEstimator)
    assert sae.fit() is sae  # fitted weights: fit only checks
    twin = clone(sae)
    assert twin.get_params() == sae.get_params()
    with pytest.raises(NotFittedError):
        twin.fit()
    with pytest.raises(NotFittedError):
        twin.transform(_xy(n=2)[0].astype(np.float32))


@pytest.mark.parametrize("name", sorted(CASES))
def test_estimator_contract(name, tiny_llama):
    case = CASES[name]
    est = case.make()
    assert isinstance(est, BaseEstimator)

    params = est.get_params()
    again = type(est)(**params)
    assert again.get_params().keys() == params.keys()
    assert all(again.get_params()[k] is v for k, v in params.items())
    first = sorted(params)[0]
    assert est.set_params(**{first: params[first]}) is est

    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    with pytest.raises(NotFittedError):
        case.use(est)

    twin = clone(est)
    assert twin is not est and type(twin) is type(est)
    fitted = case.fit(est, tiny_llama)
    assert fitted is est
    check_is_fitted(est)
    case.use(est)
    with pytest.raises(NotFittedError):
        check_is_fitted(twin)  # clone copies parameters, never fitted state
    _same(case.result(case.fit(twin, tiny_llama)), case.result(est))
    # a clone of a fitted estimator is unfitted again
    with pytest.raises(NotFittedError):
        check_is_fitted(clone(est))


def test_old_exception_names_are_sklearns():
    from semhooks.estimators import mi
    from semhooks.relations import NotFittedError as RelationsNotFitted

    assert mi.NotFittedError is NotFittedError
    assert issubclass(RelationsNotFitted, NotFittedError)
    assert issubclass(RelationsNotFitted, RuntimeError)  # what semhooks 0.1 raised
    with pytest.raises(RelationsNotFitted):
        LRE(0, 2).predict(torch.zeros(1, 64))
