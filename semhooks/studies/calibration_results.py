"""Results of the calibration study: per-method scores, the result object, tables and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from semhooks.estimators.calibrator import SemanticCalibrator

__all__ = ["CalibrationResult", "MethodScore", "plot_results", "results_table"]


@dataclass
class MethodScore:
    """One row of a study: a method's accuracy and the ARI of its predicted clusters."""

    method: str
    accuracy: float
    ari: float
    n_test: int
    seconds: float


@dataclass
class CalibrationResult:
    """Semantic calibration and its baselines on one dataset.

    Attributes:
        dataset: dataset name.
        model: model name.
        layer: the state's layer; ``template`` the prompt; ``label_words`` in class order.
        n_train: items the trained methods saw (the calibrator holds out its validation part).
        scores: one :class:`MethodScore` per method, in table order.
        calibrator: the fitted :class:`SemanticCalibrator` (not serialised by ``to_dict``).
        info: extra facts (ICL demonstrations, k, label tokens).
    """

    dataset: str
    model: str
    layer: int
    template: str
    label_words: list[str]
    n_train: int
    scores: list[MethodScore]
    calibrator: SemanticCalibrator | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, method_prefix: str) -> MethodScore:
        """The row whose method name starts with ``method_prefix``."""
        for s in self.scores:
            if s.method.startswith(method_prefix):
                return s
        raise KeyError(f"no method starting with {method_prefix!r} in {self.methods}")

    @property
    def methods(self) -> list[str]:
        return [s.method for s in self.scores]

    def table(self) -> str:
        """Markdown table: method, accuracy with its 95% Wilson interval over the test items,
        ARI, test items, seconds."""
        from semhooks.stats import wilson_interval

        lines = [
            f"**{self.dataset}** ({self.model}, layer {self.layer}, label words "
            f"{self.label_words}, {self.n_train} training items)",
            "",
            "| method | accuracy | 95% CI | ARI | n test | s |",
            "|---|---|---|---|---|---|",
        ]
        for s in self.scores:
            n = int(s.n_test)
            if n > 0 and math.isfinite(s.accuracy):
                low, high = wilson_interval(min(n, max(0, round(s.accuracy * n))), n)
                interval = f"[{low:.3f}, {high:.3f}]"
            else:
                interval = "-"
            lines.append(
                f"| {s.method} | {s.accuracy:.3f} | {interval} | {s.ari:.3f} | {n} | "
                f"{s.seconds:.1f} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "calibrator"}
        out["scores"] = [asdict(s) for s in self.scores]
        return out

    def plot(self, ax: Any = None) -> Any:
        """Bar chart of accuracy and ARI per method. Returns the figure."""
        return plot_results([self], ax=ax)


def _short(method: str) -> str:
    return method.split(" (")[0]


def results_table(results: Sequence[CalibrationResult], metric: str = "both") -> str:
    """One Markdown table over datasets (rows) and methods (columns).

    Args:
        metric: ``"both"`` (cells ``accuracy / ARI``), ``"accuracy"`` or ``"ari"``.
    """
    if not results:
        raise ValueError("no results to tabulate")
    if metric not in ("both", "accuracy", "ari"):
        raise ValueError(f"metric must be 'both', 'accuracy' or 'ari', got {metric!r}")
    methods = [_short(m) for m in results[0].methods]
    head = "| dataset | layer | n train | n test | " + " | ".join(methods) + " |"
    lines = [head, "|---" * (len(methods) + 4) + "|"]
    for r in results:
        cells = []
        for s in r.scores:
            if metric == "accuracy":
                cells.append(f"{s.accuracy:.3f}")
            elif metric == "ari":
                cells.append(f"{s.ari:.3f}")
            else:
                cells.append(f"{s.accuracy:.3f} / {s.ari:.3f}")
        n_test = r.scores[0].n_test
        lines.append(
            f"| {r.dataset} | {r.layer} | {r.n_train} | {n_test} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def plot_results(results: Sequence[CalibrationResult], ax: Any = None) -> Any:
    """Grouped bars: accuracy (top) and ARI (bottom) per dataset and method."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(2, 1, figsize=(max(6, 2.2 * len(results) + 3), 6), sharex=True)
    else:
        axes = ax
        fig = axes[0].figure
    methods = [_short(m) for m in results[0].methods]
    width = 0.8 / len(methods)
    x = np.arange(len(results))
    for j, m in enumerate(methods):
        acc = [r.scores[j].accuracy for r in results]
        ari = [r.scores[j].ari for r in results]
        axes[0].bar(x + j * width, acc, width, label=m)
        axes[1].bar(x + j * width, ari, width, label=m)
    axes[0].set_ylabel("accuracy")
    axes[1].set_ylabel("adjusted Rand index")
    axes[1].set_xticks(x + 0.4 - width / 2, [r.dataset for r in results])
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"semantic calibration vs baselines ({results[0].model})", fontsize=9)
    fig.tight_layout()
    return fig
