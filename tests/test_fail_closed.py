"""Bad input and damaged files fail closed with a clear error (issue 15).

Texts without content, truncation that would drop closing special tokens, artifacts whose
checksum is missing or whose metadata was edited, malformed JSON results, stale temporary
files of a killed save.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import semhooks as sh
from semhooks.io.artifacts import read_metadata

INVISIBLE = ["\u200b", "\u200b\u200c\u200d", "\ufeff", "\x00\x01", "\u2060 \u200b", "\x7f\t"]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_texts_of_only_control_or_zero_width_characters_are_refused(arch, request):
    """Before: they were accepted (a BERT then pooled only [CLS]/[SEP])."""
    model = request.getfixturevalue(f"tiny_{arch}")
    for text in INVISIBLE:
        with pytest.raises(ValueError, match=r"text 1 holds only control or zero-width"):
            sh.adapt(model).tokenize(["fine text", text])
        with pytest.raises(ValueError, match=r"text 1 holds only control or zero-width"):
            sh.extract_states(model, ["fine text", text], progress=False)
    # visible content next to such characters is kept
    assert sh.adapt(model).tokenize(["a\u200bb"]).attention_mask.sum() >= 1


def test_bert_truncation_keeps_the_closing_sep(tiny_bert):
    """Before: truncate=True cut the [SEP] off a long text."""
    a = sh.adapt(tiny_bert)
    long_text = "word " * 600
    batch = a.tokenize([long_text, "a short text"], truncate=True)
    n = int(batch.attention_mask[0].sum())
    assert n == a.n_ctx and batch.truncated == [True, False]
    tokens = a.tokenizer.convert_ids_to_tokens(batch.input_ids[0, :n].tolist())
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 1
    assert batch.special[0, n - 1] and not batch.special[0, n - 2]
    # the cut text is the uncut prefix: its last content token is the one before [SEP]
    last = sh.extract_states(tiny_bert, [long_text], truncate=True, progress=False)
    prefix = a.tokenizer.convert_tokens_to_string(tokens[1:-1])
    ref = sh.extract_states(tiny_bert, [prefix], progress=False)
    torch.testing.assert_close(last.states, ref.states, atol=1e-5, rtol=1e-5)


def test_decoder_truncation_still_cuts_on_the_right(tiny_gpt2):
    a = sh.adapt(tiny_gpt2)
    batch = a.tokenize(["word " * 600], truncate=True)
    full = a.tokenizer("word " * 600)["input_ids"]
    n = int(batch.attention_mask[0].sum())
    assert (
        n == a.n_ctx and batch.input_ids[0, :n].tolist()[-5:] == full[: n - int(a.prepend_bos)][-5:]
    )


# ---------------------------------------------------------------------- artifacts
def _states():
    g = torch.Generator().manual_seed(0)
    return sh.LayerStates(
        torch.randn(3, 4, 8, generator=g), [0, 1, 2], "resid_post", "mean", "last", {}
    )


def _edit_header(path, edit):
    """Rewrite the semhooks JSON document in a safetensors header (the data is kept)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["semhooks"])
    header["__metadata__"]["semhooks"] = json.dumps(edit(meta))
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data[8 + n :])


def _without(*keys):
    return lambda meta: {k: v for k, v in meta.items() if k not in keys}


def _flip_data_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "edit",
    [
        _without("tensors_sha256"),
        lambda meta: {**meta, "tensors_sha256": None},
        _without("tensors_sha256", "metadata_sha256"),
    ],
    ids=["removed", "null", "both-removed"],
)
def test_a_missing_checksum_fails_closed(tmp_path, edit):
    """Before: removing or nulling tensors_sha256 disabled verification, so a flipped data
    byte then loaded silently."""
    path = tmp_path / "s.safetensors"
    good = _states()
    good.save(path)
    _edit_header(path, edit)
    _flip_data_byte(path)
    with pytest.raises(sh.ArtifactError, match=r"s\.safetensors cannot be verified: its"):
        sh.LayerStates.load(path)
    changed = sh.LayerStates.load(path, verify=False)  # explicitly unchecked: it loads
    assert not torch.equal(changed.states, good.states)


