"""Binary sentiment sets (GLUE SST-2, UCI Sentiment Labelled Sentences) as a
:class:`TextClassificationDataset`, with seeded stratified subsampling and splitting."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import train_test_split

from semhooks.data.licenses import DATA_LICENSES
from semhooks.data.lines import PathLike, read_lines, user_path


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
        where, lines = read_lines(None, relpath)
        license_ = DATA_LICENSES[license_key].license
        label_names = ("negative", "positive")
        dataset_name = name
    else:
        path = user_path(name, "sentiment dataset", SENTIMENT_DATASETS)
        where, lines = read_lines(path, None)
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
