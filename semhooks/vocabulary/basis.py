"""The semantic basis of a model's vocabulary (Gu et al. 2024, arXiv 2401.16184; METHODS.md section 4).

The unembedding ``W_U`` (``[d_model, V]``, logits ``= h W_U + b_U``) gives every token ``i`` a
*semantic basis* vector ``s_i``: the latent state whose logits are, in the least-squares sense,
closest to the one-hot ``e_i``::

    s_i = e_i W_U^+                     (row i of the pseudo-inverse, [V, d_model])
        = G^-1 u_i,   G = W_U W_U^T     (one d x d solve; u_i is column i of W_U)

The second form is what :func:`semantic_basis` computes (float64 Cholesky solve on CPU); the
first is the :func:`torch.linalg.pinv` reference. When ``V < d_model`` (``W_U`` has full column
rank) the ``V x V`` Gram matrix is used instead, ``s_i = W_U (W_U^T W_U)^-1 e_i``, and every
``s_i`` reproduces ``e_i`` exactly.

The basis is built from ``W_U`` alone (the bias ``b_U`` is a per-token constant that no latent
state can change). A TransformerBridge keeps the raw Hugging Face weights; TransformerLens'
weight processing (``center_unembed``) subtracts each row's vocabulary mean from ``W_U``, which
changes ``G`` and so the basis: :func:`basis_report` measures by how much.

This module sits below the estimators and the studies (it reads the backend only):
:class:`semhooks.estimators.calibrator.VocabCalibrator` and :mod:`semhooks.studies.vocab` both
build on it.
"""

from __future__ import annotations

import hashlib
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import ModelAdapter, adapt, cache_dir
from semhooks.io.artifacts import ArtifactError, load_artifact, save_artifact

__all__ = [
    "BasisReport",
    "SemanticBasis",
    "TokenIds",
    "basis_report",
    "clear_gram_cache",
    "label_basis",
    "label_token_ids",
    "self_consistency",
    "semantic_basis",
    "unembedding_hash",
]

TokenIds = Sequence[int] | Int[Tensor, " k"] | np.ndarray


# ---------------------------------------------------------------------- the basis object
@dataclass
class SemanticBasis:
    """Semantic basis vectors ``s_i`` for a set of tokens (rows in ``token_ids`` order).

    Attributes:
        vectors: ``[k, d_model]`` basis rows (float32 unless float64 was asked for).
        token_ids: ``[k]`` the token of each row.
        words: the label words the rows stand for (``None`` for plain token subsets).
        tokens: the decoded token of each row (``None`` for the full vocabulary).
        centered: built from the vocabulary-centred ``W_U`` (TransformerLens ``center_unembed``).
        w_u_hash: the :func:`unembedding_hash` of the raw ``W_U`` it came from.
        provenance: the model's provenance when built from a model.
    """

    vectors: Float[Tensor, "k d_model"]
    token_ids: Int[Tensor, " k"]
    words: list[str] | None = None
    tokens: list[str] | None = None
    centered: bool = False
    w_u_hash: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(
                f"basis vectors must be [k, d_model], got shape {tuple(self.vectors.shape)}"
            )
        self.token_ids = torch.as_tensor(self.token_ids, dtype=torch.long).reshape(-1)
        if len(self.token_ids) != len(self.vectors):
            raise ValueError(
                f"{len(self.token_ids)} token ids for {len(self.vectors)} basis vectors"
            )

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def names(self) -> list[str]:
        """Label words if any, else decoded tokens, else token ids as strings."""
        if self.words is not None:
            return list(self.words)
        if self.tokens is not None:
            return list(self.tokens)
        return [str(i) for i in self.token_ids.tolist()]

    def unit(self) -> Float[Tensor, "k d_model"]:
        """Rows scaled to unit length (float32): the cosine geometry of the basis."""
        v = self.vectors.float()
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)

    def select(self, token_ids: TokenIds) -> SemanticBasis:
        """The rows of the given tokens (which must be in this basis)."""
        want = torch.as_tensor(np.asarray(token_ids), dtype=torch.long).reshape(-1)
        where = {int(t): i for i, t in enumerate(self.token_ids.tolist())}
        missing = [int(t) for t in want.tolist() if int(t) not in where]
        if missing:
            raise KeyError(f"tokens {missing[:10]} are not in this basis of {len(self)} tokens")
        idx = [where[int(t)] for t in want.tolist()]
        return SemanticBasis(
            self.vectors[idx],
            want,
            None,
            [self.tokens[i] for i in idx] if self.tokens is not None else None,
            self.centered,
            self.w_u_hash,
            dict(self.provenance),
        )


