"""WiC benchmark and study runner (semhooks.studies.lexical).

Benchmark (default): WiC dev (638 pairs) on SmolLM2-135M, all layers, all four input variants.

1. semhooks: ``wic_vectors`` (one forward pass per unique text, positions read in hooks),
   timed over the whole dev split.
2. Naive baseline: one ``model.run_with_cache`` per sentence per variant (full activation
   cache), then the span mean per layer; timed on the first ``--naive-pairs`` pairs (all 638
   with ``--naive-pairs 638``) and, if that is a subset, extrapolated linearly to 638 pairs
   (the output says so). Its vectors are checked against semhooks' on those pairs.
3. Accuracy per layer of the ``repeat`` variant on dev, with thresholds chosen on a seeded
   train subsample (``--n-fit``), printed alongside.

Study (``--study``): ``wic_study`` on SmolLM2 and MiniLM with the default protocol (thresholds
on 1,000 train pairs, accuracy on dev, z-scoring on, grid thresholds, probe on); writes
``docs/results/wic_{model}.json``, ``wic_{model}.md``, ``wic_layers.png`` and
``wic_layers_probe.png``.

    python benchmarks/lexical.py                 # benchmark
    python benchmarks/lexical.py --study         # README figures
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import semhooks
from semhooks.data.loaders import WiCItem, load_wic
from semhooks.extraction.spans import char_span_to_positions
from semhooks.io.artifacts import atomic_write_text
from semhooks.studies.lexical import (
    VARIANTS,
    WiCResult,
    choose_threshold,
    cosine_scores,
    variant_input,
    wic_study,
    wic_vectors,
)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def naive_vectors(model: Any, items: list[WiCItem], variants: tuple[str, ...]) -> dict[str, Any]:
    """The obvious loop: ``run_with_cache`` per sentence per variant, then span means."""
    adapter = semhooks.adapt(model)
    n_layers = adapter.n_layers
    out = {v: torch.empty(n_layers, len(items), 2, adapter.d_model) for v in variants}
    for v in variants:
        for i, item in enumerate(items):
            pairs = ((item.sentence1, item.char_span1), (item.sentence2, item.char_span2))
            for j, (sentence, span) in enumerate(pairs):
                text, (start, end), part = variant_input(sentence, span, v)
                batch = adapter.tokenize([text])
                if part == "final":
                    positions = [int(batch.attention_mask[0].sum()) - 1]
                else:
                    positions = char_span_to_positions(batch, 0, start, end)
                with torch.inference_mode():
                    _, cache = model.run_with_cache(batch.input_ids)
                for layer in range(n_layers):
                    acts = cache[f"blocks.{layer}.hook_resid_post"][0, positions]
                    out[v][layer, i, j] = acts.float().mean(0)
    return out


def benchmark(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = semhooks.load_model("smollm2-135m")
    dev = load_wic("dev")
    print(f"# WiC benchmark: SmolLM2-135M, CPU, torch threads={args.threads}")
    print(f"# {platform.processor() or platform.machine()}, python {sys.version.split()[0]}")
    print(f"# dev pairs: {len(dev)}, variants: {', '.join(VARIANTS)}, layers: all 30\n")

    t0 = time.perf_counter()
    ours = wic_vectors(model, dev, VARIANTS, "all", batch_size=args.batch_size, progress=False)
    t_ours = time.perf_counter() - t0
    print(
        f"semhooks wic_vectors: {t_ours:.1f} s for {ours.n_requests} target vectors "
        f"({ours.n_texts} unique texts encoded once each, batch_size={args.batch_size})"
    )

    k = min(args.naive_pairs, len(dev))
    sub = dev[:k]
    t0 = time.perf_counter()
    ours_sub = wic_vectors(model, sub, VARIANTS, "all", batch_size=args.batch_size, progress=False)
    t_ours_sub = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = naive_vectors(model, sub, VARIANTS)
    t_naive_sub = time.perf_counter() - t0
    err = max(float((naive[v] - ours_sub.vectors[v]).abs().max()) for v in VARIANTS)
    calls = k * 2 * len(VARIANTS)
    print(
        f"naive run_with_cache loop: {t_naive_sub:.1f} s MEASURED on the first {k} pairs "
        f"({calls} calls); semhooks on the same {k} pairs: {t_ours_sub:.1f} s "
        f"-> measured speed-up {t_naive_sub / t_ours_sub:.1f}x; max |difference| of the "
        f"vectors {err:.2e}"
    )
    if k < len(dev):
        t_naive = t_naive_sub * len(dev) / k
        print(
            f"naive loop on all {len(dev)} pairs: {t_naive:.0f} s EXTRAPOLATED linearly from "
            f"the {k}-pair measurement (not measured)"
        )
    else:
        t_naive = t_naive_sub
    print(f"speed-up on the full dev split: {t_naive / t_ours:.1f}x (target >= 3x)\n")

    t0 = time.perf_counter()
    train = load_wic("train")
    idx = np.sort(np.random.default_rng(0).choice(len(train), size=args.n_fit, replace=False))
    fit = wic_vectors(
        model, [train[i] for i in idx], ["repeat"], batch_size=args.batch_size, progress=False
    )
    t_fit = time.perf_counter() - t0
    s_fit = cosine_scores(fit.vectors["repeat"]).numpy()
    s_dev = cosine_scores(ours.vectors["repeat"]).numpy()
    assert fit.labels is not None and ours.labels is not None
    print(
        f"repeat variant, z-scored cosine, threshold (grid 0..0.95) chosen on {args.n_fit} "
        f"seeded train pairs ({t_fit:.0f} s), accuracy on dev:"
    )
    print("| layer | threshold | dev accuracy % |\n|---:|---:|---:|")
    accs = []
    for li, layer in enumerate(ours.layers):
        cut = choose_threshold(s_fit[li], fit.labels)
        acc = float((cut.predict(s_dev[li]) == ours.labels).mean())
        accs.append(acc)
        print(f"| {layer} | {cut.threshold:.2f} | {100 * acc:.1f} |")
    best = int(np.argmax(accs))
    print(f"best layer (repeat): {ours.layers[best]} with {100 * accs[best]:.1f}%")


def study_summary(name: str, res: WiCResult) -> str:
    """The ``wic_{model}.md`` text of one model's study."""
    summary = [
        f"## {name}: WiC dev accuracy (%) by layer",
        "",
        f"protocol: {json.dumps({k: v for k, v in res.protocol.items() if k != 'provenance'})}",
        "",
        res.table(),
        "",
        "best layer (cosine): "
        + ", ".join(
            f"{v} {res.best_layer[v]} ({100 * res.best_accuracy[v]:.1f}%)" for v in res.variants
        ),
        "layer chosen on the fit split (cosine), its dev accuracy: "
        + ", ".join(
            f"{v} {res.selected_layer[v]} ({100 * res.selected_accuracy[v]:.1f}%)"
            for v in res.variants
        ),
    ]
    if res.probe_accuracy is not None and res.best_probe_layer is not None:
        summary.append(
            "best layer (probe): "
            + ", ".join(
                f"{v} {res.best_probe_layer[v]} ({100 * max(res.probe_accuracy[v]):.1f}%)"
                for v in res.variants
            )
        )
    return "\n".join(summary) + "\n"


