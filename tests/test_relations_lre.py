"""Relation prompts, validation, splits, Jacobians and LREs (offline, tiny models).

Oracles: a plain ``torch.autograd.functional.jacobian`` of a full forward pass; a
hook-defined linear map whose matrix is known; an LRE fitted on one prompt reproduces that
prompt's object state.
"""

from __future__ import annotations

import math

import pytest
import torch

from semhooks import adapt
from semhooks.extraction.spans import SpanNotFoundError
from semhooks.io.artifacts import ArtifactError
from semhooks.relations import load
from semhooks.relations.data import UnknownRelationError
from semhooks.relations.jacobian import (
    SubjectObjectMap,
    mean_jacobian,
    principal_angles,
    prompt_jacobian,
    randomized_jacobian,
    reference_jacobian,
)
from semhooks.relations.lre import LRE, NotFittedError
from semhooks.relations.prompts import (
    NoValidPromptsError,
    RelationPrompt,
    build_prompts,
    encode_prompts,
    prompt_states,
    validate,
)
from semhooks.testing import tiny_model

CAPITALS = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
]


def capital_prompts(n_shot: int = 0) -> list[RelationPrompt]:
    out = []
    for i, (s, o) in enumerate(CAPITALS):
        lines = [f"The capital of {t} is {a}." for t, a in CAPITALS[:i][-n_shot:]] if n_shot else []
        text = "\n".join([*lines, f"The capital of {s} is"])
        out.append(RelationPrompt(text, s, o, "toy_capital"))
    return out


# ---------------------------------------------------------------------- prompts
def test_build_prompts_k_shot_uses_other_subjects_and_is_seeded():
    rel = load("country_capital_city")
    prompts = build_prompts(rel, 3, seed=1)
    assert len(prompts) == len(rel.samples)
    for p in prompts:
        lines = p.text.split("\n")
        assert len(lines) == 4 and lines[-1] == rel.prompt_templates[0].format(p.subject)
        assert len(p.examples) == 3 and p.subject not in [e.subject for e in p.examples]
        for line, ex in zip(lines[:-1], p.examples, strict=True):
            assert line == rel.prompt_templates[0].format(ex.subject) + " " + ex.object
    again = build_prompts(rel, 3, seed=1)
    assert [p.text for p in again] == [p.text for p in prompts]
    assert [p.text for p in build_prompts(rel, 3, seed=2)] != [p.text for p in prompts]
    # a prompt does not depend on which other subjects are requested
    some = build_prompts(rel, 3, seed=1, subjects=[prompts[5].subject])
    assert some[0].text == prompts[5].text
    zs = build_prompts(rel, 0, template="zs")
    assert zs[0].text == rel.prompt_templates_zs[0].format(zs[0].subject)


def test_subject_and_object_positions(tiny_gpt2):
    # the subject also occurs in the in-context example: the last occurrence counts
    p = RelationPrompt(
        "The capital of Spain is Madrid.\nThe capital of Spain is", "Spain", "Madrid"
    )
    enc = encode_prompts(tiny_gpt2, [p])
    b = enc.batch
    s = int(enc.subject_positions[0])
    start, end = b.offsets[0, s].tolist()
    # the last token of the second "Spain" (which the tiny tokenizer may split)
    assert end == p.text.rindex("Spain") + len("Spain")
    assert "Spain".endswith(b.texts[0][start:end].strip())
    # the tokens after the object positions spell " Madrid"
    ids = [int(b.input_ids[0, q + 1]) for q in enc.object_positions[0]]
    assert ids == enc.answer_ids[0]
    assert tiny_gpt2.tokenizer.decode(ids) == " Madrid"
    assert len(ids) > 1  # a multi-token answer for the tiny tokenizer
    # the first object position is the last prompt token
    first = enc.object_positions[0][0]
    assert int(b.offsets[0, first, 1]) == len(p.text)
    no_answer = encode_prompts(tiny_gpt2, [p], with_answer=False)
    assert no_answer.object_positions[0] == [first]