# ---------------------------------------------------------------------- W_U access
def _unembedding(model_or_w_u: Any) -> tuple[Tensor, ModelAdapter | None]:
    """``(W_U [d, V] float32 CPU, adapter or None)`` from a model, adapter or a matrix."""
    if isinstance(model_or_w_u, (Tensor, np.ndarray)):
        w = torch.as_tensor(model_or_w_u).detach()
        if w.ndim != 2:
            raise ValueError(f"W_U must be a [d_model, vocab] matrix, got shape {tuple(w.shape)}")
        return w.to("cpu", torch.float32), None
    adapter = adapt(model_or_w_u)
    w = adapter.W_U
    if not isinstance(w, Tensor) or w.ndim != 2:
        raise ValueError(f"{adapter.name} has no readable [d_model, vocab] W_U")
    return w.detach().to("cpu", torch.float32), adapter


def _hash_matrix(w: Tensor) -> str:
    # Canonical bytes: W_U^T [V, d] in C order, the Hugging Face lm_head / tied-embedding
    # layout, so a bridge's W_U is hashed without a 100 MB copy.
    arr = np.ascontiguousarray(w.T.numpy())
    h = hashlib.sha256(f"W_U{tuple(w.shape)}".encode())
    h.update(arr.data)
    return h.hexdigest()[:16]


# model -> (W_U storage key, hash): the hash of a model's W_U until its weights change.
_WU_HASHES: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()


def unembedding_hash(w_u: Any) -> str:
    """First 16 hex digits of the SHA-256 of ``W_U``'s float32 bytes (``W_U^T`` in C order)
    and its shape.

    For a model the hash is remembered (beside the model, in a weak dictionary) until the
    weights change in place.
    """
    w, adapter = _unembedding(w_u)
    if adapter is None:
        return _hash_matrix(w)
    raw = adapter.W_U
    key = (raw.data_ptr(), tuple(raw.shape), raw.stride(), raw._version, str(raw.dtype))
    memo = _WU_HASHES.get(adapter.model)
    if memo is not None and memo[0] == key:
        return memo[1]
    digest = _hash_matrix(w)
    _WU_HASHES[adapter.model] = (key, digest)
    return digest


def _as_float64(w: Tensor, center: bool) -> Float[Tensor, "d_model vocab"]:
    w64 = w.double()
    if center:
        # TransformerLens center_unembed: each row of W_U minus its mean over the vocabulary.
        w64 = w64 - w64.mean(-1, keepdim=True)
    return w64


def _resolve_ids(tokens: TokenIds | None, n_vocab: int) -> Tensor:
    if tokens is None:
        return torch.arange(n_vocab)
    if isinstance(tokens, (str, bytes)) or (
        isinstance(tokens, Sequence) and any(isinstance(t, str) for t in tokens)
    ):
        raise TypeError(
            "semantic_basis takes token ids; for words use label_basis(model, words) "
            "(it maps each word to the first token of ' word' and checks collisions)"
        )
    ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise ValueError("tokens is empty; pass None for the whole vocabulary or some token ids")
    bad = ids[(ids < 0) | (ids >= n_vocab)]
    if bad.numel():
        raise ValueError(
            f"token ids {bad[:10].tolist()} are out of range for a vocabulary of {n_vocab}"
        )
    return ids


# Cholesky factors of recent Gram matrices, keyed by (W_U hash, centred): a label-word basis
# after a full one (or another label set on the same model) skips the d^2 V product.
_GRAM_CACHE: OrderedDict[tuple[str, bool], tuple[str, Tensor]] = OrderedDict()
_GRAM_CACHE_SIZE = 4


