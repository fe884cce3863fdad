"""Where lexical semantics lives: layer-wise contextual word identification on WiC.

Liu et al. 2024, "Fantastic Semantics and Where to Find Them" (arXiv 2403.01509);
METHODS.md section 2. For every WiC pair (a target word in two sentences) and every layer
``l``, take the target's vector in each sentence, ``a_l`` and ``b_l`` (mean over the word's
sub-tokens), and predict "same sense" when

    cos(z(a_l), z(b_l)) > theta_l

where ``z`` z-scores each dimension (anisotropy removal) and ``theta_l`` is chosen on one
split and evaluated on another. No classifier is trained for this readout; a logistic
regression on the pair features ``[|a - b|, a * b]`` is reported beside it as a second
readout.

Input variants (what is run through the model and which token is read):

- ``base``: the sentence ``S``; the target's tokens.
- ``repeat``: ``"S S"``; the target's tokens in the *second* copy (which has seen the whole
  sentence, so a decoder's target vector carries right context).
- ``prompt``: ``template.format(sentence=S, word=w)``, by default
  ``In this sentence "S", "w" means in one word: "``; the last token.
- ``last``: ``S``; its final token (the closing punctuation in WiC).

Efficiency: every (text, token span) request of every variant and split is gathered first;
each *unique* text is run once (``base`` and ``last`` share ``S``, sentences repeated across
pairs are encoded once) through :func:`semhooks.extract_states`, which reads only the needed
token positions at every layer inside the hooks, and the span means are taken afterwards.

Choices (the paper's, unless said otherwise):

- Anisotropy removal uses the mean and standard deviation of each dimension over *all*
  target vectors of a split, per variant and layer (the paper used batches of 30; whole-split
  statistics make the result independent of batch order). ``stats_from="fit"`` applies the fit
  split's statistics to the evaluation split instead (a fixed reference set).
- The threshold grid is 0.00 .. 0.95 in steps of 0.05 (``threshold="grid"``), or the cut that
  maximises fit-split accuracy (``threshold="optimal"``, midpoints between sorted scores).
- The WiC test split is not bundled; the default protocol chooses thresholds on a seeded
  subsample of train (``n_fit=1000``) and reports accuracy on dev (638 pairs).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from jaxtyping import Bool, Float
from sklearn.model_selection import train_test_split
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.data.columns import wic_items
from semhooks.data.loaders import WiCItem, load_wic
from semhooks.extraction.spans import char_span_to_positions
from semhooks.extraction.states import extract_states
from semhooks.studies.lexical_readouts import (
    DEFAULT_GRID,
    ThresholdFit,
    choose_threshold,
    cosine_scores,
    pair_features,
    zscore_stats,
)
from semhooks.studies.lexical_result import WiCResult

__all__ = [
    "DEFAULT_PROMPT",
    "VARIANTS",
    "ThresholdFit",
    "WiCResult",
    "WiCVectors",
    "choose_threshold",
    "cosine_scores",
    "pair_features",
    "variant_input",
    "wic_study",
    "wic_vectors",
    "zscore_stats",
]

VARIANTS: tuple[str, ...] = ("base", "repeat", "prompt", "last")
"""The input variants of Liu et al. 2024, in the order they are reported."""

DEFAULT_PROMPT = 'In this sentence "{sentence}", "{word}" means in one word: "'
"""The ``prompt`` variant's template (Liu et al. 2024); ``{sentence}`` and ``{word}`` are filled."""

