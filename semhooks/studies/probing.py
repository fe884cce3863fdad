"""Layer x pooling probe studies: which pooling of frozen states best serves a sentence task?

Xing et al. 2024, "Comparative Analysis of Pooling Mechanisms in LLMs: A Sentiment Analysis
Perspective" (arXiv 2411.14654); METHODS.md section 3. For every layer ``l`` and pooling
``p``, a text's feature is ``x = pool_p(h_l,1 .. h_l,T)`` and a logistic-regression probe
``P(y = 1 | x) = sigmoid(w . x + b)`` is fit on frozen features of a training set and scored
on held-out data.

- One extraction pass: every token's state at the requested layers is read once
  (:func:`semhooks.extract_states` with ``pool=None``), and every pooling is derived from those
  token states with :meth:`LayerStates.repool`.
- Poolings: ``mean`` and ``max`` over the content tokens (BOS/CLS/SEP and padding excluded);
  ``last`` = the last content token (a decoder's final token; for BERT the token before
  [SEP]); ``first`` = the sequence's first token, i.e. [CLS] for BERT and the BOS token for
  decoders that prepend one -- a decoder's BOS state does not depend on the text (causal
  attention), so ``first`` is a constant-feature control there and scores the majority rate;
  ``weighted`` = ``sum_t softmax(w . h_t) h_t`` over content tokens, with ``w`` learned
  (:class:`semhooks.AttentionPooler`) on the training set only.
- Probe: ``StandardScaler`` then ``LogisticRegressionCV`` (regularisation ``C`` chosen by
  stratified shuffled k-fold cross-validation on the training set, fixed seeds).
- Accuracy on the held-out set with a 95% Wilson score interval; the probe's fit time (plus,
  for ``weighted``, the pooler's training time) is the cost.
- Cross-domain transfer: the same probes scored on other datasets (``transfer=``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from jaxtyping import Bool
from matplotlib.figure import Figure
from torch import Tensor

from semhooks.backend.adapter import ModelAdapter, adapt
from semhooks.data.columns import from_columns
from semhooks.data.loaders import TextClassificationDataset
from semhooks.estimators.pooler import AttentionPooler
from semhooks.estimators.probes import fit_logistic_probe
from semhooks.extraction.pooling import POOLS
from semhooks.extraction.states import LayerStates, extract_states
from semhooks.plots import heatmap, new_figure, save_figure
from semhooks.stats import wilson_interval

__all__ = [
    "POOLINGS",
    "PoolingResult",
    "pooled_features",
    "pooling_study",
    "fit_logistic_probe",
    "token_states",
    "wilson_interval",
]

POOLINGS: tuple[str, ...] = ("mean", "max", "last", "first", "weighted")
"""The poolings compared by :func:`pooling_study`, in table order."""


# --------------------------------------------------------------------------------------------
# Token states and poolings
# --------------------------------------------------------------------------------------------


@dataclass
class TokenStates:
    """Every token's state of ``n_items`` texts at several layers (one row per token).

    Attributes:
        states: :class:`LayerStates` with ``pool=None``; rows cover all tokens of each text,
            special ones (BOS/CLS/SEP) included, padding excluded.
        special: ``bool[rows]``: the row is a special token.
    """

    states: LayerStates
    special: Bool[Tensor, " rows"]

    @property
    def n_items(self) -> int:
        return self.states.n_items

    def content(self) -> LayerStates:
        """Token rows without special tokens (mean/max/last/weighted pool over these)."""
        return _rows(self.states, ~self.special)

    def items(self, index: Sequence[int] | npt.NDArray[np.integer]) -> TokenStates:
        """The texts at ``index``, renumbered ``0 .. len(index) - 1`` in that order.

        An index may repeat (the same text in two datasets); its rows are then copied.
        """
        assert self.states.item_index is not None
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        item_index = self.states.item_index
        order = torch.argsort(item_index, stable=True)
        counts = torch.bincount(item_index, minlength=self.n_items)
        starts = torch.cumsum(counts, 0) - counts
        take = counts[idx]
        first_row = torch.repeat_interleave(starts[idx], take)
        within = torch.arange(int(take.sum())) - torch.repeat_interleave(
            torch.cumsum(take, 0) - take, take
        )
        rows = order[first_row + within]
        sub = _rows(self.states, rows, n_items=len(idx))
        sub.item_index = torch.repeat_interleave(torch.arange(len(idx)), take)
        return TokenStates(sub, self.special[rows])


def _rows(states: LayerStates, keep: Tensor, n_items: int | None = None) -> LayerStates:
    """The token rows selected by ``keep`` (a boolean mask or row indices)."""
    assert states.item_index is not None and states.positions is not None
    provenance = dict(states.provenance)
    provenance["n_items"] = states.n_items if n_items is None else n_items
    return LayerStates(
        states.states[:, keep],
        list(states.layers),
        states.site,
        None,
        states.tokens,
        provenance,
        states.item_index[keep],
        states.positions[keep],
    )


def token_states(
    model: Any,
    texts: Sequence[str],
    layers: int | Sequence[int] | str = "all",
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> TokenStates:
    """Every token's residual-stream state (``blocks.{l}.hook_resid_post``), one pass per text.

    Returns a :class:`TokenStates` (states ``[layer, rows, d_model]`` plus a special-token flag
    per row), from which :func:`pooled_features` derives any pooling.
    """
    adapter = adapt(model)
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given (empty dataset)")
    lengths: list[int] = []
    specials: list[list[bool]] = []
    for first in range(0, len(texts), 256):
        batch = adapter.tokenize(texts[first : first + 256], padding_side="right")
        for row in range(len(batch)):
            n = int(batch.attention_mask[row].sum())
            lengths.append(n)
            specials.append(batch.special[row, :n].tolist())
    states = extract_states(
        adapter,
        texts,
        layers=layers,
        tokens=[list(range(n)) for n in lengths],
        pool=None,
        batch_size=batch_size,
        progress=progress,
    )
    assert states.item_index is not None and states.positions is not None
    special = torch.tensor(
        [
            specials[i][p]
            for i, p in zip(states.item_index.tolist(), states.positions.tolist(), strict=True)
        ],
        dtype=torch.bool,
    )
    return TokenStates(states, special)


def _pool_all(
    tokens: TokenStates, poolings: Sequence[str], pooler: AttentionPooler | None
) -> dict[str, LayerStates]:
    content = tokens.content()
    counts = torch.bincount(content.item_index, minlength=tokens.n_items)  # type: ignore[arg-type]
    if bool((counts == 0).any()):
        bad = (counts == 0).nonzero().flatten().tolist()[:5]
        raise ValueError(f"texts {bad} have no content token (only special tokens) to pool")
    out: dict[str, LayerStates] = {}
    for how in poolings:
        if how == "first":
            out[how] = tokens.states.repool("first")
        elif how == "weighted":
            if pooler is None:
                raise ValueError("pooling 'weighted' needs a fitted AttentionPooler (pooler=...)")
            out[how] = content.repool("weighted", pool_weights=pooler)
        else:
            out[how] = content.repool(how)
    return out


def pooled_features(
    model: Any,
    texts: Sequence[str],
    layers: int | Sequence[int] | str = "all",
    poolings: Sequence[str] = ("mean", "max", "last", "first"),
    *,
    pooler: AttentionPooler | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, LayerStates]:
    """One vector per text for each pooling, all derived from one token-level extraction.

    Args:
        model: a TransformerBridge, HookedTransformer or ModelAdapter.
        texts: the texts.
        layers: ``"all"`` or layer indices.
        poolings: any of :data:`POOLINGS` (see the module docstring for what each reads).
        pooler: a fitted :class:`AttentionPooler` (required for ``"weighted"``).

    Returns:
        pooling -> :class:`LayerStates` with ``states[layer, text, d_model]``.
    """
    _check_poolings(poolings)
    tokens = token_states(model, texts, layers, batch_size=batch_size, progress=progress)
    return _pool_all(tokens, poolings, pooler)


def _check_poolings(poolings: Sequence[str]) -> list[str]:
    if isinstance(poolings, str):
        poolings = [poolings]
    out = list(dict.fromkeys(poolings))
    if not out:
        raise ValueError(f"no poolings requested; choose from {POOLINGS}")
    for how in out:
        if how not in POOLS:
            raise ValueError(f"unknown pooling {how!r}; choose from {POOLINGS}")
    return out


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class PoolingResult:
    """Probe accuracy per (evaluation set, layer, pooling).

    Attributes:
        model: model name.
        is_encoder: True for a BERT-style encoder.
        layers: model layers (``blocks.{l}.hook_resid_post``).
        poolings: poolings, in column order.
        train_set: name of the training set.
        eval_sets: names of the evaluation sets; the first is the in-domain held-out set, the
            others are cross-domain transfer sets.
        rows: one dict per (eval set, layer, pooling) with ``accuracy``, ``ci_low``,
            ``ci_high`` (95% Wilson), ``n`` (evaluation items), ``C`` (chosen by CV),
            ``cv_accuracy`` (cross-validated training accuracy at that ``C``),
            ``fit_seconds`` (probe fit, plus the pooler's training for ``weighted``).
        protocol: sizes, seeds, CV settings, timings.
    """

    model: str
    is_encoder: bool
    layers: list[int]
    poolings: list[str]
    train_set: str
    eval_sets: list[str]
    rows: list[dict[str, Any]]
    protocol: dict[str, Any] = field(default_factory=dict)

    def _set(self, eval_set: str | None) -> str:
        name = self.eval_sets[0] if eval_set is None else eval_set
        if name not in self.eval_sets:
            raise KeyError(f"no evaluation set {name!r}; this result has {self.eval_sets}")
        return name

    def matrix(self, eval_set: str | None = None, key: str = "accuracy") -> npt.NDArray[Any]:
        """``[layer, pooling]`` array of ``key`` (accuracy, ci_low, ci_high, fit_seconds, C)."""
        name = self._set(eval_set)
        out = np.full((len(self.layers), len(self.poolings)), np.nan)
        for row in self.rows:
            if row["eval_set"] == name:
                out[self.layers.index(row["layer"]), self.poolings.index(row["pooling"])] = row[key]
        return out

    def best(self, eval_set: str | None = None) -> dict[str, Any]:
        """The row with the highest accuracy on ``eval_set`` (default: in-domain).

        Chosen on ``eval_set`` itself, so its accuracy is an optimistic peak over
        ``layers x poolings`` noisy estimates; :meth:`selected` chooses on the training set.
        """
        name = self._set(eval_set)
        rows = [r for r in self.rows if r["eval_set"] == name]
        return dict(max(rows, key=lambda r: r["accuracy"]))

    def selected(self, eval_set: str | None = None) -> dict[str, Any] | None:
        """The row on ``eval_set`` of the (layer, pooling) with the highest cross-validated
        accuracy on the training set (earliest layer, then pooling order, on ties): a choice
        made without the evaluation sets. None for results saved before ``cv_accuracy``."""
        name = self._set(eval_set)
        rows = [r for r in self.rows if r["eval_set"] == name]
        if not rows or any("cv_accuracy" not in r for r in rows):
            return None
        order = {(layer, p): i for i, (layer, p) in enumerate(
            (layer, p) for layer in self.layers for p in self.poolings
        )}  # fmt: skip
        return dict(max(rows, key=lambda r: (r["cv_accuracy"], -order[(r["layer"], r["pooling"])])))

    def best_layer(self, eval_set: str | None = None) -> dict[str, int]:
        """Pooling -> the layer with the highest accuracy on ``eval_set``."""
        acc = self.matrix(eval_set)
        return {p: self.layers[int(np.nanargmax(acc[:, j]))] for j, p in enumerate(self.poolings)}

    def table(self, eval_set: str | None = None, *, cost: bool = False) -> str:
        """Markdown table, layers x poolings: ``accuracy % [95% CI]`` (best in bold).

        ``cost=True`` tabulates the fit time in seconds instead.
        """
        name = self._set(eval_set)
        header = "| layer | " + " | ".join(self.poolings) + " |"
        lines = [header, "|---:|" + "---:|" * len(self.poolings)]
        if cost:
            secs = self.matrix(name, "fit_seconds")
            for i, layer in enumerate(self.layers):
                lines.append(f"| {layer} | " + " | ".join(f"{s:.2f}" for s in secs[i]) + " |")
            return "\n".join(lines)
        acc = self.matrix(name)
        low, high = self.matrix(name, "ci_low"), self.matrix(name, "ci_high")
        best = np.unravel_index(int(np.nanargmax(acc)), acc.shape)
        for i, layer in enumerate(self.layers):
            cells = []
            for j in range(len(self.poolings)):
                cell = f"{100 * acc[i, j]:.1f} [{100 * low[i, j]:.1f}, {100 * high[i, j]:.1f}]"
                cells.append(f"**{cell}**" if (i, j) == best else cell)
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (inverse: :meth:`from_dict`)."""
        return {
            "model": self.model,
            "is_encoder": self.is_encoder,
            "layers": list(self.layers),
            "poolings": list(self.poolings),
            "train_set": self.train_set,
            "eval_sets": list(self.eval_sets),
            "rows": [dict(r) for r in self.rows],
            "best": {name: self.best(name) for name in self.eval_sets},
            "protocol": self.protocol,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolingResult:
        return cls(
            model=data["model"],
            is_encoder=bool(data["is_encoder"]),
            layers=[int(x) for x in data["layers"]],
            poolings=list(data["poolings"]),
            train_set=data["train_set"],
            eval_sets=list(data["eval_sets"]),
            rows=[dict(r) for r in data["rows"]],
            protocol=dict(data.get("protocol", {})),
        )

    def plot(
        self,
        eval_sets: Sequence[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
    ) -> Figure:
        """Heatmaps of accuracy, layer x pooling, one panel per evaluation set (default: all)."""
        names = list(self.eval_sets if eval_sets is None else eval_sets)
        for name in names:
            self._set(name)
        fig, axes = new_figure(len(names), width=0.9 * len(self.poolings) + 1.8, height=0.35 * len(self.layers) + 1.6)  # fmt: skip
        acc_all = np.stack([self.matrix(n) for n in names])
        lo, hi = float(np.nanmin(acc_all)), float(np.nanmax(acc_all))
        kind = "encoder" if self.is_encoder else "decoder"
        for ax, name in zip(axes, names, strict=True):
            where = "held-out" if name == self.eval_sets[0] else "transfer"
            heatmap(
                ax,
                self.matrix(name),
                self.layers,
                self.poolings,
                title=f"{self.model} ({kind})\n{_short(self.train_set)} -> {_short(name)} ({where})",
                xlabel="pooling",
                ylabel="layer",
                fmt="{:.2f}",
                vmin=lo,
                vmax=hi,
            )
        if path is not None:
            save_figure(fig, path)
        return fig


def _short(name: str) -> str:
    """A dataset name without the ``[subsample ...]``/``[train ...]`` suffixes."""
    return name.split("[", 1)[0]


# --------------------------------------------------------------------------------------------
# Study
# --------------------------------------------------------------------------------------------


def pooling_study(
    model: Any,
    train: TextClassificationDataset,
    test: TextClassificationDataset | None = None,
    *,
    transfer: Mapping[str, TextClassificationDataset] | None = None,
    layers: int | Sequence[int] | str = "all",
    poolings: Sequence[str] = POOLINGS,
    test_size: float | int = 0.3,
    Cs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
    cv: int = 5,
    seed: int = 0,
    pooler: AttentionPooler | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> PoolingResult:
    """Frozen-feature probe accuracy for every (layer, pooling), with a 95% Wilson interval.

    Args:
        model: a TransformerBridge, HookedTransformer or ModelAdapter.
        train: training texts and labels (the probe, its ``C`` and the weighted pooler are fit
            on these only).
        test: held-out evaluation set; None splits ``train`` (stratified, ``test_size``,
            ``seed``).
        transfer: extra evaluation sets, name -> dataset, scored with the same probes
            (cross-domain transfer); their label ids must mean the same as ``train``'s.
        layers: ``"all"`` or layer indices (token states of all texts at these layers are held
            in memory: ``tokens x layers x d_model`` floats).
        poolings: any of :data:`POOLINGS`.
        test_size: fraction or count for the split when ``test`` is None.
        Cs: candidate inverse regularisation strengths for ``LogisticRegressionCV``.
        cv: number of stratified, shuffled (``seed``) folds for choosing ``C``.
        seed: seed of the split, the folds, the solver and the weighted pooler.
        pooler: an unfitted :class:`AttentionPooler` to configure the ``weighted`` pooling
            (default: ``AttentionPooler(seed=seed)``); it is fit on ``train``.
        batch_size: texts per forward pass.
        progress: progress bars.

    Returns:
        :class:`PoolingResult`.
    """
    t0 = time.perf_counter()
    train, test = from_columns(train, "labelled"), from_columns(test, "labelled")
    transfer = transfer and {k: from_columns(v, "labelled") for k, v in transfer.items()}
    poolings = _check_poolings(poolings)
    if len(train) == 0:
        raise ValueError("the training set is empty")
    if test is None:
        train, test = train.split(test_size, seed)
    transfer = dict(transfer or {})
    sets: dict[str, TextClassificationDataset] = {test.name: test}
    for name, data in transfer.items():
        if name in sets or name == train.name:
            raise ValueError(f"evaluation set name {name!r} is used twice; rename it")
        sets[name] = data
    for name, data in {train.name: train, **sets}.items():
        if len(data) == 0:
            raise ValueError(f"dataset {name!r} is empty")
        if tuple(data.label_names) != tuple(train.label_names):
            raise ValueError(
                f"dataset {name!r} has labels {data.label_names}, but the training set has "
                f"{train.label_names}; transfer needs the same label ids"
            )
    if len(np.unique(train.labels)) < 2:
        raise ValueError(f"the training set {train.name!r} holds a single class; a probe needs two")
    adapter: ModelAdapter = adapt(model)

    text_ids: dict[str, int] = {}
    index: dict[str, npt.NDArray[np.int64]] = {}
    for name, data in {"__train__": train, **sets}.items():
        index[name] = np.array([text_ids.setdefault(t, len(text_ids)) for t in data.texts])
    tokens = token_states(adapter, list(text_ids), layers, batch_size=batch_size, progress=progress)
    t_extract = time.perf_counter() - t0

    pooler_seconds = 0.0
    fitted: AttentionPooler | None = None
    if "weighted" in poolings:
        t1 = time.perf_counter()
        fitted = pooler if pooler is not None else AttentionPooler(seed=seed, progress=progress)
        fitted.fit(tokens.items(index["__train__"]).content(), train.labels)
        pooler_seconds = time.perf_counter() - t1
    features = _pool_all(tokens, poolings, fitted)
    del tokens

    rows: list[dict[str, Any]] = []
    layer_list = list(features[poolings[0]].layers)
    for layer in layer_list:
        for how in poolings:
            x = features[how].numpy(layer)
            t1 = time.perf_counter()
            clf = fit_logistic_probe(x[index["__train__"]], train.labels, Cs, cv, seed)
            seconds = time.perf_counter() - t1 + (pooler_seconds / len(layer_list) if how == "weighted" else 0.0)  # fmt: skip
            c_value = float(clf[-1].C_[0])
            # cross-validated accuracy on the training set at the chosen C: the score a
            # (layer, pooling) can be selected by without touching any evaluation set
            folds_by_c = np.asarray(next(iter(clf[-1].scores_.values())), dtype=np.float64)
            cv_accuracy = float(folds_by_c.mean(axis=0).max())
            for name, data in sets.items():
                correct = int((clf.predict(x[index[name]]) == data.labels).sum())
                low, high = wilson_interval(correct, len(data))
                rows.append(
                    {
                        "eval_set": name,
                        "layer": layer,
                        "pooling": how,
                        "accuracy": correct / len(data),
                        "ci_low": low,
                        "ci_high": high,
                        "n": len(data),
                        "C": c_value,
                        "cv_accuracy": cv_accuracy,
                        "fit_seconds": seconds,
                    }
                )
    majority = {
        name: float(np.bincount(data.labels).max() / len(data)) for name, data in sets.items()
    }
    protocol = {
        "train_set": train.name,
        "n_train": len(train),
        "eval_sizes": {name: len(data) for name, data in sets.items()},
        "majority_rate": majority,
        "seed": seed,
        "Cs": list(Cs),
        "cv": cv,
        "probe": "StandardScaler + LogisticRegressionCV(liblinear, stratified shuffled k-fold)",
        "ci": "95% Wilson score interval",
        "tokens": "mean/max/last/weighted over content tokens (no BOS/CLS/SEP); first = "
        "position 0 (BOS for decoders, [CLS] for encoders)",
        "weighted": None
        if fitted is None
        else {
            "pooler": "AttentionPooler",
            "epochs": fitted.epochs,
            "lr": fitted.lr,
            "weight_decay": fitted.weight_decay,
            "fit_seconds": round(pooler_seconds, 2),
        },
        "n_texts_encoded": len(text_ids),
        "seconds_extract": round(t_extract, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
        "provenance": features[poolings[0]].provenance,
    }
    return PoolingResult(
        model=adapter.name,
        is_encoder=adapter.is_encoder,
        layers=layer_list,
        poolings=list(poolings),
        train_set=train.name,
        eval_sets=list(sets),
        rows=rows,
        protocol=protocol,
    )