def write_study(key: str, name: str, res: WiCResult) -> None:
    """Write ``wic_{key}.json`` / ``.md`` atomically and redraw both plots when the other
    model's JSON is there too."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"wic_{key}.json", json.dumps(res.to_dict(), indent=1))
    atomic_write_text(RESULTS / f"wic_{key}.md", study_summary(name, res))
    paths = {k: RESULTS / f"wic_{k}.json" for k in ("smollm2", "minilm")}
    if all(p.exists() for p in paths.values()):
        loaded = {k: WiCResult.from_dict(json.loads(p.read_text())) for k, p in paths.items()}
        loaded["smollm2"].plot(loaded["minilm"], path=RESULTS / "wic_layers.png")
        loaded["smollm2"].plot(
            loaded["minilm"], readout="probe", path=RESULTS / "wic_layers_probe.png"
        )


def study(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    for key, name in (("smollm2", "smollm2-135m"), ("minilm", "minilm-l6")):
        model = semhooks.load_model(name)
        res = wic_study(model, n_fit=args.n_fit, batch_size=args.batch_size, progress=True)
        write_study(key, name, res)
        print(study_summary(name, res), flush=True)
        del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", action="store_true", help="run the README study instead")
    parser.add_argument("--naive-pairs", type=int, default=40)
    parser.add_argument("--n-fit", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.study:
        study(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