def _gram_factor(w64: Tensor, key: tuple[str, bool] | None) -> tuple[str, Tensor]:
    """``("row" | "col", L)``: Cholesky factor of the smaller Gram matrix of ``W_U``."""
    if key is not None and key in _GRAM_CACHE:
        _GRAM_CACHE.move_to_end(key)
        return _GRAM_CACHE[key]
    d, v = w64.shape
    side = "row" if d <= v else "col"
    gram = w64 @ w64.T if side == "row" else w64.T @ w64
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise np.linalg.LinAlgError(
            f"the Gram matrix of W_U ({'W_U W_U^T' if side == 'row' else 'W_U^T W_U'}, "
            f"{gram.shape[0]}x{gram.shape[0]}) is singular: W_U [{d}, {v}] is rank-deficient"
        )
    out = (side, factor)
    if key is not None:
        _GRAM_CACHE[key] = out
        while len(_GRAM_CACHE) > _GRAM_CACHE_SIZE:
            _GRAM_CACHE.popitem(last=False)
    return out


def _solve_basis(
    w64: Float[Tensor, "d_model vocab"], ids: Tensor, key: tuple[str, bool] | None
) -> Float[Tensor, "k d_model"]:
    """Rows ``ids`` of ``W_U^+`` through a Gram solve (float64); pinv if ``W_U`` is singular."""
    try:
        side, factor = _gram_factor(w64, key)
    except np.linalg.LinAlgError as exc:
        warnings.warn(f"{exc}; falling back to torch.linalg.pinv", stacklevel=3)
        return torch.linalg.pinv(w64)[ids]
    if side == "row":
        # s_i = G^-1 u_i with G = W_U W_U^T.
        return torch.cholesky_solve(w64[:, ids], factor).T
    # V < d: W_U^+ = (W_U^T W_U)^-1 W_U^T, so s_i = W_U (W_U^T W_U)^-1 e_i.
    eye = torch.zeros(w64.shape[1], len(ids), dtype=w64.dtype)
    eye[ids, torch.arange(len(ids))] = 1.0
    return (w64 @ torch.cholesky_solve(eye, factor)).T


def _cache_path(w_hash: str, centered: bool) -> Path:
    return cache_dir() / "bases" / f"{w_hash}{'-centered' if centered else ''}.safetensors"


def _load_cached(path: Path, shape: tuple[int, int]) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        tensors, meta = load_artifact(path, "SemanticBasisCache")
    except ArtifactError as exc:
        warnings.warn(f"ignoring unreadable basis cache {path}: {exc}", stacklevel=3)
        return None
    vectors = tensors.get("vectors")
    if vectors is None or tuple(vectors.shape) != (shape[1], shape[0]):
        warnings.warn(f"ignoring basis cache {path}: shape does not fit W_U {shape}", stacklevel=3)
        return None
    return vectors


def semantic_basis(
    model: Any,
    tokens: TokenIds | None = None,
    *,
    center_unembed: bool = False,
    method: str = "gram",
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
) -> SemanticBasis:
    """Semantic basis ``s_i = G^-1 u_i`` (``G = W_U W_U^T``) for all tokens or a subset.

    Args:
        model: a TransformerLens model, a :class:`ModelAdapter`, or ``W_U`` itself
            (``[d_model, V]`` tensor or array).
        tokens: token ids (``None``: the whole vocabulary, ``[V, d_model]``). For words use
            :func:`label_basis`.
        center_unembed: use ``W_U - W_U.mean(-1, keepdim=True)``, as TransformerLens'
            ``center_unembed`` weight processing would.
        method: ``"gram"`` (Cholesky solve of the smaller Gram matrix, float64) or ``"pinv"``
            (rows of ``torch.linalg.pinv(W_U)`` in float64: the exact reference).
        dtype: dtype of the returned vectors (the computation is always float64 on CPU).
        cache: read and write the full float32 basis under
            ``cache_dir()/bases/<sha256(W_U)[:16]>.safetensors`` (whole vocabulary, ``"gram"``).

    Returns:
        A :class:`SemanticBasis` with ``vectors [k, d_model]`` in ``tokens`` order.
    """
    if method not in ("gram", "pinv"):
        raise ValueError(f"method must be 'gram' or 'pinv', got {method!r}")
    w, adapter = _unembedding(model)
    d, n_vocab = w.shape
    ids = _resolve_ids(tokens, n_vocab)
    w_hash = unembedding_hash(adapter if adapter is not None else w)
    use_disk = cache and method == "gram" and dtype == torch.float32
    path = _cache_path(w_hash, center_unembed)
    vectors: Tensor | None = None
    if use_disk:
        full = _load_cached(path, (d, n_vocab))
        if full is not None:
            vectors = full if tokens is None else full[ids]
    if vectors is None:
        w64 = _as_float64(w, center_unembed)
        if method == "pinv":
            vectors = torch.linalg.pinv(w64)[ids]
        else:
            vectors = _solve_basis(w64, ids, (w_hash, center_unembed))
        if use_disk and tokens is None:
            try:
                save_artifact(
                    path,
                    "SemanticBasisCache",
                    {"vectors": vectors.float()},
                    {"w_u_hash": w_hash, "centered": center_unembed, "shape": [d, n_vocab]},
                )
            except OSError as exc:
                warnings.warn(f"could not cache the semantic basis in {path}: {exc}", stacklevel=2)
    provenance = adapter.provenance(center_unembed=center_unembed) if adapter else {}
    return SemanticBasis(
        vectors.to(dtype),
        ids,
        centered=center_unembed,
        w_u_hash=w_hash,
        provenance=provenance,
    )


