"""SemanticCalibrator and the calibration study (semhooks.studies.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import cross_val_score

from semhooks import adapt
from semhooks.data.loaders import TextClassificationDataset
from semhooks.estimators.calibrator import ResidualAdapter
from semhooks.io.artifacts import ArtifactError
from semhooks.studies.calibration import (
    SemanticCalibrator,
    calibration_study,
    icl_prompt,
    label_word_logits,
    prompt_states,
    results_table,
    semantic_predict,
)

pytestmark = pytest.mark.usefixtures("private_basis_cache")


def _synthetic(n: int = 200, d: int = 16, k: int = 3, seed: int = 0):
    """States whose class signal is a small rotation away from the label bases, on top of a
    large shared offset that sits closest to basis 0, so raw nearest-basis labels are poor."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(k, d)).astype(np.float32)
    mixing = np.linalg.qr(rng.normal(size=(d, d)))[0].astype(np.float32)
    y = rng.integers(0, k, size=n)
    offset = 6 * basis[0] / np.linalg.norm(basis[0])
    x = basis[y] @ mixing + offset + 0.3 * rng.normal(size=(n, d))
    return x.astype(np.float32), y, basis


# ---------------------------------------------------------------------- the estimator
def test_calibration_learns_synthetic_clusters_and_ari_rises():
    x, y, basis = _synthetic()
    before = semantic_predict(x[140:], basis)
    cal = SemanticCalibrator(basis, progress=False, max_epochs=25, lr=5e-3, batch_size=64)
    cal.fit(x[:140], y[:140])
    after = cal.predict(x[140:])
    assert (before == y[140:]).mean() < 0.5
    assert cal.score(x[140:], y[140:]) > 0.95
    assert adjusted_rand_score(y[140:], after) > adjusted_rand_score(y[140:], before) + 0.5
    assert cal.classes_.tolist() == [0, 1, 2]
    z = cal.transform(x[140:])
    assert z.shape == (60, 16)
    # Predictions are the nearest label basis of the transformed states.
    cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (
        basis / np.linalg.norm(basis, axis=1, keepdims=True)
    ).T
    assert (cos.argmax(1) == after).all()
    proba = cal.predict_proba(x[140:])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert len(cal.history_["val_loss"]) == cal.n_epochs_
    assert 1 <= cal.best_epoch_ <= cal.n_epochs_


def test_adapter_is_identity_at_init():
    module = ResidualAdapter(16, 32, 0.0)
    h = torch.randn(5, 16)
    out = module(h)
    torch.testing.assert_close(out, h / h.pow(2).mean(-1, keepdim=True).sqrt())


def test_early_stopping_keeps_best_epoch():
    x, y, basis = _synthetic(n=100, seed=2)
    cal = SemanticCalibrator(
        basis, patience=2, max_epochs=80, lr=2e-2, batch_size=64, progress=False
    ).fit(x, y)
    assert cal.n_epochs_ < 80, "a large learning rate should overfit and stop early"
    assert cal.n_epochs_ == cal.best_epoch_ + 2
    # The kept epoch has the lowest validation loss (improvements under 1e-4 do not count).
    assert cal.history_["val_loss"][cal.best_epoch_ - 1] <= min(cal.history_["val_loss"]) + 1e-4


