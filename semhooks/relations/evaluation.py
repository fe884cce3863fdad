"""Evaluating LREs and LRCs: faithfulness, causality, concept swaps, baselines, tables, sweeps.

- :func:`faithfulness` (Hernandez et al. 2023): on held-out prompts, the LRE's top-1
  decoded token (``LRE(s)`` through final norm and unembedding) equals the model's own top-1
  next token.
- :func:`hernandez_causality`: for a prompt with object ``o`` and a target prompt with object
  ``o'``, add ``delta s = W^+_rho (o' - o)`` (``o``, ``o'`` the model's own object-layer
  states of the two prompts, ``W^+_rho`` the rank-``rho`` pseudo-inverse) to the subject
  state at the subject layer; success when the model's top-1 next token becomes the first
  token of ``o'``.
- :func:`causal_swap` (Chanin et al. 2024): at the subject's last token,
  ``h <- h + alpha ||h|| (v_target - v_source)`` at every layer or one layer (through
  :class:`semhooks.interventions.Swap`); success when the target answer's probability (the
  minimum over its tokens, teacher forced) beats the original answer's. The control swaps
  random unit vectors at the same angle (``interventions.random_control``).
- :func:`fit_baselines`: logistic regression, linear SVM and mean-difference directions on
  the same subject-layer states and split, evaluated by accuracy and by the same swap.
- :func:`evaluate_relation` / :func:`evaluate_relations` make the tables (per relation and
  per category); :func:`sweep` runs layer and rank sweeps with a ``.plot()``.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.relations.checks import check_prompts
from semhooks.relations.data import Relation, load
from semhooks.relations.lrc import LRC, Concept
from semhooks.relations.lre import LRE
from semhooks.relations.prompts import (
    RelationPrompt,
    build_prompts,
    encode_prompts,
    prompt_states,
    split,
    validate,
)

__all__ = [
    "Baseline",
    "CausalityResult",
    "FaithfulnessResult",
    "RelationEvaluation",
    "SwapResult",
    "SweepResult",
    "causal_swap",
    "evaluate_relation",
    "evaluate_relations",
    "faithfulness",
    "fit_baselines",
    "hernandez_causality",
    "sweep",
    "table_markdown",
]


# ---------------------------------------------------------------------- LRE metrics
@dataclass
class FaithfulnessResult:
    """LRE faithfulness on prompts.

    ``score``: fraction where the LRE's top-1 token equals the model's top-1 token;
    ``object_score``: fraction where the LRE's top-1 token is a non-empty prefix of the
    answer ``" " + object`` (Hernandez et al.'s criterion against the dataset).
    """

    score: float
    object_score: float
    n: int
    lre_tokens: list[str]
    model_tokens: list[str]

    def __repr__(self) -> str:
        return (
            f"FaithfulnessResult(score={self.score:.3f}, object_score={self.object_score:.3f}, "
            f"n={self.n})"
        )


def _is_prefix(token: str, answer: str) -> bool:
    tok = token.strip()
    return bool(tok) and answer.strip().lower().startswith(tok.lower())


def faithfulness(
    lre: LRE, model: Any, prompts: Sequence[RelationPrompt], *, batch_size: int = 16
) -> FaithfulnessResult:
    """Top-1 agreement between the decoded LRE and the model on (held-out) prompts."""
    lre._require_fit()
    adapter = adapt(model)
    prompts = check_prompts(prompts, "faithfulness")
    st = prompt_states(
        adapter,
        prompts,
        lre.subject_layer_,
        aggregation="first",
        with_answer=False,
        batch_size=batch_size,
        top1=True,
    )
    assert st.top1 is not None
    pred = lre.logits(st.subject[lre.subject_layer_], model=adapter).argmax(-1)
    tok = adapter.tokenizer
    lre_tokens = [tok.decode([int(i)]) for i in pred]
    model_tokens = [tok.decode([int(i)]) for i in st.top1]
    same = (pred == st.top1).float().mean().item()
    obj = float(
        np.mean([_is_prefix(t, p.answer) for t, p in zip(lre_tokens, prompts, strict=True)])
    )
    return FaithfulnessResult(same, obj, len(prompts), lre_tokens, model_tokens)


@dataclass
class CausalityResult:
    """Hernandez causality: ``score`` (edits that make the target the top-1), the random
    control of equal norm (``control_score``), ``n`` pairs and the rank used."""

    score: float
    control_score: float
    n: int
    rank: int
    targets: list[str] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"CausalityResult(score={self.score:.3f}, control_score={self.control_score:.3f}, "
            f"n={self.n}, rank={self.rank})"
        )


def _pick_targets(prompts: Sequence[RelationPrompt], pool: Sequence[str], seed: int) -> list[str]:
    """For each prompt an object from ``pool`` other than its own (seeded)."""
    rng = random.Random(seed)
    out = []
    for p in prompts:
        others = [o for o in pool if o != p.object]
        if not others:
            raise ValueError(
                f"no target object other than {p.object!r} to edit towards; causality needs "
                "prompts (or concepts) with at least two objects"
            )
        out.append(rng.choice(others))
    return out


def _add_at(deltas: Tensor, positions: Tensor) -> Any:
    """A hook adding ``deltas[b]`` at ``positions[b]`` of row ``b``."""

    def hook(x: Tensor, hook: Any = None) -> Tensor:
        x = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        pos = positions.to(x.device)
        x[rows, pos] = x[rows, pos] + deltas.to(x.device, x.dtype)
        return x

    return hook


def hernandez_causality(
    lre: LRE,
    model: Any,
    prompts: Sequence[RelationPrompt],
    *,
    rank: int,
    seed: int = 0,
    batch_size: int = 16,
) -> CausalityResult:
    """Rank-``rank`` inverse edits ``delta s = W^+ (o' - o)``; success = top-1 becomes ``o'``.

    Each prompt is paired (seeded) with a target prompt of another object; ``o`` and ``o'``
    are the model's own object-layer states (the LRE's aggregation). The control adds a
    random vector of the same norm as ``delta s``.
    """
    lre._require_fit()
    adapter = adapt(model)
    prompts = check_prompts(prompts, "hernandez_causality")
    w_inv = lre.invert(rank)
    rng = random.Random(seed)
    pairs = []
    for _i, p in enumerate(prompts):
        others = [j for j, q in enumerate(prompts) if q.object != p.object]
        if not others:
            raise ValueError(
                "hernandez_causality needs prompts with at least two different objects"
            )
        pairs.append(rng.choice(others))
    st = prompt_states(
        adapter,
        prompts,
        lre.object_layer_,
        aggregation=lre.object_aggregation,
        batch_size=batch_size,
    )
    o = st.object[lre.object_layer_]
    deltas = (o[pairs] - o) @ w_inv.T
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn(deltas.shape, generator=gen)
    rand = rand / rand.norm(dim=-1, keepdim=True) * deltas.norm(dim=-1, keepdim=True)
    enc_answers = encode_prompts(adapter, prompts, with_answer=True)
    first_ids = torch.tensor([a[0] for a in enc_answers.answer_ids])
    target_ids = first_ids[pairs]
    hook_name = adapter.hook_name("resid_post", lre.subject_layer_)
    hits: dict[str, list[bool]] = {"edit": [], "control": []}
    preds: list[int] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(range(start, min(start + batch_size, len(prompts))))
        enc = encode_prompts(adapter, [prompts[i] for i in chunk], with_answer=False)
        last = torch.tensor([pos[0] for pos in enc.object_positions])
        rows = torch.arange(len(chunk))
        for name, d in (("edit", deltas), ("control", rand)):
            hook = _add_at(d[chunk], enc.subject_positions)
            logits = adapter.forward(enc.batch, [(hook_name, hook)])
            assert logits is not None
            top = logits[rows, last].argmax(-1).cpu()
            hits[name].extend((top == target_ids[chunk]).tolist())
            if name == "edit":
                preds.extend(top.tolist())
    tok = adapter.tokenizer
    return CausalityResult(
        score=float(np.mean(hits["edit"])),
        control_score=float(np.mean(hits["control"])),
        n=len(prompts),
        rank=rank,
        targets=[prompts[j].object for j in pairs],
        predictions=[tok.decode([i]) for i in preds],
    )


# ---------------------------------------------------------------------- concept swap
@dataclass
class SwapResult:
    """Causal swap outcome.

    ``score``: fraction of prompts where the target answer's probability (min over its
    tokens) beats the source answer's after the swap; ``control_score``: the same with the
    random-direction control; ``baseline_score``: the same without any intervention.
    """

    score: float
    control_score: float
    baseline_score: float
    n: int
    alpha: float
    layers: Any
    targets: list[str] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"SwapResult(score={self.score:.3f}, control_score={self.control_score:.3f}, "
            f"baseline_score={self.baseline_score:.3f}, n={self.n}, alpha={self.alpha})"
        )


def _concept_vectors(concepts: Any) -> dict[str, Tensor]:
    if isinstance(concepts, LRC):
        concepts._require_fit()
        return {o: concepts.vectors_[i] for i, o in enumerate(concepts.classes_)}
    if isinstance(concepts, Baseline):
        return {o: concepts.vectors[i] for i, o in enumerate(concepts.classes)}
    if isinstance(concepts, Mapping):
        out = {}
        for k, v in concepts.items():
            vec = v.vector if isinstance(v, Concept) else v
            out[str(k)] = torch.as_tensor(vec, dtype=torch.float32)
        return out
    raise TypeError(
        "concepts must be a fitted LRC, a Baseline, or a {object: vector or Concept} mapping"
    )


def _answer_min_prob(logits: Tensor, positions: list[list[int]], ids: list[list[int]]) -> Tensor:
    logp = logits.float().log_softmax(-1)
    out = []
    for r, (pos, tid) in enumerate(zip(positions, ids, strict=True)):
        out.append(logp[r, pos, tid].min())
    return torch.stack(out).cpu()


def causal_swap(
    concepts: Any,
    model: Any,
    prompts: Sequence[RelationPrompt],
    *,
    alpha: float = 0.05,
    layers: int | Sequence[int] | Literal["all"] = "all",
    targets: Sequence[str] | None = None,
    control: bool = True,
    scale: Literal["norm", "projection"] = "norm",
    seed: int = 0,
    batch_size: int = 8,
) -> SwapResult:
    """Swap each prompt's concept for another object's and check the answer flips.

    At the subject's last token, ``h <- h + alpha ||h|| (v_target - v_source)`` at ``layers``
    (``"all"``, one layer or a list; site ``resid_post``), via
    :class:`semhooks.interventions.Swap`. Success when ``min_t p(target_t) > min_t
    p(source_t)`` over the answers' tokens, teacher forced (multi-token objects work).

    Args:
        concepts: a fitted :class:`LRC`, a :class:`Baseline`, or ``{object: vector}``.
        prompts: test prompts whose objects have concepts.
        targets: one target object per prompt (default: a random other object, seeded).
        control: also run the random-direction control (random unit vectors at the same
            angle as each source/target pair).
        scale: ``"norm"`` (Chanin et al.: ``alpha ||h||``) or ``"projection"``
            (``alpha (h . v_source)``; see :class:`semhooks.interventions.Swap`).
    """
    from semhooks.interventions import Swap, intervene, random_control

    adapter = adapt(model)
    prompts = check_prompts(prompts, "causal_swap")
    vecs = _concept_vectors(concepts)
    missing = sorted({p.object for p in prompts} - set(vecs))
    if missing:
        raise ValueError(
            f"no concept for objects {missing[:5]}: causal_swap needs prompts whose objects "
            "have concepts (test prompts of the same relation)"
        )
    if targets is None:
        targets = _pick_targets(prompts, sorted(vecs), seed)
    targets = list(targets)
    if len(targets) != len(prompts):
        raise ValueError(f"got {len(targets)} targets for {len(prompts)} prompts")
    layer_spec: Any = "all" if layers == "all" else layers
    success: list[bool] = []
    ctrl: list[bool] = []
    base: list[bool] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        tgt = targets[start : start + batch_size]
        # two rows per prompt: the original answer, then the target answer
        rows = []
        for p, t in zip(chunk, tgt, strict=True):
            rows.append(p)
            rows.append(RelationPrompt(p.text, p.subject, t, p.relation, p.template, p.examples))
        enc = encode_prompts(adapter, rows, with_answer=True)
        v_from = torch.stack([vecs[p.object] for p in chunk for _ in range(2)])
        v_to = torch.stack([vecs[t] for t in tgt for _ in range(2)])
        positions = [[int(p)] for p in enc.subject_positions]
        swap = Swap(v_from, v_to, alpha=alpha, scale=scale, layers=layer_spec, positions=positions)
        runs: list[tuple[list[bool], Any]] = [(base, None), (success, swap)]
        if control:
            runs.append((ctrl, random_control(swap, seed=seed + start)))
        for out, iv in runs:
            if iv is None:
                logits = adapter.forward(enc.batch)
            else:
                with intervene(adapter.model, iv, attention_mask=enc.batch.attention_mask):
                    logits = adapter.forward(enc.batch)
            assert logits is not None
            p_min = _answer_min_prob(logits, enc.object_positions, enc.answer_ids)
            out.extend((p_min[1::2] > p_min[0::2]).tolist())
    return SwapResult(
        score=float(np.mean(success)),
        control_score=float(np.mean(ctrl)) if control else float("nan"),
        baseline_score=float(np.mean(base)),
        n=len(prompts),
        alpha=alpha,
        layers=layers,
        targets=targets,
        success=success,
    )


# ---------------------------------------------------------------------- baselines
@dataclass
class Baseline:
    """A linear baseline at the subject layer: a classifier plus one direction per object.

    ``kind``: ``"logistic"``, ``"svm"`` or ``"mean_difference"``. ``vectors`` ``[C, d]``
    are unit directions (the per-class weight vectors; for two classes ``+w`` and ``-w``),
    used for the causal swap; :meth:`predict` uses the fitted classifier (with intercepts).
    """

    kind: str
    classes: list[str]
    vectors: Float[Tensor, "c d"]
    estimator: Any = None

    def predict_states(self, states: Float[Tensor, "n d"]) -> list[str]:
        h = torch.atleast_2d(torch.as_tensor(states, dtype=torch.float32))
        if self.estimator is None:
            idx = (h @ self.vectors.T).argmax(-1).tolist()
            return [self.classes[i] for i in idx]
        return [str(c) for c in self.estimator.predict(h.numpy())]


def fit_baselines(
    states: Float[Tensor, "n d"],
    objects: Sequence[str],
    kinds: Sequence[str] = ("logistic", "svm", "mean_difference"),
    *,
    seed: int = 0,
) -> dict[str, Baseline]:
    """Fit the baselines on subject-layer training states and their objects.

    - ``logistic``: multinomial logistic regression (scikit-learn, L2, C = 1) on
      standardised states; directions are the class weights mapped back to raw states.
    - ``svm``: one-vs-rest linear SVM (``LinearSVC``, C = 1) on standardised states.
    - ``mean_difference``: ``v_o = normalize(mean(h | o) - mean(h | not o))``, classify by
      ``argmax_o v_o . h`` (like the LRC).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    X = torch.as_tensor(states, dtype=torch.float32)
    y = np.asarray(list(objects))
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise ValueError("baselines need training states of at least two objects")
    out: dict[str, Baseline] = {}
    for kind in kinds:
        if kind == "mean_difference":
            vecs = []
            for c in classes:
                inside = X[torch.as_tensor(y == c)]
                outside = X[torch.as_tensor(y != c)]
                vecs.append(inside.mean(0) - outside.mean(0))
            V = torch.stack(vecs)
            out[kind] = Baseline(kind, classes, V / V.norm(dim=-1, keepdim=True))
            continue
        if kind == "logistic":
            clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
        elif kind == "svm":
            clf = LinearSVC(C=1.0, max_iter=5000, random_state=seed)
        else:
            raise ValueError(f"unknown baseline {kind!r}; use logistic, svm or mean_difference")
        pipe = make_pipeline(StandardScaler(), clf).fit(X.numpy(), y)
        scale = pipe[0].scale_
        coef = np.asarray(pipe[-1].coef_) / scale  # back to raw-state coordinates
        if coef.shape[0] == 1:  # binary: one weight vector for classes[1]
            coef = np.concatenate([-coef, coef])
        model_classes = [str(c) for c in pipe[-1].classes_]
        order = [model_classes.index(c) for c in classes]
        V = torch.as_tensor(coef[order], dtype=torch.float32)
        out[kind] = Baseline(kind, classes, V / V.norm(dim=-1, keepdim=True), pipe)
    return out


