"""Benchmark: extract_states vs a bare forward pass vs run_with_cache + pooling (SmolLM2).

    python benchmarks/extract.py [--n-texts 512] [--batch-size 16]

Each variant runs in its own process (so peak memory is its own), on the same texts, the
same length-sorted batches and the same attention masks:
  (a) bare forward pass, no hooks
  (b) run_with_cache on all 30 resid_post hooks, then mask-aware mean pooling (what users do)
  (c) semhooks.extract_states(layers="all", tokens="all", pool="mean")
  (d) semhooks.extract_states(layers=0..9)  (stops the forward after block 9)
Memory = peak resident set size during the run minus the resident size after the model was
loaded (sampled every 2 ms). Targets: (c) time <= 1.10 x (a); (c) memory <= 0.25 x (b);
(d) faster than (a).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time

from _memory import PeakSampler, rss_bytes

WORDS = (
    "the a river bank money walked quickly over under bright dark model language meaning "
    "capital city France Paris music violin guitar movie wonderful boring long short happy "
    "sad question answer layer token state vector space time people water fire stone tree"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    # About 48 tokens: ~40 words of mixed lengths plus punctuation.
    out = []
    for _ in range(n):
        k = rng.randint(34, 42)
        words = [rng.choice(WORDS) for _ in range(k)]
        out.append(" ".join(words).capitalize() + ".")
    return out


def run_variant(variant: str, n_texts: int, batch_size: int, threads: int) -> dict[str, float]:
    import gc

    import torch

    import semhooks as sh
    from semhooks.extraction.plan import length_batches
    from semhooks.extraction.pooling import pool_mean
    from semhooks.extraction.selection import select_tokens

    torch.set_num_threads(threads)
    model = sh.load_model("smollm2-135m")
    a = sh.adapt(model)
    texts = make_texts(n_texts)
    batches = [
        a.tokenize([texts[i] for i in idx]) for idx in length_batches(a, texts, batch_size, True)
    ]
    n_tokens = int(sum(int(b.attention_mask.sum()) for b in batches))
    # warm-up on one batch (allocator, kernels)
    a.forward(batches[-1])
    gc.collect()
    base = rss_bytes()
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(a.n_layers)]
    with PeakSampler() as peak:
        t0 = time.perf_counter()
        if variant == "a":
            for b in batches:
                a.forward(b)
        elif variant == "b":
            pooled = []
            for b in batches:
                sel = select_tokens(b, "all")
                with torch.inference_mode():
                    _, cache = model.run_with_cache(
                        b.input_ids, attention_mask=b.attention_mask, names_filter=names
                    )
                pooled.append(torch.stack([pool_mean(cache[n], sel) for n in names]))
                del cache
            result = torch.cat(pooled, 1)
            assert result.shape == (a.n_layers, n_texts, a.d_model)
        elif variant in ("c", "d"):
            layers = "all" if variant == "c" else list(range(10))
            st = sh.extract_states(
                model,
                texts,
                layers=layers,
                tokens="all",
                pool="mean",
                batch_size=batch_size,
                progress=False,
            )
            assert st.states.shape[1] == n_texts
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mb": (peak.peak - base) / 2**20, "tokens": n_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.n_texts, args.batch_size, args.threads)))
        return
    results = {}
    labels = {
        "a": "(a) bare forward, no hooks",
        "b": "(b) run_with_cache(30 resid_post) + pool",
        "c": "(c) extract_states, all 30 layers",
        "d": "(d) extract_states, layers 0..9",
    }
    for v in "abcd":
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                v,
                "--n-texts",
                str(args.n_texts),
                "--batch-size",
                str(args.batch_size),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    tok = results["a"]["tokens"]
    print(
        f"SmolLM2-135M, {args.n_texts} texts ({tok / args.n_texts:.1f} tokens each with BOS), "
        f"batch {args.batch_size}, mean pooling, {args.threads} threads"
    )
    print(f"{'variant':44s} {'time s':>8} {'x (a)':>7} {'peak MB':>9} {'x (b)':>7}")
    for v in "abcd":
        r = results[v]
        print(
            f"{labels[v]:44s} {r['seconds']:8.1f} {r['seconds'] / results['a']['seconds']:7.2f} "
            f"{r['peak_mb']:9.1f} {r['peak_mb'] / max(results['b']['peak_mb'], 1e-9):7.3f}"
        )
    c, a_, b, d = results["c"], results["a"], results["b"], results["d"]
    print()
    print(
        f"time   (c)/(a) = {c['seconds'] / a_['seconds']:.3f}   target <= 1.10  "
        f"{'PASS' if c['seconds'] <= 1.10 * a_['seconds'] else 'MISS'}"
    )
    print(
        f"memory (c)/(b) = {c['peak_mb'] / b['peak_mb']:.3f}   target <= 0.25  "
        f"{'PASS' if c['peak_mb'] <= 0.25 * b['peak_mb'] else 'MISS'}"
    )
    print(
        f"time   (d)/(a) = {d['seconds'] / a_['seconds']:.3f}   target <  1.00  "
        f"{'PASS' if d['seconds'] < a_['seconds'] else 'MISS'}"
    )


if __name__ == "__main__":
    main()
