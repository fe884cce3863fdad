"""The one activation reader against TransformerLens' own cache and against itself."""

from __future__ import annotations

import pytest
import torch

from semhooks.backend.adapter import adapt, leaked_hooks
from semhooks.extraction.pooling import pool
from semhooks.extraction.reader import batch_from_ids, read

TEXTS = ["The cat sat on the mat.", "Paris", "A much longer sentence about rivers and hills."]


@pytest.fixture(params=["llama", "gpt2", "bert"])
def model(request):
    return request.getfixturevalue(f"tiny_{request.param}")


def _all_sites(a):
    return {layer: a.hook_name("resid_post", layer) for layer in range(a.n_layers)}


@pytest.mark.parametrize("side", ["left", "right"])
def test_reader_equals_run_with_cache_at_every_layer(model, side):
    a = adapt(model)
    batch = a.tokenize(TEXTS, padding_side=side)
    got = read(a, batch, _all_sites(a)).values
    _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    keep = batch.attention_mask.bool()
    for layer in range(a.n_layers):
        ref = cache[f"blocks.{layer}.hook_resid_post"]
        assert torch.allclose(got[layer][keep], ref[keep], atol=1e-5), (layer, side)


def test_batched_equals_one_by_one_and_left_equals_right(model):
    a = adapt(model)
    sites = _all_sites(a)
    for side in ("left", "right"):
        batch = a.tokenize(TEXTS, padding_side=side)
        together = read(a, batch, sites).values
        for i in range(len(TEXTS)):
            alone = read(a, batch.row(i), sites).values
            keep = batch.attention_mask[i].bool()
            for layer in sites:
                assert torch.allclose(together[layer][i][keep], alone[layer][0], atol=1e-5)


def test_pooled_in_hook_equals_pooled_from_raw(model):
    a = adapt(model)
    batch = a.tokenize(TEXTS, padding_side="left")
    sel = batch.attention_mask.bool() & ~batch.special
    sites = _all_sites(a)
    raw = read(a, batch, sites).values
    for how in ("mean", "max", "last", "first"):
        pooled = read(a, batch, sites, lambda k, x, how=how: pool(x, sel, how)).values
        for layer in sites:
            assert torch.allclose(pooled[layer], pool(raw[layer], sel, how), atol=1e-6)


def test_nothing_after_the_deepest_site_runs_and_no_hook_is_left(tiny_llama):
    a = adapt(tiny_llama)
    batch = a.tokenize(TEXTS)
    deeper: list[str] = []

    def spy(x, hook):
        deeper.append(hook.name)
        return x

    later = [(a.hook_name("resid_pre", 1), spy), ("ln_final.hook_normalized", spy)]
    out = read(a, batch, {0: a.hook_name("resid_post", 0)}, edits=later)
    assert deeper == [] and out.logits is None and 0 in out.values
    # With the logits asked for, the same hooks do fire (the spy works).
    out = read(a, batch, {0: a.hook_name("resid_post", 0)}, edits=later, logits=True)
    assert len(deeper) == 2 and out.logits is not None
    assert leaked_hooks(tiny_llama) == 0


def test_hooks_are_removed_when_take_raises(tiny_gpt2):
    a = adapt(tiny_gpt2)

    def boom(key, x):
        raise KeyError("planted")

    with pytest.raises(KeyError, match="planted"):
        read(a, a.tokenize(TEXTS), {0: a.hook_name("resid_post", 0)}, boom)
    assert leaked_hooks(tiny_gpt2) == 0


def test_grad_mode_gives_gradients_to_an_edited_leaf(tiny_llama):
    a = adapt(tiny_llama)
    batch = a.tokenize(["The cat sat."])
    leaf = torch.zeros(a.d_model, requires_grad=True)

    def add(x, hook):
        return x + leaf

    site = {1: a.hook_name("resid_post", 1)}
    out = read(a, batch, site, grad=True, edits=[(a.hook_name("resid_post", 0), add)])
    out.values[1].sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    plain = read(a, batch, site).values[1]
    assert not plain.requires_grad
    assert torch.allclose(out.values[1].detach(), plain, atol=1e-5)


def test_batch_from_ids_equals_the_tokenizer_batch(tiny_llama):
    a = adapt(tiny_llama)
    batch = a.tokenize(TEXTS, padding_side="left")
    made = batch_from_ids(batch.input_ids, batch.attention_mask, lead=1)
    assert made.padding_side == "left"
    assert torch.equal(made.special[:, -1], torch.zeros(len(TEXTS), dtype=torch.bool))
    sites = _all_sites(a)
    x, y = read(a, batch, sites).values, read(a, made, sites).values
    assert all(torch.equal(x[la], y[la]) for la in sites)


