"""Substring -> token positions, through the tokenizer's character offsets.

A word is never tokenised on its own: " Paris" inside a sentence and "Paris" alone are
different tokens for GPT-2 and Llama tokenizers. Instead, the substring is located in the
text by character, and every non-special token whose character span overlaps it is part of
the span. This handles leading spaces, accents, punctuation, words split into several
tokens, BOS/CLS tokens and repeated occurrences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

if TYPE_CHECKING:  # annotations only: spans never build a batch
    from semhooks.backend.adapter import Tokenized

Occurrence = Union[Literal["first", "last"], int]
SpanPart = Literal["all", "first", "last"]


class SpanNotFoundError(ValueError):
    """A substring or character span could not be mapped to tokens."""


def char_span(text: str, substring: str, occurrence: Occurrence = "last") -> tuple[int, int]:
    """Character span ``(start, end)`` of an occurrence of ``substring`` in ``text``."""
    if not substring:
        raise SpanNotFoundError(f"empty substring requested in text {text!r}")
    starts = []
    i = text.find(substring)
    while i != -1:
        starts.append(i)
        i = text.find(substring, i + 1)
    if not starts:
        raise SpanNotFoundError(f"substring {substring!r} not found in text {text!r}")
    if occurrence == "first":
        s = starts[0]
    elif occurrence == "last":
        s = starts[-1]
    elif isinstance(occurrence, int):
        if not -len(starts) <= occurrence < len(starts):
            raise SpanNotFoundError(
                f"occurrence {occurrence} of {substring!r} requested, but text {text!r} has "
                f"{len(starts)}"
            )
        s = starts[occurrence]
    else:
        raise ValueError(f"occurrence must be 'first', 'last' or an int, got {occurrence!r}")
    return s, s + len(substring)


def char_span_to_positions(batch: Tokenized, row: int, start: int, end: int) -> list[int]:
    """Token positions in ``batch`` row ``row`` whose characters overlap ``[start, end)``."""
    text = batch.texts[row]
    if not 0 <= start < end <= len(text):
        raise SpanNotFoundError(f"character span ({start}, {end}) is outside text {text!r}")
    offs = batch.offsets[row]
    real = batch.attention_mask[row].bool() & ~batch.special[row]
    s, e = offs[:, 0], offs[:, 1]
    hit = real & (s < end) & (e > start)
    positions = hit.nonzero().flatten().tolist()
    if not positions:
        why = " (the text was truncated)" if batch.truncated[row] else ""
        raise SpanNotFoundError(
            f"no token covers characters {start}:{end} ({text[start:end]!r}) of text {text!r}{why}"
        )
    return positions


def find_span(
    batch: Tokenized, substring: str, occurrence: Occurrence = "last", row: int = 0
) -> list[int]:
    """Token positions of ``substring`` in row ``row`` of a tokenised batch.

    >>> from semhooks import adapt, testing
    >>> batch = adapt(testing.tiny_model("gpt2")).tokenize(["The capital of France is Paris."])
    >>> [batch.texts[0][slice(*batch.offsets[0, p].tolist())] for p in find_span(batch, "Paris")]
    [' Paris']
    """
    start, end = char_span(batch.texts[row], substring, occurrence)
    return char_span_to_positions(batch, row, start, end)


SpanSource = Union[str, Sequence[Any], Callable[[str], Any]]


@dataclass(frozen=True)
class Spans:
    """Token selection by span, one per text.

    ``source`` is one substring for every text, a list with one entry per text (a substring
    or a ``(start, end)`` character span), or a callable ``text -> substring | (start, end)``.
    ``part`` keeps all the span's tokens, or only its first or last token (e.g. the subject's
    last token for LREs).
    """

    source: SpanSource
    occurrence: Occurrence = "last"
    part: SpanPart = "all"

    def spec_for(self, index: int, text: str) -> Any:
        src = self.source
        if isinstance(src, str):
            return src
        if callable(src):
            return src(text)
        return src[index]

    def positions(self, batch: Tokenized, row: int, index: int) -> list[int]:
        spec = self.spec_for(index, batch.texts[row])
        if isinstance(spec, str):
            pos = find_span(batch, spec, self.occurrence, row)
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            pos = char_span_to_positions(batch, row, int(spec[0]), int(spec[1]))
        else:
            raise TypeError(
                f"span spec for text {index} must be a str or (start, end), got {spec!r}"
            )
        if self.part == "last":
            return pos[-1:]
        if self.part == "first":
            return pos[:1]
        return pos

    def describe(self) -> str:
        return f"span(occurrence={self.occurrence}, part={self.part})"
