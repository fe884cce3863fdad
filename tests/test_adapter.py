"""The sealed backend adapter: one hook-name parser, per-model state off the model object,
and the seams (gating, hook order, KV cache copy, logit lens) that other wings call.

Oracles: TransformerLens' own ``get_act_name`` and ``HookPoint.layer()``; the names the
bridge really hands a hook; the unembedding path against TransformerLens' ``logit_readout``.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import semhooks as sh
from semhooks.backend.adapter import SITES, adapt
from semhooks.backend.hooks import StopForward
from semhooks.backend.sites import hook_layer, layers_in, parse_hook_name, site_hook_name
from semhooks.backend.state import model_state
from semhooks.testing import tiny_model

BLOCK_SITES = [s for s in SITES if s != "embed"]


def _seen_names(model, layer: int) -> dict[str, str]:
    """site -> the hook name the model hands a hook attached at that site's TL name."""
    seen: dict[str, str] = {}
    hooks = []
    for site in BLOCK_SITES:

        def fn(x, hook, site=site):
            seen[site] = hook.name
            assert hook.layer() == layer  # TransformerLens' own reading agrees

        # The TransformerLens name of the site (hook_name refuses two of them on post-LN
        # encoders, whose hooks there do not mean what the site says: tests/test_conformance).
        hooks.append((site_hook_name(site, layer), fn))
    with adapt(model).hooks(hooks), torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    return seen


