"""Data-parallel extraction: shard plans, rank manifests, merging, resume, and a real
two-process gloo run under ``accelerate launch`` whose merged result equals the
single-process result exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import semhooks as sh
from semhooks.extraction import distributed as dist_mod
from semhooks.extraction.distributed import (
    DistributedError,
    extract_states_distributed,
    merge_shards,
    shard_plan,
)
from semhooks.relations import distributed as lre_dist

TEXTS = [
    f"{w} number {i} sits by the river{'.' * (i % 3)}"
    for i, w in enumerate(["Bat", "Fox", "Owl", "Ant", "Cat", "Dog", "Bee"] * 3)
]  # 21 texts: shards of 4 -> 6 shards, the last one partial


@dataclass
class FakeState:
    """Stands in for accelerate's PartialState to play one rank inside this process."""

    process_index: int
    num_processes: int
    device: torch.device = torch.device("cpu")
    backend: str | None = None


@pytest.fixture
def sequential_world(monkeypatch):
    """Ranks run one after another in this process; barriers see no failures."""
    monkeypatch.setattr(
        dist_mod, "all_gather_object", lambda obj, state=None: [obj] * state.num_processes
    )


def test_shard_plan_partitions_every_shard_once():
    for n_items in (0, 1, 7, 21, 100):
        for size in (1, 4, 5):
            for world in (1, 2, 3, 8):
                plans = [shard_plan(n_items, size, world, r) for r in range(world)]
                flat = sorted(k for plan in plans for k in plan)
                assert flat == list(range(-(-n_items // size)))
                assert max(map(len, plans)) - min(map(len, plans)) <= 1
    with pytest.raises(ValueError, match="outside a world"):
        shard_plan(10, 2, 2, 2)
    with pytest.raises(ValueError, match="shard_size"):
        shard_plan(10, 0, 1, 0)


def test_world_of_one_equals_extract_states(tiny_llama, tmp_path):
    single = sh.extract_states(
        tiny_llama, TEXTS, tokens="all", out_dir=tmp_path / "single", shard_size=4, progress=False
    )
    dp = extract_states_distributed(
        tiny_llama, TEXTS, tmp_path / "dp", tokens="all", shard_size=4, progress=False
    )
    assert dp.complete and len(dp.manifest["shards"]) == 6
    assert dp.manifest["config"] == single.manifest["config"]
    assert torch.equal(dp.load().states, single.load().states)
    assert not list((tmp_path / "dp").glob("manifest-rank*"))  # merged, then removed
    # the merged folder is an ordinary shard folder: plain extract_states resumes it
    again = sh.extract_states(
        tiny_llama, TEXTS, tokens="all", out_dir=tmp_path / "dp", shard_size=4, progress=False
    )
    assert torch.equal(again.load().states, single.load().states)


def test_two_ranks_in_sequence_merge_to_the_single_process_result(
    tiny_llama, tmp_path, sequential_world
):
    reference = sh.extract_states(
        tiny_llama, TEXTS, tokens="all", out_dir=tmp_path / "ref", shard_size=4, progress=False
    )
    out = tmp_path / "dp"
    # played alone, rank 1 finds no merged manifest yet (really it waits for rank 0's merge)
    with pytest.raises(sh.ArtifactError, match="no manifest"):
        extract_states_distributed(
            tiny_llama,
            TEXTS,
            out,
            tokens="all",
            shard_size=4,
            progress=False,
            state=FakeState(1, 2),
        )
    rank1 = json.loads((out / "manifest-rank00001.json").read_text())
    assert [s["start"] // 4 for s in rank1["shards"]] == [1, 3, 5]
    assert not (out / "manifest.json").exists()  # only rank 0 merges
    merged = extract_states_distributed(
        tiny_llama, TEXTS, out, tokens="all", shard_size=4, progress=False, state=FakeState(0, 2)
    )
    assert torch.equal(merged.load().states, reference.load().states)
    ranks = [
        sh.LayerStates.load(out / s["file"]).provenance["rank"] for s in merged.manifest["shards"]
    ]
    assert ranks == [0, 1, 0, 1, 0, 1]


def test_failed_rank_resumes_without_recomputing_finished_shards(tiny_llama, tmp_path, monkeypatch):
    reference = sh.extract_states(tiny_llama, TEXTS, tokens="all", progress=False)
    real = dist_mod.extract_shard
    calls: list[int] = []
    crashed: list[int] = []

    def flaky(plan, k, *args, **kwargs):
        calls.append(k)
        if k == 2 and not crashed:
            crashed.append(k)
            raise RuntimeError("simulated crash on the third shard")
        return real(plan, k, *args, **kwargs)

    monkeypatch.setattr(dist_mod, "extract_shard", flaky)
    out = tmp_path / "dp"
    with pytest.raises(DistributedError, match="simulated crash"):
        extract_states_distributed(
            tiny_llama, TEXTS, out, tokens="all", shard_size=4, progress=False
        )
    done = json.loads((out / "manifest-rank00000.json").read_text())["shards"]
    assert [s["start"] for s in done] == [0, 4]
    mtimes = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in done}
    calls.clear()
    resumed = extract_states_distributed(
        tiny_llama, TEXTS, out, tokens="all", shard_size=4, progress=False
    )
    assert calls == [2, 3, 4, 5]  # shards 0 and 1 were reused
    assert all((out / f).stat().st_mtime_ns == t for f, t in mtimes.items())
    torch.testing.assert_close(resumed.load().states, reference.states)


def test_merge_refuses_gaps_corruption_and_mixed_extractions(
    tiny_llama, tmp_path, sequential_world
):
    out = tmp_path / "dp"
    with pytest.raises(sh.ArtifactError, match="no manifest"):
        extract_states_distributed(
            tiny_llama,
            TEXTS,
            out,
            tokens="all",
            shard_size=4,
            progress=False,
            state=FakeState(1, 2),
        )
    with pytest.raises(sh.ArtifactError, match=r"lacks 3 shard\(s\) \(indices \[0, 2, 4\]\)"):
        merge_shards(out)
    with pytest.raises(sh.ArtifactError, match="no manifest"):
        merge_shards(tmp_path / "empty")
    # a corrupted shard is not trusted: it counts as missing
    extract_states_distributed(
        tiny_llama, TEXTS, out, tokens="all", shard_size=4, progress=False, state=FakeState(0, 2)
    )
    path = out / "shard-00003.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(sh.ArtifactError, match="checksum"):
        sh.ShardedStates.open(out).load()
    (out / "manifest.json").rename(out / "manifest-rank00000.json")
    with pytest.raises(sh.ArtifactError, match=r"indices \[3\]"):
        merge_shards(out)
    # another extraction's manifest in the same folder is refused
    with pytest.raises(DistributedError, match="ArtifactError.*another extraction"):
        extract_states_distributed(
            tiny_llama, TEXTS, out, tokens="last", shard_size=4, progress=False
        )


def test_bad_requests_fail_on_every_rank_before_any_work(tiny_llama, tmp_path):
    with pytest.raises(DistributedError, match="needs a pooling"):
        extract_states_distributed(tiny_llama, TEXTS, tmp_path / "a", pool=None, progress=False)
    with pytest.raises(DistributedError, match="out of range"):
        extract_states_distributed(tiny_llama, TEXTS, tmp_path / "b", layers=7, progress=False)
    with pytest.raises(DistributedError, match="factory"):
        extract_states_distributed(42, TEXTS, tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists()


def test_model_factory_is_built_on_each_rank(tmp_path):
    from semhooks.testing import tiny_model

    built = []

    def factory():
        built.append(1)
        return tiny_model("gpt2", seed=3, n_layers=2, d_model=32)

    out = extract_states_distributed(
        factory, TEXTS[:5], tmp_path / "f", shard_size=2, progress=False
    )
    assert built == [1] and out.complete and out.load().states.shape == (2, 5, 32)


def _prompts():
    from semhooks.relations.prompts import RelationPrompt

    subjects = ["France", "Italy", "Spain", "Germany", "Paris"]
    return [
        RelationPrompt(f"The capital of {s} is", s, o, "toy")
        for s, o in zip(subjects, ["Cat", "Dog", "Cat", "Dog", "Cat"], strict=True)
    ]


def _fitted(lre) -> dict:
    skip = {"fit_seconds_", "provenance_"}
    return {k: v for k, v in vars(lre).items() if k.endswith("_") and k not in skip}


def test_distributed_jacobians_and_lre_equal_single_process_in_a_world_of_one(tiny_llama):
    from semhooks.relations.jacobian import mean_jacobian
    from semhooks.relations.lre import LRE

    prompts = _prompts()
    ref = mean_jacobian(tiny_llama, prompts, 0, 2, progress=False)
    got = lre_dist.mean_jacobian_distributed(tiny_llama, prompts, 0, 2, progress=False)
    for field in ("weight", "subject_states", "object_states", "js"):
        assert torch.equal(getattr(got, field), getattr(ref, field)), field
    single = LRE(0, 2, progress=False).fit(tiny_llama, prompts)
    dp = lre_dist.fit_lre_distributed(LRE(0, 2, progress=False), tiny_llama, prompts)
    a, b = _fitted(single), _fitted(dp)
    assert a.keys() == b.keys()  # fit_lre_distributed sets what LRE.fit sets
    for key in a:
        same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
        assert same, key
    torch.testing.assert_close(dp.predict(ref.subject_states), single.predict(ref.subject_states))
    with pytest.raises(ValueError, match="method='exact'"):
        lre_dist.fit_lre_distributed(
            LRE(0, 2, method="randomized", rank=4, progress=False), tiny_llama, prompts
        )
    with pytest.raises(DistributedError, match="no prompts"):
        lre_dist.mean_jacobian_distributed(tiny_llama, [], 0, 2)


def test_the_lre_helpers_moved_up_to_relations_and_the_old_names_still_resolve():
    # extraction sits below relations: the helpers live in semhooks.relations.distributed;
    # the old path gives the same functions, with a DeprecationWarning
    for name in ("mean_jacobian_distributed", "fit_lre_distributed"):
        assert name not in dist_mod.__all__ and name in lre_dist.__all__
        with pytest.warns(DeprecationWarning, match=f"relations.distributed.{name}"):
            assert getattr(dist_mod, name) is getattr(lre_dist, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        dist_mod.no_such_name  # noqa: B018


# ---------------------------------------------------------------------- real processes
_WORKER = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    import semhooks as sh
    from semhooks.extraction.distributed import extract_states_distributed, launch_info
    from semhooks.testing import tiny_model

    out, ref_dir, result_path = sys.argv[1], sys.argv[2], sys.argv[3]
    texts = {texts!r}
    factory = lambda: tiny_model("llama", seed=0)
    merged = extract_states_distributed(
        factory, texts, out, tokens="all", pool="mean", shard_size=4, progress=False
    )
    info = launch_info()
    from semhooks.relations.distributed import fit_lre_distributed
    from semhooks.relations.lre import LRE
    from semhooks.relations.prompts import RelationPrompt

    prompts = [
        RelationPrompt(f"The capital of {{s}} is", s, o, "toy")
        for s, o in zip(["France", "Italy", "Spain", "Germany", "Paris"], ["Cat", "Dog"] * 3)
    ]
    lre = fit_lre_distributed(LRE(0, 2, progress=False), factory, prompts)
    if info["rank"] == 0:
        model = factory()
        ref = sh.extract_states(
            model, texts, tokens="all", pool="mean", out_dir=ref_dir, shard_size=4, progress=False
        )
        in_memory = sh.extract_states(model, texts, tokens="all", pool="mean", progress=False)
        single = LRE(0, 2, progress=False).fit(model, prompts)
        got = merged.load().states
        shards = merged.manifest["shards"]
        result = dict(
            info=info,
            equal_sharded=bool(torch.equal(got, ref.load().states)),
            close_in_memory=bool(torch.allclose(got, in_memory.states, atol=1e-6, rtol=1e-5)),
            ranks=[sh.LayerStates.load(merged.folder / s["file"]).provenance["rank"] for s in shards],
            shape=list(got.shape),
            lre_equal=bool(
                torch.equal(lre.weight_, single.weight_) and torch.equal(lre.bias_, single.bias_)
            ),
            lre_world=lre.provenance_["world_size"],
        )
        json.dump(result, open(result_path, "w"))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_processes_under_accelerate_launch_match_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(texts=TEXTS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(script),
        str(tmp_path / "dp"),
        str(tmp_path / "ref"),
        str(tmp_path / "result.json"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["info"]["world_size"] == 2 and result["info"]["backend"] == "gloo"
    assert result["ranks"] == [0, 1, 0, 1, 0, 1]  # both processes wrote shards
    assert result["equal_sharded"], "merged != single-process shards (torch.equal)"
    assert result["close_in_memory"]
    assert result["shape"] == [3, len(TEXTS), 64]
    assert result["lre_equal"] and result["lre_world"] == 2  # LRE: Jacobians over 2 ranks
    assert not list((tmp_path / "dp").glob("manifest-rank*"))
    assert not list(Path(tmp_path / "dp").glob("*.tmp"))
