"""Interventions: hand-written oracles, padding invariance, controls, hook hygiene."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import semhooks as sh
from semhooks import adapt, extract_states
from semhooks.backend.adapter import active_hook_count
from semhooks.interventions import (
    Ablate,
    Clamp,
    Intervention,
    InterventionError,
    Patch,
    Placebo,
    Steer,
    Swap,
    batch_context,
    intervene,
    placebo,
    random_control,
    resolve_positions,
)

TEXTS = ["The capital of France is Paris.", "I loved this movie", "The bank of the river"]


_HOOKED: dict[str, object] = {}


@pytest.fixture(params=["bridge", "hooked"])
def llama(request, tiny_llama):
    """The tiny Llama on both backends: the bridge, and a HookedTransformer (TL 3.x) with the
    same weights (skipped where TransformerLens 3.x is not installed; see .venv-tl3)."""
    if request.param == "bridge":
        return tiny_llama
    from semhooks.backend.hooked import hooked_transformer_available, hooked_transformer_from_hf

    if not hooked_transformer_available():
        pytest.skip("no HookedTransformer in this TransformerLens (run in the TL 3.x venv)")
    if "model" not in _HOOKED:
        _HOOKED["model"] = hooked_transformer_from_hf(
            tiny_llama.original_model, tiny_llama.tokenizer
        )
    return _HOOKED["model"]


def _direction(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(adapt(model).d_model, generator=g)


def _cache(model, batch):
    with torch.inference_mode():
        logits, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    return logits, cache


def _rest_of_model(model, resid, layer, batch):
    """Run blocks layer+1.. on a hand-edited residual ``resid`` (the resid_post of ``layer``).

    With ``start_at_layer`` where the backend has it (HookedTransformer, TL 4 bridge); the
    TL 3 bridge lacks it, so there a plain hook writes the hand-made tensor in its place.
    """
    with torch.inference_mode():
        try:
            return model(resid, start_at_layer=layer + 1, attention_mask=batch.attention_mask)
        except NotImplementedError:
            name = adapt(model).hook_name("resid_post", layer)
            return model.run_with_hooks(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                fwd_hooks=[(name, lambda x, hook: resid.to(x.dtype))],
            )


# ---------------------------------------------------------------------- oracles
@pytest.mark.parametrize("side", ["left", "right"])
def test_steer_equals_adding_alpha_v_by_hand(llama, side):
    a = adapt(llama)
    batch = a.tokenize(TEXTS, padding_side=side)
    v = _direction(llama)
    _, cache = _cache(llama, batch)
    resid = cache["blocks.1.hook_resid_post"].clone()
    expected = _rest_of_model(llama, resid + 3.0 * v, 1, batch)
    steer = Steer(v, 3.0, layers=1)
    with intervene(llama, steer):
        got = a.forward(batch)
    keep = batch.attention_mask.bool()  # "all" edits attended positions only
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)
    assert steer.n_fired == 1 and steer.n_edited == int(keep.sum())


def test_steer_last_position_by_hand_with_right_padding(llama):
    a = adapt(llama)
    batch = a.tokenize(TEXTS, padding_side="right")
    v = _direction(llama, 1)
    _, cache = _cache(llama, batch)
    resid = cache["blocks.0.hook_resid_post"].clone()
    last = batch.attention_mask.sum(1) - 1
    resid[torch.arange(len(TEXTS)), last] += 2.0 * v
    expected = _rest_of_model(llama, resid, 0, batch)
    steer = Steer(v, 2.0, layers=0, positions="last")
    with intervene(llama, steer):
        got = a.forward(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert steer.n_edited == len(TEXTS)


@pytest.mark.parametrize("scale", ["norm", "projection"])
def test_swap_equals_formula_by_hand(llama, scale):
    a = adapt(llama)
    batch = a.tokenize(TEXTS, padding_side="left")
    vf, vt = _direction(llama, 2), _direction(llama, 3)
    uf, ut = vf / vf.norm(), vt / vt.norm()
    _, cache = _cache(llama, batch)
    h = cache["blocks.1.hook_resid_post"].clone()
    size = h.norm(dim=-1, keepdim=True) if scale == "norm" else (h @ uf)[..., None]
    expected = _rest_of_model(llama, h + 0.3 * size * (ut - uf), 1, batch)
    swap = Swap(vf, vt, 0.3, scale=scale, layers=1)
    with intervene(llama, swap):
        got = a.forward(batch)
    keep = batch.attention_mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_swap_projection_moves_component_onto_target():
    u_from = torch.tensor([1.0, 0.0, 0.0])
    u_to = torch.tensor([0.0, 1.0, 0.0])
    h = torch.tensor([[[2.0, 0.5, 1.0]]])
    out = Swap(u_from * 5, u_to * 7, 1.0, scale="projection")(h, None)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 2.5, 1.0]]]))


def test_ablate_leaves_no_projection_at_the_hooked_layer(llama):
    a = adapt(llama)
    batch = a.tokenize(TEXTS, padding_side="left")
    v = _direction(llama, 4) * 9.0
    seen = {}

    def grab(x, hook):
        seen["x"] = x.clone()

    name = a.hook_name("resid_post", 2)
    with intervene(llama, Ablate(v, layers=2), (name, grab)):
        a.forward(batch)
    u = v / v.norm()
    before = _cache(llama, batch)[1]["blocks.2.hook_resid_post"] @ u
    assert before.abs().max() > 0.01
    keep = batch.attention_mask.bool()
    assert (seen["x"] @ u)[keep].abs().max() < 1e-7


def test_clamp_sets_the_component(llama):
    a = adapt(llama)
    batch = a.tokenize(TEXTS)
    v = _direction(llama, 5)
    seen = {}
    name = a.hook_name("resid_mid", 1)
    with intervene(
        llama,
        Clamp(v, 2.5, layers=1, site="resid_mid", positions="last"),
        (name, lambda x, hook: seen.setdefault("x", x.clone())),
    ):
        a.forward(batch)
    proj = seen["x"] @ (v / v.norm())
    last = batch.attention_mask.sum(1) - 1
    torch.testing.assert_close(proj[torch.arange(3), last], torch.full((3,), 2.5))
    per_row = Clamp(v, torch.tensor([1.0, -1.0]))
    out = per_row(torch.randn(2, 4, v.numel()), None)
    torch.testing.assert_close(out @ (v / v.norm()), torch.tensor([[1.0] * 4, [-1.0] * 4]))


def test_patch_with_own_activations_changes_nothing(llama):
    a = adapt(llama)
    batch = a.tokenize(TEXTS, padding_side="left")
    logits, cache = _cache(llama, batch)
    patch = Patch(cache, alpha=1.0)
    with intervene(llama, patch):
        got = a.forward(batch)
    torch.testing.assert_close(got, logits)
    assert patch.n_fired == adapt(llama).n_layers


def test_patch_from_another_run_reproduces_it(llama):
    """Patching every position at the embedding with run B's turns run A into run B."""
    a = adapt(llama)
    batch_a = a.tokenize(["The capital of France is", "I hated this film and"])
    g = torch.Generator().manual_seed(0)
    ids_b = torch.randint(5, a.d_vocab, batch_a.input_ids.shape, generator=g)
    batch_b = dataclasses.replace(batch_a, input_ids=ids_b)
    logits_b, cache_b = _cache(llama, batch_b)
    patch = Patch(cache_b, site="embed")
    with intervene(llama, patch):
        got = a.forward(batch_a)
    keep = batch_a.attention_mask.bool()
    torch.testing.assert_close(got[keep], logits_b[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_patch_token_level_states_round_trip(llama, side):
    a = adapt(llama)
    states = extract_states(llama, TEXTS, tokens="all", pool=None, progress=False)
    batch = a.tokenize(TEXTS, padding_side=side)
    base = a.forward(batch)
    patch = Patch(states)
    with intervene(llama, patch):
        got = a.forward(batch)
    torch.testing.assert_close(got, base, atol=1e-5, rtol=1e-5)
    assert patch.n_edited == adapt(llama).n_layers * states.states.shape[1]


def test_patch_pooled_states_at_last_token_equals_hand_edit(llama):
    a = adapt(llama)
    donor = extract_states(llama, ["I hated it", "Rome is", "A dog"], layers=[1])
    batch = a.tokenize(TEXTS, padding_side="left")
    _, cache = _cache(llama, batch)
    resid = cache["blocks.1.hook_resid_post"].clone()
    resid[:, -1] = donor.layer(1)
    expected = _rest_of_model(llama, resid, 1, batch)
    with intervene(llama, Patch(donor, positions="last")):
        got = a.forward(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- batching
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_one_by_one_with_spans_and_row_directions(llama, side):
    from semhooks import find_span

    a = adapt(llama)
    words = ["France", "movie", "bank"]
    dirs = torch.stack([_direction(llama, s) for s in range(3)])
    batch = a.tokenize(TEXTS, padding_side=side)
    spans = [find_span(batch, w, row=i) for i, w in enumerate(words)]
    ivs = [
        Steer(dirs, 1.5, layers=[0, 2], positions=spans),
        Swap(dirs, dirs.roll(1, 0), 0.2, layers="all", positions="last"),
        Ablate(dirs.roll(2, 0), layers=1, positions="all"),
    ]
    with intervene(llama, *ivs):
        batched = a.forward(batch)
    for i, text in enumerate(TEXTS):
        one = a.tokenize([text])
        span = find_span(one, words[i])
        ivs1 = [
            Steer(dirs[i], 1.5, layers=[0, 2], positions=[span]),
            Swap(dirs[i], dirs.roll(1, 0)[i], 0.2, layers="all", positions="last"),
            Ablate(dirs.roll(2, 0)[i], layers=1),
        ]
        with intervene(llama, *ivs1):
            single = a.forward(one)[0]
        keep = batch.attention_mask[i].bool()
        torch.testing.assert_close(batched[i, keep], single, atol=2e-5, rtol=2e-5)


def test_extract_states_under_steering_shifts_states_exactly(llama):
    v = _direction(llama, 7)
    plain = extract_states(llama, TEXTS, layers=[1], tokens="all", pool="mean")
    with intervene(llama, Steer(v, 0.5, layers=1)):
        steered = extract_states(llama, TEXTS, layers=[1], tokens="all", pool="mean")
    torch.testing.assert_close(steered.layer(1) - plain.layer(1), (0.5 * v).expand(3, -1))


def test_positions_resolution():
    act = torch.zeros(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    from semhooks.interventions import BatchInfo

    info = BatchInfo(mask, prompt_length=3)
    last = resolve_positions("last", act, info)
    assert last.nonzero().tolist() == [[0, 2], [1, 4]]
    # Nobody said where the padding is: "last" refuses rather than edit a padded column.
    with pytest.raises(InterventionError, match="attention mask this hook cannot see"):
        resolve_positions("last", act)
    unpadded = BatchInfo(None, mask_known=True)
    assert resolve_positions("last", act, unpadded).nonzero().tolist() == [[0, 4], [1, 4]]
    assert resolve_positions("last", act[:1]).nonzero().tolist() == [[0, 4]]
    assert resolve_positions("all", act) is None
    assert resolve_positions("all", act, BatchInfo(torch.ones(2, 5))).all()
    assert resolve_positions("generated_only", act, BatchInfo(None, 5)).sum() == 0
    gen = resolve_positions("generated_only", act, info)
    assert gen.nonzero().tolist() == [[1, 3], [1, 4]]
    prompt = resolve_positions("prompt_only", act, info)
    assert prompt.nonzero().tolist() == [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2]]
    assert resolve_positions([[0], [-1, 2]], act).nonzero().tolist() == [[0, 0], [1, 2], [1, 4]]
    assert resolve_positions(1, act).nonzero().tolist() == [[0, 1], [1, 1]]
    with pytest.raises(InterventionError, match="prompt length"):
        resolve_positions("generated_only", act, BatchInfo())
    with pytest.raises(InterventionError, match="out of range"):
        resolve_positions([7], act)
    with pytest.raises(InterventionError, match="3 per-row lists"):
        resolve_positions([[0], [1], [2]], act)


def test_batch_context_gives_mask_to_bare_run_with_hooks(llama):
    a = adapt(llama)
    batch = a.tokenize(TEXTS, padding_side="right")
    v = _direction(llama)
    steer = Steer(v, 1.0, positions="last")
    name = a.hook_name("resid_post", 0)
    with batch_context(attention_mask=batch.attention_mask), torch.inference_mode():
        got = llama.run_with_hooks(
            batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=[(name, steer)]
        )
    with intervene(llama, Steer(v, 1.0, layers=0, positions="last")):
        expected = a.forward(batch)
    torch.testing.assert_close(got, expected)


def test_last_position_in_a_bare_padded_run_refuses_or_reads_the_mask(llama):
    """TransformerLens pads on the right and passes no mask: a bare run_with_hooks with
    positions="last" used to steer the padding column of the shorter rows."""
    a = adapt(llama)
    batch = a.tokenize(TEXTS, padding_side="right")
    assert not bool(batch.attention_mask.all())
    v = _direction(llama)
    name = a.hook_name("resid_post", 0)
    with pytest.raises(InterventionError, match="last column is padding"):
        with torch.inference_mode():
            llama.run_with_hooks(
                batch.input_ids, fwd_hooks=[(name, Steer(v, 1.0, positions="last"))]
            )
    # Inside intervene, the mask passed to the forward is read: each row's real last token.
    with intervene(llama, Steer(v, 1.0, layers=0, positions="last")):
        steered = a.forward(batch)
    base = a.forward(batch)
    last = batch.attention_mask.sum(1) - 1
    for r in range(len(TEXTS)):
        changed = ((steered[r] - base[r]).abs().amax(-1) > 1e-6) & batch.attention_mask[r].bool()
        assert changed.nonzero().flatten().tolist() == [int(last[r])]  # real tokens only


def test_an_intervention_refuses_a_hook_outside_its_layers(llama):
    a = adapt(llama)
    steer = Steer(_direction(llama), 1.0, layers=[0])
    batch = a.tokenize(TEXTS[:1])
    with pytest.raises(InterventionError, match="layers=\\[0\\]. was called at"):
        with torch.inference_mode():
            llama.run_with_hooks(batch.input_ids, fwd_hooks=[(a.hook_name("resid_post", 1), steer)])


# ---------------------------------------------------------------------- casting, errors
def test_direction_cast_to_activation_dtype():
    v = torch.randn(8, dtype=torch.float64)
    h = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    for iv in [Steer(v, 1.0), Ablate(v), Clamp(v, 1.0), Swap(v, -v, 0.1)]:
        out = iv(h, None)
        assert out.dtype == torch.bfloat16 and out.shape == h.shape
    assert Steer(v).direction.dtype == torch.float32


def test_clear_errors(llama):
    d = adapt(llama).d_model
    with pytest.raises(InterventionError, match="zero vector"):
        Steer(torch.zeros(d))
    with pytest.raises(InterventionError, match="non-finite"):
        Ablate(torch.full((d,), float("nan")))
    with pytest.raises(InterventionError, match="zero vector.*rows \\[1\\]"):
        Steer(torch.stack([torch.ones(d), torch.zeros(d)]))
    with pytest.raises(InterventionError, match="d_model=64"):
        with intervene(llama, Steer(torch.ones(d + 1), layers=0)):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with intervene(llama, Steer(torch.ones(d), layers=7)):
            pass
    with pytest.raises(InterventionError, match="no layers"):
        with intervene(llama, Steer(torch.ones(d))):
            pass
    with pytest.raises(InterventionError, match="unknown positions"):
        Steer(torch.ones(d), positions="first")
    with pytest.raises(ValueError, match="unknown site"):
        with intervene(llama, Steer(torch.ones(d), layers=0, site="resid")):
            pass
    with pytest.raises(TypeError, match="direction_"):
        Steer(object())
    with pytest.raises(InterventionError, match="2 rows"):
        Steer(torch.ones(2, 4))(torch.zeros(3, 2, 4), None)
    with pytest.raises(InterventionError, match="size 4"):
        Steer(torch.ones(4))(torch.zeros(3, 2, 5), None)
    assert active_hook_count(llama) == 0


def test_accepts_objects_with_vector_or_direction_attribute():
    class Concept:
        vector = torch.tensor([0.0, 2.0])

    class Fitted:
        direction_ = [1.0, 0.0]

    h = torch.zeros(1, 1, 2)
    torch.testing.assert_close(Steer(Concept(), 1.0)(h, None), torch.tensor([[[0.0, 2.0]]]))
    torch.testing.assert_close(Steer(Fitted(), 3.0)(h, None), torch.tensor([[[3.0, 0.0]]]))


# ---------------------------------------------------------------------- hygiene
def test_no_hook_left_after_exception_and_nested_contexts(llama):
    a = adapt(llama)
    batch = a.tokenize(TEXTS)
    v = _direction(llama)
    outer, inner = Steer(v, 1.0, layers=0), Steer(v, 1.0, layers=1)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(llama, outer):
            with intervene(llama, inner):
                a.forward(batch)
                assert outer.n_fired == 1 and inner.n_fired == 1
                raise RuntimeError("boom")
    assert active_hook_count(llama) == 0
    with intervene(llama, outer):
        with intervene(llama, inner):
            pass
        a.forward(batch)
        assert outer.n_fired == 2 and inner.n_fired == 1
    assert active_hook_count(llama) == 0

    def bad_hook(x, hook):
        raise ValueError("inside the forward")

    with pytest.raises(ValueError, match="inside the forward"):
        with intervene(llama, outer, (a.hook_name("resid_post", 2), bad_hook)):
            a.forward(batch)
    assert active_hook_count(llama) == 0
    outer.reset()
    assert outer.n_fired == 0 and outer.n_edited == 0


def test_usable_in_plain_run_with_hooks(tiny_gpt2):
    a = adapt(tiny_gpt2)
    batch = a.tokenize(["The capital of France is"])
    ids = batch.input_ids
    v = _direction(tiny_gpt2)
    steer = Steer(v, 2.0, positions="last")
    with torch.inference_mode():
        _, cache = tiny_gpt2.run_with_cache(ids)
        got = tiny_gpt2.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_pre", steer)])
    resid = cache["blocks.0.hook_resid_post"].clone()
    resid[:, -1] += 2.0 * v
    expected = _rest_of_model(tiny_gpt2, resid, 0, batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert steer.n_fired == 1


# ---------------------------------------------------------------------- data and controls
def test_to_dict_round_trip_through_json(llama):
    a = adapt(llama)
    batch = a.tokenize(TEXTS, padding_side="left")
    v = _direction(llama)
    token_states = extract_states(llama, TEXTS, layers=[0, 2], tokens="all", pool=None)
    ivs = [
        Steer(v, 2.0, layers=[0, 2], positions=[[1], [2], [3]]),
        Ablate(v, layers="all", site="resid_mid", positions="last"),
        Clamp(v, -1.0, layers=1),
        Swap(v, _direction(llama, 9), 0.1, scale="projection", layers=-1),
        Patch(torch.randn(3, batch.input_ids.shape[1], a.d_model), layers=1),
        Patch(_cache(llama, batch)[1], alpha=0.5, positions="last"),
        Patch(dataclasses.replace(token_states, states=token_states.states * 1.5)),
        Placebo(Steer(v, 1.0, layers=0), seed=3),
    ]
    for iv in ivs:
        data = json.loads(json.dumps(iv.to_dict()))
        back = Intervention.from_dict(data)
        assert type(back) is type(iv)
        with intervene(llama, iv):
            want = a.forward(batch)
        with intervene(llama, back):
            got = a.forward(batch)
        torch.testing.assert_close(got, want)


def test_random_control_keeps_norms_and_angles():
    v = torch.randn(2, 16) * torch.tensor([[3.0], [0.5]])
    ctrl = random_control(Steer(v, 2.0, layers=1, positions="last"), seed=1)
    assert isinstance(ctrl, Steer) and ctrl.alpha == 2.0 and ctrl.layers == 1
    torch.testing.assert_close(ctrl.direction.norm(dim=-1), v.norm(dim=-1))
    cos = torch.nn.functional.cosine_similarity(ctrl.direction, v, dim=-1)
    assert cos.abs().max() < 0.9
    again = random_control(Steer(v, 2.0), seed=1)
    torch.testing.assert_close(again.direction, ctrl.direction)
    vf, vt = torch.randn(16), torch.randn(16)
    sw = random_control(Swap(vf, vt, 0.1), seed=2)
    old = (vf / vf.norm() - vt / vt.norm()).norm()
    new = (sw.v_from / sw.v_from.norm() - sw.v_to / sw.v_to.norm()).norm()
    torch.testing.assert_close(new, old)
    assert isinstance(random_control(Patch(torch.randn(2, 16), layers=0)), Placebo)


def test_placebo_is_norm_matched():
    v = torch.randn(16)
    h = torch.randn(2, 5, 16)
    real = Swap(v, torch.randn(16), 0.2, positions=[[1, 2], [4]])
    ref = real(h, None)
    fake = placebo(real, seed=4)
    out = fake(h, None)
    torch.testing.assert_close((out - h).norm(dim=-1), (ref - h).norm(dim=-1))
    moved = (out - h)[(out - h).norm(dim=-1) > 0]
    direction = moved / moved.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(direction, direction[:1].expand_as(direction))
    assert fake.n_fired == 1 and fake.n_edited == 3


def test_with_alpha():
    v = torch.randn(4)
    assert Steer(v, 1.0, layers=2).with_alpha(3.0).alpha == 3.0
    assert Clamp(v, 1.0).with_alpha(5.0).value == 5.0
    assert Placebo(Swap(v, -v, 0.1)).with_alpha(0.3).inner.alpha == 0.3


# ---------------------------------------------------------------------- real model
@pytest.mark.real
def test_steering_real_model_by_hand(smollm2):
    a = adapt(smollm2)
    batch = a.tokenize(
        ["The capital of France is", "I think that this movie was"], padding_side="left"
    )
    v = _direction(smollm2, 0)
    _, cache = _cache(smollm2, batch)
    resid = cache["blocks.10.hook_resid_post"].clone()
    resid[:, -1] += 4.0 * v
    expected = _rest_of_model(smollm2, resid, 10, batch)
    with intervene(smollm2, Steer(v, 4.0, layers=10, positions="last")):
        got = a.forward(batch)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- dtypes
@pytest.fixture(scope="module")
def typed_llamas():
    from semhooks.testing import tiny_model

    return {dt: tiny_model("llama").to(dt) for dt in (torch.float64, torch.bfloat16)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_hooks_follow_the_activation_dtype(typed_llamas, tiny_llama, dtype):
    model = typed_llamas[dtype]
    a = sh.adapt(model)
    assert a.dtype == dtype
    batch = a.tokenize(TEXTS)
    v = torch.randn(a.d_model, generator=torch.Generator().manual_seed(2))  # float32
    seen = []

    def record(x, hook):
        seen.append(x.dtype)

    with intervene(model, Steer(v, 2.0, layers=1), (a.hook_name("resid_post", 1), record)):
        logits = a.forward(batch)
    assert seen == [dtype] and logits.dtype == dtype
    # Steer's edit is exact in the model's dtype: h + alpha v with v cast to that dtype
    grab = {}

    def keep(x, hook):
        grab["h"] = x.clone()

    name = a.hook_name("resid_post", 1)
    with torch.inference_mode(), a.hooks([(name, keep)]):
        a.model(batch.input_ids, attention_mask=batch.attention_mask)
    plain = grab["h"]
    with intervene(model, Steer(v, 2.0, layers=1), (name, keep)):
        a.forward(batch)
    real = batch.attention_mask.bool()  # positions="all" edits attended tokens only
    assert torch.equal(grab["h"][real], (plain + 2.0 * v.to(dtype))[real])
    assert torch.equal(grab["h"][~real], plain[~real])
    # pooled states come back float32 on the CPU, close to the float32 model's
    states = sh.extract_states(model, TEXTS, layers=[0, 2], progress=False)
    ref = sh.extract_states(tiny_llama, TEXTS, layers=[0, 2], progress=False)
    assert states.states.dtype == torch.float32 and states.states.device.type == "cpu"
    tol = 1e-5 if dtype == torch.float64 else 0.1
    torch.testing.assert_close(states.states, ref.states, atol=tol, rtol=tol)
    # learned-score pooling reads activations in the model's dtype, too
    weighted = sh.extract_states(
        model, TEXTS, layers=[1], pool="weighted", progress=False,
        pool_weights=lambda acts, layer: acts.float().sum(-1),
    )  # fmt: skip
    assert weighted.states.dtype == torch.float32 and torch.isfinite(weighted.states).all()
