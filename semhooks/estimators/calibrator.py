"""Semantic calibration (Gu et al. 2024, arXiv 2401.16184; METHODS.md section 4): the estimator.

:class:`SemanticCalibrator` trains a small adapter on frozen states so that the adapted
states point at the semantic basis vector ``s_y`` of their label word::

    z = a(h),   logits_c = cos(z, s_c) / T,   loss = cross_entropy(logits_c, y)
    predict(h) = argmax_c cos(a(h), s_c)                      (nearest label basis)

The adapter is a residual MLP ``a(h) = h' + W_2 GELU(W_1 LayerNorm(h'))`` on the RMS-normalised
state ``h' = h / rms(h)``, ``d -> 2d -> d``, with ``W_2 = 0`` at the start so an untrained
calibrator predicts the nearest label basis of the raw state. The study around it (baselines,
tables) is :mod:`semhooks.studies.calibration`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn
from tqdm.auto import tqdm

from semhooks.backend.adapter import adapt
from semhooks.io.artifacts import ArtifactError, load_artifact, save_artifact
from semhooks.vocabulary.basis import SemanticBasis, label_basis, unembedding_hash

__all__ = ["ResidualAdapter", "SemanticCalibrator", "cosine_logits"]


class ResidualAdapter(nn.Module):
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


def cosine_logits(
    z: Float[Tensor, "n d_model"], unit_basis: Float[Tensor, "k d_model"]
) -> Float[Tensor, "n k"]:
    """``cos(z_i, s_c)``: the rows of ``z`` normalised, against unit basis vectors."""
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
        basis: the label words' basis, a :class:`semhooks.vocabulary.basis.SemanticBasis` (from
            :func:`semhooks.vocabulary.basis.label_basis`) or ``[n_labels, d_model]`` vectors. Row ``c``
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
            module = ResidualAdapter(d, self.hidden_mult * d, self.dropout).to(device)
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
                    logits = cosine_logits(module(xtr[b]), basis_d) / self.temperature
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
                    vl = cosine_logits(module(xva), basis_d) / self.temperature
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
        return (cosine_logits(self._adapted(states), self.basis_) / self.temperature).numpy()

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
        module = ResidualAdapter(d, est.hidden_mult * d, est.dropout)
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