# ---------------------------------------------------------------------- label words
def label_token_ids(
    model: Any, label_words: Sequence[str], *, template: str = " {}"
) -> tuple[list[int], list[str]]:
    """Token id and decoded token of each label word: the first token of ``template.format(w)``.

    Raises:
        ValueError: an empty label word, a word that encodes to no tokens or to the
            tokenizer's unknown token, or two labels whose first tokens coincide (names both
            labels and the shared token).
    """
    adapter = adapt(model)
    tok = adapter.tokenizer
    if isinstance(label_words, str) or not isinstance(label_words, Sequence):
        raise TypeError(f"label_words must be a list of strings, got {label_words!r}")
    if len(label_words) < 2:
        raise ValueError(f"need at least two label words, got {list(label_words)}")
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}' for the word, got {template!r}")
    unk = getattr(tok, "unk_token_id", None)
    ids: list[int] = []
    decoded: list[str] = []
    for word in label_words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"label word {word!r} is empty; label words must be non-empty text")
        pieces = tok(template.format(word), add_special_tokens=False)["input_ids"]
        if not pieces:
            raise ValueError(f"unknown label word {word!r}: it encodes to no tokens")
        if unk is not None and pieces[0] == unk:
            raise ValueError(
                f"unknown label word {word!r}: its first token is the tokenizer's unknown "
                f"token {tok.convert_ids_to_tokens(unk)!r}; choose a word in {adapter.name}'s "
                "vocabulary"
            )
        ids.append(int(pieces[0]))
        decoded.append(tok.decode([pieces[0]]))
    groups: dict[int, list[str]] = {}
    for word, i in zip(label_words, ids, strict=True):
        groups.setdefault(i, []).append(word)
    clashes = {i: ws for i, ws in groups.items() if len(ws) > 1}
    if clashes:
        desc = "; ".join(
            f"{' and '.join(repr(w) for w in ws)} all start with token {tok.decode([i])!r} (id {i})"
            for i, ws in clashes.items()
        )
        raise ValueError(
            f"label words collide: {desc}. Each label needs its own first token of "
            f"{template!r}; choose other label words or another template"
        )
    return ids, decoded


def label_basis(
    model: Any,
    label_words: Sequence[str],
    *,
    template: str = " {}",
    center_unembed: bool = False,
) -> SemanticBasis:
    """Semantic basis of label words (first token of ``" word"``), in ``label_words`` order.

    Returns:
        A :class:`SemanticBasis` with ``words`` set and ``vectors [n_labels, d_model]``.
    """
    ids, decoded = label_token_ids(model, label_words, template=template)
    basis = semantic_basis(model, ids, center_unembed=center_unembed)
    basis.words = list(label_words)
    basis.tokens = decoded
    basis.provenance = {
        **basis.provenance,
        "label_words": list(label_words),
        "label_template": template,
        "label_token_ids": ids,
    }
    return basis


# ---------------------------------------------------------------------- self-consistency
def self_consistency(
    model: Any,
    tokens: TokenIds | None = None,
    *,
    center_unembed: bool = False,
    chunk_size: int = 1024,
    progress: bool = False,
    return_peaks: bool = False,
) -> float | tuple[float, Tensor]:
    """Fraction of tokens ``i`` whose basis logits ``s_i W_U`` peak at ``i`` (bias excluded).

    Args:
        tokens: the token ids to check (``None``: all; a random sample is much cheaper:
            the check costs ``k x d x V`` multiply-adds).
        return_peaks: also return the argmax token of each checked row.
    """
    w, _ = _unembedding(model)
    ids = _resolve_ids(tokens, w.shape[1])
    basis = semantic_basis(w, ids, center_unembed=center_unembed, cache=tokens is None)
    w_read = _as_float64(w, center_unembed).float() if center_unembed else w
    peaks = torch.empty(len(ids), dtype=torch.long)
    starts = range(0, len(ids), chunk_size)
    for start in tqdm(starts, desc="self-consistency", disable=not progress, unit="chunk"):
        rows = basis.vectors[start : start + chunk_size].float()
        peaks[start : start + chunk_size] = (rows @ w_read).argmax(-1)
    frac = float((peaks == ids).double().mean())
    return (frac, peaks) if return_peaks else frac


