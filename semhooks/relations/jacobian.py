"""Jacobians of the object state with respect to the subject state: exact and randomized.

For a prompt, let ``s`` be the residual state after block ``l_s`` at the subject's last
token and ``o`` the state after block ``l_o`` at the object positions (their mean, or the
first). The LRE (Hernandez et al. 2023) needs ``J = do/ds`` (``d x d``) per prompt.

How the cost is cut (what is computed once, what is cached):

- **The subject is replaced through a hook.** A hook on ``blocks.{l_s}.hook_resid_post``
  swaps the value at the subject position for a leaf tensor; every other position keeps
  the model's own value, so ``J`` is the derivative the LRE needs and nothing else.
- **The prefix is computed once, as a KV cache.** In a causal model the tokens before the
  subject's last token do not depend on ``s``. The prefix runs once, without autograd, into
  the backend's own KV cache (Hugging Face's cache on the bridge, whatever it names its
  cache argument; ``HookedTransformerKeyValueCache`` on TransformerLens 3.x), stopped after
  block ``l_o``; the differentiable pass then runs only the suffix (subject token to last
  object position) on top of that cache, so each product touches ``T - p_s`` positions
  instead of ``T``. The cached path is checked once per model against a full forward pass
  (relative error below ``CACHE_TOLERANCE``); when it cannot be used, a
  :class:`~semhooks.errors.FallbackWarning` says so once per model and full passes are used
  (``prefix_cache=False`` asks for them silently, ``True`` refuses to fall back).
- **The forward stops at the object layer** (a hook raises ``StopForward``), so blocks after
  ``l_o`` and the unembedding never run.
- **Products are batched**: the exact Jacobian is ``d`` vector-Jacobian products from one
  graph in batched backwards (``is_grads_batched``, chunks of at most ``CHUNK``).
- **Randomized path** (Halko, Martinsson & Tropp 2011, Alg. 4.1/4.4 with 5.1): only the
  top singular directions of ``W = mean_i J_i`` are needed by the LRC, so ``k = rank +
  oversampling`` Jacobian-vector products per prompt (``Y = W Omega`` averaged over prompts;
  a JVP is the derivative of a VJP with respect to its cotangent, a double backward:
  ``torch.func.jvp`` under ``vmap`` measured twice as slow) give an orthonormal range basis
  ``Q``; ``k`` vector-Jacobian products give ``B = Q^T W``; the SVD of ``B`` gives
  ``W ~ (Q U_B) S V^T``. ``n_power_iter`` power iterations sharpen the range when the
  spectrum decays slowly. Each prompt's suffix graph (a few positions of activations) is
  built once and kept for every pass. The bias is exact in both paths: ``J_i s_i`` is one
  more JVP.

Prompts run one at a time (batch of one, no padding): with the prefix cached, the suffix is a
handful of tokens, and the batched products already vectorise the work.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.backend.adapter import HookFn, ModelAdapter, adapt
from semhooks.errors import FallbackWarning
from semhooks.extraction.reader import batch_from_ids, read
from semhooks.relations.prompts import RelationPrompt, encode_prompts

__all__ = [
    "JacobianResult",
    "LowRankJacobian",
    "SubjectObjectMap",
    "mean_jacobian",
    "principal_angles",
    "prompt_jacobian",
    "randomized_jacobian",
    "reference_jacobian",
]

Aggregation = Literal["mean", "first"]
# Relative error allowed between the KV-cached and the full forward's object state.
CACHE_TOLERANCE = 1e-4
CHUNK = 192  # most cotangents per batched backward of the exact path (see mean_jacobian)
_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()  # models warned about


def _nothing(key: Any, acts: Tensor) -> Tensor:
    """A ``take`` that keeps nothing (a pass run only to fill a KV cache)."""
    return acts[:, :0]


def _warn_once(adapter: ModelAdapter, message: str) -> None:
    """A :class:`~semhooks.errors.FallbackWarning`, once per model."""
    if adapter.model in _WARNED:
        return
    _WARNED.add(adapter.model)
    warnings.warn(message, FallbackWarning, stacklevel=4)


@dataclass
class _Prepared:
    """One prompt, tokenised and cut after its last object position, with its prefix cache."""

    prompt: RelationPrompt
    input_ids: Tensor  # [1, T]
    subject_pos: int
    object_pos: list[int]
    cache: Any = None  # HF cache of positions < subject_pos, or None (full passes)


class SubjectObjectMap:
    """The map ``s -> o`` of one prompt, as a differentiable function of the subject state.

    Args:
        model: a decoder (TransformerBridge or HookedTransformer).
        subject_layer: ``l_s``; ``s`` is ``blocks.{l_s}.hook_resid_post`` at the subject's
            last token.
        object_layer: ``l_o >= l_s``; ``o`` is ``blocks.{l_o}.hook_resid_post`` at the object
            positions.
        aggregation: ``"mean"`` over the object positions, or ``"first"`` (the last prompt
            token only).
        prefix_cache: ``"auto"`` (KV-cache the prefix where the backend can, checked once
            per model, with a FallbackWarning where it cannot), True (require it) or False
            (full forward passes).
    """

    def __init__(
        self,
        model: Any,
        subject_layer: int,
        object_layer: int,
        aggregation: Aggregation = "mean",
        prefix_cache: bool | Literal["auto"] = "auto",
    ):
        self.adapter: ModelAdapter = adapt(model)
        self.adapter.require_eval()
        if self.adapter.is_encoder:
            raise ValueError(
                f"{self.adapter.name} is an encoder: its prefix depends on the subject, so LREs "
                "(defined for causal decoders) do not apply; use a decoder such as smollm2-135m"
            )
        ls, lo = (self.adapter.resolve_layers(x)[0] for x in (subject_layer, object_layer))
        if lo < ls:
            raise ValueError(
                f"object_layer ({object_layer} -> {lo}) must not come before subject_layer "
                f"({subject_layer} -> {ls})"
            )
        if aggregation not in ("mean", "first"):
            raise ValueError(f"object aggregation must be 'mean' or 'first', got {aggregation!r}")
        self.subject_layer, self.object_layer, self.aggregation = ls, lo, aggregation
        self.s_hook = self.adapter.hook_name("resid_post", ls)
        self.o_hook = self.adapter.hook_name("resid_post", lo)
        self.use_cache = self._decide_cache(prefix_cache)

    # ------------------------------------------------------------------ prefix cache
    def _decide_cache(self, prefix_cache: bool | Literal["auto"]) -> bool:
        if prefix_cache is False:
            return False
        reason = self.adapter.kv_cache_unsupported()
        if reason is None:
            return True
        if prefix_cache is True:
            raise ValueError(f"prefix_cache=True, but the prefix cannot be cached: {reason}")
        _warn_once(
            self.adapter,
            f"{self.adapter.name}: no KV prefix cache ({reason}); Jacobians use full forward "
            "passes, several times slower. Pass prefix_cache=False to silence this",
        )
        return False

    def _check_cache(self, prep: _Prepared) -> None:
        """Compare the cached path with a full pass once per model; fall back if they differ."""
        adapter = self.adapter
        if adapter.prefix_cache_verified is None:
            with torch.no_grad():
                full = self._run(
                    _Prepared(prep.prompt, prep.input_ids, prep.subject_pos, prep.object_pos, None),
                    None,
                )[1]
                cached = self._run(prep, None)[1]
            err = float((full - cached).norm() / full.norm().clamp_min(1e-12))
            adapter.prefix_cache_verified = err < CACHE_TOLERANCE
            adapter.prefix_cache_error = err
            if not adapter.prefix_cache_verified:
                _warn_once(
                    adapter,
                    f"{adapter.name}: the KV-prefix-cached forward differs from the full forward "
                    f"(relative error {err:.2e} > {CACHE_TOLERANCE:g}); Jacobians use full "
                    "forward passes, several times slower. Check the transformers / "
                    "TransformerLens versions against the pinned set (constraints.txt)",
                )
        if not adapter.prefix_cache_verified:
            self.use_cache = False

    # ------------------------------------------------------------------ running
    def prepare(self, prompts: Sequence[RelationPrompt]) -> list[_Prepared]:
        """Tokenise prompts (with their answers), find positions, cache each prefix."""
        enc = encode_prompts(self.adapter, prompts, with_answer=True)
        out = []
        for i, prompt in enumerate(enc.prompts):
            row = enc.batch.row(i)
            obj = enc.object_positions[i]
            if self.aggregation == "first":
                obj = obj[:1]
            ids = row.input_ids[:, : max(obj) + 1]
            prep = _Prepared(prompt, ids, int(enc.subject_positions[i]), list(obj))
            if self.use_cache and prep.subject_pos > 0:
                prep.cache = self._prefix(ids[:, : prep.subject_pos])
                if self.adapter.prefix_cache_verified is not True:
                    self._check_cache(prep)
                    if not self.use_cache:
                        prep.cache = None
            out.append(prep)
        return out

    def _prefix(self, ids: Tensor) -> Any:
        """The KV cache of ``ids`` (the positions before the subject), filled by the reader
        without autograd and stopped after the object layer (nothing of it is kept)."""
        cache = self.adapter.new_kv_cache()
        read(self.adapter, batch_from_ids(ids), {"o": self.o_hook}, _nothing, cache=cache)
        return cache

    def _run(
        self, prep: _Prepared, replace: Callable[[Tensor], Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        """One forward of the prompt; ``replace(s0)`` gives the subject value to write.

        Returns ``(s0, o)``: the model's own subject state (detached) and the aggregated
        object state computed with the replaced subject.
        """
        adapter = self.adapter
        if prep.cache is not None:
            ids = prep.input_ids[:, prep.subject_pos :]
            offset = prep.subject_pos
        else:
            ids, offset = prep.input_ids, 0
        p_s = prep.subject_pos - offset
        p_o = [p - offset for p in prep.object_pos]
        found: dict[str, Tensor] = {}

        def put(x: Tensor, hook: Any) -> Tensor:
            s0 = x[0, p_s].detach().clone()
            found["s"] = s0
            if replace is None:
                return x
            x = x.clone()
            x[0, p_s] = replace(s0).to(x.dtype)
            return x

        def aggregate(key: Any, x: Tensor) -> Tensor:
            o = x[0, p_o]
            return o.mean(0) if self.aggregation == "mean" else o[0]

        # The reader: grad follows the caller, the pass stops after the object layer; with a
        # prefix cache only the suffix runs, on a copy of the cache (the prefix is reused).
        edits: list[tuple[str, HookFn]] = [(self.s_hook, put)]
        cache = None if prep.cache is None else adapter.copy_kv_cache(prep.cache)
        found["o"] = read(
            adapter,
            batch_from_ids(ids),
            {"o": self.o_hook},
            aggregate,
            grad=True,
            edits=edits,
            cache=cache,
        ).values["o"]
        return found["s"], found["o"]

    def states(self, prep: _Prepared) -> tuple[Float[Tensor, " d"], Float[Tensor, " d"]]:
        """``(s, o)`` of a prompt, without autograd."""
        with torch.no_grad():
            return self._run(prep, None)

    def graph(self, prep: _Prepared) -> tuple[Tensor, Tensor, Tensor]:
        """A differentiable forward: ``(s_leaf, s0, o)`` with ``o`` a function of ``s_leaf``."""
        leaf: dict[str, Tensor] = {}

        def replace(s0: Tensor) -> Tensor:
            leaf["s"] = s0.to(torch.float32).clone().requires_grad_(True)
            return leaf["s"]

        with torch.enable_grad():
            s0, o = self._run(prep, replace)
        return leaf["s"], s0, o.to(torch.float32)

    def __call__(self, prep: _Prepared, s: Float[Tensor, " d"]) -> Float[Tensor, " d"]:
        """``o`` as a function of the subject value ``s`` (differentiable in ``s``)."""
        return self._run(prep, lambda _: s)[1]


# ---------------------------------------------------------------------- products
def _vjp(o: Tensor, leaf: Tensor, cot: Tensor, retain: bool) -> Tensor:
    """Rows ``u_j^T J`` for cotangent rows ``u_j`` ``[k, d]``."""
    (g,) = torch.autograd.grad(o, leaf, cot, is_grads_batched=True, retain_graph=retain)
    return g


def _jvp(o: Tensor, leaf: Tensor, tangents: Tensor, retain: bool) -> Tensor:
    """Rows ``J v_j`` for tangent rows ``v_j`` ``[k, d]`` (double-backward trick)."""
    u = torch.zeros_like(o, requires_grad=True)
    (g,) = torch.autograd.grad(o, leaf, u, create_graph=True, retain_graph=True)
    (jv,) = torch.autograd.grad(g, u, tangents, is_grads_batched=True, retain_graph=retain)
    return jv


def _default_chunk(d: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return math.ceil(d / math.ceil(d / CHUNK))  # balanced chunks of at most CHUNK


# ---------------------------------------------------------------------- results
@dataclass
class JacobianResult:
    """Mean Jacobian over prompts and the per-prompt quantities the LRE bias needs.

    ``weight`` is ``W = mean_i J_i`` ``[d, d]`` (float64); ``subject_states`` ``[n, d]``,
    ``object_states`` ``[n, d]`` and ``js`` ``[n, d]`` (``J_i s_i``) give the LRE bias
    ``b = mean_i (o_i - J_i s_i)``.
    """

    weight: Float[Tensor, "d d"]
    subject_states: Float[Tensor, "n d"]
    object_states: Float[Tensor, "n d"]
    js: Float[Tensor, "n d"]
    seconds: float = 0.0
    method: str = "exact"
    jacobians: Float[Tensor, "n d d"] | None = None
    prefix_cache: bool = False

    @property
    def bias(self) -> Float[Tensor, " d"]:
        """``b = mean_i (o_i - J_i s_i)``."""
        return (self.object_states.double() - self.js.double()).mean(0)


@dataclass
class LowRankJacobian:
    """A rank-k estimate ``W ~ U diag(S) Vh`` of the mean Jacobian (randomized SVD)."""

    U: Float[Tensor, "d k"]
    S: Float[Tensor, " k"]
    Vh: Float[Tensor, "k d"]
    subject_states: Float[Tensor, "n d"]
    object_states: Float[Tensor, "n d"]
    js: Float[Tensor, "n d"]
    seconds: float = 0.0
    method: str = "randomized"
    n_products: int = 0
    prefix_cache: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weight(self) -> Float[Tensor, "d d"]:
        """The dense rank-k estimate ``U diag(S) Vh`` (float64)."""
        return (self.U * self.S) @ self.Vh

    @property
    def bias(self) -> Float[Tensor, " d"]:
        """``b = mean_i (o_i - J_i s_i)`` (exact: ``J_i s_i`` is a JVP)."""
        return (self.object_states.double() - self.js.double()).mean(0)


def _iter(items: Sequence[Any], progress: bool, desc: str) -> Any:
    return tqdm(items, desc=desc, disable=not progress or len(items) < 2, leave=False)


# ---------------------------------------------------------------------- exact
def mean_jacobian(
    model: Any,
    prompts: Sequence[RelationPrompt],
    subject_layer: int,
    object_layer: int,
    *,
    aggregation: Aggregation = "mean",
    chunk_size: int | None = None,
    prefix_cache: bool | Literal["auto"] = "auto",
    keep_jacobians: bool = False,
    progress: bool = True,
) -> JacobianResult:
    """Exact ``W = mean_i do_i/ds_i`` over prompts: ``d`` batched VJPs per prompt.

    Args:
        chunk_size: cotangents per batched backward (default: balanced chunks of at most
            ``CHUNK``; one chunk of all 576 ran 20-25% slower on SmolLM2).
        keep_jacobians: also return every ``J_i`` (``[n, d, d]``).
    """
    fmap = SubjectObjectMap(model, subject_layer, object_layer, aggregation, prefix_cache)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given (empty list)")
    t0 = time.perf_counter()
    preps = fmap.prepare(prompts)
    d = fmap.adapter.d_model
    chunk = _default_chunk(d, chunk_size)
    eye = torch.eye(d)
    total = torch.zeros(d, d, dtype=torch.float64)
    s_all, o_all, js_all, kept = [], [], [], []
    for prep in _iter(preps, progress, "jacobians"):
        leaf, s0, o = fmap.graph(prep)
        parts = []
        for start in range(0, d, chunk):
            more = start + chunk < d
            parts.append(_vjp(o, leaf, eye[start : start + chunk].to(leaf.device), more))
        J = torch.cat(parts).detach().to("cpu", torch.float64)
        total += J
        s_all.append(s0.to("cpu", torch.float32))
        o_all.append(o.detach().to("cpu", torch.float32))
        js_all.append((J @ s0.to("cpu", torch.float64)).float())
        if keep_jacobians:
            kept.append(J.float())
    return JacobianResult(
        weight=total / len(preps),
        subject_states=torch.stack(s_all),
        object_states=torch.stack(o_all),
        js=torch.stack(js_all),
        seconds=time.perf_counter() - t0,
        method="exact",
        jacobians=torch.stack(kept) if keep_jacobians else None,
        prefix_cache=any(p.cache is not None for p in preps),
    )


def prompt_jacobian(
    model: Any,
    prompt: RelationPrompt,
    subject_layer: int,
    object_layer: int,
    *,
    aggregation: Aggregation = "mean",
    prefix_cache: bool | Literal["auto"] = "auto",
) -> tuple[Float[Tensor, "d d"], Float[Tensor, " d"], Float[Tensor, " d"]]:
    """``(J, s, o)`` of one prompt through the fast path (``J[i, j] = do_i / ds_j``)."""
    res = mean_jacobian(
        model,
        [prompt],
        subject_layer,
        object_layer,
        aggregation=aggregation,
        prefix_cache=prefix_cache,
        progress=False,
    )
    return res.weight.float(), res.subject_states[0], res.object_states[0]


def reference_jacobian(
    model: Any,
    prompt: RelationPrompt,
    subject_layer: int,
    object_layer: int,
    *,
    aggregation: Aggregation = "mean",
) -> tuple[Float[Tensor, "d d"], Float[Tensor, " d"], Float[Tensor, " d"]]:
    """The naive reference: ``torch.autograd.functional.jacobian(vectorize=True)`` of a full
    forward pass (every layer and the unembedding, no prefix cache, no early stop).

    For tests and benchmarks; returns ``(J, s, o)``.
    """
    adapter = adapt(model)
    fmap = SubjectObjectMap(model, subject_layer, object_layer, aggregation, prefix_cache=False)
    prep = fmap.prepare([prompt])[0]
    s0, _ = fmap.states(prep)
    batch = batch_from_ids(prep.input_ids)
    p_s, p_o = prep.subject_pos, prep.object_pos

    def put(x: Tensor, hook: Any, s: Tensor) -> Tensor:
        x = x.clone()
        x[0, p_s] = s.to(x.dtype)
        return x

    def take(key: Any, x: Tensor) -> Tensor:
        o = x[0, p_o]
        return o.mean(0) if aggregation == "mean" else o[0]

    def f(s: Tensor) -> Tensor:
        # every layer and the unembedding run (logits=True): no early stop
        edits: list[tuple[str, HookFn]] = [(fmap.s_hook, functools.partial(put, s=s))]
        out = read(adapter, batch, {"o": fmap.o_hook}, take, grad=True, logits=True, edits=edits)
        return out.values["o"].to(torch.float32)

    s_in = s0.detach().clone().to(torch.float32)
    J = torch.autograd.functional.jacobian(f, s_in, vectorize=True)
    with torch.no_grad():
        o = f(s_in)
    return J.detach(), s_in, o.detach()


# ---------------------------------------------------------------------- randomized
def _orth(Y: Tensor) -> Tensor:
    Q, _ = torch.linalg.qr(Y)
    return Q


def randomized_jacobian(
    model: Any,
    prompts: Sequence[RelationPrompt],
    subject_layer: int,
    object_layer: int,
    rank: int,
    *,
    oversampling: int = 10,
    n_power_iter: int = 0,
    aggregation: Aggregation = "mean",
    seed: int = 0,
    prefix_cache: bool | Literal["auto"] = "auto",
    progress: bool = True,
) -> LowRankJacobian:
    """Randomized rank-``k`` SVD of ``W = mean_i J_i`` from ``k = rank + oversampling``
    JVPs and ``k`` VJPs per prompt (plus ``2k`` per power iteration).

    Halko et al. 2011: ``Y = W Omega`` (``Omega`` Gaussian ``d x k``, the same for every
    prompt, so ``Y = mean_i J_i Omega``), ``Q = orth(Y)``; optionally ``n_power_iter`` times
    ``Q = orth(W orth(W^T Q))``; then ``B = Q^T W = mean_i Q^T J_i`` and
    ``W ~ Q B = (Q U_B) diag(S) Vh``. The bias products ``J_i s_i`` ride along with the
    first pass of JVPs.
    """
    fmap = SubjectObjectMap(model, subject_layer, object_layer, aggregation, prefix_cache)
    d = fmap.adapter.d_model
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if rank > d:
        raise ValueError(
            f"rank {rank} exceeds d_model = {d} of {fmap.adapter.name}; choose rank <= {d}"
        )
    if oversampling < 0 or n_power_iter < 0:
        raise ValueError("oversampling and n_power_iter must be >= 0")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given (empty list)")
    k = min(rank + oversampling, d)
    t0 = time.perf_counter()
    preps = fmap.prepare(prompts)
    n = len(preps)
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(d, k, generator=gen, dtype=torch.float64)

    s_all: list[Tensor] = []
    o_all: list[Tensor] = []
    js_all: list[Tensor] = []

    graphs: list[tuple[Tensor, Tensor, Tensor]] = []  # built by the first pass, kept

    def jvp_pass(V: Tensor, first: bool) -> Tensor:
        """``mean_i J_i V`` ``[d, k]``; the first pass builds the graphs and records
        ``s_i, o_i, J_i s_i``."""
        acc = torch.zeros(d, V.shape[1], dtype=torch.float64)
        for i in _iter(range(n), progress, "JVPs"):
            if first:
                graphs.append(fmap.graph(preps[i]))
            leaf, s0, o = graphs[i]
            tangents = V.T.to(torch.float32)
            if first:
                tangents = torch.cat([tangents, s0.to(torch.float32)[None]])
            rows = _jvp(o, leaf, tangents.to(leaf.device), retain=False).detach().cpu()
            acc += rows[: V.shape[1]].T.double()
            if first:
                s_all.append(s0.to("cpu", torch.float32))
                o_all.append(o.detach().to("cpu", torch.float32))
                js_all.append(rows[-1].float())
        return acc / n

    def vjp_pass(Q: Tensor, last: bool) -> Tensor:
        """``mean_i J_i^T Q`` ``[d, k]``; the last pass frees the graphs."""
        acc = torch.zeros(d, Q.shape[1], dtype=torch.float64)
        for i in _iter(range(n), progress, "VJPs"):
            leaf, _, o = graphs[i]
            rows = _vjp(o, leaf, Q.T.to(torch.float32).to(leaf.device), retain=not last)
            acc += rows.detach().cpu().T.double()
        if last:
            graphs.clear()
        return acc / n

    Y = jvp_pass(omega, first=True)
    for _ in range(n_power_iter):
        Z = vjp_pass(_orth(Y), last=False)
        Y = jvp_pass(_orth(Z), first=False)
    Q = _orth(Y)
    Bt = vjp_pass(Q, last=True)  # [d, k] = W^T Q = B^T
    Ub, S, Vh = torch.linalg.svd(Bt.T, full_matrices=False)
    U = Q @ Ub
    products = n * (2 * k + 1 + 2 * k * n_power_iter)
    return LowRankJacobian(
        U=U,
        S=S,
        Vh=Vh,
        subject_states=torch.stack(s_all),
        object_states=torch.stack(o_all),
        js=torch.stack(js_all),
        seconds=time.perf_counter() - t0,
        n_products=products,
        prefix_cache=any(p.cache is not None for p in preps),
        extra={"k": k, "oversampling": oversampling, "n_power_iter": n_power_iter},
    )


# ---------------------------------------------------------------------- subspaces
def principal_angles(A: Float[Tensor, "d p"], B: Float[Tensor, "d q"]) -> Float[Tensor, " m"]:
    """Principal angles (radians, ascending) between the column spans of ``A`` and ``B``.

    ``cos theta_i`` are the singular values of ``orth(A)^T orth(B)`` (Bjorck & Golub 1973).
    """
    qa, qb = _orth(A.double()), _orth(B.double())
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.arccos(cos)
