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

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.metrics import accuracy_score, adjusted_rand_score
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn
from tqdm.auto import tqdm

from semhooks.backend.adapter import adapt
from semhooks.io.artifacts import ArtifactError, load_artifact, save_artifact
from semhooks.studies.vocab import SemanticBasis, label_basis, unembedding_hash

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


# ---------------------------------------------------------------------- the estimator
class _ResidualAdapter(nn.Module):
    """``h' + W_2 GELU(W_1 LayerNorm(h'))`` with ``h' = h / rms(h)``; identity at init."""

    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, hidden)
        self.down = nn.Linear(hidden, d_model)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-12)
        return h + self.down(self.drop(nn.functional.gelu(self.up(self.norm(h)))))


def _cosine_logits(z: Tensor, unit_basis: Tensor) -> Tensor:
    return nn.functional.normalize(z, dim=-1) @ unit_basis.T


_PARAMS = (
    "temperature",
    "hidden_mult",
    "dropout",
    "lr",
    "weight_decay",
    "batch_size",
    "max_epochs",
    "patience",
    "validation_fraction",
    "seed",
    "progress",
    "device",
)


class SemanticCalibrator(ClassifierMixin, TransformerMixin, BaseEstimator):
    """Semantic calibration: a residual MLP adapter on frozen states, trained so that adapted
    states cluster around their label word's semantic basis vector (scikit-learn estimator).

    ``loss = CE(cos(a(h), s_c) / temperature, y)``; ``predict(h) = argmax_c cos(a(h), s_c)``.

    Args:
        basis: the label words' basis, a :class:`semhooks.studies.vocab.SemanticBasis` (from
            :func:`semhooks.studies.vocab.label_basis`) or ``[n_labels, d_model]`` vectors. Row ``c``
            is class ``c``. :meth:`from_model` builds it from label words.
        temperature: divides the cosine logits in the loss (and in ``predict_proba``).
        hidden_mult: adapter width ``hidden_mult * d_model``.
        dropout: dropout inside the adapter during training.
        lr, weight_decay: Adam.
        batch_size, max_epochs: training loop.
        patience: stop after this many epochs without a lower validation loss, and keep the
            best epoch's weights.
        validation_fraction: held out from ``fit``'s data (stratified) for early stopping;
            ``0`` trains for ``max_epochs`` without stopping.
        seed: seeds the split, the initialisation, the shuffles and dropout (global RNG state
            is restored afterwards).
        progress: tqdm bar over epochs.
        device: torch device for training (``None``: CPU).

    Attributes (after ``fit``):
        classes_: the label values (``0..k-1``, or the label words when fit on strings).
        module_: the trained adapter (a ``torch.nn.Module``).
        history_: per-epoch ``train_loss``, ``val_loss``, ``val_accuracy``.
        best_epoch_, n_epochs_: the kept epoch (1-based) and the epochs run.
        n_features_in_: ``d_model``.
    """

    def __init__(
        self,
        basis: SemanticBasis | Tensor | np.ndarray | None = None,
        *,
        temperature: float = 0.1,
        hidden_mult: int = 2,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 32,
        max_epochs: int = 100,
        patience: int = 8,
        validation_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
        device: str | None = None,
    ):
        self.basis = basis
        self.temperature = temperature
        self.hidden_mult = hidden_mult
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.progress = progress
        self.device = device

    @classmethod
    def from_model(
        cls,
        model: Any,
        label_words: Sequence[str],
        *,
        label_template: str = " {}",
        center_unembed: bool = False,
        **params: Any,
    ) -> SemanticCalibrator:
        """A calibrator whose basis is ``label_basis(model, label_words)`` (first token of
        ``" word"``; collisions between labels are refused)."""
        basis = label_basis(
            model, label_words, template=label_template, center_unembed=center_unembed
        )
        return cls(basis, **params)

    # ------------------------------------------------------------------ validation
    def _unit_basis(self) -> Tensor:
        if self.basis is None:
            raise ValueError(
                "SemanticCalibrator has no basis: pass basis=label_basis(model, words) or use "
                "SemanticCalibrator.from_model(model, label_words)"
            )
        if isinstance(self.basis, SemanticBasis):
            return self.basis.unit()
        v = torch.as_tensor(np.asarray(self.basis, dtype=np.float32))
        if v.ndim != 2 or v.shape[0] < 2:
            raise ValueError(
                f"basis must be [n_labels >= 2, d_model] vectors, got shape {tuple(v.shape)}"
            )
        return nn.functional.normalize(v.float(), dim=-1)

    @property
    def label_words(self) -> list[str] | None:
        """The basis' label words, when it has them."""
        return (
            list(self.basis.words)
            if isinstance(self.basis, SemanticBasis) and self.basis.words is not None
            else None
        )

    def _check_states(self, states: Any, d_model: int) -> Tensor:
        x = (
            states.detach().cpu()
            if isinstance(states, Tensor)
            else torch.as_tensor(np.asarray(states))
        )
        if x.ndim != 2:
            raise ValueError(
                f"states must be a 2-D [n_items, d_model] array, got shape {tuple(x.shape)}"
            )
        if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"states must be numeric, got dtype {x.dtype}")
        if x.shape[1] != d_model:
            raise ValueError(
                f"states have width {x.shape[1]} but the label basis has d_model={d_model}; "
                "use states of the model the basis came from (semhooks.studies.calibration."
                "prompt_states(model, texts))"
            )
        if x.shape[0] == 0:
            raise ValueError("states is empty (0 items)")
        x = x.float()
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(-1).nonzero()[0])
            raise ValueError(f"states row {bad} holds NaN or infinite values")
        return x

    def _encode_labels(self, labels: Any, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(class indices, classes_)`` from integer labels or label words."""
        y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"labels must be 1-D with one label per state ({n}), got {y.shape}")
        if y.dtype.kind in "UO":
            words = self.label_words
            if words is None:
                raise ValueError(
                    "string labels need a basis with label words (label_basis or from_model); "
                    "otherwise pass integer labels 0..n_labels-1"
                )
            index = {w: i for i, w in enumerate(words)}
            unknown = sorted({str(v) for v in y if v not in index})
            if unknown:
                raise ValueError(
                    f"unknown label word(s) {unknown}; this calibrator's label words are {words}"
                )
            return np.array([index[v] for v in y], dtype=np.int64), np.array(words, dtype=object)
        if y.dtype.kind not in "iub":
            raise ValueError(f"labels must be integers 0..{k - 1} or label words, got {y.dtype}")
        y = y.astype(np.int64)
        bad = y[(y < 0) | (y >= k)]
        if bad.size:
            raise ValueError(
                f"label {int(bad[0])} is out of range: the basis has {k} labels (0..{k - 1})"
            )
        return y, np.arange(k)

    # ------------------------------------------------------------------ fit
    def fit(self, states: Any, labels: Any) -> SemanticCalibrator:
        """Train the adapter on ``states [n, d_model]`` and ``labels [n]`` (ints or words)."""
        for name in ("temperature", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        unit = self._unit_basis()
        k, d = unit.shape
        x = self._check_states(states, d)
        y, classes = self._encode_labels(labels, len(x), k)
        idx = np.arange(len(x))
        if self.validation_fraction > 0:
            counts = np.bincount(y, minlength=k)
            strat = y if counts[counts > 0].min() >= 2 else None
            n_val = max(1, int(round(self.validation_fraction * len(x))))
            if len(x) - n_val < 1:
                raise ValueError(f"{len(x)} items are too few for a validation split")
            tr, va = train_test_split(idx, test_size=n_val, random_state=self.seed, stratify=strat)
        else:
            tr, va = idx, idx[:0]
        device = torch.device(self.device or "cpu")
        ty = torch.as_tensor(y)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            module = _ResidualAdapter(d, self.hidden_mult * d, self.dropout).to(device)
            opt = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(self.seed)
            basis_d = unit.to(device)
            xtr, ytr = x[tr].to(device), ty[tr].to(device)
            xva, yva = x[va].to(device), ty[va].to(device)
            history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_accuracy": []}
            best = (float("inf"), 0, copy.deepcopy(module.state_dict()))
            bar = tqdm(
                range(self.max_epochs), desc="semantic calibration", disable=not self.progress
            )
            wait = 0
            epoch = 0
            for epoch in bar:
                module.train()
                perm = torch.randperm(len(tr), generator=gen).to(device)
                total = 0.0
                for start in range(0, len(tr), self.batch_size):
                    b = perm[start : start + self.batch_size]
                    logits = _cosine_logits(module(xtr[b]), basis_d) / self.temperature
                    loss = nn.functional.cross_entropy(logits, ytr[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(b)
                history["train_loss"].append(total / len(tr))
                if len(va) == 0:
                    continue
                module.eval()
                with torch.no_grad():
                    vl = _cosine_logits(module(xva), basis_d) / self.temperature
                    val_loss = float(nn.functional.cross_entropy(vl, yva))
                    val_acc = float((vl.argmax(-1) == yva).float().mean())
                history["val_loss"].append(val_loss)
                history["val_accuracy"].append(val_acc)
                bar.set_postfix(val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
                if val_loss < best[0] - 1e-4:
                    best = (val_loss, epoch + 1, copy.deepcopy(module.state_dict()))
                    wait = 0
                else:
                    wait += 1
                    if wait >= self.patience:
                        break
            bar.close()
        if len(va):
            module.load_state_dict(best[2])
            self.best_epoch_ = best[1]
        else:
            self.best_epoch_ = epoch + 1
        module.eval()
        self.module_ = module.cpu()
        self.basis_ = unit
        self.classes_ = classes
        self.history_ = history
        self.n_epochs_ = epoch + 1
        self.n_features_in_ = d
        return self

    # ------------------------------------------------------------------ inference
    def _adapted(self, states: Any) -> Tensor:
        check_is_fitted(self, "module_")
        x = self._check_states(states, self.n_features_in_)
        with torch.no_grad():
            return torch.cat([self.module_(c) for c in x.split(4096)])

    def transform(self, states: Any) -> Float[np.ndarray, "n d_model"]:
        """Adapted states ``a(h)`` (RMS-normalised scale; only their directions matter)."""
        return self._adapted(states).numpy()

    def decision_function(self, states: Any) -> Float[np.ndarray, "n k"]:
        """Cosine logits ``cos(a(h), s_c) / temperature``."""
        return (_cosine_logits(self._adapted(states), self.basis_) / self.temperature).numpy()

    def predict_proba(self, states: Any) -> Float[np.ndarray, "n k"]:
        """Softmax of :meth:`decision_function`."""
        return torch.softmax(torch.as_tensor(self.decision_function(states)), -1).numpy()

    def predict(self, states: Any) -> np.ndarray:
        """The label of the nearest label basis (by cosine) to each adapted state."""
        scores = self.decision_function(states)
        return self.classes_[scores.argmax(-1)]

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomic safetensors file: basis, adapter weights, hyper-parameters, provenance."""
        check_is_fitted(self, "module_")
        basis = self.basis
        tensors = {"basis": self.basis_.contiguous()}
        tensors.update({f"module.{k}": v for k, v in self.module_.state_dict().items()})
        meta: dict[str, Any] = {
            "params": {p: getattr(self, p) for p in _PARAMS},
            "classes": self.classes_.tolist(),
            "label_kind": "words" if self.classes_.dtype == object else "index",
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "n_epochs": self.n_epochs_,
            "n_features_in": self.n_features_in_,
        }
        if isinstance(basis, SemanticBasis):
            tensors["token_ids"] = basis.token_ids
            meta.update(
                words=basis.words,
                tokens=basis.tokens,
                centered=basis.centered,
                w_u_hash=basis.w_u_hash,
                provenance=basis.provenance,
            )
        return save_artifact(path, "SemanticCalibrator", tensors, meta)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], model: Any = None, *, allow_other_model: bool = False
    ) -> SemanticCalibrator:
        """Read a saved calibrator; with ``model``, refuse one made for another model (with
        ``allow_other_model=True``, still one whose W_U differs)."""
        tensors, meta = load_artifact(
            path, "SemanticCalibrator", model=model, allow_other_model=allow_other_model
        )
        if model is not None:
            adapter = adapt(model)
            stored = meta.get("w_u_hash")
            if stored and stored != unembedding_hash(adapter):
                raise ArtifactError(
                    f"{path}: the label basis was computed from a different W_U than "
                    f"{adapter.name}'s (hash {stored} vs {unembedding_hash(adapter)})"
                )
        vectors = tensors["basis"]
        basis: SemanticBasis | Tensor = vectors
        if "token_ids" in tensors:
            basis = SemanticBasis(
                vectors,
                tensors["token_ids"],
                meta.get("words"),
                meta.get("tokens"),
                bool(meta.get("centered", False)),
                meta.get("w_u_hash", ""),
                meta.get("provenance", {}),
            )
        est = cls(basis, **meta["params"])
        d = int(meta["n_features_in"])
        module = _ResidualAdapter(d, est.hidden_mult * d, est.dropout)
        state = {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")}
        module.load_state_dict(state)
        module.eval()
        est.module_ = module
        est.basis_ = nn.functional.normalize(vectors.float(), dim=-1)
        classes = meta["classes"]
        est.classes_ = (
            np.array(classes, dtype=object)
            if meta["label_kind"] == "words"
            else np.arange(len(classes))
        )
        est.history_ = meta["history"]
        est.best_epoch_ = meta["best_epoch"]
        est.n_epochs_ = meta["n_epochs"]
        est.n_features_in_ = d
        return est


# ---------------------------------------------------------------------- the study
@dataclass
class MethodScore:
    """One row of a study: a method's accuracy and the ARI of its predicted clusters."""

    method: str
    accuracy: float
    ari: float
    n_test: int
    seconds: float


@dataclass
class CalibrationResult:
    """Semantic calibration and its baselines on one dataset.

    Attributes:
        dataset: dataset name.
        model: model name.
        layer: the state's layer; ``template`` the prompt; ``label_words`` in class order.
        n_train: items the trained methods saw (the calibrator holds out its validation part).
        scores: one :class:`MethodScore` per method, in table order.
        calibrator: the fitted :class:`SemanticCalibrator` (not serialised by ``to_dict``).
        info: extra facts (ICL demonstrations, k, label tokens).
    """

    dataset: str
    model: str
    layer: int
    template: str
    label_words: list[str]
    n_train: int
    scores: list[MethodScore]
    calibrator: SemanticCalibrator | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, method_prefix: str) -> MethodScore:
        """The row whose method name starts with ``method_prefix``."""
        for s in self.scores:
            if s.method.startswith(method_prefix):
                return s
        raise KeyError(f"no method starting with {method_prefix!r} in {self.methods}")

    @property
    def methods(self) -> list[str]:
        return [s.method for s in self.scores]

    def table(self) -> str:
        """Markdown table: method, accuracy with its 95% Wilson interval over the test items,
        ARI, test items, seconds."""
        from semhooks.studies.stats import wilson_interval

        lines = [
            f"**{self.dataset}** ({self.model}, layer {self.layer}, label words "
            f"{self.label_words}, {self.n_train} training items)",
            "",
            "| method | accuracy | 95% CI | ARI | n test | s |",
            "|---|---|---|---|---|---|",
        ]
        for s in self.scores:
            n = int(s.n_test)
            if n > 0 and math.isfinite(s.accuracy):
                low, high = wilson_interval(min(n, max(0, round(s.accuracy * n))), n)
                interval = f"[{low:.3f}, {high:.3f}]"
            else:
                interval = "-"
            lines.append(
                f"| {s.method} | {s.accuracy:.3f} | {interval} | {s.ari:.3f} | {n} | "
                f"{s.seconds:.1f} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "calibrator"}
        out["scores"] = [asdict(s) for s in self.scores]
        return out

    def plot(self, ax: Any = None) -> Any:
        """Bar chart of accuracy and ARI per method. Returns the figure."""
        return plot_results([self], ax=ax)


def _short(method: str) -> str:
    return method.split(" (")[0]


def results_table(results: Sequence[CalibrationResult], metric: str = "both") -> str:
    """One Markdown table over datasets (rows) and methods (columns).

    Args:
        metric: ``"both"`` (cells ``accuracy / ARI``), ``"accuracy"`` or ``"ari"``.
    """
    if not results:
        raise ValueError("no results to tabulate")
    if metric not in ("both", "accuracy", "ari"):
        raise ValueError(f"metric must be 'both', 'accuracy' or 'ari', got {metric!r}")
    methods = [_short(m) for m in results[0].methods]
    head = "| dataset | layer | n train | n test | " + " | ".join(methods) + " |"
    lines = [head, "|---" * (len(methods) + 4) + "|"]
    for r in results:
        cells = []
        for s in r.scores:
            if metric == "accuracy":
                cells.append(f"{s.accuracy:.3f}")
            elif metric == "ari":
                cells.append(f"{s.ari:.3f}")
            else:
                cells.append(f"{s.accuracy:.3f} / {s.ari:.3f}")
        n_test = r.scores[0].n_test
        lines.append(
            f"| {r.dataset} | {r.layer} | {r.n_train} | {n_test} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def plot_results(results: Sequence[CalibrationResult], ax: Any = None) -> Any:
    """Grouped bars: accuracy (top) and ARI (bottom) per dataset and method."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(2, 1, figsize=(max(6, 2.2 * len(results) + 3), 6), sharex=True)
    else:
        axes = ax
        fig = axes[0].figure
    methods = [_short(m) for m in results[0].methods]
    width = 0.8 / len(methods)
    x = np.arange(len(results))
    for j, m in enumerate(methods):
        acc = [r.scores[j].accuracy for r in results]
        ari = [r.scores[j].ari for r in results]
        axes[0].bar(x + j * width, acc, width, label=m)
        axes[1].bar(x + j * width, ari, width, label=m)
    axes[0].set_ylabel("accuracy")
    axes[1].set_ylabel("adjusted Rand index")
    axes[1].set_xticks(x + 0.4 - width / 2, [r.dataset for r in results])
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"semantic calibration vs baselines ({results[0].model})", fontsize=9)
    fig.tight_layout()
    return fig


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
