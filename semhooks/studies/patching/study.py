"""The factual-recall study: where does the subject's information move to the last token?

Pairs come from the bundled ``country_capital_city`` relation: the clean prompt names one
country, the corrupted prompt another (ragged pairs: ``" Canada"`` and ``" United States"``
differ in token count), the metric is the logit of the clean capital's first token minus
that of the corrupted capital. Only subjects the model answers are used: a pair is kept
when the clean run prefers its own capital and the corrupted run prefers its own.
"""

from __future__ import annotations

from typing import Any

import torch

TEMPLATE = "The capital of {} is the city of"


def factual_recall_pairs(
    model: Any, n: int = 8, *, template: str = TEMPLATE, relation: str = "country_capital_city"
) -> tuple[list[str], list[str], list[str], list[str]]:
    """``(clean, corrupted, answers, wrong)`` for ``n`` pairs the model gets right both ways.

    Subjects are taken in file order; the corrupted subject of pair i is the next known
    subject with a capital whose first token differs.
    """
    from semhooks.backend.adapter import adapt
    from semhooks.relations import load

    adapter = adapt(model)
    rel = load(relation)
    samples = [(s.subject, s.object) for s in rel.samples]
    prompts = [template.format(s) for s, _ in samples]
    first = [adapter.to_token_ids([" " + o])[0][0] for _, o in samples]
    batch = adapter.tokenize(prompts, padding_side="left")
    with torch.inference_mode():
        logits = adapter.forward(batch)
    assert logits is not None
    top = logits[:, -1].argmax(-1).cpu().tolist()
    known = [i for i in range(len(samples)) if top[i] == first[i]]
    clean, corrupted, answers, wrong = [], [], [], []
    for k, i in enumerate(known):
        j = next((known[(k + d) % len(known)] for d in range(1, len(known))
                  if first[known[(k + d) % len(known)]] != first[i]), None)  # fmt: skip
        if j is None:
            continue
        clean.append(prompts[i])
        corrupted.append(prompts[j])
        answers.append(" " + samples[i][1])
        wrong.append(" " + samples[j][1])
        if len(clean) == n:
            break
    if len(clean) < n:
        raise ValueError(
            f"{adapter.name} answers only {len(known)} of {len(samples)} {relation} prompts "
            f"({template!r}); {len(clean)} pairs found, {n} asked"
        )
    return clean, corrupted, answers, wrong
