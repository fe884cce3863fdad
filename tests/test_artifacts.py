"""semhooks.io.artifacts under bad input: every truncation, header and data corruption,
wrong kind or format version, a model that does not match the artifact's provenance."""

from __future__ import annotations

import pytest
import torch

import semhooks as sh
from semhooks.io import artifacts

TEXTS = ["The capital of France is Paris.", "I loved this movie", "Bat"]


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    states = sh.LayerStates(
        torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4),
        [0, 1],
        "resid_post",
        "mean",
        "last",
        {"model": "m", "d_model": 4, "n_layers": 2, "hook_layout": "abc"},
    )
    path = states.save(tmp_path_factory.mktemp("art") / "s.safetensors")
    return states, path


def test_every_truncation_is_a_clear_error(small_artifact, tmp_path):
    states, path = small_artifact
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(sh.ArtifactError, match="truncated|corrupted|not a semhooks"):
            sh.LayerStates.load(cut)
    assert len(data) > 500  # the loop above covered every prefix length


def test_header_corruption_is_an_error_or_harmless(small_artifact, tmp_path):
    """Flip every byte of the 8-byte length and of the JSON header's structure."""
    states, path = small_artifact
    data = path.read_bytes()
    n_header = int.from_bytes(data[:8], "little")
    bad = tmp_path / "bad.safetensors"
    silent = []
    for i in range(8 + n_header):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        try:
            back = sh.LayerStates.load(bad)
        except sh.ArtifactError:
            continue
        if not torch.equal(back.states, states.states) or back.layers != states.layers:
            silent.append(i)
    # 0xFF turns any ASCII byte into invalid UTF-8, so every header flip must be caught
    assert silent == []


def test_flipped_tensor_byte_is_detected(small_artifact, tmp_path):
    states, path = small_artifact
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(sh.ArtifactError):
        sh.LayerStates.load(bad)


def test_wrong_kind_and_version_are_refused(small_artifact, tmp_path, monkeypatch):
    states, path = small_artifact
    with pytest.raises(sh.ArtifactError, match="holds a 'LayerStates', expected a 'Probe'"):
        artifacts.load_artifact(path, "Probe")
    monkeypatch.setattr(artifacts, "FORMAT_VERSION", 99)
    future = states.save(tmp_path / "future.safetensors")
    monkeypatch.setattr(artifacts, "FORMAT_VERSION", 1)
    with pytest.raises(sh.ArtifactError, match="format version 99.*reads version 1.*re-create"):
        sh.LayerStates.load(future)
    (tmp_path / "plain.safetensors").write_bytes(
        __import__("safetensors.torch", fromlist=["save"]).save({"x": torch.ones(2)})
    )
    with pytest.raises(sh.ArtifactError, match="not a semhooks artifact"):
        sh.LayerStates.load(tmp_path / "plain.safetensors")


def test_mismatched_model_is_refused(tiny_llama, tiny_gpt2):
    from semhooks.testing import tiny_model

    states = sh.extract_states(tiny_llama, TEXTS, layers=[0], progress=False)
    wide = sh.adapt(tiny_model("llama", d_model=32)).provenance()
    with pytest.raises(sh.ArtifactError, match="d_model=64.*has d_model=32"):
        artifacts.check_compatible({"provenance": states.provenance}, wide, "these states")
    deeper = sh.adapt(tiny_model("llama", n_layers=4)).provenance()
    with pytest.raises(sh.ArtifactError, match="n_layers=3.*has n_layers=4"):
        artifacts.check_compatible({"provenance": states.provenance}, deeper, "these states")
    same = sh.adapt(tiny_llama).provenance()
    artifacts.check_compatible({"provenance": states.provenance}, same, "these states")


def test_same_shape_other_model_is_refused(tiny_llama, tiny_gpt2):
    from_gpt2 = sh.adapt(tiny_gpt2).provenance()
    with pytest.raises(sh.ArtifactError, match="tiny-gpt2"):
        artifacts.check_compatible(
            {"provenance": from_gpt2}, sh.adapt(tiny_llama).provenance(), "these states"
        )


def test_other_model_can_be_accepted_explicitly(tiny_llama, tiny_gpt2):
    from_gpt2 = sh.adapt(tiny_gpt2).provenance()
    artifacts.check_compatible(
        {"provenance": from_gpt2},
        sh.adapt(tiny_llama).provenance(),
        "these states",
        allow_other_model=True,
    )
