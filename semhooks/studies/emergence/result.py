"""The result of an information-emergence study: IE, macro and micro MI per block and
position, with their ceilings; table, plot and JSON round trip."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib import colormaps as plt_colormaps
from matplotlib.figure import Figure

from semhooks.io.artifacts import ArtifactError, atomic_write_json, read_json
from semhooks.io.jsonable import to_jsonable
from semhooks.plots import heatmap, new_figure, save_figure

FloatArray = npt.NDArray[np.float64]

#: ``EmergenceResult.plot`` draws IE vs position as one line per block up to this many blocks.
PROFILE_LINES_MAX = 8


def _arr(x: Any) -> FloatArray:
    return np.asarray([np.nan if v is None else v for v in np.ravel(x)], dtype=np.float64).reshape(
        np.shape(x)
    )


@dataclass
class EmergenceResult:
    """Information emergence per block ``l`` and content position ``t`` (all MI in bits).

    Attributes:
        model: model name.
        layers: blocks ``l`` (rows).
        positions: content positions ``t`` (columns, 1-based, BOS excluded).
        ie: ``[layer, position]`` ``mi_macro - mi_micro``.
        mi_macro: ``[layer, position]`` MI between the states entering and leaving block ``l``
            at position ``t`` of the sequences.
        mi_micro: ``[layer, position]`` the mean over tokens ``s = 1..t`` of
            ``mi_micro_token``.
        mi_micro_token: ``[layer, slot]`` micro MI of the token at content position ``s``
            (column ``s - 1``) fed alone.
        ceiling_macro: ``[position]`` ``log2(#distinct prefixes 1..t)``, the most any MI of
            the macro term can be (a block is deterministic).
        ceiling_micro: ``[position]`` mean over ``s <= t`` of ``ceiling_micro_token``.
        ceiling_micro_token: ``[slot]`` ``log2(#distinct tokens at s)``.
        entropy_macro, entropy_micro_token: plug-in entropies of the same inputs (the true MI
            of an injective block, over the empirical input distribution).
        estimator_ceiling: where the estimator saturates (``log2`` of its held-out pairs for
            MINE/InfoNCE), or None.
        mi_macro_std, mi_micro_token_std: spread of the estimator's final evaluations
            (optimisation noise, not a confidence interval; NaN when not reported).
        protocol: estimator, reduction and timings. provenance: model and extraction.
    """

    model: str
    layers: list[int]
    positions: list[int]
    ie: FloatArray
    mi_macro: FloatArray
    mi_micro: FloatArray
    mi_micro_token: FloatArray
    ceiling_macro: FloatArray
    ceiling_micro: FloatArray
    ceiling_micro_token: FloatArray
    entropy_macro: FloatArray
    entropy_micro_token: FloatArray
    estimator_ceiling: float | None = None
    mi_macro_std: FloatArray | None = None
    mi_micro_token_std: FloatArray | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.layers), len(self.positions))
        for name in ("ie", "mi_macro", "mi_micro"):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(
                    f"EmergenceResult.{name} has shape {np.shape(getattr(self, name))}, "
                    f"expected [layers, positions] = {shape}"
                )
        for name in ("ceiling_macro", "ceiling_micro", "entropy_macro"):
            if np.shape(getattr(self, name)) != (shape[1],):
                raise ValueError(f"EmergenceResult.{name} needs one value per position")

    # ---------------------------------------------------------------- summaries
    @property
    def near_ceiling(self) -> dict[str, list[tuple[int, int]]]:
        """Cells whose estimate is within ``warn_fraction`` of a ceiling:
        ``{"macro": [(layer, t)], "micro": [(layer, s)]}``."""
        frac = float(self.protocol.get("warn_fraction", 0.9))
        cap = self.estimator_ceiling if self.estimator_ceiling is not None else np.inf
        out: dict[str, list[tuple[int, int]]] = {"macro": [], "micro": []}
        for li, la in enumerate(self.layers):
            for c, t in enumerate(self.positions):
                ceil = min(self.ceiling_macro[c], cap)
                if ceil > 0 and self.mi_macro[li, c] >= frac * ceil:
                    out["macro"].append((la, t))
            for s in range(self.mi_micro_token.shape[1]):
                ceil = min(self.ceiling_micro_token[s], cap)
                if ceil > 0 and self.mi_micro_token[li, s] >= frac * ceil:
                    out["micro"].append((la, s + 1))
        return out

    def _warn_near_ceiling(self, fraction: float) -> None:
        near = self.near_ceiling
        parts = [f"{len(v)} {k}" for k, v in near.items() if v]
        if parts:
            warnings.warn(
                f"information emergence: {' and '.join(parts)} estimate(s) are within "
                f"{fraction:.0%} of their ceiling (log2 #distinct inputs, or the estimator's "
                f"log2 #held-out pairs = {self.estimator_ceiling}); they are saturated lower "
                "bounds, and differences between them mean little. See result.near_ceiling.",
                RuntimeWarning,
                stacklevel=3,
            )

    def profile(self) -> dict[str, FloatArray]:
        """IE vs position over blocks: ``mean``, ``median``, ``q25``, ``q75``, ``min``, ``max``."""
        ie = self.ie
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {
                "mean": np.nanmean(ie, 0),
                "median": np.nanmedian(ie, 0),
                "q25": np.nanpercentile(ie, 25, axis=0),
                "q75": np.nanpercentile(ie, 75, axis=0),
                "min": np.nanmin(ie, 0),
                "max": np.nanmax(ie, 0),
            }

    def table(self, what: Literal["ie", "macro", "micro"] = "ie", *, digits: int = 2) -> str:
        """Markdown table: one row per block, one column per position, then the ceilings.

        ``what``: ``"ie"``, ``"macro"`` (``mi_macro``) or ``"micro"`` (``mi_micro``, the
        mean over tokens). The last rows give the mean over blocks and the ceilings.
        """
        grids = {"ie": self.ie, "macro": self.mi_macro, "micro": self.mi_micro}
        if what not in grids:
            raise ValueError(f"what must be 'ie', 'macro' or 'micro'; got {what!r}")
        grid = grids[what]

        def fmt(v: float) -> str:
            return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"

        head = "| block | " + " | ".join(f"t={t}" for t in self.positions) + " |"
        lines = [head, "|---:|" + "---:|" * len(self.positions)]
        for li, la in enumerate(self.layers):
            lines.append(f"| {la} | " + " | ".join(fmt(v) for v in grid[li]) + " |")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(grid, 0)
        lines.append("| **mean** | " + " | ".join(f"**{fmt(v)}**" for v in mean) + " |")
        lines.append("| ceiling macro | " + " | ".join(fmt(v) for v in self.ceiling_macro) + " |")
        lines.append(
            "| ceiling micro (mean) | " + " | ".join(fmt(v) for v in self.ceiling_micro) + " |"
        )
        if self.estimator_ceiling is not None:
            lines.append(
                "| estimator ceiling | "
                + " | ".join(fmt(self.estimator_ceiling) for _ in self.positions)
                + " |"
            )
        return "\n".join(lines)

    # ---------------------------------------------------------------- plot
    def plot(self, *, path: str | os.PathLike[str] | None = None, title: str = "") -> Figure:
        """Three panels: the ``IE[l, t]`` heatmap (blocks x positions); IE vs position; and,
        at the last position, both MI terms and IE per block with the ceilings (dashed).

        IE vs position draws one line per block when there are at most
        ``PROFILE_LINES_MAX`` blocks (a quartile band over a handful of blocks would
        suggest a spread that was never sampled), else the mean over blocks with bands for
        the inter-quartile and min-max ranges, labelled with the number of blocks. Legends
        sit outside the panels so they hide no line (the ceilings included)."""
        fig, axes = new_figure(3, width=5.2, height=4.2)
        ax_h, ax_p, ax_l = axes
        heatmap(
            ax_h,
            self.ie,
            self.layers,
            self.positions,
            title="IE(l, t) = MI macro - mean MI micro (bits)",
            xlabel="position t (content tokens)",
            ylabel="block l",
            fmt="{:.1f}" if len(self.layers) * len(self.positions) <= 400 else "",
            cmap="RdBu_r",
            vmin=-float(np.nanmax(np.abs(self.ie))) if np.isfinite(self.ie).any() else None,
            vmax=float(np.nanmax(np.abs(self.ie))) if np.isfinite(self.ie).any() else None,
        )
        prof = self.profile()
        t = np.asarray(self.positions)
        n_blocks = len(self.layers)
        if n_blocks <= PROFILE_LINES_MAX:
            shades = plt_colormaps["viridis"](np.linspace(0.0, 0.85, n_blocks))
            for k, layer in enumerate(self.layers):
                ax_p.plot(t, self.ie[k], marker=".", linewidth=1.2, color=shades[k],
                          label=f"block {layer}")  # fmt: skip
            ax_p.set_title(f"IE vs position, one line per block ({n_blocks} blocks)")
        else:
            spread = f"over {n_blocks} blocks"
            if len(t) > 1:
                ax_p.fill_between(t, prof["min"], prof["max"], alpha=0.15, color="C0",
                                  label=f"min-max {spread}")  # fmt: skip
                ax_p.fill_between(t, prof["q25"], prof["q75"], alpha=0.35, color="C0",
                                  label=f"IQR {spread}")  # fmt: skip
            else:  # one position: the same spreads as error bars
                for lo, hi, width, label in (
                    ("min", "max", 1, "min-max"),
                    ("q25", "q75", 6, "IQR"),
                ):
                    ax_p.vlines(t, prof[lo], prof[hi], color="C0", alpha=0.5, linewidth=width,
                                label=f"{label} {spread}")  # fmt: skip
            ax_p.plot(t, prof["mean"], marker="o", color="C0", label=f"mean {spread}")
            ax_p.set_title(f"IE vs position (spread {spread})")
        ax_p.set_xticks(t)
        ax_p.axhline(0, color="grey", linewidth=0.8)
        ax_p.set_xlabel("position t (content tokens)")
        ax_p.set_ylabel("IE (bits)")
        ax_p.grid(True, alpha=0.3)
        ax_p.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))

        c = len(self.positions) - 1
        ly = np.asarray(self.layers)
        ax_l.plot(ly, self.mi_macro[:, c], marker=".", color="C1", label="MI macro")
        ax_l.plot(ly, self.mi_micro[:, c], marker=".", color="C2", label="mean MI micro")
        ax_l.plot(ly, self.ie[:, c], marker=".", color="C0", label="IE")
        ax_l.axhline(self.ceiling_macro[c], color="C1", linestyle="--", linewidth=1,
                     label=f"ceiling macro {self.ceiling_macro[c]:.2f}")  # fmt: skip
        ax_l.axhline(self.ceiling_micro[c], color="C2", linestyle="--", linewidth=1,
                     label=f"ceiling micro {self.ceiling_micro[c]:.2f}")  # fmt: skip
        if self.estimator_ceiling is not None:
            ax_l.axhline(self.estimator_ceiling, color="grey", linestyle=":", linewidth=1,
                         label=f"estimator ceiling {self.estimator_ceiling:.2f}")  # fmt: skip
        ax_l.set_xlabel("block l")
        ax_l.set_ylabel("bits")
        ax_l.set_title(f"MI terms per block at t={self.positions[c]}")
        ax_l.grid(True, alpha=0.3)
        ax_l.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        est = self.protocol.get("estimator_class", "")
        fig.suptitle(title or f"{self.model}: information emergence ({est}, "
                     f"PCA {self.protocol.get('reduce_dim')}, n={self.protocol.get('n_sequences')})")  # fmt: skip
        if path is not None:
            save_figure(fig, path)
        return fig

    # ---------------------------------------------------------------- I/O
    _ARRAYS = (
        "ie", "mi_macro", "mi_micro", "mi_micro_token", "ceiling_macro", "ceiling_micro",
        "ceiling_micro_token", "entropy_macro", "entropy_micro_token",
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN -> null); inverse: :meth:`from_dict`."""
        out: dict[str, Any] = {
            "kind": "EmergenceResult",
            "model": self.model,
            "layers": list(self.layers),
            "positions": list(self.positions),
            "estimator_ceiling": self.estimator_ceiling,
            "protocol": self.protocol,
            "provenance": self.provenance,
            "profile": {k: to_jsonable(v) for k, v in self.profile().items()},
        }
        for name in self._ARRAYS:
            out[name] = to_jsonable(np.asarray(getattr(self, name), dtype=np.float64))
        for name in ("mi_macro_std", "mi_micro_token_std"):
            value = getattr(self, name)
            out[name] = None if value is None else to_jsonable(np.asarray(value, dtype=np.float64))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmergenceResult:
        if data.get("kind", "EmergenceResult") != "EmergenceResult":
            raise ValueError(f"not an EmergenceResult: kind={data.get('kind')!r}")
        arrays = {name: _arr(data[name]) for name in cls._ARRAYS}
        return cls(
            model=data["model"],
            layers=[int(x) for x in data["layers"]],
            positions=[int(x) for x in data["positions"]],
            estimator_ceiling=data.get("estimator_ceiling"),
            mi_macro_std=None if data.get("mi_macro_std") is None else _arr(data["mi_macro_std"]),
            mi_micro_token_std=(
                None if data.get("mi_micro_token_std") is None else _arr(data["mi_micro_token_std"])
            ),
            protocol=dict(data.get("protocol", {})),
            provenance=dict(data.get("provenance", {})),
            **arrays,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmergenceResult:
        """Read :meth:`save` output; a malformed file is an ``ArtifactError`` naming it."""
        doc = read_json(path, "EmergenceResult")
        try:
            return cls.from_dict(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{path} is not a valid EmergenceResult ({type(exc).__name__}: {exc})"
            ) from None