@dataclass
class BasisReport:
    """How well the semantic basis reproduces one-hot logits, raw and ``center_unembed``-ed.

    Attributes:
        model: model name.
        d_model, d_vocab: shape of ``W_U``.
        n_checked: tokens checked (all, or a seeded random sample).
        self_consistency: fraction whose basis logits peak at the token itself (raw ``W_U``).
        self_consistency_centered: the same with the centred ``W_U`` and its own basis.
        cosine_mean, cosine_median, cosine_min: per-token cosine between the raw and the
            centred basis vector of the same token.
        cond_gram, cond_gram_centered: condition numbers of the Gram matrices.
        seconds: wall time of the report.
    """

    model: str
    d_model: int
    d_vocab: int
    n_checked: int
    self_consistency: float
    self_consistency_centered: float
    cosine_mean: float
    cosine_median: float
    cosine_min: float
    cond_gram: float
    cond_gram_centered: float
    seconds: float

    def table(self) -> str:
        """A Markdown table of the report."""
        rows = [
            ("model", self.model),
            ("W_U shape [d_model, V]", f"[{self.d_model}, {self.d_vocab}]"),
            ("tokens checked", f"{self.n_checked:,}"),
            ("self-consistency, raw W_U (bridge)", f"{self.self_consistency:.2%}"),
            ("self-consistency, centred W_U", f"{self.self_consistency_centered:.2%}"),
            (
                "cos(raw s_i, centred s_i): mean / median / min",
                f"{self.cosine_mean:.4f} / {self.cosine_median:.4f} / {self.cosine_min:.4f}",
            ),
            ("cond(G), raw / centred", f"{self.cond_gram:.3g} / {self.cond_gram_centered:.3g}"),
        ]
        lines = ["| quantity | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)


def basis_report(
    model: Any, *, sample: int | None = None, seed: int = 0, progress: bool = True
) -> BasisReport:
    """Self-consistency of the basis and the effect of TransformerLens' ``center_unembed``.

    Args:
        sample: check this many random tokens (seeded) instead of the whole vocabulary.
    """
    t0 = time.perf_counter()
    w, adapter = _unembedding(model)
    d, n_vocab = w.shape
    if sample is None or sample >= n_vocab:
        ids = torch.arange(n_vocab)
    else:
        if sample < 1:
            raise ValueError(f"sample must be a positive number of tokens, got {sample}")
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randperm(n_vocab, generator=gen)[:sample].sort().values
    tokens = None if len(ids) == n_vocab else ids
    sc = self_consistency(w, tokens, progress=progress)
    sc_c = self_consistency(w, tokens, center_unembed=True, progress=progress)
    raw = semantic_basis(w, ids).vectors
    cen = semantic_basis(w, ids, center_unembed=True).vectors
    cos = torch.nn.functional.cosine_similarity(raw.double(), cen.double(), dim=-1)
    w64 = w.double()
    wc = _as_float64(w, True)
    small = (lambda m: m @ m.T) if d <= n_vocab else (lambda m: m.T @ m)
    return BasisReport(
        model=adapter.name if adapter else "W_U",
        d_model=d,
        d_vocab=n_vocab,
        n_checked=len(ids),
        self_consistency=float(sc),  # type: ignore[arg-type]
        self_consistency_centered=float(sc_c),  # type: ignore[arg-type]
        cosine_mean=float(cos.mean()),
        cosine_median=float(cos.median()),
        cosine_min=float(cos.min()),
        cond_gram=float(torch.linalg.cond(small(w64))),
        cond_gram_centered=float(torch.linalg.cond(small(wc))),
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------- semantic logits


def clear_gram_cache() -> None:
    """Forget the in-memory Gram factors (the on-disk basis cache is kept)."""
    _GRAM_CACHE.clear()
