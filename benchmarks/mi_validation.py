"""Validate the MI estimators on correlated Gaussians with known mutual information.

For every estimator, dimension (16, 64, 576) and true MI (0 = independent, 0.5, 1, 2, 4,
8 bits) this fits a fresh estimator on ``n`` pairs from :func:`semhooks.estimators.mi.correlated_gaussians`
and prints the estimate, the error and the fit time, first as plain text and then as a
markdown table for the README.

    python benchmarks/mi_validation.py            # n = 4000, one CPU thread, ~6 CPU-min
    python benchmarks/mi_validation.py --quick    # dims 16 and 64 only

``--steps-576`` caps the neural estimators' steps at d = 576 (the table then says so); with
n = 4000 early stopping ends those fits by ~400 steps anyway.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

from semhooks.estimators.mi import (
    MINE,
    GaussianMI,
    InfoNCE,
    MIEstimator,
    ValidationRow,
    validate_estimator,
    validation_table_markdown,
)

MI_VALUES = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]


def _factories(dim: int, steps_576: int, seed: int) -> list[tuple[str, Callable[[], MIEstimator]]]:
    big = dim >= 256
    steps = steps_576 if big else 2000  # 2000: the library default
    tag = f" (max {steps_576} steps)" if big and steps_576 != 2000 else ""
    return [
        ("GaussianMI", lambda: GaussianMI()),
        ("MINE" + tag, lambda: MINE(seed=seed, max_steps=steps)),
        ("InfoNCE" + tag, lambda: InfoNCE(seed=seed, max_steps=steps)),
    ]


def main(argv: list[str] | None = None) -> list[ValidationRow]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000, help="pairs per fit")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 64, 576])
    p.add_argument("--mi", type=float, nargs="+", default=MI_VALUES, help="true MI, bits")
    p.add_argument(
        "--steps-576",
        type=int,
        default=2000,
        help="max_steps for the neural estimators at d >= 256 (lower it to save time)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="dims 16 and 64 only")
    args = p.parse_args(argv)
    dims = [d for d in args.dims if d < 256] if args.quick else args.dims

    torch.set_num_threads(args.threads)
    n_eval = max(16, round(0.2 * args.n))
    print(
        f"n = {args.n} pairs per fit ({args.n - n_eval} train / {n_eval} held out for the "
        f"neural estimators); torch {torch.__version__}, {args.threads} CPU thread(s)"
    )
    print(
        f"MINE ceiling and InfoNCE bound: log2({n_eval}) = {math.log2(n_eval):.2f} bits; "
        "error = estimate - true"
    )
    print(
        f"{'estimator':<22}{'dim':>5}{'true':>8}{'estimate':>10}{'error':>8}"
        f"{'cpu s':>8}{'wall s':>8}"
    )
    rows: list[ValidationRow] = []
    t_all = time.perf_counter()
    for dim in dims:
        for name, factory in _factories(dim, args.steps_576, args.seed):
            for r in validate_estimator(
                factory, [dim], args.mi, n=args.n, seed=args.seed, name=name
            ):
                rows.append(r)
                print(
                    f"{r.estimator:<22}{r.dim:>5}{r.true_bits:>8.2f}{r.estimate_bits:>10.2f}"
                    f"{r.error_bits:>+8.2f}{r.cpu_seconds:>8.1f}{r.seconds:>8.1f}",
                    flush=True,
                )
    print(f"total {time.perf_counter() - t_all:.0f} s\n")
    print(validation_table_markdown(rows))
    return rows


if __name__ == "__main__":
    main()
