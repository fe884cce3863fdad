"""Small figure helpers shared by the result objects' ``.plot()`` methods.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, so no
GUI backend is touched and nothing leaks between calls); saving goes through the Agg canvas.
Result objects compute, these helpers only draw: every function takes plain numbers.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from semhooks.io.artifacts import atomic_write_bytes

__all__ = ["heatmap", "layer_curves", "new_figure", "save_figure"]


def new_figure(
    ncols: int = 1, nrows: int = 1, *, width: float = 5.0, height: float = 3.6
) -> tuple[Figure, list[Axes]]:
    """A figure with an ``nrows x ncols`` grid of axes, each ``width x height`` inches.

    Returns ``(figure, axes)`` with ``axes`` a flat list in row-major order.
    """
    if ncols < 1 or nrows < 1:
        raise ValueError(f"a figure needs at least one panel, got nrows={nrows}, ncols={ncols}")
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def layer_curves(
    ax: Axes,
    layers: Sequence[int],
    series: Mapping[str, Sequence[float]],
    *,
    title: str = "",
    xlabel: str = "layer",
    ylabel: str = "accuracy",
    chance: float | None = None,
    chance_label: str = "chance",
    mark_best: bool = True,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    band_label: str = "interval",
) -> Axes:
    """One line per named series over ``layers``; the best point of each is marked.

    Args:
        ax: the axes to draw on.
        layers: x values (model layer numbers), length ``n``.
        series: name -> ``n`` y values (NaN values are skipped by matplotlib).
        chance: draw a dotted horizontal reference line at this value (``chance_label``).
        mark_best: mark each series' maximum with a filled marker.
        bands: name -> ``(low, high)``, ``n`` values each: a shaded band around that series
            (an interval), labelled ``"{name} {band_label}"`` in the legend.
    """
    x = np.asarray(list(layers))
    for name, values in series.items():
        y = np.asarray(list(values), dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(
                f"series {name!r} has {y.size} values for {x.size} layers; give one per layer"
            )
        (line,) = ax.plot(x, y, marker=".", label=name)
        if bands is not None and name in bands:
            low, high = (np.asarray(list(b), dtype=np.float64) for b in bands[name])
            if low.shape != x.shape or high.shape != x.shape:
                raise ValueError(
                    f"band of {name!r} has {low.size}/{high.size} values for {x.size} layers"
                )
            ax.fill_between(
                x, low, high, color=line.get_color(), alpha=0.2, label=f"{name} {band_label}"
            )
        if mark_best and np.isfinite(y).any():
            best = int(np.nanargmax(y))
            ax.plot([x[best]], [y[best]], marker="o", color=line.get_color(), markersize=7)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=chance_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def heatmap(
    ax: Axes,
    values: Any,
    row_labels: Sequence[Any],
    col_labels: Sequence[Any],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    fmt: str = "{:.3f}",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
) -> Axes:
    """A ``rows x cols`` matrix as an annotated heatmap (NaN cells stay blank).

    Args:
        values: array-like ``[len(row_labels), len(col_labels)]``.
        fmt: format of the number written in each cell (empty string: no annotation).
    """
    grid = np.asarray(values, dtype=np.float64)
    if grid.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"heatmap values have shape {grid.shape}, expected "
            f"({len(row_labels)}, {len(col_labels)}) from the row and column labels"
        )
    image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels])
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    if fmt:
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    colour = _text_colour(image.cmap(image.norm(grid[i, j])))
                    ax.text(
                        j, i, fmt.format(grid[i, j]), ha="center", va="center", color=colour,
                        fontsize="x-small",
                    )  # fmt: skip
    if colorbar and ax.figure is not None:
        ax.figure.colorbar(image, ax=ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def _text_colour(rgba: Any) -> str:
    """Black on light cells, white on dark ones (relative luminance of the cell's colour), so
    an annotation stays readable whatever the colour map: a diverging map is near white
    around its centre."""
    r, g, b = (float(c) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write ``fig`` atomically; the format follows the suffix (``.png``, ``.pdf``, ``.svg``)."""
    target = Path(path)
    suffix = target.suffix.lstrip(".").lower() or "png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format=suffix, dpi=dpi)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return target
