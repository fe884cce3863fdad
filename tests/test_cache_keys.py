"""Cache and resume keys: a changed input recomputes or refuses, never reuses (issue 15).

Shard folders (``extract_states(out_dir=...)``) are keyed by a content hash of every input;
recipe artifacts by the recipe, its whole config, the model's weights fingerprint and the
semhooks version.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import semhooks as sh
from semhooks.extraction.states import FolderLockedError, folder_lock
from semhooks.io.fingerprint import corpus_sha256, weights_sha256
from semhooks.testing import tiny_model

TEXTS = [f"{w} number {i} is here." for i, w in enumerate(["Bat", "Fox", "Owl", "Ant"] * 15)]


def _sharded(model, out, **kw):
    kw = {"tokens": "all", "shard_size": 16, "progress": False, **kw}
    return sh.extract_states(model, TEXTS, layers=[0, 2], out_dir=out, **kw)


def _fresh(model, **kw):
    kw = {"tokens": "all", "progress": False, **kw}
    return sh.extract_states(model, TEXTS, layers=[0, 2], **kw)


def _weights(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, generator=g)

    def scores(acts, layer):
        return acts.float() @ w.to(acts.device)

    return scores


# ---------------------------------------------------------------------- shard resume keys
@pytest.mark.parametrize(
    ("first", "second", "what"),
    [
        ({"tokens": [1] * 60}, {"tokens": [2] * 60}, "tokens_sha256"),
        ({"tokens": ["number"] * 60}, {"tokens": ["here"] * 60}, "tokens_sha256"),
        (
            {"tokens": sh.Spans(lambda t: t.split()[0])},
            {"tokens": sh.Spans(lambda t: t.split()[1])},
            "tokens_sha256",
        ),
        (
            {"pool": "weighted", "pool_weights": _weights(0)},
            {"pool": "weighted", "pool_weights": _weights(1)},
            "pool_weights_sha256",
        ),
        ({"truncate": False}, {"truncate": True}, "truncate"),
    ],
    ids=["positions", "substrings", "span-callables", "pool-weights", "truncate"],
)
def test_shard_folder_refuses_another_token_selection(tiny_llama, tmp_path, first, second, what):
    """Before: the second call returned the first call's states (torch.equal)."""
    out = tmp_path / "s"
    done = _sharded(tiny_llama, out, **first)
    torch.testing.assert_close(done.load().states, _fresh(tiny_llama, **first).states)
    with pytest.raises(sh.ArtifactError, match=f"another extraction.*{what}"):
        _sharded(tiny_llama, out, **second)
    # the folder is untouched by the refused call and a fresh folder gives the other states
    assert torch.equal(sh.ShardedStates.open(out).load().states, done.load().states)
    other = _sharded(tiny_llama, tmp_path / "other", **second)
    torch.testing.assert_close(other.load().states, _fresh(tiny_llama, **second).states)
    if what != "truncate":  # these texts fit the window: truncation changes nothing
        assert not torch.equal(other.load().states, done.load().states)


def test_shard_folder_refuses_another_seed_of_the_same_model(tiny_llama, tmp_path):
    other_seed = tiny_model("llama", seed=1)
    assert weights_sha256(other_seed) != weights_sha256(tiny_llama)
    assert weights_sha256(tiny_model("llama", seed=0)) == weights_sha256(tiny_llama)
    _sharded(tiny_llama, tmp_path / "s")
    with pytest.raises(sh.ArtifactError, match="another extraction.*model_sha256"):
        _sharded(other_seed, tmp_path / "s")


