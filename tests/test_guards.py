"""semhooks.interventions.guards: the first non-finite hook and its layer, on both backends;
padding, half-precision overflow, plain hooks, bad arguments."""

from __future__ import annotations

import pytest
import torch

import semhooks as sh
from semhooks.backend.adapter import leaked_hooks
from semhooks.interventions import Steer, intervene
from semhooks.interventions.guards import FiniteGuard, NonFiniteError, guard_finite

TEXTS = ["The capital of France is Paris.", "I loved this movie", "Bat"]


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
