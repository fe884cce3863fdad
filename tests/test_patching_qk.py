"""Query and key patching (sites ``"q"``/``"k"``) and AtP*'s query/key correction.

Oracles: writing a run's own query/key gives exactly its own score (1 clean, 0 corrupted);
the batched grid equals a hand-written one-cell-per-forward loop; where the metric is linear
in the attention pattern the corrected attribution equals exact patching, and with a
saturated softmax the plain first-order estimate does not; on SmolLM2 the corrected
estimate ranks cells at least as well as the plain one.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from semhooks import adapt
from semhooks.studies.patching import (
    Cell,
    activation_patching,
    attribution_patching,
    iter_activation_patching,
    logit_diff,
    spearman,
)
from semhooks.studies.patching.engine import prepare

# subjects that start a token in both tiny tokenizers (GPT-2's splits " Germany" as " ", "Ger"..);
# pair 1 is ragged: the subjects differ in token count
CLEAN = ["The capital of France is", "The capital of Spain is", "The capital of Berlin is"]
CORRUPT = [
    "The capital of Berlin is",
    "The capital of Rome and Paris is",
    "The capital of Spain is",
]
ANSWERS = [" Paris", " Madrid", " Rome"]
WRONG = [" Berlin", " Paris", " Madrid"]
LABELS = ["pre:2", "span:first", "span:last", "last"]


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, tiny_llama, tiny_gpt2):
    return tiny_llama if request.param == "llama" else tiny_gpt2


def _metric(model):
    return logit_diff(model, ANSWERS, WRONG)


def test_a_run_s_own_query_and_key_give_its_own_score(tiny):
    metric = _metric(tiny)
    cells = [Cell("q", 1, "span:last", 0), Cell("k", 2, "span", 1), Cell("q", 2, "last", 3)]
    hooks = [("q", 1), ("q", 2), ("k", 2)]
    for mode, expected in (("denoise", 0.0), ("noise", 1.0)):
        # receiver's own query/key written back (corrupted into corrupted, clean into clean)
        setup = prepare(tiny, CLEAN, CORRUPT, metric, mode=mode, hooks=hooks)
        before = setup.n_forwards
        own = iter_activation_patching(setup, cells, edit=lambda r, s, c: r, progress=False)
        assert [c.score for c in own] == pytest.approx([expected] * 3, abs=1e-6)
        assert setup.n_forwards > before  # the hooks ran, nothing was skipped
    # and the clean query at the top layer's last token does move the metric
    r = activation_patching(
        tiny, CLEAN, CORRUPT, metric, sites=["q", "k"], layers=[-1], positions=["last"],
        progress=False,
    )  # fmt: skip
    assert r.scores["q"].abs().max() > 1e-3
    n_kv = 2 if adapt(tiny).model_type == "llama" else 4
    assert r.scores["q"].shape == (1, 1, 4) and r.scores["k"].shape == (1, 1, n_kv)


def _loop(model, metric, site, layers, labels):
    """One forward per cell: a plain hook writes the clean query/key of one head into the
    corrupted run (full logits, means by hand)."""
    setup = prepare(model, CLEAN, CORRUPT, metric)
    cb, kb = setup.clean, setup.corrupted
    rows = torch.arange(len(CLEAN))

    def run(batch, hooks):
        with torch.no_grad():
            logits = model.run_with_hooks(
                batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=hooks
            )
        return metric(logits[rows, batch.attention_mask.sum(-1) - 1].float(), rows)

    m_clean, m_corr = run(cb, []), run(kb, [])
    out = {}
    for layer in layers:
        name = f"blocks.{layer}.attn.hook_{site}"
        seen = []

        def keep(act, hook, seen=seen):
            seen.append(act.clone())

        run(cb, [(name, keep)])
        src = seen[0]
        n_heads = src.shape[2]
        for lab in labels:
            for h in range(n_heads):

                def write(act, hook, lab=lab, h=h, src=src):
                    act = act.clone()
                    for p, pa in enumerate(setup.aligned):
                        tc, tk = pa.clean_tokens[lab], pa.corrupted_tokens[lab]
                        act[p, tk, h] = src[p, tc, h]
                    return act

                m = run(kb, [(name, write)])
                gap = m_clean.mean() - m_corr.mean()
                out[(layer, lab, h)] = float((m.mean() - m_corr.mean()) / gap)
    return out


@pytest.mark.parametrize("site", ["q", "k"])
def test_batched_query_key_grid_equals_one_cell_at_a_time(tiny, site):
    metric = _metric(tiny)
    layers = [0, 2]
    labels = ["pre:2", "span:last", "last"]  # pre:2 is skipped by the grid, run by the loop
    ref = _loop(tiny, metric, site, layers, labels)
    r = activation_patching(
        tiny, CLEAN, CORRUPT, metric, sites=[site], layers=layers, positions=labels,
        progress=False,
    )  # fmt: skip
    grid = r.scores[site]
    assert r.n_forwards < len(ref)
    for (layer, lab, h), value in ref.items():
        got = float(grid[layers.index(layer), labels.index(lab), h])
        assert got == pytest.approx(value, abs=2e-5), (layer, lab, h)


def _pattern_linear_model(arch: str, scale: float, backend: str = "bridge"):
    """A tiny model whose metric is linear in the top layer's attention pattern: the top
    MLP writes 0, the final norm is the identity (a forward hook), the top layer's queries
    are multiplied by ``scale`` (large: a saturated softmax)."""
    from semhooks.testing import tiny_hf_model

    hf, tok = tiny_hf_model(arch)
    with torch.no_grad():
        if arch == "llama":
            top = hf.model.layers[-1]
            top.self_attn.q_proj.weight.mul_(scale)
            top.mlp.down_proj.weight.zero_()
        else:
            top = hf.transformer.h[-1]
            d = hf.config.n_embd
            top.attn.c_attn.weight[:, :d].mul_(scale)
            top.attn.c_attn.bias[:d].mul_(scale)
            top.mlp.c_proj.weight.zero_()
            top.mlp.c_proj.bias.zero_()
    if backend == "hooked":
        from semhooks.backend.hooked import hooked_transformer_from_hf

        model = hooked_transformer_from_hf(hf, tok)
    else:
        from transformer_lens.model_bridge import TransformerBridge

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = TransformerBridge.boot_transformers(f"tiny-{arch}", hf_model=hf, tokenizer=tok)
    model.eval()
    handle = model.ln_final.register_forward_hook(lambda mod, inp, out: inp[0])
    return model, handle


def _corrected_is_exact_where_the_pattern_is_all_that_moves(arch, backend="bridge"):
    model, handle = _pattern_linear_model(arch, scale=1000.0, backend=backend)
    try:
        metric = _metric(model)
        kw = dict(sites=["q", "k"], layers=[-1], positions=LABELS, progress=False)
        exact = activation_patching(model, CLEAN, CORRUPT, metric, **kw)
        fixed = attribution_patching(model, CLEAN, CORRUPT, metric, **kw)
        plain = attribution_patching(model, CLEAN, CORRUPT, metric, qk_correction=False, **kw)
        pattern = _top_pattern(model)
    finally:
        handle.remove()
    assert pattern.max(-1).values.mean() > 0.9  # the softmax is saturated
    assert fixed.provenance["qk_correction"] and not plain.provenance["qk_correction"]
    for s in ("q", "k"):
        torch.testing.assert_close(fixed.raw[s], exact.raw[s], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fixed.scores[s], exact.scores[s], atol=1e-4, rtol=1e-4)
    worst = max(float((plain.scores[s] - exact.scores[s]).abs().max()) for s in ("q", "k"))
    assert worst > 0.3, worst  # first order through a saturated softmax misses


def _top_pattern(model):
    a = adapt(model)
    name = f"blocks.{a.n_layers - 1}.attn.hook_pattern"
    batch = a.tokenize(CORRUPT)
    seen = []
    with torch.no_grad():
        model.run_with_hooks(
            batch.input_ids, attention_mask=batch.attention_mask,
            fwd_hooks=[(name, lambda act, hook: seen.append(act.clone()))],
        )  # fmt: skip
    last = batch.attention_mask.sum(-1) - 1
    return seen[0][torch.arange(len(CORRUPT)), :, last]  # [pair, head, key]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_corrected_attribution_is_exact_when_the_metric_is_linear_in_the_pattern(arch):
    _corrected_is_exact_where_the_pattern_is_all_that_moves(arch)


def test_corrected_attribution_on_a_hooked_transformer():
    from semhooks.backend.hooked import hooked_transformer_available

    if not hooked_transformer_available():
        pytest.skip("HookedTransformer needs TransformerLens 3.x (.venv-tl3)")
    _corrected_is_exact_where_the_pattern_is_all_that_moves("llama", backend="hooked")


def test_correction_leaves_other_sites_alone_and_gradrop_runs(tiny_llama):
    metric = _metric(tiny_llama)
    kw = dict(sites=["resid_pre", "q", "head"], layers=[0, 2], positions=LABELS, progress=False)
    fixed = attribution_patching(tiny_llama, CLEAN, CORRUPT, metric, **kw)
    plain = attribution_patching(tiny_llama, CLEAN, CORRUPT, metric, qk_correction=False, **kw)
    for s in ("resid_pre", "head"):
        torch.testing.assert_close(fixed.raw[s], plain.raw[s])
    assert fixed.n_forwards == plain.n_forwards == 2
    gd = attribution_patching(tiny_llama, CLEAN, CORRUPT, metric, gradrop=True, **kw)
    assert gd.scores["q"].shape == (2, len(LABELS), 4) and bool((gd.scores["q"] >= 0).all())


# ---------------------------------------------------------------------- real model
@pytest.mark.real
@pytest.mark.slow
def test_query_key_correction_on_smollm2(smollm2):
    from semhooks.studies.patching.study import factual_recall_pairs

    # 5 layers x 2 positions x (9 query + 3 key heads) = 120 cells, 3 pairs: two forwards.
    # On every 3rd layer with 4 pairs (240 cells) it measured Spearman 0.995 corrected,
    # 0.961 plain (README).
    clean, corrupt, answers, wrong = factual_recall_pairs(smollm2, n=3)
    metric = logit_diff(smollm2, answers, wrong)
    kw = dict(
        sites=["q", "k"], layers=[2, 8, 14, 20, 26], positions=["span:last", "last"],
        progress=False,
    )  # fmt: skip
    exact = activation_patching(smollm2, clean, corrupt, metric, **kw)
    fixed = attribution_patching(smollm2, clean, corrupt, metric, **kw)
    plain = attribution_patching(smollm2, clean, corrupt, metric, qk_correction=False, **kw)

    def rho(r):
        a = torch.cat([r.scores[s].flatten() for s in ("q", "k")])
        b = torch.cat([exact.scores[s].flatten() for s in ("q", "k")])
        return spearman(a.numpy(), b.numpy())

    r_fixed, r_plain = rho(fixed), rho(plain)
    print(f"q/k grid on SmolLM2, Spearman vs exact: corrected {r_fixed:.3f}, plain {r_plain:.3f}")
    assert r_fixed >= r_plain


def test_corrected_effects_on_a_hand_built_head_equal_the_exact_change():
    """One layer, no model: S = q k^T / sqrt(d) (causal), m = sum(A * W). The corrected
    effect of writing another query into one row (or another key into one column) equals
    m(softmax(S_patched)) - m(A) exactly; a pattern that is not softmax(S) is refused."""
    from semhooks.studies.patching import PatchingError
    from semhooks.studies.patching.engine import LabelIndex
    from semhooks.studies.patching.qk import check_pattern, corrected_effects

    g = torch.Generator().manual_seed(0)
    t, d, n_heads, n_kv = 5, 8, 4, 2
    q0 = 6 * torch.randn(1, t, n_heads, d, generator=g)  # large: a saturated softmax
    k0 = torch.randn(1, t, n_kv, d, generator=g)
    w = torch.randn(1, n_heads, t, t, generator=g)
    causal = torch.ones(t, t, dtype=torch.bool).tril()

    def pattern_of(q, k):
        kk = k.repeat_interleave(n_heads // n_kv, dim=2)
        s = torch.einsum("bqhd,bkhd->bhqk", q, kk) / d**0.5
        return s.masked_fill(~causal, float("-inf"))

    src_q = torch.randn(1, t, n_heads, d, generator=g) * 6
    src_k = torch.randn(1, t, n_kv, d, generator=g)
    index = LabelIndex(  # label 0: token 3; label 1: tokens 1 and 4
        torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0]), torch.tensor([3, 1, 4]),
        torch.tensor([3, 1, 4]), 2,
    )  # fmt: skip
    for which, source in (("q", src_q), ("k", src_k)):
        q = q0.clone().requires_grad_(True)
        k = k0.clone().requires_grad_(True)
        scores = pattern_of(q, k)
        a = torch.softmax(scores, -1)
        got = corrected_effects(q if which == "q" else k, scores, a, w, source, index)
        for label, tokens in ((0, [3]), (1, [1, 4])):
            for h in range(source.shape[2]):
                qp, kp = q0.clone(), k0.clone()
                x = qp if which == "q" else kp
                x[0, tokens, h] = source[0, tokens, h]
                change = (torch.softmax(pattern_of(qp, kp), -1) - a.detach()) * w
                assert float(got[0, label, h]) == pytest.approx(float(change.sum()), abs=1e-5)
    with pytest.raises(PatchingError, match="differs from attn.hook_pattern"):
        check_pattern(scores.detach(), torch.softmax(2 * scores.detach(), -1), "layer 0")