def test_a_large_tensor_is_fingerprinted_by_sample_and_sums_with_no_full_float64_copy():
    """Above 2**20 elements a tensor contributes a strided sample plus its float64 sum and sum
    of squares, summed chunk by chunk (no float64 copy of the whole tensor: 226 MB for
    SmolLM2's embedding, twice that squared): an edit off the sample still changes the
    fingerprint, and so does a sign flip that leaves the sum of squares alone."""
    from torch.profiler import ProfilerActivity, profile

    big = torch.nn.Linear(1, 3 * (1 << 20) + 5, bias=False)  # 3M weights: stride 48
    with torch.no_grad():
        big.weight.copy_(torch.randn(big.weight.shape, generator=torch.Generator().manual_seed(0)))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        before = weights_sha256(big)
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < largest <= 8 * (1 << 20), largest  # one float64 chunk; the whole tensor: 24 MB
    assert weights_sha256(big) == before  # deterministic
    with torch.no_grad():
        big.weight[1] += 1e-3  # not on the sampled stride
    edited = weights_sha256(big)
    assert edited != before
    with torch.no_grad():
        big.weight[1] -= 1e-3
        big.weight[2_000_001] *= -1  # off the stride; only the sum sees it
    assert weights_sha256(big) not in (before, edited)


def test_corpus_hash_is_unambiguous(tiny_llama, tmp_path):
    """The old key joined texts with NUL: these two corpora had the same hash."""
    a, b = ["Bat\x00Fox", "Owl"], ["Bat", "Fox\x00Owl"]
    assert "\x00".join(a) == "\x00".join(b)
    assert corpus_sha256(a) != corpus_sha256(b)
    assert corpus_sha256(["ab", "c"]) != corpus_sha256(["a", "bc"])
    out = tmp_path / "s"
    sh.extract_states(tiny_llama, a, out_dir=out, progress=False)
    with pytest.raises(sh.ArtifactError, match="corpus_sha256"):
        sh.extract_states(tiny_llama, b, out_dir=out, progress=False)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_bad_shard_size_is_a_clear_error(tiny_llama, tmp_path, size):
    """Before: 0 raised ZeroDivisionError and -1 returned an empty result."""
    with pytest.raises(ValueError, match="shard_size must be"):
        _sharded(tiny_llama, tmp_path / "s", shard_size=size)
    from semhooks.extraction.distributed import DistributedError, extract_states_distributed

    with pytest.raises(DistributedError, match="shard_size must be"):
        extract_states_distributed(
            tiny_llama, TEXTS, tmp_path / "d", shard_size=size, progress=False
        )


def test_missing_shard_and_damaged_manifest_are_named_and_repaired(tiny_llama, tmp_path):
    out = tmp_path / "s"
    clean = _sharded(tiny_llama, tmp_path / "clean").load().states
    _sharded(tiny_llama, out)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    (out / "shard-00001.safetensors").unlink()
    with pytest.raises(sh.ArtifactError, match=r"shard-00001\.safetensors listed.*missing"):
        sh.ShardedStates.open(out).load()
    with pytest.raises(sh.ArtifactError, match=r"shard-00001\.safetensors listed.*missing"):
        sh.ShardedStates.open(out).layer(0)
    resumed = _sharded(tiny_llama, out)
    assert torch.equal(resumed.load().states, clean)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    assert {k for k in kept if kept[k] != after[k]} == {"shard-00001.safetensors"}
    for damage in (b'{"config": {', b"[1, 2]", b"\xff\xfe", b'{"config": {}, "shards": 3}'):
        (out / "manifest.json").write_bytes(damage)
        with pytest.raises(sh.ArtifactError, match=r"manifest\.json is damaged"):
            sh.ShardedStates.open(out)
        repaired = _sharded(tiny_llama, out)  # rebuilt from the shard files' own headers
        assert torch.equal(repaired.load().states, clean)
        assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")} == after
    # a damaged manifest and a damaged shard: only that shard is recomputed
    (out / "manifest.json").write_text("not json")
    path = out / "shard-00002.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert torch.equal(_sharded(tiny_llama, out).load().states, clean)


def test_second_writer_of_a_shard_folder_fails_clearly(tiny_llama, tmp_path):
    """Before: two processes writing one out_dir crashed with a misleading checksum error."""
    out = tmp_path / "s"
    with folder_lock(out):
        with pytest.raises(FolderLockedError, match=f"being written by pid {os.getpid()}"):
            _sharded(tiny_llama, out)
    assert not (out / "manifest.json").exists()
    assert _sharded(tiny_llama, out).complete  # the lock is released with the block


