"""Directions from data: known answers on synthetic states, LayerStates input, I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import semhooks as sh
from semhooks import ArtifactError, extract_states
from semhooks.estimators.directions import MeanDifference, PCADirection, ProbeDirection
from semhooks.interventions import Steer


def _two_classes(n=200, d=16, seed=0, gap=3.0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=d)
    true /= np.linalg.norm(true)
    X = rng.normal(size=(n, d))
    y = np.arange(n) % 2
    X[y == 1] += gap * true
    return X, y, true


def _cos(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_mean_difference_is_the_class_mean_gap():
    X = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 0.0], [0.0, 4.0]])
    y = np.array([1, 1, 0, 0])
    md = MeanDifference().fit(X, y)
    torch.testing.assert_close(md.direction_, torch.tensor([2.0, -1.0]))
    assert md.norm_ == pytest.approx(np.sqrt(5))
    unit = MeanDifference(normalize=True).fit(X, y)
    torch.testing.assert_close(unit.direction_.norm(), torch.tensor(1.0))
    strings = MeanDifference(pos_label="pos").fit(X, ["pos", "pos", "neg", "neg"])
    torch.testing.assert_close(strings.direction_, md.direction_)
    np.testing.assert_allclose(md.transform(X)[:, 0], X @ np.array([2.0, -1.0]) / np.sqrt(5))


def test_probe_direction_recovers_the_separating_direction():
    X, y, true = _two_classes()
    probe = ProbeDirection(C=1.0).fit(X, y)
    assert probe.direction_.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert _cos(probe.direction_, true) > 0.9
    assert probe.score(X, y) > 0.9
    assert set(probe.predict(X).tolist()) == {0, 1}
    flipped = ProbeDirection(pos_label=0).fit(X, y)
    assert _cos(flipped.direction_, true) < -0.9


@pytest.mark.parametrize("center", [False, True])
def test_pca_direction_of_paired_differences(center):
    rng = np.random.default_rng(1)
    d, n = 16, 40
    true = rng.normal(size=d)
    true /= np.linalg.norm(true)
    base = rng.normal(size=(n, d)) * 3
    # The shift varies in size from pair to pair, so centred PCA finds it too.
    shift = (2.0 + rng.normal(size=(n, 1))) * true
    pos = base + shift + 0.05 * rng.normal(size=(n, d))
    X = np.concatenate([pos, base])
    y = np.array([1] * n + [0] * n)
    pca = PCADirection(center=center).fit(X, y)
    assert _cos(pca.direction_, true) > 0.99  # sign fixed: positive along the shift
    assert 0 < pca.explained_variance_ratio_ <= 1
    from_diffs = PCADirection(center=center).fit(pos - base)
    torch.testing.assert_close(from_diffs.direction_, pca.direction_)


def test_refuse_before_fit_and_bad_inputs():
    with pytest.raises(NotFittedError, match="fit"):
        _ = MeanDifference().vector
    with pytest.raises(NotFittedError):
        ProbeDirection().transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="both the positive class"):
        MeanDifference().fit(np.ones((3, 2)), [1, 1, 1])
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        MeanDifference().fit(np.ones((3, 2)), [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        MeanDifference().fit(np.full((2, 2), np.nan), [1, 0])
    with pytest.raises(ValueError, match="zero direction"):
        MeanDifference().fit(np.ones((4, 2)), [1, 0, 1, 0])
    with pytest.raises(ValueError, match="as many of each"):
        PCADirection().fit(np.random.randn(3, 4), [1, 1, 0])
    with pytest.raises(ValueError, match="features"):
        MeanDifference().fit(np.eye(2), [1, 0]).transform(np.ones((1, 3)))


def test_layer_states_input_and_steer_accepts_estimator(tiny_llama, tmp_path):
    texts = ["I loved this movie", "it was wonderful", "I hated this film", "boring and dull"]
    states = extract_states(tiny_llama, texts, layers=[1, 2], progress=False)
    y = [1, 1, 0, 0]
    with pytest.raises(ValueError, match="layer=..."):
        MeanDifference().fit(states, y)
    with pytest.raises(KeyError, match="layer 0 not extracted"):
        MeanDifference(layer=0).fit(states, y)
    md = MeanDifference(layer=2).fit(states, y)
    expected = states.layer(2)[:2].mean(0) - states.layer(2)[2:].mean(0)
    torch.testing.assert_close(md.direction_, expected)
    assert md.source_["layer"] == 2 and md.source_["site"] == "resid_post"
    # recognised by type, not by class name: a user's subclass is LayerStates too
    sub = type("MyStates", (type(states),), {})
    mine = sub.__new__(sub)
    mine.__dict__.update(states.__dict__)
    torch.testing.assert_close(MeanDifference(layer=2).fit(mine, y).direction_, expected)
    steer = Steer(md, 1.0, layers=md.source_["layer"])
    torch.testing.assert_close(steer.direction, md.direction_)

    path = md.save(tmp_path / "md.safetensors")
    back = MeanDifference.load(path)
    torch.testing.assert_close(back.direction_, md.direction_)
    assert back.get_params() == md.get_params() and back.source_["layer"] == 2
    with pytest.raises(ArtifactError, match="expected a 'ProbeDirection'"):
        ProbeDirection.load(path)
    with pytest.raises(ValueError, match="token-level"):
        token_level = extract_states(tiny_llama, texts, layers=[1], tokens="all", pool=None)
        MeanDifference(layer=1).fit(token_level, y)


def test_sklearn_clone_and_params():
    est = ProbeDirection(layer=3, C=0.5)
    copy = clone(est)
    assert copy.get_params() == est.get_params() and not hasattr(copy, "direction_")
    X, y, _ = _two_classes(n=40, d=4)
    Xt = MeanDifference().fit_transform(X, y)
    assert Xt.shape == (40, 1)


def test_same_seed_gives_bit_identical_probes_and_directions(tiny_gpt2, twice):
    import numpy as np

    from semhooks import AttentionPooler
    from semhooks.estimators.directions import MeanDifference, PCADirection, ProbeDirection

    texts = [f"{w} movie number {i}" for i, w in enumerate(["wonderful", "boring"] * 8)]
    labels = np.array([1, 0] * 8)
    states = sh.extract_states(tiny_gpt2, texts, layers=[1], progress=False)
    again = sh.extract_states(tiny_gpt2, texts, layers=[1], progress=False)
    assert torch.equal(states.states, again.states)
    for make in (ProbeDirection, MeanDifference, PCADirection):
        a, b = twice(lambda make=make: make(layer=1).fit(states, labels))
        assert np.array_equal(np.asarray(a.direction_), np.asarray(b.direction_)), make
    tokens = sh.extract_states(
        tiny_gpt2, texts, layers=[1], tokens="all", pool=None, progress=False
    )
    pools = twice(lambda: AttentionPooler(epochs=5, seed=3, progress=False).fit(tokens, labels))
    # the learned attributes themselves (vars() holds them in a dict of tensors, which the
    # old loop skipped: it compared nothing)
    a, b = pools
    assert sorted(a.scorers_) == sorted(b.scorers_) == [1]
    for layer in a.scorers_:
        assert torch.equal(a.scorers_[layer], b.scorers_[layer]), layer
    assert np.array_equal(a.classes_, b.classes_)
    assert a.train_accuracy_ == b.train_accuracy_
    other = AttentionPooler(epochs=5, seed=4, progress=False).fit(tokens, labels)
    assert not torch.equal(other.scorers_[1], a.scorers_[1])  # the seed is used
