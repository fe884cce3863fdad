"""The concept swap of Chanin et al. 2024, with its random-direction control.

At the subject's last token, ``h <- h + alpha ||h|| (v_target - v_source)`` at every layer or
one layer (through :class:`semhooks.interventions.Swap`); success when the target answer's
probability (the minimum over its tokens, teacher forced) beats the original answer's. The
control swaps random unit vectors at the same angle (:func:`semhooks.interventions.random_control`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from semhooks.backend.adapter import adapt
from semhooks.extraction.reader import read
from semhooks.interventions import Swap, intervene, random_control
from semhooks.relations.checks import check_prompts
from semhooks.relations.evaluation.baselines import Baseline
from semhooks.relations.lrc import LRC, Concept
from semhooks.relations.prompts import EncodedPrompts, RelationPrompt, encode_prompts

__all__ = ["SwapResult", "causal_swap", "pick_targets"]


def pick_targets(prompts: Sequence[RelationPrompt], pool: Sequence[str], seed: int) -> list[str]:
    """For each prompt an object from ``pool`` other than its own (seeded)."""
    rng = random.Random(seed)
    out = []
    for p in prompts:
        others = [o for o in pool if o != p.object]
        if not others:
            raise ValueError(
                f"no target object other than {p.object!r} to edit towards; causality needs "
                "prompts (or concepts) with at least two objects"
            )
        out.append(rng.choice(others))
    return out


@dataclass
class SwapResult:
    """Causal swap outcome.

    ``score``: fraction of prompts where the target answer's probability (min over its
    tokens) beats the source answer's after the swap; ``control_score``: the same with the
    random-direction control; ``baseline_score``: the same without any intervention.
    """

    score: float
    control_score: float
    baseline_score: float
    n: int
    alpha: float
    layers: Any
    targets: list[str] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    #: per prompt, the outcome without intervention (``baseline_score`` is its mean)
    baseline: list[bool] = field(default_factory=list)
    #: what decides ``baseline``: model, prompts, answers, targets and batching
    baseline_key: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"SwapResult(score={self.score:.3f}, control_score={self.control_score:.3f}, "
            f"baseline_score={self.baseline_score:.3f}, n={self.n}, alpha={self.alpha})"
        )


def _concept_vectors(concepts: Any) -> dict[str, Tensor]:
    if isinstance(concepts, LRC):
        check_is_fitted(concepts, "vectors_")
        return {o: concepts.vectors_[i] for i, o in enumerate(concepts.classes_)}
    if isinstance(concepts, Baseline):
        return {o: concepts.vectors[i] for i, o in enumerate(concepts.classes)}
    if isinstance(concepts, Mapping):
        out = {}
        for k, v in concepts.items():
            vec = v.vector if isinstance(v, Concept) else v
            out[str(k)] = torch.as_tensor(vec, dtype=torch.float32)
        return out
    raise TypeError(
        "concepts must be a fitted LRC, a Baseline, or a {object: vector or Concept} mapping"
    )


def _min_logp(logp: Tensor, ids: list[int]) -> Tensor:
    """``min_t log p(answer_t)`` from one row's log-probabilities at its answer positions."""
    return logp[torch.arange(len(ids)), torch.tensor(ids)].min()


_Read = tuple[int, list[int]]  # (row of the batch, answer token ids read at its positions)


def _pair_rows(
    adapter: Any, chunk: Sequence[RelationPrompt], targets: Sequence[str]
) -> tuple[EncodedPrompts, list[int], list[tuple[_Read, _Read]]]:
    """The rows that score each (prompt, target) pair, teacher forced.

    A pair whose source and target answers are both one token needs one row: both answers'
    first (only) token is predicted at the prompt's last position, which the appended answer
    cannot change (causal attention). Otherwise the pair takes two rows, prompt + source
    answer and prompt + target answer.

    Returns the encoded rows, the chunk index each row belongs to, and per pair where to
    read its source and its target answer.
    """
    pairs = [
        r
        for p, t in zip(chunk, targets, strict=True)
        for r in (p, RelationPrompt(p.text, p.subject, t, p.relation, p.template, p.examples))
    ]
    both = encode_prompts(adapter, pairs, with_answer=True)
    rows: list[RelationPrompt] = []
    owner: list[int] = []
    reads: list[tuple[_Read, _Read]] = []
    for i in range(len(chunk)):
        src_ids, tgt_ids = both.answer_ids[2 * i], both.answer_ids[2 * i + 1]
        rows.append(pairs[2 * i])
        owner.append(i)
        src_row = tgt_row = len(rows) - 1
        if len(src_ids) > 1 or len(tgt_ids) > 1:
            rows.append(pairs[2 * i + 1])
            owner.append(i)
            tgt_row = len(rows) - 1
        reads.append(((src_row, src_ids), (tgt_row, tgt_ids)))
    enc = both if len(rows) == len(pairs) else encode_prompts(adapter, rows, with_answer=True)
    return enc, owner, reads


