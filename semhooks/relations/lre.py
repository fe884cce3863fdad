"""Linear relational embeddings (Hernandez et al. 2023, "Linearity of Relation Decoding in
Transformer LMs").

For a relation, the object state ``o`` (after block ``l_o`` at the answer positions) is
approximated by an affine function of the subject state ``s`` (after block ``l_s`` at the
subject's last token):

    LRE(s) = beta W s + b,   W = mean_i J_i,   b = mean_i (o_i - J_i s_i),   J_i = do_i/ds_i

averaged over a few prompts (5-20, balanced across objects). ``beta`` (Hernandez: about 2-8)
scales the slope only. The LRE is decoded through the model's final norm and unembedding,
and inverted with a rank-``r`` truncated SVD for causal edits and concepts (Chanin et al.
2024): ``W^+_r = V_r diag(1/sigma_r) U_r^T``. ``beta`` is not part of the inverse.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from torch import Tensor

from semhooks.backend.adapter import ModelAdapter, adapt
from semhooks.io.artifacts import load_artifact, save_artifact
from semhooks.relations.checks import check_prompts
from semhooks.relations.jacobian import (
    JacobianResult,
    LowRankJacobian,
    mean_jacobian,
    randomized_jacobian,
)
from semhooks.relations.prompts import RelationPrompt

__all__ = ["LRE", "NotFittedError", "check_prompts"]

_KIND = "semhooks.LRE"


class NotFittedError(SklearnNotFittedError, RuntimeError):
    """An LRE or LRC was used before ``fit`` (or ``load``).

    A :class:`sklearn.exceptions.NotFittedError` (so ``except NotFittedError`` with
    scikit-learn's class catches it), and still a ``RuntimeError`` as in semhooks 0.1.
    """


class LRE(BaseEstimator):
    """A linear relational embedding ``o ~ beta W s + b`` fitted from Jacobians.

    Args:
        subject_layer: ``l_s`` (``blocks.{l_s}.hook_resid_post``; negatives count back).
        object_layer: ``l_o >= l_s``.
        beta: slope scale in :meth:`predict` (Hernandez et al.: 2-8; 1 = the plain
            first-order approximation).
        object_aggregation: ``"mean"`` over the answer positions or ``"first"`` (the last
            prompt token, which predicts the first answer token).
        method: ``"exact"`` (``d`` VJPs per prompt) or ``"randomized"`` (a rank-``rank``
            randomized SVD of ``W`` from ``rank + oversampling`` JVPs and VJPs per prompt;
            ``weight_`` is then that low-rank estimate).
        rank, oversampling, n_power_iter, seed: randomized path settings.
        prefix_cache: KV-cache the prompt before the subject (``"auto"``: on the bridge).
        chunk_size: cotangents per batched backward in the exact path.
        progress: show progress bars.

    Attributes (after :meth:`fit`):
        weight_: ``W`` ``[d, d]`` (float32).
        bias_: ``b`` ``[d]``.
        subject_states_, object_states_: the fitting prompts' ``s_i`` and ``o_i`` ``[n, d]``.
        n_prompts_, objects_, relation_: what it was fitted on.
        fit_seconds_: time spent on Jacobians.
        provenance_: model name, backend, hooks, layers, date, semhooks version.

    >>> from semhooks import testing
    >>> from semhooks.relations import RelationPrompt
    >>> model = testing.tiny_model("llama")
    >>> p = RelationPrompt("The capital of Italy is", "Italy", "Rome")
    >>> lre = LRE(0, 2, progress=False).fit(model, [p])
    >>> bool(torch.allclose(lre.predict(lre.subject_states_), lre.object_states_, atol=1e-4))
    True
    """

    # the SVD of W, cached by svd() (a randomized fit sets it from its sketch)
    _svd: tuple[Tensor, Tensor, Tensor] | None = None

    def __init__(
        self,
        subject_layer: int,
        object_layer: int,
        beta: float = 1.0,
        object_aggregation: Literal["mean", "first"] = "mean",
        *,
        method: Literal["exact", "randomized"] = "exact",
        rank: int | None = None,
        oversampling: int = 10,
        n_power_iter: int = 0,
        seed: int = 0,
        prefix_cache: bool | Literal["auto"] = "auto",
        chunk_size: int | None = None,
        progress: bool = True,
    ):
        self.subject_layer = subject_layer
        self.object_layer = object_layer
        self.beta = beta
        self.object_aggregation = object_aggregation
        self.method = method
        self.rank = rank
        self.oversampling = oversampling
        self.n_power_iter = n_power_iter
        self.seed = seed
        self.prefix_cache = prefix_cache
        self.chunk_size = chunk_size
        self.progress = progress

    # ------------------------------------------------------------------ fitting
    def check_params(self, adapter: ModelAdapter) -> None:
        """Check the hyperparameters against ``adapter``'s model before any forward pass.

        Called by :meth:`fit` and by
        :func:`semhooks.relations.distributed.fit_lre_distributed`.

        Raises:
            ValueError: an unknown ``method`` or ``object_aggregation``; ``method="randomized"``
                without ``rank``; a ``rank`` outside ``1..d_model``.
        """
        if self.method not in ("exact", "randomized"):
            raise ValueError(f"method must be 'exact' or 'randomized', got {self.method!r}")
        if self.object_aggregation not in ("mean", "first"):
            raise ValueError(
                f"object_aggregation must be 'mean' or 'first', got {self.object_aggregation!r}"
            )
        if self.method == "randomized":
            if self.rank is None:
                raise ValueError("method='randomized' needs rank=...; e.g. LRE(..., rank=50)")
        if self.rank is not None and not 1 <= self.rank <= adapter.d_model:
            raise ValueError(
                f"rank {self.rank} is out of range for {adapter.name} with d_model = "
                f"{adapter.d_model}; choose 1 <= rank <= {adapter.d_model}"
            )

    def fit(self, model: Any, prompts: Sequence[RelationPrompt]) -> LRE:
        """Fit ``W`` and ``b`` from the Jacobians of ``prompts`` (validated ones).

        Raises:
            ValueError: no prompts, bad layers or rank, an encoder model.
            SpanNotFoundError: a subject is not in its prompt.
        """
        adapter = adapt(model)
        self.check_params(adapter)
        prompts = check_prompts(prompts, "LRE.fit")
        res: JacobianResult | LowRankJacobian
        if self.method == "exact":
            res = mean_jacobian(
                adapter, prompts, self.subject_layer, self.object_layer, **self.jacobian_kwargs()
            )
        else:
            assert self.rank is not None
            res = randomized_jacobian(
                adapter,
                prompts,
                self.subject_layer,
                self.object_layer,
                self.rank,
                oversampling=self.oversampling,
                n_power_iter=self.n_power_iter,
                aggregation=self.object_aggregation,
                seed=self.seed,
                prefix_cache=self.prefix_cache,
                progress=self.progress,
            )
        return self.fit_from_jacobian(adapter, prompts, res)

    def jacobian_kwargs(self) -> dict[str, Any]:
        """The keyword settings this LRE gives
        :func:`~semhooks.relations.jacobian.mean_jacobian` (``aggregation``, ``chunk_size``,
        ``prefix_cache``, ``progress``): :meth:`fit` and
        :func:`semhooks.relations.distributed.fit_lre_distributed` both pass them."""
        return {
            "aggregation": self.object_aggregation,
            "chunk_size": self.chunk_size,
            "prefix_cache": self.prefix_cache,
            "progress": self.progress,
        }

    def fit_from_jacobian(
        self,
        model: Any,
        prompts: Sequence[RelationPrompt],
        res: JacobianResult | LowRankJacobian,
        **provenance: Any,
    ) -> LRE:
        """Set ``W`` and ``b`` from a mean Jacobian already computed over ``prompts`` (e.g.
        gathered across ranks by :func:`semhooks.relations.distributed.fit_lre_distributed`);
        ``provenance`` is recorded with the fit."""
        self._svd = (
            (res.U.float(), res.S.float(), res.Vh.float())
            if isinstance(res, LowRankJacobian)
            else None
        )
        return self._set_fit(adapt(model), prompts, res, **provenance)

    def _set_fit(
        self,
        adapter: ModelAdapter,
        prompts: Sequence[RelationPrompt],
        res: JacobianResult | LowRankJacobian,
        **provenance: Any,
    ) -> LRE:
        """Store a fitted (mean) Jacobian and bias with their provenance (``fit`` and
        :func:`semhooks.relations.distributed.fit_lre_distributed` end here)."""
        self.weight_ = res.weight.float()
        self.bias_ = res.bias.float()
        self.subject_states_ = res.subject_states
        self.object_states_ = res.object_states
        self.n_prompts_ = len(prompts)
        self.objects_ = sorted({p.object for p in prompts})
        self.relation_ = prompts[0].relation
        self.fit_seconds_ = res.seconds
        self.prefix_cache_used_ = res.prefix_cache
        self.subject_layer_ = adapter.resolve_layers(self.subject_layer)[0]
        self.object_layer_ = adapter.resolve_layers(self.object_layer)[0]
        self.provenance_ = adapter.provenance(
            hook=adapter.hook_name("resid_post", self.subject_layer_),
            object_hook=adapter.hook_name("resid_post", self.object_layer_),
            subject_layer=self.subject_layer_,
            object_layer=self.object_layer_,
            pooling=f"subject last token -> object {self.object_aggregation}",
            **provenance,
        )
        return self

    def _require_fit(self) -> None:
        if not hasattr(self, "weight_"):
            raise NotFittedError("this LRE is not fitted yet; call fit(model, prompts) first")

    # ------------------------------------------------------------------ using
    def predict(self, subject_states: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """``beta W s + b`` for subject states ``[..., d]`` -> object states ``[..., d]``."""
        self._require_fit()
        s = torch.as_tensor(subject_states, dtype=torch.float32).cpu()
        if s.shape[-1] != self.weight_.shape[0]:
            raise ValueError(
                f"subject states have size {s.shape[-1]}, the LRE expects {self.weight_.shape[0]}"
            )
        return self.beta * s @ self.weight_.T + self.bias_

    def _model(self, model: Any | None) -> ModelAdapter:
        if model is not None:
            return adapt(model)
        raise ValueError(
            "an LRE keeps its provenance, not the model: pass model=... (the model it was "
            f"fitted on, {self.provenance_.get('model')!r}) to decode"
        )

    def logits(
        self, subject_states: Float[Tensor, "... d"], model: Any | None = None
    ) -> Float[Tensor, "... vocab"]:
        """Logits of :meth:`predict`'s object states through final norm + unembedding."""
        adapter = self._model(model)
        o = self.predict(subject_states).to(adapter.device, adapter.dtype)
        with torch.no_grad():
            return adapter.unembed(o).float().cpu()

    def decode(
        self, subject_states: Float[Tensor, "n d"], k: int = 5, model: Any | None = None
    ) -> list[list[str]]:
        """Top-``k`` tokens (strings) decoded from the LRE's object states, per row."""
        logits = self.logits(torch.atleast_2d(torch.as_tensor(subject_states)), model)
        top = logits.topk(k, dim=-1).indices
        tok = self._model(model).tokenizer
        return [[tok.decode([int(i)]) for i in row] for row in top]

    def svd(self) -> tuple[Float[Tensor, "d k"], Float[Tensor, " k"], Float[Tensor, "k d"]]:
        """``U, S, Vh`` of ``W`` (computed once, float64 on CPU, returned as float32)."""
        self._require_fit()
        if self._svd is None:
            U, S, Vh = torch.linalg.svd(self.weight_.double(), full_matrices=False)
            self._svd = (U.float(), S.float(), Vh.float())
        return self._svd

    def invert(self, rank: int) -> Float[Tensor, "d d"]:
        """The rank-``rank`` pseudo-inverse ``W^+ = V_r diag(1/sigma_r) U_r^T`` ``[d, d]``."""
        U, S, Vh = self.svd()
        d = self.weight_.shape[0]
        if not isinstance(rank, int) or not 1 <= rank <= d:
            raise ValueError(f"rank must be an int in 1..d_model = {d}; got {rank!r}")
        if rank > S.shape[0]:
            raise ValueError(
                f"this LRE holds a rank-{S.shape[0]} estimate of W (method='randomized', "
                f"rank={self.rank}); invert at rank <= {S.shape[0]} or refit with a larger rank"
            )
        U_r, S_r, Vh_r = U[:, :rank].double(), S[:rank].double(), Vh[:rank].double()
        if bool((S_r <= S[0] * 1e-7).any()):
            raise ValueError(
                f"W has numerically zero singular values among its top {rank}; lower the rank"
            )
        return ((Vh_r.T / S_r) @ U_r.T).float()

    # ------------------------------------------------------------------ evaluation
    def faithfulness(self, model: Any, prompts: Sequence[RelationPrompt]) -> Any:
        """Top-1 agreement of the decoded LRE with the model (see
        :func:`semhooks.relations.evaluation.faithfulness`)."""
        from semhooks.relations.evaluation.lre_metrics import faithfulness

        return faithfulness(self, model, prompts)

    def causality(self, model: Any, prompts: Sequence[RelationPrompt], rank: int) -> Any:
        """Hernandez causality of rank-``rank`` inverse edits (see
        :func:`semhooks.relations.evaluation.hernandez_causality`)."""
        from semhooks.relations.evaluation.lre_metrics import hernandez_causality

        return hernandez_causality(self, model, prompts, rank=rank)

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write weight, bias (and the SVD factors of a randomized fit) with provenance."""
        self._require_fit()
        tensors = {
            "weight": self.weight_,
            "bias": self.bias_,
            "subject_states": self.subject_states_,
            "object_states": self.object_states_,
        }
        if self.method == "randomized" and self._svd is not None:
            tensors.update(U=self._svd[0], S=self._svd[1], Vh=self._svd[2])
        params = self.get_params()
        meta = {
            "params": params,
            "provenance": self.provenance_,
            "n_prompts": self.n_prompts_,
            "objects": self.objects_,
            "relation": self.relation_,
            "fit_seconds": self.fit_seconds_,
            "subject_layer": self.subject_layer_,
            "object_layer": self.object_layer_,
        }
        return save_artifact(path, _KIND, tensors, meta)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: Any | None = None,
        *,
        allow_other_model: bool = False,
    ) -> LRE:
        """Read an LRE; with ``model``, refuse one made on another model (or, with
        ``allow_other_model=True``, only one of another width or hook layout)."""
        tensors, meta = load_artifact(path, _KIND, model=model, allow_other_model=allow_other_model)
        lre = cls(**meta["params"])
        lre.weight_ = tensors["weight"]
        lre.bias_ = tensors["bias"]
        lre.subject_states_ = tensors["subject_states"]
        lre.object_states_ = tensors["object_states"]
        if "U" in tensors:
            lre._svd = (tensors["U"], tensors["S"], tensors["Vh"])
        lre.n_prompts_ = meta["n_prompts"]
        lre.objects_ = meta["objects"]
        lre.relation_ = meta["relation"]
        lre.fit_seconds_ = meta["fit_seconds"]
        lre.subject_layer_ = meta["subject_layer"]
        lre.object_layer_ = meta["object_layer"]
        lre.provenance_ = meta["provenance"]
        return lre

    def __repr__(self) -> str:
        fitted = (
            f", fitted on {self.n_prompts_} prompts of {self.relation_!r}"
            if hasattr(self, "weight_")
            else ""
        )
        return (
            f"LRE(subject_layer={self.subject_layer}, object_layer={self.object_layer}, "
            f"beta={self.beta}, object_aggregation={self.object_aggregation!r}, "
            f"method={self.method!r}{fitted})"
        )