def test_seeded_and_restores_global_rng():
    x, y, basis = _synthetic(n=150, seed=1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = SemanticCalibrator(basis, seed=5, max_epochs=3, progress=False).fit(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    b = SemanticCalibrator(basis, seed=5, max_epochs=3, progress=False).fit(x, y)
    np.testing.assert_array_equal(a.transform(x), b.transform(x))
    c = SemanticCalibrator(basis, seed=6, max_epochs=3, progress=False).fit(x, y)
    assert not np.array_equal(a.transform(x), c.transform(x))


def test_sklearn_protocol():
    x, y, basis = _synthetic(n=150, seed=3)
    est = SemanticCalibrator(basis, max_epochs=15, lr=5e-3, batch_size=64, progress=False)
    with pytest.raises(NotFittedError):
        est.predict(x)
    params = est.get_params()
    assert params["temperature"] == 0.1 and params["basis"] is basis
    cloned = clone(est).set_params(temperature=0.2)
    assert cloned.temperature == 0.2 and est.temperature == 0.1
    scores = cross_val_score(est, x, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.8
    z = SemanticCalibrator(basis, max_epochs=3, progress=False).fit_transform(x, y)
    assert z.shape == x.shape


def test_no_validation_trains_all_epochs():
    x, y, basis = _synthetic(n=60, seed=4)
    cal = SemanticCalibrator(basis, validation_fraction=0.0, max_epochs=4, progress=False)
    cal.fit(torch.as_tensor(x), torch.as_tensor(y))
    assert cal.n_epochs_ == 4 and cal.history_["val_loss"] == []


def test_bad_inputs():
    x, y, basis = _synthetic(n=40, seed=0)
    cal = SemanticCalibrator(basis, max_epochs=2, progress=False)
    with pytest.raises(ValueError, match="width 10 but the label basis has d_model=16"):
        cal.fit(np.zeros((40, 10), np.float32), y)
    with pytest.raises(ValueError, match="2-D"):
        cal.fit(x[0], y[:1])
    with pytest.raises(ValueError, match="one label per state"):
        cal.fit(x, y[:10])
    with pytest.raises(ValueError, match="label 3 is out of range"):
        cal.fit(x, np.full(40, 3))
    with pytest.raises(ValueError, match="string labels need a basis with label words"):
        cal.fit(x, np.array(["a"] * 40))
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        cal.fit(bad, y)
    with pytest.raises(ValueError, match="no basis"):
        SemanticCalibrator(progress=False).fit(x, y)
    with pytest.raises(ValueError, match="temperature"):
        SemanticCalibrator(basis, temperature=0, progress=False).fit(x, y)
    cal.fit(x, y)
    with pytest.raises(ValueError, match="width 15"):
        cal.predict(x[:, :15])


def test_word_labels_unknown_words_and_collisions(tiny_gpt2):
    with pytest.raises(ValueError, match="label words collide"):
        SemanticCalibrator.from_model(tiny_gpt2, ["movie", "movie"])
    cal = SemanticCalibrator.from_model(tiny_gpt2, ["bad", "good"], max_epochs=3, progress=False)
    assert cal.label_words == ["bad", "good"]
    x = np.random.default_rng(0).normal(size=(30, 64)).astype(np.float32)
    words = np.array(["bad", "good"] * 15)
    with pytest.raises(ValueError, match=r"unknown label word\(s\) \['great'\]"):
        cal.fit(x, np.array(["bad", "great"] * 15))
    cal.fit(x, words)
    assert cal.classes_.tolist() == ["bad", "good"]
    assert set(cal.predict(x).tolist()) <= {"bad", "good"}
    assert 0.0 <= cal.score(x, words) <= 1.0


def test_unknown_label_word_in_from_model(tiny_bert):
    with pytest.raises(ValueError, match="unknown label word"):
        SemanticCalibrator.from_model(tiny_bert, ["日本", "cat"])


def test_save_load_roundtrip_and_refusal(tiny_gpt2, tiny_llama, tmp_path):
    cal = SemanticCalibrator.from_model(
        tiny_gpt2, ["bad", "good"], max_epochs=5, progress=False, temperature=0.2
    )
    x = np.random.default_rng(1).normal(size=(40, 64)).astype(np.float32)
    cal.fit(x, np.array(["bad", "good"] * 20))
    path = cal.save(tmp_path / "cal.safetensors")
    back = SemanticCalibrator.load(path, model=tiny_gpt2)
    np.testing.assert_array_equal(back.predict(x), cal.predict(x))
    # float32 scores: the loaded tensors may sit in another memory layout, so BLAS may sum
    # in another order (seen: 2.5e-6 relative on one machine); 1e-5 is ~80 float32 ulps.
    np.testing.assert_allclose(
        back.decision_function(x), cal.decision_function(x), rtol=1e-5, atol=1e-6
    )
    assert back.get_params()["temperature"] == 0.2
    assert back.label_words == ["bad", "good"]
    assert back.basis.provenance["model"] == "tiny-gpt2"
    with pytest.raises(ArtifactError, match="made on 'tiny-gpt2'.*allow_other_model"):
        SemanticCalibrator.load(path, model=tiny_llama)
    with pytest.raises(ArtifactError, match="different W_U"):
        SemanticCalibrator.load(path, model=tiny_llama, allow_other_model=True)
    with pytest.raises(NotFittedError):
        SemanticCalibrator(cal.basis).save(tmp_path / "x.safetensors")
    # Plain-array basis round-trips too.
    xs, ys, basis = _synthetic(n=60)
    plain = SemanticCalibrator(basis, max_epochs=2, progress=False).fit(xs, ys)
    back2 = SemanticCalibrator.load(plain.save(tmp_path / "plain.safetensors"))
    np.testing.assert_array_equal(back2.predict(xs), plain.predict(xs))


# ---------------------------------------------------------------------- prompts and states
def test_prompt_states_and_label_logits_match_model_logits(tiny_gpt2):
    adapter = adapt(tiny_gpt2)
    texts = ["I loved this movie", "boring film", "The capital of France is Paris, and"]
    template = "Review: {text}\nSentiment:"
    states = prompt_states(tiny_gpt2, texts, template=template, progress=False, batch_size=2)
    ids = [5, 50, 77]
    prompts = [template.replace("{text}", t) for t in texts]
    logits = label_word_logits(tiny_gpt2, prompts, ids, progress=False, batch_size=2)
    for i, p in enumerate(prompts):
        ref = adapter.forward(adapter.tokenize([p]))
        assert ref is not None
        np.testing.assert_allclose(logits[i], ref[0, -1, ids].numpy(), rtol=1e-4, atol=1e-4)
        # Final-normed last-layer state times W_U (+ b_U) is the model's logit vector.
        with torch.no_grad():
            mine = torch.as_tensor(states[i]) @ adapter.W_U + adapter.b_U
        np.testing.assert_allclose(mine[ids].numpy(), ref[0, -1, ids].numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"\{text\}"):
        prompt_states(tiny_gpt2, texts, template="no slot", progress=False)


def test_icl_prompt():
    assert (
        icl_prompt([("great", "positive"), ("awful", "negative")], "fine")
        == "Review: great\nSentiment: positive\n\nReview: awful\nSentiment: negative"
        "\n\nReview: fine\nSentiment:"
    )


def test_study_on_tiny_model_runs_every_method(tiny_gpt2):
    pos = ["I loved this movie", "wonderful and moving", "it was wonderful", "loved it"]
    neg = ["I hated this film", "boring and dull", "far too long", "dull, boring film"]
    texts = (pos + neg) * 3
    labels = np.array(([1] * 4 + [0] * 4) * 3)
    data = TextClassificationDataset(texts, labels, ("negative", "positive"), name="toy")
    train, test = data.split(0.5, seed=0)
    res = calibration_study(
        tiny_gpt2,
        train,
        test,
        ["bad", "good"],
        k_shot=2,
        icl_limit=6,
        knn_k=3,
        calibrator_params={"max_epochs": 5},
        progress=False,
        name="toy",
    )
    assert [s.method.split(" (")[0] for s in res.scores] == [
        "zero-shot label-word logits",
        "2-shot ICL label-word logits",
        "kNN on raw states",
        "logistic regression on raw states",
        "nearest label basis, raw states",
        "semantic calibration",
    ]
    assert res.score("2-shot").n_test == 6 and res.score("zero-shot").n_test == len(test)
    assert all(0 <= s.accuracy <= 1 and -1 <= s.ari <= 1 for s in res.scores)
    assert len(res.info["icl_demos"]) == 2
    assert {w for _, w in res.info["icl_demos"]} == {"bad", "good"}
    assert "semantic calibration" in res.table()
    assert results_table([res, res]).count("| toy | 2 | 12 | 12 |") == 2
    assert results_table([res], metric="accuracy").count(" / ") == 0
    assert res.to_dict()["scores"][0]["method"] == "zero-shot label-word logits"
    import matplotlib

    matplotlib.use("Agg")
    assert len(res.plot().axes) == 2
    with pytest.raises(ValueError, match="label words"):
        calibration_study(tiny_gpt2, train, test, ["bad"], progress=False)
    # Several layers share one forward pass and the output-based rows.
    both = calibration_study(
        tiny_gpt2,
        train,
        test,
        ["bad", "good"],
        layer=[0, -1],
        k_shot=0,
        knn_k=3,
        calibrator_params={"max_epochs": 2},
        progress=False,
    )
    assert [r.layer for r in both] == [0, 2]
    assert both[0].scores[0] == both[1].scores[0]
    assert both[1].score("zero-shot").accuracy == res.score("zero-shot").accuracy
    assert both[1].score("logistic").accuracy == res.score("logistic").accuracy


# ---------------------------------------------------------------------- SmolLM2 behaviour
# Measured (seeded, CPU, 1 and 2 threads alike): 1,000 balanced items of the SST-2 train
# sample -> 200 balanced dev sentences, last layer: zero-shot label-word logits 0.800 (ARI
# 0.357), nearest label basis of the raw states 0.505 (ARI 0.000), semantic calibration 0.850
# (ARI 0.487): +0.050. With only 400 training items the calibrator does NOT beat zero-shot
# (0.778 vs 0.780 on the full dev set), so the test needs the 1,000.
SST2_TRAIN_N, SST2_TEST_N, SST2_MARGIN = 1000, 200, 0.03


@pytest.mark.real
@pytest.mark.slow
def test_calibration_beats_zero_shot_on_sst2(smollm2):
    from semhooks.data.loaders import load_sst2

    train = load_sst2("train_sample", limit=SST2_TRAIN_N, seed=0)
    test = load_sst2("dev", limit=SST2_TEST_N, seed=0)
    res = calibration_study(
        smollm2,
        train,
        test,
        ["negative", "positive"],
        k_shot=0,
        progress=False,
        batch_size=32,
    )
    zero_shot = res.score("zero-shot")
    before = res.score("nearest label basis")
    after = res.score("semantic calibration")
    assert after.accuracy >= zero_shot.accuracy + SST2_MARGIN, res.table()
    assert after.ari > before.ari + 0.2, res.table()
    assert res.info["label_tokens"] == [" negative", " positive"]
