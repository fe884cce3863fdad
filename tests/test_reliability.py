"""Reliability under bad input, faults and interrupts.

- artifacts: every truncation, header/data corruption, wrong kind/version, mismatched
  model; a real SIGKILL in the middle of a streamed extraction, then a resume that is
  bit-identical to an uninterrupted run; the lazy per-layer shard reader;
- hook hygiene on both backends: a user hook that raises, KeyboardInterrupt (raised by a
  hook, and a real SIGINT) during forwards, extract_states, generate and guards, nested
  ``intervene`` blocks: no hook left on any module, no stale batch context;
- dtype correctness of semhooks hooks (float64, bfloat16, float16 models);
- numerical guards: the first non-finite hook and its layer, on both backends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import semhooks as sh
from semhooks.backend.adapter import leaked_hooks
from semhooks.interventions import BatchInfo, Steer, current_batch, intervene
from semhooks.interventions.guards import FiniteGuard, NonFiniteError, guard_finite
from semhooks.io import artifacts

TEXTS = ["The capital of France is Paris.", "I loved this movie", "Bat"]


def torch_hooks(model) -> int:
    """Every PyTorch hook on every module (hook points, blocks and the model itself)."""
    total = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            total += len(getattr(m, attr, {}))
        total += len(getattr(m, "_backward_pre_hooks", {}))
    return total


# ---------------------------------------------------------------------- artifacts
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


_KILLED_EXTRACTION = textwrap.dedent(
    """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    import semhooks as sh
    from semhooks.io import artifacts
    from semhooks.testing import tiny_model

    out = sys.argv[1]
    texts = [f"{w} number {i} is here." for i, w in enumerate(["Bat", "Fox", "Owl", "Ant"] * 5)]
    real = artifacts.atomic_write_bytes
    saves = []

    def dying(path, data):
        saves.append(str(path))
        if str(path).endswith("shard-00002.safetensors"):
            with artifacts.atomic_path(path) as tmp:  # half a file, then the power goes
                tmp.write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        real(path, data)

    artifacts.atomic_write_bytes = dying
    sh.extract_states(
        tiny_model("llama"), texts, tokens="all", out_dir=out, shard_size=6, progress=False
    )
    """
)


@pytest.mark.slow
def test_sigkill_during_streaming_then_resume_is_bit_identical(tiny_llama, tmp_path):
    texts = [f"{w} number {i} is here." for i, w in enumerate(["Bat", "Fox", "Owl", "Ant"] * 5)]
    out = tmp_path / "killed"
    script = tmp_path / "kill.py"
    script.write_text(_KILLED_EXTRACTION)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    assert not (out / "shard-00002.safetensors").exists()  # only a stray temp file
    assert not sh.ShardedStates.open(out).complete
    with pytest.raises(sh.ArtifactError, match="incomplete"):
        sh.ShardedStates.open(out).load()
    resumed = sh.extract_states(
        tiny_llama, texts, tokens="all", out_dir=out, shard_size=6, progress=False
    )
    clean = sh.extract_states(
        tiny_llama, texts, tokens="all", out_dir=tmp_path / "clean", shard_size=6, progress=False
    )
    assert torch.equal(resumed.load().states, clean.load().states)


def test_lazy_layer_reader(tiny_llama, tmp_path):
    texts = [f"{w} {i}" for i, w in enumerate(["Bat", "Fox", "Owl"] * 3)]
    sharded = sh.extract_states(
        tiny_llama, texts, layers=[0, 2], out_dir=tmp_path / "s", shard_size=4, progress=False
    )
    full = sharded.load()
    assert sharded.layers == [0, 2]
    assert torch.equal(sharded.layer(2), full.layer(2))
    assert torch.equal(sharded.layer(-1), full.layer(2))
    assert [x.shape[0] for x in sharded.iter_layer(0)] == [4, 4, 1]
    with pytest.raises(KeyError, match=r"layer 1 not extracted.*\[0, 2\]"):
        sharded.layer(1)
    path = tmp_path / "s" / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(sh.ArtifactError, match="checksum"):
        sharded.layer(0)
    # the flipped byte sits in the last layer's rows; unchecked, it reads back silently
    assert not torch.equal(sharded.layer(2, verify=False), full.layer(2))
    assert torch.equal(sharded.layer(0, verify=False), full.layer(0))


# ---------------------------------------------------------------------- hook hygiene
def _interrupting_hook(kind: str):
    def hook(x, hook):
        if kind == "raise":
            raise KeyboardInterrupt
        if kind == "signal":
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000_000):  # the handler runs at the next bytecode check
                pass
        if kind == "error":
            raise ValueError("a user hook failed")
        return None

    return hook


@pytest.fixture
def sigint_raises():
    """Python's own SIGINT handler (a background shell may start us with SIGINT ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.backend
