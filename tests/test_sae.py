"""semhooks.sae: SAELens-layout loading, encode/decode per architecture against hand-written
references, feature hooks (splice, clamp, steer, ablate) against their defining equations,
the trainer's reported statistics, and feature reading from states and shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from semhooks.sae import SAEConfigError, SparseAutoencoder, load_sae

D_IN, D_SAE = 8, 24


def random_weights(arch: str, d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if arch in ("standard", "topk", "jumprelu"):
        w["b_enc"] = torch.randn(d_sae, generator=g) * 0.1
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g) * 0.3
    if arch == "gated":
        w["b_gate"] = torch.randn(d_sae, generator=g) * 0.1
        w["r_mag"] = torch.randn(d_sae, generator=g) * 0.1
        w["b_mag"] = torch.randn(d_sae, generator=g) * 0.1
    return w


def make_sae(arch: str, k: int = 5, hook_name: str = "blocks.1.hook_resid_post", d_in=D_IN):
    sae = SparseAutoencoder(arch, d_in, D_SAE, k if arch == "topk" else None, True, hook_name)
    return sae.set_weights(random_weights(arch, d_in))


def reference_encode(arch: str, w: dict, x: np.ndarray, k: int = 5) -> np.ndarray:
    """One row at a time, in float64, written from the papers' equations."""
    w = {n: t.double().numpy() for n, t in w.items()}
    out = np.zeros((x.shape[0], w["W_dec"].shape[0]))
    for r, row in enumerate(x.astype(np.float64)):
        xc = row - w["b_dec"]
        for j in range(out.shape[1]):
            if arch == "gated":
                gate = xc @ w["W_enc"][:, j] + w["b_gate"][j] > 0
                mag = xc @ (w["W_enc"][:, j] * np.exp(w["r_mag"][j])) + w["b_mag"][j]
                out[r, j] = max(mag, 0.0) if gate else 0.0
                continue
            pre = xc @ w["W_enc"][:, j] + w["b_enc"][j]
            if arch == "jumprelu":
                out[r, j] = pre if pre > w["threshold"][j] and pre > 0 else 0.0
            else:
                out[r, j] = max(pre, 0.0)
        if arch == "topk":
            pre = xc @ w["W_enc"] + w["b_enc"]
            keep = np.argsort(-pre)[:k]
            row_out = np.zeros_like(pre)
            row_out[keep] = np.maximum(pre[keep], 0.0)
            out[r] = row_out
    return out


def reference_decode(w: dict, f: np.ndarray) -> np.ndarray:
    return f.astype(np.float64) @ w["W_dec"].double().numpy() + w["b_dec"].double().numpy()


ARCHS = ["standard", "topk", "jumprelu", "gated"]


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_decode_equal_the_hand_written_reference(arch):
    sae = make_sae(arch)
    x = torch.randn(2, 7, D_IN, generator=torch.Generator().manual_seed(1))
    f = sae.encode(x)
    assert f.shape == (2, 7, D_SAE)
    ref = reference_encode(arch, sae.weights(), x.reshape(-1, D_IN).numpy())
    np.testing.assert_allclose(f.reshape(-1, D_SAE).numpy(), ref, atol=1e-5)
    assert (ref > 0).any() and (ref == 0).any()  # the test exercises both branches
    rec = reference_decode(sae.weights(), ref)
    np.testing.assert_allclose(sae.decode(f).reshape(-1, D_IN).numpy(), rec, atol=1e-5)
    if arch == "topk":
        assert int((f > 0).sum(-1).max()) <= 5


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_folder_round_trip_and_both_config_generations(tmp_path, arch):
    w = random_weights(arch)
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "dtype": "float32", "device": "cpu",
           "metadata": {"model_name": "tiny", "hook_name": "blocks.1.hook_resid_post",
                        "context_size": 128, "prepend_bos": True}}  # fmt: skip
    if arch == "topk":
        cfg["k"] = 5
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    assert sae.hook_name == "blocks.1.hook_resid_post" and sae.site_layer() == ("resid_post", 1)
    x = torch.randn(10, D_IN)
    np.testing.assert_allclose(
        sae.encode(x).numpy(), reference_encode(arch, w, x.numpy()), atol=1e-5
    )
    again = load_sae(sae.save(tmp_path / "copy"))
    assert torch.equal(again.encode(x), sae.encode(x))
    assert again.metadata_["model_name"] == "tiny"


