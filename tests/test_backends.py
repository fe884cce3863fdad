"""semhooks on both TransformerLens backends: the same weights give the same states.

CI runs the tests marked ``backend`` twice: in the main environment (TransformerLens 4.x,
where the HookedTransformer cases skip) and in ``.venv-tl3`` (TransformerLens 3.x).
"""

from __future__ import annotations

import pytest
import torch

import semhooks as sh
from semhooks.backend.adapter import leaked_hooks

pytestmark = pytest.mark.backend

TEXTS = [
    "The capital of France is Paris.",
    "Bat, Rabbit, Ant,",
    "He plays the guitar and the piano.",
]


def test_adapter_describes_both_backends(any_backend_llama):
    a = sh.adapt(any_backend_llama)
    assert a.backend in ("bridge", "hooked")
    assert (a.n_layers, a.d_model, a.model_type) == (3, 64, "llama")
    assert a.hook_name("resid_post", 1) == "blocks.1.hook_resid_post"


@pytest.mark.parametrize("how", ["mean", "max", "last", "first"])
def test_in_hook_pooling_equals_cache_and_padding_is_invisible(any_backend_llama, how):
    model = any_backend_llama
    a = sh.adapt(model)
    right = sh.extract_states(model, TEXTS, tokens="all", pool=how, batch_size=3, progress=False)
    left = sh.extract_states(
        model, TEXTS, tokens="all", pool=how, batch_size=3, padding_side="left", progress=False
    )
    one = torch.cat(
        [
            sh.extract_states(model, [t], tokens="all", pool=how, progress=False).states
            for t in TEXTS
        ],
        1,
    )
    torch.testing.assert_close(right.states, one, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(left.states, one, atol=1e-4, rtol=1e-4)
    batch = a.tokenize(TEXTS)
    _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    cached = sh.LayerStates.from_cache(cache, tokens="all", pool=how, tokenized=batch)
    torch.testing.assert_close(cached.states, right.states, atol=1e-5, rtol=1e-5)


def test_both_backends_agree_on_the_same_weights(hooked_llama, tiny_llama):
    bridge = sh.extract_states(tiny_llama, TEXTS, tokens="all", pool=None, progress=False)
    hooked = sh.extract_states(hooked_llama, TEXTS, tokens="all", pool=None, progress=False)
    torch.testing.assert_close(hooked.states, bridge.states, atol=1e-4, rtol=1e-4)


def test_no_hook_left_after_a_failing_hook(any_backend_llama):
    a = sh.adapt(any_backend_llama)

    def boom(x, hook):
        raise RuntimeError("user hook failed")

    with pytest.raises(RuntimeError, match="user hook failed"):
        a.forward(a.tokenize(TEXTS), [("blocks.0.hook_resid_post", boom)])
    assert leaked_hooks(any_backend_llama) == 0


@pytest.mark.real
def test_smollm2_hooked_backend_answers_paris(smollm2):
    from semhooks.backend.hooked import hooked_transformer_available

    if not hooked_transformer_available():
        pytest.skip("HookedTransformer needs TransformerLens 3.x")
    model = sh.load_model("smollm2-135m", backend="hooked")
    a = sh.adapt(model)
    assert a.backend == "hooked" and not a.weights_processed
    logits = a.forward(a.tokenize(["The capital of France is"]))
    assert a.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    hooked = sh.extract_states(model, TEXTS, layers=[0, 15, 29], progress=False)
    bridge = sh.extract_states(smollm2, TEXTS, layers=[0, 15, 29], progress=False)
    scale = bridge.states.abs().amax()
    assert float((hooked.states - bridge.states).abs().max() / scale) < 1e-4
