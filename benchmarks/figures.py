"""Re-measure the README's accuracy figures and compare them with ``docs/results`` (issue 14).

Each subcommand re-runs one study with the protocol that produced a ``docs/results`` file,
prints old (the stored file) against new for the figures the README quotes, and with
``--write`` replaces the stored files atomically, through the same writers the study runners
use (``benchmarks/lexical.py``, ``pooling.py``, ``vocab.py``). Timings are not compared (they
depend on the machine's load); accuracies do not.

    python benchmarks/figures.py wic --model minilm [--write]       # WiC layers, MiniLM
    python benchmarks/figures.py wic --model smollm2 [--write]      # WiC layers, SmolLM2
    python benchmarks/figures.py pooling --model minilm [--write]   # SST-2 pooling, MiniLM
    python benchmarks/figures.py pooling --model smollm2 --layers 0 15 29 --no-transfer
                                                                     # a check, never written
    python benchmarks/figures.py vocab [--datasets amazon_cells imdb yelp uci-domain] [--write]
    python benchmarks/figures.py steering [--write]                 # concept-steering recipe
    python benchmarks/figures.py direction                          # README steering table
    python benchmarks/figures.py basis                              # basis report, lens (vocab.md)
    python benchmarks/figures.py relations [--write]                # relation-concepts recipe

Every subcommand takes ``--threads`` (default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lexical as bench_lexical
import numpy as np
import pooling as bench_pooling
import torch
import vocab as bench_vocab

import semhooks
from semhooks.data.loaders import load_sentiment, load_sst2
from semhooks.io.artifacts import atomic_write_bytes
from semhooks.studies.calibration import CalibrationResult, MethodScore, calibration_study
from semhooks.studies.lexical import WiCResult, wic_study
from semhooks.studies.probing import PoolingResult, pooling_study

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
WIC_MODELS = {"smollm2": "smollm2-135m", "minilm": "minilm-l6"}
VOCAB_DATASETS = ("sst2", "amazon_cells", "imdb", "yelp", "uci-domain")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _verdict(old: float, new: float, tol: float = 1e-9) -> str:
    return "same" if abs(old - new) <= tol else f"changed ({100 * (new - old):+.1f} pt)"


# ---------------------------------------------------------------------- WiC
def wic(args: argparse.Namespace) -> None:
    """WiC layer curves (``wic_{model}.json``): README table and best/selected layers."""
    name = WIC_MODELS[args.model]
    path = RESULTS / f"wic_{args.model}.json"
    old = WiCResult.from_dict(json.loads(path.read_text()))
    model = semhooks.load_model(name)
    t0 = time.perf_counter()
    new = wic_study(model, n_fit=args.n_fit, batch_size=16, progress=not args.quiet)
    print(f"# wic_study({name}): {time.perf_counter() - t0:.0f} s")
    print("| variant | readout | old layer: dev % | new layer: dev % | verdict |")
    print("|---|---|---|---|---|")
    for v in new.variants:
        rows = [
            ("dev peak (README)", old.best_layer, old.best_accuracy, new.best_layer,
             new.best_accuracy),
            ("chosen on fit split", old.selected_layer, old.selected_accuracy,
             new.selected_layer, new.selected_accuracy),
        ]  # fmt: skip
        for label, ol, oa, nl, na in rows:
            same = ol[v] == nl[v] and abs(oa[v] - na[v]) < 1e-9
            verdict = "same" if same else f"changed ({100 * (na[v] - oa[v]):+.1f} pt)"
            print(
                f"| {v} | {label} | {ol[v]}: {_pct(oa[v])} | {nl[v]}: {_pct(na[v])} | {verdict} |"
            )
        if old.probe_accuracy is not None and new.probe_accuracy is not None:
            ob, nb = old.probe_accuracy[v], new.probe_accuracy[v]
            ol_, nl_ = old.layers[int(np.argmax(ob))], new.layers[int(np.argmax(nb))]
            print(f"| {v} | probe peak | {ol_}: {_pct(max(ob))} | {nl_}: {_pct(max(nb))} | "
                  f"{_verdict(max(ob), max(nb))} |")  # fmt: skip
        diff = np.abs(np.asarray(old.accuracy[v]) - np.asarray(new.accuracy[v]))
        print(f"|   | max per-layer change (cosine) | | {100 * diff.max():.1f} pt | |")
    if args.write:
        bench_lexical.write_study(args.model, name, new)
        print(f"wrote {path} (+ .md, wic_layers*.png)")


# ---------------------------------------------------------------------- pooling
def pooling(args: argparse.Namespace) -> None:
    """SST-2 pooling study (``pooling_{model}_sst2.json``); ``--layers`` / ``--no-transfer``
    give a cheaper check that is never written."""
    name, default_layers = bench_pooling.MODELS[args.model]
    layers: Any = args.layers or default_layers
    path = RESULTS / f"pooling_{args.model}_sst2.json"
    old = PoolingResult.from_dict(json.loads(path.read_text()))
    model = semhooks.load_model(name)
    transfer = None if args.no_transfer else {n: load_sentiment(n) for n in bench_pooling.UCI}
    t0 = time.perf_counter()
    new = pooling_study(
        model,
        load_sst2("train_sample", limit=1000, seed=0),
        load_sst2("dev"),
        transfer=transfer,
        layers=layers,
        batch_size=16,
        progress=not args.quiet,
    )
    print(f"# pooling_study({name}, layers={new.layers}): {time.perf_counter() - t0:.0f} s")
    old_rows = {(r["eval_set"], r["layer"], r["pooling"]): r for r in old.rows}
    diffs = []
    print("| eval set | layer | pooling | old % | new % | verdict |")
    print("|---|---|---|---|---|---|")
    for r in new.rows:
        o = old_rows.get((r["eval_set"], r["layer"], r["pooling"]))
        if o is None:
            continue
        diffs.append(abs(o["accuracy"] - r["accuracy"]))
        print(f"| {r['eval_set']} | {r['layer']} | {r['pooling']} | {_pct(o['accuracy'])} | "
              f"{_pct(r['accuracy'])} | {_verdict(o['accuracy'], r['accuracy'])} |")  # fmt: skip
    print(f"rows compared: {len(diffs)}, max |change| {100 * max(diffs, default=0):.2f} pt")
    if new.layers == old.layers and set(new.eval_sets) == set(old.eval_sets):
        for s in new.eval_sets:
            ob, nb = old.best(s), new.best(s)
            print(f"best on {s}: old L{ob['layer']} {ob['pooling']} {_pct(ob['accuracy'])}, "
                  f"new L{nb['layer']} {nb['pooling']} {_pct(nb['accuracy'])}")  # fmt: skip
            print(f"  best layer per pooling: old {old.best_layer(s)}, new {new.best_layer(s)}")
    if args.write:
        if new.layers != old.layers or set(new.eval_sets) != set(old.eval_sets):
            raise SystemExit("--write needs the full protocol (no --layers, no --no-transfer)")
        bench_pooling.write_result(args.model, "sst2", name, new)
        print(f"wrote {path} (+ .md, .png)")


# ---------------------------------------------------------------------- vocab
def _calibration_from_dict(d: dict[str, Any]) -> CalibrationResult:
    fields = {k: v for k, v in d.items() if k != "scores"}
    return CalibrationResult(scores=[MethodScore(**s) for s in d["scores"]], **fields)


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


def _vocab_md_sections(md: str) -> tuple[str, str]:
    """The semantic-basis report and the vocabulary-lens example as ``vocab.md`` holds them."""
    report = _between(md, "`center_unembed`\n\n", "\n\nSelf-consistency: fraction")
    lens = _between(md, "## Vocabulary lens example\n\n", "\n\n![vocabulary lens]")
    return report, lens


def vocab(args: argparse.Namespace) -> None:
    """Semantic calibration table (``vocab_study.json``, ``vocab.md``), chosen datasets."""
    stored = json.loads((RESULTS / "vocab_study.json").read_text())["results"]
    old = {(r["dataset"], r["layer"]): _calibration_from_dict(r) for r in stored}
    model = semhooks.load_model("smollm2-135m")
    common: dict[str, Any] = {"k_shot": 4, "icl_limit": 200, "progress": False, "batch_size": 16}
    new: list[CalibrationResult] = []
    for ds in args.datasets:
        t0 = time.perf_counter()
        if ds == "sst2":
            train, test = load_sst2("train_sample", limit=1000, seed=0), load_sst2("dev")
            out = calibration_study(
                model, train, test, bench_vocab.SENTIMENT, layer=[-1, 19], name="sst2", **common
            )
            new += list(out)
        elif ds == "uci-domain":
            train, test = bench_vocab.domain_dataset().split(0.5, seed=0)
            new.append(
                calibration_study(
                    model, train, test, bench_vocab.DOMAIN_WORDS,
                    template=bench_vocab.DOMAIN_TEMPLATE, name="uci-domain", **common,
                )
            )  # fmt: skip
        else:
            train, test = load_sentiment(ds).split(0.5, seed=0)
            new.append(
                calibration_study(model, train, test, bench_vocab.SENTIMENT, name=ds, **common)
            )
        print(f"# {ds}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("| dataset | layer | method | old acc / ARI | new acc / ARI | verdict |")
    print("|---|---|---|---|---|---|")
    for r in new:
        o = old.get((r.dataset, r.layer))
        for s in r.scores:
            os_ = None if o is None else next((x for x in o.scores if x.method == s.method), None)
            before = "-" if os_ is None else f"{os_.accuracy:.3f} / {os_.ari:.3f}"
            verdict = "-" if os_ is None else _verdict(os_.accuracy, s.accuracy)
            print(f"| {r.dataset} | {r.layer} | {s.method} | {before} | "
                  f"{s.accuracy:.3f} / {s.ari:.3f} | {verdict} |")  # fmt: skip
    if args.write:
        fresh = {(r.dataset, r.layer): r for r in new}
        merged = [fresh.get(key, res) for key, res in old.items()]
        md = (RESULTS / "vocab.md").read_text()
        report_md, lens_md = _vocab_md_sections(md)
        bench = _between(md, "## Benchmark (`python benchmarks/vocab.py`)\n\n```\n", "\n```")
        bench_vocab.write_results(merged, report_md, lens_md, bench)
        print("wrote vocab_study.json, vocab.md, vocab_calibration.png")


def basis(args: argparse.Namespace) -> None:
    """Semantic-basis report and vocabulary-lens example of ``vocab.md`` (no data split)."""
    from semhooks.studies.vocab import basis_report, vocab_lens

    model = semhooks.load_model("smollm2-135m")
    md = (RESULTS / "vocab.md").read_text()
    old_report, old_lens = _vocab_md_sections(md)
    report = basis_report(model, progress=False).table()
    lens = vocab_lens(
        model,
        ["The capital of France is", "Review: a gorgeous, witty, seductive movie.\nSentiment:"],
        layers=[0, 5, 10, 15, 20, 23, 25, 27, 29],
        top_k=5,
    )
    lens_md = lens.table(0, top=3) + "\n\n" + lens.table(1, top=3)
    agree = ", ".join(
        f"{la}: {a:.2f}" for la, a in zip(lens.layers, lens.agreement().tolist(), strict=True)
    )
    lens_md += f"\n\nTop-1 agreement, semantic vs logit lens, per layer: {agree}"
    for title, before, now in (("basis report", old_report, report), ("lens", old_lens, lens_md)):
        print(f"## {title}: {'identical' if before == now else 'DIFFERENT'}")
        if before != now:
            print("### stored\n" + before + "\n### now\n" + now)


def relations(args: argparse.Namespace) -> None:
    """The ``relation-concepts`` recipe with the stored config (relation_concepts_metrics.json)."""
    from recipes.cli import main as cli

    path = RESULTS / "relation_concepts_metrics.json"
    old = json.loads(path.read_text())
    sets: list[str] = []
    for key, value in old["config"].items():
        if key in ("model", "progress"):
            continue
        if isinstance(value, list):
            text = ",".join(value)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
        sets += ["--set", f"{key}={text}"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code = cli(
            ["run", "relation-concepts", "--out", str(out), "--set", "progress=false", *sets]
        )
        if code != 0:
            raise SystemExit(f"relation-concepts exited with {code}")
        new = json.loads((out / "metrics.json").read_text())
        o, n = old["metrics"]["summary"], new["metrics"]["summary"]
        changed = {k: (o.get(k), v) for k, v in n.items() if o.get(k) != v}
        print(f"summary keys: {len(n)}, changed: {len(changed)}")
        for k, (before, now) in sorted(changed.items()):
            print(f"  {k}: {before} -> {now}")
        print("### stored tables\n" + "\n".join(old["metrics"]["tables"]))
        print("### new tables\n" + "\n".join(new["metrics"]["tables"]))
        if args.write:
            atomic_write_bytes(path, (out / "metrics.json").read_bytes())
            print(f"wrote {path}")


# ---------------------------------------------------------------------- steering
def _curve_values(metrics: dict[str, Any]) -> dict[str, list[float]]:
    curve = metrics["metrics"]["curve"]
    return {k: [float(x) for x in curve[k]] for k in ("alphas", "logit_diff", "control_logit_diff")}


def steering(args: argparse.Namespace) -> None:
    """The ``concept-steering`` recipe (``concept_steering_metrics.json``, steering_curve.png)."""
    from recipes.cli import main as cli

    path = RESULTS / "concept_steering_metrics.json"
    old = json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code = cli(["run", "concept-steering", "--out", str(out)])
        if code != 0:
            raise SystemExit(f"concept-steering exited with {code}")
        new = json.loads((out / "metrics.json").read_text())
        o, n = _curve_values(old), _curve_values(new)
        print("| alpha | old direction | new direction | old random | new random |")
        print("|---|---|---|---|---|")
        for i, a in enumerate(n["alphas"]):
            print(f"| {a:g} | {o['logit_diff'][i]:.2f} | {n['logit_diff'][i]:.2f} | "
                  f"{o['control_logit_diff'][i]:.2f} | {n['control_logit_diff'][i]:.2f} |")  # fmt: skip
        worst = max(
            abs(x - y)
            for k in ("logit_diff", "control_logit_diff")
            for x, y in zip(o[k], n[k], strict=True)
        )
        print(f"max |change| of the curves: {worst:.3g}")
        for key, value in new["metrics"]["summary"].items():
            before = old["metrics"]["summary"].get(key, math.nan)
            print(f"summary {key}: old {before:.4g}, new {value:.4g}")
        same_tables = old["metrics"].get("tables") == new["metrics"].get("tables")
        print(f"greedy generations table identical: {same_tables}")
        if args.write:
            atomic_write_bytes(path, (out / "metrics.json").read_bytes())
            curve_png = out / "steering_curve.png"
            if curve_png.exists():
                atomic_write_bytes(RESULTS / "steering_curve.png", curve_png.read_bytes())
            print(f"wrote {path}; figures of the run: {[p.name for p in out.glob('*.png')]}")


# ---------------------------------------------------------------------- direction
# The README's table "Steering along a direction from data" (asserted in tests/test_steering.py)
README_STEERING = {
    "prob": [0.0045, 0.0245, 0.0009],
    "logit_diff": [-1.26, 1.38, -3.49],
    "control_logit_diff": [-0.80, -1.48],
    "control_max_change": [0.46, 0.49, 0.30],
}


def direction(args: argparse.Namespace) -> None:
    """README steering table: mean-difference direction at layer 10 vs a random control."""
    import importlib.util

    from semhooks.estimators.directions import MeanDifference
    from semhooks.interventions import Steer
    from semhooks.studies.steering import steering_curve

    spec = importlib.util.spec_from_file_location(
        "steering_texts", RESULTS.parents[1] / "tests" / "test_steering.py"
    )
    assert spec is not None and spec.loader is not None
    texts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(texts)
    model = semhooks.load_model("smollm2-135m")
    layer = 10
    states = semhooks.extract_states(
        model, texts.POSITIVE + texts.NEGATIVE, layers=[layer], tokens="all", progress=False
    )
    d = MeanDifference(layer=layer).fit(states, [1] * 6 + [0] * 6)
    ctrl_changes = []
    for seed in (0, 1, 2):
        curve = steering_curve(
            model, texts.NEUTRAL, Steer(d, layers=layer), [-1.0, 1.0], texts.BAD,
            contrast_tokens=texts.GOOD, seed=seed,
        )  # fmt: skip
        ctrl_changes.append(curve.effect("logit_diff")[1])
        if seed == 0:
            first = curve
    new = {
        "prob": [first.baseline_prob, *first.prob],
        "logit_diff": [first.baseline_logit_diff, *first.logit_diff],
        "control_logit_diff": list(first.control_logit_diff),
        "control_max_change": ctrl_changes,
    }
    for key, old in README_STEERING.items():
        got = ", ".join(f"{float(x):.4g}" for x in new[key])
        print(f"{key}: README {old}, now [{got}]")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="figure", required=True)
    p_wic = sub.add_parser("wic", help=wic.__doc__)
    p_wic.add_argument("--model", choices=list(WIC_MODELS), required=True)
    p_wic.add_argument("--n-fit", type=int, default=1000)
    p_pool = sub.add_parser("pooling", help=pooling.__doc__)
    p_pool.add_argument("--model", choices=list(bench_pooling.MODELS), required=True)
    p_pool.add_argument("--layers", type=int, nargs="+", default=None)
    p_pool.add_argument("--no-transfer", action="store_true")
    p_vocab = sub.add_parser("vocab", help=vocab.__doc__)
    p_vocab.add_argument(
        "--datasets", nargs="+", choices=VOCAB_DATASETS,
        default=["amazon_cells", "imdb", "yelp", "uci-domain"],
    )  # fmt: skip
    sub.add_parser("steering", help=steering.__doc__)
    sub.add_parser("direction", help=direction.__doc__)
    sub.add_parser("basis", help=basis.__doc__)
    sub.add_parser("relations", help=relations.__doc__)
    for p in (
        p_wic,
        p_pool,
        p_vocab,
        *(sub.choices[k] for k in ("steering", "direction", "basis", "relations")),
    ):
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--write", action="store_true", help="replace the stored files")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    jobs = {"wic": wic, "pooling": pooling, "vocab": vocab, "steering": steering}
    jobs["direction"], jobs["basis"], jobs["relations"] = direction, basis, relations
    jobs[args.figure](args)


if __name__ == "__main__":
    main()
