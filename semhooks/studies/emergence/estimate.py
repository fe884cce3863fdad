"""Estimation of information emergence: one MI fit per (block, position) on PCA-reduced
states, and the one-call study :func:`information_emergence`."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import clone
from torch import Tensor
from tqdm.auto import tqdm

from semhooks.estimators.mi import MINE, GaussianMI, InfoNCE, can_stack, fit_stacked
from semhooks.studies.emergence.inputs import EntityLists
from semhooks.studies.emergence.pairs import EmergencePairs, collect_pairs
from semhooks.studies.emergence.result import EmergenceResult

ESTIMATOR_PRESETS: dict[str, dict[str, Any]] = {
    # One fit on 2,000 pairs of 32 dimensions costs about 1 s of CPU time (one thread), so a
    # 30-block study of a few hundred fits takes minutes. Chosen on correlated Gaussians
    # (d = 32, n = 2000, true MI 0 / 2 / 6 bits): MINE gives 0.0 / 0.9 / 2.8 bits, InfoNCE
    # -0.05 / 0.5 / 2.3 bits. Both underestimate large MI; the semhooks.estimators.mi defaults (2,000
    # steps) get closer (MINE: 2.8 bits for 4 true at d = 32) at ~10x the cost.
    "mine": {
        "hidden": 128,
        "batch_size": 256,
        "lr": 1e-3,
        "max_steps": 300,
        "eval_every": 25,
        "eval_window": 4,
        "patience": 4,
    },
    "infonce": {
        "hidden": 128,
        "embed": 32,
        "batch_size": 256,
        "lr": 3e-4,
        "max_steps": 300,
        "eval_every": 25,
        "eval_window": 4,
        "patience": 4,
    },
    "gaussian": {},
}
"""Budgeted estimator settings used when ``estimator`` is given by name (see
:func:`make_estimator`)."""


def make_estimator(name: str, seed: int = 0) -> Any:
    """An unfitted estimator from its name: ``"mine"``, ``"infonce"`` or ``"gaussian"``.

    Neural estimators get the budgeted settings of :data:`ESTIMATOR_PRESETS` and ``seed``.
    """
    key = name.lower()
    if key == "mine":
        return MINE(seed=seed, **ESTIMATOR_PRESETS["mine"])
    if key == "infonce":
        return InfoNCE(seed=seed, **ESTIMATOR_PRESETS["infonce"])
    if key == "gaussian":
        return GaussianMI()
    raise ValueError(
        f"unknown estimator {name!r}; use 'mine', 'infonce', 'gaussian' or an estimator "
        "instance with fit(x, y) and mi_ (e.g. semhooks.estimators.mi.MINE(max_steps=1000))"
    )


@dataclass
class _Projection:
    """z-scoring and PCA of one depth, fit on the pooled macro and micro samples."""

    mean: Tensor
    scale: Tensor
    components: Tensor | None

    def __call__(self, x: Float[Tensor, "n d"]) -> np.ndarray:
        z = (x.double() - self.mean) / self.scale
        if self.components is not None:
            z = z @ self.components
        return z.float().numpy()


def _fit_projection(
    macro: Float[Tensor, "item cell d"],
    micro: Float[Tensor, "vocab d"],
    micro_weight: Float[Tensor, " vocab"],
    k: int | None,
    standardize: bool,
    rel_tol: float = 1e-9,
) -> _Projection:
    """PCA of one depth over every sample that enters an MI fit there.

    Rows: each sequence's macro state at every position, and each sequence's micro state at
    every token slot -- the latter as distinct tokens weighted by their count, which gives the
    same moments. Macro and micro share the projection, so a variable that is the same at
    both levels (t = 1: BOS + first token) is projected identically.
    """
    a = macro.reshape(-1, macro.shape[-1]).double()
    b = micro.double()
    w = micro_weight.double()
    total = a.shape[0] + w.sum()
    mean = (a.sum(0) + (w[:, None] * b).sum(0)) / total
    a, b = a - mean, b - mean
    var = ((a * a).sum(0) + (w[:, None] * b * b).sum(0)) / (total - 1)
    std = var.sqrt()
    scale = torch.where(std > 0, std, torch.ones_like(std)) if standardize else torch.ones_like(std)
    if k is None or k >= a.shape[1]:
        return _Projection(mean, scale, None)
    a, b = a / scale, b / scale
    cov = (a.T @ a + (w[:, None] * b).T @ b) / (total - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    # Directions with (numerically) no variance would be z-scored into rounding noise.
    keep = max(1, min(k, int((evals > rel_tol * evals[0].clamp(min=1e-300)).sum())))
    return _Projection(mean, scale, evecs[:, :keep].contiguous())


def _entropy_bits(labels: Tensor) -> float:
    counts = torch.unique(labels, return_counts=True)[1].double()
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum())


def _cell_result(est: Any, seconds: float, cpu_seconds: float) -> dict[str, Any]:
    """One fitted cell's estimate, spread and ceiling (bits) and its fit time."""
    return {
        "mi": float(est.mi_),
        "std": float(getattr(est, "mi_std_", float("nan"))),
        "ceiling": getattr(est, "ceiling_bits_", getattr(est, "bound_bits_", None)),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def _fit_cell(estimator: Any, x: np.ndarray, y: np.ndarray) -> Any:
    """A fresh copy of ``estimator`` fitted on one cell: its :func:`_cell_result`, or the
    ``ValueError``/``LinAlgError`` it raised (returned, so a worker process can hand it back)."""
    try:
        est = clone(estimator, safe=False)  # an unfitted copy (a deep copy if no get_params)
        t0, c0 = time.perf_counter(), time.process_time()
        est.fit(x, y)
    except (ValueError, torch.linalg.LinAlgError) as exc:
        return exc
    return _cell_result(est, time.perf_counter() - t0, time.process_time() - c0)


def _fit_cell_worker(estimator: Any, x: np.ndarray, y: np.ndarray) -> Any:
    torch.set_num_threads(1)
    return _fit_cell(estimator, x, y)


@dataclass
class _Task:
    kind: str  # "macro" | "micro"
    li: int
    j: int  # cell index (macro) or slot index (micro)
    x: np.ndarray
    y: np.ndarray
    n_distinct: int


def estimate_emergence(
    pairs: EmergencePairs,
    estimator: Any = "mine",
    *,
    reduce_dim: int | None = 32,
    pca_standardize: bool = True,
    n_jobs: int = 1,
    stack_size: int = 64,
    warn_fraction: float = 0.9,
    seed: int = 0,
    progress: bool = True,
) -> EmergenceResult:
    """IE per block and position from collected pairs, with one MI fit per cell.

    Args:
        pairs: from :func:`collect_pairs`.
        estimator: an unfitted estimator (``fit(x, y)`` -> ``mi_`` in bits; cloned for every
            cell) or a name for :func:`make_estimator`.
        reduce_dim: PCA components kept per depth (None: no reduction). One PCA per depth,
            fit on the pooled macro (every position) and micro (every token slot) samples,
            shared by both terms. Data-processing inequality: the MI of the projections is
            at most the MI of the states.
        pca_standardize: z-score each feature before the PCA (keeps a few large-magnitude
            residual dimensions from taking every component).
        n_jobs: MI fits run in this many worker processes (joblib; each fit single-threaded).
        stack_size: with ``n_jobs=1`` and a :class:`~semhooks.estimators.mi.MINE`, up to
            this many cells of equal shapes train together as one stacked model
            (:func:`~semhooks.estimators.mi.fit_stacked`: the same draws, steps and early
            stopping as separate fits, equal up to rounding, several times faster on CPU);
            1 fits one cell at a time. ``protocol["fit_path"]`` says which ran.
        warn_fraction: warn when an estimate exceeds this fraction of its ceiling.
        seed: seed for a named estimator (an instance keeps its own ``seed``).
        progress: tqdm bar over cells.

    Returns:
        :class:`EmergenceResult`. Cells whose input takes a single value (a constant token,
        e.g. a separator) have MI exactly 0 and are not fitted; cells the estimator cannot
        handle (a singular covariance for :class:`~semhooks.estimators.mi.GaussianMI`) are NaN with a
        warning.
    """
    est = make_estimator(estimator, seed) if isinstance(estimator, str) else estimator
    if not hasattr(est, "fit"):
        raise TypeError(f"estimator must have fit(x, y) and mi_; got {type(est).__name__}")
    if reduce_dim is not None and reduce_dim < 1:
        raise ValueError(f"reduce_dim must be >= 1 or None, got {reduce_dim}")
    if not 0 < warn_fraction <= 1:
        raise ValueError(f"warn_fraction must be in (0, 1], got {warn_fraction}")
    if stack_size < 1:
        raise ValueError(f"stack_size must be >= 1, got {stack_size}")
    n = pairs.n_items
    layers, positions, n_slots = pairs.layers, pairs.positions, pairs.n_slots
    n_l, n_t = len(layers), len(positions)

    t0 = time.perf_counter()
    slot_index = [pairs.micro_index(s) for s in range(1, n_slots + 1)]
    micro_weight = torch.bincount(torch.cat(slot_index), minlength=pairs.micro.shape[1])
    macro_proj: dict[tuple[int, int], np.ndarray] = {}
    micro_proj: dict[int, Tensor] = {}
    for di, d in enumerate(pairs.depths):
        proj = _fit_projection(
            pairs.macro[di], pairs.micro[di], micro_weight, reduce_dim, pca_standardize
        )
        for c in range(n_t):
            macro_proj[(d, c)] = proj(pairs.macro[di, :, c])
        micro_proj[d] = torch.from_numpy(proj(pairs.micro[di]))
    pca_seconds = time.perf_counter() - t0

    n_macro = [int(pairs.distinct_prefixes(t).max()) + 1 for t in positions]
    n_micro = [int(torch.unique(pairs.token_ids[:, s]).numel()) for s in range(n_slots)]
    entropy_macro = [_entropy_bits(pairs.distinct_prefixes(t)) for t in positions]
    entropy_micro = [_entropy_bits(pairs.token_ids[:, s]) for s in range(n_slots)]

    tasks: list[_Task] = []
    for li, la in enumerate(layers):
        for c in range(n_t):
            tasks.append(
                _Task("macro", li, c, macro_proj[(la, c)], macro_proj[(la + 1, c)], n_macro[c])
            )
        for s in range(n_slots):
            idx = slot_index[s]
            x, y = micro_proj[la][idx].numpy(), micro_proj[la + 1][idx].numpy()
            tasks.append(_Task("micro", li, s, x, y, n_micro[s]))

    mi = {"macro": np.full((n_l, n_t), np.nan), "micro": np.full((n_l, n_slots), np.nan)}
    sd = {"macro": np.full((n_l, n_t), np.nan), "micro": np.full((n_l, n_slots), np.nan)}
    fit_seconds = fit_cpu = 0.0
    est_ceilings: list[float] = []
    failed: list[str] = []
    gaussian = isinstance(est, GaussianMI)

    def cell_name(task: _Task) -> str:
        if task.kind == "macro":
            return f"macro block {layers[task.li]} t={positions[task.j]}"
        return f"micro block {layers[task.li]} token {task.j + 1}"

    to_fit: list[_Task] = []
    for task in tasks:
        if task.n_distinct <= 1:
            mi[task.kind][task.li, task.j] = 0.0
            sd[task.kind][task.li, task.j] = 0.0
        elif gaussian and task.n_distinct <= task.x.shape[1] + task.y.shape[1] + 1 < n:
            # With fewer distinct rows than joint dimensions the sample covariance is singular
            # and the Gaussian MI of a deterministic map is infinite.
            failed.append(f"{cell_name(task)} ({task.n_distinct} distinct inputs)")
        else:
            to_fit.append(task)

    def handle(task: _Task, out: Any) -> None:
        nonlocal fit_seconds, fit_cpu
        if isinstance(out, torch.linalg.LinAlgError):
            failed.append(f"{cell_name(task)} ({out})")
            return
        if isinstance(out, ValueError):
            raise ValueError(
                f"information emergence: the estimator {type(est).__name__} refused the "
                f"{cell_name(task)} with {n} samples of dims ({task.x.shape[1]}, "
                f"{task.y.shape[1]}): {out} Use more sequences or a smaller reduce_dim."
            ) from out
        if not math.isfinite(out["mi"]):
            failed.append(f"{cell_name(task)} (estimate {out['mi']})")
            return
        mi[task.kind][task.li, task.j] = out["mi"]
        sd[task.kind][task.li, task.j] = out["std"]
        fit_seconds += out["seconds"]
        fit_cpu += out["cpu_seconds"]
        if out["ceiling"] is not None:
            est_ceilings.append(float(out["ceiling"]))

    bar = tqdm(total=len(to_fit), desc="emergence: MI fits", disable=not progress, unit="fit")
    t_fit = time.perf_counter()
    stacked = n_jobs == 1 and stack_size > 1 and can_stack(est)
    if stacked:
        groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[_Task]] = {}
        for task in to_fit:
            groups.setdefault((task.x.shape, task.y.shape), []).append(task)
        chunks = [
            group[i : i + stack_size]
            for group in groups.values()
            for i in range(0, len(group), stack_size)
        ]
        for chunk in chunks:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                fits = fit_stacked(est, [(task.x, task.y) for task in chunk])
            except ValueError:
                # a pair the estimator refuses: separate fits name the cell in the error
                for task in chunk:
                    handle(task, _fit_cell(est, task.x, task.y))
                    bar.update()
                continue
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            for task, f in zip(chunk, fits, strict=True):
                handle(task, _cell_result(f, dt / len(chunk), dc / len(chunk)))
            bar.update(len(chunk))
    elif n_jobs == 1:
        for task in to_fit:
            handle(task, _fit_cell(est, task.x, task.y))
            bar.update()
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_fit_cell_worker)(est, t.x, t.y) for t in to_fit
        )
        for task, out in zip(to_fit, results, strict=True):
            handle(task, out)
            bar.update()
    bar.close()
    wall = time.perf_counter() - t_fit
    if failed:
        warnings.warn(
            f"information emergence: {len(failed)} cell(s) set to NaN, the estimator could not "
            f"handle them: {failed[:4]}{' ...' if len(failed) > 4 else ''}",
            RuntimeWarning,
            stacklevel=2,
        )

    ceiling_macro = np.log2(np.asarray(n_macro, dtype=np.float64))
    ceiling_micro_token = np.log2(np.asarray(n_micro, dtype=np.float64))
    mi_micro = np.stack([mi["micro"][:, :t].mean(1) for t in positions], axis=1)
    est_ceiling = float(np.min(est_ceilings)) if est_ceilings else None
    result = EmergenceResult(
        model=str(pairs.provenance.get("model", "model")),
        layers=list(layers),
        positions=list(positions),
        ie=mi["macro"] - mi_micro,
        mi_macro=mi["macro"],
        mi_micro=mi_micro,
        mi_micro_token=mi["micro"],
        ceiling_macro=ceiling_macro,
        ceiling_micro=np.asarray([ceiling_micro_token[:t].mean() for t in positions]),
        ceiling_micro_token=ceiling_micro_token,
        entropy_macro=np.asarray(entropy_macro),
        entropy_micro_token=np.asarray(entropy_micro),
        estimator_ceiling=est_ceiling,
        mi_macro_std=sd["macro"],
        mi_micro_token_std=sd["micro"],
        protocol={
            "estimator": repr(est),
            "estimator_class": type(est).__name__,
            "reduce_dim": reduce_dim,
            "pca": "one per depth, fit on the pooled macro and micro samples",
            "pca_standardize": pca_standardize,
            "n_sequences": n,
            "n_fits": len(to_fit),
            "n_constant_cells": sum(t.n_distinct <= 1 for t in tasks),
            "n_failed_cells": len(failed),
            "fit_seconds_sum": fit_seconds,
            "fit_cpu_seconds_sum": fit_cpu,
            "fit_wall_seconds": wall,
            "pca_seconds": pca_seconds,
            "n_jobs": n_jobs,
            "fit_path": (
                f"stacked (fit_stacked, up to {stack_size} cells at once)"
                if stacked
                else "one fit per cell"
            ),
            "warn_fraction": warn_fraction,
            "micro_mean": "plain mean over content tokens 1..t (BOS excluded)",
        },
        provenance=dict(pairs.provenance),
    )
    result._warn_near_ceiling(warn_fraction)
    return result


