"""Subject layer and swap strength: the README's sweep of LRC and mean-difference swaps.

For each relation and subject layer, one validated split (``--seed``), one randomized LRC
(rank 50, object layer 29) and the mean-difference baseline fitted on the training subjects;
then the causal swap (Chanin et al.) of both on the test subjects under five edits: every layer
at alpha 0.02 / 0.035 / 0.05, layers 0..l at 0.05, and layer l alone at 0.6. Each cell prints
``LRC swap / random control / mean-difference swap``; accuracies are the held-out ones.

    python benchmarks/relations_sweep.py            # about 12 minutes on 2 CPU cores
    python benchmarks/relations_sweep.py --seed 1 --layers 8 --edits all:0.035
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path
from typing import Any

import torch
from relations_sketches import held_out_accuracy

from semhooks import load_model
from semhooks.relations.evaluation import causal_swap, fit_baselines, relation_prompts
from semhooks.relations.lrc import LRC
from semhooks.relations.prompts import prompt_states, validate
from semhooks.relations.splits import split

RELATIONS = [
    "person_native_language",
    "object_superclass",
    "substance_phase",
    "landmark_on_continent",
]
EDITS = ["all:0.02", "all:0.035", "all:0.05", "upto:0.05", "only:0.6"]
EDIT_NAMES = {"all": "all layers", "upto": "layers <= l", "only": "layer l only"}


def swap_layers(kind: str, layer: int) -> Any:
    if kind == "all":
        return "all"
    if kind == "upto":
        return list(range(layer + 1))
    if kind == "only":
        return layer
    raise SystemExit(f"--edits: unknown kind {kind!r} (all, upto, only)")


def relation_split(model: Any, rel: str, args: argparse.Namespace) -> tuple[list, list]:
    """The validated prompts of ``rel``, split: once per relation, shared by its layers."""
    _, prompts = relation_prompts(rel, 3, max_prompts=args.max_prompts, seed=args.seed)
    return split(validate(model, prompts, progress=False).kept, seed=args.seed)


def run_cell(
    model: Any, rel: str, layer: int, train: list, test: list, args: argparse.Namespace
) -> dict[str, Any]:
    t0 = time.perf_counter()
    lrc = LRC(
        layer, args.object_layer, args.rank, method="randomized", seed=args.seed, progress=False
    )
    lrc.fit(model, train)
    h = {
        part: prompt_states(model, ps, layer, aggregation="first", with_answer=False).subject[layer]
        for part, ps in (("train", train), ("test", test))
    }
    md = fit_baselines(h["train"], [p.object for p in train], ("mean_difference",))[
        "mean_difference"
    ]
    truth = [p.object for p in test]
    cell: dict[str, Any] = {
        "relation": rel,
        "layer": layer,
        "n_valid": len(train) + len(test),
        "n_test": len(test),
        "n_objects": len({p.object for p in train}),
        "lrc_accuracy": held_out_accuracy(lrc, h["test"], truth),
        "md_accuracy": held_out_accuracy(md, h["test"], truth),
        "swaps": {},
    }
    first = None
    for edit in args.edits:
        kind, alpha = edit.split(":")
        where = swap_layers(kind, layer)
        # every edit shares the un-intervened forward of the first (same prompts and targets)
        sw = causal_swap(
            lrc, model, test, alpha=float(alpha), layers=where, seed=args.seed, baseline=first
        )
        first = first or sw
        msw = causal_swap(
            md,
            model,
            test,
            alpha=float(alpha),
            layers=where,
            seed=args.seed,
            control=False,
            baseline=first,
        )
        cell["swaps"][edit] = [sw.score, sw.control_score, msw.score]
    cell["seconds"] = time.perf_counter() - t0
    return cell


def markdown(cells: list[dict[str, Any]], edits: list[str]) -> str:
    heads = [f"{EDIT_NAMES[e.split(':')[0]]}, alpha {e.split(':')[1]}" for e in edits]
    lines = [
        "| relation | layer | n test | LRC acc | mean-diff acc | " + " | ".join(heads) + " |",
        "|---" * (5 + len(edits)) + "|",
    ]
    for c in cells:
        swaps = [" / ".join(f"{v:.2f}" for v in c["swaps"][e]) for e in edits]
        lines.append(
            f"| {c['relation']} | {c['layer']} | {c['n_test']} | {c['lrc_accuracy']:.2f} | "
            f"{c['md_accuracy']:.2f} | " + " | ".join(swaps) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--relations", nargs="*", default=RELATIONS)
    ap.add_argument("--layers", type=int, nargs="*", default=[8, 15])
    ap.add_argument("--edits", nargs="*", default=EDITS, help="kind:alpha, kind in all/upto/only")
    ap.add_argument("--object-layer", type=int, default=29)
    ap.add_argument("--rank", type=int, default=50)
    ap.add_argument("--max-prompts", type=int, default=80, help="subjects per relation")
    ap.add_argument("--seed", type=int, default=0, help="subject sample, split and LRE seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the cells here")
    args = ap.parse_args()
    for edit in args.edits:
        kind, _, alpha = edit.partition(":")
        swap_layers(kind, 0)
        try:
            float(alpha)
        except ValueError:
            raise SystemExit(f"--edits: {edit!r} is not kind:alpha") from None
    torch.set_num_threads(args.threads)
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}"
        for p in ("torch", "transformers", "transformer-lens")
    )
    print(f"{versions}; {args.threads} thread(s); split seed {args.seed}", flush=True)
    model = load_model("smollm2-135m")
    cells = []
    for rel in args.relations:
        train, test = relation_split(model, rel, args)
        for layer in args.layers:
            cells.append(run_cell(model, rel, layer, train, test, args))
            c = cells[-1]
            print(
                f"{rel} layer {layer}: {c['n_valid']} valid, {c['n_test']} test, "
                f"{c['seconds']:.0f} s",
                flush=True,
            )
    print(markdown(cells, args.edits))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cells": cells}, indent=1))


if __name__ == "__main__":
    main()
