"""Figures read back: axis labels, legend texts, series, y-limits and annotation colours.

Built from small hand-made results (no model), so each test checks what a reader of the
figure sees, not only that a PNG was written.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba

from semhooks.plots import heatmap, layer_curves, new_figure
from semhooks.studies.emergence import PROFILE_LINES_MAX, EmergenceResult
from semhooks.studies.lexical import WiCResult
from semhooks.studies.steering import SteeringCurve


def legend_texts(ax):
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def luminance(colour):
    r, g, b, _ = to_rgba(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


# ---------------------------------------------------------------------- helpers
def test_layer_curves_draws_one_band_per_series():
    fig, (ax,) = new_figure()
    layer_curves(
        ax,
        [0, 1, 2],
        {"a": [0.5, 0.6, 0.7], "b": [0.4, 0.5, 0.6]},
        bands={"a": ([0.4, 0.5, 0.6], [0.6, 0.7, 0.8])},
        band_label="95% CI",
    )
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    assert "a 95% CI" in legend_texts(ax) and "b 95% CI" not in legend_texts(ax)
    with pytest.raises(ValueError, match="band of 'a' has 2/3 values for 3 layers"):
        layer_curves(ax, [0, 1, 2], {"a": [0, 0, 0]}, bands={"a": ([0, 0], [1, 1, 1])})


def test_heatmap_annotations_contrast_with_their_cells():
    """A diverging map is near white around 0: the numbers there must be dark."""
    values = np.array([[0.0, 0.9], [-0.9, 0.01]])
    fig, (ax,) = new_figure()
    heatmap(ax, values, [0, 1], [1, 2], cmap="RdBu_r", vmin=-1, vmax=1, fmt="{:.1f}")
    image = ax.images[0]
    assert len(ax.texts) == 4
    for text in ax.texts:
        j, i = (round(c) for c in text.get_position())
        cell = image.cmap(image.norm(values[i, j]))
        assert abs(luminance(text.get_color()) - luminance(cell)) > 0.4, (i, j, text.get_color())
    zero = next(t for t in ax.texts if t.get_position() == (0, 0))
    assert luminance(zero.get_color()) < 0.1  # black on the white centre of RdBu_r


# ---------------------------------------------------------------------- WiC
def wic_result(accuracy, *, encoder=False, n_eval=80):
    layers = list(range(len(next(iter(accuracy.values())))))
    return WiCResult(
        model="enc" if encoder else "dec",
        is_encoder=encoder,
        layers=layers,
        variants=list(accuracy),
        accuracy=accuracy,
        thresholds={v: [0.5] * len(layers) for v in accuracy},
        fit_accuracy={v: list(reversed(a)) for v, a in accuracy.items()},
        protocol={"n_eval": n_eval, "majority_rate": 0.5, "eval_split": "dev"},
    )


def test_wic_plot_has_error_bands_and_one_untruncated_y_range():
    dec = wic_result({"base": [0.55, 0.62, 0.70], "repeat": [0.58, 0.66, 0.68]})
    enc = wic_result({"base": [0.51, 0.53, 0.52], "repeat": [0.50, 0.54, 0.56]}, encoder=True)
    fig = dec.plot(enc)
    axes = fig.get_axes()
    assert len(axes) == 2
    assert axes[0].get_ylim() == axes[1].get_ylim()  # the panels compare by eye
    low, high = axes[0].get_ylim()
    assert low <= 0.5 - 0.05 and high == pytest.approx(1.0)  # chance and 1.0 both shown
    for ax in axes:
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2  # one 95% band per variant
        texts = legend_texts(ax)
        assert {"base", "repeat", "base 95% CI", "repeat 95% CI", "majority class"} <= set(texts)
        assert "layer chosen on fit split" in texts
        assert ax.get_ylabel() == "accuracy (evaluation split)"
        assert "n=80 pairs" in ax.get_title()
    # the big dots sit at the layer chosen on the fit split, not at the evaluation peak
    dots = [line for line in axes[0].get_lines() if line.get_markersize() == 8]
    assert [(d.get_xdata()[0], d.get_ydata()[0]) for d in dots] == [(0, 0.55), (0, 0.58)]
    # a Wilson band around 0.5 of 80 pairs is about +-0.11 wide
    path = [c for c in axes[1].collections if isinstance(c, PolyCollection)][0].get_paths()[0]
    ys = path.vertices[:, 1]
    assert ys.max() - ys.min() > 0.2


def test_wic_selected_layer_is_chosen_on_the_fit_split():
    res = wic_result({"base": [0.55, 0.62, 0.70]})  # fit accuracy is the reverse
    assert res.best_layer == {"base": 2}  # the evaluation peak (optimistic)
    assert res.selected_layer == {"base": 0}
    assert res.selected_accuracy == {"base": pytest.approx(0.55)}
    low, high = res.interval([0.5])
    assert low[0] == pytest.approx(0.393, abs=1e-3) and high[0] == pytest.approx(0.607, abs=1e-3)
    assert "55.0 [44.1, 65.4]" in res.table()


# ---------------------------------------------------------------------- steering
def steering(control_kind="random"):
    alphas = [-1.0, -0.5, 0.0, 0.5, 1.0]
    return SteeringCurve(
        alphas=alphas,
        prob=[0.1, 0.15, 0.2, 0.3, 0.4],
        logit_diff=[-1.0, -0.5, 0.0, 0.5, 1.0],
        control_prob=[0.2] * 5,
        control_logit_diff=[0.0] * 5,
        baseline_prob=0.2,
        baseline_logit_diff=0.0,
        target_tokens=[" great", " good"],
        contrast_tokens=[" bad"],
        intervention={
            "type": "Steer",
            "layers": [12],
            "site": "resid_post",
            "direction": {"__tensor__": [3.0, 4.0], "dtype": "float32"},
        },
        control={"type": "Steer"},
        provenance={"n_prompts": 4},
        control_kind=control_kind,
    )


def test_steering_plot_states_the_scale_the_difference_and_the_control():
    curve = steering()
    assert curve.direction_norm == pytest.approx(5.0)
    fig = curve.plot()
    prob_ax, diff_ax = fig.get_axes()
    suptitle = fig._suptitle.get_text()
    assert "Steer at layer 12 (resid_post)" in suptitle and "||v|| = 5" in suptitle
    assert "4 prompts" in suptitle
    assert diff_ax.get_ylabel() == "mean logit(target tokens) - mean logit(contrast tokens)"
    assert "' great', ' good' minus ' bad'" in diff_ax.get_title()
    assert legend_texts(prob_ax) == [
        "Steer along v",
        "control: random direction of the same norm",
        "no hook",
    ]
    for ax in (prob_ax, diff_ax):
        assert len(ax.get_lines()) == 3  # intervention, control, no-hook baseline
        assert len(ax.get_lines()[0].get_xdata()) == 5
        assert ax.get_xlabel() == "alpha"
    placebo = steering("placebo").plot()
    assert "norm-matched placebo" in legend_texts(placebo.get_axes()[0])[1]


def test_steering_curve_records_its_control_kind(tiny_llama):
    import torch

    from semhooks.interventions import Steer
    from semhooks.studies.steering import steering_curve

    v = torch.ones(tiny_llama.cfg.d_model)
    curve = steering_curve(tiny_llama, ["The movie was"], Steer(v, layers=1), [-1, 0, 1], " good")
    assert curve.control_kind == "random"
    assert curve.direction_norm == pytest.approx(float(v.norm()), rel=1e-5)
    assert curve.logit_diff_label() == "mean logit(target tokens) - mean logit(all vocabulary)"


# ---------------------------------------------------------------------- emergence
def emergence(n_layers, n_positions=4):
    rng = np.random.default_rng(0)
    shape = (n_layers, n_positions)
    ie = rng.normal(0.5, 0.3, shape)
    ie[:, 0] = 0.0  # t = 1: macro input == micro input
    ceiling = np.full(n_positions, 3.0)
    return EmergenceResult(
        model="m",
        layers=list(range(0, 3 * n_layers, 3)),
        positions=list(range(1, n_positions + 1)),
        ie=ie,
        mi_macro=ie + 1.0,
        mi_micro=np.ones(shape),
        mi_micro_token=np.ones(shape),
        ceiling_macro=ceiling,
        ceiling_micro=ceiling - 1,
        ceiling_micro_token=ceiling - 1,
        entropy_macro=ceiling,
        entropy_micro_token=ceiling - 1,
        protocol={"estimator_class": "GaussianMI", "reduce_dim": 4, "n_sequences": 100},
    )


def test_emergence_plot_lines_per_block_readable_cells_and_a_free_ceiling():
    res = emergence(4)
    fig = res.plot()
    heat, prof, last = fig.get_axes()[:3]
    # t = 1 annotations are dark on the (near white) zero cells of the diverging map
    image = heat.images[0]
    for text in heat.texts:
        j, i = (round(c) for c in text.get_position())
        cell = image.cmap(image.norm(res.ie[i, j]))
        assert abs(luminance(text.get_color()) - luminance(cell)) > 0.4
    # four blocks: one line each, no quartile band over four numbers
    assert legend_texts(prof) == ["block 0", "block 3", "block 6", "block 9"]
    assert not [c for c in prof.collections if isinstance(c, PolyCollection)]
    assert prof.get_ylabel() == "IE (bits)" and prof.get_xlabel() == "position t (content tokens)"
    # the legend of the last panel sits outside it, so it hides no ceiling line
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in (prof, last):
        box = ax.get_legend().get_window_extent(renderer)
        assert not box.overlaps(ax.get_window_extent(renderer))
    assert "ceiling macro 3.00" in legend_texts(last)
    ceiling = [line for line in last.get_lines() if line.get_label() == "ceiling macro 3.00"][0]
    low, high = last.get_ylim()
    assert low <= ceiling.get_ydata()[0] <= high


def test_emergence_plot_bands_name_the_number_of_blocks():
    res = emergence(PROFILE_LINES_MAX + 4)
    prof = res.plot().get_axes()[1]
    n = PROFILE_LINES_MAX + 4
    assert legend_texts(prof) == [
        f"min-max over {n} blocks",
        f"IQR over {n} blocks",
        f"mean over {n} blocks",
    ]
    assert len([c for c in prof.collections if isinstance(c, PolyCollection)]) == 2
