"""The bundled relation dataset (Hernandez et al. 2023) and user relation files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from semhooks.data import data_root
from semhooks.relations import (
    CATEGORIES,
    Relation,
    RelationSample,
    UnknownRelationError,
    list_relations,
    load,
)
from semhooks.relations.data import _decode_escapes


@pytest.fixture(scope="module")
def all_relations() -> dict[str, Relation]:
    return {name: load(name) for name in list_relations()}


def test_47_relations_in_four_categories():
    names = list_relations()
    assert len(names) == 47 and names == sorted(names)
    counts = {c: len(list_relations(c)) for c in CATEGORIES}
    assert counts == {"factual": 26, "commonsense": 8, "linguistic": 6, "bias": 7}
    assert "country_capital_city" in list_relations("factual")
    assert "adj_antonym" in list_relations("linguistic")
    with pytest.raises(ValueError, match="unknown relation category 'facts'"):
        list_relations("facts")


def test_every_relation_is_clean(all_relations):
    n_raw = 0
    for name, relation in all_relations.items():
        assert relation.name == name
        assert relation.category in CATEGORIES
        assert relation.properties["relation_type"] == relation.category
        assert relation.source.endswith(f"{relation.category}/{name}.json>")
        for template in relation.prompt_templates + relation.prompt_templates_zs:
            assert template.count("{}") == 1
        subjects = relation.subjects
        assert len(subjects) == len(set(subjects)) == len(relation)
        for subject, obj in relation:
            for value in (subject, obj):
                assert value == value.strip() and value
                assert "\\u" not in value
        n_raw += len(relation) + relation.n_dropped_duplicates
    assert n_raw == 11089  # the published sample count
    assert sum(len(r) for r in all_relations.values()) == 10997


def test_escape_text_is_decoded():
    relation = load("country_capital_city")
    capitals = dict(relation.samples)
    assert capitals["Brazil"] == "Brasília"
    assert capitals["Colombia"] == "Bogotá"
    assert "Brasília" in relation.objects
    raw = json.loads(
        data_root()
        .joinpath("relations", "factual", "country_capital_city.json")
        .read_text(encoding="utf-8")
    )
    assert "Bras\\u00edlia" in [s["object"] for s in raw["samples"]]  # still escaped on disk


def test_decode_escapes_handles_astral_and_plain_text():
    assert _decode_escapes("Bogot\\u00e1") == "Bogotá"
    assert _decode_escapes("smile \\ud83d\\ude00") == "smile \U0001f600"
    assert _decode_escapes("\\U0001F600") == "\U0001f600"
    assert _decode_escapes("no escapes") == "no escapes"


def test_whitespace_is_stripped():
    band = load("person_band_lead_singer")
    assert RelationSample("Jon Bon Jovi", "Bon Jovi") in band.samples
    assert "Bon Jovi" in band.by_object()
    assert "Jimmy Carter" in load("presidents_birth_year").subjects
    assert "Jimmy Carter" in load("presidents_election_year").subjects


@pytest.mark.parametrize(
    ("name", "n_kept", "n_duplicate", "n_conflict"),
    [
        ("product_by_company", 494, 20, 8),
        ("adj_comparative", 57, 11, 0),
        ("adj_antonym", 83, 2, 15),
        ("superhero_person", 90, 0, 10),
        ("presidents_birth_year", 18, 1, 0),
        ("country_capital_city", 24, 0, 0),
    ],
)
def test_dedup_counts(name, n_kept, n_duplicate, n_conflict):
    relation = load(name)
    reasons = Counter(reason for _, reason in relation.dropped)
    assert len(relation) == n_kept
    assert reasons["duplicate"] == n_duplicate and reasons["conflict"] == n_conflict
    assert relation.n_dropped_duplicates == n_duplicate + n_conflict


def test_conflicting_subject_keeps_first_object_unless_asked():
    heroes = load("superhero_person")
    assert dict(heroes.samples)["Green Lantern"] == "Hal Jordan"
    dropped = [s.object for s, why in heroes.dropped if s.subject == "Green Lantern"]
    assert dropped == ["Kyle Rayner", "Alan Scott", "Simon Baz", "Jessica Cruz"]
    keep = load("superhero_person", on_conflict="keep")
    assert len(keep) == 100 and keep.n_dropped_duplicates == 0
    assert sum(s.subject == "Green Lantern" for s in keep) == 5
    products = load("product_by_company", on_conflict="keep")
    assert len(products) == 502  # exact duplicates are still dropped
    with pytest.raises(ValueError, match="on_conflict"):
        load("superhero_person", on_conflict="last")  # type: ignore[arg-type]


def test_helpers():
    relation = load("object_superclass")
    assert relation.objects == sorted(set(s.object for s in relation.samples))
    groups = relation.by_object()
    assert list(groups) == relation.objects
    assert sum(len(g) for g in groups.values()) == len(relation)
    assert all(s.object == o for o, g in groups.items() for s in g)
    assert relation.subjects == [s.subject for s in relation.samples]
    subject, obj = relation.samples[0]
    assert (subject, obj) == (relation.samples[0].subject, relation.samples[0].object)
    assert "n_samples=64" in repr(relation)


def test_json_name_is_an_alias():
    assert load("country capital city").name == "country_capital_city"
    assert load("univ degree gender").name == "degree_gender"
    assert load("Country-Capital-City").name == "country_capital_city"
    assert load("degree_gender").title == "univ degree gender"


def test_unknown_relation_lists_close_matches():
    with pytest.raises(UnknownRelationError) as info:
        load("country_capital")
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, KeyError)
    message = str(err)
    assert message.startswith("unknown relation 'country_capital'.")  # not repr-quoted
    assert "'country_capital_city'" in message and "list_relations()" in message
    assert all(name in message for name in list_relations())  # every valid name, listed
    with pytest.raises(KeyError, match="unknown relation 'zzz'"):
        load("zzz")


def _user_relation(tmp_path: Path, payload: object, name: str = "my_rel.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_user_path_loading(tmp_path):
    payload = {
        "name": "pet sound",
        "prompt_templates": ["The {} says"],
        "samples": [
            {"subject": " dog", "object": "woof "},
            {"subject": "cat", "object": "meow"},
            {"subject": "dog", "object": "woof"},
            {"subject": "cat", "object": "purr"},
            {"subject": "cow", "object": "m\\u00f6\\u00f6"},
        ],
    }
    path = _user_relation(tmp_path, payload)
    for arg in (path, str(path)):
        relation = load(arg)
        assert relation.name == "my_rel" and relation.title == "pet sound"
        assert relation.category is None and relation.properties == {}
        assert relation.prompt_templates_zs == ["The {} says"]
        assert relation.samples == [
            RelationSample("dog", "woof"),
            RelationSample("cat", "meow"),
            RelationSample("cow", "möö"),
        ]
        assert [why for _, why in relation.dropped] == ["duplicate", "conflict"]
        assert relation.source == str(path)


def test_bundled_file_path_loads_as_user_file(tmp_path):
    text = (
        data_root()
        .joinpath("relations", "factual", "country_capital_city.json")
        .read_text(encoding="utf-8")
    )
    path = tmp_path / "copy.json"
    path.write_text(text, encoding="utf-8")
    copy, bundled = load(path), load("country_capital_city")
    assert copy.samples == bundled.samples and copy.category is None
    assert copy.prompt_templates_zs == bundled.prompt_templates_zs


TEMPLATE = ["{} is"]
SAMPLE = [{"subject": "a", "object": "b"}]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"prompt_templates": TEMPLATE}, r"missing the required key 'samples'"),
        ({"samples": SAMPLE}, r"missing the required key 'prompt_templates'"),
        (
            {"prompt_templates": TEMPLATE, "samples": SAMPLE + [{"subject": "c"}]},
            r"samples\[1\] is missing the required key 'object'",
        ),
        ({"prompt_templates": TEMPLATE, "samples": []}, r"'samples' must be a non-empty list"),
        (
            {"prompt_templates": ["no slot"], "samples": SAMPLE},
            r"prompt_templates\[0\].*one '\{\}'",
        ),
        (
            {"prompt_templates": TEMPLATE, "prompt_templates_zs": ["{} {x}"], "samples": SAMPLE},
            r"prompt_templates_zs\[0\] = '\{\} \{x\}' is not a valid format string",
        ),
        (
            {"prompt_templates": TEMPLATE, "samples": [{"subject": " ", "object": "b"}]},
            r"samples\[0\]\['subject'\] is empty",
        ),
        (
            {"prompt_templates": TEMPLATE, "samples": [{"subject": 3, "object": "b"}]},
            r"samples\[0\]\['subject'\] must be a string",
        ),
        (["not", "an", "object"], r"must hold a JSON object"),
    ],
)
def test_schema_errors_name_the_problem(tmp_path, payload, message):
    path = _user_relation(tmp_path, payload, "bad.json")
    with pytest.raises(ValueError, match=message):
        load(path)


def test_bad_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.json")
