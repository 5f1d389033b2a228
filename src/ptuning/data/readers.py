"""Readers for CoNLL column files and CSV/TSV/JSONL text-classification files.

Every malformed input raises DataError naming the file and the line.
"""

from __future__ import annotations

import codecs
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


def decode_lines(data: bytes, name: str) -> list[str]:
    """The lines of UTF-8 text, a leading byte order mark dropped, or a DataError naming the first line that is not
    UTF-8. Lines end at LF, CRLF or CR only (not at U+2028, which a JSON string may hold)."""
    data = data.removeprefix(codecs.BOM_UTF8)  # not utf-8-sig, whose error offsets leave the mark out
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{name}:{line}: not UTF-8 text (byte {data[error.start]:#04x}); save it as UTF-8") from error
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def text_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file: every reader of user files (training data, predict's input) reads them so."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    return decode_lines(path.read_bytes(), str(path))


def open_lines(path: Path) -> list[str]:
    """The lines of a data file that holds something (an empty one is refused)."""
    lines = text_lines(path)
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

    for number, line in enumerate(open_lines(path), start=1):
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


LONE_SURROGATE = "a lone surrogate at character {at} (a \\uD800-\\uDFFF escape without its pair)"


def lone_surrogate_at(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (what a \\uD800-\\uDFFF JSON escape without its pair parses to: no
    tokenizer takes it and no UTF-8 output can hold it), or None for Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def unicode_only(value: Any, source: str, field: str = "") -> Any:
    """``value`` (parsed JSON) if each of its strings is Unicode text."""
    if isinstance(value, str):
        at = lone_surrogate_at(value)
        if at is not None:
            raise DataError(f"{source}: {field or 'a string'}: {LONE_SURROGATE.format(at=at)}")
    elif isinstance(value, dict):
        for key, item in value.items():
            unicode_only(item, source, f"{field}.{key}" if field else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            unicode_only(item, source, f"{field}[{index}]")
    return value


def json_object(line: str, source: str) -> dict[str, Any]:
    """The JSON object of one input line (``source``: its file and line), its strings Unicode text."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{source}: not a JSON object ({error.msg})") from error
    if not isinstance(record, dict):
        raise DataError(f"{source}: expected a JSON object, found {type(record).__name__}")
    return unicode_only(record, source)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for JSONL, CSV and TSV files, chosen by extension."""
    lines = open_lines(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            yield number, json_object(line, f"{path}:{number}")
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
        if pair_column and not isinstance(pair, str):
            raise DataError(f"{path}:{number}: {pair_column}: expected a string, got {json.dumps(pair)}")
        label = record[label_column] if label_column else None
        examples.append(LabeledText(text, pair, None if label is None else str(label), f"{path}:{number}"))
    if not examples:
        raise DataError(f"{path}: no records found")
    return examples


def label_set(labels: Iterable[str]) -> list[str]:
    """The sorted distinct labels, the order a checkpoint stores."""
    return sorted(set(labels))