def test_site_hook_names_are_transformer_lens_names():
    for site in BLOCK_SITES:
        for layer in (0, 7):
            assert site_hook_name(site, layer) == SITES[site].format(layer=layer)
    assert site_hook_name("embed", 5) == SITES["embed"]
    with pytest.raises(ValueError, match="unknown site 'resid'"):
        site_hook_name("resid", 0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_the_parser_reads_both_name_styles_the_adapter_meets(arch):
    model = tiny_model(arch)
    layer = 1
    seen = _seen_names(model, layer)
    for site in BLOCK_SITES:
        tl = site_hook_name(site, layer)
        if not (adapt(model).is_encoder and site in ("resid_mid", "attn_out")):
            assert adapt(model).hook_name(site, layer) == tl
        assert parse_hook_name(tl) == (site, layer, "transformer_lens")
        got = parse_hook_name(seen[site])  # the bridge's canonical name for the same point
        assert (got.site, got.layer) == (site, layer), seen[site]
        assert hook_layer(seen[site]) == layer
    # Every block hook point: the parser's layer is TransformerLens' HookPoint.layer().
    for name, hp in model.hook_dict.items():
        if name.startswith("blocks."):
            assert parse_hook_name(name).layer == hp.layer() == hook_layer(hp)
        else:
            assert parse_hook_name(name).layer is None


def test_parser_on_names_that_are_not_sites():
    assert parse_hook_name("blocks.3.attn.hook_pattern") == (None, 3, "other")
    assert parse_hook_name("hook_embed") == (None, None, "other")
    assert parse_hook_name("unembed.hook_out") == (None, None, "other")
    keys = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post", "blocks.1.hook_out", "x"]
    assert layers_in(keys, "resid_post") == [0, 2]  # cache keys: TransformerLens style only
    assert layers_in(["blocks.0.hook_resid_pre"], "embed") == [0]
    assert layers_in(["blocks.1.hook_resid_pre"], "embed") == []


def _semhooks_attributes(model) -> list[str]:
    return [
        f"{path or '<model>'}.{key}"
        for path, module in model.named_modules()
        for key in vars(module)
        if key.startswith("_semhooks")
    ]


def test_nothing_is_written_onto_the_users_model():
    from semhooks.relations.lre import LRE
    from semhooks.relations.prompts import RelationPrompt

    model = sh.load_model("tiny-llama")
    adapter = adapt(model)
    texts = ["The cat sat on the mat", "A dog barked"]
    states = sh.extract_states(model, texts, layers=[0, 2], progress=False)
    with sh.intervene(model, sh.Steer(torch.ones(adapter.d_model), 1.0, layers=1)):
        adapter.forward(adapter.tokenize(texts))
    with sh.intervene(model, sh.Patch(states, positions="all", layers=[0])):
        pass
    with sh.guard_finite(model):
        adapter.forward(adapter.tokenize(texts))
    sh.semantic_basis(model, tokens=list(range(8)))
    prompts = [
        RelationPrompt("The capital of France is", "France", "Paris", "toy"),
        RelationPrompt("The capital of Italy is", "Italy", "Rome", "toy"),
    ]
    LRE(0, 2, progress=False).fit(model, prompts)
    assert _semhooks_attributes(model) == []
    assert model_state(model).name == "tiny-llama" and adapter.name == "tiny-llama"


def test_state_outlives_the_adapter_and_the_model_is_not_kept_alive():
    model = tiny_model("gpt2")
    adapt(model).prefix_cache_verified = True
    gc.collect()
    assert adapt(model).prefix_cache_verified is True  # per model, not per adapter object
    a = adapt(model)
    assert adapt(model) is a  # one adapter while anyone holds it
    ref = weakref.ref(model)
    del model, a
    gc.collect()
    assert ref() is None  # neither the adapter cache nor the state holds the model


def test_a_deep_copy_starts_with_fresh_state():
    import copy

    model = tiny_model("gpt2")
    adapt(model).prefix_cache_verified = False
    twin = copy.deepcopy(model)
    assert adapt(twin).prefix_cache_verified is None
    assert adapt(twin) is not adapt(model)


def test_gating_and_hook_order_go_through_the_adapter(tiny_llama):
    adapter = adapt(tiny_llama)
    assert adapter.hook_gated_reason("blocks.0.hook_mlp_in") == "use_hook_mlp_in"
    assert adapter.hook_gated_reason("blocks.0.hook_resid_post") is None
    hp = tiny_llama.hook_dict[adapter.hook_name("resid_post", 0)]
    order: list[str] = []
    first = hp.register_forward_hook(lambda m, i, o: order.append("first"))
    second = hp.register_forward_hook(lambda m, i, o: order.append("second"))
    try:
        adapter.move_hook_last(hp, first)
        with torch.no_grad():
            tiny_llama(torch.tensor([[1, 2, 3]]))
    finally:
        first.remove()
        second.remove()
    assert order == ["second", "first"]
    adapter.move_hook_last(hp, first)  # removed: a no-op, not an error


def test_a_copied_kv_cache_is_independent(tiny_llama):
    adapter = adapt(tiny_llama)
    cache = adapter.new_kv_cache()
    with torch.no_grad():
        adapter.forward_on_cache(torch.tensor([[1, 5, 9]]), cache)
        copied = adapter.copy_kv_cache(cache)
        adapter.forward_on_cache(torch.tensor([[4]]), copied)
    assert adapter.kv_cache_length(cache) == 3 and adapter.kv_cache_length(copied) == 4


def test_forward_on_cache_equals_the_full_forward(tiny_llama):
    adapter = adapt(tiny_llama)
    ids = torch.tensor([[1, 5, 9, 4, 7]])
    with torch.no_grad():
        full = tiny_llama(ids, attention_mask=torch.ones_like(ids))
        cache = adapter.new_kv_cache()
        adapter.forward_on_cache(ids[:, :3], cache)
        suffix = adapter.forward_on_cache(ids[:, 3:], cache)
    assert suffix is not None
    torch.testing.assert_close(suffix, full[:, 3:], atol=1e-5, rtol=1e-5)


def test_stop_forward_ends_a_cached_forward(tiny_llama):
    adapter = adapt(tiny_llama)

    def stop(x, hook):
        raise StopForward

    out = adapter.forward_on_cache(
        torch.tensor([[1, 2]]), adapter.new_kv_cache(), [(adapter.hook_name("resid_post", 0), stop)]
    )
    assert out is None


def test_logit_lens_top_matches_the_unembedding(tiny_llama):
    adapter = adapt(tiny_llama)
    states = torch.randn(4, adapter.d_model, generator=torch.Generator().manual_seed(0))
    ids, values, source = adapter.logit_lens_top(states, 3)
    with torch.no_grad():
        ref = adapter.unembed(states).float().topk(3, dim=-1)
    assert source == "transformer_lens"
    assert torch.equal(ids, ref.indices)
    torch.testing.assert_close(values, ref.values, atol=1e-5, rtol=1e-5)


def test_load_model_is_still_importable_from_the_adapter_module():
    from semhooks.backend import loading
    from semhooks.backend.adapter import load_model

    assert load_model is loading.load_model is sh.load_model
