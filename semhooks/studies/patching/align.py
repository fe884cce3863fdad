"""Clean/corrupted pairs aligned token by token through character offsets.

A patching experiment moves activations between two runs of *different* texts, so it must
say which token of one text stands for which token of the other. Counting tokens fails as
soon as the two differ in length (``" France"`` is one token, ``" Czech Republic"`` three).
semhooks aligns through characters instead:

1. Each pair differs in one region, its *span*: given explicitly (``spans=[("France",
   "Czech Republic"), ...]``: the last occurrence of each substring) or found as everything
   between the longest common prefix and suffix of the two texts, widened to whole words
   (``"Spain"``/``"Sweden"`` share an ``S``; the span is the whole word, not ``"pain"``).
2. A token that lies before the span in one text lies at the same characters in the other;
   a token after it lies at the same distance from the end. Those are matched by their
   character offsets, and a token with no counterpart at the same characters (the
   tokenizer merged it with the span in one text only) makes the pair unalignable
   (:class:`AlignmentError` names the pair, the token and the texts).
3. Tokens overlapping the span are matched by rank: ``span:first`` to ``span:first``,
   ``span:last`` to ``span:last``; ``span`` (the whole span) pairs them right-aligned, so
   when one side is longer its leading extra tokens are not patched.

Position labels (the columns of a patching grid), the same for every pair:

- ``"pre:{i}"``: the i-th token before the span (``pre:0`` is BOS when the model adds one);
- ``"span"``, ``"span:first"``, ``"span:last"``;
- ``"post:{j}"``: the j-th token after the span (``post:0`` the first after it);
- ``"last"``: the last token of both texts (the one whose prediction a metric usually reads).

Every pair must have as many tokens before and after its span as the first pair (pairs from
one template do); otherwise a ``pre:``/``post:`` label would mean different words in
different pairs and :class:`AlignmentError` says which pair breaks it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from semhooks.backend.adapter import Tokenized
from semhooks.extraction.spans import SpanNotFoundError, char_span

_LABEL = re.compile(r"^(last|span|span:first|span:last|pre:\d+|post:\d+)$")


class AlignmentError(ValueError):
    """A clean/corrupted pair cannot be aligned, or a position label means nothing for it."""


def diff_span(clean: str, corrupted: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Character spans ``((start, end) in clean, (start, end) in corrupted)`` of the region
    where the two texts differ, widened to whole words (letters and digits)."""
    if clean == corrupted:
        raise AlignmentError(
            f"the clean and corrupted texts are identical ({clean!r}); a patching pair must "
            "differ somewhere"
        )
    n = min(len(clean), len(corrupted))
    p = 0
    while p < n and clean[p] == corrupted[p]:
        p += 1
    s = 0
    while s < n - p and clean[-1 - s] == corrupted[-1 - s]:
        s += 1
    while p > 0 and clean[p - 1].isalnum():
        p -= 1
    while s > 0 and clean[len(clean) - s].isalnum():
        s -= 1
    return (p, len(clean) - s), (p, len(corrupted) - s)


@dataclass
class PairAlignment:
    """Token indices (unpadded, right-padded batch columns) per label for one pair."""

    clean_span: tuple[int, int]
    corrupted_span: tuple[int, int]
    clean_tokens: dict[str, list[int]] = field(default_factory=dict)
    corrupted_tokens: dict[str, list[int]] = field(default_factory=dict)
    n_pre: int = 0
    n_post: int = 0


def _token_groups(
    batch: Tokenized, row: int, span: tuple[int, int]
) -> tuple[list[tuple[int, int, int]], list[int], list[tuple[int, int, int]]]:
    """Tokens of ``row`` before, inside and after ``span``: ``(index, start, end)``."""
    n = int(batch.attention_mask[row].sum())
    pre: list[tuple[int, int, int]] = []
    mid: list[int] = []
    post: list[tuple[int, int, int]] = []
    for t in range(n):
        a, b = (int(x) for x in batch.offsets[row, t])
        special = bool(batch.special[row, t])
        if special and (a, b) == (0, 0):
            (pre if not mid and not post else post).append((t, -1, -1))
        elif b <= span[0]:
            pre.append((t, a, b))
        elif a >= span[1]:
            post.append((t, a, b))
        else:
            mid.append(t)
    return pre, mid, post


