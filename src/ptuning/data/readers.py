"""Readers for CoNLL column files and CSV/TSV/JSONL text-classification files.

Every malformed input raises DataError naming the file and the line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError


@dataclass
class TaggedSentence:
    """One sentence of a tagging corpus: words and one tag per word."""

    words: list[str]
    tags: list[str]
    source: str = ""
    lines: list[int] | None = None  # the file line of each word, so errors can point at the word
    text: str | None = None  # the text the words were split from (for character offsets), if there was one

    def where(self, tag: str) -> str:
        """The file and line of the first word tagged ``tag`` (the sentence's start when lines are unknown)."""
        if self.lines is None or tag not in self.tags:
            return self.source
        path = self.source.rpartition(":")[0]
        return f"{path}:{self.lines[self.tags.index(tag)]}"


@dataclass
class LabeledText:
    """One text (and optional second text) with its label; ``label`` is None for unlabeled input."""

    text: str
    text_pair: str | None
    label: str | None
    source: str = ""


def _open_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from error
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: the file is empty")
    return lines


def read_conll(path: str | Path, tag_column: int = -1) -> list[TaggedSentence]:
    """Sentences of a whitespace-separated column file; blank lines end sentences, ``-DOCSTART-`` is skipped.

    Every token line must have as many columns as the first one; ``tag_column`` picks the tag.
    """
    path = Path(path)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    columns: int | None = None

    def close_sentence() -> None:
        if words:
            sentences.append(TaggedSentence(list(words), list(tags), f"{path}:{lines[0]}", list(lines)))
        words.clear()
        tags.clear()
        lines.clear()

    for number, line in enumerate(_open_lines(path), start=1):
        fields = line.split()
        if not fields:
            close_sentence()
            continue
        if fields[0] == "-DOCSTART-":
            close_sentence()
            continue
        if columns is None:
            columns = len(fields)
            if not -columns <= tag_column < columns:
                raise DataError(f"{path}:{number}: tag column {tag_column} does not exist in {columns} columns")
        elif len(fields) != columns:
            raise DataError(
                f"{path}:{number}: expected {columns} columns like the first token line, found {len(fields)}: {line!r}"
            )
        words.append(fields[0])
        tags.append(fields[tag_column])
        lines.append(number)
    close_sentence()
    if not sentences:
        raise DataError(f"{path}: no sentences found")
    return sentences


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for JSONL, CSV and TSV files, chosen by extension."""
    lines = _open_lines(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not a JSON object ({error.msg})") from error
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}")
            yield number, record
        return
    if path.suffix.lower() not in (".csv", ".tsv"):
        raise DataError(f"{path}: unknown extension; expected .csv, .tsv or .jsonl")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = next(reader)
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{number}: expected {len(header)} fields like the header, found {len(row)}")
        yield number, dict(zip(header, row, strict=True))


def read_labeled_texts(
    path: str | Path,
    text_column: str = "text",
    pair_column: str | None = None,
    label_column: str | None = "label",
) -> list[LabeledText]:
    """Texts and labels from CSV/TSV (with a header row) or JSONL; ``label_column=None`` reads unlabeled text."""
    path = Path(path)
    examples = []
    for number, record in _records(path):
        wanted = [text_column] + [c for c in (pair_column, label_column) if c is not None]
        missing = [column for column in wanted if column not in record]
        if missing:
            raise DataError(f"{path}:{number}: missing {missing}; the record has {sorted(record)}")
        text = record[text_column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{number}: {text_column!r} must be a non-empty string")
        pair = record[pair_column] if pair_column else None
        label = record[label_column] if label_column else None
        examples.append(LabeledText(text, pair, None if label is None else str(label), f"{path}:{number}"))
    if not examples:
        raise DataError(f"{path}: no records found")
    return examples


def label_set(labels: Iterable[str]) -> list[str]:
    """The sorted distinct labels, the order a checkpoint stores."""
    return sorted(set(labels))