def test_edited_metadata_is_refused(tmp_path):
    """Before: layers edited to [2, 1, 0] made layer(0) return layer 2."""
    path = tmp_path / "s.safetensors"
    _states().save(path)
    for edit in (
        lambda meta: {**meta, "layers": [2, 1, 0]},
        lambda meta: {**meta, "site": "mlp_out"},
        lambda meta: {**meta, "pool": "max"},
        lambda meta: {**meta, "provenance": {"model": "someone-else"}},
    ):
        copy = tmp_path / "edited.safetensors"
        copy.write_bytes(path.read_bytes())
        _edit_header(copy, edit)
        with pytest.raises(sh.ArtifactError, match="metadata.*do not match the checksum"):
            sh.LayerStates.load(copy)


@pytest.mark.parametrize(
    ("layers", "why"),
    [
        ([0, 1], "names 2 layers but 'states' holds 3"),
        ([0, 0, 1], "distinct layer indices"),
        ([0, "1", 2], "distinct layer indices"),
        ([0, -1, 2], "distinct layer indices"),
        (None, "distinct layer indices"),
    ],
)
def test_metadata_is_checked_against_the_tensors_even_unverified(tmp_path, layers, why):
    path = tmp_path / "s.safetensors"
    _states().save(path)
    _edit_header(path, lambda meta: {**meta, "layers": layers})
    with pytest.raises(sh.ArtifactError, match=rf"s\.safetensors is not valid LayerStates.*{why}"):
        sh.LayerStates.load(path, verify=False)


@pytest.mark.parametrize("doc", [[1, 2], None, "text", 3])
def test_metadata_that_is_not_an_object_is_an_artifact_error(tmp_path, doc):
    """Before: a JSON list or null as metadata raised AttributeError."""
    path = tmp_path / "s.safetensors"
    _states().save(path)
    _edit_header(path, lambda meta: doc)
    with pytest.raises(sh.ArtifactError, match=r"s\.safetensors is not a semhooks artifact"):
        sh.LayerStates.load(path)
    with pytest.raises(sh.ArtifactError, match=r"s\.safetensors is not a semhooks artifact"):
        read_metadata(path)


def test_emergence_result_load_fails_closed(tmp_path):
    """Before: a safetensors file given to EmergenceResult.load raised UnicodeDecodeError."""
    from semhooks.studies.emergence import EmergenceResult

    binary = tmp_path / "states.safetensors"
    _states().save(binary)
    with pytest.raises(sh.ArtifactError, match=r"states\.safetensors is not a JSON file"):
        EmergenceResult.load(binary)
    cases = {
        "broken.json": ('{"kind": ', "not valid JSON"),
        "list.json": ("[1, 2]", "holds a JSON list"),
        "other.json": ('{"kind": "WiCResult"}', "holds a 'WiCResult', expected"),
        "partial.json": ('{"kind": "EmergenceResult", "model": "m"}', "not a valid Emergence"),
    }
    for name, (text, why) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(sh.ArtifactError, match=rf"{name.replace('.', '[.]')}.*{why}"):
            EmergenceResult.load(tmp_path / name)
    with pytest.raises(sh.ArtifactError, match="no file at"):
        EmergenceResult.load(tmp_path / "missing.json")