@pytest.mark.parametrize("kind", ["raise", "signal", "error"])
def test_no_hook_left_after_interrupts_everywhere(any_backend_llama, kind, sigint_raises):
    model = any_backend_llama
    a = sh.adapt(model)
    batch = a.tokenize(TEXTS)
    with torch.inference_mode():
        before = a.forward(batch)
    # after a full forward: TransformerBridge wires <= 2 capture pre-hooks per block lazily
    # and keeps them (its own idempotent internals, not left-overs)
    baseline = torch_hooks(model)
    expected = KeyboardInterrupt if kind != "error" else ValueError
    v = torch.randn(a.d_model, generator=torch.Generator().manual_seed(0))
    name = a.hook_name("resid_post", 1)

    # 1. plain forward inside three nested intervene blocks, interrupted in the innermost
    with pytest.raises(expected):
        with intervene(model, Steer(v, 1.0, layers=0)):
            with intervene(model, Steer(v, 2.0, layers=1)):
                with intervene(model, (name, _interrupting_hook(kind))):
                    a.forward(batch)
    assert leaked_hooks(model) == 0 and torch_hooks(model) == baseline
    assert current_batch() == BatchInfo()

    # 2. extract_states under an intervention and a guard
    with pytest.raises(expected):
        with guard_finite(model), intervene(model, (name, _interrupting_hook(kind))):
            sh.extract_states(model, TEXTS, layers=[2], progress=False)
    assert leaked_hooks(model) == 0 and torch_hooks(model) == baseline

    # 3. greedy generation
    from semhooks.studies.steering import generate

    with pytest.raises(expected):
        generate(model, TEXTS[:2], [Steer(v, 1.0, layers=0), (name, _interrupting_hook(kind))], 3)
    assert leaked_hooks(model) == 0 and torch_hooks(model) == baseline

    # 4. a bare run_with_hooks
    with pytest.raises(expected):
        model.run_with_hooks(batch.input_ids, fwd_hooks=[(name, _interrupting_hook(kind))])
    assert leaked_hooks(model) == 0 and torch_hooks(model) == baseline

    # the model computes exactly what it computed before
    assert current_batch() == BatchInfo()
    with torch.inference_mode():
        after = a.forward(batch)
    assert torch.equal(before, after)


@pytest.mark.backend
def test_nested_intervene_composes_and_unwinds_in_order(any_backend_llama):
    model = any_backend_llama
    a = sh.adapt(model)
    batch = a.tokenize(TEXTS)
    v = torch.randn(a.d_model, generator=torch.Generator().manual_seed(1))
    with intervene(model, Steer(v, 3.0, layers=1)):
        together = a.forward(batch)
    with intervene(model, Steer(v, 1.0, layers=1)):
        with intervene(model, Steer(v, 2.0, layers=1)):
            nested = a.forward(batch)
        after_inner = a.forward(batch)
    with intervene(model, Steer(v, 1.0, layers=1)):
        only_outer = a.forward(batch)
    torch.testing.assert_close(nested, together, atol=1e-5, rtol=1e-5)
    assert torch.equal(after_inner, only_outer)
    assert leaked_hooks(model) == 0


