"""Vocabulary-defined semantics: benchmark and study runner (semhooks.studies.vocab, semhooks.studies.calibration).

Benchmark (default), SmolLM2-135M (W_U [576, 49,152], tied embeddings):
  - the semantic basis of all 49,152 tokens: Gram route (s_i = G^-1 u_i, float64 Cholesky
    solve) vs ``torch.linalg.pinv(W_U)`` (float64): wall time and max |difference|;
  - semantic logits over k = 2..16 label words (cosine to k basis vectors) vs the
    full-vocabulary logits ``h W_U + b_U`` (the logit-lens readout), time per 10,000 states.
  Prints the ratios. The machine is shared: the 1-minute load average is printed beside the
  times (wall times are upper bounds).

Study (``--study``): the README tables. SmolLM2, prompt ``"Review: {text}\\nSentiment:"``,
label words " negative" / " positive", state = last token, final norm applied:
  - SST-2: 1,000 balanced items of the bundled train sample -> the 872 dev sentences, at the
    last layer (29) and at layer 19;
  - UCI amazon_cells, imdb, yelp: stratified 50/50 splits (500 / 500);
  - review domain (3 classes from the UCI files: " phone" / " movie" / " restaurant",
    prompt ``"Review: {text}\\nThis review is about a"``): 1,200 balanced items, 50/50.
  plus the basis self-consistency report (all 49,152 tokens, raw and centred W_U) and a
  vocabulary-lens example. Writes docs/results/vocab.md, vocab_study.json,
  vocab_calibration.png and vocab_lens.png.

    python benchmarks/vocab.py                # benchmark
    python benchmarks/vocab.py --study        # README tables (about an hour on 2 busy cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import semhooks
from semhooks.data.loaders import TextClassificationDataset, load_sentiment, load_sst2
from semhooks.io.artifacts import atomic_write_text
from semhooks.plots import save_figure
from semhooks.studies.calibration import (
    CalibrationResult,
    calibration_study,
    plot_results,
    results_table,
)
from semhooks.studies.vocab import (
    basis_report,
    label_basis,
    semantic_basis,
    semantic_logits,
    vocab_lens,
)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
SENTIMENT = ["negative", "positive"]
DOMAIN_WORDS = ["phone", "movie", "restaurant"]
DOMAIN_TEMPLATE = "Review: {text}\nThis review is about a"


def _load() -> float:
    return os.getloadavg()[0]


def _timed(fn: Any, repeats: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# ---------------------------------------------------------------------- benchmark
def benchmark(model: Any, n_states: int = 10_000, repeats: int = 3) -> str:
    adapter = semhooks.adapt(model)
    w = adapter.W_U.detach().float()
    d, v = w.shape
    lines = [
        f"SmolLM2-135M W_U [{d}, {v}], torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}",
        f"load average at start: {_load():.1f}",
        "",
        "Semantic basis of all tokens (float64, no disk cache):",
    ]
    t_gram, gram = _timed(
        lambda: semantic_basis(w, method="gram", dtype=torch.float64, cache=False)
    )
    t_pinv, pinv = _timed(lambda: semantic_basis(w, method="pinv", dtype=torch.float64))
    err = float((gram.vectors - pinv.vectors).abs().max())
    rel = err / float(pinv.vectors.abs().max())
    lines += [
        f"  Gram route G^-1 u_i   {t_gram:8.2f} s",
        f"  torch.linalg.pinv     {t_pinv:8.2f} s",
        f"  pinv / Gram time      {t_pinv / t_gram:8.1f} x",
        f"  max |difference|      {err:.3g}  (relative to max |s_i|: {rel:.3g})",
        f"  load average: {_load():.1f}",
        "",
    ]
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(n_states, d, generator=gen)
    with torch.no_grad():
        states = adapter.final_norm(states).float()
    b_u = adapter.b_U
    bias = b_u.detach().float() if b_u is not None else torch.zeros(v)

    def full_logits() -> Any:
        # Chunked like TransformerLens' logit_readout, so [10,000, 49,152] is never held.
        out = None
        for c in states.split(1000):
            out = (c @ w + bias).argmax(-1)
        return out

    t_full, _ = _timed(full_logits, repeats=max(1, repeats - 1))
    lines += [
        f"Logits for {n_states:,} states (per {n_states:,} states, best of "
        f"{max(1, repeats - 1)} full / {repeats} semantic):",
        f"  full vocabulary h W_U + b_U ({v:,} tokens)  {t_full * 1000:9.1f} ms",
        "  k   basis (one-off)   semantic logits   full / semantic",
    ]
    words = [
        "negative", "positive", "neutral", "good", "bad", "great", "terrible", "happy",
        "sad", "angry", "movie", "phone", "restaurant", "food", "music", "sports",
    ]  # fmt: skip
    semantic_basis(model)  # the full basis on disk makes label bases a lookup
    for k in (2, 4, 8, 16):
        t_basis, basis = _timed(lambda k=k: label_basis(model, words[:k]))
        t_sem, _ = _timed(lambda basis=basis: semantic_logits(states, basis), repeats=repeats)
        lines.append(
            f"  {k:<3d} {t_basis * 1000:10.1f} ms   {t_sem * 1000:12.2f} ms   "
            f"{t_full / t_sem:12.0f} x"
        )
    lines.append(f"  load average at end: {_load():.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- study
def domain_dataset(n: int = 1200, seed: int = 0) -> TextClassificationDataset:
    """Three-class review domain from the UCI files: phone (amazon_cells), movie (imdb),
    restaurant (yelp)."""
    texts: list[str] = []
    labels: list[int] = []
    for c, name in enumerate(["amazon_cells", "imdb", "yelp"]):
        ds = load_sentiment(name)
        texts += ds.texts
        labels += [c] * len(ds)
    full = TextClassificationDataset(
        texts, np.array(labels), tuple(DOMAIN_WORDS), name="uci-domain", license="see NOTICE"
    )
    return full.subsample(n, seed=seed)


def run_study(model: Any, progress: bool, k_shot: int, icl_limit: int) -> list[CalibrationResult]:
    results: list[CalibrationResult] = []
    common: dict[str, Any] = {
        "k_shot": k_shot,
        "icl_limit": icl_limit,
        "progress": progress,
        "batch_size": 16,
    }

    def log(res: CalibrationResult) -> None:
        print(res.table(), flush=True)
        print(f"  (load average {_load():.1f})", flush=True)

    t0 = time.perf_counter()
    sst_train = load_sst2("train_sample", limit=1000, seed=0)
    sst_test = load_sst2("dev")
    for res in calibration_study(
        model, sst_train, sst_test, SENTIMENT, layer=[-1, 19], name="sst2", **common
    ):
        results.append(res)
        log(res)
    for name in ("amazon_cells", "imdb", "yelp"):
        train, test = load_sentiment(name).split(0.5, seed=0)
        res = calibration_study(model, train, test, SENTIMENT, name=name, **common)
        results.append(res)
        log(res)
    train, test = domain_dataset().split(0.5, seed=0)
    res = calibration_study(
        model, train, test, DOMAIN_WORDS, template=DOMAIN_TEMPLATE, name="uci-domain", **common
    )
    results.append(res)
    log(res)
    print(f"study: {time.perf_counter() - t0:.0f} s", flush=True)
    return results


def write_results(
    results: list[CalibrationResult], report_md: str, lens_md: str, bench: str | None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig = plot_results(results)
    labels = [f"{r.dataset}\nL{r.layer}" for r in results]
    fig.axes[1].set_xticklabels(labels, fontsize=8)
    save_figure(fig, RESULTS / "vocab_calibration.png", dpi=130)
    data = {"results": [r.to_dict() for r in results]}
    atomic_write_text(RESULTS / "vocab_study.json", json.dumps(data, indent=2, default=str))
    methods = results[0].methods
    parts = [
        "# Vocabulary-defined semantics on SmolLM2-135M-Instruct",
        "",
        "Produced by `python benchmarks/vocab.py --study` (numbers below are measured, CPU,",
        "seeded). Method: METHODS.md section 4 (Gu et al. 2024, arXiv 2401.16184).",
        "",
        "## Semantic basis: self-consistency and `center_unembed`",
        "",
        report_md,
        "",
        "Self-consistency: fraction of tokens i whose basis logits s_i W_U peak at i (bias",
        "excluded). The centred rows are TransformerLens' `center_unembed`",
        "(W_U - W_U.mean(-1)); the Bridge keeps the raw Hugging Face W_U.",
        "",
        "## Semantic calibration vs baselines (accuracy / adjusted Rand index)",
        "",
        "State: last token of the prompt at the given layer, final norm applied. Prompt",
        "`Review: {text}\\nSentiment:` with label words ` negative` / ` positive`; the domain",
        "set uses `Review: {text}\\nThis review is about a` with ` phone` / ` movie` /",
        "` restaurant`. ARI = adjusted Rand index of the predicted partition against the gold",
        "labels; for the two semantic rows these are the nearest-label-basis clusters before",
        "and after calibration.",
        "",
        "Methods, in column order: " + "; ".join(methods) + ".",
        "",
        results_table(results),
        "",
        "### Per dataset",
        "",
    ]
    for r in results:
        parts += [r.table(), ""]
        if "icl_demos" in r.info:
            parts += [f"ICL demonstrations: {r.info['icl_demos']!r}", ""]
    parts += [
        "![calibration](vocab_calibration.png)",
        "",
        "## Vocabulary lens example",
        "",
        lens_md,
        "",
        "![vocabulary lens](vocab_lens.png)",
        "",
    ]
    if bench:
        parts += ["## Benchmark (`python benchmarks/vocab.py`)", "", "```", bench, "```", ""]
    atomic_write_text(RESULTS / "vocab.md", "\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", action="store_true", help="run the README study")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--k-shot", type=int, default=4)
    parser.add_argument("--icl-limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bench-file", type=Path, default=None, help="benchmark output to embed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = semhooks.load_model("smollm2-135m")
    if not args.study:
        print(benchmark(model), flush=True)
        return
    t0 = time.perf_counter()
    report = basis_report(model, progress=not args.no_progress)
    print(report.table(), f"\n({report.seconds:.0f} s)", flush=True)
    lens = vocab_lens(
        model,
        ["The capital of France is", "Review: a gorgeous, witty, seductive movie.\nSentiment:"],
        layers=[0, 5, 10, 15, 20, 23, 25, 27, 29],
        top_k=5,
    )
    import matplotlib

    matplotlib.use("Agg")
    RESULTS.mkdir(parents=True, exist_ok=True)
    lens.plot(item=1).savefig(RESULTS / "vocab_lens.png", dpi=130)
    lens_md = lens.table(0, top=3) + "\n\n" + lens.table(1, top=3)
    agree = ", ".join(
        f"{la}: {a:.2f}" for la, a in zip(lens.layers, lens.agreement().tolist(), strict=True)
    )
    lens_md += f"\n\nTop-1 agreement, semantic vs logit lens, per layer: {agree}"
    print(lens_md, flush=True)
    results = run_study(model, not args.no_progress, args.k_shot, args.icl_limit)
    bench = args.bench_file.read_text() if args.bench_file and args.bench_file.exists() else None
    write_results(results, report.table(), lens_md, bench)
    print(results_table(results))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