def test_a_killed_save_leaves_no_temporary_file_after_the_next_save(tmp_path):
    """Before: a save killed half way left a full-size .tmp file behind for good."""
    target = tmp_path / "s.safetensors"
    script = textwrap.dedent(
        f"""
        import os, signal
        from semhooks.io import artifacts
        with artifacts.atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes(b"x" * 100_000)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 100_000
    live = tmp_path / f".s.safetensors.{socket.gethostname()}-{os.getpid()}.live.tmp"
    live.write_bytes(b"a save in flight in a live process")
    _states().save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name])
    assert sh.LayerStates.load(target).states.shape == (3, 4, 8)


# ---------------------------------------------------------------------- estimators
@pytest.mark.parametrize("scale", [1e-13, 1e-20, 1e13])
def test_gaussian_mi_does_not_depend_on_the_units(scale):
    """Before: features with std < 1e-12 were treated as constant (MI ~ 0 bits)."""
    from semhooks.estimators.mi import GaussianMI, correlated_gaussians

    x, y, _ = correlated_gaussians(800, 3, 1.0, seed=0)
    x64 = torch.as_tensor(x, dtype=torch.float64)
    ref = GaussianMI().fit(x64, y).mi_
    assert ref > 0.5
    scaled = GaussianMI().fit(x64 * scale, y)
    assert scaled.n_constant_dropped_ == 0
    assert scaled.mi_ == pytest.approx(ref, rel=1e-6)
    # a truly constant feature is still dropped
    const = torch.cat([x64 * scale, torch.full((800, 1), 3.0, dtype=torch.float64)], dim=1)
    assert GaussianMI().fit(const, y).n_constant_dropped_ == 1


# ---------------------------------------------------------------------- CLI config errors
@pytest.fixture
def no_model_load(monkeypatch):
    """A config error must come before any model is loaded (so before any forward pass)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(sh, "load_model", refuse)


CONFIG_FILES = {
    "syntax.toml": ("layer = = 3\n", r"syntax\.toml: syntax error"),
    "syntax.yaml": ("layer: [1, 2\n", r"syntax\.yaml: syntax error"),
    "syntax.json": ('{"layer": ', r"syntax\.json: syntax error"),
    "list.json": ("[1, 2]", r"list\.json must hold a table.*got a list"),
    "list.yaml": ("- 1\n- 2\n", r"list\.yaml must hold a table.*got a list"),
    "binary.toml": (b"\xff\xfe\x00", r"binary\.toml is not UTF-8"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_cli_bad_config_file_is_one_line_exit_2(tmp_path, capsys, no_model_load, name):
    """Before: a TOML syntax error or a JSON list config gave a raw exception and exit 1."""
    from recipes.cli import main

    content, why = CONFIG_FILES[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code = main(["run", "concept-steering", "--config", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(why, err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ("alphas=[1.0,", r"alphas: not a valid JSON list"),
        ("max_new_tokens=0", r"max_new_tokens: must be >= 1, got 0"),
        ("prompts=[]", r"prompts: empty list"),
        ("target_tokens=[]", r"target_tokens: empty list"),
        ('positive=["only one"]', r"positive: needs at least 2 values, got 1"),
        ("layr=1", r"unknown config key"),
    ],
)
def test_cli_bad_setting_is_one_line_exit_2(tmp_path, capsys, no_model_load, setting, why):
    """Before: bad --set JSON, max_new_tokens=0 and empty lists gave raw exceptions (exit 1),
    some only after forward passes."""
    from recipes.cli import main

    code = main(["run", "concept-steering", "--set", setting, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(why, err), err


def test_run_recipe_checks_values_before_loading_the_model(tmp_path, no_model_load):
    from recipes import ConfigError, get_recipe, run_recipe

    config = get_recipe("concept-steering").config_cls(model="tiny-llama", max_new_tokens=0)
    with pytest.raises(ConfigError, match="max_new_tokens: must be >= 1"):
        run_recipe("concept-steering", config, tmp_path / "o")
    config = get_recipe("pooling-sentiment").config_cls(model="tiny-gpt2", transfer=[])
    from recipes.config import validate_config

    validate_config(config)  # an empty list where "none" is meaningful is allowed


def test_cli_show_of_a_damaged_metrics_file_is_one_line(tmp_path, capsys):
    from recipes.cli import main

    for content in (b"{", b"[1]", b"\xff\xfe"):
        (tmp_path / "metrics.json").write_bytes(content)
        assert main(["show", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "metrics.json is not a readable" in err
