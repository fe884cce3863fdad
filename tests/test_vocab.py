"""Semantic basis, semantic logits and the vocabulary lens (semhooks.studies.vocab)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from semhooks import adapt
from semhooks.studies.vocab import (
    SemanticBasis,
    basis_report,
    label_basis,
    label_token_ids,
    self_consistency,
    semantic_basis,
    semantic_logits,
    unembedding_hash,
    vocab_lens,
)
from semhooks.vocabulary import basis as basis_module

pytestmark = pytest.mark.usefixtures("private_basis_cache")


@pytest.fixture(scope="module")
def full_rank_model():
    """A tiny Llama whose vocabulary (120) is smaller than d_model (128): W_U has full column
    rank, so every basis vector reproduces its one-hot logits exactly."""
    from semhooks.testing import tiny_model

    model = tiny_model("llama", d_model=128, vocab_size=120)
    assert adapt(model).d_vocab <= adapt(model).d_model
    return model


def _rand_w(d: int, v: int, seed: int) -> torch.Tensor:
    return torch.randn(d, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------- basis == pinv
@pytest.mark.parametrize(("d", "v"), [(16, 200), (40, 25), (32, 32)])
def test_gram_route_equals_pinv_on_random_matrices(d, v):
    w = _rand_w(d, v, seed=d + v)
    gram = semantic_basis(w, dtype=torch.float64, cache=False).vectors
    ref = torch.linalg.pinv(w.float().double())
    assert gram.shape == (v, d)
    torch.testing.assert_close(gram, ref, rtol=1e-9, atol=1e-11)


@settings(max_examples=15, deadline=None)
@given(
    d=st.integers(2, 24),
    v=st.integers(2, 60),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_subset_rows_equal_full_pinv_rows(d, v, seed, data):
    w = _rand_w(d, v, seed)
    ids = data.draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=8))
    sub = semantic_basis(w, ids, dtype=torch.float64, cache=False)
    assert sub.token_ids.tolist() == ids
    ref = torch.linalg.pinv(w.float().double())[ids]
    scale = float(ref.abs().max())
    torch.testing.assert_close(sub.vectors, ref, rtol=1e-7, atol=1e-9 * scale)


def test_gram_route_equals_pinv_route_on_models(tiny_gpt2, full_rank_model):
    for model in (tiny_gpt2, full_rank_model):
        gram = semantic_basis(model, dtype=torch.float64).vectors
        pinv = semantic_basis(model, method="pinv", dtype=torch.float64).vectors
        torch.testing.assert_close(gram, pinv, rtol=1e-8, atol=1e-10)


def test_basis_satisfies_least_squares_definition(tiny_gpt2):
    # s_i minimises ||s W_U - e_i||: the residual is orthogonal to the row space of W_U.
    w = adapt(tiny_gpt2).W_U.detach().double()
    s = semantic_basis(tiny_gpt2, [3, 17, 99], dtype=torch.float64).vectors
    resid = s @ w - torch.eye(w.shape[1], dtype=torch.float64)[[3, 17, 99]]
    torch.testing.assert_close(
        resid @ w.T, torch.zeros(3, w.shape[0], dtype=torch.float64), atol=1e-9, rtol=0
    )


# ---------------------------------------------------------------------- self-consistency
def test_full_column_rank_is_100_percent_self_consistent(full_rank_model):
    assert self_consistency(full_rank_model) == 1.0
    w = adapt(full_rank_model).W_U.detach().double()
    s = semantic_basis(full_rank_model, dtype=torch.float64).vectors
    torch.testing.assert_close(s @ w, torch.eye(w.shape[1], dtype=torch.float64), atol=1e-8, rtol=0)


def test_self_consistency_known_answer():
    # Tokens 0 and 1 share an unembedding column: both bases give logits (.5, .5, 0), which
    # peak at token 0 (first maximum), so token 1 fails; token 2 is exact. 2 of 3 tokens.
    w = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    frac, peaks = self_consistency(w, return_peaks=True)
    assert frac == pytest.approx(2 / 3)
    assert peaks.tolist() == [0, 0, 2]
    torch.testing.assert_close(
        semantic_basis(w).vectors, torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 1.0]])
    )


def test_basis_report_centering_known_answer():
    # W_U with rows of constant value: centring removes only the mean row component.
    w = _rand_w(8, 50, seed=3).float()
    rep = basis_report(w, progress=False)
    raw = semantic_basis(w, dtype=torch.float64).vectors
    wc = w.double() - w.double().mean(-1, keepdim=True)
    cen = torch.linalg.pinv(wc)
    cos = torch.nn.functional.cosine_similarity(raw, cen, dim=-1)
    assert rep.n_checked == 50 and rep.d_model == 8 and rep.d_vocab == 50
    assert rep.cosine_mean == pytest.approx(float(cos.mean()), abs=1e-6)
    assert rep.cosine_min == pytest.approx(float(cos.min()), abs=1e-6)
    peaks_c = (cen @ wc).argmax(-1)
    assert rep.self_consistency_centered == pytest.approx(
        float((peaks_c == torch.arange(50)).double().mean())
    )
    assert "self-consistency" in rep.table()


def test_basis_report_sample_is_seeded(tiny_gpt2):
    a = basis_report(tiny_gpt2, sample=50, seed=1, progress=False)
    b = basis_report(tiny_gpt2, sample=50, seed=1, progress=False)
    assert a.n_checked == 50
    assert a.self_consistency == b.self_consistency
    assert a.cosine_mean == b.cosine_mean


# ---------------------------------------------------------------------- disk cache
def test_full_basis_is_cached_on_disk_by_w_u_hash(tiny_gpt2, monkeypatch):
    from semhooks import cache_dir

    first = semantic_basis(tiny_gpt2)
    path = cache_dir() / "bases" / f"{unembedding_hash(tiny_gpt2)}.safetensors"
    assert path.is_file()

    def boom(*args, **kwargs):
        raise AssertionError("the cached basis should have been read, not recomputed")

    monkeypatch.setattr(basis_module, "_solve_basis", boom)
    again = semantic_basis(tiny_gpt2)
    torch.testing.assert_close(again.vectors, first.vectors)
    subset = semantic_basis(tiny_gpt2, [5, 2])
    torch.testing.assert_close(subset.vectors, first.vectors[[5, 2]])


def test_corrupt_cache_is_ignored_and_rewritten(tiny_gpt2):
    from semhooks import cache_dir

    path = cache_dir() / "bases" / f"{unembedding_hash(tiny_gpt2)}.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable basis cache"):
        basis = semantic_basis(tiny_gpt2)
    ref = semantic_basis(tiny_gpt2, cache=False)
    torch.testing.assert_close(basis.vectors, ref.vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        semantic_basis(tiny_gpt2)  # rewritten: reads cleanly now


def test_hash_follows_the_weights():
    w = _rand_w(6, 20, seed=0).float()
    h = unembedding_hash(w)
    assert h == unembedding_hash(w.clone()) and len(h) == 16
    w2 = w.clone()
    w2[0, 0] += 1e-3
    assert unembedding_hash(w2) != h
    assert unembedding_hash(w.T.contiguous().T) == h  # memory layout does not matter


def test_centered_basis_uses_its_own_cache_file(tiny_gpt2):
    from semhooks import cache_dir

    raw = semantic_basis(tiny_gpt2)
    cen = semantic_basis(tiny_gpt2, center_unembed=True)
    folder = cache_dir() / "bases"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{raw.w_u_hash}.safetensors", f"{raw.w_u_hash}-centered.safetensors"]
    )
    assert not torch.allclose(raw.vectors, cen.vectors)


# ---------------------------------------------------------------------- label words
@pytest.mark.real
def test_label_words_use_first_token_of_space_word(smollm2):
    basis = label_basis(smollm2, ["negative", "positive"])
    tok = adapt(smollm2).tokenizer
    assert basis.tokens == [" negative", " positive"]
    assert basis.token_ids.tolist() == [
        tok(" negative", add_special_tokens=False)["input_ids"][0],
        tok(" positive", add_special_tokens=False)["input_ids"][0],
    ]
    assert basis.provenance["label_words"] == ["negative", "positive"]


@pytest.mark.real
def test_smollm2_label_basis_solves_normal_equations(smollm2):
    # G s_i = u_i with G = W_U W_U^T (SmolLM2 ties embeddings: W_U = W_E^T).
    basis = label_basis(smollm2, ["negative", "positive"])
    w = adapt(smollm2).W_U.detach().double()
    s = semantic_basis(smollm2, basis.token_ids, dtype=torch.float64).vectors
    lhs = s @ (w @ w.T)
    rhs = w[:, basis.token_ids].T
    assert float((lhs - rhs).abs().max() / rhs.abs().max()) < 1e-8
    frac = self_consistency(smollm2, torch.arange(0, 49152, 193))
    assert frac > 0.99


def test_label_collision_names_both_words(tiny_gpt2):
    with pytest.raises(ValueError, match=r"'good' and 'good' all start with token"):
        label_token_ids(tiny_gpt2, ["good", "good"])


@pytest.mark.real
def test_label_collision_on_smollm2(smollm2):
    tok = adapt(smollm2).tokenizer
    a, b = "unbelievable", "unbelievably"
    assert (
        tok(" " + a, add_special_tokens=False)["input_ids"][0]
        == tok(" " + b, add_special_tokens=False)["input_ids"][0]
    )
    with pytest.raises(ValueError, match="label words collide"):
        label_basis(smollm2, [a, b])
    # The template matters: " sad" / " sadly" are distinct tokens, bare "sad" / "sadly" both
    # start with "s".
    ids, _ = label_token_ids(smollm2, ["sad", "sadly"])
    assert ids[0] != ids[1]
    with pytest.raises(ValueError, match="'sad' and 'sadly' all start with token 's'"):
        label_token_ids(smollm2, ["sad", "sadly"], template="{}")


def test_unknown_and_empty_label_words(tiny_bert, tiny_gpt2):
    with pytest.raises(ValueError, match="unknown label word '日本'.*unknown token"):
        label_token_ids(tiny_bert, ["日本", "cat"])
    with pytest.raises(ValueError, match="empty"):
        label_token_ids(tiny_gpt2, ["", "cat"])
    with pytest.raises(ValueError, match="at least two"):
        label_token_ids(tiny_gpt2, ["cat"])
    with pytest.raises(TypeError):
        label_token_ids(tiny_gpt2, "cat")
    with pytest.raises(TypeError, match="label_basis"):
        semantic_basis(tiny_gpt2, ["cat", "dog"])
    with pytest.raises(ValueError, match="out of range"):
        semantic_basis(tiny_gpt2, [0, 10_000])


# ---------------------------------------------------------------------- semantic logits
def test_semantic_logits_are_cosines():
    basis = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    states = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    expected = torch.tensor([[1.0, 2**-0.5], [0.0, 2**-0.5], [0.0, 0.0]])
    torch.testing.assert_close(semantic_logits(states, basis), expected)
    torch.testing.assert_close(semantic_logits(states, basis, temperature=0.5), expected * 2)
    # Scale of the states and of the basis rows does not matter; arrays work too.
    torch.testing.assert_close(
        semantic_logits(states.numpy() * 7, basis * 3), expected, rtol=1e-6, atol=1e-6
    )
    # Leading dims are kept.
    assert semantic_logits(states.reshape(1, 3, 3), basis).shape == (1, 3, 2)


def test_semantic_logits_over_full_vocab_match_manual(tiny_gpt2):
    full = semantic_basis(tiny_gpt2)
    h = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    out = semantic_logits(h, full)
    assert out.shape == (4, adapt(tiny_gpt2).d_vocab)
    manual = torch.nn.functional.cosine_similarity(h[:, None], full.vectors[None], dim=-1)
    torch.testing.assert_close(out, manual, atol=1e-5, rtol=1e-5)
    sub = full.select([7, 3])
    torch.testing.assert_close(semantic_logits(h, sub), out[:, [7, 3]], atol=1e-6, rtol=1e-6)


def test_semantic_logits_bad_inputs():
    basis = torch.eye(4)
    with pytest.raises(ValueError, match="width 5 but the basis has d_model=4"):
        semantic_logits(torch.zeros(2, 5), basis)
    with pytest.raises(ValueError, match="temperature"):
        semantic_logits(torch.ones(2, 4), basis, temperature=0.0)
    with pytest.raises(ValueError, match=r"\[k, d_model\]"):
        semantic_logits(torch.ones(2, 4), torch.ones(4))
    with pytest.raises(TypeError):
        semantic_logits(torch.ones(2, 4, dtype=torch.long), basis)
    with pytest.raises(ValueError, match="token ids"):
        SemanticBasis(torch.eye(3), torch.tensor([0, 1]))


# ---------------------------------------------------------------------- vocab lens
def test_vocab_lens_matches_model_and_manual_readouts(tiny_gpt2):
    adapter = adapt(tiny_gpt2)
    texts = ["The capital of France is", "I loved this movie"]
    lens = vocab_lens(tiny_gpt2, texts, layers="all", top_k=4)
    assert lens.semantic_ids.shape == (3, 2, 4) and lens.layers == [0, 1, 2]
    assert lens.logit_lens_source == "transformer_lens"
    # Final layer: the logit lens is the model's own next-token ranking.
    for i, text in enumerate(texts):
        logits = adapter.forward(adapter.tokenize([text]))
        assert logits is not None
        top = logits[0, -1].topk(4)
        assert lens.logit_ids[-1, i].tolist() == top.indices.tolist()
    # Middle layer: semantic top-1 = argmax cos(final_norm(h), s_i), computed by hand.
    cache = tiny_gpt2.run_with_cache(adapter.tokenize(texts[:1]).input_ids)[1]
    h = cache["blocks.1.hook_resid_post"][0, -1]
    with torch.no_grad():
        hn = adapter.final_norm(h[None])[0]
    full = semantic_basis(tiny_gpt2).vectors
    manual = torch.nn.functional.cosine_similarity(hn[None], full, dim=-1)
    assert int(lens.semantic_ids[1, 0, 0]) == int(manual.argmax())
    assert float(lens.semantic_scores[1, 0, 0]) == pytest.approx(float(manual.max()), abs=1e-5)
    assert lens.agreement().shape == (3,)
    table = lens.table(1)
    assert table.count("\n| ") == 4 and "I loved this movie" in table


def test_vocab_lens_plot_and_errors(tiny_gpt2):
    import matplotlib

    matplotlib.use("Agg")
    lens = vocab_lens(tiny_gpt2, "The capital of France is", layers=[0, -1], top_k=3)
    assert lens.layers == [0, 2]
    fig = lens.plot()
    assert len(fig.axes) == 2
    with pytest.raises(IndexError):
        lens.table(5)
    with pytest.raises(ValueError, match="top_k"):
        vocab_lens(tiny_gpt2, "x y", top_k=0)
    with pytest.raises(ValueError, match="out of range"):
        vocab_lens(tiny_gpt2, "x y", layers=[7])


@pytest.mark.real
def test_vocab_lens_smollm2_final_layer_is_the_model_prediction(smollm2):
    lens = vocab_lens(smollm2, ["The capital of France is"], layers=[-1], top_k=3)
    tok = adapt(smollm2).tokenizer
    assert tok.decode([int(lens.logit_ids[0, 0, 0])]) == " Paris"
    assert " Paris" in [tok.decode([int(i)]) for i in lens.semantic_ids[0, 0]]


def test_numpy_basis_roundtrip():
    w = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    b = semantic_basis(w, [1, 4], cache=False)
    assert b.names == ["1", "4"] and b.d_model == 5 and len(b) == 2
    assert torch.allclose(b.unit().norm(dim=-1), torch.ones(2))
