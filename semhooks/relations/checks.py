"""Argument checks shared by the relation estimators and their evaluation."""

from __future__ import annotations

from collections.abc import Sequence

from semhooks.data.columns import from_columns
from semhooks.relations.prompts import RelationPrompt

__all__ = ["check_prompts"]


def check_prompts(prompts: Sequence[RelationPrompt], what: str) -> list[RelationPrompt]:
    """``prompts`` as a list, refusing a single prompt, an empty list, another type, or a
    prompt whose subject is not in its text (``what`` names the caller in the errors)."""
    prompts = from_columns(prompts, "records", build=RelationPrompt)  # a datasets.Dataset
    if isinstance(prompts, (str, RelationPrompt)):
        raise TypeError(f"{what} takes a list of RelationPrompt, got one {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(
            f"{what}: no prompts given. Build them with semhooks.relations.build_prompts and "
            "keep the ones the model answers with semhooks.relations.validate"
        )
    for p in prompts:
        if not isinstance(p, RelationPrompt):
            raise TypeError(f"{what} takes RelationPrompt objects, got {type(p).__name__}")
        p.subject_char_span()  # raises a clear error when the subject is not in the prompt
    return prompts
