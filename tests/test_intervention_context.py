"""semhooks.interventions.context: hook hygiene on both backends. A user hook that raises,
KeyboardInterrupt (raised by a hook, and a real SIGINT) during forwards, extract_states,
generate and guards, nested ``intervene`` blocks: no hook left on any module, no stale batch
context."""

from __future__ import annotations

import os
import signal

import pytest
import torch

import semhooks as sh
from semhooks.backend.adapter import leaked_hooks
from semhooks.interventions import BatchInfo, Steer, current_batch, intervene
from semhooks.interventions.guards import guard_finite

TEXTS = ["The capital of France is Paris.", "I loved this movie", "Bat"]


def torch_hooks(model) -> int:
    """Every PyTorch hook on every module (hook points, blocks and the model itself)."""
    total = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            total += len(getattr(m, attr, {}))
        total += len(getattr(m, "_backward_pre_hooks", {}))
    return total


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
