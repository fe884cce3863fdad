"""Pooling study runner (semhooks.studies.probing.pooling_study): the README's layer x pooling figures.

For SmolLM2-135M (every 3rd layer and the last) and all-MiniLM-L6-v2 (all 6 layers), two
studies, each from one token-level extraction pass:

- ``sst2``: probe trained on 1,000 seeded, balanced SST-2 training rows, evaluated on SST-2
  dev (872) and, as cross-domain transfer, on the UCI Amazon, IMDB and Yelp sets (1,000 each).
- ``uci``: the three UCI sets pooled (3,000 sentences), a stratified seeded 2,000 / 1,000
  split, evaluated on the 1,000 held-out UCI sentences and transferred to SST-2 dev.

Writes ``docs/results/pooling_{model}_{study}.json`` / ``.md`` / ``.png``.

    python benchmarks/pooling.py [--models smollm2 minilm] [--studies sst2 uci]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import semhooks
from semhooks.data.loaders import TextClassificationDataset, load_sentiment, load_sst2
from semhooks.io.artifacts import atomic_write_text
from semhooks.studies.probing import PoolingResult, pooling_study

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
MODELS = {
    "smollm2": ("smollm2-135m", [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]),
    "minilm": ("minilm-l6", "all"),
}
UCI = ("amazon_cells", "imdb", "yelp")


def uci_pooled() -> TextClassificationDataset:
    parts = [load_sentiment(name) for name in UCI]
    return TextClassificationDataset(
        texts=[t for p in parts for t in p.texts],
        labels=np.concatenate([p.labels for p in parts]),
        name="uci",
        license=parts[0].license,
    )


def describe(res: PoolingResult, title: str) -> str:
    lines = [f"## {title}", ""]
    prot = {k: v for k, v in res.protocol.items() if k != "provenance"}
    lines += [f"protocol: {json.dumps(prot)}", ""]
    for k, name in enumerate(res.eval_sets):
        where = "held-out, in-domain" if k == 0 else "cross-domain transfer"
        best = res.best(name)
        lines += [
            f"### {res.train_set} -> {name} ({where}); accuracy % [95% Wilson CI]",
            "",
            res.table(name),
            "",
            f"best: layer {best['layer']}, {best['pooling']}: {100 * best['accuracy']:.1f}% "
            f"[{100 * best['ci_low']:.1f}, {100 * best['ci_high']:.1f}]; best layer per "
            f"pooling: {res.best_layer(name)}",
            "",
        ]
    lines += ["### probe fit time (s; weighted includes its pooler's training)", ""]
    lines += [res.table(cost=True), ""]
    return "\n".join(lines)


def write_result(key: str, study: str, name: str, res: PoolingResult) -> str:
    """Write ``pooling_{key}_{study}.json`` / ``.md`` / ``.png`` atomically; returns the text."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"pooling_{key}_{study}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(res.to_dict(), indent=1))
    text = describe(res, f"{name}: pooling study '{study}'")
    atomic_write_text(stem.with_suffix(".md"), text)
    res.plot(path=stem.with_suffix(".png"))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--studies", nargs="+", default=["sst2", "uci"], choices=["sst2", "uci"])
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for key in args.models:
        name, layers = MODELS[key]
        model = semhooks.load_model(name)
        for study in args.studies:
            t0 = time.perf_counter()
            if study == "sst2":
                res = pooling_study(
                    model,
                    load_sst2("train_sample", limit=args.n_train, seed=0),
                    load_sst2("dev"),
                    transfer={n: load_sentiment(n) for n in UCI},
                    layers=layers,
                    batch_size=args.batch_size,
                    progress=True,
                )
            else:
                train, test = uci_pooled().split(test_size=1000, seed=0)
                res = pooling_study(
                    model,
                    train,
                    test,
                    transfer={"sst2-dev": load_sst2("dev")},
                    layers=layers,
                    batch_size=args.batch_size,
                    progress=True,
                )
            print(write_result(key, study, name, res), flush=True)
            print(f"[{key}/{study}] {time.perf_counter() - t0:.0f} s", flush=True)
        del model


if __name__ == "__main__":
    main()
