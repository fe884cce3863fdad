"""fit_stacked: many MINE fits trained as one stacked model equal the separate fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from semhooks.estimators.mi import MINE, InfoNCE, can_stack, correlated_gaussians, fit_stacked

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pairs(n: int = 240, d: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    # independent, weak, strong and nonlinear dependence: the critics stop at different steps
    out = []
    for s, mi in enumerate((0.0, 0.5, 3.0)):
        x, y, _ = correlated_gaussians(n, d, mi, seed=s)
        out.append((x.numpy(), y.numpy()))
    x = np.random.default_rng(7).normal(size=(n, d))
    out.append((x, np.tanh(2 * x) + 0.1 * x**2))
    return [(np.asarray(a, np.float32), np.asarray(b, np.float32)) for a, b in out]


SETTINGS = {
    "default dropout and EMA": {},
    "two layers, weight decay": {"n_layers": 2, "weight_decay": 0.01},
    "no EMA, no dropout": {"ema_rate": None, "dropout": 0.0},
    "no patience, odd max_steps": {"patience": None, "max_steps": 47},
}  # fmt: skip


@pytest.mark.parametrize("extra", list(SETTINGS.values()), ids=list(SETTINGS))
def test_stacked_fits_equal_separate_fits(extra):
    # lr 1e-2: the critics stop at 40, 120 and 150 steps (independent, weak, strong pairs).
    # The two paths agree to ~1e-6 bits here; all four options at once with lr 1e-2 make the
    # training chaotic enough to amplify rounding to 1e-3 bits by step 100, in either path.
    settings = {"hidden": 16, "batch_size": 64, "max_steps": 150, "eval_every": 10,
                "eval_window": 3, "patience": 3, "lr": 1e-2, "seed": 4}  # fmt: skip
    est = MINE(**{**settings, **extra})
    pairs = _pairs()
    stacked = fit_stacked(est, pairs)
    separate = [clone(est).fit(x, y) for x, y in pairs]
    for a, b in zip(stacked, separate, strict=True):
        assert a.n_steps_ == b.n_steps_ and a.stopped_early_ == b.stopped_early_
        np.testing.assert_array_equal(a.steps_, b.steps_)
        np.testing.assert_allclose(a.history_, b.history_, atol=1e-4)
        assert a.mi_ == pytest.approx(b.mi_, abs=1e-4)
        assert a.mi_std_ == pytest.approx(b.mi_std_, abs=1e-4)
        assert a.ceiling_bits_ == b.ceiling_bits_ and a.n_features_in_ == b.n_features_in_
        params = list(zip(a.critic_.parameters(), b.critic_.parameters(), strict=True))
        if est.ema_rate is None:
            # without the EMA the DV loss ignores a constant shift of T: the output bias gets
            # a zero gradient up to rounding, which Adam's normalisation turns into full steps
            params = params[:-1]
        for pa, pb in params:
            torch.testing.assert_close(pa, pb, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.x_scale_, b.x_scale_)
        x, y = pairs[0]
        assert a.score(x, y) == pytest.approx(b.score(x, y), abs=1e-4)
    if extra.get("patience", 3) is not None:
        # the stack lost critics on the way: early stopping is per critic
        assert len({f.n_steps_ for f in separate}) > 1


def test_stacking_identical_pairs_gives_identical_fits():
    est = MINE(hidden=16, batch_size=64, max_steps=60, eval_every=10, seed=1)
    x, y = _pairs()[2]
    a, b = fit_stacked(est, [(x, y), (x.copy(), y.copy())])
    assert a.mi_ == b.mi_
    np.testing.assert_array_equal(a.history_, b.history_)


def test_stacked_refuses_what_it_cannot_reproduce():
    x, y = _pairs()[1]
    assert can_stack(MINE()) and not can_stack(InfoNCE())
    with pytest.raises(TypeError, match="needs a MINE, got InfoNCE"):
        fit_stacked(InfoNCE(), [(x, y)])
    with pytest.raises(ValueError, match="same shapes"):
        fit_stacked(MINE(), [(x, y), (x[:, :2], y)])
    with pytest.raises(ValueError, match="too few samples"):
        fit_stacked(MINE(), [(x[:10], y[:10])])
    assert fit_stacked(MINE(), []) == []
