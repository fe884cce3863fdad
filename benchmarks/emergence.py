"""Information-emergence benchmark and study runner (semhooks.studies.emergence).

Benchmark (default): SmolLM2-135M, 2,000 seeded entity lists of k = 8 single-token entities
("Ant,Cat,Key,...,"), all 30 blocks, the last position (t = 15, the 8th entity token; the
micro term averages tokens 1..15). One extraction (macro pass + distinct-token micro pass),
then IE with MINE and with InfoNCE (the budgeted presets of
``semhooks.studies.emergence.ESTIMATOR_PRESETS``, PCA to 32 dimensions), MI fits in ``--jobs``
worker processes (one thread each). Reported: wall time of each stage, total per estimator
(extraction + estimation), summed CPU time of the MI fits, and the 1-minute load average
(the machine is shared: wall times are upper bounds), with each estimator's error on
correlated Gaussians of known MI (d = 32, n = 2,000) printed beside it. Target: MINE total
<= 10 minutes on 2 CPU cores.

Study (``--study``): the README figures. IE with MINE on
  - entity lists: k = 10, 2,000 lists, every entity position t = 1, 3, ..., 19;
  - natural sentences: 2,000 sentences of >= 10 tokens from the bundled sentiment corpora,
    positions t = 1..10;
writes ``docs/results/emergence_{entities,sentences}.json`` and ``.png``.

    python benchmarks/emergence.py                 # benchmark
    python benchmarks/emergence.py --study         # README figures
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import semhooks
from semhooks.estimators.mi import validate_estimator, validation_table_markdown
from semhooks.studies.emergence import (
    ESTIMATOR_PRESETS,
    EmergenceResult,
    collect_pairs,
    entity_lists,
    estimate_emergence,
    make_estimator,
    natural_sentences,
)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _load() -> float:
    return os.getloadavg()[0]


def benchmark(args: argparse.Namespace) -> None:
    model = semhooks.load_model("smollm2-135m")
    lists = entity_lists(k=args.k, n=args.n, model=model, seed=0)
    last = lists.positions(model)[-1]
    print(
        f"SmolLM2-135M, {len(lists)} entity lists of k={args.k} from {len(lists.entities)} "
        f"single-token entities ({len(lists.dropped)} dropped), e.g. {lists.texts[0]!r}; "
        f"all 30 blocks, position t={last}; torch threads {torch.get_num_threads()}, "
        f"MI fits in {args.jobs} process(es); load average {_load():.1f}",
        flush=True,
    )
    w0, c0 = _clock()
    pairs = collect_pairs(model, lists, positions=[last], batch_size=args.batch_size)
    w1, c1 = _clock()
    extraction = {"wall_s": w1 - w0, "cpu_s": c1 - c0, "load": _load()}
    print(f"extraction: {w1 - w0:.1f} s wall, {c1 - c0:.1f} s CPU", flush=True)

    rows: dict[str, Any] = {}
    for name in ("mine", "infonce"):
        w0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            res = estimate_emergence(pairs, name, n_jobs=args.jobs, seed=0)
        wall = time.perf_counter() - w0
        res.save(RESULTS / f"emergence_benchmark_{name}.json")
        validation = validate_estimator(
            functools.partial(make_estimator, name), dims=[32], mi_values=[0.0, 2.0, 4.0, 8.0],
            n=args.n, seed=0, name=name,
        )  # fmt: skip
        errors = [r.error_bits for r in validation]
        rows[name] = {
            "estimation_wall_s": wall,
            "total_wall_s": extraction["wall_s"] + wall,
            "fit_cpu_s": res.protocol["fit_cpu_seconds_sum"],
            "n_fits": res.protocol["n_fits"],
            "load_after": _load(),
            "ie_mean_over_blocks": float(np.nanmean(res.ie[:, 0])),
            "ie_min": float(np.nanmin(res.ie[:, 0])),
            "ie_max": float(np.nanmax(res.ie[:, 0])),
            "mi_macro_mean": float(np.nanmean(res.mi_macro[:, 0])),
            "mi_micro_mean": float(np.nanmean(res.mi_micro[:, 0])),
            "ceiling_macro": float(res.ceiling_macro[0]),
            "ceiling_micro": float(res.ceiling_micro[0]),
            "estimator_ceiling": res.estimator_ceiling,
            "warnings": [str(w.message)[:200] for w in caught],
            "validation": [r.__dict__ for r in validation],
            "validation_mean_abs_error_bits": float(np.mean(np.abs(errors))),
            "preset": ESTIMATOR_PRESETS[name],
        }
        r = rows[name]
        print(
            f"{name}: total {r['total_wall_s']:.0f} s (estimation {wall:.0f} s wall, "
            f"{r['fit_cpu_s']:.0f} s CPU in {r['n_fits']} fits; load {r['load_after']:.1f}) | "
            f"IE at t={last}: mean {r['ie_mean_over_blocks']:.2f} bits over blocks "
            f"[{r['ie_min']:.2f}, {r['ie_max']:.2f}], MI macro {r['mi_macro_mean']:.2f} / "
            f"micro {r['mi_micro_mean']:.2f}, ceilings {r['ceiling_macro']:.2f} / "
            f"{r['ceiling_micro']:.2f} / estimator {r['estimator_ceiling']:.2f} | Gaussian "
            f"validation (d=32, n={args.n}) errors {', '.join(f'{e:+.2f}' for e in errors)} "
            f"bits (true 0/2/4/8)",
            flush=True,
        )
        print(validation_table_markdown(validation), flush=True)
    out = {
        "setup": {
            "model": "smollm2-135m",
            "n_sequences": len(lists),
            "k": args.k,
            "position": last,
            "n_entities": len(lists.entities),
            "jobs": args.jobs,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "extraction": extraction,
        "estimators": rows,
    }
    (RESULTS / "emergence_benchmark.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"target: MINE total <= 600 s: {rows['mine']['total_wall_s']:.0f} s", flush=True)


def _run_study(
    model: Any, name: str, sequences: Any, positions: Any, args: argparse.Namespace
) -> EmergenceResult:
    w0, c0 = _clock()
    pairs = collect_pairs(model, sequences, positions=positions, batch_size=args.batch_size)
    print(f"{name}: extraction {time.perf_counter() - w0:.0f} s", flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        res = estimate_emergence(pairs, args.estimator, n_jobs=args.jobs, seed=0)
    res.protocol["study_wall_seconds"] = time.perf_counter() - w0
    res.protocol["study_cpu_seconds_main"] = time.process_time() - c0
    res.protocol["warnings"] = [str(w.message)[:300] for w in caught]
    res.save(RESULTS / f"emergence_{name}.json")
    res.plot(path=RESULTS / f"emergence_{name}.png")
    print(res.table(), flush=True)
    print(f"{name}: done in {res.protocol['study_wall_seconds']:.0f} s", flush=True)
    return res


def study(args: argparse.Namespace) -> None:
    model = semhooks.load_model("smollm2-135m")
    if "entities" in args.sets:
        lists = entity_lists(k=10, n=args.n, model=model, seed=0)
        print(f"entity pool ({len(lists.entities)}): {lists.entities}", flush=True)
        _run_study(model, "entities", lists, None, args)
    if "sentences" in args.sets:
        texts = natural_sentences(model, n=args.n, min_tokens=10, seed=0)
        _run_study(model, "sentences", texts, list(range(1, 11)), args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", action="store_true", help="run the README study instead")
    parser.add_argument("--sets", default="entities,sentences", help="study input sets")
    parser.add_argument("--estimator", default="mine", help="study estimator")
    parser.add_argument("--n", type=int, default=2000, help="sequences")
    parser.add_argument("--k", type=int, default=8, help="entities per list (benchmark)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for MI fits")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (main process)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.study:
        study(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
