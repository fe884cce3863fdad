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
