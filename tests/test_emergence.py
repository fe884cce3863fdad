"""Information emergence: inputs, extraction oracles, IE end to end, bad inputs."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
import torch

from semhooks.backend.adapter import adapt
from semhooks.estimators.mi import MINE, GaussianMI
from semhooks.studies.emergence import (
    EmergencePairs,
    EmergenceResult,
    EntityLists,
    collect_pairs,
    entity_lists,
    estimate_emergence,
    information_emergence,
    make_estimator,
)

WORDS = (
    "The capital of France is Paris Germany Berlin Italy Rome and Spain Madrid loved this "
    "movie it was wonderful moving hated film boring dull far too long bank river muddy She "
    "went to deposit money He plays guitar piano violin"
).split()


def _texts(n: int, seed: int = 0, words: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def _gpt2_entities(model) -> list[str]:
    vocab = adapt(model).tokenizer.get_vocab()
    return sorted(w for w in vocab if w.isalpha() and len(w) >= 2)


def _states(model, ids: list[int], depth: int) -> torch.Tensor:
    """Reference: the state entering block ``depth`` for every position of one sequence."""
    name = "blocks.0.hook_resid_pre" if depth == 0 else f"blocks.{depth - 1}.hook_resid_post"
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=[name])
    return cache[name][0].float()


# ------------------------------------------------------------------------------------ inputs
def test_entity_lists_are_seeded_distinct_permutations():
    pool = ["Ant", "Bee", "Cat", "Dog", "Owl"]
    a = entity_lists(k=3, n=20, entities=pool, seed=1)
    b = entity_lists(k=3, n=20, entities=pool, seed=1)
    c = entity_lists(k=3, n=20, entities=pool, seed=2)
    assert a.texts == b.texts and a.texts != c.texts
    assert len(set(a.items)) == 20
    for items, text in zip(a.items, a.texts, strict=True):
        assert len(set(items)) == 3 and set(items) <= set(pool)
        assert text == ",".join(items) + ","
    every = entity_lists(k=2, n=None, entities=pool[:4])
    assert every.all_permutations and len(every) == 12 == math.perm(4, 2)
    assert sorted(every.items) == every.items  # lexicographic
    # asking for more lists than exist returns all of them, shuffled
    more = entity_lists(k=2, n=100, entities=pool[:4], seed=3)
    assert more.all_permutations and sorted(more.items) == every.items
    with pytest.raises(ValueError, match="max_lists"):
        entity_lists(k=5, n=None, entities=[str(i) for i in range(30)])
    with pytest.raises(ValueError, match="only 2 usable"):
        entity_lists(k=3, entities=["a", "b"])


def test_entity_lists_keep_single_tokens_and_give_entity_positions(tiny_gpt2):
    pool = _gpt2_entities(tiny_gpt2)[:10] + ["Rabbit", "Zebra"]
    lists = entity_lists(k=3, n=30, entities=pool, model=tiny_gpt2)
    assert "Rabbit" in lists.dropped and "Rabbit" not in lists.entities
    assert lists.positions(tiny_gpt2) == [1, 3, 5]
    assert lists.positions(tiny_gpt2, at="separator") == [2, 4, 6]
    tok = adapt(tiny_gpt2).tokenizer
    for text in lists.texts[:5]:
        assert len(tok(text, add_special_tokens=False)["input_ids"]) == 6
    bad = EntityLists(["Rabbit,Zebra,"], [("Rabbit", "Zebra")], 2, ",", pool, [], False, 0)
    with pytest.raises(ValueError, match="one token per entity"):
        bad.positions(tiny_gpt2)


# ------------------------------------------------------------------------ extraction oracles
@pytest.mark.backend
def test_macro_and_micro_states_match_direct_forward_passes(any_backend_llama):
    model = any_backend_llama
    adapter = adapt(model)
    texts = _texts(12, seed=4)
    pairs = collect_pairs(model, texts, positions=[1, 2, 4], batch_size=5, progress=False)
    n_layers = adapter.n_layers
    assert pairs.layers == list(range(n_layers)) and pairs.depths == list(range(n_layers + 1))
    assert pairs.macro.shape == (n_layers + 1, 12, 3, adapter.d_model)
    assert pairs.token_ids.shape == (12, 4)
    bos = adapter.bos_token_id
    assert pairs.provenance["micro_prefix"] == adapter.tokenizer.convert_ids_to_tokens([bos])
    batch = adapter.tokenize(texts)
    for i in (0, 7):
        ids = [int(x) for x in batch.input_ids[i][batch.attention_mask[i].bool()]]
        assert ids[0] == bos and ids[1:5] == pairs.token_ids[i].tolist()
        for depth in (0, 1, n_layers):
            ref = _states(model, ids, depth)
            # content position t sits at index t (BOS at index 0)
            for c, t in enumerate([1, 2, 4]):
                torch.testing.assert_close(pairs.macro[depth, i, c], ref[t], atol=1e-4, rtol=1e-4)
    # micro: each distinct token fed alone after BOS -- exactly two tokens, state at index 1
    for v in pairs.micro_vocab[:5].tolist():
        row = int((pairs.micro_vocab == v).nonzero())
        for depth in (0, n_layers):
            ref = _states(model, [bos, v], depth)
            assert ref.shape[0] == 2
            torch.testing.assert_close(pairs.micro[depth, row], ref[1], atol=1e-4, rtol=1e-4)
    # the micro state is not the in-context state (position 2 sees a prefix)
    x2, _ = pairs.micro_pair(0, 2)
    assert not torch.allclose(pairs.macro[1, :, 1], pairs.micro_pair(1, 2)[0], atol=1e-3)
    assert x2.shape == (12, adapter.d_model)
    # t = 1: BOS + first token is the micro input itself
    torch.testing.assert_close(
        pairs.macro_pair(0, 0)[1], pairs.micro_pair(0, 1)[1], atol=1e-4, rtol=1e-4
    )


@pytest.mark.backend
def test_micro_pass_feeds_exactly_one_token_after_bos(tiny_gpt2):
    lists = entity_lists(k=2, n=20, entities=_gpt2_entities(tiny_gpt2), model=tiny_gpt2)
    adapter = adapt(tiny_gpt2)
    seen: list[torch.Tensor] = []
    original = adapter.forward

    def spy(batch, fwd_hooks=None, **kw):
        seen.append(batch.input_ids.clone())
        return original(batch, fwd_hooks, **kw)

    adapter.forward = spy  # type: ignore[method-assign]
    try:
        pairs = collect_pairs(tiny_gpt2, lists, layers=[0], batch_size=8, progress=False)
    finally:
        del adapter.forward
    macro_calls = [ids for ids in seen if ids.shape[1] == 4]  # BOS e , e  (cut after t=3)
    micro_calls = [ids for ids in seen if ids.shape[1] == 2]
    assert sum(len(x) for x in macro_calls) == 20 and len(macro_calls) == 3
    micro_ids = torch.cat(micro_calls)
    assert (micro_ids[:, 0] == adapter.bos_token_id).all()
    assert sorted(micro_ids[:, 1].tolist()) == pairs.micro_vocab.tolist()
    # distinct tokens only: entities and the separator, each once
    assert len(pairs.micro_vocab) == len(set(pairs.token_ids.flatten().tolist()))
    assert pairs.positions == [1, 3] and pairs.depths == [0, 1]


# ------------------------------------------------------------------------------ IE end to end
@pytest.mark.backend
def test_information_emergence_end_to_end_with_gaussian(tiny_gpt2, tmp_path):
    lists = entity_lists(k=3, n=150, entities=_gpt2_entities(tiny_gpt2), model=tiny_gpt2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = information_emergence(tiny_gpt2, lists, GaussianMI(), reduce_dim=4, progress=False)
    n_layers = adapt(tiny_gpt2).n_layers
    assert res.layers == list(range(n_layers)) and res.positions == [1, 3, 5]
    for name in ("ie", "mi_macro", "mi_micro"):
        assert getattr(res, name).shape == (n_layers, 3)
    assert res.mi_micro_token.shape == (n_layers, 5)
    np.testing.assert_allclose(res.ie, res.mi_macro - res.mi_micro)
    # the micro term of cell t is the mean over tokens 1..t
    np.testing.assert_allclose(res.mi_micro[:, 2], res.mi_micro_token.mean(1))
    # separators are one constant token: MI exactly 0, no fit
    assert (res.mi_micro_token[:, [1, 3]] == 0).all()
    assert res.protocol["n_constant_cells"] == 2 * n_layers
    # t = 1: the macro input is the micro input (BOS + first entity) -> IE = 0
    np.testing.assert_allclose(res.ie[:, 0], 0.0, atol=1e-3)
    # ceilings from the data
    first = {it[0] for it in lists.items}
    assert res.ceiling_macro[0] == pytest.approx(math.log2(len(first)))
    assert res.ceiling_macro[1] == pytest.approx(math.log2(len({it[:2] for it in lists.items})))
    assert res.ceiling_micro_token[1] == 0.0
    assert res.ceiling_micro[1] == pytest.approx(np.mean(res.ceiling_micro_token[:3]))
    assert res.entropy_macro[2] == pytest.approx(math.log2(150))
    assert res.estimator_ceiling is None
    # table, plot, JSON round trip
    table = res.table()
    assert table.count("\n") == n_layers + 4 and "ceiling macro" in table
    assert "| 0 |" in res.table("macro") and "t=5" in res.table("micro")
    fig = res.plot(path=tmp_path / "ie.png")
    assert (tmp_path / "ie.png").stat().st_size > 10_000 and len(fig.axes) >= 3
    res.save(tmp_path / "ie.json")
    back = EmergenceResult.load(tmp_path / "ie.json")
    np.testing.assert_allclose(back.ie, res.ie)
    np.testing.assert_allclose(back.mi_micro_token, res.mi_micro_token)
    assert back.positions == res.positions and back.protocol == res.protocol
    assert json.loads((tmp_path / "ie.json").read_text())["kind"] == "EmergenceResult"


@pytest.fixture(scope="module")
def llama_pairs(tiny_llama):
    texts = _texts(80, seed=5)
    return collect_pairs(tiny_llama, texts, layers=[0, -1], positions=[1, 3], progress=False)


MINE_FEW_STEPS = MINE(max_steps=20, eval_every=10, eval_window=2, hidden=16, batch_size=32, seed=3)


@pytest.mark.backend
def test_information_emergence_with_few_mine_steps(llama_pairs):
    assert llama_pairs.depths == [0, 1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = estimate_emergence(llama_pairs, MINE_FEW_STEPS, reduce_dim=3, progress=False)
    assert res.ie.shape == (2, 2) and np.isfinite(res.ie).all()
    assert res.layers == [0, 2] and res.positions == [1, 3]
    assert res.estimator_ceiling == pytest.approx(math.log2(16))
    np.testing.assert_allclose(res.ie[:, 0], 0.0, atol=1e-3)  # t = 1: same data, same seed
    assert res.protocol["estimator_class"] == "MINE" and "max_steps=20" in res.protocol["estimator"]
    assert res.protocol["n_fits"] == 2 * (2 + 3)


@pytest.mark.backend
def test_mine_cells_train_stacked_and_equal_one_fit_per_cell(llama_pairs, monkeypatch):
    """The fast path (every MINE cell of a shape in one stacked fit) is taken by default,
    and gives what one fit per cell gives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        one_by_one = estimate_emergence(
            llama_pairs, MINE_FEW_STEPS, reduce_dim=3, stack_size=1, progress=False
        )
        # a separate fit would fail now: the default must not make any
        monkeypatch.setattr(MINE, "fit", lambda *a, **k: pytest.fail("a separate MINE fit ran"))
        stacked = estimate_emergence(llama_pairs, MINE_FEW_STEPS, reduce_dim=3, progress=False)
    assert one_by_one.protocol["fit_path"] == "one fit per cell"
    assert stacked.protocol["fit_path"].startswith("stacked")
    np.testing.assert_allclose(stacked.mi_macro, one_by_one.mi_macro, atol=1e-4)
    np.testing.assert_allclose(stacked.mi_micro_token, one_by_one.mi_micro_token, atol=1e-4)
    np.testing.assert_allclose(stacked.ie[:, 0], 0.0, atol=1e-6)  # t = 1: same data, same draws
    assert stacked.protocol["n_fits"] == one_by_one.protocol["n_fits"]