# ---------------------------------------------------------------------- one relation
@dataclass
class RelationEvaluation:
    """Accuracy and causality of the LRC and the baselines on one relation's test split.

    ``rows``: one dict per method with ``method``, ``accuracy``, ``causality``,
    ``control`` (random-direction swap), ``n_test``; plus the LRE's ``faithfulness`` and
    the validation yield ``n_valid``/``n_prompts``.
    """

    relation: str
    category: str | None
    rows: list[dict[str, Any]]
    n_prompts: int
    n_valid: int
    n_train: int
    n_test: int
    n_objects: int
    lrc: LRC | None = None
    faithfulness: float | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def row(self, method: str) -> dict[str, Any]:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)

    def to_markdown(self) -> str:
        return table_markdown([self])


def evaluate_relation(
    model: Any,
    relation: Relation | str,
    *,
    subject_layer: int,
    object_layer: int,
    rank: int,
    n_shot: int = 3,
    method: Literal["exact", "randomized"] = "exact",
    object_aggregation: Literal["mean", "first"] = "mean",
    n_lre_prompts: int = 20,
    max_prompts: int | None = None,
    train_fraction: float = 0.5,
    alpha: float = 0.05,
    swap_layers: int | Sequence[int] | Literal["all"] = "all",
    baselines: Sequence[str] = ("logistic", "svm", "mean_difference"),
    causality: bool = True,
    beta: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    **lrc_kwargs: Any,
) -> RelationEvaluation:
    """Build, validate and split prompts; fit the LRC and baselines; score them on the test
    split (accuracy, causal swap with control) and the LRE's faithfulness.

    Args:
        max_prompts: cap on the prompts built (a seeded sample of subjects).
        causality: run the causal swaps (two teacher-forced forwards per prompt and method).
        beta: the LRE slope scale used for faithfulness (Hernandez et al.: 2-8).
    """
    t0 = time.perf_counter()
    rel = relation if isinstance(relation, Relation) else load(relation)
    subjects = None
    if max_prompts is not None and len(rel.samples) > max_prompts:
        rng = random.Random(seed)
        subjects = sorted(rng.sample(rel.subjects, max_prompts), key=rel.subjects.index)
    prompts = build_prompts(rel, n_shot, subjects=subjects, seed=seed)
    report = validate(model, prompts, progress=progress)
    kept = report.kept
    train, test = split(kept, train_fraction, seed=seed)
    if not test:
        raise ValueError(
            f"relation {rel.name!r}: all {len(kept)} valid prompts went to training (every "
            "object has a single valid prompt); nothing to test on"
        )
    lrc = LRC(
        subject_layer,
        object_layer,
        rank,
        object_aggregation=object_aggregation,
        n_lre_prompts=n_lre_prompts,
        method=method,
        seed=seed,
        progress=progress,
        **lrc_kwargs,
    ).fit(model, train)
    layer = lrc.layer_
    st_train = prompt_states(model, train, layer, aggregation="first", with_answer=False)
    st_test = prompt_states(model, test, layer, aggregation="first", with_answer=False)
    h_train, h_test = st_train.subject[layer], st_test.subject[layer]
    truth = [p.object for p in test]
    methods: list[tuple[str, Any]] = [("LRC", lrc)]
    if baselines:
        fitted = fit_baselines(h_train, [p.object for p in train], baselines, seed=seed)
        methods += [(k, b) for k, b in fitted.items()]
    rows = []
    # test prompts whose object has a concept: all of them by construction of the split
    for name, est in methods:
        pred = est.predict_states(h_test)
        row: dict[str, Any] = {
            "method": name,
            "accuracy": float(np.mean([a == b for a, b in zip(pred, truth, strict=True)])),
            "n_test": len(test),
        }
        if causality:
            sw = causal_swap(est, model, test, alpha=alpha, layers=swap_layers, seed=seed)
            row.update(causality=sw.score, control=sw.control_score, baseline=sw.baseline_score)
        rows.append(row)
    lre = copy.copy(lrc.lre_).set_params(beta=beta)
    faith = faithfulness(lre, model, test).score
    return RelationEvaluation(
        relation=rel.name,
        category=rel.category,
        rows=rows,
        n_prompts=len(prompts),
        n_valid=len(kept),
        n_train=len(train),
        n_test=len(test),
        n_objects=len({p.object for p in kept}),
        lrc=lrc,
        faithfulness=faith,
        seconds=time.perf_counter() - t0,
        settings={
            "subject_layer": subject_layer,
            "object_layer": object_layer,
            "rank": rank,
            "n_shot": n_shot,
            "method": method,
            "alpha": alpha,
            "swap_layers": swap_layers,
            "beta": beta,
            "seed": seed,
        },
    )


