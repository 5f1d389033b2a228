"""Readers of local files and the packaged datasets."""

from __future__ import annotations

import pytest

from ptuning.data.packaged import load_packaged, rotten_tomatoes_reviews
from ptuning.data.readers import read_conll, read_labeled_texts
from ptuning.errors import DataError, PtuningError

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_conll_sentences_docstart_and_tag_columns(tmp_path):
    path = write(tmp_path, "a.conll", CONLL)
    ner = read_conll(path, tag_column=3)
    assert [s.words for s in ner] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert ner[1].tags == ["B-PER", "I-PER"]
    assert read_conll(path, tag_column=1)[0].tags == ["NNP", "VBZ", "JJ"]
    assert read_conll(path)[0].tags == ["B-ORG", "O", "B-MISC"]  # default: last column
    assert ner[1].source == f"{path}:7"


def test_conll_column_count_mismatch_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.conll", CONLL.replace("Peter NNP B-NP B-PER", "Peter B-PER"))
    with pytest.raises(DataError) as error:
        read_conll(path, 3)
    assert f"{path}:7:" in str(error.value) and "expected 4 columns" in str(error.value)


def test_conll_empty_file_and_missing_column(tmp_path):
    with pytest.raises(DataError, match="the file is empty"):
        read_conll(write(tmp_path, "empty.conll", "\n\n"))
    with pytest.raises(DataError, match="tag column 5 does not exist in 4 columns"):
        read_conll(write(tmp_path, "a.conll", CONLL), tag_column=5)
    with pytest.raises(DataError, match="no such file"):
        read_conll(tmp_path / "missing.conll")


def test_tables_csv_tsv_jsonl(tmp_path):
    csv_path = write(tmp_path, "a.csv", 'text,label\n"good, really",pos\nbad,neg\n')
    tsv_path = write(tmp_path, "a.tsv", "premise\thypothesis\tlabel\nA\tB\tentailment\n")
    jsonl_path = write(tmp_path, "a.jsonl", '{"text": "fine", "label": true}\n\n{"text": "meh", "label": false}\n')
    assert [(e.text, e.label) for e in read_labeled_texts(csv_path)] == [("good, really", "pos"), ("bad", "neg")]
    pair = read_labeled_texts(tsv_path, "premise", "hypothesis")[0]
    assert (pair.text, pair.text_pair, pair.label) == ("A", "B", "entailment")
    assert [e.label for e in read_labeled_texts(jsonl_path)] == ["True", "False"]
    assert read_labeled_texts(jsonl_path)[1].source == f"{jsonl_path}:3"


def test_table_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"a.csv:3: expected 2 fields"):
        read_labeled_texts(write(tmp_path, "a.csv", "text,label\nok,pos\nbad,neg,extra\n"))
    with pytest.raises(DataError, match=r"b.jsonl:2: missing \['label'\]"):
        read_labeled_texts(write(tmp_path, "b.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n'))
    with pytest.raises(DataError, match=r"c.jsonl:1: not a JSON object"):
        read_labeled_texts(write(tmp_path, "c.jsonl", "{oops\n"))
    with pytest.raises(DataError, match="unknown extension"):
        read_labeled_texts(write(tmp_path, "d.txt", "x\n"))


def test_packaged_conll2003_sizes_and_columns():
    ner = load_packaged("conll2003-ner")
    assert (len(ner.train), len(ner.validation), len(ner.test)) == (14041, 3250, 3453)
    assert ner.train[0].words[:2] == ["EU", "rejects"] and ner.train[0].tags[:2] == ["B-ORG", "O"]
    assert load_packaged("conll2003-pos").train[0].tags[:2] == ["NNP", "VBZ"]
    assert load_packaged("conll2003-chunk").train[0].tags[:2] == ["B-NP", "B-VP"]


def test_rotten_tomatoes_split_by_movie_without_plots():
    splits = load_packaged("rotten-tomatoes")
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (10272, 1358, 1178)
    assert {e.label for e in splits.train} == {"fresh", "rotten"}
    movie_of = {review.source: movie for movie, review in rotten_tomatoes_reviews()}
    assert len(movie_of) == 7403 + 5405
    movies = [{movie_of[e.source] for e in part} for part in (splits.train, splits.validation, splits.test)]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    assert sum(len(m) for m in movies) == 508
    again = load_packaged("rotten-tomatoes")
    assert [e.text for e in again.test] == [e.text for e in splits.test]  # fixed seed


def test_unknown_dataset_is_named():
    with pytest.raises(PtuningError, match="unknown dataset 'conll2012'.*conll2003-ner"):
        load_packaged("conll2012")
