"""Hub datasets through datasets.load_dataset: column mapping, label names, and the offline message."""

from __future__ import annotations

import datasets
import pytest

from ptuning.data.hf import load_hf, parse_name
from ptuning.errors import DataError, PtuningError
from ptuning.vocabulary import Family

COLUMNS = {
    "text_column": "sentence",
    "pair_column": None,
    "label_column": "label",
    "tokens_column": "tokens",
    "tags_column": "ner_tags",
}


@pytest.fixture
def fake_hub(monkeypatch):
    """What load_dataset returns for a small GLUE-like and a CoNLL-like dataset, built in memory."""
    sentiment = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"sentence": ["good", "bad"], "label": [1, 0]},
                features=datasets.Features(
                    {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
                ),
            ),
            "test": datasets.Dataset.from_dict({"sentence": ["meh"], "label": [-1]}),
        }
    )
    tags = datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))
    ner = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"tokens": [["Peter", "runs"]], "ner_tags": [[1, 0]]},
                features=datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": tags}),
            ),
        }
    )
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config))
        return {"glue": sentiment, "conll": ner}[name]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_class_labels_become_names_and_unlabeled_rows_none(fake_hub):
    splits = load_hf("hf:glue:sst2", Family.SEQUENCE_CLASSIFICATION, COLUMNS)
    assert fake_hub == [("glue", "sst2")]
    assert [(e.text, e.label) for e in splits.train] == [("good", "positive"), ("bad", "negative")]
    assert splits.test[0].label is None and splits.validation == []


def test_token_tags_become_names(fake_hub):
    splits = load_hf("hf:conll", Family.TOKEN_CLASSIFICATION, COLUMNS)
    assert splits.train[0].words == ["Peter", "runs"] and splits.train[0].tags == ["B-PER", "O"]


def test_missing_column_is_named(fake_hub):
    with pytest.raises(DataError, match=r"no column 'text'; columns: \['sentence', 'label'\]"):
        load_hf("hf:glue:sst2", Family.SEQUENCE_CLASSIFICATION, {**COLUMNS, "text_column": "text"})


def test_unreachable_dataset_gives_a_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(PtuningError, match="could not load 'hf:no-such-org/no-such-dataset'"):
        load_hf("hf:no-such-org/no-such-dataset", Family.SEQUENCE_CLASSIFICATION, COLUMNS)
    with pytest.raises(PtuningError, match="expected hf:NAME"):
        parse_name("hf:a:b:c")