Part = Literal["span", "final"]
WiCSource = str | os.PathLike[str] | Sequence[WiCItem]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def variant_input(
    sentence: str,
    span: tuple[int, int],
    variant: str,
    template: str = DEFAULT_PROMPT,
) -> tuple[str, tuple[int, int], Part]:
    """The text a variant runs through the model and the characters whose tokens are read.

    Args:
        sentence: the context ``S``.
        span: ``(start, end)`` character span of the target word in ``S``.
        variant: one of :data:`VARIANTS`.
        template: the ``prompt`` variant's template with ``{sentence}`` and ``{word}`` fields.

    Returns:
        ``(text, (start, end), part)``: with ``part="span"`` read the mean of the tokens
        overlapping ``text[start:end]``; with ``part="final"`` read the last content token of
        ``text`` (the last non-special token, the one before [SEP] for BERT), which is the
        token covering ``(start, end)``, the text's last character, for real tokenizers.

    >>> variant_input("He ran .", (3, 6), "repeat")
    ('He ran . He ran .', (12, 15), 'span')
    """
    start, end = span
    if not 0 <= start < end <= len(sentence):
        raise ValueError(
            f"target span {span} is outside the sentence of {len(sentence)} characters: "
            f"{sentence!r}"
        )
    if variant == "base":
        return sentence, (start, end), "span"
    if variant == "repeat":
        shift = len(sentence) + 1
        return f"{sentence} {sentence}", (start + shift, end + shift), "span"
    if variant == "last":
        stop = len(sentence.rstrip())
        return sentence, (stop - 1, stop), "final"
    if variant == "prompt":
        _check_template(template)
        text = template.format(sentence=sentence, word=sentence[start:end])
        stop = len(text.rstrip())
        return text, (stop - 1, stop), "final"
    raise ValueError(f"unknown WiC input variant {variant!r}; choose from {VARIANTS}")


def _check_template(template: str) -> None:
    try:
        filled = template.format(sentence="S", word="w")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"prompt template {template!r} must use only the fields {{sentence}} and {{word}} "
            f"(double any literal braces): {err!r}"
        ) from None
    if "{sentence}" not in template or not filled.strip():
        raise ValueError(f"prompt template {template!r} must contain {{sentence}}")


# --------------------------------------------------------------------------------------------
# Vectors
# --------------------------------------------------------------------------------------------


