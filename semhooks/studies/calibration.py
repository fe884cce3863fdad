"""Semantic calibration (Gu et al. 2024, arXiv 2401.16184; METHODS.md section 4) and its baselines.

The language model stays frozen. A text is read as a prompt (``"Review: {text}\\nSentiment:"``)
and represented by the state of its last token at a layer, put through the model's final norm
(by default the last layer: the state the unembedding reads, which is where the semantic basis
lives). :class:`SemanticCalibrator` trains a small adapter on these states so that the adapted
states point at the semantic basis vector ``s_y`` of their label word::

    z = a(h),   logits_c = cos(z, s_c) / T,   loss = cross_entropy(logits_c, y)
    predict(h) = argmax_c cos(a(h), s_c)                      (nearest label basis)

The adapter is a residual MLP ``a(h) = h' + W_2 GELU(W_1 LayerNorm(h'))`` on the RMS-normalised
state ``h' = h / rms(h)``, ``d -> 2d -> d``, with ``W_2 = 0`` at the start so an untrained
calibrator predicts the nearest label basis of the raw state.

:func:`calibration_study` runs it beside the baselines of the paper on one train/test split:
zero-shot label-word logits of the model, k-shot in-context prompting, k-nearest neighbours and
logistic regression on the raw states; accuracy and the adjusted Rand index of the predicted
clusters (for the semantic rows: the nearest-label-basis clusters before and after calibration).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.metrics import accuracy_score, adjusted_rand_score
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.data.columns import from_columns
from semhooks.estimators.calibrator import SemanticCalibrator
from semhooks.studies.calibration_results import (
    CalibrationResult,
    MethodScore,
    plot_results,
    results_table,
)
from semhooks.studies.vocab import SemanticBasis, label_basis

__all__ = [
    "DEFAULT_TEMPLATE",
    "CalibrationResult",
    "MethodScore",
    "SemanticCalibrator",
    "calibration_study",
    "icl_prompt",
    "label_word_logits",
    "plot_results",
    "prompt_states",
    "results_table",
    "semantic_predict",
]

DEFAULT_TEMPLATE = "Review: {text}\nSentiment:"
"""The prompt around each text; the state of its last token is the input."""


# ---------------------------------------------------------------------- states from prompts
def _format(template: str, texts: Sequence[str]) -> list[str]:
    if "{text}" not in template:
        raise ValueError(f"template must contain '{{text}}', got {template!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    return [template.replace("{text}", t) for t in texts]


def _encode(
    model: Any,
    prompts: list[str],
    *,
    layers: Sequence[int],
    label_ids: Sequence[int] | None,
    apply_final_norm: bool,
    batch_size: int,
    progress: bool,
) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    """Last-token states per layer (``{layer: [n, d]}``, one forward pass for all of them) and
    the next-token logits of ``label_ids`` (``[n, k]``) when asked."""
    from semhooks.extraction.states import extract_states

    adapter = adapt(model)
    wanted = adapter.resolve_layers(list(layers))
    last = adapter.n_layers - 1
    run = sorted({*wanted, last}) if label_ids is not None else wanted
    states = extract_states(
        adapter, prompts, run, tokens="last", pool="last", batch_size=batch_size, progress=progress
    )
    out: dict[int, np.ndarray] = {}
    logits = None
    with torch.no_grad():
        for layer in wanted:
            h = states.layer(layer)
            if apply_final_norm:
                h = torch.cat([adapter.final_norm(c).float().cpu() for c in h.split(1024)])
            out[layer] = h.float().numpy()
        if label_ids is not None:
            ids = torch.as_tensor(list(label_ids), dtype=torch.long)
            hl = states.layer(last)
            logits = torch.cat(
                [adapter.unembed(c).float().cpu()[:, ids] for c in hl.split(256)]
            ).numpy()
    return out, logits


def prompt_states(
    model: Any,
    texts: Sequence[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    layer: int = -1,
    apply_final_norm: bool = True,
    batch_size: int = 16,
    progress: bool = True,
) -> Float[np.ndarray, "n d_model"]:
    """States of the last token of ``template.format(text=...)`` at ``layer`` (``resid_post``).

    With ``apply_final_norm`` (default) the model's final norm is applied, so the states live
    where the unembedding and the semantic basis do (for the last layer these are exactly the
    vectors the model unembeds).

    Returns:
        ``float32 [n, d_model]``.
    """
    states, _ = _encode(
        model,
        _format(template, texts),
        layers=[layer],
        label_ids=None,
        apply_final_norm=apply_final_norm,
        batch_size=batch_size,
        progress=progress,
    )
    return next(iter(states.values()))


def label_word_logits(
    model: Any,
    prompts: Sequence[str],
    label_token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> Float[np.ndarray, "n k"]:
    """The model's own next-token logits of the label tokens after each (complete) prompt."""
    _, logits = _encode(
        model,
        list(prompts),
        layers=[-1],
        label_ids=list(label_token_ids),
        apply_final_norm=False,
        batch_size=batch_size,
        progress=progress,
    )
    assert logits is not None
    return logits