def test_shard_manifest_keeps_the_config_readable(tiny_llama, tmp_path):
    out = tmp_path / "s"
    _sharded(tiny_llama, out, tokens=[1] * 60)
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["model"] == "tiny-llama" and config["layers"] == [0, 2]
    assert config["tokens"] == "explicit" and len(config["tokens_sha256"]) == 64


# ---------------------------------------------------------------------- recipe cache keys
def _recipe(name, out, model_object=None, **extra):
    from recipes import run_recipe
    from tests.test_recipes import small_config

    doc = run_recipe(name, small_config(name, **extra), out, model=model_object)
    doc["metrics"] = _undated(doc["metrics"])
    return doc


def _undated(obj):
    """Metrics without dates and timings (the only parts that differ between runs)."""
    if isinstance(obj, dict):
        return {
            k: _undated(v)
            for k, v in obj.items()
            if k not in ("date", "saved_at") and "seconds" not in k
        }
    if isinstance(obj, list):
        return [_undated(v) for v in obj]
    return obj


def test_recipe_cache_is_keyed_by_the_model(tmp_path):
    """Before: tiny-gpt2 into tiny-llama's folder reported llama's direction norm."""
    shared = tmp_path / "run"
    llama = _recipe("concept-steering", shared)
    gpt2 = _recipe("concept-steering", shared, model="tiny-gpt2")
    fresh = _recipe("concept-steering", tmp_path / "fresh", model="tiny-gpt2")
    assert gpt2["resumed_artifacts"] == []
    assert gpt2["metrics"] == fresh["metrics"]
    assert gpt2["metrics"]["summary"] != llama["metrics"]["summary"]
    again = _recipe("concept-steering", shared, model="tiny-gpt2")
    assert again["resumed_artifacts"] == ["contrast_states"]  # a same-key re-run resumes
    assert again["metrics"] == fresh["metrics"]


def test_recipe_cache_is_keyed_by_the_weights(tmp_path):
    """Same model name, other weights (another seed): recomputed."""
    shared = tmp_path / "run"
    _recipe("concept-steering", shared, tiny_model("llama", seed=0))
    other = _recipe("concept-steering", shared, tiny_model("llama", seed=1))
    fresh = _recipe("concept-steering", tmp_path / "fresh", tiny_model("llama", seed=1))
    assert other["resumed_artifacts"] == [] and other["metrics"] == fresh["metrics"]


def test_recipe_cache_is_keyed_by_the_config(tmp_path):
    """Before: changing ``layer`` raised KeyError('layer 2 not extracted')."""
    shared = tmp_path / "run"
    _recipe("concept-steering", shared)
    moved = _recipe("concept-steering", shared, layer=2)
    assert moved["resumed_artifacts"] == []
    assert moved["metrics"] == _recipe("concept-steering", tmp_path / "fresh", layer=2)["metrics"]


def test_recipe_cache_is_keyed_by_the_source_code(tmp_path, monkeypatch):
    """The version string stays 0.1.0 across code changes that move results (relations.split
    went from per-object shuffles to StratifiedShuffleSplit): other code recomputes."""
    from semhooks.io import artifacts

    shared = tmp_path / "run"
    first = _recipe("concept-steering", shared)
    assert _recipe("concept-steering", shared)["resumed_artifacts"] == ["contrast_states"]
    real = artifacts.source_sha256
    for package in ("semhooks", "recipes"):
        monkeypatch.setattr(
            artifacts, "source_sha256", lambda p, pk=package: "0" * 64 if p == pk else real(p)
        )
        edited = _recipe("concept-steering", shared)
        assert edited["resumed_artifacts"] == [], package
        assert edited["metrics"] == first["metrics"]
        monkeypatch.setattr(artifacts, "source_sha256", real)
        _recipe("concept-steering", shared)  # back to the real key