def test_an_edit_on_the_read_site_is_seen_by_the_read(tiny_gpt2):
    a = adapt(tiny_gpt2)
    batch = a.tokenize(TEXTS)
    site = {0: a.hook_name("resid_post", 0)}

    def add_one(x, hook):
        return x + 1.0

    plain = read(a, batch, site).values[0]
    edited = read(a, batch, site, edits=[(site[0], add_one)]).values[0]
    assert torch.allclose(edited, plain + 1.0)


def test_a_slice_of_a_plan_equals_the_same_rows_of_the_whole(tiny_llama):
    """Shards and ranks run slices of one ExtractionPlan: item ids index the whole corpus
    (explicit positions are per text), whatever the slice and its order."""
    import dataclasses

    from semhooks.extraction.plan import extract_items, plan_extraction

    plan = plan_extraction(tiny_llama, TEXTS, tokens=[[1], [-1], [0, 2]], pool="mean")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.pool = "max"  # type: ignore[misc]
    whole = extract_items(plan).states
    part = extract_items(plan, [2, 0]).states
    torch.testing.assert_close(part, whole[:, [2, 0]])


def test_logit_positions_equal_the_full_logits_and_leave_the_reads_unchanged(tiny_llama):
    a = adapt(tiny_llama)
    batch = a.tokenize(TEXTS, padding_side="right")
    sites = {1: a.hook_name("resid_post", 1)}
    positions = [[0, int(n) - 1] for n in batch.attention_mask.sum(-1)]
    out = read(a, batch, sites, logit_positions=positions)
    full = read(a, batch, sites, logits=True)
    assert full.logits is not None and out.position_logits is not None
    for r, pos in enumerate(positions):
        assert torch.allclose(out.position_logits[r], full.logits[r, pos], atol=1e-5)
    assert torch.equal(out.values[1], full.values[1])
    alone = read(a, batch, {}, logit_positions=positions).position_logits
    assert alone is not None
    assert all(torch.equal(x, y) for x, y in zip(alone, out.position_logits, strict=True))
    with pytest.raises(ValueError, match="logit_positions"):
        read(a, batch, sites, grad=True, logit_positions=positions)
    assert leaked_hooks(tiny_llama) == 0


@pytest.mark.parametrize("grad", [False, True])
def test_a_suffix_read_on_a_cached_prefix_equals_the_full_pass(any_backend_llama, grad):
    """``read(cache=...)``: the prefix fills a KV cache (nothing kept), the suffix runs on a
    copy of it; the suffix's states equal the same positions of one full pass, and an edit
    and autograd work on the suffix as on a full pass."""
    a = adapt(any_backend_llama)
    batch = a.tokenize(["The cat sat on the mat by the door."])
    ids, cut = batch.input_ids, 4
    sites = _all_sites(a)
    full = read(a, batch, sites).values
    cache = a.new_kv_cache()
    kept = read(a, batch_from_ids(ids[:, :cut]), sites, lambda k, x: x[:, :0], cache=cache)
    assert a.kv_cache_length(cache) == cut and all(v.numel() == 0 for v in kept.values.values())
    leaf = torch.zeros(a.d_model, requires_grad=True)

    def add(x, hook):
        return x + leaf

    edit = [(sites[0], add)]
    for _ in range(2):  # the prefix is reused: each read runs on its own copy
        suffix = batch_from_ids(ids[:, cut:])
        out = read(a, suffix, sites, grad=grad, edits=edit, cache=a.copy_kv_cache(cache)).values
        for layer in sites:
            torch.testing.assert_close(
                out[layer][0].detach(), full[layer][0, cut:], atol=1e-4, rtol=1e-4
            )
            assert out[layer].requires_grad == grad
    assert a.kv_cache_length(cache) == cut
    if grad:
        out[a.n_layers - 1].sum().backward()
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    two = a.tokenize(["The cat", "A dog"])
    with pytest.raises(ValueError, match="one row without padding"):
        read(a, two, sites, cache=a.new_kv_cache())
    with pytest.raises(ValueError, match="logit_positions"):
        read(a, batch, sites, logit_positions=[[0]], cache=a.new_kv_cache())
    assert leaked_hooks(any_backend_llama) == 0
