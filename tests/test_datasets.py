"""Bundled datasets: WiC spans, sentiment parsing, subsampling/splitting, licenses, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semhooks.data import data_file, data_root, verify_checksums
from semhooks.data.loaders import (
    DATA_LICENSES,
    SENTIMENT_DATASETS,
    TextClassificationDataset,
    WiCItem,
    load_entities,
    load_sentiment,
    load_sst2,
    load_wic,
)

# --------------------------------------------------------------------------------------------
# bundled files
# --------------------------------------------------------------------------------------------


def test_bundled_files_match_published_checksums():
    result = verify_checksums()
    assert len(result) == 56  # 47 relations + 4 WiC + 2 SST-2 + 3 UCI
    assert all(result.values()), [p for p, ok in result.items() if not ok]


def test_data_is_read_from_inside_the_package():
    import semhooks.data.loaders

    package_dir = Path(semhooks.data.loaders.__file__).parent  # the loaders sit beside the files
    assert Path(str(data_root())).resolve() == package_dir.resolve()


def test_every_license_notice_is_bundled():
    assert set(DATA_LICENSES) == {"relations", "wic", "sst2", "sentiment", "entities"}
    for key, info in DATA_LICENSES.items():
        assert info.dataset == key
        assert data_file(info.notice).read_text(encoding="utf-8").strip()
    assert "CC BY-NC 4.0" in data_file("wic/NOTICE").read_text(encoding="utf-8")
    assert not DATA_LICENSES["wic"].commercial_use
    assert "Copyright (c) 2022 Evan Hernandez" in data_file("relations/LICENSE").read_text(
        encoding="utf-8"
    )
    assert "CC BY 4.0" in data_file("sentiment/NOTICE").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# WiC
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wic_all() -> dict[str, list[WiCItem]]:
    return {"dev": load_wic("dev"), "train": load_wic("train")}


def test_wic_bundled_sizes_and_labels(wic_all):
    dev, train = wic_all["dev"], wic_all["train"]
    assert len(dev) == 638 and len(train) == 5428
    # WiC is balanced: half the pairs share a sense
    assert sum(x.label for x in dev) == 319
    assert sum(x.label for x in train) == 2714
    assert {x.pos for x in dev + train} == {"N", "V"}
    first = dev[0]
    assert (first.lemma, first.pos, first.index1, first.index2) == ("board", "N", 2, 2)
    assert first.label is False
    assert (first.word1, first.word2) == ("board", "boards")


@pytest.mark.parametrize("split", ["dev", "train"])
def test_wic_char_spans_point_at_the_indexed_token_for_every_item(wic_all, split):
    for n, item in enumerate(wic_all[split], start=1):
        for sentence, index, (start, end) in (
            (item.sentence1, item.index1, item.char_span1),
            (item.sentence2, item.index2, item.char_span2),
        ):
            tokens = sentence.split()
            assert sentence[start:end] == tokens[index], (split, n)
            # the right occurrence: exactly `index` tokens precede the span, and the span is a
            # whole token (whitespace or the sentence edge on both sides)
            assert len(sentence[:start].split()) == index, (split, n)
            assert start == 0 or sentence[start - 1].isspace(), (split, n)
            assert end == len(sentence) or sentence[end].isspace(), (split, n)


def test_wic_spans_beat_substring_search_on_known_lines(wic_all):
    train = wic_all["train"]
    # line 350: "go" occurs first inside "good"
    item = train[349]
    assert item.sentence1 == "This violinist is as good as Juilliard-trained violinists go ."
    assert item.sentence1.find("go") == 21
    assert item.char_span1 == (58, 60) and item.word1 == "go"
    # line 1235: "liver" occurs first inside "livers"
    item = train[1234]
    assert item.sentence1.find("liver") == 30
    assert item.char_span1 == (87, 92) and item.word1 == "liver"
    assert item.sentence1[item.char_span1[1] :] == " ."


def test_wic_repeated_word_and_punctuation_targets():
    item = WiCItem("bank", "N", "The bank , not the bank .", "A bank .", 5, 1, True)
    assert item.char_span1 == (19, 23) and item.word1 == "bank"
    assert item.char_span2 == (2, 6)
    first = WiCItem("bank", "N", "The bank , not the bank .", "A bank .", 1, 1)
    assert first.char_span1 == (4, 8)
    assert first.label is None
    punct = WiCItem("x", "N", "He left , sadly .", "Go .", 4, 1)
    assert punct.word1 == "." and punct.char_span1 == (16, 17) and punct.word2 == "."


def test_wic_item_rejects_out_of_range_index():
    with pytest.raises(ValueError, match=r"index2=3 is out of range: sentence2 has 3"):
        WiCItem("go", "V", "I go .", "We go .", 1, 3)


def test_wic_non_breaking_spaces_are_collapsed(wic_all):
    line5111 = wic_all["train"][5110]
    assert "\xa0" not in line5111.sentence1 and "  " not in line5111.sentence1
    assert line5111.word1 == "sentence" and line5111.word2 == "sentence"
    line340 = wic_all["train"][339]
    assert line340.sentence2 == "The snow lies on the roof ."
    raw = load_wic("train", normalize_whitespace=False)
    assert raw[339].sentence2.endswith("\xa0")
    assert "\xa0\xa0" in raw[5110].sentence1
    assert raw[5110].word1 == "sentence"  # indices are unchanged by normalisation


def _write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


GOOD = [
    "bank\tN\t1-4\tThe bank closed .\tWe sat on the bank .",
    "run\tV\t0-1\tRun fast !\tThey run a shop .",
]


def test_wic_user_file_with_gold_beside_it(tmp_path):
    data = _write(tmp_path / "mine.data.txt", GOOD)
    _write(tmp_path / "mine.gold.txt", ["F", "T"])
    items = load_wic(data)
    assert [x.label for x in items] == [False, True]
    assert items[0].word1 == items[0].word2 == "bank" and items[1].word2 == "run"
    assert load_wic(str(data))[1].char_span2 == (5, 8)


def test_wic_user_file_without_gold_and_with_explicit_gold(tmp_path):
    data = _write(tmp_path / "nogold.data.txt", GOOD)
    assert [x.label for x in load_wic(data)] == [None, None]
    other = _write(tmp_path / "labels.txt", ["T", "T"])
    assert [x.label for x in load_wic(data, gold=other)] == [True, True]


def test_wic_user_file_crlf_and_trailing_blank_lines(tmp_path):
    data = _write(tmp_path / "crlf.data.txt", GOOD + ["", ""], newline="\r\n")
    items = load_wic(data)
    assert len(items) == 2 and items[1].sentence2 == "They run a shop ."


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (GOOD[:1] + ["bank\tN\t1-2\tonly four fields"], r"bad\.data\.txt:2: expected 5 tab"),
        (["bank\tN\tone-two\tA bank .\tA bank ."], r"bad\.data\.txt:1: third field .*'i-j'"),
        (["bank\tN\t1\tA bank .\tA bank ."], r"bad\.data\.txt:1: third field"),
        (
            GOOD + ["bank\tN\t1-7\tA bank .\tA bank ."],
            r"bad\.data\.txt:3: index2=7 is out of range",
        ),
        (
            GOOD + ["bank\tN\t3-0\tA bank .\tA bank ."],
            r"bad\.data\.txt:3: index1=3 is out of range",
        ),
        (GOOD[:1] + ["", GOOD[1]], r"bad\.data\.txt:2: blank line"),
        (["\tN\t0-0\tA .\tB ."], r"bad\.data\.txt:1: empty lemma"),
    ],
)
def test_wic_malformed_user_lines_name_file_and_line(tmp_path, lines, message):
    data = _write(tmp_path / "bad.data.txt", lines)
    with pytest.raises(ValueError, match=message):
        load_wic(data)


def test_wic_empty_file_and_gold_problems(tmp_path):
    empty = tmp_path / "empty.data.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.data\.txt: empty WiC file"):
        load_wic(empty)
    data = _write(tmp_path / "g.data.txt", GOOD)
    _write(tmp_path / "g.gold.txt", ["T"])
    with pytest.raises(ValueError, match=r"has 2 lines but its gold file .*g\.gold\.txt has 1"):
        load_wic(data)
    _write(tmp_path / "g.gold.txt", ["T", "yes"])
    with pytest.raises(ValueError, match=r"g\.gold\.txt:2: expected a gold label 'T' or 'F'"):
        load_wic(data)
    with pytest.raises(ValueError, match="looks like a gold file"):
        load_wic(tmp_path / "g.gold.txt")


def test_wic_unknown_split_or_missing_file():
    with pytest.raises(ValueError, match="test split is not bundled"):
        load_wic("test")
    with pytest.raises(FileNotFoundError, match=r"'devv' is neither a bundled name \('dev'"):
        load_wic("devv")


# --------------------------------------------------------------------------------------------
# sentiment
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n_neg", "n_pos"),
    [
        ("sst2-dev", 428, 444),
        ("sst2-train_sample", 3000, 3000),
        ("amazon_cells", 500, 500),
        ("imdb", 500, 500),
        ("yelp", 500, 500),
    ],
)
def test_sentiment_bundled_counts(name, n_neg, n_pos):
    ds = load_sentiment(name)
    assert len(ds) == n_neg + n_pos == len(ds.labels)
    assert ds.class_counts() == {"negative": n_neg, "positive": n_pos}
    assert ds.labels.dtype == np.int64
    assert ds.name == name and ds.label_names == ("negative", "positive")
    assert all(t == t.strip() and t for t in ds.texts)
    assert not any(any("\x80" <= ch <= "\x9f" for ch in t) for t in ds.texts)
    assert set(SENTIMENT_DATASETS) >= {name}


def test_sst2_dev_matches_file_and_header_is_skipped():
    ds = load_sst2("dev")
    assert len(ds) == 872
    assert ds.texts[0] == "it 's a charming and often affecting journey ."
    assert ds.labels[0] == 1 and ds.labels[1] == 0
    assert "sentence" not in ds.texts
    assert ds.license == DATA_LICENSES["sst2"].license
    assert len(load_sst2("train_sample")) == 6000
    with pytest.raises(ValueError, match="unknown SST-2 split 'test'"):
        load_sst2("test")


def test_uci_lines_with_quotes_parse():
    amazon = load_sentiment("amazon_cells")
    found = {t: int(y) for t, y in amazon if '"' in t}
    assert len(found) == 11
    assert found['The design is very odd, as the ear "clip" is not very comfortable at all.'] == 0
    yelp = load_sentiment("yelp")
    assert sum('"' in t for t in yelp.texts) == 12


def test_imdb_nel_is_not_a_line_break_and_cp1252_is_repaired():
    imdb = load_sentiment("imdb")
    assert len(imdb) == 1000  # str.splitlines() would give 1002
    assert "The script is…was there a script?" in imdb.texts
    raw = load_sentiment("imdb", clean=False)
    assert "The script is\x85was there a script?  " in raw.texts


def test_user_sentiment_file_last_tab_no_csv_quoting(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text(
        'text\tlabel\nHe said "hi\tthere"\t1\n"unbalanced quote\t0\nplain\t2\n', encoding="utf-8"
    )
    ds = load_sentiment(path, label_names=("neg", "pos", "mixed"))
    assert ds.texts == ['He said "hi\tthere"', '"unbalanced quote', "plain"]
    assert ds.labels.tolist() == [1, 0, 2]
    assert ds.name == "mine" and ds.label_names == ("neg", "pos", "mixed")
    # no header: the first line is data
    path.write_text("good\t1\nbad\t0\n", encoding="utf-8")
    assert load_sentiment(str(path)).texts == ["good", "bad"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("good\t1\nno tab here\n", r"bad\.tsv:2: expected 'text<TAB>label', no tab"),
        ("good\t1\nbad\tneg\n", r"bad\.tsv:2: label must be an integer, got 'neg'"),
        ("good\t1\nbad\t0\nodd\t2\n", r"bad\.tsv:3: label 2 is outside 0\.\.1"),
        ("good\t1\n   \t0\n", r"bad\.tsv:2: empty text"),
        ("good\t1\n\nbad\t0\n", r"bad\.tsv:2: blank line"),
        ("\n\n", r"bad\.tsv: no data lines"),
        ("sentence\tlabel\n", r"bad\.tsv: no data lines"),
    ],
)
def test_user_sentiment_errors_name_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_sentiment(path)


def test_load_sentiment_unknown_name():
    with pytest.raises(FileNotFoundError, match="'amazon' is neither a bundled name"):
        load_sentiment("amazon")


# --------------------------------------------------------------------------------------------
# subsample / split
# --------------------------------------------------------------------------------------------


def _toy(n_per_class: tuple[int, ...]) -> TextClassificationDataset:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    order = np.random.default_rng(123).permutation(len(labels))
    labels = labels[order]
    texts = [f"t{i}" for i in range(len(labels))]
    names = tuple(f"c{c}" for c in range(len(n_per_class)))
    return TextClassificationDataset(texts, labels, names, name="toy")


def test_subsample_balanced_deterministic_and_in_file_order():
    ds = load_sentiment("sst2-dev")
    a = ds.subsample(101, seed=3)
    assert a.class_counts() == {"negative": 51, "positive": 50}
    b = ds.subsample(101, seed=3)
    assert a.texts == b.texts and np.array_equal(a.labels, b.labels)
    assert a.texts != ds.subsample(101, seed=4).texts
    positions = [ds.texts.index(t) for t in a.texts]
    assert positions == sorted(positions)
    for t, y in a:
        assert ds.labels[ds.texts.index(t)] == y
    assert load_sentiment("sst2-dev", limit=101, seed=3).texts == a.texts
    assert len(load_sentiment("yelp", limit=5000)) == 1000


def test_subsample_stratified_and_errors():
    ds = _toy((90, 10))
    s = ds.subsample(20, seed=0, balanced=False)
    assert s.class_counts() == {"c0": 18, "c1": 2}
    assert ds.subsample(20, seed=0).class_counts() == {"c0": 10, "c1": 10}
    with pytest.raises(ValueError, match="needs 15 items of class 'c1' but it has 10"):
        ds.subsample(30)
    with pytest.raises(ValueError, match="cannot subsample n=101 of 100"):
        ds.subsample(101)


def test_split_is_stratified_disjoint_and_deterministic():
    ds = _toy((60, 30, 10))
    train, test = ds.split(0.2, seed=7)
    assert len(test) == 20 and len(train) == 80
    assert test.class_counts() == {"c0": 12, "c1": 6, "c2": 2}
    assert set(train.texts).isdisjoint(test.texts)
    assert set(train.texts) | set(test.texts) == set(ds.texts)
    assert ds.split(0.2, seed=7)[1].texts == test.texts
    assert ds.split(0.2, seed=8)[1].texts != test.texts
    assert len(ds.split(7, seed=0)[1]) == 7
    for bad in (0.0, 1.0, 0, 100, True, "half"):
        with pytest.raises(ValueError, match="test_size"):
            ds.split(bad)  # type: ignore[arg-type]


def test_dataset_validation():
    with pytest.raises(ValueError, match="one label per text"):
        TextClassificationDataset(["a", "b"], np.array([0]))
    with pytest.raises(ValueError, match="label 2 of item 1 is outside 0..1"):
        TextClassificationDataset(["a", "b"], np.array([0, 2]))
    with pytest.raises(ValueError, match="must be integers"):
        TextClassificationDataset(["a"], np.array([0.5]))


# --------------------------------------------------------------------------------------------
# entities
# --------------------------------------------------------------------------------------------


def test_entities_are_sixty_distinct_capitalised_single_words():
    entities = load_entities()
    assert len(entities) == 60 == len(set(entities))
    assert entities[:3] == ["Ant", "Bat", "Bear"]
    assert {"Rabbit", "Fox"} <= set(entities)
    assert all(e.isalpha() and e[0].isupper() and e[1:].islower() for e in entities)