def test_a_named_mine_estimator_is_stacked():
    from semhooks.estimators.mi import can_stack

    assert can_stack(make_estimator("mine")) and not can_stack(make_estimator("infonce"))


@pytest.mark.slow
def test_two_worker_processes_give_the_serial_result(llama_pairs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        serial = estimate_emergence(llama_pairs, MINE_FEW_STEPS, reduce_dim=3, progress=False)
        parallel = estimate_emergence(
            llama_pairs, MINE_FEW_STEPS, reduce_dim=3, n_jobs=2, progress=False
        )
    np.testing.assert_allclose(parallel.ie, serial.ie, atol=1e-3)


def test_estimates_near_the_ceiling_warn(tiny_gpt2):
    # 12 distinct lists: a deterministic block on 12 points is near-perfectly dependent
    lists = entity_lists(k=2, n=None, entities=_gpt2_entities(tiny_gpt2)[:4], model=tiny_gpt2)
    pairs = collect_pairs(tiny_gpt2, EntityLists(
        lists.texts * 6, lists.items * 6, 2, ",", lists.entities, [], True, 0
    ), layers=[0], progress=False)  # fmt: skip
    with pytest.warns(RuntimeWarning, match="ceiling"):
        res = estimate_emergence(pairs, "gaussian", reduce_dim=2, progress=False)
    assert res.near_ceiling["macro"]
    assert res.ceiling_macro[-1] == pytest.approx(math.log2(12))


def test_gaussian_on_too_few_distinct_tokens_is_nan_with_a_warning(tiny_gpt2):
    lists = entity_lists(k=2, n=None, entities=_gpt2_entities(tiny_gpt2)[:5], model=tiny_gpt2)
    pairs = collect_pairs(tiny_gpt2, lists, layers=[0], progress=False)
    with pytest.warns(RuntimeWarning, match="NaN"):
        res = estimate_emergence(pairs, GaussianMI(), reduce_dim=4, progress=False)
    # 5 distinct tokens per entity slot < 4 + 4 + 2 joint dimensions
    assert np.isnan(res.mi_micro_token[0, 0]) and np.isnan(res.ie[0, 0])
    assert "nan" not in res.table().lower() and "n/a" in res.table()


# ------------------------------------------------------------------------------- bad inputs
def _pairs(n: int = 50, d: int = 8, cells: int = 2, seed: int = 0, **over) -> EmergencePairs:
    g = torch.Generator().manual_seed(seed)
    vocab = torch.arange(10, 110)
    kw = dict(
        macro=torch.randn(2, n, cells, d, generator=g),
        micro=torch.randn(2, 100, d, generator=g),
        micro_vocab=vocab,
        token_ids=vocab[torch.randint(0, 100, (n, cells), generator=g)],
        positions=list(range(1, cells + 1)),
        layers=[0],
        depths=[0, 1],
    )
    kw.update(over)
    return EmergencePairs(**kw)  # type: ignore[arg-type]


def test_too_few_samples_for_the_estimator_is_a_clear_error():
    with pytest.raises(ValueError, match=r"refused the macro block 0 t=1 with 20 samples.*too few"):
        estimate_emergence(_pairs(n=20), MINE(max_steps=5), reduce_dim=None, progress=False)
    with pytest.raises(ValueError, match="too few samples"):
        estimate_emergence(_pairs(n=30, d=16), GaussianMI(), reduce_dim=None, progress=False)


def test_mismatched_pairs_and_non_finite_states_are_clear_errors():
    good = _pairs()
    with pytest.raises(ValueError, match="mismatched pair counts"):
        _pairs(token_ids=good.token_ids[:40])
    with pytest.raises(ValueError, match="one state per distinct token"):
        _pairs(micro_vocab=torch.arange(10, 109))
    with pytest.raises(ValueError, match="no micro state"):
        _pairs(token_ids=good.token_ids + 1000)
    with pytest.raises(ValueError, match="2 depths but depths lists 3"):
        _pairs(depths=[0, 1, 2])
    with pytest.raises(ValueError, match="need depths l and l"):
        _pairs(layers=[1])
    bad = good.macro.clone()
    bad[1, 3, 0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"macro holds 1 non-finite.*\[1, 3, 0, 2\]"):
        _pairs(macro=bad)
    micro = good.micro.clone()
    micro[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="micro holds 1 non-finite"):
        _pairs(micro=micro)
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate_emergence(good, "kraskov", progress=False)
    with pytest.raises(ValueError, match="reduce_dim"):
        estimate_emergence(good, "gaussian", reduce_dim=0, progress=False)
    with pytest.raises(ValueError, match="expected \\[layers, positions\\]"):
        EmergenceResult("m", [0, 1], [1], *(np.zeros((1, 1)),) * 4, *(np.zeros(1),) * 5)


def test_estimate_on_synthetic_pairs_runs_and_is_deterministic():
    pairs = _pairs(n=200, d=6)
    a = estimate_emergence(pairs, "gaussian", reduce_dim=None, progress=False)
    b = estimate_emergence(pairs, "gaussian", reduce_dim=None, progress=False)
    np.testing.assert_array_equal(a.ie, b.ie)
    # independent random macro states: the Gaussian estimate is ~0 bits
    assert np.abs(a.mi_macro).max() < 0.3
    assert isinstance(make_estimator("mine"), MINE)


@pytest.mark.backend
def test_bad_model_inputs_and_positions(tiny_llama, tiny_bert):
    texts = _texts(10, seed=1, words=3)
    lengths = {len(adapt(tiny_llama).tokenize([t]).input_ids[0]) - 1 for t in texts}
    with pytest.raises(ValueError, match="encoder"):
        collect_pairs(tiny_bert, texts, progress=False)
    with pytest.raises(ValueError, match="past the end"):
        collect_pairs(tiny_llama, texts, positions=[max(lengths) + 1], progress=False)
    with pytest.raises(ValueError, match="content tokens from 1"):
        collect_pairs(tiny_llama, texts, positions=[0], progress=False)
    if len(lengths) > 1:
        with pytest.raises(ValueError, match="different token counts"):
            collect_pairs(tiny_llama, texts, positions="last", progress=False)
    with pytest.raises(ValueError, match="non-empty list"):
        collect_pairs(tiny_llama, [], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        collect_pairs(tiny_llama, texts, layers=[7], positions=[1], progress=False)


# ------------------------------------------------------------------------------- real model
@pytest.mark.real
@pytest.mark.backend
def test_smollm2_entity_lists_and_bos_convention(smollm2):
    lists = entity_lists(k=3, n=16, model=smollm2)
    assert "Ant" in lists.entities and "Rabbit" in lists.dropped
    pairs = collect_pairs(smollm2, lists, layers=[0, 29], progress=False)
    assert pairs.positions == [1, 3, 5]
    assert pairs.provenance["micro_prefix"] == ["<|im_start|>"]
    assert pairs.depths == [0, 1, 29, 30]
    v = int(pairs.micro_vocab[0])
    ref = _states(smollm2, [1, v], 30)
    torch.testing.assert_close(pairs.micro[3, 0], ref[1], atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------ planted effect
def test_a_label_planted_from_one_block_on_is_found_at_that_block(tiny_llama):
    """A sequence-level label written into block L's output (and so carried to every later
    depth) is read back by collect_pairs exactly there, and moves the IE profile first at L."""
    adapter = adapt(tiny_llama)
    planted_block = 1
    texts = _texts(40, seed=7)
    batch = adapter.tokenize(texts)
    first = batch.input_ids[:, 1]  # the first content token decides the label
    vocab_label = {int(t): 1.0 if i % 2 else -1.0 for i, t in enumerate(torch.unique(first))}
    v = torch.zeros(adapter.d_model)
    v[3] = 50.0

    def plant(x, hook):
        label = torch.tensor([vocab_label.get(int(t), 0.0) for t in hook_ids[0][:, 1]])
        return x + label[:, None, None].to(x.dtype) * v

    # The plant needs the ids of the batch it runs on: read them from the embedding hook.
    hook_ids: list[torch.Tensor] = []

    def ids_hook(ids, hook):
        hook_ids[:] = [ids]
        return ids

    kw = {"positions": [1, 2, 3], "batch_size": 16, "progress": False}
    base = collect_pairs(tiny_llama, texts, **kw)
    site = adapter.hook_name("resid_post", planted_block)
    with adapter.hooks([("embed.hook_in", ids_hook), (site, plant)]):
        planted = collect_pairs(tiny_llama, texts, **kw)
    label = torch.tensor([vocab_label[int(t)] for t in first])
    for depth in base.depths:
        shift = planted.macro[depth] - base.macro[depth]  # [item, cell, d]
        if depth <= planted_block:
            assert torch.equal(shift, torch.zeros_like(shift)), depth
    # depth planted_block + 1 is block planted_block's output: exactly label * v at every cell
    shift = planted.macro[planted_block + 1] - base.macro[planted_block + 1]
    expect = label[:, None, None] * v
    torch.testing.assert_close(shift, expect.expand_as(shift), atol=1e-3, rtol=0)
    with warnings.catch_warnings():  # tiny samples sit near their ceilings
        warnings.simplefilter("ignore", RuntimeWarning)
        ie_base = estimate_emergence(base, GaussianMI(), reduce_dim=4, progress=False).ie
        ie_planted = estimate_emergence(planted, GaussianMI(), reduce_dim=4, progress=False).ie
    changed = [b for b in range(ie_base.shape[0]) if not np.allclose(ie_base[b], ie_planted[b])]
    assert changed and changed[0] == planted_block, (changed, ie_base, ie_planted)
    # t = 1 is IE = 0 by construction; every later position of the planted block moves
    moved = np.abs(ie_planted[planted_block] - ie_base[planted_block])
    assert moved[0] == 0 and (moved[1:] > 1e-2).all(), moved
