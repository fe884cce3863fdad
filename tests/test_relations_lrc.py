"""Linear relational concepts: API on a tiny model; behaviour on SmolLM2 (marked real).

The real tests fit LRCs on three-shot prompts of relations SmolLM2 knows (chosen by
validation yield), check held-out accuracy against chance and the mean-difference baseline,
and check that a concept swap moves the answer while the random-direction control does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semhooks.io.artifacts import ArtifactError
from semhooks.relations.evaluation import (
    causal_swap,
    evaluate_relation,
    faithfulness,
    fit_baselines,
    hernandez_causality,
    sweep,
    table_markdown,
)
from semhooks.relations.lrc import LRC, Concept
from semhooks.relations.lre import NotFittedError
from semhooks.relations.prompts import RelationPrompt
from semhooks.testing import tiny_model

SUBJECTS = ["France", "Italy", "Spain", "Germany", "Paris", "Rome", "Madrid", "Berlin"]


def toy_prompts() -> list[RelationPrompt]:
    objs = ["Cat", "Dog"] * 4
    return [
        RelationPrompt(f"The capital of {s} is", s, o, "toy")
        for s, o in zip(SUBJECTS, objs, strict=True)
    ]


@pytest.fixture(scope="module")
def toy_lrc(tiny_llama):
    return LRC(0, 2, rank=8, n_lre_prompts=4, progress=False).fit(tiny_llama, toy_prompts())


def test_lrc_concepts_are_unit_vectors_from_the_inverted_lre(tiny_llama, toy_lrc):
    lrc = toy_lrc
    assert lrc.classes_ == ["Cat", "Dog"] and set(lrc.concepts_) == {"Cat", "Dog"}
    assert len(lrc.lre_prompts_) == 4
    assert {p.object for p in lrc.lre_prompts_} == {"Cat", "Dog"}  # balanced
    torch.testing.assert_close(lrc.vectors_.norm(dim=-1), torch.ones(2))
    # v_o = normalize(W^+ (E[o] - b)) recomputed by hand
    w_inv = lrc.lre_.invert(8)
    for i, obj in enumerate(lrc.classes_):
        raw = w_inv @ (lrc.object_means_[i] - lrc.lre_.bias_)
        torch.testing.assert_close(lrc.vectors_[i], raw / raw.norm(), atol=1e-5, rtol=1e-4)
        c = lrc.concepts_[obj]
        assert isinstance(c, Concept) and c.layer == 0 and c.relation == "toy" and c.object == obj
        assert c.name == f"toy: {obj}"
        torch.testing.assert_close(c.vector, lrc.vectors_[i])


def test_lrc_concept_is_a_direction_for_interventions(toy_lrc):
    from semhooks.interventions import as_direction

    c = toy_lrc.concepts_["Cat"]
    torch.testing.assert_close(as_direction(c), c.vector)


def test_lrc_predict_paths_agree(tiny_llama, toy_lrc):
    prompts = toy_prompts()
    states = toy_lrc.subject_states(tiny_llama, prompts)
    by_states = toy_lrc.predict_states(states)
    assert by_states == toy_lrc.predict(tiny_llama, prompts)
    texts = [p.text for p in prompts]
    assert by_states == toy_lrc.predict(tiny_llama, texts, [p.subject for p in prompts])
    scores = toy_lrc.decision_function(states)
    assert [toy_lrc.classes_[i] for i in scores.argmax(-1)] == by_states
    acc = np.mean([a == p.object for a, p in zip(by_states, prompts, strict=True)])
    assert toy_lrc.score(tiny_llama, prompts) == pytest.approx(acc)


def test_lrc_with_rank_equals_refit_at_that_rank(tiny_llama, toy_lrc):
    low = toy_lrc.with_rank(3)
    refit = LRC(0, 2, rank=3, n_lre_prompts=4, progress=False).fit(tiny_llama, toy_prompts())
    torch.testing.assert_close(low.vectors_, refit.vectors_, atol=1e-5, rtol=1e-4)
    assert toy_lrc.rank == 8


def test_lrc_sketch_seed_changes_only_the_randomized_sketch(tiny_llama):
    def fit(**kw):
        return LRC(0, 2, rank=4, n_lre_prompts=4, method="randomized", progress=False, **kw).fit(
            tiny_llama, toy_prompts()
        )

    base, same, other = fit(seed=3), fit(seed=3, sketch_seed=3), fit(seed=3, sketch_seed=4)
    torch.testing.assert_close(same.vectors_, base.vectors_)
    assert [p.subject for p in other.lre_prompts_] == [p.subject for p in base.lre_prompts_]
    assert not torch.allclose(other.lre_.weight_, base.lre_.weight_)
    # the bias comes from exact J_i s_i products, not from the sketch
    torch.testing.assert_close(other.lre_.bias_, base.lre_.bias_, atol=1e-5, rtol=1e-4)


def test_lrc_save_load_roundtrip_and_refusal(tiny_llama, toy_lrc, tmp_path):
    path = toy_lrc.save(tmp_path / "toy.lrc")
    back = LRC.load(path, tiny_llama)
    torch.testing.assert_close(back.vectors_, toy_lrc.vectors_)
    assert back.classes_ == toy_lrc.classes_ and back.provenance_["rank"] == 8
    prompts = toy_prompts()
    assert back.predict(tiny_llama, prompts) == toy_lrc.predict(tiny_llama, prompts)
    with pytest.raises(ArtifactError, match="d_model"):
        LRC.load(path, tiny_model("llama", d_model=32))


def test_lrc_bad_inputs(tiny_llama):
    prompts = toy_prompts()
    with pytest.raises(NotFittedError):
        LRC(0, 2, rank=4).predict_states(torch.zeros(1, 64))
    one_object = [RelationPrompt(p.text, p.subject, "Cat", "toy") for p in prompts]
    with pytest.raises(ValueError, match="single object"):
        LRC(0, 2, rank=4, progress=False).fit(tiny_llama, one_object)
    with pytest.raises(ValueError, match="rank 65 is out of range"):
        LRC(0, 2, rank=65, progress=False).fit(tiny_llama, prompts)
    mixed = prompts[:2] + [
        RelationPrompt(p.text, p.subject, p.object, "other") for p in prompts[2:]
    ]
    with pytest.raises(ValueError, match="one relation"):
        LRC(0, 2, rank=4, progress=False).fit(tiny_llama, mixed)
    with pytest.raises(ValueError, match="does not occur"):
        LRC(0, 2, rank=4, progress=False).fit(
            tiny_llama, prompts + [RelationPrompt("The capital is", "Rome", "Dog", "toy")]
        )
    lrc = LRC(0, 2, rank=4, n_lre_prompts=2, progress=False).fit(tiny_llama, prompts)
    with pytest.raises(ValueError, match="one subject per text"):
        lrc.predict(tiny_llama, ["The capital of Rome is"])


def test_baselines_separate_training_states():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 4
    y = [str(i % 3) for i in range(60)]
    X = centers[[int(c) for c in y]] + torch.randn(60, 16, generator=g)
    fitted = fit_baselines(X, y)
    assert set(fitted) == {"logistic", "svm", "mean_difference"}
    for b in fitted.values():
        assert b.predict_states(X) == y
        torch.testing.assert_close(b.vectors.norm(dim=-1), torch.ones(3))
    # binary: +w / -w directions
    two = fit_baselines(X[:40], ["a" if c == "0" else "b" for c in y[:40]], ["logistic"])
    v = two["logistic"].vectors
    torch.testing.assert_close(v[0], -v[1])


def test_swap_and_causality_run_on_tiny(tiny_llama, toy_lrc):
    prompts = toy_prompts()
    sw = causal_swap(toy_lrc, tiny_llama, prompts, alpha=0.5, seed=0)
    assert sw.n == len(prompts) and 0 <= sw.score <= 1 and 0 <= sw.control_score <= 1
    assert all(t != p.object for t, p in zip(sw.targets, prompts, strict=True))
    # a zero-strength swap changes nothing: success equals the no-intervention baseline
    zero = causal_swap(toy_lrc, tiny_llama, prompts, alpha=0.0, control=False)
    assert zero.score == zero.baseline_score
    with pytest.raises(ValueError, match="no concept"):
        causal_swap(toy_lrc, tiny_llama, [RelationPrompt("The capital of Rome is", "Rome", "Owl")])
    hc = hernandez_causality(toy_lrc.lre_, tiny_llama, prompts, rank=8)
    assert hc.n == len(prompts) and 0 <= hc.score <= 1
    fa = faithfulness(toy_lrc.lre_, tiny_llama, prompts)
    assert fa.n == len(prompts) and len(fa.lre_tokens) == len(prompts)


def test_swap_baseline_reuse_equals_a_fresh_run_and_skips_only_that_forward(
    tiny_llama, toy_lrc, monkeypatch
):
    from semhooks import adapt
    from semhooks.relations.prompts import encode_prompts

    prompts = toy_prompts()
    fresh = causal_swap(toy_lrc, tiny_llama, prompts, alpha=0.5, seed=0)
    # the baseline outcomes equal a reference from the full forward's logits
    adapter = adapt(tiny_llama)
    rows = []
    for p, t in zip(prompts, fresh.targets, strict=True):
        rows += [p, RelationPrompt(p.text, p.subject, t, p.relation, p.template, p.examples)]
    enc = encode_prompts(adapter, rows, with_answer=True)
    logp = adapter.forward(enc.batch).float().log_softmax(-1)
    p_min = torch.stack(
        [
            logp[r, pos, tid].min()
            for r, (pos, tid) in enumerate(zip(enc.object_positions, enc.answer_ids, strict=True))
        ]
    )
    assert fresh.baseline == (p_min[1::2] > p_min[0::2]).tolist()

    calls = []
    real = type(adapter).logits_at

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(adapter), "logits_at", counting)
    again = causal_swap(toy_lrc, tiny_llama, prompts, alpha=0.5, seed=0, baseline=fresh)
    assert len(calls) == 2  # swap + control; the un-intervened forward was reused
    assert (again.score, again.control_score, again.baseline_score, again.baseline) == (
        fresh.score,
        fresh.control_score,
        fresh.baseline_score,
        fresh.baseline,
    )
    # other targets (or prompts): the baseline no longer applies and is recomputed
    calls.clear()
    other = causal_swap(toy_lrc, tiny_llama, prompts, alpha=0.5, seed=1, baseline=fresh)
    if other.targets != fresh.targets:
        assert len(calls) == 3
    calls.clear()
    causal_swap(toy_lrc, tiny_llama, prompts[:-1], alpha=0.5, seed=0, baseline=fresh)
    assert len(calls) == 3


def test_swap_shares_a_row_between_single_token_answers_and_equals_two_rows(
    tiny_llama, monkeypatch
):
    """A pair whose two answers are one token each is read from one row (both first tokens
    are predicted at the prompt's last position); every outcome, swap and control (one edit
    per pair, given to each of its rows), equals scoring every pair on two rows."""
    from semhooks import adapt
    from semhooks.interventions import Swap, intervene, random_control
    from semhooks.relations.prompts import encode_prompts

    adapter = adapt(tiny_llama)
    objs = ["C", "the", "of", "Cat"]  # one token each, except "Cat" (two)
    # concepts: each answer's first-token unembedding; prompts end in their subject, so the
    # swap edits the very state the answers are read from (a planted, strong effect)
    first = {o: adapter.tokenizer(" " + o)["input_ids"][0] for o in objs}
    vecs = {o: adapter.W_U[:, i].detach().float() for o, i in first.items()}
    prompts = [
        RelationPrompt(f"The capital of {s}", s, objs[i % 4], "toy") for i, s in enumerate(SUBJECTS)
    ]
    targets = [objs[(i + 1) % 4] for i in range(len(prompts))]  # "of"/"Cat" pairs need 2 rows
    widths: list[int] = []
    real = type(adapter).logits_at

    def counting(self, batch, *args, **kwargs):
        widths.append(int(batch.input_ids.shape[0]))
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(type(adapter), "logits_at", counting)
    got = causal_swap(vecs, tiny_llama, prompts, targets=targets, alpha=0.5, seed=3)
    monkeypatch.undo()
    assert widths == [12, 12, 12]  # 4 one-row pairs + 4 two-row pairs, not 16 rows

    rows = [
        r
        for p, t in zip(prompts, targets, strict=True)
        for r in (p, RelationPrompt(p.text, p.subject, t, p.relation))
    ]
    enc = encode_prompts(adapter, rows, with_answer=True)
    per_pair = Swap(
        torch.stack([vecs[p.object] for p in prompts]), torch.stack([vecs[t] for t in targets]),
        alpha=0.5, layers="all",
    )  # fmt: skip
    twice = torch.arange(len(prompts)).repeat_interleave(2)
    positions = [[int(x)] for x in enc.subject_positions]
    want = {}
    for name, iv in (("swap", per_pair), ("control", random_control(per_pair, seed=3))):
        on_rows = Swap(
            iv.v_from[twice], iv.v_to[twice], alpha=0.5, layers="all", positions=positions
        )
        with intervene(tiny_llama, on_rows, attention_mask=enc.batch.attention_mask):
            logp = adapter.forward(enc.batch).float().log_softmax(-1)
        p_min = torch.stack(
            [
                logp[r, pos, tid].min()
                for r, (pos, tid) in enumerate(
                    zip(enc.object_positions, enc.answer_ids, strict=True)
                )
            ]
        )
        want[name] = (p_min[1::2] > p_min[0::2]).tolist()
    assert got.success == want["swap"] and got.control_score == np.mean(want["control"])
    # not vacuous: the planted swap flips answers the model did not prefer, the control fewer
    assert got.success != got.baseline and got.score > got.control_score


def test_table_markdown_per_relation_and_category():
    from semhooks.relations.evaluation import RelationEvaluation

    def ev(name, cat, acc, n_test):
        rows = [
            {"method": "LRC", "accuracy": acc, "n_test": n_test, "causality": 0.5, "control": 0.1},
            {"method": "mean_difference", "accuracy": acc / 2, "n_test": n_test, "causality": 0.2},
        ]
        return RelationEvaluation(name, cat, rows, 10, 8, 4, n_test, 2, faithfulness=0.25)

    text = table_markdown(
        [ev("a", "factual", 1.0, 4), ev("b", "factual", 0.5, 6), ev("c", "bias", 0.8, 2)]
    )
    lines = text.splitlines()
    assert lines[0].startswith("| relation | category | n_test")
    assert "| a | factual | 4 | 2 | 0.25 | 1.00 | 0.50 | 0.50 | 0.20 | 0.10 |" in lines
    factual = next(line for line in lines if line.startswith("| factual |"))
    assert factual.startswith("| factual | 2 | 10 | 0.25 | 0.75 |")  # unweighted mean
    assert any(line.startswith("| all | 3 | 12 |") for line in lines)


# ---------------------------------------------------------------------- SmolLM2
# Relations SmolLM2 knows, by three-shot validation yield: person_native_language 55/80,
# object_superclass 39/64, substance_phase 24/50. Left out: landmark_on_continent (51/80) and
# product_by_company (38/80), whose answers neither the LRC nor mean difference swaps in a
# majority of cases (landmark: at most 0.52 and 0.48 at layers 8 and 15, any strength tried;
# its subjects are multi-word names such as "Pidgeon Island"; product: 0.23 and 0.00), as
# the README reports; word_first_letter (58/80, 18 letters) was not tried. Subject layer 8
# and a swap at every layer with alpha 0.035 were chosen on split seed 0 and confirmed on seed 1 (80 subjects each).
# Measured with this fixture (60 subjects) on two held-out splits, the per-object shuffles of
# 0.1 / the StratifiedShuffleSplit since 2026-12-07 (half of the test subjects differ): LRC
# accuracy 0.75 / 0.82 / 0.67 and 0.70 / 0.88 / 0.58 against 0.35 / 0.53 / 0.33 and 0.55 /
# 0.59 / 0.33 for mean difference; LRC swap 0.55 / 0.94 / 0.83 (mean 0.77) and 0.70 / 0.94 /
# 0.83 (0.82); control <= 0.08 and <= 0.12. One test subject moves a cell by 5-8 points, so
# the thresholds hold what both splits show, not the luckier one.
REAL_RELATIONS = ["person_native_language", "object_superclass", "substance_phase"]
SUBJECT_LAYER = 8
ABOVE_CHANCE = 0.2  # each relation's LRC accuracy over 1 / n_objects: measured >= +0.25
MARGIN_ACC = 0.15  # LRC mean accuracy over mean difference: measured +0.35 and +0.23
MIN_SWAP = 0.5  # each relation: measured >= 0.55
MIN_MEAN_SWAP = 0.7  # measured 0.77 and 0.82
MAX_CONTROL = 0.15  # measured <= 0.08 and <= 0.12


@pytest.fixture(scope="module")
def real_results(smollm2):
    """LRC and the mean-difference baseline on SmolLM2, three-shot, layer 8 -> 29."""
    return [
        evaluate_relation(
            smollm2,
            rel,
            subject_layer=SUBJECT_LAYER,
            object_layer=29,
            rank=50,
            method="randomized",
            max_prompts=60,
            alpha=0.035,
            swap_layers="all",
            baselines=("mean_difference",),
            seed=0,
        )
        for rel in REAL_RELATIONS
    ]


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(2400)  # builds the shared fit (~2 min idle; 15+ min seen under load)
def test_real_lrc_beats_chance_and_mean_difference(real_results):
    table = table_markdown(real_results)
    for ev in real_results:
        assert ev.n_test >= 8, table
        assert ev.row("LRC")["accuracy"] >= 1.0 / ev.n_objects + ABOVE_CHANCE, table
    lrc = np.mean([ev.row("LRC")["accuracy"] for ev in real_results])
    md = np.mean([ev.row("mean_difference")["accuracy"] for ev in real_results])
    assert lrc >= md + MARGIN_ACC, table


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(2400)  # builds the shared fit (~2 min idle; 15+ min seen under load)
def test_real_concept_swap_flips_a_clear_majority_and_control_does_not(real_results):
    table = table_markdown(real_results)
    for ev in real_results:
        row = ev.row("LRC")
        assert row["baseline"] == 0.0, table  # validated prompts: the original answer wins
        assert row["causality"] >= MIN_SWAP, table
        assert row["control"] <= MAX_CONTROL, table
    assert np.mean([ev.row("LRC")["causality"] for ev in real_results]) >= MIN_MEAN_SWAP, table


@pytest.mark.real
@pytest.mark.slow
def test_real_sweep_orders_layers_ranks_and_controls(smollm2, tmp_path):
    """A layer x rank sweep on substance_phase (3 objects, 12 test subjects) orders as the
    science says: layer-8 subject states carry the relation far better than layer 1 (swap
    0.83 at both ranks against 0.42-0.50 on the 0.1 split, 0.08 / 0.67 on the stratified
    one), and each layer's best swap beats its random control (control <= 0.08); a rank-50
    inverse classifies at least as well as a rank-4 one (0.58 -> 0.67 at layer 8, 0.42 ->
    0.58 at layer 1 on the 0.1 split; 0.58 -> 0.58, 0.25 -> 0.50 stratified). One subject
    moves a cell by 8 points. Not asserted: the rank-4 layer-1 swap beating its control
    (0.42-0.50 on the 0.1 split, 0.08 = control on the stratified one: a rank-4 inverse of
    layer-1 states is a weak direction)."""
    res = sweep(
        smollm2,
        "substance_phase",
        subject_layers=[1, 8],
        object_layer=29,
        ranks=[4, 50],
        method="randomized",
        max_prompts=60,
        causality=True,
        alpha=0.035,
    )
    cell = {(r["subject_layer"], r["rank"]): r for r in res.records}
    assert sorted(cell) == [(1, 4), (1, 50), (8, 4), (8, 50)], res.table()
    for r in res.records:
        assert r["n_test"] >= 10, res.table()
    for layer in (1, 8):
        best = max((cell[layer, 4], cell[layer, 50]), key=lambda r: r["causality"])
        assert best["causality"] >= best["control"] + 0.2, res.table()
        assert cell[layer, 50]["accuracy"] >= cell[layer, 4]["accuracy"], res.table()
    for rank in (4, 50):  # layer 8 at least as causal as layer 1 at every rank ...
        assert cell[8, rank]["causality"] >= cell[1, rank]["causality"], res.table()
    swap = {layer: np.mean([cell[layer, r]["causality"] for r in (4, 50)]) for layer in (1, 8)}
    assert swap[8] >= swap[1] + 0.2, res.table()  # ... and far more over ranks (+0.46)
    assert cell[8, 50]["accuracy"] >= 1 / 3 + 0.2, res.table()  # 3 objects: chance 1/3
    ax = res.plot(metric="causality")
    ax.figure.savefig(tmp_path / "sweep.png")
    assert [line.get_label() for line in ax.get_lines()] == ["rank 4", "rank 50"]


# ---------------------------------------------------------------------- causality, built to succeed
def _built_to_succeed(model):
    """Prompts ending in their subject, each labelled with the model's own top-1 next token.

    With ``l_s = l_o`` = the last layer and ``object_aggregation="first"``, the subject state is
    the object state (same site and position), so ``W = I``, ``b = 0`` and the full-rank edit
    ``delta s = o' - o`` makes the last position's final residual the target prompt's: the
    model must then predict the target's object, every time.
    """
    from semhooks.backend.adapter import adapt
    from semhooks.relations.prompts import encode_prompts

    adapter = adapt(model)
    kept = []
    for s in ["France", "Italy", "Spain", "Germany", "Paris", "Rome", "Madrid", "Berlin"]:
        text = f"The capital of {s}"
        enc = encode_prompts(adapter, [RelationPrompt(text, s, "x")], with_answer=False)
        top = int(adapter.forward(enc.batch)[0, enc.object_positions[0][0]].argmax())
        p = RelationPrompt(text, s, adapter.tokenizer.decode([top]).lstrip(" "), "built")
        if encode_prompts(adapter, [p], with_answer=True).answer_ids[0][0] == top:
            kept.append(p)
    assert len({p.object for p in kept}) >= 3
    return kept


def test_hernandez_causality_succeeds_on_a_case_built_to_succeed(tiny_llama):
    from semhooks.relations.lre import LRE

    prompts = _built_to_succeed(tiny_llama)
    lre = LRE(-1, -1, object_aggregation="first", progress=False).fit(tiny_llama, prompts)
    d = lre.weight_.shape[0]
    torch.testing.assert_close(lre.weight_, torch.eye(d))
    full = hernandez_causality(lre, tiny_llama, prompts, rank=d, seed=0)
    assert full.score == 1.0
    assert full.predictions == full.targets
    assert all(t != p.object for t, p in zip(full.targets, prompts, strict=True))
    assert full.control_score < full.score
    # a rank sweep of the same edit is ordered: the full-rank inverse beats a rank-4 one
    low = hernandez_causality(lre, tiny_llama, prompts, rank=4, seed=0)
    assert low.targets == full.targets and low.score < full.score


def test_hernandez_causality_equals_a_hand_written_hook(tiny_llama, toy_lrc):
    """The Steer-based edit and its random control give what a raw hook gives."""
    import random

    from semhooks.backend.adapter import adapt
    from semhooks.relations.prompts import encode_prompts, prompt_states

    lre, prompts, rank, seed = toy_lrc.lre_, toy_prompts(), 8, 3
    got = hernandez_causality(lre, tiny_llama, prompts, rank=rank, seed=seed, batch_size=3)
    adapter = adapt(tiny_llama)
    rng = random.Random(seed)
    pairs = [
        rng.choice([j for j, q in enumerate(prompts) if q.object != p.object]) for p in prompts
    ]
    st = prompt_states(adapter, prompts, lre.object_layer_, aggregation=lre.object_aggregation)
    o = st.object[lre.object_layer_]
    deltas = (o[pairs] - o) @ lre.invert(rank).T
    rand = torch.randn(deltas.shape, generator=torch.Generator().manual_seed(seed))
    rand = rand / rand.norm(dim=-1, keepdim=True) * deltas.norm(dim=-1, keepdim=True)
    enc = encode_prompts(adapter, prompts, with_answer=False)
    answer = encode_prompts(adapter, prompts, with_answer=True).answer_ids
    rows, last = torch.arange(len(prompts)), torch.tensor([p[0] for p in enc.object_positions])
    hits = {}
    for name, d in (("edit", deltas), ("control", rand)):

        def hook(x, hook=None, d=d):
            x = x.clone()
            x[rows, enc.subject_positions] += d.to(x.dtype)
            return x

        name_l = adapter.hook_name("resid_post", lre.subject_layer_)
        top = adapter.forward(enc.batch, [(name_l, hook)])[rows, last].argmax(-1)
        hits[name] = [int(t) == answer[j][0] for t, j in zip(top, pairs, strict=True)]
    assert got.score == np.mean(hits["edit"])
    assert got.control_score == np.mean(hits["control"])


def test_mean_difference_baseline_is_the_mean_difference_estimator():
    from semhooks import MeanDifference

    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 8, generator=g)
    y = [str(i % 3) for i in range(30)]
    V = fit_baselines(X, y, ["mean_difference"])["mean_difference"].vectors
    for i, c in enumerate(["0", "1", "2"]):
        ref = X[[a == c for a in y]].mean(0) - X[[a != c for a in y]].mean(0)
        torch.testing.assert_close(V[i], ref / ref.norm(), atol=1e-6, rtol=1e-5)
        est = MeanDifference(pos_label=c, normalize=True).fit(X, np.asarray(y))
        torch.testing.assert_close(V[i], est.direction_)


# ---------------------------------------------------------------------- determinism
def _toy_relation():
    from semhooks.relations.prompts import RelationPrompt

    subjects = ["France", "Italy", "Spain", "Germany", "Paris", "Rome"]
    return [
        RelationPrompt(f"The capital of {s} is", s, o, "toy")
        for s, o in zip(subjects, ["Cat", "Dog"] * 3, strict=True)
    ]


def test_same_seed_gives_bit_identical_lres_and_concepts(tiny_llama, twice):
    from semhooks.relations.lrc import LRC
    from semhooks.relations.lre import LRE

    prompts = _toy_relation()
    exact = twice(lambda: LRE(0, 2, progress=False).fit(tiny_llama, prompts))
    assert torch.equal(exact[0].weight_, exact[1].weight_)
    assert torch.equal(exact[0].bias_, exact[1].bias_)
    sketch = twice(
        lambda: LRE(0, 2, method="randomized", rank=6, seed=4, progress=False).fit(
            tiny_llama, prompts
        )
    )
    assert torch.equal(sketch[0].weight_, sketch[1].weight_)
    other = LRE(0, 2, method="randomized", rank=6, seed=5, progress=False).fit(tiny_llama, prompts)
    assert not torch.equal(other.weight_, sketch[0].weight_)  # the seed is used
    lrcs = twice(
        lambda: LRC(0, 2, rank=8, n_lre_prompts=4, seed=1, progress=False).fit(tiny_llama, prompts)
    )
    assert lrcs[0].classes_ == lrcs[1].classes_
    assert torch.equal(torch.as_tensor(lrcs[0].vectors_), torch.as_tensor(lrcs[1].vectors_))
