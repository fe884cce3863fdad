"""The relation dataset of Hernandez et al. 2023 (47 relations, 11,089 samples), loaded clean.

Each relation is a JSON file with ``name``, ``prompt_templates`` (one ``{}`` for the
subject, used for few-shot LRE prompts), ``prompt_templates_zs`` (zero-shot prompts),
``properties`` (``relation_type``, ``domain_name``, ``range_name``, ``symmetric``) and
``samples: [{subject, object}]``. The files ship byte for byte in
``semhooks/data/relations/<category>/<name>.json`` (MIT, Copyright (c) 2022 Evan Hernandez);
:func:`load` fixes their quirks at load time:

- subjects and objects are stripped (``"Bon Jovi "``, ``"Jimmy Carter "``);
- literal escape text is decoded (``country_capital_city`` stores ``"Bras\\u00edlia"`` as
  ten characters; it becomes ``"Brasília"``);
- exact duplicate (subject, object) pairs are dropped, and when a subject appears again
  with a different object only its first object is kept (``superhero_person`` lists five
  Green Lanterns; ``adj_antonym`` gives "happy" both "sad" and "angry"), so that every
  subject has one answer, which LRE faithfulness and LRC classification assume. What was
  dropped is recorded on the :class:`Relation` (``n_dropped_duplicates``, ``dropped``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

from semhooks.data import data_root

__all__ = [
    "CATEGORIES",
    "Relation",
    "RelationSample",
    "UnknownRelationError",
    "list_relations",
    "load",
]

CATEGORIES: tuple[str, ...] = ("factual", "commonsense", "linguistic", "bias")
"""The four relation categories of Hernandez et al. 2023 (the bundled sub-folders)."""

_REQUIRED_KEYS = ("prompt_templates", "samples")
_OPTIONAL_KEYS = ("name", "prompt_templates_zs", "properties")


class RelationSample(NamedTuple):
    """One (subject, object) pair; unpacks as ``subject, obj = sample``."""

    subject: str
    object: str


class UnknownRelationError(ValueError, KeyError):
    """No bundled relation has this name. A ValueError that is also a KeyError."""

    def __str__(self) -> str:
        # KeyError.__str__ would show the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


@dataclass
class Relation:
    """A relation: prompt templates and cleaned (subject, object) samples.

    Attributes:
        name: identifier, the JSON file's stem (``"country_capital_city"``).
        category: ``"factual"``, ``"commonsense"``, ``"linguistic"`` or ``"bias"`` for a
            bundled relation; None for a user file (see ``properties["relation_type"]``).
        prompt_templates: few-shot templates, each with one ``{}`` for the subject.
        prompt_templates_zs: zero-shot templates, each with one ``{}``.
        properties: the JSON ``properties`` (``relation_type``, ``domain_name``,
            ``range_name``, ``symmetric``).
        samples: cleaned, de-duplicated samples, in file order.
        title: the JSON ``name`` field (``"country capital city"``).
        dropped: ``(sample, reason)`` for every sample removed by cleaning, reason
            ``"duplicate"`` (same pair seen before) or ``"conflict"`` (subject seen before
            with another object).
        source: where it was loaded from.
    """

    name: str
    category: str | None
    prompt_templates: list[str]
    prompt_templates_zs: list[str]
    properties: dict[str, Any]
    samples: list[RelationSample]
    title: str = ""
    dropped: list[tuple[RelationSample, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[RelationSample]:
        return iter(self.samples)

    @property
    def n_dropped_duplicates(self) -> int:
        """Number of raw samples dropped: exact duplicates plus repeated subjects."""
        return len(self.dropped)

    @property
    def subjects(self) -> list[str]:
        """Subjects in sample order."""
        return [s.subject for s in self.samples]

    @property
    def objects(self) -> list[str]:
        """Distinct objects, sorted."""
        return sorted({s.object for s in self.samples})

    def by_object(self) -> dict[str, list[RelationSample]]:
        """Samples grouped by object (keys sorted, samples in file order)."""
        groups: dict[str, list[RelationSample]] = {o: [] for o in self.objects}
        for sample in self.samples:
            groups[sample.object].append(sample)
        return groups

    def __repr__(self) -> str:
        return (
            f"Relation(name={self.name!r}, category={self.category!r}, "
            f"n_samples={len(self.samples)}, n_objects={len(self.objects)}, "
            f"n_dropped_duplicates={self.n_dropped_duplicates})"
        )


# --------------------------------------------------------------------------------------------
# Bundled index
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _bundled() -> dict[str, str]:
    """``{stem: category}`` for every bundled relation file."""
    root = data_root().joinpath("relations")
    index: dict[str, str] = {}
    for category in CATEGORIES:
        for entry in root.joinpath(category).iterdir():
            if entry.name.endswith(".json"):
                index[entry.name[: -len(".json")]] = category
    return index


def _normalize(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


@lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    """``{normalized alias: stem}``: stems and the JSON ``name`` fields (read once)."""
    aliases: dict[str, str] = {}
    for stem, category in _bundled().items():
        aliases[_normalize(stem)] = stem
        raw = json.loads(_bundled_text(category, stem))
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            aliases.setdefault(_normalize(raw["name"]), stem)
    return aliases


def _bundled_text(category: str, stem: str) -> str:
    entry = data_root().joinpath("relations", category, f"{stem}.json")
    return entry.read_text(encoding="utf-8")


def list_relations(category: str | None = None) -> list[str]:
    """Sorted names of the bundled relations (47), optionally of one category.

    Raises:
        ValueError: ``category`` is not one of :data:`CATEGORIES`.
    """
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown relation category {category!r}; choose one of {CATEGORIES}")
    return sorted(s for s, c in _bundled().items() if category is None or c == category)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})")


def _decode_escapes(text: str) -> str:
    """Turn literal ``\\uXXXX``/``\\UXXXXXXXX`` escape text into the characters it names."""
    if "\\" not in text:
        return text
    decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), text)
    # a character outside the BMP written as two \\u escapes (a surrogate pair) -> one char
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16")


def _check_templates(where: str, key: str, templates: Any) -> list[str]:
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"{where}: {key!r} must be a non-empty list of strings")
    for i, template in enumerate(templates):
        if not isinstance(template, str):
            raise ValueError(f"{where}: {key}[{i}] must be a string, got {template!r}")
        if template.count("{}") != 1:
            raise ValueError(
                f"{where}: {key}[{i}] = {template!r} must contain exactly one '{{}}' "
                "where the subject goes"
            )
        try:
            template.format("subject")
        except (IndexError, KeyError, ValueError) as err:
            raise ValueError(
                f"{where}: {key}[{i}] = {template!r} is not a valid format string "
                f"({err}); write literal braces as '{{{{' and '}}}}'"
            ) from None
    return list(templates)


def _parse(
    raw: Any,
    *,
    where: str,
    name: str,
    category: str | None,
    on_conflict: Literal["first", "keep"],
) -> Relation:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a relation file must hold a JSON object, got {type(raw)}")
    for key in _REQUIRED_KEYS:
        if key not in raw:
            raise ValueError(
                f"{where}: relation JSON is missing the required key {key!r} (required: "
                f"{', '.join(_REQUIRED_KEYS)}; optional: {', '.join(_OPTIONAL_KEYS)})"
            )
    templates = _check_templates(where, "prompt_templates", raw["prompt_templates"])
    templates_zs = (
        _check_templates(where, "prompt_templates_zs", raw["prompt_templates_zs"])
        if "prompt_templates_zs" in raw
        else list(templates)
    )
    properties = raw.get("properties", {})
    if not isinstance(properties, dict):
        raise ValueError(f"{where}: 'properties' must be a JSON object, got {properties!r}")
    title = raw.get("name", name)
    if not isinstance(title, str):
        raise ValueError(f"{where}: 'name' must be a string, got {title!r}")
    raw_samples = raw["samples"]
    if not isinstance(raw_samples, list) or not raw_samples:
        raise ValueError(f"{where}: 'samples' must be a non-empty list of {{subject, object}}")

    samples: list[RelationSample] = []
    dropped: list[tuple[RelationSample, str]] = []
    seen_pairs: set[RelationSample] = set()
    seen_subjects: set[str] = set()
    for i, entry in enumerate(raw_samples):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: samples[{i}] must be an object, got {entry!r}")
        values = []
        for key in ("subject", "object"):
            if key not in entry:
                raise ValueError(f"{where}: samples[{i}] is missing the required key {key!r}")
            value = entry[key]
            if not isinstance(value, str):
                raise ValueError(f"{where}: samples[{i}][{key!r}] must be a string: {value!r}")
            value = _decode_escapes(value).strip()
            if not value:
                raise ValueError(f"{where}: samples[{i}][{key!r}] is empty")
            values.append(value)
        sample = RelationSample(values[0], values[1])
        if sample in seen_pairs:
            dropped.append((sample, "duplicate"))
        elif on_conflict == "first" and sample.subject in seen_subjects:
            dropped.append((sample, "conflict"))
        else:
            samples.append(sample)
            seen_pairs.add(sample)
            seen_subjects.add(sample.subject)
    return Relation(
        name=name,
        category=category,
        prompt_templates=templates,
        prompt_templates_zs=templates_zs,
        properties=dict(properties),
        samples=samples,
        title=title,
        dropped=dropped,
        source=where,
    )


def _looks_like_path(value: str | os.PathLike[str]) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return value.endswith(".json") or "/" in value or os.sep in value


def load(
    name_or_path: str | os.PathLike[str],
    *,
    on_conflict: Literal["first", "keep"] = "first",
) -> Relation:
    """Load a bundled relation by name, or a relation JSON file of the same schema.

    Args:
        name_or_path: a name from :func:`list_relations` (``"country_capital_city"``; the
            JSON ``name`` such as ``"country capital city"`` also works), or a path to a
            ``.json`` file. A user file needs ``prompt_templates`` and ``samples``;
            ``prompt_templates_zs`` defaults to ``prompt_templates``, ``properties`` to
            ``{}``, ``name`` to the file stem.
        on_conflict: ``"first"`` keeps only the first object of a subject listed with
            several objects; ``"keep"`` keeps every distinct pair (exact duplicates are
            always dropped).

    Returns:
        A :class:`Relation`; ``category`` is None for a user file.

    Raises:
        UnknownRelationError: no bundled relation has this name (a ValueError and KeyError;
            the message lists close matches).
        ValueError: the JSON breaks the schema (the message names the key or sample).
        FileNotFoundError: a path that does not exist.
    """
    if on_conflict not in ("first", "keep"):
        raise ValueError(f"on_conflict must be 'first' or 'keep', got {on_conflict!r}")
    index = _bundled()
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
        stem = name_or_path if name_or_path in index else _aliases().get(_normalize(name_or_path))
        if stem is not None:
            category = index[stem]
            where = f"<bundled semhooks/data/relations/{category}/{stem}.json>"
            raw = json.loads(_bundled_text(category, stem))
            return _parse(raw, where=where, name=stem, category=category, on_conflict=on_conflict)
        if not Path(name_or_path).is_file():
            close = difflib.get_close_matches(
                _normalize(name_or_path), list(_aliases()), n=5, cutoff=0.5
            )
            suggestions = list(dict.fromkeys(_aliases()[c] for c in close))
            hint = f" Did you mean {', '.join(map(repr, suggestions))}?" if suggestions else ""
            raise UnknownRelationError(
                f"unknown relation {name_or_path!r}.{hint} The {len(index)} bundled relations "
                f"(semhooks.relations.list_relations()): {', '.join(sorted(index))}; or pass a "
                "path to a relation .json file."
            )
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"relation file {str(path)!r} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return _parse(raw, where=str(path), name=path.stem, category=None, on_conflict=on_conflict)
