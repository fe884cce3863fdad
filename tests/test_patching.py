"""Patching grids (semhooks.studies.patching): oracles on a tiny model, the real-model study."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semhooks import Patch, PatchingResult, Swap, adapt, intervene
from semhooks.studies.patching import (
    AlignmentError,
    Cell,
    PatchingError,
    activation_patching,
    attribution_patching,
    concept_patching,
    diff_span,
    iter_activation_patching,
    logit_diff,
)
from semhooks.studies.patching.engine import prepare

# Pair 1 is ragged: " Italy" and " Madrid-like" subjects tokenise to different lengths.
CLEAN = ["The capital of France is", "The capital of Italy is", "The capital of Spain is"]
CORRUPT = [
    "The capital of Germany is",
    "The capital of Rome and Paris is",
    "The capital of Italy is",
]
ANSWERS = [" Paris", " Rome", " Madrid"]
WRONG = [" Berlin", " Paris", " Rome"]


@pytest.fixture
def metric(tiny_llama):
    return logit_diff(tiny_llama, ANSWERS, WRONG)


def test_diff_span_widens_to_whole_words():
    (c, k) = diff_span("The capital of Spain is", "The capital of Sweden is")
    assert "The capital of Spain is"[slice(*c)] == "Spain"
    assert "The capital of Sweden is"[slice(*k)] == "Sweden"


def test_pairs_align_by_characters_not_token_counts(tiny_llama, metric):
    setup = prepare(tiny_llama, CLEAN, CORRUPT, metric)
    a = adapt(tiny_llama)
    pa = setup.aligned[1]
    clean_span = [setup.clean.offsets[1, t].tolist() for t in pa.clean_tokens["span"]]
    assert len(pa.corrupted_tokens["span:first"]) == 1
    # the ragged pair: different token counts, same template tokens on both sides
    n_clean = int(setup.clean.attention_mask[1].sum())
    n_corr = int(setup.corrupted.attention_mask[1].sum())
    assert n_clean != n_corr and clean_span
    for lab in ("pre:0", "pre:3", "post:0", "last"):
        (tc,), (tk,) = pa.clean_tokens[lab], pa.corrupted_tokens[lab]
        assert setup.clean.input_ids[1, tc] == setup.corrupted.input_ids[1, tk], lab
    assert pa.corrupted_tokens["last"] == [n_corr - 1]
    assert a.n_layers == 3


def test_own_clean_activation_recovers_one_and_corrupted_gives_zero(tiny_llama, metric):
    r = activation_patching(
        tiny_llama, CLEAN, CORRUPT, metric, sites=["resid_post"], layers=[-1],
        positions=["last"], progress=False,
    )  # fmt: skip
    assert float(r.scores["resid_post"][0, 0]) == pytest.approx(1.0, abs=1e-5)
    noised = activation_patching(
        tiny_llama, CLEAN, CORRUPT, metric, sites=["resid_post"], layers=[-1],
        positions=["last"], mode="noise", progress=False,
    )  # fmt: skip
    assert float(noised.scores["resid_post"][0, 0]) == pytest.approx(0.0, abs=1e-5)
    # every cell written with the receiver's own (corrupted) activation: exactly 0
    setup = prepare(tiny_llama, CLEAN, CORRUPT, metric, hooks=[("attn_out", 1), ("head", 0)])
    cells = [Cell("attn_out", 1, "span:last"), Cell("head", 0, "last", 2)]
    same = list(iter_activation_patching(setup, cells, edit=lambda r, s, c: r, progress=False))
    assert [c.score for c in same] == pytest.approx([0.0, 0.0], abs=1e-6)


def _reference_loop(model, sites, layers, labels, metric):
    """One forward per cell with semhooks.Patch, full logits, and hand normalisation."""
    a = adapt(model)
    setup = prepare(model, CLEAN, CORRUPT, metric)
    cb, kb = setup.clean, setup.corrupted
    _, cache = model.run_with_cache(cb.input_ids, attention_mask=cb.attention_mask)
    last = kb.attention_mask.sum(-1) - 1

    def run(hooks):
        with intervene(model, *hooks), torch.no_grad():
            logits = model(kb.input_ids, attention_mask=kb.attention_mask)
        rows = torch.arange(len(CLEAN))
        return metric(logits[rows, last], rows)

    with torch.no_grad():
        clean_logits = model(cb.input_ids, attention_mask=cb.attention_mask)
    rows = torch.arange(len(CLEAN))
    m_clean = metric(clean_logits[rows, cb.attention_mask.sum(-1) - 1], rows)
    m_corr = run([])
    out = {}
    for site in sites:
        grid = torch.zeros(len(layers), len(labels))
        for i, layer in enumerate(layers):
            src_all = cache[a.hook_name(site, layer)]
            for j, lab in enumerate(labels):
                src = torch.zeros(len(CLEAN), kb.input_ids.shape[1], a.d_model)
                where = []
                for p, pa in enumerate(setup.aligned):
                    tc, tk = pa.clean_tokens[lab], pa.corrupted_tokens[lab]
                    src[p, tk] = src_all[p, tc]
                    where.append(tk)
                patch = Patch(src, layers=[layer], site=site, positions=where)
                m = run([patch])
                grid[i, j] = (m.mean() - m_corr.mean()) / (m_clean.mean() - m_corr.mean())
        out[site] = grid
    return out


def test_batched_grid_equals_a_hand_written_loop(tiny_llama, metric):
    sites, labels = ["resid_pre", "attn_out", "mlp_out"], ["pre:3", "span", "last"]
    ref = _reference_loop(tiny_llama, sites, [0, 1, 2], labels, metric)
    r = activation_patching(
        tiny_llama, CLEAN, CORRUPT, metric, sites=sites, positions=labels, progress=False
    )
    assert r.n_forwards < len(sites) * 3 * len(labels)  # many cells per forward
    for s in sites:
        torch.testing.assert_close(r.scores[s], ref[s], atol=2e-5, rtol=1e-4)


def test_batched_equals_one_cell_per_forward_including_heads(tiny_llama, metric):
    kw = dict(
        sites=["head", "resid_mid"], layers=[0, 2], positions=["pre:2", "span:first", "last"],
        progress=False,
    )  # fmt: skip
    many = activation_patching(tiny_llama, CLEAN, CORRUPT, metric, **kw)
    # the reference runs every cell, including those whose patch changes nothing
    one = activation_patching(
        tiny_llama, CLEAN, CORRUPT, metric, cells_per_forward=1, skip_identity=False, **kw
    )
    assert one.n_forwards == 2 + 2 * 3 * (4 + 1)
    assert many.scores["head"].shape == (2, 3, adapt(tiny_llama).model.cfg.n_heads)
    for s in many.sites:
        torch.testing.assert_close(many.scores[s], one.scores[s], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(many.raw[s], one.raw[s], atol=2e-5, rtol=1e-4)


def test_attribution_equals_exact_where_the_metric_is_linear(tiny_llama, metric):
    """With the final norm made the identity, the logits are linear in the last block's
    resid_post and mlp_out: first-order patching is then exact."""
    ln = tiny_llama.ln_final
    handle = ln.register_forward_hook(lambda mod, inp, out: inp[0])
    try:
        kw = dict(sites=["resid_post", "mlp_out"], layers=[-1], positions=None, progress=False)
        exact = activation_patching(tiny_llama, CLEAN, CORRUPT, metric, **kw)
        approx = attribution_patching(tiny_llama, CLEAN, CORRUPT, metric, **kw)
        exact_n = activation_patching(tiny_llama, CLEAN, CORRUPT, metric, mode="noise", **kw)
        approx_n = attribution_patching(tiny_llama, CLEAN, CORRUPT, metric, mode="noise", **kw)
        kw["sites"] = ["resid_post"]
        gd = attribution_patching(tiny_llama, CLEAN, CORRUPT, metric, gradrop=True, **kw)
    finally:
        handle.remove()
    # nothing downstream of the top resid_post passes through a block: every one of the L
    # drops leaves its gradient alone, and GradDrop is sum_l |AtP| / (L - 1) per pair
    n_layers = adapt(tiny_llama).n_layers
    by_hand = (approx.raw["resid_post"] - exact.corrupted_metric[:, None, None]).abs()
    gap = exact.clean_metric.mean() - exact.corrupted_metric.mean()
    expected = by_hand.mean(0) * n_layers / (n_layers - 1) / gap.abs()
    torch.testing.assert_close(gd.scores["resid_post"], expected, atol=1e-5, rtol=1e-4)
    for s in exact.sites:
        torch.testing.assert_close(approx.scores[s], exact.scores[s], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(approx_n.scores[s], exact_n.scores[s], atol=1e-4, rtol=1e-4)
    assert approx.n_forwards == 2  # the source baseline, one forward+backward
    torch.testing.assert_close(approx.corrupted_metric, exact.corrupted_metric)


def test_attribution_finds_the_top_cell_and_compare_reports_ranks(tiny_llama, metric):
    kw = dict(sites=["resid_pre", "head"], progress=False)
    exact = activation_patching(tiny_llama, CLEAN, CORRUPT, metric, **kw)
    approx = attribution_patching(tiny_llama, CLEAN, CORRUPT, metric, **kw)
    # a random tiny model is far from linear over the clean-corrupted gap, so only the
    # dominant cell (the last token at the top layer) is asked to agree
    assert approx.top("resid_pre", 1)[0][:2] == exact.top("resid_pre", 1)[0][:2]
    cmp = approx.compare(exact, k=3)
    assert set(cmp) == {"resid_pre", "head"}
    a = approx.scores["resid_pre"].flatten().numpy()
    b = exact.scores["resid_pre"].flatten().numpy()
    b = np.where(np.abs(b) < 1e-5, 0.0, b)
    assert cmp["resid_pre"]["spearman"] == pytest.approx(_spearman_by_hand(a, b))
    gd = attribution_patching(tiny_llama, CLEAN, CORRUPT, metric, gradrop=True, **kw)
    assert gd.method == "attribution+gradrop" and all((g >= 0).all() for g in gd.scores.values())


def _spearman_by_hand(a, b):
    def ranks(x):
        return np.array([np.mean([j for j, y in enumerate(sorted(x)) if y == v]) for v in x])

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def test_full_rank_interchange_is_exact_patching_and_controls_come_along(tiny_llama, metric):
    d = adapt(tiny_llama).d_model
    kw = dict(layers=[0, 2], positions=["span:last", "last"], progress=False)
    exact = activation_patching(tiny_llama, CLEAN, CORRUPT, metric, sites="resid_post", **kw)
    full = concept_patching(tiny_llama, CLEAN, CORRUPT, metric, torch.eye(d), controls=(), **kw)
    torch.testing.assert_close(
        full.scores["concept"], exact.scores["resid_post"], atol=2e-5, rtol=0
    )
    v = torch.randn(d, generator=torch.Generator().manual_seed(1))
    one = concept_patching(tiny_llama, CLEAN, CORRUPT, metric, v, **kw)
    assert set(one.scores) == {"concept", "random", "placebo"}
    again = concept_patching(tiny_llama, CLEAN, CORRUPT, metric, v, **kw)
    torch.testing.assert_close(one.scores["random"], again.scores["random"])
    swap = Swap(v, -v, alpha=0.0)
    zero = concept_patching(tiny_llama, CLEAN, CORRUPT, metric, swap, kind="swap", **kw)
    assert zero.scores["concept"].abs().max() < 1e-5  # alpha 0: the corrupted run


def test_result_round_trips_and_plots(tiny_llama, metric, tmp_path):
    r = activation_patching(tiny_llama, CLEAN, CORRUPT, metric, sites=["head"], progress=False)
    back = PatchingResult.load(r.save(tmp_path / "grid.safetensors"))
    assert back.sites == r.sites and back.positions == r.positions
    torch.testing.assert_close(back.scores["head"], r.scores["head"])
    torch.testing.assert_close(back.raw["head"], r.raw["head"])
    fig = r.plot()
    assert len(fig.axes) >= 1
    assert r.top("head", 2)[0][2] == pytest.approx(float(r.scores["head"].sum(-1).max()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sites=["resid"]), "unknown site 'resid'"),
        (dict(layers=[7]), "layer 7 is out of range"),
        (dict(positions=["subject"]), "unknown position 'subject'"),
        (dict(positions=["post:5"]), "position 'post:5' does not exist in pair 0"),
        (dict(cells_per_forward=0), "cells_per_forward must be >= 1"),
        (dict(mode="both"), "mode must be 'denoise' or 'noise'"),
    ],
)
def test_bad_requests_name_the_problem(tiny_llama, metric, kwargs, match):
    with pytest.raises((PatchingError, AlignmentError), match=match):
        activation_patching(tiny_llama, CLEAN, CORRUPT, metric, progress=False, **kwargs)


def test_unalignable_pairs_name_the_pair(tiny_llama, metric):
    with pytest.raises(AlignmentError, match="pair 0 cannot be aligned"):
        activation_patching(
            tiny_llama, CLEAN[:1], CORRUPT[:1], metric, progress=False,
            spans=[("France", "capital")],
        )  # fmt: skip
    with pytest.raises(AlignmentError, match="identical"):
        activation_patching(tiny_llama, CLEAN[:1], CLEAN[:1], metric, progress=False)
    with pytest.raises(PatchingError, match="give one corrupted text per clean text"):
        activation_patching(tiny_llama, CLEAN, CORRUPT[:2], metric, progress=False)
    odd = ["Paris is the capital of France", "The capital of Italy is"]
    with pytest.raises(AlignmentError, match="pair 1 has"):
        activation_patching(
            tiny_llama, odd, ["Berlin is the capital of France", CORRUPT[1]], metric,
            progress=False,
        )  # fmt: skip


# ---------------------------------------------------------------------- real model
@pytest.mark.real
@pytest.mark.slow
def test_factual_recall_subject_moves_to_the_last_token(smollm2):
    from semhooks.studies.patching.study import factual_recall_pairs

    clean, corrupt, answers, wrong = factual_recall_pairs(smollm2, n=4)
    metric = logit_diff(smollm2, answers, wrong)
    layers = list(range(0, 30, 3))
    kw = dict(sites=["resid_pre"], layers=layers, positions=["span:last", "last"], progress=False)
    exact = activation_patching(smollm2, clean, corrupt, metric, **kw)
    g = exact.scores["resid_pre"]
    # early: all of it sits on the subject; late: all of it has moved to the last token
    assert g[0, 0] > 0.9 and g[0, 1] < 0.1, g
    assert g[-1, 1] > 0.7 and g[-1, 0] < 0.2, g
    approx = attribution_patching(smollm2, clean, corrupt, metric, **kw)
    rho = approx.compare(exact)["resid_pre"]["spearman"]
    print(f"attribution vs exact, resid_pre: Spearman {rho:.3f}")
    assert not math.isnan(rho)


def test_patching_recipe_runs_end_to_end(tmp_path):
    from recipes import build_config, get_recipe, run_recipe

    recipe = get_recipe("patching")
    config = build_config(
        recipe.config_cls,
        overrides={
            "model": "tiny-llama", "clean": CLEAN[:2], "corrupted": CORRUPT[:2],
            "answers": ANSWERS[:2], "wrong": WRONG[:2], "layers": [0, 2],
            "positions": ["span:last", "last"], "progress": False,
        },
    )  # fmt: skip
    doc = run_recipe("patching", config, tmp_path / "run")
    summary = doc["metrics"]["summary"]
    assert summary["n_pairs"] == 2 and "resid_pre_spearman" in summary
    report = (tmp_path / "run" / "report.md").read_text()
    assert "no definition given" not in report and "exact.png" in report
    back = PatchingResult.load(tmp_path / "run" / "artifacts" / "exact.safetensors")
    assert back.layers == [0, 2]
