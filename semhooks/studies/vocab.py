"""Vocabulary-defined semantics (Gu et al. 2024, arXiv 2401.16184; METHODS.md section 4).

The semantic basis ``s_i`` of every token (``s_i = e_i W_U^+``) lives in
:mod:`semhooks.vocabulary.basis` and is re-exported here. This module reads states with it:

*Semantic logits* are cosines ``cos(h, s_i)`` over a sub-vocabulary (the label words) instead of
the dot products ``h . u_i`` over all ``V`` tokens (:func:`semantic_logits`). The basis lives
where the unembedding reads: after the model's final norm. :func:`vocab_lens` therefore applies
the final norm to intermediate states, as the logit lens does, and shows both side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import ModelAdapter, adapt
from semhooks.data.columns import from_columns
from semhooks.vocabulary.basis import (
    BasisReport,
    SemanticBasis,
    basis_report,
    label_basis,
    label_token_ids,
    self_consistency,
    semantic_basis,
    unembedding_hash,
)

__all__ = [
    "BasisReport",
    "SemanticBasis",
    "VocabLensResult",
    "basis_report",
    "label_basis",
    "label_token_ids",
    "self_consistency",
    "semantic_basis",
    "semantic_logits",
    "unembedding_hash",
    "vocab_lens",
]


def _basis_rows(basis: SemanticBasis | Tensor | np.ndarray) -> Tensor:
    if isinstance(basis, SemanticBasis):
        return basis.unit()
    v = torch.as_tensor(np.asarray(basis) if isinstance(basis, np.ndarray) else basis)
    if v.ndim != 2:
        raise ValueError(f"basis must be [k, d_model], got shape {tuple(v.shape)}")
    v = v.detach().float().cpu()
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def semantic_logits(
    states: Float[Tensor, "... d_model"] | np.ndarray,
    basis: SemanticBasis | Float[Tensor, "k d_model"] | np.ndarray,
    *,
    temperature: float | None = None,
) -> Float[Tensor, "... k"]:
    """Semantic logits ``cos(h, s_i) / temperature`` for every state and basis row.

    ``states`` must live where the unembedding reads (after the final norm; see
    :func:`vocab_lens` for intermediate layers). Only the ``k`` rows of ``basis`` are touched:
    a label-word basis costs ``k x d`` per state instead of ``V x d`` for full logits.

    Args:
        states: ``[..., d_model]``.
        basis: a :class:`SemanticBasis` or ``[k, d_model]`` vectors.
        temperature: divide the cosines by it (``None``: plain cosines in ``[-1, 1]``).

    Returns:
        ``[..., k]`` float32 on CPU.
    """
    rows = _basis_rows(basis)
    h = torch.as_tensor(states) if isinstance(states, np.ndarray) else states
    if not isinstance(h, Tensor) or not h.is_floating_point():
        raise TypeError("states must be a floating-point tensor or array [..., d_model]")
    if h.shape[-1] != rows.shape[1]:
        raise ValueError(
            f"states have width {h.shape[-1]} but the basis has d_model={rows.shape[1]}; "
            "use states and a basis from the same model"
        )
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    h = h.detach().float().cpu()
    h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    out = h @ rows.T
    return out / temperature if temperature is not None else out


# ---------------------------------------------------------------------- vocabulary lens
@dataclass
class VocabLensResult:
    """Per-layer top tokens by semantic logits beside the standard logit lens.

    Shapes: ``[n_layers, n_texts, top_k]`` for every id and score tensor.

    Attributes:
        texts: the inputs (read at their last token).
        layers: model layers (``resid_post``).
        semantic_ids, semantic_scores: top tokens by ``cos(final_norm(h), s_i)``.
        logit_ids, logit_scores: top tokens by the logit lens (final norm + unembedding).
        tokenizer: to decode ids.
        logit_lens_source: ``"transformer_lens"`` (``tools.analysis.logit_readout``) or
            ``"semhooks"`` (``ModelAdapter.unembed``).
    """

    texts: list[str]
    layers: list[int]
    semantic_ids: Int[Tensor, "layer text k"]
    semantic_scores: Float[Tensor, "layer text k"]
    logit_ids: Int[Tensor, "layer text k"]
    logit_scores: Float[Tensor, "layer text k"]
    tokenizer: Any
    logit_lens_source: str

    def decode(self, ids: Tensor) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids.tolist()]

    def agreement(self) -> Float[Tensor, " layer"]:
        """Per layer: fraction of texts whose semantic and logit-lens top-1 tokens agree."""
        return (self.semantic_ids[..., 0] == self.logit_ids[..., 0]).float().mean(-1)

    def _check_item(self, item: int) -> None:
        if not 0 <= item < len(self.texts):
            raise IndexError(f"item {item} is out of range for {len(self.texts)} texts")

    def table(self, item: int = 0, top: int | None = None) -> str:
        """Markdown: one row per layer, top tokens by semantic logits and by the logit lens."""
        self._check_item(item)
        k = top or self.semantic_ids.shape[-1]
        lines = [
            f"Text: {self.texts[item]!r}",
            "",
            "| layer | semantic (cos to s_i) | logit lens |",
            "|---|---|---|",
        ]
        for li, layer in enumerate(self.layers):
            sem = ", ".join(
                f"{t!r} {s:.2f}"
                for t, s in zip(
                    self.decode(self.semantic_ids[li, item, :k]),
                    self.semantic_scores[li, item, :k].tolist(),
                    strict=True,
                )
            )
            lg = ", ".join(
                f"{t!r} {s:.1f}"
                for t, s in zip(
                    self.decode(self.logit_ids[li, item, :k]),
                    self.logit_scores[li, item, :k].tolist(),
                    strict=True,
                )
            )
            lines.append(f"| {layer} | {sem} | {lg} |")
        return "\n".join(lines)

    def plot(self, item: int = 0, top: int = 5, ax: Any = None) -> Any:
        """Two panels (semantic / logit lens): layers x rank, cells labelled with the token
        and coloured by the score normalised within the row. Returns the figure."""
        import matplotlib.pyplot as plt

        self._check_item(item)
        k = min(top, self.semantic_ids.shape[-1])
        n = len(self.layers)
        if ax is None:
            fig, axes = plt.subplots(1, 2, figsize=(2.2 * k * 2, 0.35 * n + 1.5), squeeze=False)
            axes = axes[0]
        else:
            axes = ax
            fig = axes[0].figure
        panels = (
            ("semantic logits cos(h, s_i)", self.semantic_ids, self.semantic_scores),
            (f"logit lens ({self.logit_lens_source})", self.logit_ids, self.logit_scores),
        )
        for a, (title, ids, scores) in zip(axes, panels, strict=True):
            sc = scores[:, item, :k].float()
            lo = sc.min(-1, keepdim=True).values
            hi = sc.max(-1, keepdim=True).values
            norm = ((sc - lo) / (hi - lo).clamp_min(1e-12)).numpy()
            a.imshow(norm, aspect="auto", cmap="Blues", vmin=0, vmax=1.4)
            for li in range(n):
                for r, tok in enumerate(self.decode(ids[li, item, :k])):
                    a.text(r, li, _show(tok), ha="center", va="center", fontsize=7)
            a.set_yticks(range(n), [str(x) for x in self.layers])
            a.set_xticks(range(k), [str(r + 1) for r in range(k)])
            a.set_xlabel("rank")
            a.set_ylabel("layer")
            a.set_title(title, fontsize=9)
        fig.suptitle(f"vocabulary lens: {self.texts[item][:60]!r}", fontsize=9)
        fig.tight_layout()
        return fig


def _show(token: str) -> str:
    """A token for a plot cell: visible leading spaces and newlines, at most 12 characters."""
    return token.replace(" ", "\u2423").replace("\n", "\\n")[:12]


def _logit_lens_top(
    adapter: ModelAdapter, states: Tensor, top_k: int
) -> tuple[Tensor, Tensor, str]:
    """Top-k logit-lens tokens of raw residual states ``[n, d]`` (final norm applied)."""
    return adapter.logit_lens_top(states, top_k)


def vocab_lens(
    model: Any,
    texts: str | Sequence[str],
    layers: int | Sequence[int] | str = "all",
    *,
    top_k: int = 5,
    center_unembed: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> VocabLensResult:
    """Vocabulary lens: per-layer top tokens by semantic logits beside the logit lens.

    For each text, the ``resid_post`` state ``h_l`` of its last token at each layer is put
    through the model's final norm and compared with every token's basis vector,
    ``cos(final_norm(h_l), s_i)``; the logit lens reads the same state through the final norm
    and the unembedding (TransformerLens' ``logit_readout`` on a decoder bridge).

    Returns:
        A :class:`VocabLensResult` (``.table()``, ``.plot()``, ``.agreement()``).
    """
    texts = from_columns(texts)
    from semhooks.extraction.states import extract_states

    adapter = adapt(model)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not 1 <= top_k <= adapter.d_vocab:
        raise ValueError(f"top_k must be in 1..{adapter.d_vocab}, got {top_k}")
    layer_list = adapter.resolve_layers(layers)
    states = extract_states(
        adapter,
        texts,
        layer_list,
        tokens="last",
        pool="last",
        batch_size=batch_size,
        progress=progress,
    )
    basis = semantic_basis(adapter, center_unembed=center_unembed)
    rows = basis.unit()
    sem_ids, sem_scores, lg_ids, lg_scores = [], [], [], []
    source = "semhooks"
    for layer in tqdm(layer_list, desc="vocab lens", disable=not progress, unit="layer"):
        h = states.layer(layer)
        with torch.no_grad():
            hn = adapter.final_norm(h).float().cpu()
        cos = semantic_logits(hn, rows)
        top = cos.topk(top_k, dim=-1)
        sem_ids.append(top.indices)
        sem_scores.append(top.values)
        ids, vals, source = _logit_lens_top(adapter, h, top_k)
        lg_ids.append(ids)
        lg_scores.append(vals)
    return VocabLensResult(
        texts=texts,
        layers=layer_list,
        semantic_ids=torch.stack(sem_ids),
        semantic_scores=torch.stack(sem_scores),
        logit_ids=torch.stack(lg_ids),
        logit_scores=torch.stack(lg_scores),
        tokenizer=adapter.tokenizer,
        logit_lens_source=source,
    )
