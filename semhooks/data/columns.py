"""Hugging Face ``datasets`` in, Python values out: one coercion for every entry point.

Researchers keep prompts and labels as a ``datasets.Dataset``; semhooks' functions take
Python lists. :func:`from_columns` turns a ``Dataset`` (or a ``Column``, what
``dataset["text"]`` returns in ``datasets`` 4+) into what a function already takes; any
other value passes through untouched. It is called at the top of ``extract_states`` (texts
and ``tokens=`` spans), ``vocab_lens``, ``generate``, ``steering_curve``,
``relations.validate``, the LRE/LRC prompt checks, ``pooling_study``, ``calibration_study``
and ``collect_pairs``/``information_emergence``; :func:`wic_items` reads WiC datasets for
``wic_study``. Columns are found by name: ``text``, ``label``
(``ClassLabel`` names become ``label_names``), ``span``, ``subject``/``object``/``relation``
for prompts. Rename yours first (``dataset.rename_column("sentence", "text")``).

``datasets`` is an optional dependency (``pip install semhooks[datasets]``); it is never
imported here: a value is recognised by its type's module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

Kind = Literal["texts", "labelled", "records"]
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "texts": ("text",),
    "labelled": ("text", "label"),
    "records": ("text", "subject", "object"),
}
OPTIONAL_RECORD_COLUMNS = ("relation", "template")


def is_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a ``datasets.Dataset`` (checked without importing ``datasets``)."""
    mod = type(obj).__module__ or ""
    return mod.split(".")[0] == "datasets" and hasattr(obj, "column_names")


def _is_column(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.split(".")[0] == "datasets" and not hasattr(obj, "column_names")


def _column(ds: Any, name: str, what: str) -> list[Any]:
    if name not in ds.column_names:
        raise KeyError(
            f"{what} needs a column {name!r}; this Dataset has columns {ds.column_names}. "
            f"Rename one (dataset.rename_column(old, {name!r})) or pass a list"
        )
    return list(ds[name])


def _labels(ds: Any, name: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    values = _column(ds, name, "labelled texts")
    feature = getattr(ds, "features", {}).get(name)
    names = getattr(feature, "names", None)  # a ClassLabel
    if names is not None:
        return np.asarray(values, dtype=np.int64), tuple(str(n) for n in names)
    if values and all(isinstance(v, str) for v in values):
        classes = sorted(set(values))
        index = {c: i for i, c in enumerate(classes)}
        return np.asarray([index[v] for v in values], dtype=np.int64), tuple(classes)
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return np.asarray(values, dtype=np.int64), ("false", "true")
    return np.asarray(values), None


def from_columns(
    obj: Any,
    kind: Kind = "texts",
    *,
    columns: Sequence[str] | None = None,
    build: Callable[..., Any] | None = None,
) -> Any:
    """``obj`` as the Python value an entry point takes, if it is a ``datasets`` object.

    - ``"texts"``: a ``Dataset`` becomes the list of its ``columns[0]`` (default ``text``)
      column; a ``Column`` becomes a list.
    - ``"labelled"``: a ``Dataset`` becomes ``build(texts, labels, label_names, name)``
      (default :class:`~semhooks.data.loaders.TextClassificationDataset`) from the
      ``text``/``label`` columns; string labels are numbered in sorted order, a
      ``ClassLabel``'s names are kept.
    - ``"records"``: a ``Dataset`` becomes ``[build(**row), ...]`` from the named columns
      (default ``text``, ``subject``, ``object``, plus ``relation``/``template`` when
      present), e.g. ``build=RelationPrompt``.

    Anything else is returned unchanged. Raises ``KeyError`` naming a missing column and the
    columns the dataset has.
    """
    if _is_column(obj):
        return list(obj)
    if not is_dataset(obj):
        return obj
    cols = tuple(columns) if columns is not None else DEFAULT_COLUMNS[kind]
    if kind == "texts":
        return [str(t) for t in _column(obj, cols[0], "texts")]
    if kind == "labelled":
        from semhooks.data.loaders import TextClassificationDataset

        texts = [str(t) for t in _column(obj, cols[0], "labelled texts")]
        labels, names = _labels(obj, cols[1])
        make = build or TextClassificationDataset
        name = str(getattr(getattr(obj, "info", None), "dataset_name", None) or "datasets")
        if names is None:
            return make(texts, labels, name=name)
        return make(texts, labels, names, name=name)
    if kind == "records":
        if build is None:
            raise TypeError("from_columns(kind='records') needs build= (e.g. RelationPrompt)")
        extra = [c for c in OPTIONAL_RECORD_COLUMNS if c in obj.column_names and c not in cols]
        data = {c: _column(obj, c, "records") for c in (*cols, *extra)}
        return [build(**{c: data[c][i] for c in data}) for i in range(len(obj))]
    raise ValueError(f"unknown kind {kind!r}; use 'texts', 'labelled' or 'records'")


def wic_items(obj: Any) -> Any:
    """A WiC ``Dataset`` as ``[WiCItem, ...]``; anything else unchanged.

    Two layouts are read: semhooks' own (``lemma``, ``pos``, ``sentence1``, ``sentence2``,
    ``index1``, ``index2``, ``label``) and SuperGLUE's (``word``, ``sentence1``, ``sentence2``,
    ``start1``, ``start2``, ``end1``, ``end2``, ``label``: character offsets, turned into
    whitespace-token indices; ``label`` 0/1, or -1 for no gold). Raises ``KeyError`` naming
    the missing columns.
    """
    if not is_dataset(obj):
        return obj
    from semhooks.data.wic import WiCItem

    cols = set(obj.column_names)
    own = {"sentence1", "sentence2", "index1", "index2"}
    glue = {"word", "sentence1", "sentence2", "start1", "start2"}
    if not (own <= cols or glue <= cols):
        raise KeyError(
            f"a WiC Dataset needs columns {sorted(own)} (+ lemma, pos, label) or SuperGLUE's "
            f"{sorted(glue)} (+ label); this one has {obj.column_names}"
        )

    def gold(value: Any) -> bool | None:
        if value is None or (isinstance(value, (int, np.integer)) and int(value) < 0):
            return None
        return bool(value)

    items = []
    for row in obj:
        s1, s2 = str(row["sentence1"]), str(row["sentence2"])
        if own <= cols:
            i1, i2 = int(row["index1"]), int(row["index2"])
        else:  # the target's whitespace-token index: how many tokens start before it
            i1, i2 = len(s1[: int(row["start1"])].split()), len(s2[: int(row["start2"])].split())
        lemma = str(row["lemma"] if "lemma" in cols else row["word"])
        pos = str(row["pos"]) if "pos" in cols else "?"
        items.append(WiCItem(lemma, pos, s1, s2, i1, i2, gold(row.get("label"))))
    return items
