"""How much does one random sketch move randomized-LRC accuracy? Many sketches, no model.

The randomized path computes ``Y = mean_i J_i Omega = W Omega`` and ``B = Q^T W`` with
JVPs/VJPs; the same randomized SVD applied to the exact ``W`` gives the same estimate (up to
float32 rounding) in milliseconds. So this script fits the exact LRC once per relation (the
split and LRE prompts of benchmarks/relations.py), then draws ``--sketches`` Gaussian sketches
per setting (oversampling p, power iterations q) and prints the mean accuracy gap to exact.

    python benchmarks/relations_sketches.py            # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import warnings

import numpy as np
import torch
from relations import DEFAULT_ACCURACY_RELATIONS, valid_prompts

from semhooks import load_model
from semhooks.relations.lrc import LRC
from semhooks.relations.prompts import prompt_states
from semhooks.relations.splits import split

SETTINGS = [(10, 0), (25, 0), (50, 0), (100, 0), (10, 1), (25, 1), (10, 2)]


def sketched_svd(W: torch.Tensor, k: int, q: int, seed: int):
    """Halko et al. randomized SVD of ``W`` with ``k`` columns and ``q`` power iterations."""
    g = torch.Generator().manual_seed(seed)
    Y = W @ torch.randn(W.shape[0], k, generator=g, dtype=torch.float64)
    for _ in range(q):
        Y = W @ torch.linalg.qr(W.T @ torch.linalg.qr(Y)[0])[0]
    Q = torch.linalg.qr(Y)[0]
    Ub, S, Vh = torch.linalg.svd(Q.T @ W, full_matrices=False)
    return Q @ Ub, S, Vh


def sketched_lrc(lrc: LRC, sketch: tuple[torch.Tensor, ...]) -> LRC:
    """``lrc`` with its concepts recomputed from a sketched SVD of its (exact) LRE."""
    lre = copy.copy(lrc.lre_)
    lre._svd = tuple(t.float() for t in sketch)
    with_sketch = copy.copy(lrc)
    with_sketch.lre_ = lre
    return with_sketch.with_rank(lrc.rank)


def held_out_accuracy(lrc: LRC, states: torch.Tensor, truth: list[str]) -> float:
    """Accuracy on precomputed test subject states (no forward pass per sketch)."""
    return float(np.mean([a == b for a, b in zip(lrc.predict_states(states), truth, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--relations", nargs="*", default=DEFAULT_ACCURACY_RELATIONS)
    ap.add_argument("--rank", type=int, default=50)
    ap.add_argument("--sketches", type=int, default=20)
    ap.add_argument("--max-prompts", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    r = args.rank
    gaps: dict[tuple[int, int], list[float]] = {s: [] for s in SETTINGS}
    n_test = []
    for rel in args.relations:
        train, test = split(valid_prompts(model, rel, args.max_prompts, args.seed), seed=args.seed)
        lrc = LRC(15, 29, r, method="exact", seed=args.seed, progress=False).fit(model, train)
        h = prompt_states(model, test, 15, aggregation="first", with_answer=False).subject[15]
        truth = [p.object for p in test]
        exact = held_out_accuracy(lrc, h, truth)
        W = lrc.lre_.weight_.double()
        n_test.append(len(test))
        line = f"{rel:24s} n_test={len(test):3d} exact {exact:.3f}"
        for p, q in SETTINGS:
            accs = [
                held_out_accuracy(sketched_lrc(lrc, sketched_svd(W, r + p, q, s)), h, truth)
                for s in range(args.sketches)
            ]
            gaps[(p, q)].append(float(np.mean(accs)) - exact)
            line += f"\n    p={p:3d} q={q}: mean {np.mean(accs):.3f} sd {np.std(accs):.3f}"
        print(line, flush=True)
    n = np.array(n_test, dtype=float)
    print(f"\nmean gap to exact over {len(n)} relations, {args.sketches} sketches each:")
    for p, q in SETTINGS:
        g = np.array(gaps[(p, q)])
        print(
            f"  oversampling {p:3d}, {q} power it.: {100 * g.mean():+.2f} points unweighted, "
            f"{100 * (g * n).sum() / n.sum():+.2f} pooled"
        )


if __name__ == "__main__":
    main()