def icl_prompt(
    demos: Sequence[tuple[str, str]],
    text: str,
    *,
    template: str = DEFAULT_TEMPLATE,
    label_template: str = " {}",
    separator: str = "\n\n",
) -> str:
    """A k-shot prompt: each ``(text, label word)`` demonstration filled in, then the query.

    >>> icl_prompt([("great", "positive")], "awful")
    'Review: great\\nSentiment: positive\\n\\nReview: awful\\nSentiment:'
    """
    shots = [template.replace("{text}", t) + label_template.format(word) for t, word in demos]
    return separator.join([*shots, template.replace("{text}", text)])


def _balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices, as class-balanced as the class sizes allow, in ascending order."""
    rng = np.random.default_rng(seed)
    groups = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < n:
        for g in groups:
            if g and len(chosen) < n:
                chosen.append(int(g.pop()))
    return np.sort(np.array(chosen, dtype=np.int64))


def _pick_demos(
    texts: Sequence[str], labels: np.ndarray, k: int, seed: int, max_chars: int
) -> list[int]:
    """``k`` demonstrations, classes taken in turn, short texts preferred, shuffled."""
    rng = np.random.default_rng(seed)
    n_classes = int(labels.max()) + 1
    short = np.array([len(t) <= max_chars for t in texts])
    pools = []
    for c in range(n_classes):
        members = np.flatnonzero((labels == c) & short)
        if len(members) == 0:
            members = np.flatnonzero(labels == c)
        pools.append(list(rng.permutation(members)))
    order = list(rng.permutation(n_classes))
    chosen: list[int] = []
    while len(chosen) < k and any(pools):
        for c in order:
            if pools[c] and len(chosen) < k:
                chosen.append(int(pools[c].pop()))
    return [chosen[i] for i in rng.permutation(len(chosen))]


def calibration_study(
    model: Any,
    train: Any,
    test: Any,
    label_words: Sequence[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    label_template: str = " {}",
    layer: int | Sequence[int] = -1,
    k_shot: int = 4,
    icl_limit: int | None = 300,
    demo_max_chars: int = 120,
    knn_k: int = 10,
    seed: int = 0,
    calibrator_params: dict[str, Any] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    name: str | None = None,
) -> Any:
    """Semantic calibration beside its baselines, on one train/test split.

    Methods (rows, in order):

    1. zero-shot label-word logits: argmax of the model's next-token logits restricted to the
       label tokens after the prompt;
    2. ``k_shot``-shot in-context prompting: the same, with ``k_shot`` demonstrations from
       ``train`` (classes in turn, texts of at most ``demo_max_chars`` preferred) before the
       prompt, evaluated on a class-balanced subsample of ``icl_limit`` test items;
    3. k-nearest neighbours (cosine, ``knn_k``) on the raw states;
    4. logistic regression (standardised) on the raw states;
    5. nearest label basis on the raw states (the clusters *before* calibration);
    6. :class:`SemanticCalibrator` (the clusters *after*).

    States: last token of ``template`` at ``layer`` after the final norm (:func:`prompt_states`).
    Rows 1-2 read the model's output and do not depend on ``layer``.

    Args:
        train, test: :class:`semhooks.data.loaders.TextClassificationDataset` (``texts``,
            ``labels`` in ``0..k-1``, ``name``); label ``c`` is ``label_words[c]``.
        label_words: one word per class; the first token of ``label_template.format(w)``.
        layer: one layer, or several (one forward pass serves them all).

    Returns:
        A :class:`CalibrationResult`, or a list of them (one per layer) when ``layer`` is a
        list.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = from_columns(train, "labelled"), from_columns(test, "labelled")
    adapter = adapt(model)
    layers = adapter.resolve_layers([layer] if isinstance(layer, int) else list(layer))
    basis = label_basis(adapter, label_words, template=label_template)
    ids = basis.token_ids.tolist()
    y_tr = np.asarray(train.labels, dtype=np.int64)
    y_te = np.asarray(test.labels, dtype=np.int64)
    k = len(label_words)
    for split, y in (("train", y_tr), ("test", y_te)):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(
                f"{split} labels run outside 0..{k - 1} but {k} label words were given "
                f"({list(label_words)})"
            )

    def score(method: str, pred: np.ndarray, gold: np.ndarray, t0: float) -> MethodScore:
        return MethodScore(
            method,
            float(accuracy_score(gold, pred)),
            float(adjusted_rand_score(gold, pred)),
            len(gold),
            time.perf_counter() - t0,
        )

    t0 = time.perf_counter()
    x_tr, _ = _encode(
        adapter,
        _format(template, train.texts),
        layers=layers,
        label_ids=None,
        apply_final_norm=True,
        batch_size=batch_size,
        progress=progress,
    )
    t_train_states = time.perf_counter() - t0
    t0 = time.perf_counter()
    x_te, zs = _encode(
        adapter,
        _format(template, test.texts),
        layers=layers,
        label_ids=ids,
        apply_final_norm=True,
        batch_size=batch_size,
        progress=progress,
    )
    assert zs is not None
    shared = [score("zero-shot label-word logits", zs.argmax(-1), y_te, t0)]
    info: dict[str, Any] = {
        "label_tokens": basis.tokens,
        "label_token_ids": ids,
        "seconds_train_states": t_train_states,
    }
    if k_shot > 0:
        t0 = time.perf_counter()
        demo_idx = _pick_demos(train.texts, y_tr, k_shot, seed, max_chars=demo_max_chars)
        demos = [(train.texts[i], label_words[int(y_tr[i])]) for i in demo_idx]
        sub = np.arange(len(y_te))
        if icl_limit is not None and icl_limit < len(sub):
            sub = _balanced_indices(y_te, icl_limit, seed)
        prompts = [
            icl_prompt(demos, test.texts[i], template=template, label_template=label_template)
            for i in sub
        ]
        icl = label_word_logits(adapter, prompts, ids, batch_size=batch_size, progress=progress)
        shared.append(
            score(f"{len(demos)}-shot ICL label-word logits", icl.argmax(-1), y_te[sub], t0)
        )
        info["icl_demos"] = demos

    results = []
    for lay in layers:
        xtr, xte = x_tr[lay], x_te[lay]
        scores = list(shared)
        t0 = time.perf_counter()
        knn = KNeighborsClassifier(n_neighbors=min(knn_k, len(y_tr)), metric="cosine")
        pred = knn.fit(xtr, y_tr).predict(xte)
        scores.append(score(f"kNN on raw states (k={knn.n_neighbors}, cosine)", pred, y_te, t0))
        t0 = time.perf_counter()
        logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        pred = logreg.fit(xtr, y_tr).predict(xte)
        scores.append(score("logistic regression on raw states", pred, y_te, t0))
        t0 = time.perf_counter()
        pred = semantic_predict(xte, basis)
        scores.append(score("nearest label basis, raw states (before)", pred, y_te, t0))
        t0 = time.perf_counter()
        params = {"seed": seed, "progress": progress, **(calibrator_params or {})}
        cal = SemanticCalibrator(basis, **params).fit(xtr, y_tr)
        scores.append(score("semantic calibration (after)", cal.predict(xte), y_te, t0))
        results.append(
            CalibrationResult(
                dataset=str(name or getattr(test, "name", None) or "dataset"),
                model=adapter.name,
                layer=lay,
                template=template,
                label_words=list(label_words),
                n_train=len(y_tr),
                scores=scores,
                calibrator=cal,
                info={
                    **info,
                    "calibrator_best_epoch": cal.best_epoch_,
                    "calibrator_epochs": cal.n_epochs_,
                },
            )
        )
    return results[0] if isinstance(layer, int) else results


def semantic_predict(
    states: Float[np.ndarray, "n d_model"], basis: SemanticBasis | Tensor | np.ndarray
) -> np.ndarray:
    """Index of the nearest basis row (by cosine) for each state: zero-shot semantic labels."""
    from semhooks.studies.vocab import semantic_logits

    return semantic_logits(torch.as_tensor(np.asarray(states)), basis).argmax(-1).numpy()
