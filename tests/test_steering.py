"""Steering curves and greedy generation under interventions."""

from __future__ import annotations

import json

import pytest
import torch

from semhooks import adapt, extract_states
from semhooks.backend.adapter import active_hook_count
from semhooks.estimators.directions import MeanDifference
from semhooks.interventions import Ablate, Steer, intervene
from semhooks.studies.steering import SteeringCurve, generate, steering_curve

PROMPTS = ["The capital of France is", "I loved this", "The bank of the"]


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


def test_generate_matches_hugging_face_greedy(llama, tiny_llama):
    a = adapt(llama)
    batch = a.tokenize(PROMPTS, padding_side="left")
    hf = tiny_llama.original_model
    ref = hf.generate(
        batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=a.pad_token_id,
        # The bridge replaces the HF model's attention modules in place; TransformerLens 4.3's
        # ignore transformers 5.24's renamed `cache` argument, so HF's own KV-cached decoding
        # of this (bridged) model is wrong. Recompute every step, as semhooks' generate does.
        use_cache=False,
    )
    expected = [a.tokenizer.decode(r[batch.input_ids.shape[1] :]) for r in ref]
    got = generate(llama, PROMPTS, max_new_tokens=6, stop_at_eos=False)
    if a.tokenizer.eos_token_id is None:
        assert got == expected
    else:  # our texts stop at the first EOS; compare up to it
        assert all(e.startswith(g) for g, e in zip(got, expected, strict=True))


def test_generated_only_positions_are_exact(llama):
    v = _direction(llama) * 50
    n, b = 5, len(PROMPTS)
    base = generate(llama, PROMPTS, max_new_tokens=n, stop_at_eos=False)
    later = Steer(v, 1.0, layers=[0, 1], positions="generated_only")
    steered = generate(llama, PROMPTS, later, max_new_tokens=n, stop_at_eos=False)
    # Step 0 sees prompt columns only, so the first token cannot change; each later step
    # edits every generated column of every row at both layers.
    assert later.n_fired == 2 * (n - 1)
    assert later.n_edited == 2 * b * sum(range(n))
    first_tok = adapt(llama).tokenizer
    for s, t in zip(steered, base, strict=True):
        assert first_tok(s)["input_ids"][:1] == first_tok(t)["input_ids"][:1]
    assert steered != base
    early = Steer(v, 1.0, layers=0, positions="prompt_only")
    generate(llama, PROMPTS, early, max_new_tokens=n, stop_at_eos=False)
    batch = adapt(llama).tokenize(PROMPTS, padding_side="left")
    assert early.n_fired == n and early.n_edited == n * int(batch.attention_mask.sum())
    assert active_hook_count(llama) == 0


def test_generate_errors(tiny_llama, tiny_bert):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_llama, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="encoder"):
        generate(tiny_bert, PROMPTS)
    with pytest.raises(ValueError, match="context window"):
        generate(tiny_llama, PROMPTS, max_new_tokens=10**6)


