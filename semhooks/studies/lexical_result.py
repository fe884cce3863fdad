"""The result of a WiC study: accuracy per variant and layer, intervals, tables and plots."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from semhooks.plots import layer_curves, new_figure, save_figure

__all__ = ["WiCResult"]


@dataclass
class WiCResult:
    """Accuracy of contextual word identification per variant and layer.

    Attributes:
        model: model name.
        is_encoder: True for a masked LM (BERT-style), False for a decoder.
        layers: model layers (``blocks.{l}.hook_resid_post``).
        variants: input variants, in order.
        accuracy: variant -> per-layer accuracy on the evaluation split (cosine + threshold).
        thresholds: variant -> per-layer threshold chosen on the fit split.
        fit_accuracy: variant -> per-layer accuracy on the fit split at that threshold.
        probe_accuracy: variant -> per-layer evaluation accuracy of the logistic-regression
            readout on ``[|a - b|, a * b]``, or None when the probe was not run.
        protocol: how the numbers were made (splits, sizes, seed, standardisation, threshold
            method, template, timings, texts encoded).
    """

    model: str
    is_encoder: bool
    layers: list[int]
    variants: list[str]
    accuracy: dict[str, list[float]]
    thresholds: dict[str, list[float]]
    fit_accuracy: dict[str, list[float]]
    probe_accuracy: dict[str, list[float]] | None = None
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def best_layer(self) -> dict[str, int]:
        """Variant -> the layer with the highest evaluation accuracy (earliest on ties).

        Chosen on the evaluation split itself, so :attr:`best_accuracy` is an optimistic
        (selection-biased) peak; :attr:`selected_layer` chooses on the fit split instead.
        """
        return {v: self.layers[int(np.argmax(acc))] for v, acc in self.accuracy.items()}

    @property
    def best_accuracy(self) -> dict[str, float]:
        """Variant -> the highest evaluation accuracy over layers (optimistic, see
        :attr:`best_layer`)."""
        return {v: float(max(acc)) for v, acc in self.accuracy.items()}

    @property
    def selected_layer(self) -> dict[str, int]:
        """Variant -> the layer with the highest *fit-split* accuracy (earliest on ties): a
        layer chosen without looking at the evaluation split."""
        return {v: self.layers[int(np.argmax(acc))] for v, acc in self.fit_accuracy.items()}

    @property
    def selected_accuracy(self) -> dict[str, float]:
        """Variant -> the evaluation accuracy at :attr:`selected_layer` (an unbiased estimate
        of the readout's accuracy once the layer is fixed)."""
        return {
            v: float(self.accuracy[v][self.layers.index(layer)])
            for v, layer in self.selected_layer.items()
        }

    def interval(self, values: Sequence[float]) -> tuple[list[float], list[float]]:
        """95% Wilson intervals ``(low, high)`` of evaluation accuracies (``protocol["n_eval"]``
        pairs each)."""
        from semhooks.stats import wilson_interval

        n = int(self.protocol.get("n_eval") or 0)
        if n < 1:
            raise ValueError("this result does not record n_eval; no interval can be computed")
        pairs = [wilson_interval(min(n, max(0, round(v * n))), n) for v in values]
        return [lo for lo, _ in pairs], [hi for _, hi in pairs]

    @property
    def best_probe_layer(self) -> dict[str, int] | None:
        if self.probe_accuracy is None:
            return None
        return {v: self.layers[int(np.argmax(acc))] for v, acc in self.probe_accuracy.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (inverse: :meth:`from_dict`)."""
        return {
            "model": self.model,
            "is_encoder": self.is_encoder,
            "layers": list(self.layers),
            "variants": list(self.variants),
            "accuracy": self.accuracy,
            "thresholds": self.thresholds,
            "fit_accuracy": self.fit_accuracy,
            "probe_accuracy": self.probe_accuracy,
            "best_layer": self.best_layer,
            "best_accuracy": self.best_accuracy,
            "best_probe_layer": self.best_probe_layer,
            "protocol": self.protocol,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WiCResult:
        return cls(
            model=data["model"],
            is_encoder=bool(data["is_encoder"]),
            layers=[int(x) for x in data["layers"]],
            variants=list(data["variants"]),
            accuracy={k: list(v) for k, v in data["accuracy"].items()},
            thresholds={k: list(v) for k, v in data["thresholds"].items()},
            fit_accuracy={k: list(v) for k, v in data["fit_accuracy"].items()},
            probe_accuracy=(
                None
                if data.get("probe_accuracy") is None
                else {k: list(v) for k, v in data["probe_accuracy"].items()}
            ),
            protocol=dict(data.get("protocol", {})),
        )

    def table(self, readout: Literal["threshold", "probe", "both"] = "both") -> str:
        """Markdown table: one row per layer, evaluation accuracy (%) per variant with its 95%
        Wilson interval (when ``protocol`` records ``n_eval``); the peak of each column over
        layers, chosen on the evaluation split, in bold.

        ``readout="both"`` adds the probe's columns when the probe was run.
        """
        columns: list[tuple[str, list[float]]] = []
        if readout in ("threshold", "both"):
            columns += [(f"{v} cos", self.accuracy[v]) for v in self.variants]
        if readout in ("probe", "both") and self.probe_accuracy is not None:
            columns += [(f"{v} probe", self.probe_accuracy[v]) for v in self.variants]
        if not columns:
            raise ValueError(f"no {readout!r} readout in this result (probe was not run)")
        lines = [
            "| layer | " + " | ".join(name for name, _ in columns) + " |",
            "|---:|" + "---:|" * len(columns),
        ]
        best = [int(np.argmax(values)) for _, values in columns]
        bounds = (
            [self.interval(values) for _, values in columns]
            if self.protocol.get("n_eval")
            else None
        )
        for i, layer in enumerate(self.layers):
            cells = []
            for j, ((_, values), b) in enumerate(zip(columns, best, strict=True)):
                cell = f"{100 * values[i]:.1f}"
                if bounds is not None:
                    low, high = bounds[j]
                    cell += f" [{100 * low[i]:.1f}, {100 * high[i]:.1f}]"
                cells.append(f"**{cell}**" if i == b else cell)
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(
        self,
        other: WiCResult | None = None,
        *,
        readout: Literal["threshold", "probe"] = "threshold",
        path: str | os.PathLike[str] | None = None,
    ) -> Figure:
        """Accuracy-by-layer curves, one line per variant; ``other`` adds a second panel.

        With a decoder and an encoder result, the decoder is drawn on the left. Shaded bands
        are 95% Wilson intervals over the ``n_eval`` evaluation pairs; large dots mark each
        variant's :attr:`selected_layer` (chosen on the fit split) for the threshold readout,
        and the peak over layers on the evaluation split for the probe (which has no fit-split
        score per layer); the dotted line is the majority-class rate of the evaluation split.
        Both panels share one y-range, which always includes chance (0.5) and 1.0.
        """
        results = [self] if other is None else sorted([self, other], key=lambda r: r.is_encoder)
        fig, axes = new_figure(len(results))
        low_ends = [0.5]
        for ax, res in zip(axes, results, strict=True):
            series = res.accuracy if readout == "threshold" else res.probe_accuracy
            if series is None:
                raise ValueError(f"{res.model}: no probe readout (run wic_study(probe=True))")
            kind = "encoder" if res.is_encoder else "decoder"
            how = "cosine + threshold" if readout == "threshold" else "logistic probe"
            n_eval = res.protocol.get("n_eval")
            bands = {v: res.interval(series[v]) for v in res.variants} if n_eval else None
            for v in res.variants:
                low_ends.append(min(bands[v][0]) if bands else min(series[v]))
            split = res.protocol.get("eval_split", "")
            layer_curves(
                ax,
                res.layers,
                {v: series[v] for v in res.variants},
                title=f"{res.model} ({kind})\nWiC {split}"
                + (f", n={n_eval} pairs" if n_eval else "")
                + f": {how}",
                xlabel="layer (block output)",
                ylabel="accuracy (evaluation split)",
                chance=res.protocol.get("majority_rate"),
                chance_label="majority class",
                bands=bands,
                band_label="95% CI",
                mark_best=readout == "probe",
            )
            if readout == "threshold":
                for k, (line, v) in enumerate(zip(ax.get_lines(), res.variants, strict=False)):
                    i = res.layers.index(res.selected_layer[v])
                    ax.plot([res.layers[i]], [series[v][i]], marker="o", markersize=8,
                            color=line.get_color(), markeredgecolor="black", linestyle="none",
                            label="layer chosen on fit split" if k == 0 else "_nolegend_")  # fmt: skip
                ax.legend(fontsize="small")
        # one shared range from at most 0.5 (chance) to 1.0, so the panels compare by eye
        bottom = max(0.0, np.floor(20 * (min(low_ends) - 0.02)) / 20)
        for ax in axes:
            ax.set_ylim(bottom, 1.0)
        if path is not None:
            save_figure(fig, path)
        return fig
