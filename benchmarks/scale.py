"""Benchmark: data-parallel throughput and streaming memory (SmolLM2-135M, CPU).

    python benchmarks/scale.py [--part throughput|memory|both] [--n-texts 96]
                               [--sizes 1000 4000 16000]

Throughput: ``extract_states_distributed`` (all 30 layers, mean over all tokens, shards of
16) on the same texts with 1 process x 2 threads, 1 process x 1 thread and 2 processes x
1 thread (``accelerate launch``, gloo). Time runs from a barrier after the model is loaded
to the end of the merge, so it includes writing, checksumming and merging shards.

Memory: peak resident memory above the loaded model while extracting 1k, 4k and 16k short
texts, streamed to shards of 256 items (``out_dir=``) and, for contrast, kept in memory.
Layers 0 and 1 only (the forward stops after block 1), so the run stays short: the point is
what extract_states keeps, not how deep the model is. Each measurement runs in its own process
(sampled every 2 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

from _memory import PeakSampler, rss_bytes

WORDS = (
    "the a river bank money walked quickly over under bright dark model language meaning "
    "capital city France Paris music violin guitar movie wonderful boring long short happy"
).split()


def make_texts(n: int, words: tuple[int, int], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(*words)
        out.append(" ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + f" {i}.")
    return out


# ---------------------------------------------------------------------- workers
def worker_throughput(n_texts: int, threads: int, out_dir: str) -> None:
    import torch

    import semhooks as sh
    from semhooks.extraction.distributed import (
        all_gather_object,
        extract_states_distributed,
        launch_info,
    )

    torch.set_num_threads(threads)
    model = sh.load_model("smollm2-135m")
    texts = make_texts(n_texts, (8, 12))
    sh.extract_states(model, texts[:4], layers=[0], progress=False)  # warm-up
    all_gather_object(None)
    t0 = time.perf_counter()
    out = extract_states_distributed(
        model, texts, out_dir, tokens="all", pool="mean", shard_size=16, batch_size=16,
        progress=False,
    )  # fmt: skip
    all_gather_object(None)
    seconds = time.perf_counter() - t0
    info = launch_info()
    if info["rank"] == 0:
        assert out.complete and out.n_items == n_texts
        print(json.dumps({"seconds": seconds, "world": info["world_size"], "threads": threads}))


def worker_memory(size: int, mode: str, out_dir: str, threads: int) -> None:
    import gc

    import torch

    import semhooks as sh

    torch.set_num_threads(threads)
    model = sh.load_model("smollm2-135m")
    texts = make_texts(size, (3, 3))
    sh.extract_states(model, texts[:128], layers=[0, 1], batch_size=128, progress=False)
    with torch.no_grad():  # page in every weight (the loader memory-maps them): the base is
        for p in model.parameters():  # the whole loaded model, not only blocks 0-1
            p.sum()
    gc.collect()
    base = rss_bytes()
    with PeakSampler() as peak:
        t0 = time.perf_counter()
        result = sh.extract_states(
            model,
            texts,
            layers=[0, 1],
            tokens="all",
            pool="mean",
            batch_size=128,
            progress=False,
            out_dir=out_dir if mode == "stream" else None,
            shard_size=256,
        )
        seconds = time.perf_counter() - t0
    n = result.n_items
    assert n == size
    print(json.dumps({"peak_mb": (peak.peak - base) / 2**20, "seconds": seconds}))


# ---------------------------------------------------------------------- driver
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], threads: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def throughput(n_texts: int) -> None:
    configs = [(1, 2), (1, 1), (2, 1)]
    print(
        f"SmolLM2-135M, {n_texts} texts (~13 tokens), all 30 layers, mean over all tokens, "
        "shards of 16, extract_states_distributed"
    )
    print(f"{'processes x threads':22s} {'seconds':>8} {'items/s':>8}")
    for world, threads in configs:
        with tempfile.TemporaryDirectory() as tmp:
            worker = [__file__, "--worker", "throughput", "--n-texts", str(n_texts)]
            worker += ["--threads", str(threads), "--out", tmp]
            if world == 1:
                cmd = [sys.executable, *worker]
            else:
                cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
                cmd += ["--num_processes", str(world), "--num_machines", "1"]
                cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
                cmd += ["--main_process_port", str(_free_port()), *worker]
            r = _run(cmd, threads)
        print(f"{f'{world} x {threads}':22s} {r['seconds']:8.1f} {n_texts / r['seconds']:8.1f}")


def memory(sizes: list[int], threads: int) -> None:
    print(
        f"SmolLM2-135M, short texts (~6 tokens), layers 0-1, mean over all tokens, batch 128, "
        f"{threads} thread(s); peak RSS above the loaded model"
    )
    print(
        f"{'texts':>7} {'streamed MB':>12} {'in memory MB':>13} {'states MB':>10} {'s (stream)':>11}"
    )
    for size in sizes:
        row = {}
        for mode in ("stream", "memory"):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, __file__, "--worker", "memory", "--size", str(size)]
                cmd += ["--mode", mode, "--out", os.path.join(tmp, "shards")]
                cmd += ["--threads", str(threads)]
                row[mode] = _run(cmd, threads)
        states_mb = size * 2 * 576 * 4 / 2**20
        print(
            f"{size:7d} {row['stream']['peak_mb']:12.1f} {row['memory']['peak_mb']:13.1f} "
            f"{states_mb:10.1f} {row['stream']['seconds']:11.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["throughput", "memory", "both"], default="both")
    parser.add_argument("--n-texts", type=int, default=96)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--memory-threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "throughput":
        worker_throughput(args.n_texts, args.threads, args.out)
        return
    if args.worker == "memory":
        worker_memory(args.size, args.mode, args.out, args.threads)
        return
    with open("/proc/loadavg") as fh:
        print(f"load average at start: {fh.read().split()[0]} on {os.cpu_count()} CPUs")
    if args.part in ("throughput", "both"):
        throughput(args.n_texts)
        print()
    if args.part in ("memory", "both"):
        memory(args.sizes, args.memory_threads)
    with open("/proc/loadavg") as fh:
        print(f"load average at end: {fh.read().split()[0]}")


if __name__ == "__main__":
    main()