def test_steering_curve_on_tiny_model(llama, tmp_path):
    v = _direction(llama, 3)
    curve = steering_curve(
        llama, PROMPTS, Steer(v, layers=1), [-2.0, 0.0, 2.0], [" Paris", " movie"]
    )
    assert isinstance(curve, SteeringCurve)
    assert curve.prob[1] == pytest.approx(curve.baseline_prob, abs=1e-7)
    assert curve.control_prob[1] == pytest.approx(curve.baseline_prob, abs=1e-7)
    assert curve.logit_diff[0] != pytest.approx(curve.logit_diff[2])
    assert len(curve.per_prompt_prob) == 3 and len(curve.per_prompt_prob[0]) == len(PROMPTS)
    data = json.loads(json.dumps(curve.to_dict()))
    assert data["intervention"]["type"] == "Steer" and data["control"]["type"] == "Steer"
    fig = curve.plot(path=tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0 and len(fig.axes) == 2
    main, ctrl = curve.effect("logit_diff")
    assert main > 0 and ctrl is not None
    push, _ = curve.effect("logit_diff", signed=True)
    assert push == pytest.approx(curve.logit_diff[2] - curve.logit_diff[0])


def test_steering_curve_oracle_against_manual_forward(llama):
    """The curve's numbers equal a hand-run forward under the same intervention."""
    a = adapt(llama)
    v = _direction(llama, 4)
    targets, contrast = [" Paris", " Berlin"], [" movie"]
    curve = steering_curve(
        llama,
        PROMPTS,
        Ablate(v, layers="all"),
        [0.5],
        targets,
        contrast_tokens=contrast,
        control=None,
        batch_size=2,
    )
    assert curve.control_prob is None
    t_ids = [a.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in targets]
    c_ids = [a.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in contrast]
    with intervene(llama, Ablate(v, 0.5, layers="all")):
        logits = a.forward(a.tokenize(PROMPTS, padding_side="left"))[:, -1]
    prob = logits.softmax(-1)[:, t_ids].sum(-1).mean()
    diff = (logits[:, t_ids].mean(-1) - logits[:, c_ids].mean(-1)).mean()
    assert curve.prob[0] == pytest.approx(float(prob), abs=1e-6)
    assert curve.logit_diff[0] == pytest.approx(float(diff), abs=1e-5)
    placebo_curve = steering_curve(
        llama, PROMPTS, Ablate(v, layers=1), [1.0], targets, control="placebo"
    )
    assert placebo_curve.control["type"] == "Placebo"
    with pytest.raises(ValueError, match="control must be"):
        steering_curve(llama, PROMPTS, Ablate(v, layers=1), [1.0], targets, control="x")
    with pytest.raises(ValueError, match="alphas is empty"):
        steering_curve(llama, PROMPTS, Ablate(v, layers=1), [], targets)


# ---------------------------------------------------------------------- real model
POSITIVE = [
    "I loved this movie, it was wonderful.",
    "What a fantastic, delightful day.",
    "The food was excellent and the staff were kind.",
    "This is the best book I have ever read.",
    "She was thrilled and happy with the result.",
    "A beautiful, moving and brilliant film.",
]
NEGATIVE = [
    "I hated this movie, it was awful.",
    "What a terrible, miserable day.",
    "The food was disgusting and the staff were rude.",
    "This is the worst book I have ever read.",
    "She was furious and sad with the result.",
    "An ugly, boring and stupid film.",
]
NEUTRAL = [
    "The movie was",
    "Overall, the experience was",
    "My review of the restaurant: it was",
    "I think the book is",
    "The weather today is",
]
GOOD = [" great", " good", " wonderful", " excellent"]
BAD = [" terrible", " bad", " awful", " horrible"]


@pytest.mark.real
def test_sentiment_direction_moves_smollm2_and_random_control_does_not(smollm2):
    layer = 10
    states = extract_states(smollm2, POSITIVE + NEGATIVE, layers=[layer], tokens="all")
    direction = MeanDifference(layer=layer).fit(states, [1] * 6 + [0] * 6)
    curve = steering_curve(
        smollm2,
        NEUTRAL,
        Steer(direction, layers=layer),
        [-1.0, 1.0],
        BAD,
        contrast_tokens=GOOD,
        seed=0,
    )
    base_p, base_d = curve.baseline_prob, curve.baseline_logit_diff
    # Towards negative sentiment: P(bad words) at least 3x (measured 0.0045 -> 0.0245).
    assert curve.prob[0] > 3 * base_p
    # Towards positive sentiment: P(bad words) at most half (measured 0.0009).
    assert curve.prob[1] < 0.5 * base_p
    # bad - good logit difference moves by > 1.5 both ways (measured +2.64 / -2.23).
    assert curve.logit_diff[0] - base_d > 1.5 and base_d - curve.logit_diff[1] > 1.5
    # The random direction of equal norm moves it far less (measured at most 0.46).
    main, ctrl = curve.effect("logit_diff")
    assert ctrl < main / 3
    assert max(curve.control_prob) < 2 * base_p


@pytest.mark.real
def test_generation_on_smollm2(smollm2):
    out = generate(smollm2, ["The capital of France is"], max_new_tokens=2)
    assert out[0].startswith(" Paris")