# ---------------------------------------------------------------------- dtypes
@pytest.fixture(scope="module")
def typed_llamas():
    from semhooks.testing import tiny_model

    return {dt: tiny_model("llama").to(dt) for dt in (torch.float64, torch.bfloat16)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_hooks_follow_the_activation_dtype(typed_llamas, tiny_llama, dtype):
    model = typed_llamas[dtype]
    a = sh.adapt(model)
    assert a.dtype == dtype
    batch = a.tokenize(TEXTS)
    v = torch.randn(a.d_model, generator=torch.Generator().manual_seed(2))  # float32
    seen = []

    def record(x, hook):
        seen.append(x.dtype)

    with intervene(model, Steer(v, 2.0, layers=1), (a.hook_name("resid_post", 1), record)):
        logits = a.forward(batch)
    assert seen == [dtype] and logits.dtype == dtype
    # Steer's edit is exact in the model's dtype: h + alpha v with v cast to that dtype
    grab = {}

    def keep(x, hook):
        grab["h"] = x.clone()

    name = a.hook_name("resid_post", 1)
    with torch.inference_mode(), a.hooks([(name, keep)]):
        a.model(batch.input_ids, attention_mask=batch.attention_mask)
    plain = grab["h"]
    with intervene(model, Steer(v, 2.0, layers=1), (name, keep)):
        a.forward(batch)
    real = batch.attention_mask.bool()  # positions="all" edits attended tokens only
    assert torch.equal(grab["h"][real], (plain + 2.0 * v.to(dtype))[real])
    assert torch.equal(grab["h"][~real], plain[~real])
    # pooled states come back float32 on the CPU, close to the float32 model's
    states = sh.extract_states(model, TEXTS, layers=[0, 2], progress=False)
    ref = sh.extract_states(tiny_llama, TEXTS, layers=[0, 2], progress=False)
    assert states.states.dtype == torch.float32 and states.states.device.type == "cpu"
    tol = 1e-5 if dtype == torch.float64 else 0.1
    torch.testing.assert_close(states.states, ref.states, atol=tol, rtol=tol)
    # learned-score pooling reads activations in the model's dtype, too
    weighted = sh.extract_states(
        model, TEXTS, layers=[1], pool="weighted", progress=False,
        pool_weights=lambda acts, layer: acts.float().sum(-1),
    )  # fmt: skip
    assert weighted.states.dtype == torch.float32 and torch.isfinite(weighted.states).all()


# ---------------------------------------------------------------------- numerical guards
def _poison(row: int, pos: int, value: float = float("nan")):
    def hook(x, hook):
        x = x.clone()
        x[row, pos, 3] = value
        return x

    return hook


@pytest.mark.backend
def test_guard_is_silent_on_a_clean_forward(any_backend_llama):
    a = sh.adapt(any_backend_llama)
    with guard_finite(any_backend_llama) as guard:
        a.forward(a.tokenize(TEXTS, padding_side="left"))
        a.forward(a.tokenize(TEXTS, padding_side="right"))
    assert guard.ok and guard.first is None and guard.n_checked > 2 * 3 * 5
    guard.raise_if_found()


@pytest.mark.backend
@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("guard_first", [True, False])
def test_guard_names_the_first_layer_with_nan(any_backend_llama, layer, guard_first):
    model = any_backend_llama
    a = sh.adapt(model)
    batch = a.tokenize(TEXTS)
    name = a.hook_name("resid_mid", layer)
    poison = intervene(model, (name, _poison(1, 2)))
    guard = guard_finite(model)
    with pytest.raises(NonFiniteError) as info:
        with guard if guard_first else poison, poison if guard_first else guard:
            a.forward(batch)
    report = info.value.report
    assert report.hook == name and report.layer == layer
    assert (report.n_nan, report.n_posinf, report.n_neginf) == (1, 0, 0)
    assert report.rows == (1,) and report.positions == (2,)
    assert report.previous_hook is not None and report.text == TEXTS[1]
    assert f"layer {layer}" in str(info.value) and name in str(info.value)
    assert leaked_hooks(model) == 0


def test_guard_reports_an_overflowing_steer_and_records_per_forward(tiny_llama):
    a = sh.adapt(tiny_llama)
    batch = a.tokenize(TEXTS, padding_side="right")
    v = torch.ones(a.d_model)
    with intervene(tiny_llama, Steer(v, 1e39, layers=1, positions="last")):
        with guard_finite(tiny_llama, on_nonfinite="record") as guard:
            logits = a.forward(batch)
            a.forward(batch)
    assert not torch.isfinite(logits).all()
    assert len(guard.reports) == 2 and [r.forward for r in guard.reports] == [0, 1]
    first = guard.first
    assert first.hook == "blocks.1.hook_resid_post" and first.layer == 1
    assert first.n_posinf == 3 * a.d_model and first.n_nan == 0
    last = batch.attention_mask.sum(1) - 1
    assert first.rows == (0, 1, 2) and first.positions == (int(last[0]),)
    with pytest.raises(NonFiniteError, match="blocks.1.hook_resid_post"):
        guard.raise_if_found()
    with pytest.warns(RuntimeWarning, match="layer 1"):
        with intervene(tiny_llama, Steer(v, 1e39, layers=1)):
            with guard_finite(tiny_llama, on_nonfinite="warn"):
                a.forward(batch)


def test_guard_catches_half_precision_overflow():
    from semhooks.testing import tiny_model

    model = tiny_model("llama").to(torch.float16)
    a = sh.adapt(model)
    v = torch.ones(a.d_model)
    with intervene(model, Steer(v, 7e4, layers=0)):  # finite in float32, inf in float16
        with pytest.raises(NonFiniteError, match="layer 0.*float16") as info:
            with guard_finite(model):
                a.forward(a.tokenize(TEXTS))
    assert info.value.report.n_posinf > 0


def test_guard_ignores_padding_unless_asked(tiny_llama):
    a = sh.adapt(tiny_llama)
    batch = a.tokenize(TEXTS, padding_side="right")
    assert batch.attention_mask[2, -1] == 0  # "Bat" is padded
    name = a.hook_name("resid_post", 2)  # the last block: nothing downstream mixes positions
    with intervene(tiny_llama, (name, _poison(2, -1))):
        with guard_finite(tiny_llama) as guard:
            a.forward(batch)
        assert guard.ok
        with pytest.raises(NonFiniteError, match=name):
            with guard_finite(tiny_llama, attended_only=False):
                a.forward(batch)


def test_guard_as_plain_hooks_and_under_extract_states(tiny_llama):
    a = sh.adapt(tiny_llama)
    batch = a.tokenize(TEXTS[:2])
    guard = FiniteGuard()
    poison = (a.hook_name("resid_pre", 2), _poison(0, 1, float("-inf")))
    with pytest.raises(NonFiniteError, match="blocks.2.hook_resid_pre.*1 -Inf"):
        tiny_llama.run_with_hooks(batch.input_ids, fwd_hooks=[poison, *guard.fwd_hooks(tiny_llama)])
    assert guard.first.layer == 2
    # extract_states stops after layer 2, yet the guard names layer 1 where it started
    with pytest.raises(NonFiniteError, match="layer 1"):
        with intervene(tiny_llama, (a.hook_name("attn_out", 1), _poison(0, 1))):
            with guard_finite(tiny_llama, "blocks"):
                sh.extract_states(tiny_llama, TEXTS, layers=[2], progress=False)
    # the final norm's output is checked too
    with pytest.raises(NonFiniteError, match="ln_final.*after the last block"):
        with intervene(tiny_llama, ("ln_final.hook_normalized", _poison(0, 1))):
            with guard_finite(tiny_llama):
                a.forward(batch)


def test_guard_bad_arguments(tiny_llama):
    with pytest.raises(ValueError, match="on_nonfinite"):
        FiniteGuard(on_nonfinite="ignore")
    with pytest.raises(ValueError, match="unknown hook names"):
        with guard_finite(tiny_llama, ["blocks.9.hook_resid_post"]):
            pass
    with pytest.raises(ValueError, match="'all', 'blocks'"):
        with guard_finite(tiny_llama, "everything"):
            pass
    with pytest.raises(TypeError, match="TransformerLens model"):
        FiniteGuard().fwd_hooks(object())
    assert leaked_hooks(tiny_llama) == 0


# ---------------------------------------------------------------------- determinism
def _twice(make, scramble: bool = True):
    """Run ``make()`` twice, disturbing the global RNGs in between (results must not care)."""
    import random

    import numpy as np

    first = make()
    if scramble:
        torch.manual_seed(12345)
        torch.rand(17)
        np.random.seed(777)
        np.random.rand(5)
        random.seed(3)
    return first, make()


def _toy_relation():
    from semhooks.relations.prompts import RelationPrompt

    subjects = ["France", "Italy", "Spain", "Germany", "Paris", "Rome"]
    return [
        RelationPrompt(f"The capital of {s} is", s, o, "toy")
        for s, o in zip(subjects, ["Cat", "Dog"] * 3, strict=True)
    ]


def test_same_seed_gives_bit_identical_lres_and_concepts(tiny_llama):
    from semhooks.relations.lrc import LRC
    from semhooks.relations.lre import LRE

    prompts = _toy_relation()
    exact = _twice(lambda: LRE(0, 2, progress=False).fit(tiny_llama, prompts))
    assert torch.equal(exact[0].weight_, exact[1].weight_)
    assert torch.equal(exact[0].bias_, exact[1].bias_)
    sketch = _twice(
        lambda: LRE(0, 2, method="randomized", rank=6, seed=4, progress=False).fit(
            tiny_llama, prompts
        )
    )
    assert torch.equal(sketch[0].weight_, sketch[1].weight_)
    other = LRE(0, 2, method="randomized", rank=6, seed=5, progress=False).fit(tiny_llama, prompts)
    assert not torch.equal(other.weight_, sketch[0].weight_)  # the seed is used
    lrcs = _twice(
        lambda: LRC(0, 2, rank=8, n_lre_prompts=4, seed=1, progress=False).fit(tiny_llama, prompts)
    )
    assert lrcs[0].classes_ == lrcs[1].classes_
    assert torch.equal(torch.as_tensor(lrcs[0].vectors_), torch.as_tensor(lrcs[1].vectors_))


def test_same_seed_gives_bit_identical_probes_and_directions(tiny_gpt2):
    import numpy as np

    from semhooks import AttentionPooler
    from semhooks.estimators.directions import MeanDifference, PCADirection, ProbeDirection

    texts = [f"{w} movie number {i}" for i, w in enumerate(["wonderful", "boring"] * 8)]
    labels = np.array([1, 0] * 8)
    states = sh.extract_states(tiny_gpt2, texts, layers=[1], progress=False)
    again = sh.extract_states(tiny_gpt2, texts, layers=[1], progress=False)
    assert torch.equal(states.states, again.states)
    for make in (ProbeDirection, MeanDifference, PCADirection):
        a, b = _twice(lambda make=make: make(layer=1).fit(states, labels))
        assert np.array_equal(np.asarray(a.direction_), np.asarray(b.direction_)), make
    tokens = sh.extract_states(
        tiny_gpt2, texts, layers=[1], tokens="all", pool=None, progress=False
    )
    pools = _twice(lambda: AttentionPooler(epochs=5, seed=3, progress=False).fit(tokens, labels))
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


def test_same_seed_gives_bit_identical_mi_estimates():
    from semhooks.estimators.mi import MINE, GaussianMI, InfoNCE, correlated_gaussians

    x, y, _ = correlated_gaussians(400, 4, 1.0, seed=0)
    for make in (
        lambda s=0: MINE(seed=s, max_steps=20, eval_every=10, hidden=16, batch_size=128),
        lambda s=0: InfoNCE(seed=s, max_steps=60, eval_every=20, hidden=32, batch_size=128),
    ):
        a, b = _twice(lambda make=make: make().fit(x, y))
        assert a.mi_ == b.mi_ and (a.history_ == b.history_).all()
        assert make(1).fit(x, y).mi_ != a.mi_  # the seed is used
    g = _twice(lambda: GaussianMI().fit(x, y))
    assert g[0].mi_ == g[1].mi_


def test_other_model_can_be_accepted_explicitly(tiny_llama, tiny_gpt2):
    from_gpt2 = sh.adapt(tiny_gpt2).provenance()
    artifacts.check_compatible(
        {"provenance": from_gpt2},
        sh.adapt(tiny_llama).provenance(),
        "these states",
        allow_other_model=True,
    )
