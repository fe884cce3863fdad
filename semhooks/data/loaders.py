"""Loaders for the datasets bundled in ``semhooks/data`` (pure Python + numpy, no model code).

- :func:`load_wic`: WiC word-in-context pairs (Pilehvar & Camacho-Collados 2019), with the
  character span of the target word in each sentence, for the layer-wise lexical-semantics
  study of Liu et al. 2024 (METHODS.md section 2).
- :func:`load_sst2`, :func:`load_sentiment`: binary sentiment sets (GLUE SST-2, UCI Sentiment
  Labelled Sentences) as a :class:`TextClassificationDataset`, for pooling/probe studies
  (METHODS.md section 3) and vocabulary-defined calibration (section 4).
- :func:`load_entities`: a short list of common nouns for in-context item lists
  (information emergence, section 7).
- :data:`DATA_LICENSES`: what each bundled dataset may be used for and whom to credit.

The relation dataset of Hernandez et al. 2023 is loaded by :mod:`semhooks.relations`.

Every loader reads the files shipped inside the package through :mod:`importlib.resources`;
user files of the same formats are accepted wherever a path is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import train_test_split

from semhooks.data import data_file

__all__ = [
    "DATA_LICENSES",
    "DataLicense",
    "SENTIMENT_DATASETS",
    "TextClassificationDataset",
    "WiCItem",
    "load_entities",
    "load_sentiment",
    "load_sst2",
    "load_wic",
]


# --------------------------------------------------------------------------------------------
# Licenses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataLicense:
    """License and attribution of one bundled dataset.

    Attributes:
        dataset: key in :data:`DATA_LICENSES`.
        license: the license, e.g. ``"CC BY-NC 4.0"``.
        attribution: whom to credit (paper and authors).
        source: where the files come from.
        notice: path of the notice/license file, relative to ``semhooks/data``.
        commercial_use: False when the license forbids commercial use.
    """

    dataset: str
    license: str
    attribution: str
    source: str
    notice: str
    commercial_use: bool


DATA_LICENSES: Mapping[str, DataLicense] = MappingProxyType(
    {
        "relations": DataLicense(
            dataset="relations",
            license="MIT (Copyright (c) 2022 Evan Hernandez)",
            attribution=(
                "Hernandez et al. 2023, 'Linearity of Relation Decoding in Transformer "
                "Language Models'"
            ),
            source="https://github.com/evandez/relations",
            notice="relations/LICENSE",
            commercial_use=True,
        ),
        "wic": DataLicense(
            dataset="wic",
            license="CC BY-NC 4.0",
            attribution=(
                "Pilehvar & Camacho-Collados, 'WiC: the Word-in-Context Dataset for "
                "Evaluating Context-Sensitive Meaning Representations', NAACL 2019"
            ),
            source="https://pilehvar.github.io/wic/ (WiC v1.0)",
            notice="wic/NOTICE",
            commercial_use=False,
        ),
        "sst2": DataLicense(
            dataset="sst2",
            license="no explicit license; customary non-commercial research use",
            attribution=(
                "Socher et al., 'Recursive Deep Models for Semantic Compositionality Over a "
                "Sentiment Treebank', EMNLP 2013; distributed in GLUE (Wang et al., ICLR 2019)"
            ),
            source="GLUE SST-2 (dev split; seeded balanced 6,000-row sample of train)",
            notice="sst2/NOTICE",
            commercial_use=False,
        ),
        "sentiment": DataLicense(
            dataset="sentiment",
            license="CC BY 4.0",
            attribution=(
                "Kotzias, Denil, de Freitas & Smyth, 'From Group to Individual Labels using "
                "Deep Features', KDD 2015"
            ),
            source="UCI Machine Learning Repository, 'Sentiment Labelled Sentences'",
            notice="sentiment/NOTICE",
            commercial_use=True,
        ),
        "entities": DataLicense(
            dataset="entities",
            license="public domain (CC0 1.0)",
            attribution="written for semhooks",
            source="semhooks",
            notice="entities.txt",
            commercial_use=True,
        ),
    }
)


# --------------------------------------------------------------------------------------------
# Reading lines
# --------------------------------------------------------------------------------------------

PathLike = str | os.PathLike[str]


def _read_lines(path: Path | None, relpath: str | None) -> tuple[str, list[str]]:
    """Read a user file (``path``) or a bundled one (``relpath``) as lines.

    Returns ``(name for error messages, lines)``. Lines are split on ``"\\n"`` only, because
    ``imdb_labelled.txt`` holds U+0085 (NEL) inside sentences and :meth:`str.splitlines` would
    break those sentences in two. A trailing ``"\\r"`` is dropped (CRLF files) and trailing
    blank lines are removed; blank lines elsewhere are kept so callers can report them.
    """
    if path is not None:
        where = str(path)
        text = path.read_text(encoding="utf-8-sig")
    else:
        assert relpath is not None
        where = f"<bundled semhooks/data/{relpath}>"
        text = data_file(relpath).read_text(encoding="utf-8")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return where, lines


def _user_path(value: PathLike, what: str, valid: Sequence[str]) -> Path:
    path = Path(value)
    if not path.is_file():
        choices = ", ".join(repr(v) for v in valid)
        raise FileNotFoundError(
            f"{what} {str(value)!r} is neither a bundled name ({choices}) nor an existing file"
        )
    return path


# --------------------------------------------------------------------------------------------
# WiC
# --------------------------------------------------------------------------------------------

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
        where, lines = _read_lines(None, f"wic/{split}.data.txt")
        gold_where, gold_lines = (
            _read_lines(gold_path, None)
            if gold_path is not None
            else _read_lines(None, f"wic/{split}.gold.txt")
        )
    else:
        if split == "test":
            raise ValueError(
                "the WiC test split is not bundled; pass the path to your copy of "
                "test.data.txt (its gold file test.gold.txt beside it is used if present)"
            )
        path = _user_path(split, "WiC split", _WIC_SPLITS)
        if path.name.endswith(".gold.txt"):
            raise ValueError(f"{path} looks like a gold file; pass the *.data.txt file instead")
        if gold_path is None and path.name.endswith(".data.txt"):
            candidate = path.with_name(path.name[: -len(".data.txt")] + ".gold.txt")
            gold_path = candidate if candidate.is_file() else None
        where, lines = _read_lines(path, None)
        gold_where, gold_lines = _read_lines(gold_path, None) if gold_path else ("", [])

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


# --------------------------------------------------------------------------------------------
# Text classification (sentiment)
# --------------------------------------------------------------------------------------------


@dataclass
class TextClassificationDataset:
    """Texts with integer class labels.

    Attributes:
        texts: the texts, ``n`` strings.
        labels: ``int64[n]``, values in ``0 .. len(label_names) - 1``.
        label_names: class names by label id (``("negative", "positive")`` for sentiment).
        name: dataset name, with ``[...]`` suffixes added by :meth:`subsample`/:meth:`split`.
        license: license of the source data (see :data:`DATA_LICENSES`).

    Raises:
        ValueError: lengths differ or a label is out of range.
    """

    texts: list[str]
    labels: npt.NDArray[np.int64]
    label_names: tuple[str, ...] = ("negative", "positive")
    name: str = "custom"
    license: str = "unknown"

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.label_names = tuple(self.label_names)
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(self.texts):
            raise ValueError(
                f"{self.name}: labels must be 1-D with one label per text; got shape "
                f"{labels.shape} for {len(self.texts)} texts"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{self.name}: labels must be integers, got dtype {labels.dtype}")
        self.labels = labels.astype(np.int64)
        bad = (self.labels < 0) | (self.labels >= len(self.label_names))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{self.name}: label {int(self.labels[i])} of item {i} is outside "
                f"0..{len(self.label_names) - 1} (label_names={self.label_names})"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """Iterate ``(text, label)`` pairs."""
        return iter(zip(self.texts, self.labels.tolist(), strict=True))

    def class_counts(self) -> dict[str, int]:
        """Number of items per class name."""
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts, strict=True)}

    def take(
        self, indices: Sequence[int] | npt.NDArray[np.integer], suffix: str = ""
    ) -> TextClassificationDataset:
        """A new dataset with the items at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return TextClassificationDataset(
            texts=[self.texts[i] for i in idx.tolist()],
            labels=self.labels[idx],
            label_names=self.label_names,
            name=f"{self.name}{suffix}",
            license=self.license,
        )

    def _by_class(self) -> list[npt.NDArray[np.int64]]:
        return [np.flatnonzero(self.labels == c) for c in range(len(self.label_names))]

    def subsample(
        self, n: int, seed: int = 0, *, balanced: bool = True
    ) -> TextClassificationDataset:
        """Draw ``n`` items without replacement, per class, keeping file order.

        Args:
            n: number of items, ``1 <= n <= len(self)``.
            seed: seed of the numpy generator (same seed, same items).
            balanced: equal counts per class (the first ``n % k`` classes get one more);
                otherwise proportional to the class frequencies (stratified).

        Raises:
            ValueError: ``n`` out of range, or a class too small for a balanced draw.
        """
        if not 1 <= n <= len(self):
            raise ValueError(f"{self.name}: cannot subsample n={n} of {len(self)} items")
        groups = self._by_class()
        k = len(groups)
        if balanced:
            want = np.full(k, n // k, dtype=np.int64)
            want[: n % k] += 1
            for c, (group, w) in enumerate(zip(groups, want, strict=True)):
                if w > len(group):
                    raise ValueError(
                        f"{self.name}: a balanced sample of {n} needs {w} items of class "
                        f"{self.label_names[c]!r} but it has {len(group)}; lower n or pass "
                        "balanced=False"
                    )
        else:
            suffix = f"[subsample n={n} seed={seed} stratified]"
            if n == len(self):
                return self.take(np.arange(n), suffix)
            chosen_idx, _ = train_test_split(
                np.arange(len(self)), train_size=n, stratify=self.labels, random_state=seed
            )
            return self.take(np.sort(chosen_idx), suffix)
        rng = np.random.default_rng(seed)
        chosen = [
            rng.choice(g, size=int(w), replace=False) for g, w in zip(groups, want, strict=True)
        ]
        suffix = f"[subsample n={n} seed={seed}{'' if balanced else ' stratified'}]"
        return self.take(np.sort(np.concatenate(chosen)), suffix)

    def split(
        self, test_size: float | int = 0.5, seed: int = 0
    ) -> tuple[TextClassificationDataset, TextClassificationDataset]:
        """Stratified train/test split (class proportions kept in both parts), file order kept.

        Args:
            test_size: a fraction in (0, 1) or a number of test items in ``1 .. len - 1``.
            seed: seed of the numpy generator.

        Returns:
            ``(train, test)``.
        """
        n = len(self)
        if isinstance(test_size, (int, np.integer)) and not isinstance(test_size, bool):
            n_test = int(test_size)
        elif isinstance(test_size, float) and 0.0 < test_size < 1.0:
            n_test = int(round(test_size * n))
        else:
            raise ValueError(
                f"{self.name}: test_size must be a fraction in (0, 1) or an item count, "
                f"got {test_size!r}"
            )
        if not 1 <= n_test <= n - 1:
            raise ValueError(
                f"{self.name}: test_size={test_size!r} gives {n_test} test items of {n}; "
                "both parts must be non-empty"
            )
        train_idx, test_idx = train_test_split(
            np.arange(n), test_size=n_test, stratify=self.labels, random_state=seed
        )
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        tag = f"seed={seed}"
        return self.take(train_idx, f"[train {tag}]"), self.take(test_idx, f"[test {tag}]")


_SENTIMENT_FILES: Mapping[str, tuple[str, str, bool]] = MappingProxyType(
    {
        # name: (bundled path, DATA_LICENSES key, has a header line)
        "sst2-dev": ("sst2/dev.tsv", "sst2", True),
        "sst2-train_sample": ("sst2/train_sample.tsv", "sst2", True),
        "amazon_cells": ("sentiment/amazon_cells_labelled.txt", "sentiment", False),
        "imdb": ("sentiment/imdb_labelled.txt", "sentiment", False),
        "yelp": ("sentiment/yelp_labelled.txt", "sentiment", False),
    }
)
SENTIMENT_DATASETS: tuple[str, ...] = tuple(_SENTIMENT_FILES)
"""Names accepted by :func:`load_sentiment`."""

_C1_CONTROLS = re.compile("[\x80-\x9f]")


def _fix_c1(match: re.Match[str]) -> str:
    # Windows-1252 text decoded as Latin-1 turns "…" into U+0085 and "–" into U+0096
    # (imdb_labelled.txt has 8 such characters); map them back, keep undefined ones.
    try:
        return match.group().encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:
        return match.group()


def _clean_text(text: str) -> str:
    return _C1_CONTROLS.sub(_fix_c1, text).strip()


def load_sentiment(
    name: PathLike = "amazon_cells",
    *,
    limit: int | None = None,
    seed: int = 0,
    clean: bool = True,
    label_names: Sequence[str] = ("negative", "positive"),
) -> TextClassificationDataset:
    """Load a bundled sentiment set (``SENTIMENT_DATASETS``) or a user file of the same format.

    Bundled: ``"sst2-dev"`` (872), ``"sst2-train_sample"`` (6,000), ``"amazon_cells"``,
    ``"imdb"``, ``"yelp"`` (1,000 each, UCI). Every line is ``text<TAB>label``, split on the
    *last* tab with no CSV quoting (texts contain quote characters); label 1 = positive. A
    first line whose label field is not an integer (``sentence<TAB>label``) is a header.

    Args:
        name: a bundled name or a path to a ``text<TAB>label`` file.
        limit: keep at most this many items, class-balanced
            (:meth:`TextClassificationDataset.subsample`); None or ``limit >= len`` keeps all.
        seed: seed for ``limit``.
        clean: strip surrounding whitespace (SST-2 lines end in a space, IMDB lines in two)
            and repair Windows-1252 characters stored as C1 controls (U+0085 -> "…").
        label_names: class names for a user file (labels must be ``0 .. len - 1``).

    Raises:
        ValueError: a line without a tab, a non-integer or out-of-range label, an empty text
            (naming file and line), or an empty file.
        FileNotFoundError: ``name`` is neither bundled nor an existing file.
    """
    if isinstance(name, str) and name in _SENTIMENT_FILES:
        relpath, license_key, header = _SENTIMENT_FILES[name]
        where, lines = _read_lines(None, relpath)
        license_ = DATA_LICENSES[license_key].license
        label_names = ("negative", "positive")
        dataset_name = name
    else:
        path = _user_path(name, "sentiment dataset", SENTIMENT_DATASETS)
        where, lines = _read_lines(path, None)
        license_ = "unknown (user file)"
        dataset_name = path.stem
        header = bool(lines) and "\t" in lines[0] and not _is_int(lines[0].rsplit("\t", 1)[1])
    body = lines[1:] if header else lines
    first = 2 if header else 1
    if not body:
        raise ValueError(f"{where}: no data lines (expected text<TAB>label per line)")
    texts, labels = [], []
    n_classes = len(label_names)
    for lineno, line in enumerate(body, start=first):
        if not line.strip():
            raise ValueError(f"{where}:{lineno}: blank line (only allowed at the end of the file)")
        if "\t" not in line:
            raise ValueError(f"{where}:{lineno}: expected 'text<TAB>label', no tab in {line!r}")
        text, raw_label = line.rsplit("\t", 1)
        if not _is_int(raw_label):
            raise ValueError(f"{where}:{lineno}: label must be an integer, got {raw_label!r}")
        label = int(raw_label)
        if not 0 <= label < n_classes:
            raise ValueError(
                f"{where}:{lineno}: label {label} is outside 0..{n_classes - 1} "
                f"(label_names={tuple(label_names)})"
            )
        if clean:
            text = _clean_text(text)
        if not text.strip():
            raise ValueError(f"{where}:{lineno}: empty text")
        texts.append(text)
        labels.append(label)
    dataset = TextClassificationDataset(
        texts=texts,
        labels=np.array(labels, dtype=np.int64),
        label_names=tuple(label_names),
        name=dataset_name,
        license=license_,
    )
    if limit is not None and limit < len(dataset):
        dataset = dataset.subsample(limit, seed)
    return dataset


def _is_int(value: str) -> bool:
    return re.fullmatch(r"\s*[+-]?\d+\s*", value) is not None


def load_sst2(
    split: str = "dev", *, limit: int | None = None, seed: int = 0, clean: bool = True
) -> TextClassificationDataset:
    """Load bundled SST-2: ``"dev"`` (GLUE dev, 872 sentences: 428 negative, 444 positive) or
    ``"train_sample"`` (6,000 balanced rows of GLUE train, phrases and sentences).

    Same options as :func:`load_sentiment`.
    """
    if split not in ("dev", "train_sample"):
        raise ValueError(
            f"unknown SST-2 split {split!r}: bundled splits are 'dev' and 'train_sample' "
            "(GLUE SST-2 test labels are not public)"
        )
    return load_sentiment(f"sst2-{split}", limit=limit, seed=seed, clean=clean)


# --------------------------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------------------------


def load_entities() -> list[str]:
    """Sixty common single-word English nouns (30 animals, then 30 everyday objects), e.g.
    ``"Ant"``, ``"Bat"``, ``"Fox"``: items for in-context lists. Public domain (CC0)."""
    _, lines = _read_lines(None, "entities.txt")
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
