"""Readers of local files and the packaged datasets."""

from __future__ import annotations

import pytest

from ptuning.data.formats import (
    ConllFormat,
    HubFormat,
    SquadFormat,
    SrlFormat,
    SuperGlueFormat,
    TableFormat,
    data_format_from_dict,
    read_examples,
)
from ptuning.data.packaged import load_packaged, rotten_tomatoes_reviews
from ptuning.data.readers import read_conll, read_labeled_texts
from ptuning.data.spec import DataSpec, load_dataset, load_splits
from ptuning.errors import DataError, PtuningError
from ptuning.vocabulary import Family

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
    assert ner.family is Family.TOKEN_CLASSIFICATION and ner.data_format == ConllFormat(3) and ner.options == {}
    assert (len(ner.train), len(ner.validation), len(ner.test)) == (14041, 3250, 3453)
    assert ner.train[0].words[:2] == ["EU", "rejects"] and ner.train[0].tags[:2] == ["B-ORG", "O"]
    assert load_packaged("conll2003-pos").train[0].tags[:2] == ["NNP", "VBZ"]
    assert load_packaged("conll2003-chunk").train[0].tags[:2] == ["B-NP", "B-VP"]


def test_rotten_tomatoes_split_by_movie_without_plots():
    splits = load_packaged("rotten-tomatoes")
    assert splits.family is Family.SEQUENCE_CLASSIFICATION and splits.data_format == TableFormat()
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


# data formats and specs -----------------------------------------------------------------------------

SAVED_FORMATS = [
    (ConllFormat(3), {"format": "conll", "tag_column": 3}),
    (TableFormat("t", "p", "l"), {"format": "table", "text_column": "t", "pair_column": "p", "label_column": "l"}),
    (SquadFormat(), {"format": "squad"}),
    (SuperGlueFormat("copa"), {"format": "superglue", "task": "copa"}),
    (SrlFormat(), {"format": "srl"}),
    (
        HubFormat("hf:glue:sst2", {"text_column": "sentence"}),
        {"format": "hf", "dataset": "hf:glue:sst2", "columns": {"text_column": "sentence"}},
    ),
]


@pytest.mark.parametrize(("data_format", "saved"), SAVED_FORMATS)
def test_a_format_saves_as_the_reader_dict_checkpoints_keep(data_format, saved):
    assert data_format.to_dict() == saved and list(data_format.to_dict()) == list(saved)
    assert data_format_from_dict(saved) == data_format


def test_older_saved_forms_and_unknown_ones():
    # older checkpoints kept SQuAD's decoding options beside the format: they are the task's, not the format's
    assert data_format_from_dict({"format": "squad", "options": {"version_2": True}}) == SquadFormat()
    assert data_format_from_dict({}) is None and data_format_from_dict({"format": "tsv-of-the-future"}) is None
    with pytest.raises(PtuningError, match=r"files of this checkpoint's data \(unknown format\) cannot be read"):
        read_examples("any.txt", None)
    with pytest.raises(PtuningError, match=r"files of this checkpoint's data \(hf\) cannot be read; use --dataset"):
        read_examples("any.txt", HubFormat("hf:glue:sst2"))


def test_a_format_says_what_it_reads_when_a_file_is_not_that(tmp_path):
    table = write(tmp_path, "a.csv", "text,label\nPeter runs,B-PER\n")
    with pytest.raises(DataError, match="a .csv file, but this model reads CoNLL column files"):
        ConllFormat().read(table)
    with pytest.raises(DataError, match="a .csv file, but this model reads SRL column files"):
        SrlFormat().read(table)
    with pytest.raises(DataError, match=r"missing \['sentence'\].*\(expected CSV/TSV with a header row"):
        TableFormat("sentence").read(table)
    lines = write(tmp_path, "a.json", '{"text": "good", "label": "pos"}\n')
    with pytest.raises(DataError, match="a .json file is read as SQuAD JSON: .* --task sequence-classification"):
        SquadFormat().read(lines)


def test_the_family_and_format_of_files_come_from_the_task_or_the_extension(tmp_path):
    columns = {"tag_column": 2, "text_column": "t", "pair_column": "p", "label_column": "l"}
    cases = {
        (None, "a.conll"): (Family.TOKEN_CLASSIFICATION, ConllFormat(2), {}),
        (None, "a.tsv"): (Family.SEQUENCE_CLASSIFICATION, TableFormat("t", "p", "l"), {}),
        (None, "a.json"): (Family.QUESTION_ANSWERING, SquadFormat(), {"version_2": False}),
        ("squad_v2", "a.json"): (Family.QUESTION_ANSWERING, SquadFormat(), {"version_2": True}),
        ("srl", "a.txt"): (Family.SRL, SrlFormat(), {}),
        ("multiple-choice", "a.jsonl"): (Family.MULTIPLE_CHOICE, SuperGlueFormat("copa"), {}),
        ("boolq", "a.jsonl"): (Family.SEQUENCE_CLASSIFICATION, SuperGlueFormat("boolq"), {}),
        ("sequence-classification", "a.json"): (Family.SEQUENCE_CLASSIFICATION, TableFormat("t", "p", "l"), {}),
    }
    for (task, train), expected in cases.items():
        assert DataSpec(train=train, task=task, **columns).file_reading() == expected, (task, train)


def test_load_splits_reads_each_file_with_the_format(tmp_path):
    train = write(tmp_path, "train.conll", CONLL)
    test = write(tmp_path, "test.conll", CONLL)
    splits = load_splits(DataSpec(train=str(train), test=str(test), tag_column=1))
    assert splits.family is Family.TOKEN_CLASSIFICATION and splits.data_format == ConllFormat(1)
    assert splits.train[0].tags == ["NNP", "VBZ", "JJ"] and splits.validation == [] and len(splits.test) == 2
    with pytest.raises(PtuningError, match="give --dataset NAME or --train FILE"):
        load_splits(DataSpec())
    assert load_dataset("conll2003-pos").data_format == ConllFormat(1)