def _on_rows(iv: Any, owner: list[int], positions: list[list[int]]) -> Swap:
    """A per-pair :class:`Swap` given to every row of its pair, at the rows' subject tokens."""
    rows = torch.tensor(owner)
    return dataclasses.replace(iv, v_from=iv.v_from[rows], v_to=iv.v_to[rows], positions=positions)


def causal_swap(
    concepts: Any,
    model: Any,
    prompts: Sequence[RelationPrompt],
    *,
    alpha: float = 0.05,
    layers: int | Sequence[int] | Literal["all"] = "all",
    targets: Sequence[str] | None = None,
    control: bool = True,
    scale: Literal["norm", "projection"] = "norm",
    seed: int = 0,
    batch_size: int = 8,
    baseline: SwapResult | None = None,
) -> SwapResult:
    """Swap each prompt's concept for another object's and check the answer flips.

    At the subject's last token, ``h <- h + alpha ||h|| (v_target - v_source)`` at ``layers``
    (``"all"``, one layer or a list; site ``resid_post``), via
    :class:`semhooks.interventions.Swap`. Success when ``min_t p(target_t) > min_t
    p(source_t)`` over the answers' tokens, teacher forced (multi-token objects work).

    Args:
        concepts: a fitted :class:`LRC`, a :class:`Baseline`, or ``{object: vector}``.
        prompts: test prompts whose objects have concepts.
        targets: one target object per prompt (default: a random other object, seeded).
        control: also run the random-direction control (random unit vectors at the same
            angle as each source/target pair).
        scale: ``"norm"`` (Chanin et al.: ``alpha ||h||``) or ``"projection"``
            (``alpha (h . v_source)``; see :class:`semhooks.interventions.Swap`).
        baseline: an earlier result whose no-intervention outcomes are reused when they
            were computed on the same model, prompts, answers, targets and batch size (the
            un-intervened forward is the same for every concept set compared on one split);
            if any of these differs they are recomputed. The model is recognised by identity:
            do not pass a result from before its weights were changed in place.

    Only the answer positions are unembedded (:meth:`ModelAdapter.logits_at`).
    """
    adapter = adapt(model)
    prompts = check_prompts(prompts, "causal_swap")
    vecs = _concept_vectors(concepts)
    missing = sorted({p.object for p in prompts} - set(vecs))
    if missing:
        raise ValueError(
            f"no concept for objects {missing[:5]}: causal_swap needs prompts whose objects "
            "have concepts (test prompts of the same relation)"
        )
    if targets is None:
        targets = pick_targets(prompts, sorted(vecs), seed)
    targets = list(targets)
    if len(targets) != len(prompts):
        raise ValueError(f"got {len(targets)} targets for {len(prompts)} prompts")
    layer_spec: Any = "all" if layers == "all" else layers
    key = (
        id(adapter.model),
        adapter.name,
        batch_size,
        tuple((p.text, p.object) for p in prompts),
        tuple(targets),
    )
    reuse = (
        baseline is not None
        and baseline.baseline_key == key
        and len(baseline.baseline) == len(prompts)
    )
    success: list[bool] = []
    ctrl: list[bool] = []
    base: list[bool] = list(baseline.baseline) if reuse and baseline is not None else []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        tgt = targets[start : start + batch_size]
        enc, owner, reads = _pair_rows(adapter, chunk, tgt)
        # one edit per pair (its control drawn per pair too), given to each of its rows
        per_pair = Swap(
            torch.stack([vecs[p.object] for p in chunk]),
            torch.stack([vecs[t] for t in tgt]),
            alpha=alpha,
            scale=scale,
            layers=layer_spec,
        )
        positions = [[int(p)] for p in enc.subject_positions]
        runs: list[tuple[list[bool], Any]] = [(success, _on_rows(per_pair, owner, positions))]
        if not reuse:
            runs.insert(0, (base, None))
        if control:
            ctl = random_control(per_pair, seed=seed + start)
            runs.append((ctrl, _on_rows(ctl, owner, positions)))
        for out, iv in runs:
            # only the answer positions are unembedded (the reader's logit_positions)
            with (
                contextlib.nullcontext()
                if iv is None
                else intervene(adapter.model, iv, attention_mask=enc.batch.attention_mask)
            ):
                logits = read(adapter, enc.batch, {}, logit_positions=enc.object_positions)
            assert logits.position_logits is not None
            logp = [row.float().log_softmax(-1) for row in logits.position_logits]
            for (src_row, src_ids), (tgt_row, tgt_ids) in reads:
                out.append(
                    bool(_min_logp(logp[tgt_row], tgt_ids) > _min_logp(logp[src_row], src_ids))
                )
    return SwapResult(
        score=float(np.mean(success)),
        control_score=float(np.mean(ctrl)) if control else float("nan"),
        baseline_score=float(np.mean(base)),
        n=len(prompts),
        alpha=alpha,
        layers=layers,
        targets=targets,
        success=success,
        baseline=base,
        baseline_key=key,
    )