def test_source_sha256_sees_every_edit_of_a_package(tmp_path, monkeypatch):
    from semhooks.io.artifacts import source_sha256

    pkg = tmp_path / "pkg_for_digest"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = source_sha256("pkg_for_digest")
    assert source_sha256("pkg_for_digest") == base
    (pkg / "sub" / "mod.py").write_text("Y = 2\n")  # a new file in a subpackage
    added = source_sha256("pkg_for_digest")
    (pkg / "sub" / "mod.py").write_text("Y = 3\n")  # an edit
    edited = source_sha256("pkg_for_digest")
    (pkg / "sub" / "mod.py").rename(pkg / "mod.py")  # a move, same bytes
    moved = source_sha256("pkg_for_digest")
    assert len({base, added, edited, moved}) == 4
    with pytest.raises(ValueError, match="not an importable package"):
        source_sha256("no_such_package_for_digest")


def test_emergence_cache_is_keyed_by_the_estimator(tmp_path, monkeypatch):
    """Before: estimator=mine after gaussian reported the Gaussian numbers captioned 'mine'."""
    from semhooks.estimators.mi import MINE
    from semhooks.studies import emergence

    real = emergence.information_emergence

    def short_mine(model, seqs, estimator, **kw):  # MINE trained briefly: seconds, not minutes
        if estimator == "mine":
            estimator = MINE(seed=kw["seed"], max_steps=30, eval_every=10, hidden=16)
        return real(model, seqs, estimator, **kw)

    monkeypatch.setattr(emergence, "information_emergence", short_mine)
    shared = tmp_path / "run"
    gaussian = _recipe("emergence-profile", shared)
    mine = _recipe("emergence-profile", shared, estimator="mine")
    fresh = _recipe("emergence-profile", tmp_path / "fresh", estimator="mine")
    assert mine["resumed_artifacts"] == []
    assert mine["metrics"] == fresh["metrics"]
    assert mine["metrics"]["summary"] != gaussian["metrics"]["summary"]


def test_a_tampered_or_unkeyed_recipe_artifact_is_recomputed(tmp_path):
    shared = tmp_path / "run"
    first = _recipe("concept-steering", shared)
    states = shared / "artifacts" / "contrast_states.safetensors"
    key = shared / "artifacts" / "contrast_states.key.json"
    other = sh.extract_states(
        tiny_model("gpt2"), ["a b c", "d e f"], layers=[1], progress=False
    )  # a valid LayerStates of the wrong run, put in place by hand
    other.save(states)
    again = _recipe("concept-steering", shared)
    assert again["resumed_artifacts"] == [] and again["metrics"] == first["metrics"]
    key.unlink()  # an artifact without its key (e.g. from an older semhooks)
    again = _recipe("concept-steering", shared)
    assert again["resumed_artifacts"] == [] and again["metrics"] == first["metrics"]
    key.write_text("{")
    assert _recipe("concept-steering", shared)["metrics"] == first["metrics"]


# ---------------------------------------------------------------------- properties
PROPS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BASE = {"layers": [0, 2], "tokens": "all", "pool": "mean", "shard_size": 4}
SMALL_TEXTS = [f"{w} number {i} is here." for i, w in enumerate(["Bat", "Fox", "Owl"] * 3)]
words = st.sampled_from(["Bat", "Fox", "Owl", "river", "Paris", "number", "here"])


def _changes():
    """One change to one input of extract_states; ``same`` marks changes that must not
    change the result (they may resume)."""
    n = len(SMALL_TEXTS)
    return st.one_of(
        st.tuples(st.just("text"), st.integers(0, n - 1), words),
        st.tuples(st.just("append"), words),
        st.tuples(st.just("layers"), st.sampled_from([[0], [2], [1, 2], [0, 1, 2]])),
        st.tuples(st.just("site"), st.sampled_from(["resid_pre", "mlp_out", "attn_out"])),
        st.tuples(st.just("pool"), st.sampled_from(["max", "last", "first"])),
        st.tuples(st.just("tokens"), st.sampled_from(["last", "first"])),
        st.tuples(st.just("positions"), st.lists(st.integers(0, 2), min_size=n, max_size=n)),
        st.tuples(st.just("substrings"), st.sampled_from(["number", "is", "here"])),
        st.tuples(st.just("weights"), st.integers(0, 3)),
        st.tuples(st.just("seed"), st.integers(1, 3)),
        st.tuples(st.just("same"), st.sampled_from(["batch_size", "padding_side", "none"])),
    )