def test_older_flat_config_with_topk_activation(tmp_path):
    save_file(random_weights("topk"), str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "hook_name":
           "blocks.0.hook_resid_pre", "hook_layer": 0, "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 3}, "apply_b_dec_to_input": False}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    assert (sae.architecture, sae.k, sae.apply_b_dec_to_input) == ("topk", 3, False)
    assert sae.site_layer() == ("resid_pre", 0)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"architecture": "matryoshka_batchtopk"}, "'architecture'"),
        ({"normalize_activations": "expected_average_only_in"}, "'normalize_activations'"),
        ({"hook_head_index": 3}, "'hook_head_index'"),
        ({"finetuning_scaling_factor": True}, "'finetuning_scaling_factor'"),
        ({"activation_fn_str": "tanh-relu"}, "'activation_fn_str'"),
        ({"my_new_flag": 1}, "my_new_flag"),
        ({"d_sae": "24"}, "'d_sae'"),
    ],
)
def test_config_fields_semhooks_does_not_understand_are_named(tmp_path, change, field):
    save_file(random_weights("standard"), str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, **change}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEConfigError, match=field):
        load_sae(tmp_path)


def test_unknown_provenance_field_passes_with_strict_false_and_weights_are_checked(tmp_path):
    w = random_weights("standard")
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "my_note": "x"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    assert load_sae(tmp_path, strict=False).metadata_["my_note"] == "x"
    save_file({**w, "scaling_factor": torch.ones(D_SAE)}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(SAEConfigError, match="scaling_factor"):
        load_sae(tmp_path, strict=False)
    save_file({**w, "W_dec": torch.zeros(3, 3)}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(SAEConfigError, match="'W_dec' has shape"):
        load_sae(tmp_path, strict=False)
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path / "nowhere")


def test_sklearn_contract():
    sae = SparseAutoencoder("topk", D_IN, D_SAE, k=4)
    with pytest.raises(NotFittedError):
        sae.encode(torch.zeros(D_IN))
    fitted = make_sae("topk", k=4)
    fresh = clone(fitted)
    assert fresh.get_params() == fitted.get_params() and not hasattr(fresh, "W_dec_")
    x = np.random.default_rng(0).normal(size=(5, D_IN)).astype(np.float32)
    np.testing.assert_allclose(fitted.inverse_transform(fitted.transform(x)),
                               fitted.reconstruct(torch.from_numpy(x)).numpy(), atol=1e-6)  # fmt: skip


# ---------------------------------------------------------------------- hooks
from semhooks import adapt, intervene  # noqa: E402
from semhooks.sae import FeatureClamp, FeatureRecorder, Splice, feature_ablate, feature_steer  # noqa: E402

TEXTS = ["The capital of France is Paris.", "I loved this movie", "The bank of the river"]
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(params=["standard", "topk", "jumprelu", "gated"])
def model_sae(request, tiny_llama):
    d = adapt(tiny_llama).d_model
    return tiny_llama, make_sae(request.param, k=6, hook_name=HOOK, d_in=d)


def _logits(model, batch, hooks=()):
    with torch.inference_mode():
        return model.run_with_hooks(
            batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=list(hooks)
        )


def test_splice_with_the_error_term_leaves_the_output_unchanged(model_sae):
    model, sae = model_sae
    batch = adapt(model).tokenize(TEXTS)
    clean = _logits(model, batch)
    splice = Splice(sae)
    with intervene(model, splice):
        got = adapt(model).forward(batch)
    torch.testing.assert_close(got, clean, atol=1e-5, rtol=1e-5)
    assert splice.n_fired == 1 and (splice.layers, splice.site) == (1, "resid_post")
    # the same hook dropped into a bare run_with_hooks
    torch.testing.assert_close(_logits(model, batch, [(HOOK, Splice(sae))]), clean,
                               atol=1e-5, rtol=1e-5)  # fmt: skip


def test_splice_without_error_term_runs_on_the_reconstruction(model_sae):
    model, sae = model_sae
    batch = adapt(model).tokenize(TEXTS)
    by_hand = _logits(model, batch, [(HOOK, lambda a, hook: sae.reconstruct(a).to(a.dtype))])
    got = _logits(model, batch, [(HOOK, Splice(sae, keep_error=False))])
    torch.testing.assert_close(got, by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, _logits(model, batch), atol=1e-3)


def test_clamping_a_feature_to_its_own_activation_changes_nothing(model_sae):
    model, sae = model_sae
    batch = adapt(model).tokenize(TEXTS[:1])
    rec = FeatureRecorder(sae)
    clean = _logits(model, batch, [(HOOK, rec)])
    acts = rec.features[0][0, -1]
    feature = int(acts.argmax())
    assert acts[feature] > 0
    clamp = FeatureClamp(sae, feature, float(acts[feature]), positions="last")
    torch.testing.assert_close(_logits(model, batch, [(HOOK, clamp)]), clean, atol=1e-5, rtol=1e-5)
    # and to another value: h + (value - f_i) d_i at the last position, by hand
    resid = {}
    _logits(model, batch, [(HOOK, lambda a, hook: resid.setdefault("h", a.clone()))])
    h = resid["h"].clone()
    h[0, -1] += (5.0 - acts[feature]) * sae.W_dec_[feature]
    by_hand = _logits(model, batch, [(HOOK, lambda a, hook: h.to(a.dtype))])
    got = _logits(model, batch, [(HOOK, clamp.with_alpha(5.0))])
    torch.testing.assert_close(got, by_hand, atol=1e-5, rtol=1e-5)
    # inside a splice, setting a feature to a value is the same edit
    spliced = _logits(model, batch, [(HOOK, Splice(sae, set_features={feature: 5.0},
                                                   positions="last"))])  # fmt: skip
    torch.testing.assert_close(spliced, by_hand, atol=1e-4, rtol=1e-4)


def test_feature_steer_and_ablate_are_the_direction_interventions(model_sae):
    model, sae = model_sae
    batch = adapt(model).tokenize(TEXTS)
    d = sae.W_dec_[3]
    by_hand = _logits(model, batch, [(HOOK, lambda a, hook: a + 2.0 * d)])
    steer = feature_steer(sae, 3, 2.0)
    assert (steer.layers, steer.site) == (1, "resid_post")
    torch.testing.assert_close(
        _logits(model, batch, [(HOOK, steer)]), by_hand, atol=1e-5, rtol=1e-5
    )
    seen = {}
    hooks = [(HOOK, feature_ablate(sae, 3)), (HOOK, lambda a, hook: seen.setdefault("a", a))]
    _logits(model, batch, hooks)
    torch.testing.assert_close(seen["a"] @ (d / d.norm()), torch.zeros(seen["a"].shape[:2]),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_recorder_equals_encoding_the_cached_activation(model_sae):
    model, sae = model_sae
    batch = adapt(model).tokenize(TEXTS)
    rec = FeatureRecorder(sae, sparse=True)
    with adapt(model).hooks(rec.fwd_hooks(model)), torch.inference_mode():
        _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    assert rec.features[0].is_sparse
    torch.testing.assert_close(rec.features[0].to_dense(), sae.encode(cache[HOOK]))


def test_sae_hook_errors(tiny_llama):
    sae = make_sae("standard", hook_name="blocks.1.hook_resid_post", d_in=D_IN)
    with pytest.raises(Exception, match="d_in=8"):
        with intervene(tiny_llama, Splice(sae)):
            pass
    with pytest.raises(Exception, match="needs a fitted SAE"):
        Splice(SparseAutoencoder("standard", D_IN, D_SAE))
    with pytest.raises(Exception, match="out of range"):
        FeatureClamp(sae, D_SAE + 1, 1.0)
    with pytest.raises(ValueError, match="not a semhooks site"):
        Splice(make_sae("standard", hook_name="blocks.1.attn.hook_z"))


# ---------------------------------------------------------------------- trainer
from semhooks import LayerStates  # noqa: E402
from semhooks.sae import SAETrainer  # noqa: E402


def sparse_data(n=1500, d=16, m=32, seed=0):
    """Rows that are sums of 3 of ``m`` unit atoms with positive weights, shifted and scaled."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(m, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    coef = torch.zeros(n, m)
    idx = torch.argsort(torch.rand(n, m, generator=g), dim=1)[:, :3]
    coef.scatter_(1, idx, torch.rand(n, 3, generator=g) * 2 + 0.5)
    return coef @ atoms * 7.0 + 3.0


@pytest.mark.parametrize("arch", ["topk", "standard"])
def test_trainer_reports_what_its_sae_does_and_saves_in_the_saelens_layout(tmp_path, arch):
    x = sparse_data()
    states = LayerStates(x[None], [2], "resid_post", "mean", "last", {"model": "toy"})
    tr = SAETrainer(d_sae=48, architecture=arch, k=4, n_steps=250, seed=1).fit(states)
    sae = tr.sae_
    assert sae.hook_name == "blocks.2.hook_resid_post" and sae.metadata_["model_name"] == "toy"
    f = sae.encode(x).double().numpy()
    rec = reference_decode(sae.weights(), f)
    xd = x.double().numpy()
    fve = 1 - ((xd - rec) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert tr.fve_ == pytest.approx(fve, abs=1e-6) and tr.score(states) == pytest.approx(
        fve, abs=1e-6
    )
    assert tr.dead_fraction_ == pytest.approx(float((f > 0).sum(0).__eq__(0).mean()))
    assert tr.l0_ == pytest.approx(float((f > 0).sum(1).mean()), rel=1e-6)
    assert tr.fve_ > 0.8  # the data are exactly 3-sparse in 32 atoms
    if arch == "topk":
        assert tr.l0_ <= 4
    loaded = load_sae(tr.save(tmp_path / "sae"))
    assert torch.equal(loaded.encode(x), sae.encode(x))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["semhooks"]["fve"] == tr.fve_ and cfg["architecture"] == arch


def test_trainer_is_deterministic_and_sklearn_shaped():
    x = sparse_data(n=300)
    a = SAETrainer(d_sae=16, k=2, n_steps=20, seed=3).fit(x.numpy())
    b = clone(a).fit(x)
    assert torch.equal(a.sae_.W_dec_, b.sae_.W_dec_)
    c = SAETrainer(d_sae=16, k=2, n_steps=20, seed=4).fit(x)
    assert not torch.equal(a.sae_.W_dec_, c.sae_.W_dec_)
    with pytest.raises(NotFittedError):
        SAETrainer().transform(x)
    with pytest.raises(ValueError, match="'topk' or 'standard'"):
        SAETrainer(architecture="gated").fit(x)
    two = LayerStates(torch.stack([x, x]), [1, 2], "resid_post", "mean", "last")
    with pytest.raises(ValueError, match="layers \\[1, 2\\]"):
        SAETrainer(n_steps=1).fit(two)


# ---------------------------------------------------------------------- features as data
from semhooks import ShardedStates, extract_states  # noqa: E402
from semhooks.relations import build_prompts  # noqa: E402
from semhooks.sae import encode_states, extract_features, iter_features, top_texts  # noqa: E402

CORPUS = TEXTS + ["A river runs through it", "Paris is in France", "The movie was dull",
                  "Money in the bank", "She sat by the water"]  # fmt: skip


@pytest.fixture
def tiny_sae(tiny_llama):
    return make_sae("topk", k=6, hook_name=HOOK, d_in=adapt(tiny_llama).d_model)


@pytest.mark.parametrize("how", ["max", "mean", "sum"])
def test_encode_token_states_then_pool_equals_a_loop_by_hand(tiny_llama, tiny_sae, how):
    st = extract_states(tiny_llama, CORPUS, [1], "resid_post", "all", None, progress=False)
    got = encode_states(tiny_sae, st, pool=how)
    assert got.acts.shape == (len(CORPUS), D_SAE) and got.pool == how
    for item in range(len(CORPUS)):
        f = tiny_sae.encode(st.layer(1)[st.item_index == item])
        ref = {"max": f.max(0).values, "mean": f.mean(0), "sum": f.sum(0)}[how]
        torch.testing.assert_close(got.acts[item], ref, atol=1e-5, rtol=1e-5)
    tok = encode_states(tiny_sae, st, sparse=True)
    assert tok.acts.is_sparse and torch.equal(tok.item_index, st.item_index)
    torch.testing.assert_close(tok.dense, tiny_sae.encode(st.layer(1)))


def test_extract_features_chunked_equals_one_chunk(tiny_llama, tiny_sae):
    whole = extract_features(tiny_llama, tiny_sae, CORPUS, pool="max")
    chunked = extract_features(tiny_llama, tiny_sae, CORPUS, pool="max", chunk_size=3, sparse=True)
    torch.testing.assert_close(chunked.dense, whole.acts, atol=1e-5, rtol=1e-5)
    per_token = extract_features(tiny_llama, tiny_sae, CORPUS, pool=None, chunk_size=3)
    st = extract_states(tiny_llama, CORPUS, [1], "resid_post", "all", None, progress=False)
    assert torch.equal(per_token.item_index, st.item_index)
    torch.testing.assert_close(per_token.acts, tiny_sae.encode(st.layer(1)), atol=1e-5, rtol=1e-5)


def test_features_streamed_from_shards_equal_the_loaded_states(tiny_llama, tiny_sae, tmp_path):
    extract_states(tiny_llama, CORPUS, [0, 1], "resid_post", "last", "mean", progress=False,
                   out_dir=tmp_path, shard_size=3)  # fmt: skip
    sharded = ShardedStates.open(tmp_path)
    blocks = list(iter_features(tiny_sae, sharded))
    assert len(blocks) == 3 and all(b.is_sparse for b in blocks)
    streamed = torch.cat([b.to_dense() for b in blocks])
    in_memory = encode_states(tiny_sae, sharded.load())
    torch.testing.assert_close(streamed, in_memory.acts)


def test_top_texts_equal_a_brute_force_search_one_text_at_a_time(tiny_llama, tiny_sae):
    a = adapt(tiny_llama)
    best = []
    for text in CORPUS:
        batch = a.tokenize([text])
        rec = FeatureRecorder(tiny_sae)
        _logits(tiny_llama, batch, [(HOOK, rec)])
        f = rec.features[0][0][~batch.special[0]]
        best.append((f.max(0).values, f.argmax(0)))
    per_text = torch.stack([b[0] for b in best])  # [text, d_sae]
    feats = [int(i) for i in per_text.max(0).values.argsort(descending=True)[:4]]
    top = top_texts(tiny_llama, tiny_sae, CORPUS, features=feats, k=3, chunk_size=4)
    for j, feat in enumerate(feats):
        order = sorted(range(len(CORPUS)), key=lambda t: (-float(per_text[t, feat]), t))[:3]
        assert top.text_index[j].tolist() == order
        torch.testing.assert_close(top.values[j], per_text[order, feat], atol=1e-5, rtol=1e-5)
        t0 = order[0]
        content = (~a.tokenize([CORPUS[t0]]).special[0]).nonzero().flatten()
        assert int(top.positions[j, 0]) == int(content[best[t0][1][feat]])
        assert top.for_feature(feat)[0][0] == CORPUS[t0]
    assert "feature" in top.table(feats[0])


# ---------------------------------------------------------------------- the real model
@pytest.mark.real
def test_trained_sae_on_smollm2_splices_and_clamps_without_changing_the_output(smollm2):
    texts = [p.text + " " + p.object for p in build_prompts("country_capital_city", n_shot=0)[:30]]
    states = extract_states(smollm2, texts, [6], tokens="all", pool=None, progress=False)
    tr = SAETrainer(d_sae=256, k=8, n_steps=100, seed=0).fit(states)
    assert tr.fve_ > 0.5 and tr.sae_.hook_name == "blocks.6.hook_resid_post"
    a = adapt(smollm2)
    batch = a.tokenize(texts[:3])
    clean = _logits(smollm2, batch)
    torch.testing.assert_close(_logits(smollm2, batch, [(tr.sae_.hook_name, Splice(tr.sae_))]),
                               clean, atol=1e-4, rtol=1e-4)  # fmt: skip
    one = a.tokenize(texts[:1])
    rec = FeatureRecorder(tr.sae_)
    base = _logits(smollm2, one, [(tr.sae_.hook_name, rec)])
    feature = int(rec.features[0][0, -1].argmax())
    clamp = FeatureClamp(tr.sae_, feature, float(rec.features[0][0, -1, feature]), positions="last")
    torch.testing.assert_close(_logits(smollm2, one, [(tr.sae_.hook_name, clamp)]), base,
                               atol=1e-4, rtol=1e-4)  # fmt: skip