def evaluate_relations(
    model: Any, relations: Sequence[Relation | str], **kwargs: Any
) -> list[RelationEvaluation]:
    """:func:`evaluate_relation` for each relation (skipping, with a note, those that fail
    validation or have a single object); see :func:`table_markdown`."""
    from semhooks.relations.prompts import NoValidPromptsError

    out = []
    for rel in relations:
        try:
            out.append(evaluate_relation(model, rel, **kwargs))
        except (NoValidPromptsError, ValueError) as exc:
            name = rel if isinstance(rel, str) else rel.name
            print(f"[semhooks] skipped relation {name!r}: {exc}")
    return out


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def table_markdown(
    results: Sequence[RelationEvaluation], *, by_category: bool = True, ci: bool = False
) -> str:
    """Markdown tables: one row per relation (accuracy / causality per method, n_test), then
    per category (unweighted mean over its relations) and overall.

    ``ci=True`` writes the 95% Wilson interval over the ``n_test`` prompts beside every
    proportion of the per-relation rows (faithfulness, accuracy, causal, control); the
    category rows are unweighted means over relations and carry none.
    """
    if not results:
        return "(no relations evaluated)"
    from semhooks.studies.stats import wilson_interval

    methods = [r["method"] for r in results[0].rows]
    has_causal = "causality" in results[0].rows[0]
    head = ["relation", "category", "n_test", "n_obj", "LRE faith."]
    for m in methods:
        head += [f"{m} acc"] + ([f"{m} causal"] if has_causal else [])
    if has_causal:
        head.append("LRC control")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(r: RelationEvaluation) -> list[Any]:
        row: list[Any] = [r.relation, r.category, r.n_test, r.n_objects, r.faithfulness]
        for m in methods:
            mr = r.row(m)
            row += [mr["accuracy"]] + ([mr.get("causality")] if has_causal else [])
        if has_causal:
            row.append(r.row("LRC").get("control"))
        return row

    def with_ci(value: Any, n: int) -> str:
        if not ci or not isinstance(value, float) or not np.isfinite(value) or n < 1:
            return _fmt(value)
        low, high = wilson_interval(min(n, max(0, round(value * n))), n)
        return f"{value:.2f} [{low:.2f}, {high:.2f}]"

    for r in results:
        row = cells(r)
        text = [_fmt(c) for c in row[:4]] + [with_ci(c, r.n_test) for c in row[4:]]
        lines.append("| " + " | ".join(text) + " |")
    if by_category:
        groups: dict[str, list[RelationEvaluation]] = {}
        for r in results:
            groups.setdefault(r.category or "other", []).append(r)
        groups["all"] = list(results)
        lines += ["", "| category | relations | n_test | " + " | ".join(head[4:]) + " |"]
        lines.append("|" + "---|" * (len(head) - 1) + "")
        for cat, rs in groups.items():
            rows = [cells(r)[4:] for r in rs]
            means = [
                float(np.nanmean([np.nan if v is None else v for v in col]))
                for col in zip(*rows, strict=True)
            ]
            n_test = sum(r.n_test for r in rs)
            lines.append(
                f"| {cat} | {len(rs)} | {n_test} | " + " | ".join(_fmt(m) for m in means) + " |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------- sweeps
@dataclass
class SweepResult:
    """LRC accuracy (and causality) over subject layers and ranks for one relation.

    ``records``: dicts with ``subject_layer``, ``rank``, ``accuracy``, optionally
    ``causality`` and ``control``, and ``n_test``.
    """

    relation: str
    object_layer: int
    records: list[dict[str, Any]]

    def table(self) -> str:
        keys = list(self.records[0]) if self.records else []
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in self.records]
        return "\n".join(lines)

    def plot(self, ax: Any = None, metric: str = "accuracy") -> Any:
        """Lines of ``metric`` against subject layer, one per rank; returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        ranks = sorted({r["rank"] for r in self.records})
        for rank in ranks:
            pts = sorted(
                (r["subject_layer"], r[metric])
                for r in self.records
                if r["rank"] == rank and metric in r
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"rank {rank}")
        ax.set_xlabel("subject layer")
        ax.set_ylabel(metric)
        ax.set_title(f"LRC {metric}: {self.relation} (object layer {self.object_layer})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        return ax


def sweep(
    model: Any,
    relation: Relation | str,
    *,
    subject_layers: Sequence[int],
    object_layer: int,
    ranks: Sequence[int],
    n_shot: int = 3,
    method: Literal["exact", "randomized"] = "exact",
    max_prompts: int | None = None,
    causality: bool = False,
    alpha: float = 0.05,
    swap_layers: int | Sequence[int] | Literal["all"] = "all",
    seed: int = 0,
    progress: bool = False,
) -> SweepResult:
    """LRC accuracy for every (subject layer, rank), on one validated split.

    One LRE per subject layer (fitted at the largest rank for ``method="randomized"``);
    each rank only re-inverts it.
    """
    rel = relation if isinstance(relation, Relation) else load(relation)
    subjects = None
    if max_prompts is not None and len(rel.samples) > max_prompts:
        rng = random.Random(seed)
        subjects = sorted(rng.sample(rel.subjects, max_prompts), key=rel.subjects.index)
    prompts = build_prompts(rel, n_shot, subjects=subjects, seed=seed)
    kept = validate(model, prompts, progress=progress).kept
    train, test = split(kept, seed=seed)
    if not test:
        raise ValueError(f"relation {rel.name!r} has no test prompts after the split")
    ranks = sorted(ranks)
    records = []
    for layer in subject_layers:
        base = LRC(
            layer, object_layer, max(ranks), method=method, seed=seed, progress=progress
        ).fit(model, train)
        h = base.subject_states(model, test)
        for rank in ranks:
            lrc = base if rank == base.rank else base.with_rank(rank)
            pred = lrc.predict_states(h)
            rec: dict[str, Any] = {
                "subject_layer": base.layer_,
                "rank": rank,
                "accuracy": float(
                    np.mean([a == p.object for a, p in zip(pred, test, strict=True)])
                ),
                "n_test": len(test),
            }
            if causality:
                sw = causal_swap(lrc, model, test, alpha=alpha, layers=swap_layers, seed=seed)
                rec.update(causality=sw.score, control=sw.control_score)
            records.append(rec)
    return SweepResult(rel.name, object_layer, records)
