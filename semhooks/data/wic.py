"""WiC word-in-context pairs (Pilehvar & Camacho-Collados 2019) with the character span of
the target word in each sentence (METHODS.md section 2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from semhooks.data.lines import PathLike, read_lines, user_path

_NON_SPACE = re.compile(r"\S+")


def _whitespace_spans(sentence: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the whitespace-separated tokens of ``sentence``.

    Same tokens as ``sentence.split()`` (both treat non-breaking spaces as whitespace).
    """
    return [m.span() for m in _NON_SPACE.finditer(sentence)]


@dataclass(frozen=True)
class WiCItem:
    """One WiC pair: does ``lemma`` have the same sense in both sentences?

    Sentences are pre-tokenised (a space before punctuation); ``index1``/``index2`` index the
    target word among ``sentence.split()``. ``char_span1``/``char_span2`` are computed from them
    on construction: ``sentence1[slice(*char_span1)]`` is the target word as written (often
    inflected: lemma ``"go"``, word ``"went"``), ready for offset-based token selection.

    Attributes:
        lemma: the target lemma.
        pos: part of speech, ``"N"`` or ``"V"`` in WiC.
        sentence1, sentence2: the two contexts.
        index1, index2: whitespace-token index of the target word in each sentence.
        label: True if the sense is the same, False if not, None when no gold is available.
        char_span1, char_span2: ``(start, end)`` character span of the target in each sentence.

    Raises:
        ValueError: an index is outside its sentence's tokens.
    """

    lemma: str
    pos: str
    sentence1: str
    sentence2: str
    index1: int
    index2: int
    label: bool | None = None
    char_span1: tuple[int, int] = field(init=False)
    char_span2: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        for which, sentence, index in (
            (1, self.sentence1, self.index1),
            (2, self.sentence2, self.index2),
        ):
            spans = _whitespace_spans(sentence)
            if not 0 <= index < len(spans):
                raise ValueError(
                    f"index{which}={index} is out of range: sentence{which} has {len(spans)} "
                    f"whitespace tokens (valid indices 0..{len(spans) - 1}): {sentence!r}"
                )
            object.__setattr__(self, f"char_span{which}", spans[index])

    @property
    def word1(self) -> str:
        """The target word as written in ``sentence1``."""
        return self.sentence1[self.char_span1[0] : self.char_span1[1]]

    @property
    def word2(self) -> str:
        """The target word as written in ``sentence2``."""
        return self.sentence2[self.char_span2[0] : self.char_span2[1]]


_WIC_SPLITS = ("dev", "train")
_WIC_FIELDS = "lemma, POS, i-j, sentence1, sentence2"
_INDEX_PAIR = re.compile(r"(\d+)-(\d+)")


def _parse_gold(where: str, lines: list[str]) -> list[bool]:
    gold = []
    for lineno, line in enumerate(lines, start=1):
        value = line.strip()
        if not value:
            raise ValueError(f"{where}:{lineno}: blank line (only allowed at the end of the file)")
        if value not in ("T", "F"):
            raise ValueError(f"{where}:{lineno}: expected a gold label 'T' or 'F', got {line!r}")
        gold.append(value == "T")
    return gold


def load_wic(
    split: PathLike = "dev",
    *,
    gold: PathLike | None = None,
    normalize_whitespace: bool = True,
) -> list[WiCItem]:
    """Load WiC pairs: the bundled ``"dev"`` (638) or ``"train"`` (5,428) split, or a user file.

    Format (``*.data.txt``): ``lemma<TAB>POS<TAB>i-j<TAB>sentence1<TAB>sentence2`` with ``i``/``j``
    the whitespace-token indices of the target word; gold (``*.gold.txt``): one ``T``/``F`` per
    line. For a user ``foo.data.txt`` the gold file ``foo.gold.txt`` beside it is used when it
    exists (or pass ``gold=``); without gold, labels are None. The WiC test split is not bundled.

    Args:
        split: ``"dev"``, ``"train"`` or a path to a ``*.data.txt``-format file.
        gold: explicit gold file (overrides the lookup beside ``split``).
        normalize_whitespace: collapse whitespace runs to one space and strip the ends (two
            train lines contain non-breaking spaces). Token indices are unchanged by this.

    Returns:
        One :class:`WiCItem` per line, in file order.

    Raises:
        ValueError: a malformed line, an index out of range, a bad gold label (all naming the
            file and line number), an empty file, or data/gold line counts that differ.
        FileNotFoundError: ``split`` is not a bundled split and not an existing file.
    """
    gold_path: Path | None = Path(gold) if gold is not None else None
    if isinstance(split, str) and split in _WIC_SPLITS:
        where, lines = read_lines(None, f"wic/{split}.data.txt")
        gold_where, gold_lines = (
            read_lines(gold_path, None)
            if gold_path is not None
            else read_lines(None, f"wic/{split}.gold.txt")
        )
    else:
        if split == "test":
            raise ValueError(
                "the WiC test split is not bundled; pass the path to your copy of "
                "test.data.txt (its gold file test.gold.txt beside it is used if present)"
            )
        path = user_path(split, "WiC split", _WIC_SPLITS)
        if path.name.endswith(".gold.txt"):
            raise ValueError(f"{path} looks like a gold file; pass the *.data.txt file instead")
        if gold_path is None and path.name.endswith(".data.txt"):
            candidate = path.with_name(path.name[: -len(".data.txt")] + ".gold.txt")
            gold_path = candidate if candidate.is_file() else None
        where, lines = read_lines(path, None)
        gold_where, gold_lines = read_lines(gold_path, None) if gold_path else ("", [])

    if not lines:
        raise ValueError(f"{where}: empty WiC file (expected lines of {_WIC_FIELDS})")
    labels: list[bool | None]
    if gold_where:
        labels = list(_parse_gold(gold_where, gold_lines))
        if len(labels) != len(lines):
            raise ValueError(
                f"{where} has {len(lines)} lines but its gold file {gold_where} has "
                f"{len(labels)}: they must match line for line"
            )
    else:
        labels = [None] * len(lines)

    items = []
    for lineno, (line, label) in enumerate(zip(lines, labels, strict=True), start=1):
        if not line.strip():
            raise ValueError(f"{where}:{lineno}: blank line (only allowed at the end of the file)")
        fields = line.split("\t")
        if len(fields) != 5:
            raise ValueError(
                f"{where}:{lineno}: expected 5 tab-separated fields ({_WIC_FIELDS}), "
                f"found {len(fields)}: {line!r}"
            )
        lemma, pos, indices, sentence1, sentence2 = fields
        match = _INDEX_PAIR.fullmatch(indices.strip())
        if match is None:
            raise ValueError(
                f"{where}:{lineno}: third field must be the target indices 'i-j' "
                f"(two non-negative integers), got {indices!r}"
            )
        for name, value in (("lemma", lemma), ("POS", pos)):
            if not value.strip():
                raise ValueError(f"{where}:{lineno}: empty {name} field")
        if normalize_whitespace:
            sentence1, sentence2 = " ".join(sentence1.split()), " ".join(sentence2.split())
        try:
            item = WiCItem(
                lemma=lemma.strip(),
                pos=pos.strip(),
                sentence1=sentence1,
                sentence2=sentence2,
                index1=int(match.group(1)),
                index2=int(match.group(2)),
                label=label,
            )
        except ValueError as err:
            raise ValueError(f"{where}:{lineno}: {err}") from None
        items.append(item)
    return items
