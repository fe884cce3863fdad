"""Benchmark: overhead of interventions vs the bare forward pass (SmolLM2-135M).

    python benchmarks/interventions.py [--batch-size 32] [--tokens 48] [--repeats 15]
                                       [--device cpu|cuda] [--threads N]

Same padded batch (``--batch-size`` texts of exactly ``--tokens`` tokens, plus a
right-padded variant where rows are shorter), same attention mask, every variant through
``adapter.forward`` under ``torch.inference_mode``:
  (a) bare forward, no hooks
  (b) one Steer at one layer (layer 15, resid_post, positions="all")
  (c) one Steer at one layer, positions="last" (right padding: needs the captured mask)
  (d) Swap at all 30 layers (positions="last", the LRC concept swap)
  (e) Swap at all 30 layers, positions="all"
Repeats are interleaved (a, b, c, d, e, a, b, ...) after warm-up so drift in machine load
hits every variant alike; medians and ratios to (a) are printed. Target: (b) <= 1.05 x (a).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

WORDS = (
    "the a river bank money walked quickly over under bright dark model language meaning "
    "capital city France Paris music violin guitar movie wonderful boring long short happy "
    "sad question answer layer token state vector space time people water fire stone tree"
).split()


def make_batch(adapter, n: int, tokens: int, seed: int = 0, ragged: bool = False):
    """``n`` texts cut to exactly ``tokens`` tokens (BOS included); ragged: lengths vary."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(tokens * 2)]
        ids = adapter.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
        want = tokens - 1 if not ragged else max(4, tokens - 1 - (i % 12))
        texts.append(adapter.tokenizer.decode(ids[:want]))
    batch = adapter.tokenize(texts, padding_side="right", max_length=tokens, truncate=True)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from semhooks import adapt, load_model
    from semhooks.interventions import Steer, Swap, batch_context, intervene

    model = load_model("smollm2-135m", device=args.device)
    adapter = adapt(model)
    d = adapter.d_model
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(d, generator=g), torch.randn(d, generator=g)
    full = make_batch(adapter, args.batch_size, args.tokens)
    ragged = make_batch(adapter, args.batch_size, args.tokens, ragged=True)
    print(
        f"device={args.device} threads={torch.get_num_threads()} batch={tuple(full.input_ids.shape)} "
        f"ragged mask fill={float(ragged.attention_mask.float().mean()):.2f}"
    )

    variants = {
        "bare": (full, []),
        "steer_1_layer_all": (full, [Steer(v, 2.0, layers=15)]),
        "steer_1_layer_last_ragged": (ragged, [Steer(v, 2.0, layers=15, positions="last")]),
        "bare_ragged": (ragged, []),
        "swap_all_layers_last": (full, [Swap(v, w, 0.05, layers="all", positions="last")]),
        "swap_all_layers_all": (full, [Swap(v, w, 0.05, layers="all")]),
    }
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(name: str) -> float:
        batch, ivs = variants[name]
        sync()
        start = time.perf_counter()
        with intervene(model, *ivs):
            adapter.forward(batch)
        sync()
        return time.perf_counter() - start

    for name in variants:  # warm-up
        run(name)
        run(name)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            times[name].append(run(name))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = {name: med[name] / med["bare_ragged" if "ragged" in name else "bare"] for name in med}
    print(f"{'variant':32s} {'median ms':>10s} {'ratio':>7s}")
    for name in variants:
        print(f"{name:32s} {1000 * med[name]:10.2f} {ratio[name]:7.3f}")
    # Noise-free view of the same overhead: the hooks alone on an activation of this shape
    # (the forward's own time swings with machine load; these calls take microseconds).
    act = torch.randn(*full.input_ids.shape, d, device=args.device)
    micro = {
        "steer_1_layer_all": (Steer(v, 2.0), 1),
        "swap_all_layers_last": (Swap(v, w, 0.05, positions="last"), adapter.n_layers),
        "swap_all_layers_all": (Swap(v, w, 0.05), adapter.n_layers),
    }
    print(f"{'hooks alone':32s} {'ms/call':>10s} {'x calls / bare':>15s}")
    micro_ratio = {}
    for name, (iv, calls) in micro.items():
        # a bare call has no forward to read the mask from: positions="last" needs it told
        with torch.inference_mode(), batch_context(attention_mask=full.attention_mask):
            for _ in range(3):
                iv(act, None)
            sync()
            ts = []
            for _ in range(30):
                t0 = time.perf_counter()
                iv(act, None)
                sync()
                ts.append(time.perf_counter() - t0)
        per = statistics.median(ts)
        micro_ratio[name] = 1 + calls * per / med["bare"]
        print(f"{name:32s} {1000 * per:10.3f} {micro_ratio[name]:15.4f}")
    target = ratio["steer_1_layer_all"]
    print(
        f"one Steer at one layer: {target:.3f} x bare (target <= 1.05): "
        f"{'OK' if target <= 1.05 else 'ABOVE TARGET'}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "median_s": med,
                    "ratio": ratio,
                    "hook_only_ratio": micro_ratio,
                    "args": vars(args),
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