def align_pair(
    clean_batch: Tokenized,
    corrupted_batch: Tokenized,
    row: int,
    span: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> PairAlignment:
    """Align row ``row`` of two tokenised batches (see the module docstring)."""
    c_text, k_text = clean_batch.texts[row], corrupted_batch.texts[row]
    (cs, ks) = span if span is not None else diff_span(c_text, k_text)
    c_pre, c_mid, c_post = _token_groups(clean_batch, row, cs)
    k_pre, k_mid, k_post = _token_groups(corrupted_batch, row, ks)

    def fail(why: str) -> AlignmentError:
        return AlignmentError(
            f"pair {row} cannot be aligned by characters: {why}. clean={c_text!r} (span "
            f"{c_text[cs[0] : cs[1]]!r}), corrupted={k_text!r} (span {k_text[ks[0] : ks[1]]!r}). "
            "Give spans= explicitly, or make the texts differ in whole words"
        )

    if not c_mid or not k_mid:
        raise fail("the differing region covers no token in one of the texts")
    shift = ks[1] - cs[1]
    if len(c_pre) != len(k_pre) or len(c_post) != len(k_post):
        raise fail(
            f"{len(c_pre)}/{len(c_post)} tokens before/after the span in the clean text but "
            f"{len(k_pre)}/{len(k_post)} in the corrupted one (a token crosses the span edge)"
        )
    for (tc, a, b), (_tk, a2, b2) in zip(c_pre, k_pre, strict=True):
        if (a, b) != (a2, b2):
            raise fail(
                f"clean token {tc} {c_text[a:b]!r} has no counterpart at the same characters"
            )
    for (tc, a, b), (_tk, a2, b2) in zip(c_post, k_post, strict=True):
        if a >= 0 and (a + shift, b + shift) != (a2, b2):
            raise fail(f"clean token {tc} {c_text[a:b]!r} has no counterpart after the span")
    out = PairAlignment(cs, ks, n_pre=len(c_pre), n_post=len(c_post))
    for side, pre, mid, post in (
        (out.clean_tokens, c_pre, c_mid, c_post),
        (out.corrupted_tokens, k_pre, k_mid, k_post),
    ):
        for i, (t, _, _) in enumerate(pre):
            side[f"pre:{i}"] = [t]
        for j, (t, _, _) in enumerate(post):
            side[f"post:{j}"] = [t]
        side["span:first"] = [mid[0]]
        side["span:last"] = [mid[-1]]
        n_last = (post or [(mid[-1], 0, 0)])[-1][0]
        side["last"] = [n_last]
    k = min(len(c_mid), len(k_mid))
    out.clean_tokens["span"] = c_mid[-k:]
    out.corrupted_tokens["span"] = k_mid[-k:]
    return out


def explicit_spans(
    clean: Sequence[str], corrupted: Sequence[str], spans: Sequence[tuple[str, str]]
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Character spans of the last occurrence of each pair's two substrings."""
    if len(spans) != len(clean):
        raise AlignmentError(f"spans has {len(spans)} entries for {len(clean)} pairs")
    out = []
    for i, (c, k, (sc, sk)) in enumerate(zip(clean, corrupted, spans, strict=True)):
        try:
            out.append((char_span(c, sc), char_span(k, sk)))
        except SpanNotFoundError as exc:
            raise AlignmentError(f"pair {i}: {exc}") from exc
    return out


def default_labels(first: PairAlignment) -> list[str]:
    """Every label of a grid, in text order: ``pre:*``, ``span:first``, ``span:last``,
    ``post:*`` (``last`` is the final ``post:``, or ``span:last`` when nothing follows)."""
    labels = [f"pre:{i}" for i in range(first.n_pre)] + ["span:first", "span:last"]
    labels += [f"post:{j}" for j in range(first.n_post)]
    return labels


def check_labels(labels: Sequence[str], aligned: Sequence[PairAlignment]) -> list[str]:
    """Validate position labels against every pair; returns them as a list."""
    labels = list(labels)
    if not labels:
        raise AlignmentError("positions is empty; pass None (every token) or some labels")
    for lab in labels:
        if not isinstance(lab, str) or not _LABEL.match(lab):
            raise AlignmentError(
                f"unknown position {lab!r}; use 'last', 'span', 'span:first', 'span:last', "
                "'pre:i' (i-th token before the span) or 'post:j' (j-th token after it)"
            )
    ref = aligned[0]
    for i, pa in enumerate(aligned):
        if (pa.n_pre, pa.n_post) != (ref.n_pre, ref.n_post):
            raise AlignmentError(
                f"pair {i} has {pa.n_pre} tokens before and {pa.n_post} after its span, pair 0 "
                f"has {ref.n_pre} and {ref.n_post}: 'pre:'/'post:' columns would mean different "
                "words; use pairs from one template, or positions such as ['span:last', 'last']"
            )
        for lab in labels:
            if lab not in pa.clean_tokens:
                raise AlignmentError(
                    f"position {lab!r} does not exist in pair {i} ({pa.n_pre} tokens before "
                    f"the span, {pa.n_post} after it)"
                )
    return labels


def display_label(label: str, batch: Tokenized, aligned: PairAlignment) -> str:
    """``label`` with the first pair's clean token text, for plots (``pre:2 ' of'``)."""
    toks = aligned.clean_tokens[label]
    text = batch.texts[0]
    pieces = []
    for t in toks:
        a, b = (int(x) for x in batch.offsets[0, t])
        pieces.append(text[a:b] if b > a else "<bos>")
    return f"{label} {''.join(pieces)!r}"
