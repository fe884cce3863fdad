"""Benchmark: patching grids on SmolLM2-135M, side by side in one run.

    python benchmarks/patching.py [--quick] [--pairs 4] [--loop-cells N] [--threads N]
                                  [--device cpu|cuda] [--json out.json]

The grid: ``resid_pre`` x 30 layers x 12 positions (the 11 tokens of "The capital city of
{country} is the city of" plus the whole subject span), on factual-recall pairs from the
bundled ``country_capital_city`` relation (clean and corrupted subjects differ in token
count). Metric: logit(clean capital) - logit(corrupted capital) at the last token.

  (a) TransformerLens-style loop: one ``run_with_hooks`` forward per cell over all pairs,
      full logits (what ``transformer_lens.patching`` does). ``--loop-cells N`` times a
      seeded random sample of N cells and extrapolates to the grid (said in the output).
  (b) semhooks exact grid, every cell run (``skip_identity=False``): batching only.
  (c) semhooks exact grid, default (cells before the span, whose patch changes nothing, are
      not run).
  (d) semhooks attribution patching (one forward + one backward over the pairs).
  (e) query/key grid (sites ``q`` and ``k``, every head; every 3rd layer x ``span:last`` and
      ``last``): exact, attribution with AtP*'s query/key correction (the attention pattern
      recomputed under each patch) and without it (plain first order), Spearman of each
      against exact.

Printed: seconds, ratios (a)/(b), (a)/(c), (c)/(d); agreement of (a) with (b) on the cells
(a) ran; Spearman, Spearman over live cells and top-10 overlap of (d) against (c); versions,
device, threads and the load average before and after. Targets: (a)/(b) >= 3,
(c)/(d) >= 20, Spearman >= 0.8; (e) corrected Spearman >= plain.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch

TEMPLATE = "The capital city of {} is the city of"


def tl_loop(model, setup, cells, names):
    """One forward per cell, full logits, the patch written by a plain TransformerLens hook."""
    kb = setup.corrupted
    ids, mask = kb.input_ids, kb.attention_mask
    last = mask.sum(-1) - 1
    rows = torch.arange(len(kb))
    out = {}
    for cell in cells:
        src = setup.sources[(cell.site, cell.layer)]
        where = [setup.tokens(cell.position, p) for p in range(len(kb))]

        def hook(act, hook=None, where=where, src=src):
            act = act.clone()
            for p, (tr, ts) in enumerate(where):
                act[p, tr] = src[p, ts].to(act.dtype)
            return act

        with torch.inference_mode():
            logits = model.run_with_hooks(
                ids, attention_mask=mask, fwd_hooks=[(names[cell.layer], hook)]
            )
        m = setup.metric(logits[rows, last].float(), rows)
        gap = setup.clean_metric.mean() - setup.corrupted_metric.mean()
        out[cell] = float((m.mean() - setup.corrupted_metric.mean()) / gap)
    return out


def qk_row(model, clean, corrupt, metric, layers):
    """Row (e): the q/k grid exact, and attribution with and without the QK correction."""
    from semhooks import activation_patching, attribution_patching
    from semhooks.studies.patching import spearman

    kw = dict(sites=["q", "k"], layers=layers, positions=["span:last", "last"], progress=False)
    out = {"layers": len(layers)}
    runs = {}
    for key, fn, extra in (
        ("exact", activation_patching, {}),
        ("fixed", attribution_patching, {}),
        ("plain", attribution_patching, {"qk_correction": False}),
    ):
        t = time.perf_counter()
        runs[key] = fn(model, clean, corrupt, metric, **kw, **extra)
        out[f"{key}_s"] = time.perf_counter() - t

    def flat(r):
        return torch.cat([r.scores[s].flatten() for s in ("q", "k")]).numpy()

    out["cells"] = len(flat(runs["exact"]))
    for key in ("fixed", "plain"):
        out[f"{key}_spearman"] = spearman(flat(runs[key]), flat(runs["exact"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="4 layers (q/k: 3), 2 pairs, 6 loop cells"
    )
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--loop-cells", type=int, default=None, help="cells the loop times")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from importlib.metadata import version

    import semhooks as sh
    from semhooks.studies.patching import logit_diff
    from semhooks.studies.patching.engine import prepare
    from semhooks.studies.patching.grid import plan_cells
    from semhooks.studies.patching.study import factual_recall_pairs

    load_before = os.getloadavg()
    model = sh.load_model("smollm2-135m", device=args.device)
    adapter = sh.adapt(model)
    n_pairs = args.pairs or (2 if args.quick else 4)
    layers = [0, 10, 20, 29] if args.quick else list(range(adapter.n_layers))
    clean, corrupt, answers, wrong = factual_recall_pairs(model, n_pairs, template=TEMPLATE)
    metric = logit_diff(model, answers, wrong)
    kw = dict(sites=["resid_pre"], layers=layers, progress=False)
    setup = prepare(model, clean, corrupt, metric, hooks=[("resid_pre", x) for x in layers])
    positions = setup.labels(None) + ["span"]
    kw["positions"] = positions
    cells = plan_cells(["resid_pre"], layers, positions, {})
    n_loop = args.loop_cells or (6 if args.quick else len(cells))
    sample = random.Random(0).sample(cells, min(n_loop, len(cells)))
    names = {x: adapter.hook_name("resid_pre", x) for x in layers}

    t = time.perf_counter()
    loop_setup = prepare(model, clean, corrupt, metric, hooks=[("resid_pre", x) for x in layers])
    t_base = time.perf_counter() - t  # the clean cache and both baselines, paid once
    t = time.perf_counter()
    loop = tl_loop(model, loop_setup, sample, names)
    t_loop = t_base + (time.perf_counter() - t) * len(cells) / len(sample)

    t = time.perf_counter()
    every = sh.activation_patching(model, clean, corrupt, metric, skip_identity=False, **kw)
    t_every = time.perf_counter() - t
    t = time.perf_counter()
    exact = sh.activation_patching(model, clean, corrupt, metric, **kw)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    approx = sh.attribution_patching(model, clean, corrupt, metric, **kw)
    t_attr = time.perf_counter() - t

    qk = qk_row(model, clean, corrupt, metric, [0, 15, 29] if args.quick else layers[::3])

    grid = every.scores["resid_pre"]
    li = {x: i for i, x in enumerate(layers)}
    pi = {p: j for j, p in enumerate(positions)}
    agree = max(abs(v - float(grid[li[c.layer], pi[c.position]])) for c, v in loop.items())
    cmp = approx.compare(exact)["resid_pre"]
    load_after = os.getloadavg()
    extrapolated = "" if len(sample) == len(cells) else f" (timed {len(sample)} cells, scaled)"
    lines = [
        f"patching benchmark: SmolLM2-135M, resid_pre, {len(layers)} layers x "
        f"{len(positions)} positions = {len(cells)} cells, {n_pairs} pairs, {args.device}, "
        f"{torch.get_num_threads()} threads",
        f"versions: semhooks {sh.__version__}, torch {torch.__version__}, "
        f"transformer-lens {version('transformer-lens')}, transformers {version('transformers')}",
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}",
        f"(a) TL-style loop, 1 forward per cell : {t_loop:8.2f} s{extrapolated}",
        f"(b) exact grid, every cell run        : {t_every:8.2f} s ({every.n_forwards} forwards)",
        f"(c) exact grid, identity cells skipped: {t_exact:8.2f} s ({exact.n_forwards} forwards)",
        f"(d) attribution (1 fwd + 1 bwd)       : {t_attr:8.2f} s",
        f"(a)/(b) = {t_loop / t_every:.2f} x   (a)/(c) = {t_loop / t_exact:.2f} x   "
        f"(c)/(d) = {t_exact / t_attr:.2f} x   (b)/(d) = {t_every / t_attr:.2f} x",
        f"loop vs grid, max |score difference| on the loop's cells: {agree:.2e}",
        f"attribution vs exact: Spearman {cmp['spearman']:.3f}, over live cells "
        f"{cmp['spearman_live']:.3f}, Pearson {cmp['pearson']:.3f}, top-10 overlap "
        f"{cmp['top10_overlap']:.2f}",
        f"(e) q/k grid, {qk['cells']} cells ({qk['layers']} layers x span:last, last x heads): "
        f"exact {qk['exact_s']:.2f} s, attribution with QK correction {qk['fixed_s']:.2f} s "
        f"(Spearman {qk['fixed_spearman']:.3f}), without {qk['plain_s']:.2f} s "
        f"(Spearman {qk['plain_spearman']:.3f})",
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "loop_s": t_loop, "grid_every_s": t_every, "grid_s": t_exact,
                    "attribution_s": t_attr, "compare": cmp, "load": [load_before, load_after],
                    "cells": len(cells), "pairs": n_pairs, "loop_cells_timed": len(sample),
                    "qk": qk,
                },
                fh, indent=2,
            )  # fmt: skip


if __name__ == "__main__":
    main()
