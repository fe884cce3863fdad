"""extract_states oracles: in-hook pooling == full cache, batched == one by one, padding sides."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import semhooks as sh
from semhooks.extraction.pooling import pool as pool_fn

TEXTS = [
    "The capital of France is Paris.",
    "Bat, Rabbit, Ant, Fox,",
    "I loved this movie; it was wonderful and moving.",
    "He plays the guitar.",
    "Él comió café en São Paulo.",
]
POOLS = ["mean", "max", "last", "first"]


def one_by_one(model, texts, **kw):
    return torch.cat([sh.extract_states(model, [t], progress=False, **kw).states for t in texts], 1)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("how", POOLS)
def test_in_hook_pooling_equals_pooling_a_full_cache(arch, how, request):
    model = request.getfixturevalue(f"tiny_{arch}")
    a = sh.adapt(model)
    got = sh.extract_states(model, TEXTS, tokens="all", pool=how, progress=False, batch_size=2)
    batch = a.tokenize(TEXTS)
    _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    # Independent reference: pool each text's own unpadded rows by hand.
    for li, layer in enumerate(got.layers):
        acts = cache[f"blocks.{layer}.hook_resid_post"]
        for i in range(len(TEXTS)):
            keep = batch.attention_mask[i].bool() & ~batch.special[i]
            rows = acts[i][keep]
            expect = {
                "mean": rows.mean(0),
                "max": rows.amax(0),
                "last": rows[-1],
                "first": acts[i][batch.attention_mask[i].bool()][0],
            }[how]
            if how == "first":  # "first" selects the first token of the selection
                expect = rows[0]
            torch.testing.assert_close(got.states[li, i], expect, atol=1e-5, rtol=1e-5)
    from_cache = sh.LayerStates.from_cache(cache, tokens="all", pool=how, tokenized=batch)
    torch.testing.assert_close(from_cache.states, got.states, atol=1e-5, rtol=1e-5)
    # The README's form: the texts and the model, re-tokenised as TransformerLens does.
    again = sh.LayerStates.from_cache(cache, tokens="all", pool=how, model=model, texts=TEXTS)
    torch.testing.assert_close(again.states, got.states, atol=1e-5, rtol=1e-5)
    # With only the mask, "all" counts BOS/CLS as content; it says so instead of silently
    # differing from extract_states.
    from semhooks.errors import SemhooksWarning

    with pytest.warns(SemhooksWarning, match="model= and texts="):
        sh.LayerStates.from_cache(
            cache, tokens="all", pool=how, attention_mask=batch.attention_mask
        )


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_batched_equals_one_by_one_and_left_equals_right(arch, request):
    model = request.getfixturevalue(f"tiny_{arch}")
    for how in POOLS:
        ref = one_by_one(model, TEXTS, tokens="all", pool=how)
        right = sh.extract_states(
            model, TEXTS, tokens="all", pool=how, batch_size=3, progress=False
        )
        left = sh.extract_states(
            model, TEXTS, tokens="all", pool=how, batch_size=5, padding_side="left", progress=False
        )
        torch.testing.assert_close(right.states, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(left.states, ref, atol=1e-5, rtol=1e-5)


def test_token_selection_variants(tiny_gpt2):
    a = sh.adapt(tiny_gpt2)
    full = sh.extract_states(tiny_gpt2, TEXTS[:2], tokens="all", pool=None, progress=False)
    # explicit positions index the unpadded sequence, BOS included; -1 is the last token
    last = sh.extract_states(tiny_gpt2, TEXTS[:2], tokens=[-1, -1], pool="mean", progress=False)
    last2 = sh.extract_states(tiny_gpt2, TEXTS[:2], tokens="last", pool="mean", progress=False)
    torch.testing.assert_close(last.states, last2.states)
    bos = sh.extract_states(tiny_gpt2, TEXTS[:2], tokens=[0, 0], pool="mean", progress=False)
    torch.testing.assert_close(bos.states[:, 0], bos.states[:, 1])  # BOS state is context-free
    span = sh.extract_states(
        tiny_gpt2, TEXTS[:2], tokens=["Paris", "Rabbit"], pool="mean", progress=False
    )
    batch = a.tokenize(TEXTS[:2])
    pos = sh.find_span(batch, "Rabbit", row=1)
    sel = (full.item_index == 1) & torch.isin(full.positions, torch.tensor(pos))
    torch.testing.assert_close(span.states[:, 1], full.states[:, sel].mean(1))
    # token-level states repool to the in-hook pooled ones
    torch.testing.assert_close(
        full.repool("max").states,
        sh.extract_states(tiny_gpt2, TEXTS[:2], tokens="all", pool="max", progress=False).states,
    )
    with pytest.raises(ValueError, match="position 99 is out of range for text 0"):
        sh.extract_states(tiny_gpt2, TEXTS[:2], tokens=[99, 0], progress=False)
    with pytest.raises(ValueError, match="2 spans given for 1 texts"):
        sh.extract_states(tiny_gpt2, TEXTS[:1], tokens=sh.Spans(["a", "b"]), progress=False)


def test_weighted_pooling_with_given_scores(tiny_llama):
    def first_token_heavy(acts, layer):
        scores = torch.zeros(acts.shape[:2])
        scores[:, :] = -torch.arange(acts.shape[1], dtype=torch.float32) * 50.0
        return scores

    w = sh.extract_states(
        tiny_llama,
        TEXTS,
        tokens="all",
        pool="weighted",
        pool_weights=first_token_heavy,
        progress=False,
    )
    # softmax of steeply falling scores puts (almost) all weight on the first selected token
    torch.testing.assert_close(
        w.states,
        sh.extract_states(tiny_llama, TEXTS, tokens="all", pool="first", progress=False).states,
        atol=1e-4,
        rtol=1e-4,
    )


def test_attention_pooler_learns_where_the_signal_is():
    # Synthetic token states: the label lives only in the token whose first feature is 5.
    g = torch.Generator().manual_seed(0)
    n, t, d = 200, 6, 8
    x = torch.randn(n, t, d, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x[:, 2, 0] = 5.0
    x[:, 2, 1] = (y * 2 - 1).float() * 2
    mask = torch.ones(n, t, dtype=torch.bool)
    item = torch.arange(n).repeat_interleave(t)
    pos = torch.arange(t).repeat(n)
    states = sh.LayerStates(
        x[mask][None], [0], "resid_post", None, "all", {"n_items": n}, item, pos
    )
    pooler = sh.AttentionPooler(epochs=200, lr=5e-2, progress=False).fit(states, y.numpy())
    assert pooler.train_accuracy_[0] > 0.95
    weights = torch.softmax(pooler.scores(x, 0), dim=1)
    assert float(weights[:, 2].mean()) > 0.5
    mean_acc = float(((pool_fn(x, mask, "mean")[:, 1] > 0).long() == y).float().mean())
    assert mean_acc < pooler.train_accuracy_[0]


def test_stops_after_the_deepest_requested_layer(tiny_llama):
    a = sh.adapt(tiny_llama)
    fired = []
    hp = tiny_llama.hook_dict["blocks.2.hook_resid_post"]
    handle = hp.register_forward_hook(lambda *args: fired.append(1))
    try:
        sh.extract_states(tiny_llama, TEXTS, layers=[0, 1], progress=False)
        assert fired == []
        sh.extract_states(tiny_llama, TEXTS[:1], layers=[2], progress=False)
        assert fired == [1]
    finally:
        handle.remove()
    assert a.resolve_layers("all") == [0, 1, 2]


def test_bad_inputs(tiny_gpt2):
    with pytest.raises(ValueError, match="empty list"):
        sh.extract_states(tiny_gpt2, [], progress=False)
    with pytest.raises(ValueError, match="text 0 is empty"):
        sh.extract_states(tiny_gpt2, [""], progress=False)
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        sh.extract_states(tiny_gpt2, ["a b"], pool="median", progress=False)
    with pytest.raises(ValueError, match="unknown site 'residual'"):
        sh.extract_states(tiny_gpt2, ["a b"], site="residual", progress=False)
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        sh.extract_states(tiny_gpt2, ["a b"], layers=[7], progress=False)
    with pytest.raises(ValueError, match="unknown token selection 'middle'"):
        sh.extract_states(tiny_gpt2, ["a b"], tokens="middle", progress=False)
    with pytest.raises(sh.SpanNotFoundError, match="'zebra' not found"):
        sh.extract_states(tiny_gpt2, ["a b"], tokens=["zebra"], progress=False)
    with pytest.raises(ValueError, match="needs pool_weights"):
        sh.extract_states(tiny_gpt2, ["a b"], pool="weighted", progress=False)


def test_sites_differ_and_embed_is_layer_input(tiny_llama):
    states = {
        site: sh.extract_states(tiny_llama, TEXTS, layers=[1], site=site, progress=False).states
        for site in ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
    }
    torch.testing.assert_close(
        states["resid_mid"], states["resid_pre"] + states["attn_out"], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        states["resid_post"], states["resid_mid"] + states["mlp_out"], atol=1e-5, rtol=1e-5
    )
    emb = sh.extract_states(tiny_llama, TEXTS, site="embed", progress=False)
    pre0 = sh.extract_states(tiny_llama, TEXTS, layers=[0], site="resid_pre", progress=False)
    torch.testing.assert_close(emb.states, pre0.states)


def test_save_load_roundtrip_and_provenance(tiny_gpt2, tmp_path):
    st = sh.extract_states(tiny_gpt2, TEXTS, tokens="all", pool=None, progress=False)
    path = st.save(tmp_path / "states.safetensors")
    back = sh.LayerStates.load(path)
    torch.testing.assert_close(back.states, st.states)
    assert torch.equal(back.item_index, st.item_index) and torch.equal(back.positions, st.positions)
    assert back.provenance["model"] == "tiny-gpt2"
    assert back.provenance["hook_names"][0] == "blocks.0.hook_resid_post"
    for key in ("backend", "transformer_lens_version", "semhooks_version", "date", "d_model"):
        assert key in back.provenance
    assert back.numpy(1).shape == (st.states.shape[1], 64)


def test_corrupted_and_wrong_files_give_clear_errors(tiny_gpt2, tmp_path):
    st = sh.extract_states(tiny_gpt2, TEXTS, progress=False)
    path = st.save(tmp_path / "s.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(sh.ArtifactError, match="corrupted|truncated"):
        sh.LayerStates.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(sh.ArtifactError):
        sh.LayerStates.load(tmp_path / "junk.safetensors")
    with pytest.raises(sh.ArtifactError, match="no artifact"):
        sh.LayerStates.load(tmp_path / "missing.safetensors")


def test_killed_save_leaves_previous_file_intact(tmp_path):
    """A process killed in the middle of a save must leave the old artifact readable."""
    target = tmp_path / "states.safetensors"
    script = textwrap.dedent(
        f"""
        import os, signal, torch, semhooks as sh
        from semhooks.io import artifacts
        st = sh.LayerStates(torch.ones(1, 2, 3), [0], "resid_post", "mean", "last", {{}})
        st.save({str(target)!r})
        print("saved", flush=True)
        real = artifacts.atomic_write_bytes
        def dying(path, data):
            with artifacts.atomic_path(path) as tmp:
                tmp.write_bytes(data[: len(data) // 3])
                os.kill(os.getpid(), signal.SIGKILL)
        artifacts.atomic_write_bytes = dying
        sh.LayerStates(torch.zeros(1, 5, 3), [0], "resid_post", "mean", "last", {{}}).save({str(target)!r})
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "saved" in proc.stdout
    back = sh.LayerStates.load(target)
    assert back.states.shape == (1, 2, 3) and float(back.states.sum()) == 6.0
    leftovers = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert len(leftovers) <= 1  # the killed writer's temp file, never the target


def test_streaming_shards_resume_identically(tiny_llama, tmp_path):
    texts = [f"{w} number {i} is here." for i, w in enumerate(["Bat", "Fox", "Owl", "Ant"] * 5)]
    full = sh.extract_states(tiny_llama, texts, tokens="all", pool="mean", progress=False)
    out = tmp_path / "shards"
    sharded = sh.extract_states(
        tiny_llama, texts, tokens="all", pool="mean", out_dir=out, shard_size=6, progress=False
    )
    assert sharded.complete and len(sharded.manifest["shards"]) == 4
    torch.testing.assert_close(sharded.load().states, full.states)
    # simulate an interruption: drop the last two shards from the manifest and a file
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:2]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "shard-00003.safetensors").unlink()
    assert not sh.ShardedStates.open(out).complete
    resumed = sh.extract_states(
        tiny_llama, texts, tokens="all", pool="mean", out_dir=out, shard_size=6, progress=False
    )
    reference = full.states.clone()
    assert torch.equal(resumed.load().states, sh.ShardedStates.open(out).load().states)
    torch.testing.assert_close(resumed.load().states, reference)
    with pytest.raises(sh.ArtifactError, match="another extraction"):
        sh.extract_states(tiny_llama, texts, pool="max", out_dir=out, shard_size=6, progress=False)
