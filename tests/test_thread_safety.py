"""Interventions shared across threads and models; one model used from two threads (issue 15).

An intervention keeps per-call state in the call (never on the instance), so one object can
act in several threads at once; a model carrying semhooks hooks is reserved for the thread
that attached them, and any other thread using it gets a ``ConcurrentUseError``.
"""

from __future__ import annotations

import math
import sys
import threading

import pytest
import torch

import semhooks as sh
from semhooks.backend.adapter import ConcurrentUseError
from semhooks.interventions import Ablate, InterventionError, Patch, Steer, Swap, intervene
from semhooks.testing import tiny_model


def _ids(model, texts):
    return sh.adapt(model).tokenize(texts).input_ids


def _run_threads(targets):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the test below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


@pytest.fixture
def fast_switching():
    """Switch threads every microsecond (default 5 ms), so races show within few forwards."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_one_patch_shared_by_two_threads_equals_sequential(fast_switching):
    """Before: Patch kept the current source on the instance between _prepare and _edit,
    so another thread's layer could be written in (0.2-1.2% of forwards corrupted)."""
    models = [tiny_model("llama"), tiny_model("llama")]
    texts = ["The capital of France is Paris.", "Bat, Rabbit, Ant, Fox,"]
    ids = _ids(models[0], texts)
    g = torch.Generator().manual_seed(0)
    t = ids.shape[1]
    # a different source per layer: a swapped-in layer is always visible in the logits
    source = {layer: torch.randn(2, t, 64, generator=g) * (layer + 1) for layer in range(3)}
    # a long python-side selection (repeated columns) widens the window between looking
    # up the source and writing it, where the old code let another thread swap it
    patch = Patch(source, alpha=0.5, layers=[0, 1, 2], positions=[1, 2, 3] * 300)
    with torch.inference_mode(), intervene(models[0], patch):
        reference = models[0](ids)
    n_forwards = 100
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}

    def worker(k):
        def run():
            for _ in range(n_forwards):
                with torch.inference_mode(), intervene(models[k], patch):
                    results[k].append(models[k](ids))

        return run

    patch.reset()
    assert _run_threads([worker(0), worker(1)]) == []
    for k in (0, 1):
        assert len(results[k]) == n_forwards
        bad = [i for i, out in enumerate(results[k]) if not torch.equal(out, reference)]
        assert bad == [], f"thread {k}: forwards {bad[:10]} differ from the sequential run"
    assert patch.n_fired == 2 * n_forwards * 3  # counters are not lost between threads


def test_per_row_steer_shared_by_two_threads_with_other_batch_sizes(fast_switching):
    """Before: the batch size was kept on the instance (``_batch_size``) between calls."""
    models = [tiny_model("llama"), tiny_model("llama")]
    direction = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    steer = Steer(direction, alpha=3.0, layers=[1], positions=[0, 1, 2] * 300)
    ids = _ids(models[0], ["The capital of France is Paris.", "Bat, Rabbit, Ant, Fox,"])
    with torch.inference_mode(), intervene(models[0], steer):
        reference = models[0](ids)
    wrong = []

    def good():
        for _ in range(150):
            with torch.inference_mode(), intervene(models[0], steer):
                if not torch.equal(models[0](ids), reference):
                    wrong.append("changed")

    three = _ids(models[1], ["Bat, Rabbit, Ant, Fox,", "The capital of", "I loved it"])

    def bad():  # 3 rows for a 2-row direction: must raise, every time, only here
        for _ in range(300):
            with pytest.raises(InterventionError, match="one direction per row"):
                with torch.inference_mode(), intervene(models[1], steer):
                    models[1](three)

    assert _run_threads([good, bad]) == []
    assert wrong == []


def test_one_model_from_two_threads_raises_a_clear_error():
    """Before: a plain forward from thread B while thread A was inside intervene() killed A
    with 'ValueError: <Token> was created in a different Context' and ran A's hooks on B."""
    model = tiny_model("llama")
    ids = _ids(model, ["The capital of France is Paris."])
    steer = Steer(torch.ones(64), alpha=2.0, layers=[1])
    with torch.inference_mode(), intervene(model, steer):
        steered = model(ids)
    inside, outside_done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def holder():
        with torch.inference_mode(), intervene(model, steer):
            inside.set()
            outside_done.wait(timeout=120)
            seen["holder"] = model(ids)  # still fine after the other thread's attempts

    def intruder():
        inside.wait(timeout=120)
        try:
            with pytest.raises(ConcurrentUseError, match="hooks attached by thread"):
                with torch.inference_mode():
                    model(ids)
            with pytest.raises(ConcurrentUseError, match="copy.deepcopy"):
                with intervene(model, steer):
                    pass
            with pytest.raises(ConcurrentUseError):
                sh.extract_states(model, ["a b c"], progress=False)
        finally:
            outside_done.set()

    assert _run_threads([holder, intruder]) == []
    assert torch.equal(seen["holder"], steered)
    # once the block is closed the model is free for any thread
    out = []
    free = _run_threads([lambda: out.append(sh.extract_states(model, ["a b c"], progress=False))])
    assert free == []
    assert out and out[0].states.shape[1] == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "x", None])
def test_non_finite_alpha_is_refused(bad):
    """Before: Ablate, Swap and Patch accepted NaN/inf (every logit became non-finite)."""
    v, w = torch.randn(64), torch.randn(64)
    makers = {
        "Steer": lambda a: Steer(v, alpha=a, layers=[1]),
        "Ablate": lambda a: Ablate(v, alpha=a, layers=[1]),
        "Swap": lambda a: Swap(v, w, alpha=a, layers=[1]),
        "Patch": lambda a: Patch(torch.zeros(1, 64), alpha=a, layers=[1]),
    }
    for name, make in makers.items():
        with pytest.raises(InterventionError, match=rf"{name}: alpha must be a finite number"):
            make(bad)
        with pytest.raises(InterventionError, match="alpha must be a finite number"):
            make(0.5).with_alpha(bad)