def information_emergence(
    model: Any,
    sequences: Sequence[str] | EntityLists,
    estimator: Any = "mine",
    *,
    layers: int | Sequence[int] | str = "all",
    positions: int | Sequence[int] | str | None = None,
    reduce_dim: int | None = 32,
    pca_standardize: bool = True,
    batch_size: int = 64,
    n_jobs: int = 1,
    stack_size: int = 64,
    warn_fraction: float = 0.9,
    seed: int = 0,
    progress: bool = True,
) -> EmergenceResult:
    """Information emergence ``IE[l, t]`` of ``model`` on ``sequences``.

    ``IE(l, t) = I(h_{l+1,t}; h_{l,t})_macro - mean_{s<=t} I(h_{l+1,s}; h_{l,s})_micro``
    (Chen et al. 2024, arXiv 2405.12617): :func:`collect_pairs` then
    :func:`estimate_emergence`; see those for every argument. The result holds the two MI
    terms, ``log2(#distinct inputs)`` ceilings and plug-in input entropies beside each cell.

    >>> lists = entity_lists(k=8, n=2000, model=model)            # doctest: +SKIP
    >>> res = information_emergence(model, lists, "mine")         # doctest: +SKIP
    >>> res.table(); res.plot(path="ie.png")                      # doctest: +SKIP
    """
    pairs = collect_pairs(
        model, sequences, layers=layers, positions=positions, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    return estimate_emergence(
        pairs,
        estimator,
        reduce_dim=reduce_dim,
        pca_standardize=pca_standardize,
        n_jobs=n_jobs,
        stack_size=stack_size,
        warn_fraction=warn_fraction,
        seed=seed,
        progress=progress,
    )
