"""Patching results: per-site grids of normalised scores, heatmaps, save/load, comparisons."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from semhooks.io.artifacts import load_artifact, save_artifact
from semhooks.plots import heatmap, new_figure

KIND = "PatchingResult"


def normalised(
    patched: Float[Tensor, "pair ..."],
    clean: Float[Tensor, " pair"],
    corrupted: Float[Tensor, " pair"],
) -> Float[Tensor, "..."]:
    """``(mean patched - mean corrupted) / (mean clean - mean corrupted)`` over pairs.

    0 = the corrupted run's metric, 1 = the clean run's ("logit difference recovered",
    Wang et al. 2022; Heimersheim & Nanda 2024). Means are taken before the ratio, so a pair
    whose clean and corrupted metrics nearly agree does not blow up the average.
    """
    gap = float(clean.mean() - corrupted.mean())
    if gap == 0.0:
        raise ValueError(
            "the metric is the same on the clean and corrupted runs (mean difference 0); "
            "nothing can be recovered: choose pairs or a metric that tell them apart"
        )
    return (patched.mean(0) - corrupted.mean()) / gap


@dataclass
class PatchingResult:
    """Scores of a patching grid (exact, attribution or concept), one tensor per site.

    ``scores[site]`` is ``[layer, position]`` (``[layer, position, head]`` for the per-head
    sites ``"head"``, ``"q"`` and ``"k"``),
    normalised so 0 = corrupted and 1 = clean (see :func:`normalised`); ``raw[site]`` holds
    the patched metric per pair, ``[pair, layer, position(, head)]``. ``method`` is
    ``"exact"``, ``"attribution"``, ``"attribution+gradrop"`` or ``"concept"``; ``mode`` is
    ``"denoise"`` (clean activations into the corrupted run) or ``"noise"`` (the reverse).
    """

    scores: dict[str, Tensor]
    raw: dict[str, Tensor]
    layers: list[int]
    positions: list[str]
    position_labels: list[str]
    clean_metric: Tensor
    corrupted_metric: Tensor
    method: str = "exact"
    mode: str = "denoise"
    provenance: dict[str, Any] = field(default_factory=dict)
    seconds: float = math.nan
    n_forwards: int = 0

    @property
    def sites(self) -> list[str]:
        return list(self.scores)

    def grid(self, site: str) -> Tensor:
        """``scores[site]`` with a clear error for a site that was not patched."""
        if site not in self.scores:
            raise KeyError(f"no site {site!r} in this result; it holds {self.sites}")
        return self.scores[site]

    def top(self, site: str, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` cells with the largest score: ``(layer, position label, score)``
        (head sites are summed over heads)."""
        g = self.grid(site)
        g = g.sum(-1) if g.ndim == 3 else g
        flat = g.flatten()
        idx = torch.argsort(flat, descending=True)[:k]
        n_pos = g.shape[1]
        return [
            (self.layers[int(i) // n_pos], self.positions[int(i) % n_pos], float(flat[i]))
            for i in idx
        ]

    def compare(
        self, other: PatchingResult, k: int = 10, *, absolute: bool = False, atol: float = 1e-5
    ) -> dict[str, dict[str, float]]:
        """Per site: Spearman rank correlation and top-``k`` overlap between two results on
        the same grid (e.g. attribution vs exact). Top-k is by absolute score: the cells that
        matter most, whichever the sign. ``absolute=True`` correlates magnitudes (for the
        unsigned GradDrop scores). Scores within ``atol`` of 0 count as 0 (exact patching of a
        cell that cannot matter, e.g. a token before the span, returns float noise ~1e-7 whose
        random order would otherwise enter the ranks)."""
        out = {}
        for site in self.sites:
            if site not in other.scores:
                continue
            a = self.scores[site].flatten().double().numpy()
            b = other.scores[site].flatten().double().numpy()
            if absolute:
                a, b = np.abs(a), np.abs(b)
            a = np.where(np.abs(a) < atol, 0.0, a)
            b = np.where(np.abs(b) < atol, 0.0, b)
            if a.shape != b.shape:
                raise ValueError(
                    f"site {site!r}: grids differ in shape ({a.size} vs {b.size} cells)"
                )
            kk = min(k, a.size)
            top_a = set(np.argsort(-np.abs(a))[:kk].tolist())
            top_b = set(np.argsort(-np.abs(b))[:kk].tolist())
            live = (np.abs(a) > 1e-6) | (np.abs(b) > 1e-6)
            out[site] = {
                "spearman": spearman(a, b),
                # cells that no patch can move (before the span) tie at 0 in both grids and
                # inflate the correlation; this one leaves them out
                "spearman_live": spearman(a[live], b[live]) if live.sum() > 2 else math.nan,
                "pearson": float(np.corrcoef(a, b)[0, 1]) if a.std() and b.std() else math.nan,
                f"top{k}_overlap": len(top_a & top_b) / kk,
            }
        return out

    # ------------------------------------------------------------------ plots
    def plot(self, sites: Sequence[str] | None = None, *, title: str = "") -> Figure:
        """One heatmap per site, layers down and positions across (heads summed), shared
        colour scale centred on 0."""
        sites = list(sites or self.sites)
        grids = [self.grid(s) for s in sites]
        grids = [g.sum(-1) if g.ndim == 3 else g for g in grids]
        lim = max(float(g.abs().max()) for g in grids) or 1.0
        height = max(3.0, 1.6 + 0.22 * len(self.layers))
        width = max(4.0, 2.0 + 0.55 * len(self.positions))
        fig, axes = new_figure(len(sites), 1, width=width, height=height)
        for ax, site, g in zip(axes, sites, grids, strict=True):
            heatmap(
                ax,
                g.numpy(),
                self.layers,
                self.position_labels,
                title=f"{site} ({self.method}, {self.mode})",
                xlabel="position",
                ylabel="layer",
                fmt="{:.2f}" if g.numel() <= 400 else "",
                cmap="RdBu_r",
                vmin=-lim,
                vmax=lim,
            )
            ax.tick_params(axis="x", labelrotation=60)
        if title:
            fig.suptitle(title)
        return fig

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike[str]) -> Path:
        """One safetensors file (scores, raw metrics, baselines) with JSON metadata."""
        tensors = {f"scores.{k}": v for k, v in self.scores.items()}
        tensors |= {f"raw.{k}": v for k, v in self.raw.items()}
        tensors["clean_metric"] = self.clean_metric
        tensors["corrupted_metric"] = self.corrupted_metric
        meta = {
            "layers": self.layers,
            "positions": self.positions,
            "position_labels": self.position_labels,
            "method": self.method,
            "mode": self.mode,
            "sites": self.sites,
            "seconds": self.seconds,
            "n_forwards": self.n_forwards,
            "provenance": self.provenance,
        }
        return save_artifact(path, KIND, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PatchingResult:
        tensors, meta = load_artifact(path, KIND)
        sites = meta["sites"]
        return cls(
            scores={s: tensors[f"scores.{s}"] for s in sites},
            raw={s: tensors[f"raw.{s}"] for s in sites if f"raw.{s}" in tensors},
            layers=list(meta["layers"]),
            positions=list(meta["positions"]),
            position_labels=list(meta["position_labels"]),
            clean_metric=tensors["clean_metric"],
            corrupted_metric=tensors["corrupted_metric"],
            method=meta["method"],
            mode=meta["mode"],
            provenance=meta.get("provenance", {}),
            seconds=float(meta.get("seconds", math.nan)),
            n_forwards=int(meta.get("n_forwards", 0)),
        )


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either is constant."""
    ra = _ranks(np.asarray(a, dtype=np.float64))
    rb = _ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # ties share their mean rank
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]
