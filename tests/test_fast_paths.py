"""The documented fast paths are taken on the embedded SmolLM2, on the installed versions.

Each test fails when its fast path is silently lost (as the LRE prefix cache was when
transformers renamed ``past_key_values`` to ``cache``): the KV prefix cache in LRE
fitting (equal to the full forward within 1e-4), the early stop after the deepest
requested layer, and pooling inside the hook (no full activation cache).
"""

from __future__ import annotations

import pytest

from semhooks import adapt, extract_states
from semhooks.extraction import plan as plan_module
from semhooks.relations.jacobian import CACHE_TOLERANCE, SubjectObjectMap, mean_jacobian
from semhooks.relations.lre import LRE
from semhooks.relations.prompts import RelationPrompt

pytestmark = [pytest.mark.real, pytest.mark.backend]

PROMPTS = [
    RelationPrompt(
        "The capital of Italy is Rome.\nThe capital of Spain is Madrid.\nThe capital of France is",
        "France",
        "Paris",
        "country_capital_city",
    ),
    RelationPrompt(
        "The capital of France is Paris.\nThe capital of Italy is Rome.\nThe capital of Japan is",
        "Japan",
        "Tokyo",
        "country_capital_city",
    ),
]


@pytest.fixture(scope="module", params=["bridge", "hooked"])
def smol(request):
    if request.param == "bridge":
        return request.getfixturevalue("smollm2")
    return request.getfixturevalue("smollm2_hooked")


def test_prefix_cache_equals_the_full_forward(smol):
    fmap = SubjectObjectMap(smol, 8, 20)
    prep = fmap.prepare(PROMPTS[:1])[0]
    assert prep.cache is not None, "the KV prefix cache was declined"
    assert adapt(smol).kv_cache_length(prep.cache) == prep.subject_pos > 0
    full = fmap.states(type(prep)(prep.prompt, prep.input_ids, prep.subject_pos, prep.object_pos))
    cached = fmap.states(prep)
    for a, b in zip(cached, full, strict=True):
        assert float((a - b).norm() / b.norm()) < CACHE_TOLERANCE
    assert adapt(smol).prefix_cache_verified is True


def test_lre_fitting_uses_the_prefix_cache(smol):
    # pyproject turns a FallbackWarning (cache declined) into an error, so this also fails
    # when the cache check refuses the cached path.
    lre = LRE(8, 20, progress=False).fit(smol, PROMPTS)
    assert lre.prefix_cache_used_
    res = mean_jacobian(smol, PROMPTS[:1], 8, 20, progress=False)
    assert res.prefix_cache


def test_extraction_stops_after_the_deepest_layer_and_pools_in_the_hook(smollm2, monkeypatch):
    blocks = smollm2.blocks
    ran: list[int] = []
    handles = [
        b.register_forward_pre_hook(lambda m, i, k=k: ran.append(k)) for k, b in enumerate(blocks)
    ]
    pooled: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    real_pool = plan_module.pool_or_keep

    def spy(acts, sel, how, weights, layer):
        out = real_pool(acts, sel, how, weights, layer)
        pooled.append((tuple(acts.shape), tuple(out.shape)))
        return out

    def no_cache(*a, **k):
        raise AssertionError("extract_states built a full activation cache")

    monkeypatch.setattr(plan_module, "pool_or_keep", spy)
    monkeypatch.setattr(smollm2, "run_with_cache", no_cache)
    texts = ["The cat sat on the mat.", "A dog barked twice at the moon tonight."]
    try:
        st = extract_states(smollm2, texts, layers=[2, 5], pool="mean", progress=False)
    finally:
        for h in handles:
            h.remove()
    assert max(ran) == 5, f"blocks after the deepest requested layer started: {sorted(set(ran))}"
    # One pooled [batch, d] row block per layer, computed from [batch, pos, d] in the hook.
    assert len(pooled) == 2
    for (b, t, d), out in pooled:
        assert out == (b, d) and t > 1
    assert st.states.shape == (2, 2, adapt(smollm2).d_model)