def _apply(change, models):
    texts, kw, model = list(SMALL_TEXTS), dict(BASE), models[0]
    kind = change[0]
    if kind == "text":
        texts[change[1]] = f"{change[2]} {texts[change[1]]}"
    elif kind == "append":
        texts.append(f"{change[1]} at the end.")
    elif kind in ("layers", "site", "pool", "tokens"):
        kw[kind] = change[1]
    elif kind == "positions":
        kw["tokens"] = list(change[1])
    elif kind == "substrings":
        kw["tokens"] = [change[1]] * len(texts)
    elif kind == "weights":
        kw.update(pool="weighted", pool_weights=_weights(change[1]))
    elif kind == "seed":
        model = models[change[1]]
    elif change[1] == "batch_size":
        kw["batch_size"] = 3
    elif change[1] == "padding_side":
        kw["padding_side"] = "left"
    return model, texts, kw


@pytest.fixture(scope="module")
def seeded_llamas():
    return [tiny_model("llama", seed=s) for s in range(4)]


@PROPS
@given(change=_changes())
def test_any_changed_input_recomputes_or_refuses(seeded_llamas, change):
    """extract_states(out_dir=D) after a run with other inputs never returns that run's
    states: either it refuses (ArtifactError naming what differs) or its states equal a
    fresh extraction of the new inputs."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s"
        first = sh.extract_states(
            seeded_llamas[0], SMALL_TEXTS, out_dir=out, progress=False, **BASE
        ).load()
        model, texts, kw = _apply(change, seeded_llamas)
        shard_size = kw.pop("shard_size")
        fresh = sh.extract_states(model, texts, progress=False, **kw)
        try:
            again = sh.extract_states(
                model, texts, out_dir=out, shard_size=shard_size, progress=False, **kw
            ).load()
        except sh.ArtifactError as exc:
            assert "another extraction" in str(exc)
            assert change[0] != "same", f"{change} must not change the result, yet: {exc}"
            return
        torch.testing.assert_close(again.states, fresh.states, atol=1e-5, rtol=1e-5)
        assert again.layers == fresh.layers
        if change[0] != "same":
            assert again.states.shape != first.states.shape or not torch.allclose(
                again.states, first.states
            ), f"{change} resumed the first run's states"


RECIPE_CHANGES = st.one_of(
    st.tuples(st.just("layer"), st.sampled_from([0, 2])),
    st.tuples(st.just("model"), st.just("tiny-gpt2")),
    st.tuples(st.just("seed"), st.integers(1, 3)),
    st.tuples(st.just("alphas"), st.sampled_from([[-2.0, 0.0, 2.0], [0.0, 0.5]])),
    st.tuples(st.just("prompts"), st.sampled_from([["My day has been"], ["The food tasted"]])),
    st.tuples(st.just("positive"), st.just(["Great.", "Lovely.", "Wonderful."])),
    st.tuples(st.just("max_new_tokens"), st.integers(1, 2)),
    st.tuples(st.just("generate_alpha"), st.sampled_from([-1.0, 5.0])),
)


@pytest.mark.slow
@settings(PROPS, max_examples=8)
@given(change=RECIPE_CHANGES)
def test_a_rerun_with_any_changed_config_equals_a_fresh_run(change):
    """A recipe re-run into the same --out with one config value changed gives the metrics
    of a fresh run with that config (never the cached artifacts of the first run)."""
    key, value = change
    with tempfile.TemporaryDirectory() as d:
        _recipe("concept-steering", Path(d) / "run")
        again = _recipe("concept-steering", Path(d) / "run", **{key: value})
        fresh = _recipe("concept-steering", Path(d) / "fresh", **{key: value})
    assert again["resumed_artifacts"] == [] or key in ("alphas", "prompts", "max_new_tokens")
    assert again["metrics"] == fresh["metrics"], change
