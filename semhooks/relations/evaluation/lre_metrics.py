"""LRE metrics (Hernandez et al. 2023): faithfulness and causality of inverse edits.

- :func:`faithfulness`: on held-out prompts, the LRE's top-1 decoded token (``LRE(s)``
  through final norm and unembedding) equals the model's own top-1 next token.
- :func:`hernandez_causality`: for a prompt with object ``o`` and a target prompt with
  object ``o'``, add ``delta s = W^+_rho (o' - o)`` (``o``, ``o'`` the model's own object-layer
  states of the two prompts, ``W^+_rho`` the rank-``rho`` pseudo-inverse) to the subject
  state at the subject layer (a per-row :class:`semhooks.interventions.Steer`); success when
  the model's top-1 next token becomes the first token of ``o'``. The control is
  :func:`semhooks.interventions.random_control` of the same edit.

This module does not import :mod:`semhooks.relations.lre` (``LRE.faithfulness`` and
``LRE.causality`` call into it), so there is no import cycle.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from semhooks.backend.adapter import adapt
from semhooks.extraction.reader import read
from semhooks.interventions import Steer, intervene, random_control
from semhooks.relations.checks import check_prompts
from semhooks.relations.prompts import RelationPrompt, encode_prompts, prompt_states

if TYPE_CHECKING:
    from semhooks.relations.lre import LRE

__all__ = ["CausalityResult", "FaithfulnessResult", "faithfulness", "hernandez_causality"]


@dataclass
class FaithfulnessResult:
    """LRE faithfulness on prompts.

    ``score``: fraction where the LRE's top-1 token equals the model's top-1 token;
    ``object_score``: fraction where the LRE's top-1 token is a non-empty prefix of the
    answer ``" " + object`` (Hernandez et al.'s criterion against the dataset).
    """

    score: float
    object_score: float
    n: int
    lre_tokens: list[str]
    model_tokens: list[str]

    def __repr__(self) -> str:
        return (
            f"FaithfulnessResult(score={self.score:.3f}, object_score={self.object_score:.3f}, "
            f"n={self.n})"
        )


def _is_prefix(token: str, answer: str) -> bool:
    tok = token.strip()
    return bool(tok) and answer.strip().lower().startswith(tok.lower())


def faithfulness(
    lre: LRE, model: Any, prompts: Sequence[RelationPrompt], *, batch_size: int = 16
) -> FaithfulnessResult:
    """Top-1 agreement between the decoded LRE and the model on (held-out) prompts."""
    check_is_fitted(lre, "weight_")
    adapter = adapt(model)
    prompts = check_prompts(prompts, "faithfulness")
    st = prompt_states(
        adapter,
        prompts,
        lre.subject_layer_,
        aggregation="first",
        with_answer=False,
        batch_size=batch_size,
        top1=True,
    )
    assert st.top1 is not None
    pred = lre.logits(st.subject[lre.subject_layer_], model=adapter).argmax(-1)
    tok = adapter.tokenizer
    lre_tokens = [tok.decode([int(i)]) for i in pred]
    model_tokens = [tok.decode([int(i)]) for i in st.top1]
    same = (pred == st.top1).float().mean().item()
    obj = float(
        np.mean([_is_prefix(t, p.answer) for t, p in zip(lre_tokens, prompts, strict=True)])
    )
    return FaithfulnessResult(same, obj, len(prompts), lre_tokens, model_tokens)


@dataclass
class CausalityResult:
    """Hernandez causality: ``score`` (edits that make the target the top-1), the random
    control of equal norm (``control_score``), ``n`` pairs and the rank used."""

    score: float
    control_score: float
    n: int
    rank: int
    targets: list[str] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"CausalityResult(score={self.score:.3f}, control_score={self.control_score:.3f}, "
            f"n={self.n}, rank={self.rank})"
        )


def hernandez_causality(
    lre: LRE,
    model: Any,
    prompts: Sequence[RelationPrompt],
    *,
    rank: int,
    seed: int = 0,
    batch_size: int = 16,
) -> CausalityResult:
    """Rank-``rank`` inverse edits ``delta s = W^+ (o' - o)``; success = top-1 becomes ``o'``.

    Each prompt is paired (seeded) with a target prompt of another object; ``o`` and ``o'``
    are the model's own object-layer states (the LRE's aggregation). The control adds a
    random vector of the same norm as ``delta s``.
    """
    check_is_fitted(lre, "weight_")
    adapter = adapt(model)
    prompts = check_prompts(prompts, "hernandez_causality")
    w_inv = lre.invert(rank)
    rng = random.Random(seed)
    pairs = []
    for _i, p in enumerate(prompts):
        others = [j for j, q in enumerate(prompts) if q.object != p.object]
        if not others:
            raise ValueError(
                "hernandez_causality needs prompts with at least two different objects"
            )
        pairs.append(rng.choice(others))
    st = prompt_states(
        adapter,
        prompts,
        lre.object_layer_,
        aggregation=lre.object_aggregation,
        batch_size=batch_size,
    )
    o = st.object[lre.object_layer_]
    deltas = (o[pairs] - o) @ w_inv.T
    # the control: each row's delta replaced by a seeded Gaussian direction of equal norm
    control = random_control(Steer(deltas), seed=seed)
    assert isinstance(control, Steer)
    rand = control.direction
    enc_answers = encode_prompts(adapter, prompts, with_answer=True)
    first_ids = torch.tensor([a[0] for a in enc_answers.answer_ids])
    target_ids = first_ids[pairs]
    hits: dict[str, list[bool]] = {"edit": [], "control": []}
    preds: list[int] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(range(start, min(start + batch_size, len(prompts))))
        enc = encode_prompts(adapter, [prompts[i] for i in chunk], with_answer=False)
        last = [[int(pos[0])] for pos in enc.object_positions]  # the last prompt token
        positions = [[int(p)] for p in enc.subject_positions]
        for name, d in (("edit", deltas), ("control", rand)):
            steer = Steer(d[chunk], layers=[lre.subject_layer_], positions=positions)
            with intervene(adapter.model, steer, attention_mask=enc.batch.attention_mask):
                # only the last prompt position is unembedded (the reader's logit_positions)
                at = read(adapter, enc.batch, {}, logit_positions=last)
            assert at.position_logits is not None
            top = torch.cat(at.position_logits).argmax(-1).cpu()
            hits[name].extend((top == target_ids[chunk]).tolist())
            if name == "edit":
                preds.extend(top.tolist())
    tok = adapter.tokenizer
    return CausalityResult(
        score=float(np.mean(hits["edit"])),
        control_score=float(np.mean(hits["control"])),
        n=len(prompts),
        rank=rank,
        targets=[prompts[j].object for j in pairs],
        predictions=[tok.decode([i]) for i in preds],
    )
