"""Linear relational concepts (Chanin, Hunter & Camburu 2024, "Identifying Linear Relational
Concepts in Large Language Models", arXiv 2311.08968).

An LRC fits one LRE on at most ``n_lre_prompts`` (20) training prompts balanced across the
relation's objects, inverts it at rank ``r`` (``W^+ = V_r diag(1/sigma_r) U_r^T``) and maps
each object's mean object-layer state back to the subject layer:

    v_o = normalize(W^+ (E[o] - b)),   E[o] = mean of o_i over training prompts with object o

The concepts live at the subject layer. A subject state ``h`` is classified by
``argmax_o v_o . h``; a concept is a direction for interventions (:class:`Concept` has a
``vector``), e.g. the causal swap ``h + alpha ||h|| (v_target - v_source)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.io.artifacts import load_artifact, save_artifact
from semhooks.relations.checks import check_prompts
from semhooks.relations.lre import LRE, NotFittedError
from semhooks.relations.prompts import RelationPrompt, prompt_states
from semhooks.relations.splits import balanced_subset

__all__ = ["LRC", "Concept"]

_KIND = "semhooks.LRC"


@dataclass(eq=False)
class Concept:
    """One linear relational concept: a unit direction at the subject layer.

    Usable wherever semhooks takes a direction (``vector`` is read by
    :func:`semhooks.interventions.as_direction`).

    Attributes:
        name: ``"<relation>: <object>"``.
        relation: the relation's name.
        object: the object this concept detects.
        layer: the subject layer the direction lives at.
        vector: ``[d]`` unit vector (float32, CPU).
    """

    name: str
    relation: str
    object: str
    layer: int
    vector: Float[Tensor, " d"]

    def __repr__(self) -> str:
        return f"Concept(name={self.name!r}, layer={self.layer}, d={self.vector.shape[0]})"


def _as_prompts(
    texts: Sequence[str] | Sequence[RelationPrompt], subjects: Sequence[str] | None
) -> list[RelationPrompt]:
    if isinstance(texts, str):
        raise TypeError("pass a list of texts (or RelationPrompt objects), not one string")
    items = list(texts)
    if not items:
        raise ValueError("no texts given (empty list)")
    if all(isinstance(t, RelationPrompt) for t in items):
        if subjects is not None:
            raise ValueError("subjects come with RelationPrompt objects; do not pass subjects")
        return [t for t in items if isinstance(t, RelationPrompt)]
    if subjects is None:
        raise ValueError(
            "predict(model, texts, subjects) needs one subject per text (the substring whose "
            "last token is read)"
        )
    subjects = list(subjects)
    if len(subjects) != len(items):
        raise ValueError(f"got {len(items)} texts but {len(subjects)} subjects")
    out = []
    for t, s in zip(items, subjects, strict=True):
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings or RelationPrompt objects, got {type(t)}")
        prompt = RelationPrompt(text=t, subject=s, object="")
        prompt.subject_char_span()
        out.append(prompt)
    return out


class LRC(BaseEstimator):
    """Linear relational concepts for one relation: a classifier over its objects.

    Args:
        subject_layer: layer of the subject states (where the concepts live).
        object_layer: LRE object layer (Chanin et al.: a late layer, or the last).
        rank: rank of the LRE inverse (Chanin et al.: 192 for d = 4096).
        object_aggregation: LRE/``E[o]`` object state: ``"mean"`` over answer positions or
            ``"first"``.
        n_lre_prompts: at most this many balanced training prompts fit the LRE (20).
        method: LRE Jacobians, ``"exact"`` or ``"randomized"`` (rank ``rank``).
        oversampling, n_power_iter: randomized path settings.
        seed: seeds the balanced LRE subset and the randomized sketch.
        sketch_seed: seeds the randomized sketch alone (default: ``seed``), to average over
            sketches with the same LRE prompts.
        prefix_cache, chunk_size: passed to the LRE.
        batch_size: prompts per forward when reading states.
        progress: show progress bars.

    Attributes (after :meth:`fit`):
        concepts_: ``{object: Concept}``.
        classes_: the objects, sorted (rows of ``vectors_``).
        vectors_: ``[n_objects, d]`` unit concept vectors.
        lre_: the fitted :class:`LRE`.
        object_means_: ``[n_objects, d]`` ``E[o]``.
        n_train_: training prompts used for ``E[o]``; ``lre_prompts_`` those of the LRE.
        relation_: the relation; ``provenance_``.
    """

    def __init__(
        self,
        subject_layer: int,
        object_layer: int,
        rank: int,
        *,
        object_aggregation: Literal["mean", "first"] = "mean",
        n_lre_prompts: int = 20,
        method: Literal["exact", "randomized"] = "exact",
        oversampling: int = 10,
        n_power_iter: int = 0,
        seed: int = 0,
        sketch_seed: int | None = None,
        prefix_cache: bool | Literal["auto"] = "auto",
        chunk_size: int | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ):
        self.subject_layer = subject_layer
        self.object_layer = object_layer
        self.rank = rank
        self.object_aggregation = object_aggregation
        self.n_lre_prompts = n_lre_prompts
        self.method = method
        self.oversampling = oversampling
        self.n_power_iter = n_power_iter
        self.seed = seed
        self.sketch_seed = sketch_seed
        self.prefix_cache = prefix_cache
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.progress = progress

    # ------------------------------------------------------------------ fitting
    def fit(self, model: Any, prompts: Sequence[RelationPrompt]) -> LRC:
        """Fit the concepts of one relation from its (validated) training prompts.

        Raises:
            ValueError: no prompts, prompts of several relations, fewer than two objects,
                ``rank`` outside ``1..d_model``.
        """
        adapter = adapt(model)
        prompts = check_prompts(prompts, "LRC.fit")
        relations = sorted({p.relation for p in prompts})
        if len(relations) > 1:
            raise ValueError(
                f"an LRC covers one relation; got prompts of {relations}. Fit one LRC each"
            )
        objects = sorted({p.object for p in prompts})
        if len(objects) < 2:
            raise ValueError(
                f"relation {relations[0]!r} has a single object ({objects[0]!r}) among the "
                f"{len(prompts)} training prompts: there is nothing to classify. LRCs need at "
                "least two objects"
            )
        if not isinstance(self.rank, int) or not 1 <= self.rank <= adapter.d_model:
            raise ValueError(
                f"rank {self.rank!r} is out of range for {adapter.name} with d_model = "
                f"{adapter.d_model}; choose 1 <= rank <= {adapter.d_model}"
            )
        if self.n_lre_prompts < 1:
            raise ValueError(f"n_lre_prompts must be >= 1, got {self.n_lre_prompts}")
        lre_prompts = balanced_subset(prompts, self.n_lre_prompts, seed=self.seed)
        lre = LRE(
            self.subject_layer,
            self.object_layer,
            object_aggregation=self.object_aggregation,
            method=self.method,
            rank=self.rank if self.method == "randomized" else None,
            oversampling=self.oversampling,
            n_power_iter=self.n_power_iter,
            seed=self.seed if self.sketch_seed is None else self.sketch_seed,
            prefix_cache=self.prefix_cache,
            chunk_size=self.chunk_size,
            progress=self.progress,
        ).fit(adapter, lre_prompts)
        states = prompt_states(
            adapter,
            prompts,
            lre.object_layer_,
            aggregation=self.object_aggregation,
            batch_size=self.batch_size,
        )
        o = states.object[lre.object_layer_]
        names = [p.object for p in prompts]
        means = torch.stack(
            [o[[i for i, n in enumerate(names) if n == obj]].mean(0) for obj in objects]
        )
        w_inv = lre.invert(self.rank)
        raw = (means - lre.bias_) @ w_inv.T
        vectors = raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.lre_ = lre
        self.classes_ = objects
        self.vectors_ = vectors.float()
        self.object_means_ = means
        self.n_train_ = len(prompts)
        self.lre_prompts_ = lre_prompts
        self.relation_ = relations[0]
        self.layer_ = lre.subject_layer_
        self.provenance_ = dict(lre.provenance_, rank=self.rank)
        self.concepts_ = self._make_concepts()
        return self

    def with_rank(self, rank: int) -> LRC:
        """A copy with the concepts recomputed at another inverse rank (same LRE, no refit)."""
        import copy

        self._require_fit()
        new = copy.copy(self)
        new.rank = rank
        w_inv = self.lre_.invert(rank)
        raw = (self.object_means_ - self.lre_.bias_) @ w_inv.T
        new.vectors_ = (raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float()
        new.provenance_ = dict(self.provenance_, rank=rank)
        new.concepts_ = new._make_concepts()
        return new

    def _make_concepts(self) -> dict[str, Concept]:
        return {
            obj: Concept(
                name=f"{self.relation_}: {obj}",
                relation=self.relation_,
                object=obj,
                layer=self.layer_,
                vector=self.vectors_[i].clone(),
            )
            for i, obj in enumerate(self.classes_)
        }

    def _require_fit(self) -> None:
        if not hasattr(self, "vectors_"):
            raise NotFittedError("this LRC is not fitted yet; call fit(model, prompts) first")

    # ------------------------------------------------------------------ classifying
    def decision_function(self, states: Float[Tensor, "n d"]) -> Float[Tensor, "n n_objects"]:
        """Scores ``v_o . h`` for subject-layer states ``[n, d]`` (columns = ``classes_``)."""
        self._require_fit()
        h = torch.atleast_2d(torch.as_tensor(states, dtype=torch.float32)).cpu()
        if h.shape[-1] != self.vectors_.shape[1]:
            raise ValueError(
                f"states have size {h.shape[-1]}, the concepts have {self.vectors_.shape[1]}"
            )
        return h @ self.vectors_.T

    def predict_states(self, states: Float[Tensor, "n d"]) -> list[str]:
        """The object of each subject-layer state: ``argmax_o v_o . h``."""
        scores = self.decision_function(states)
        return [self.classes_[int(i)] for i in scores.argmax(-1)]

    def subject_states(
        self,
        model: Any,
        texts: Sequence[str] | Sequence[RelationPrompt],
        subjects: Sequence[str] | None = None,
    ) -> Float[Tensor, "n d"]:
        """Subject-layer states at each subject's last token (last occurrence) ``[n, d]``."""
        self._require_fit()
        prompts = _as_prompts(texts, subjects)
        st = prompt_states(
            model,
            prompts,
            self.layer_,
            aggregation="first",
            with_answer=False,
            batch_size=self.batch_size,
        )
        return st.subject[self.layer_]

    def predict(
        self,
        model: Any,
        texts: Sequence[str] | Sequence[RelationPrompt],
        subjects: Sequence[str] | None = None,
    ) -> list[str]:
        """Classify texts: ``predict(model, texts, subjects)`` or ``predict(model, prompts)``."""
        return self.predict_states(self.subject_states(model, texts, subjects))

    def score(
        self,
        model: Any,
        texts: Sequence[str] | Sequence[RelationPrompt],
        subjects: Sequence[str] | None = None,
        objects: Sequence[str] | None = None,
    ) -> float:
        """Accuracy; the true objects come from the prompts or from ``objects``."""
        prompts = _as_prompts(texts, subjects)
        truth = list(objects) if objects is not None else [p.object for p in prompts]
        if len(truth) != len(prompts) or any(t == "" for t in truth):
            raise ValueError("score needs one true object per text (objects=... or prompts)")
        pred = self.predict(model, prompts)
        return float(np.mean([a == b for a, b in zip(pred, truth, strict=True)]))

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write concept vectors, object means and the LRE's W and b, with provenance."""
        self._require_fit()
        tensors = {
            "vectors": self.vectors_,
            "object_means": self.object_means_,
            "lre_weight": self.lre_.weight_,
            "lre_bias": self.lre_.bias_,
        }
        meta = {
            "params": self.get_params(),
            "provenance": self.provenance_,
            "classes": self.classes_,
            "relation": self.relation_,
            "layer": self.layer_,
            "n_train": self.n_train_,
            "lre": {
                "params": self.lre_.get_params(),
                "subject_layer": self.lre_.subject_layer_,
                "object_layer": self.lre_.object_layer_,
                "n_prompts": self.lre_.n_prompts_,
            },
        }
        return save_artifact(path, _KIND, tensors, meta)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: Any | None = None,
        *,
        allow_other_model: bool = False,
    ) -> LRC:
        """Read an LRC; with ``model``, refuse one made on another model (or, with
        ``allow_other_model=True``, only one of another width or hook layout)."""
        tensors, meta = load_artifact(path, _KIND, model=model, allow_other_model=allow_other_model)
        lrc = cls(**meta["params"])
        lrc.vectors_ = tensors["vectors"]
        lrc.object_means_ = tensors["object_means"]
        lrc.classes_ = list(meta["classes"])
        lrc.relation_ = meta["relation"]
        lrc.layer_ = meta["layer"]
        lrc.n_train_ = meta["n_train"]
        lrc.provenance_ = meta["provenance"]
        lre = LRE(**meta["lre"]["params"])
        lre.weight_, lre.bias_ = tensors["lre_weight"], tensors["lre_bias"]
        lre.subject_layer_ = meta["lre"]["subject_layer"]
        lre.object_layer_ = meta["lre"]["object_layer"]
        lre.n_prompts_ = meta["lre"]["n_prompts"]
        lre.relation_, lre.objects_ = lrc.relation_, lrc.classes_
        lre.provenance_ = meta["provenance"]
        lrc.lre_ = lre
        lrc.lre_prompts_ = []
        lrc.concepts_ = lrc._make_concepts()
        return lrc

    def __repr__(self) -> str:
        fitted = (
            f", relation={self.relation_!r}, n_objects={len(self.classes_)}"
            if hasattr(self, "vectors_")
            else ""
        )
        return (
            f"LRC(subject_layer={self.subject_layer}, object_layer={self.object_layer}, "
            f"rank={self.rank}, method={self.method!r}{fitted})"
        )