def test_validate_matches_greedy_argmax_and_caches(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMHOOKS_CACHE", str(tmp_path))
    adapter = adapt(tiny_llama)
    prompts = capital_prompts(1)
    # ask for the model's own greedy continuation as the object: it must pass
    batch = adapter.tokenize([p.text for p in prompts])
    logits = adapter.forward(batch)
    assert logits is not None
    last = batch.attention_mask.sum(-1) - 1
    top = logits[torch.arange(len(prompts)), last].argmax(-1)
    own = []
    for p, t in zip(prompts, top, strict=True):
        word = tiny_llama.tokenizer.decode([int(t)])
        if word.startswith(" ") and word.strip():
            own.append(RelationPrompt(p.text, p.subject, word.strip(), p.relation))
    report = validate(tiny_llama, prompts + own, on_empty="return", progress=False)
    assert report.correct[len(prompts) :] == [True] * len(own)
    assert report.from_cache == 0
    again = validate(tiny_llama, prompts + own, on_empty="return", progress=False)
    assert again.from_cache == len(prompts) + len(own) and again.correct == report.correct
    assert list((tmp_path / "validation").rglob("*.json"))
    assert report.by_relation["toy_capital"][1] == len(prompts) + len(own)


def _full_forward_verdicts(model, prompts):
    """validate's verdicts and top-1 ids by hand, from the full logits of one forward."""
    adapter = adapt(model)
    enc = encode_prompts(adapter, prompts, with_answer=True)
    logits = adapter.forward(enc.batch)
    assert logits is not None
    preds = [logits[r, pos].argmax(-1).tolist() for r, pos in enumerate(enc.object_positions)]
    return [p == a for p, a in zip(preds, enc.answer_ids, strict=True)], [p[0] for p in preds]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_validate_and_top1_equal_the_full_forward(fixture, request, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMHOOKS_CACHE", str(tmp_path))
    model = request.getfixturevalue(fixture)
    prompts = capital_prompts(1)
    correct, top = _full_forward_verdicts(model, prompts)
    report = validate(model, prompts, on_empty="return", cache=False, progress=False)
    assert report.correct == correct and report.top1 == top
    states = prompt_states(model, prompts, [0], aggregation="first", top1=True, batch_size=3)
    assert states.top1 is not None and states.top1.tolist() == top


@pytest.mark.real
def test_real_validate_equals_the_full_forward(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMHOOKS_CACHE", str(tmp_path))
    prompts = capital_prompts(2)
    correct, top = _full_forward_verdicts(smollm2, prompts)
    report = validate(smollm2, prompts, on_empty="return", cache=False, progress=False)
    assert report.correct == correct and report.top1 == top
    assert sum(correct) > 0  # the oracle is not vacuous: SmolLM2 knows some capitals


def test_no_prompt_survives_validation_raises(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMHOOKS_CACHE", str(tmp_path))
    bad = [RelationPrompt("The capital of France is", "France", "Cat, Dog, Owl, Bee")]
    with pytest.raises(NoValidPromptsError, match="answers none"):
        validate(tiny_llama, bad, progress=False)


# ---------------------------------------------------------------------- Jacobians
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("aggregation", ["mean", "first"])
def test_exact_jacobian_equals_full_forward_reference(fixture, aggregation, request):
    """The fast path (prefix KV cache, stop at the object layer, batched VJPs) equals
    torch.autograd.functional.jacobian of the full forward pass (every layer, unembedding)."""
    model = request.getfixturevalue(fixture)
    prompt = capital_prompts(2)[2]
    J, s, o = prompt_jacobian(model, prompt, 0, 2, aggregation=aggregation)
    J_ref, s_ref, o_ref = reference_jacobian(model, prompt, 0, 2, aggregation=aggregation)
    assert J_ref.norm() > 0
    torch.testing.assert_close(J, J_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    J_full, _, _ = prompt_jacobian(model, prompt, 0, 2, aggregation=aggregation, prefix_cache=False)
    torch.testing.assert_close(J_full, J_ref, atol=1e-5, rtol=1e-4)


def test_exact_path_runs_balanced_chunks_of_cotangents_with_the_same_result(tiny_gpt2, monkeypatch):
    """By default the d cotangents go in balanced chunks of at most CHUNK (one chunk of all
    d measured 20-25% slower on SmolLM2); chunking changes no number."""
    import semhooks.relations.jacobian as jac

    prompts = capital_prompts(2)[2:4]
    whole = mean_jacobian(tiny_gpt2, prompts, 0, 2, chunk_size=10**6, progress=False)
    sizes = []
    real = torch.autograd.grad

    def grad(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            sizes.append(args[2].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(jac, "CHUNK", 24)
    monkeypatch.setattr(torch.autograd, "grad", grad)
    chunked = mean_jacobian(tiny_gpt2, prompts, 0, 2, progress=False)
    d = tiny_gpt2.cfg.d_model
    per_prompt = math.ceil(d / 24)
    assert d > 24 and len(sizes) == len(prompts) * per_prompt and sum(sizes) == len(prompts) * d
    assert max(sizes) <= 24 and max(sizes) - min(sizes) <= per_prompt
    torch.testing.assert_close(chunked.weight, whole.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked.bias, whole.bias, atol=1e-6, rtol=1e-5)


@pytest.mark.backend
def test_prefix_cache_is_used_and_exact_on_both_backends(any_backend_llama):
    """Bridge: Hugging Face's cache (whatever transformers names the argument);
    HookedTransformer: its own KV cache. Either way the Jacobian equals the full-pass one."""
    model = any_backend_llama
    fmap = SubjectObjectMap(model, 0, 2)
    prep = fmap.prepare(capital_prompts(2)[2:3])[0]
    assert prep.cache is not None and adapt(model).kv_cache_length(prep.cache) == prep.subject_pos
    res = mean_jacobian(model, capital_prompts(2)[2:3], 0, 2, progress=False)
    assert res.prefix_cache
    full = mean_jacobian(model, capital_prompts(2)[2:3], 0, 2, progress=False, prefix_cache=False)
    assert not full.prefix_cache
    torch.testing.assert_close(res.weight, full.weight, atol=1e-5, rtol=1e-4)


def test_a_cache_that_differs_from_the_full_forward_falls_back_loudly(monkeypatch):
    from semhooks.errors import FallbackWarning

    model = tiny_model("llama")
    adapter = adapt(model)
    real = adapter.forward_on_cache

    def corrupt(ids, cache, fwd_hooks=None):  # a cache that silently drops the prefix
        return (
            real(ids, adapter.new_kv_cache(), fwd_hooks)
            if cache.get_seq_length()
            else real(ids, cache, fwd_hooks)
        )

    monkeypatch.setattr(adapter, "forward_on_cache", corrupt)
    with pytest.warns(FallbackWarning, match="differs from the full forward"):
        res = mean_jacobian(model, capital_prompts(2)[2:3], 0, 2, progress=False)
    assert not res.prefix_cache and adapter.prefix_cache_verified is False
    assert adapter.prefix_cache_error is not None and adapter.prefix_cache_error > 1e-4


def test_lre_on_one_prompt_reproduces_its_object_state(tiny_llama):
    prompt = capital_prompts(1)[1]
    lre = LRE(0, 2, progress=False).fit(tiny_llama, [prompt])
    st = prompt_states(tiny_llama, [prompt], [0, 2])
    torch.testing.assert_close(lre.subject_states_[0], st.subject[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(lre.object_states_[0], st.object[2][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(lre.predict(st.subject[0])[0], st.object[2][0], atol=1e-4, rtol=0)


class LinearToy:
    """Hooks that make the object state an exact affine map of the subject state.

    The forward keeps running the tiny model, but ``blocks.{l_o}.hook_resid_post`` is
    overwritten at every position with ``A s + c``, where ``s`` is read where the LRE writes
    it (``blocks.{l_s + 1}.hook_resid_pre`` at the subject position, i.e. after the LRE's
    replacement at ``blocks.{l_s}.hook_resid_post``). So ``do/ds = A`` and the LRE must
    recover ``W = A`` and ``b = c``. This checks the Jacobian/LRE machinery (hook order,
    positions with and without the prefix cache, averaging, bias), not a model's linearity.
    The prompts share their suffix length ``n_suffix`` (subject token to last prompt token),
    which locates the subject in both the cached (suffix-only) and the full forward.
    """

    def __init__(self, d: int, rank: int | None, l_s: int, l_o: int, n_suffix: int):
        g = torch.Generator().manual_seed(0)
        if rank is None:
            self.A = torch.randn(d, d, generator=g) / d**0.5
        else:
            self.A = torch.randn(d, rank, generator=g) @ torch.randn(rank, d, generator=g) / d
        self.c = torch.randn(d, generator=g)
        self.l_s, self.l_o, self.n_suffix = l_s, l_o, n_suffix
        self.s: torch.Tensor | None = None

    def read(self, x, hook):
        self.s = x[:, x.shape[1] - self.n_suffix]

    def write(self, x, hook):
        assert self.s is not None
        o = self.s @ self.A.T + self.c
        return o[:, None, :].expand_as(x).clone()

    def hooks(self):
        return [
            (f"blocks.{self.l_s + 1}.hook_resid_pre", self.read),
            (f"blocks.{self.l_o}.hook_resid_post", self.write),
        ]


def _same_suffix_prompts(model) -> tuple[list[RelationPrompt], int]:
    prompts = capital_prompts(1)
    enc = encode_prompts(model, prompts, with_answer=False)
    n_suffix = {
        enc.object_positions[i][0] - int(enc.subject_positions[i]) + 1 for i in range(len(prompts))
    }
    assert len(n_suffix) == 1, "test prompts must share their suffix length"
    return prompts, n_suffix.pop()


@pytest.mark.parametrize("prefix_cache", ["auto", False])
def test_lre_recovers_the_matrix_of_a_linear_toy(tiny_llama, prefix_cache):
    prompts, n_suffix = _same_suffix_prompts(tiny_llama)
    toy = LinearToy(64, None, 0, 2, n_suffix)
    with tiny_llama.hooks(fwd_hooks=toy.hooks()):
        lre = LRE(0, 2, object_aggregation="first", prefix_cache=prefix_cache, progress=False)
        lre.fit(tiny_llama, prompts)
        J_ref, _, _ = reference_jacobian(tiny_llama, prompts[0], 0, 2, aggregation="first")
    torch.testing.assert_close(lre.weight_, toy.A, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lre.bias_, toy.c, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(J_ref, toy.A, atol=1e-5, rtol=1e-4)


def test_randomized_recovers_a_low_rank_toy_and_matches_exact(tiny_llama):
    prompts, n_suffix = _same_suffix_prompts(tiny_llama)
    toy = LinearToy(64, 5, 0, 2, n_suffix)
    with tiny_llama.hooks(fwd_hooks=toy.hooks()):
        low = randomized_jacobian(
            tiny_llama, prompts, 0, 2, rank=5, oversampling=3, aggregation="first", progress=False
        )
        exact = mean_jacobian(tiny_llama, prompts, 0, 2, aggregation="first", progress=False)
    torch.testing.assert_close(low.weight.float(), toy.A, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(low.bias.float(), toy.c, atol=1e-4, rtol=1e-4)
    U, _, _ = torch.linalg.svd(exact.weight)
    assert principal_angles(U[:, :5], low.U[:, :5]).max() < 1e-3


def test_randomized_at_full_rank_equals_exact_on_a_real_tiny_model(tiny_gpt2):
    prompts = capital_prompts(1)[:2]
    exact = mean_jacobian(tiny_gpt2, prompts, 0, 2, progress=False)
    full = randomized_jacobian(tiny_gpt2, prompts, 0, 2, rank=64, oversampling=0, progress=False)
    torch.testing.assert_close(full.weight, exact.weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full.bias, exact.bias, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full.subject_states, exact.subject_states)


@pytest.mark.parametrize("n_power_iter", [0, 1])
def test_randomized_builds_each_suffix_graph_once_and_equals_the_sketch_of_exact(
    tiny_gpt2, monkeypatch, n_power_iter
):
    """Every pass differentiates the same kept forward (one graph per prompt, however many
    passes), and the result is Halko et al.'s sketch of the exact mean Jacobian, same Omega."""
    from semhooks.relations.jacobian import SubjectObjectMap

    prompts = capital_prompts(1)[:3]
    W = mean_jacobian(tiny_gpt2, prompts, 0, 2, progress=False).weight
    built = []
    real = SubjectObjectMap.graph
    monkeypatch.setattr(SubjectObjectMap, "graph", lambda self, p: built.append(p) or real(self, p))
    low = randomized_jacobian(
        tiny_gpt2, prompts, 0, 2, rank=6, oversampling=2, n_power_iter=n_power_iter, seed=0,
        progress=False,
    )  # fmt: skip
    assert len(built) == len(prompts)

    def orth(a):
        return torch.linalg.qr(a)[0]

    omega = torch.randn(W.shape[0], 8, generator=torch.Generator().manual_seed(0), dtype=W.dtype)
    Y = W @ omega
    for _ in range(n_power_iter):
        Y = W @ orth(W.T @ orth(Y))
    Q = orth(Y)
    torch.testing.assert_close(low.weight, Q @ (Q.T @ W), atol=1e-5, rtol=1e-4)


def test_principal_angles_known_answer():
    e = torch.eye(4)
    angles = principal_angles(e[:, :2], torch.stack([e[:, 0], (e[:, 1] + e[:, 2]) / 2**0.5], 1))
    torch.testing.assert_close(angles, torch.tensor([0.0, torch.pi / 4], dtype=torch.float64))


# ---------------------------------------------------------------------- LRE API
def test_lre_invert_decode_save_load(tiny_llama, tmp_path):
    prompts = capital_prompts(1)
    lre = LRE(0, 2, beta=2.0, progress=False).fit(tiny_llama, prompts)
    W = lre.weight_.double()
    for r in (3, 64):
        W_pinv = lre.invert(r).double()
        U, S, Vh = torch.linalg.svd(W)
        torch.testing.assert_close(
            W_pinv, Vh[:r].T @ torch.diag(1 / S[:r]) @ U[:, :r].T, atol=1e-3, rtol=1e-3
        )
    torch.testing.assert_close(
        lre.invert(64).double() @ W, torch.eye(64, dtype=torch.float64), atol=1e-3, rtol=0
    )
    s = lre.subject_states_
    torch.testing.assert_close(lre.predict(s), 2.0 * s @ lre.weight_.T + lre.bias_)
    tokens = lre.decode(s, k=3, model=tiny_llama)
    assert len(tokens) == len(prompts) and all(len(t) == 3 for t in tokens)
    path = lre.save(tmp_path / "capital.lre")
    back = LRE.load(path, tiny_llama)
    torch.testing.assert_close(back.weight_, lre.weight_)
    assert back.beta == 2.0 and back.provenance_["subject_layer"] == 0
    assert back.decode(s, k=3, model=tiny_llama) == tokens
    with pytest.raises(ValueError, match="provenance, not the model"):
        back.decode(s, k=3)
    narrow = tiny_model("llama", d_model=32)
    with pytest.raises(ArtifactError, match="d_model"):
        LRE.load(path, narrow)


def test_lre_bad_inputs(tiny_llama):
    with pytest.raises(NotFittedError, match="fit"):
        LRE(0, 2).predict(torch.zeros(2, 64))
    with pytest.raises(SpanNotFoundError, match="does not occur"):
        LRE(0, 2, progress=False).fit(tiny_llama, [RelationPrompt("The capital is", "Rome", "x")])
    with pytest.raises(ValueError, match="no prompts"):
        LRE(0, 2).fit(tiny_llama, [])
    with pytest.raises(ValueError, match="rank 65 is out of range"):
        LRE(0, 2, method="randomized", rank=65).fit(tiny_llama, capital_prompts())
    with pytest.raises(ValueError, match="needs rank"):
        LRE(0, 2, method="randomized").fit(tiny_llama, capital_prompts())
    with pytest.raises(ValueError, match="must not come before"):
        LRE(2, 0, progress=False).fit(tiny_llama, capital_prompts())
    with pytest.raises(ValueError, match="out of range"):
        LRE(0, 7, progress=False).fit(tiny_llama, capital_prompts())
    lre = LRE(0, 2, progress=False).fit(tiny_llama, capital_prompts())
    with pytest.raises(ValueError, match="rank must be"):
        lre.invert(65)
    with pytest.raises(UnknownRelationError, match="unknown relation"):
        build_prompts("country_capitol_cty", 3)
    with pytest.raises(ValueError, match="too few"):
        build_prompts("name_gender", 40)


def test_lre_refuses_an_encoder(tiny_bert):
    with pytest.raises(ValueError, match="encoder"):
        LRE(0, 1).fit(tiny_bert, [RelationPrompt("the capital of france is", "france", "paris")])