@dataclass
class WiCVectors:
    """Target vectors of WiC pairs for several variants at several layers.

    Attributes:
        vectors: variant -> ``[layer, pair, 2, d_model]`` float32 (index 2: sentence 1, 2).
        layers: the model layers (``blocks.{l}.hook_resid_post``) of the first axis.
        labels: ``bool[pair]``, or None when any pair has no gold label.
        n_texts: number of unique texts run through the model (one forward pass each).
        n_requests: number of (text, token span) reads served by those passes.
        provenance: model, hook names, sizes (from :meth:`ModelAdapter.provenance`).
    """

    vectors: dict[str, Float[Tensor, "layer pair 2 d_model"]]
    layers: list[int]
    labels: Bool[npt.NDArray[np.bool_], " pair"] | None
    n_texts: int
    n_requests: int
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pairs(self) -> int:
        return int(next(iter(self.vectors.values())).shape[1])

    def take(self, index: Sequence[int] | npt.NDArray[np.integer]) -> WiCVectors:
        """The pairs at ``index`` (same layers and variants)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return WiCVectors(
            {v: x[:, idx] for v, x in self.vectors.items()},
            list(self.layers),
            None if self.labels is None else self.labels[idx.numpy()],
            self.n_texts,
            self.n_requests,
            dict(self.provenance),
        )


def wic_vectors(
    model: Any,
    items: Sequence[WiCItem],
    variants: Sequence[str] = VARIANTS,
    layers: int | Sequence[int] | str = "all",
    *,
    template: str = DEFAULT_PROMPT,
    batch_size: int = 16,
    progress: bool = True,
) -> WiCVectors:
    """Target vectors of every pair, variant and layer, one forward pass per unique text.

    Each request (a variant's text and the characters to read, see :func:`variant_input`) is
    mapped to token positions through the tokenizer's character offsets; the union of the
    positions each unique text needs is read at every layer by one
    :func:`semhooks.extract_states` call (``pool=None``, explicit positions), and a request's
    vector is the mean over its positions.

    Args:
        model: a TransformerBridge, HookedTransformer or ModelAdapter.
        items: WiC pairs (:func:`semhooks.data.loaders.load_wic`).
        variants: a subset of :data:`VARIANTS`.
        layers: ``"all"`` or layer indices (negatives allowed).
        template: the ``prompt`` variant's template.
        batch_size: texts per forward pass.
        progress: show a progress bar.

    Returns:
        :class:`WiCVectors` with ``vectors[variant]`` of shape ``[layer, pair, 2, d_model]``.
    """
    items = list(items)
    if not items:
        raise ValueError("no WiC pairs given (empty dataset); load some with load_wic('dev')")
    variants = _check_variants(variants)
    if "prompt" in variants:
        _check_template(template)
    adapter = adapt(model)
    layer_list = adapter.resolve_layers(layers)

    text_ids: dict[str, int] = {}
    # one request per (variant, pair, sentence): (text id, char span, part)
    requests: list[tuple[int, tuple[int, int], Part]] = []
    for variant in variants:
        for item in items:
            for sentence, span in ((item.sentence1, item.char_span1), (item.sentence2, item.char_span2)):  # fmt: skip
                text, chars, part = variant_input(sentence, span, variant, template)
                requests.append((text_ids.setdefault(text, len(text_ids)), chars, part))
    texts = list(text_ids)

    positions = _request_positions(adapter, texts, requests)
    needed: list[set[int]] = [set() for _ in texts]
    for (text_id, _, _), pos in zip(requests, positions, strict=True):
        needed[text_id].update(pos)
    states = extract_states(
        adapter,
        texts,
        layers=layer_list,
        tokens=[sorted(p) for p in needed],
        pool=None,
        batch_size=batch_size,
        progress=progress,
    )
    assert states.item_index is not None and states.positions is not None
    row_of = {
        (int(i), int(p)): r
        for r, (i, p) in enumerate(
            zip(states.item_index.tolist(), states.positions.tolist(), strict=True)
        )
    }
    rows, cols, vals = [], [], []
    for q, ((text_id, _, _), pos) in enumerate(zip(requests, positions, strict=True)):
        for p in pos:
            rows.append(q)
            cols.append(row_of[(text_id, p)])
            vals.append(1.0 / len(pos))
    reader = torch.sparse_coo_tensor(
        torch.tensor([rows, cols]),
        torch.tensor(vals),
        (len(requests), states.states.shape[1]),
        check_invariants=True,
    ).coalesce()
    per_layer = [torch.sparse.mm(reader, states.states[li]) for li in range(len(layer_list))]
    flat = torch.stack(per_layer)  # [layer, request, d]
    n = len(items)
    vectors = {
        variant: flat[:, k * 2 * n : (k + 1) * 2 * n].reshape(len(layer_list), n, 2, -1)
        for k, variant in enumerate(variants)
    }
    labels = [item.label for item in items]
    gold = None if any(lab is None for lab in labels) else np.array(labels, dtype=bool)
    provenance = {
        **states.provenance,
        "variants": list(variants),
        "template": template,
        "n_pairs": n,
        "n_texts": len(texts),
        "n_requests": len(requests),
    }
    return WiCVectors(vectors, layer_list, gold, len(texts), len(requests), provenance)


def _check_variants(variants: Sequence[str]) -> list[str]:
    if isinstance(variants, str):
        variants = [variants]
    out = list(dict.fromkeys(variants))
    if not out:
        raise ValueError(f"no variants requested; choose from {VARIANTS}")
    for v in out:
        if v not in VARIANTS:
            raise ValueError(f"unknown WiC input variant {v!r}; choose from {VARIANTS}")
    return out


def _request_positions(
    adapter: Any,
    texts: list[str],
    requests: list[tuple[int, tuple[int, int], Part]],
    chunk: int = 256,
) -> list[list[int]]:
    """Token positions (in the unpadded sequence, BOS included) of each request's characters."""
    by_text: dict[int, list[int]] = {}
    for q, (text_id, _, _) in enumerate(requests):
        by_text.setdefault(text_id, []).append(q)
    out: list[list[int]] = [[] for _ in requests]
    for first in range(0, len(texts), chunk):
        batch = adapter.tokenize(texts[first : first + chunk], padding_side="right")
        for row in range(len(batch)):
            for q in by_text.get(first + row, []):
                _, (start, end), part = requests[q]
                if part == "final":
                    content = batch.attention_mask[row].bool() & ~batch.special[row]
                    out[q] = [int(content.nonzero().max())]
                else:
                    out[q] = char_span_to_positions(batch, row, start, end)
    return out


def _load_items(source: WiCSource, what: str) -> tuple[list[WiCItem], str]:
    if isinstance(source, (str, os.PathLike)):
        items = load_wic(source)
        name = source if isinstance(source, str) and source in ("train", "dev") else None
        return items, name or Path(source).name
    items = list(wic_items(source))
    if items and not all(isinstance(i, WiCItem) for i in items):
        raise TypeError(f"{what} must be a split name, a path or a list of WiCItem")
    return items, "custom"


def _subsample(
    items: list[WiCItem], n: int | None, seed: int, what: str
) -> tuple[list[WiCItem], list[int]]:
    if n is None or n >= len(items):
        return items, list(range(len(items)))
    if n < 1:
        raise ValueError(f"{what}: n={n} must be at least 1")
    labels = [it.label for it in items]
    # stratified by gold label when every item has one (a seeded draw keeping the T/F ratio)
    strat = None
    if all(lab is not None for lab in labels):
        counts = np.unique(np.asarray(labels, dtype=bool), return_counts=True)[1]
        k = len(counts)
        if min(counts) >= 2 and n >= k and len(items) - n >= k:
            strat = labels
    idx, _ = train_test_split(
        np.arange(len(items)), train_size=n, random_state=seed, stratify=strat
    )
    idx = np.sort(idx)
    return [items[i] for i in idx.tolist()], idx.tolist()


def wic_study(
    model: Any,
    *,
    fit: WiCSource = "train",
    evaluate: WiCSource = "dev",
    variants: Sequence[str] = VARIANTS,
    layers: int | Sequence[int] | str = "all",
    n_fit: int | None = 1000,
    n_eval: int | None = None,
    seed: int = 0,
    standardize: bool = True,
    stats_from: Literal["split", "fit"] = "split",
    threshold: Literal["grid", "optimal"] = "grid",
    grid: Sequence[float] | None = None,
    probe: bool = True,
    probe_Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0),
    probe_cv: int = 3,
    template: str = DEFAULT_PROMPT,
    batch_size: int = 16,
    progress: bool = True,
) -> WiCResult:
    """Layer-wise WiC accuracy of the cosine readout (and a probe) for each input variant.

    Protocol: the target vectors of both splits are extracted together (one forward pass per
    unique text); per variant and layer the threshold is chosen on ``fit`` and accuracy is
    measured on ``evaluate``. Default: thresholds from a seeded 1,000-pair subsample of train,
    accuracy on the 638 dev pairs (the WiC test split is not bundled; pass its path as
    ``evaluate`` if you have it).

    Args:
        model: a TransformerBridge, HookedTransformer or ModelAdapter.
        fit: where thresholds (and the probe) are fit: ``"train"``, ``"dev"``, a path to a
            WiC ``*.data.txt`` file (gold beside it), or a list of :class:`WiCItem`.
        evaluate: where accuracy is measured (same forms).
        variants: a subset of :data:`VARIANTS`.
        layers: ``"all"`` or layer indices.
        n_fit, n_eval: seeded subsample sizes (None: the whole split).
        seed: seed of the subsamples and of the probe's cross-validation folds.
        standardize: z-score each dimension before the cosine (anisotropy removal).
        stats_from: ``"split"``: each split is standardised with its own statistics over all
            its target vectors (per variant and layer); ``"fit"``: the fit split's statistics
            are applied to both.
        threshold: ``"grid"`` (0.00 .. 0.95, step 0.05) or ``"optimal"``; see
            :func:`choose_threshold`.
        grid: custom thresholds for ``threshold="grid"``.
        probe: also fit a logistic regression on ``[|a - b|, a * b]`` per layer (a
            ``StandardScaler`` then ``LogisticRegressionCV`` over ``probe_Cs`` with
            ``probe_cv`` stratified shuffled folds, liblinear solver, seeded).
        template: the ``prompt`` variant's template.
        batch_size: texts per forward pass.
        progress: progress bars.

    Returns:
        :class:`WiCResult`.
    """
    t0 = time.perf_counter()
    variants = _check_variants(variants)
    if stats_from not in ("split", "fit"):
        raise ValueError(f"stats_from must be 'split' or 'fit', got {stats_from!r}")
    fit_all, fit_name = _load_items(fit, "fit")
    eval_all, eval_name = _load_items(evaluate, "evaluate")
    for name, items in (("fit", fit_all), ("evaluate", eval_all)):
        if not items:
            raise ValueError(f"the {name} split is empty; it needs labelled WiC pairs")
        unlabeled = sum(item.label is None for item in items)
        if unlabeled:
            raise ValueError(
                f"{unlabeled} of {len(items)} pairs of the {name} split have no gold label; "
                "pass the gold file (load_wic(path, gold=...)) or a labelled split"
            )
    fit_items, _ = _subsample(fit_all, n_fit, seed, "fit")
    eval_items, _ = _subsample(eval_all, n_eval, seed + 1, "evaluate")
    if fit_name == eval_name and fit_name != "custom":
        warnings.warn(
            f"fit and evaluate are both {fit_name!r}: accuracy is measured on the pairs the "
            "thresholds were chosen on",
            stacklevel=2,
        )

    adapter = adapt(model)
    vectors = wic_vectors(
        adapter,
        fit_items + eval_items,
        variants,
        layers,
        template=template,
        batch_size=batch_size,
        progress=progress,
    )
    t_extract = time.perf_counter() - t0
    n_fit_used = len(fit_items)
    fit_vec = vectors.take(range(n_fit_used))
    eval_vec = vectors.take(range(n_fit_used, vectors.n_pairs))
    assert fit_vec.labels is not None and eval_vec.labels is not None
    y_fit, y_eval = fit_vec.labels, eval_vec.labels

    accuracy: dict[str, list[float]] = {}
    thresholds: dict[str, list[float]] = {}
    fit_accuracy: dict[str, list[float]] = {}
    probe_accuracy: dict[str, list[float]] | None = {} if probe else None
    for variant in variants:
        xf, xe = fit_vec.vectors[variant], eval_vec.vectors[variant]
        fit_stats = zscore_stats(xf) if standardize else None
        eval_stats = fit_stats if stats_from == "fit" else None
        s_fit = cosine_scores(xf, standardize=standardize, stats=fit_stats).numpy()
        s_eval = cosine_scores(xe, standardize=standardize, stats=eval_stats).numpy()
        accuracy[variant], thresholds[variant], fit_accuracy[variant] = [], [], []
        for li in range(len(vectors.layers)):
            cut = choose_threshold(s_fit[li], y_fit, threshold, grid)
            thresholds[variant].append(cut.threshold)
            fit_accuracy[variant].append(cut.accuracy)
            accuracy[variant].append(float((cut.predict(s_eval[li]) == y_eval).mean()))
        if probe_accuracy is not None:
            f_fit = pair_features(xf, standardize=standardize, stats=fit_stats).numpy()
            f_eval = pair_features(xe, standardize=standardize, stats=eval_stats).numpy()
            probe_accuracy[variant] = [
                _probe_accuracy(f_fit[li], y_fit, f_eval[li], y_eval, probe_Cs, probe_cv, seed)
                for li in range(len(vectors.layers))
            ]
    majority = float(max(y_eval.mean(), 1 - y_eval.mean()))
    protocol = {
        "fit_split": fit_name,
        "eval_split": eval_name,
        "n_fit": n_fit_used,
        "n_eval": len(eval_items),
        "seed": seed,
        "standardize": standardize,
        "stats_from": stats_from,
        "threshold": threshold,
        "grid": list(DEFAULT_GRID if grid is None else grid),
        "probe": {"features": "[|a-b|, a*b]", "Cs": list(probe_Cs), "cv": probe_cv}
        if probe
        else None,
        "template": template,
        "majority_rate": majority,
        "n_texts_encoded": vectors.n_texts,
        "n_requests": vectors.n_requests,
        "seconds_extract": round(t_extract, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
        "provenance": vectors.provenance,
    }
    return WiCResult(
        model=adapter.name,
        is_encoder=adapter.is_encoder,
        layers=list(vectors.layers),
        variants=list(variants),
        accuracy=accuracy,
        thresholds=thresholds,
        fit_accuracy=fit_accuracy,
        probe_accuracy=probe_accuracy,
        protocol=protocol,
    )


def _probe_accuracy(
    x_fit: npt.NDArray[np.float32],
    y_fit: npt.NDArray[np.bool_],
    x_eval: npt.NDArray[np.float32],
    y_eval: npt.NDArray[np.bool_],
    Cs: Sequence[float],
    cv: int,
    seed: int,
) -> float:
    from semhooks.estimators.probes import fit_logistic_probe

    if len(np.unique(y_fit)) < 2:
        raise ValueError("the probe needs both labels (T and F) in the fit split")
    clf = fit_logistic_probe(x_fit, y_fit, Cs, cv, seed)
    return float((clf.predict(x_eval) == y_eval).mean())
