"""Benchmark: LRE Jacobians on SmolLM2, naive vs semhooks exact vs semhooks randomized.

One run, side by side, on ``--n-prompts`` (20) validated three-shot prompts of one relation,
subject layer 15 -> object layer 29:

(a) naive reference: per prompt, ``torch.autograd.functional.jacobian(vectorize=True)`` of a
    full forward pass (every layer, the unembedding, no prefix cache, no early stop);
(b) semhooks exact: prefix KV cache, forward stopped at the object layer, d batched VJPs;
(c) semhooks randomized: rank ``--rank`` (50) + 10 oversampling, JVPs and VJPs only.

It prints wall time, the relative Frobenius error of (b) against (a), principal angles
between the top-``rank`` singular subspaces of (c) and (b), and then LRC test accuracy of
(b) and (c) on ``--accuracy-relations`` (same validated split, same LRE prompts).

Targets (issue 4): (b) >= 3x faster than (a) with relative error < 1e-4; (c) >= 10x faster
than (a), LRC accuracy within 2 points of (b) over at least 5 relations.

    python benchmarks/relations.py                       # full run (tens of minutes on CPU)
    python benchmarks/relations.py --n-prompts 4 --accuracy-relations substance_phase
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import torch

from semhooks import load_model
from semhooks.relations import load
from semhooks.relations.jacobian import (
    mean_jacobian,
    principal_angles,
    randomized_jacobian,
    reference_jacobian,
)
from semhooks.relations.lrc import LRC
from semhooks.relations.prompts import balanced_subset, build_prompts, split, validate

DEFAULT_ACCURACY_RELATIONS = [
    "landmark_on_continent",
    "person_native_language",
    "object_superclass",
    "substance_phase",
    "characteristic_gender",
    "occupation_age",
]


def valid_prompts(model, relation: str, max_prompts: int, seed: int):
    rel = load(relation)
    rng = np.random.default_rng(seed)
    subjects = None
    if len(rel.samples) > max_prompts:
        pick = sorted(rng.choice(len(rel.samples), max_prompts, replace=False).tolist())
        subjects = [rel.samples[i].subject for i in pick]
    prompts = build_prompts(rel, 3, subjects=subjects, seed=seed)
    return validate(model, prompts, progress=False).kept


def timing(model, args) -> dict:
    kept = valid_prompts(model, args.relation, args.max_prompts, args.seed)
    prompts = balanced_subset(kept, args.n_prompts, seed=args.seed)
    n, ls, lo = len(prompts), args.subject_layer, args.object_layer
    print(f"relation {args.relation}: {len(kept)} valid prompts, timing on {n}")
    out: dict = {"relation": args.relation, "n_prompts": n, "subject_layer": ls, "object_layer": lo}

    # warm-up (first calls allocate; the prefix-cache check runs once per model)
    mean_jacobian(model, prompts[:1], ls, lo, progress=False)
    out["loadavg_start"] = os.getloadavg()[0]

    # (a) and (b) alternate prompt by prompt, so that a change in machine load hits both
    total_a = torch.zeros(model.cfg.d_model, model.cfg.d_model, dtype=torch.float64)
    total_b = torch.zeros_like(total_a)
    bias_b = torch.zeros(model.cfg.d_model, dtype=torch.float64)
    t_a = t_b = 0.0
    for i, p in enumerate(prompts):
        t0 = time.perf_counter()
        exact = mean_jacobian(model, [p], ls, lo, progress=False)
        t_b += time.perf_counter() - t0
        total_b += exact.weight
        bias_b += exact.bias
        if not args.skip_naive:
            t0 = time.perf_counter()
            J, _, _ = reference_jacobian(model, p, ls, lo)
            t_a += time.perf_counter() - t0
            total_a += J.double()
        print(f"  prompt {i + 1}/{n}: exact {t_b:.0f}s, naive {t_a:.0f}s so far", flush=True)
    out["exact_s"] = t_b
    W_b = total_b / n

    t0 = time.perf_counter()
    low = randomized_jacobian(
        model, prompts, ls, lo, rank=args.rank, seed=args.seed, progress=False
    )
    out["randomized_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    low_q1 = randomized_jacobian(
        model, prompts, ls, lo, rank=args.rank, seed=args.seed, n_power_iter=1, progress=False
    )
    out["randomized_q1_s"] = time.perf_counter() - t0
    out["loadavg_end"] = os.getloadavg()[0]

    if not args.skip_naive:
        out["naive_s"] = t_a
        W_a = total_a / n
        out["exact_rel_frobenius_error"] = float((W_b - W_a).norm() / W_a.norm())
        out["exact_speedup"] = out["naive_s"] / out["exact_s"]
        out["randomized_speedup"] = out["naive_s"] / out["randomized_s"]
        out["randomized_q1_speedup"] = out["naive_s"] / out["randomized_q1_s"]
    U, S, Vh = torch.linalg.svd(W_b)
    r = args.rank
    ang_u = principal_angles(U[:, :r], low.U[:, :r])
    ang_v = principal_angles(Vh[:r].T, low.Vh[:r].T)
    ang_q1 = principal_angles(U[:, :r], low_q1.U[:, :r])
    out["q1_left_angles_deg_median"] = float(np.degrees(ang_q1.median()))
    out["q1_left_angles_deg_max"] = float(np.degrees(ang_q1.max()))
    approx_q1 = (low_q1.U[:, :r] * low_q1.S[:r]) @ low_q1.Vh[:r]
    out["q1_randomized_rel_error"] = float((approx_q1 - W_b).norm() / W_b.norm())
    best = (U[:, :r] * S[:r]) @ Vh[:r]
    approx = (low.U[:, :r] * low.S[:r]) @ low.Vh[:r]
    out.update(
        rank=r,
        oversampling=low.extra["oversampling"],
        left_angles_deg_median=float(np.degrees(ang_u.median())),
        left_angles_deg_max=float(np.degrees(ang_u.max())),
        right_angles_deg_median=float(np.degrees(ang_v.median())),
        right_angles_deg_max=float(np.degrees(ang_v.max())),
        top10_left_angles_deg_max=float(
            np.degrees(principal_angles(U[:, : min(10, r)], low.U[:, :r]).max())
        ),
        rank_r_rel_error_vs_best=float((approx - best).norm() / best.norm()),
        best_rank_r_rel_error=float((best - W_b).norm() / W_b.norm()),
        randomized_rel_error=float((approx - W_b).norm() / W_b.norm()),
        sigma_top=[float(x) for x in S[:5]],
        sigma_r=float(S[r - 1]),
        bias_rel_error=float((low.bias - bias_b / n).norm() / (bias_b / n).norm()),
    )
    return out


def accuracy(model, args) -> list[dict]:
    rows = []
    for rel in args.accuracy_relations:
        kept = valid_prompts(model, rel, args.max_prompts, args.seed)
        train, test = split(kept, seed=args.seed)
        n_obj = len({p.object for p in kept})
        if n_obj < 2 or not test:
            print(f"skip {rel}: {len(kept)} valid prompts, {n_obj} objects")
            continue
        row: dict = {
            "relation": rel,
            "n_valid": len(kept),
            "n_train": len(train),
            "n_test": len(test),
            "n_objects": n_obj,
        }
        variants = [("exact", "exact", 0), ("randomized", "randomized", args.power_iter)]
        if args.power_iter == 0:
            variants.append(("randomized_q1", "randomized", 1))
        for label, method, q in variants:
            t0 = time.perf_counter()
            lrc = LRC(
                args.subject_layer,
                args.object_layer,
                args.rank,
                method=method,
                n_power_iter=q,
                seed=args.seed,
                progress=False,
            ).fit(model, train)
            row[f"{label}_fit_s"] = time.perf_counter() - t0
            row[f"{label}_lre_s"] = lrc.lre_.fit_seconds_
            row[f"{label}_acc"] = lrc.score(model, test)
        row["chance"] = 1.0 / n_obj
        rows.append(row)
        print(
            f"{rel:28s} test={len(test):3d} objects={n_obj:2d}  exact={row['exact_acc']:.3f} "
            f"randomized={row['randomized_acc']:.3f}"
            + (
                f" (1 power it. {row['randomized_q1_acc']:.3f})"
                if "randomized_q1_acc" in row
                else ""
            )
            + f"  (LRE {row['exact_lre_s']:.0f}s vs {row['randomized_lre_s']:.0f}s)",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--relation", default="landmark_on_continent")
    ap.add_argument("--n-prompts", type=int, default=20)
    ap.add_argument("--max-prompts", type=int, default=60, help="prompts built per relation")
    ap.add_argument("--subject-layer", type=int, default=15)
    ap.add_argument("--object-layer", type=int, default=29)
    ap.add_argument("--rank", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--power-iter", type=int, default=0, help="for the accuracy comparison")
    ap.add_argument("--accuracy-relations", nargs="*", default=DEFAULT_ACCURACY_RELATIONS)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s)"
    )
    res: dict = {}
    if not args.skip_timing:
        res["timing"] = report_timing(timing(model, args))
    if not args.skip_accuracy:
        res.update(report_accuracy(model, args))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


def report_timing(t: dict) -> dict:
    print(
        "\n== Jacobians: {n_prompts} prompts, layer {subject_layer} -> {object_layer} ==".format(
            **t
        )
    )
    if "naive_s" in t:
        print(f"(a) naive   {t['naive_s']:8.1f} s")
    print(
        f"(b) exact   {t['exact_s']:8.1f} s"
        + (
            f"   {t['exact_speedup']:.1f}x faster, rel. Frobenius error {t['exact_rel_frobenius_error']:.2e}"
            if "naive_s" in t
            else ""
        )
    )
    print(f"    machine load average {t['loadavg_start']:.1f} -> {t['loadavg_end']:.1f}")
    print(
        f"(c) rank {t['rank']} {t['randomized_s']:8.1f} s"
        + (f"   {t['randomized_speedup']:.1f}x faster" if "naive_s" in t else "")
    )
    print(
        f"    principal angles, top-{t['rank']} left subspace: median "
        f"{t['left_angles_deg_median']:.1f} deg, max {t['left_angles_deg_max']:.1f} deg; top-10 "
        f"left directions within {t['top10_left_angles_deg_max']:.1f} deg"
    )
    print(
        f"    rank-{t['rank']} error vs exact {t['randomized_rel_error']:.3f} (best possible "
        f"{t['best_rank_r_rel_error']:.3f}); bias rel. error {t['bias_rel_error']:.1e}"
    )
    if "randomized_q1_s" in t:
        print(
            f"(c') rank {t['rank']}, 1 power iteration {t['randomized_q1_s']:8.1f} s"
            + (f"   {t['randomized_q1_speedup']:.1f}x faster" if "naive_s" in t else "")
            + f"; angles median {t['q1_left_angles_deg_median']:.1f} deg, max "
            f"{t['q1_left_angles_deg_max']:.1f} deg; error vs exact "
            f"{t['q1_randomized_rel_error']:.3f}"
        )
    return t


def report_accuracy(model, args) -> dict:
    print(f"\n== LRC accuracy (rank {args.rank}), exact vs randomized ==")
    rows = accuracy(model, args)
    res: dict = {"accuracy": rows}
    if rows:
        ex = float(np.mean([r["exact_acc"] for r in rows]))
        rn = float(np.mean([r["randomized_acc"] for r in rows]))
        print(
            f"mean over {len(rows)} relations: exact {ex:.3f}, randomized {rn:.3f}, "
            f"difference {100 * (rn - ex):+.1f} points"
        )
        res["mean_exact_acc"], res["mean_randomized_acc"] = ex, rn
        if all("randomized_q1_acc" in r for r in rows):
            q1 = float(np.mean([r["randomized_q1_acc"] for r in rows]))
            print(f"  with 1 power iteration: {q1:.3f} ({100 * (q1 - ex):+.1f} points)")
            res["mean_randomized_q1_acc"] = q1
    return res


if __name__ == "__main__":
    main()
