"""Reader for extractive question answering in the official SQuAD 1.1 / 2.0 JSON format.

Every malformed input raises DataError naming the file and the record (``data[i].paragraphs[j].qas[k]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .readers import text_lines, unicode_only


@dataclass
class QAExample:
    """One question about one context; ``answers`` are (text, character offset) pairs, any of which is correct."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)
    is_impossible: bool = False
    source: str = ""


def _field(record: Any, key: str, kind: type, where: str) -> Any:
    """``record[key]``, refusing a missing key or a value of the wrong JSON type with the record's place."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(record).__name__}")
    if key not in record:
        raise DataError(f"{where}: missing {key!r}; the record has {sorted(record)}")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"{where}: {key!r} must be {kind.__name__}, found {type(value).__name__}")
    return value


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = _field(record, key, str, where)
    if not value.strip():
        raise DataError(f"{where}: {key!r} is empty")
    return value


def _answers(qa: dict[str, Any], context: str, where: str) -> list[tuple[str, int]]:
    """The gold answers, each checked to be the very substring of the context at its ``answer_start``."""
    answers = []
    for number, answer in enumerate(_field(qa, "answers", list, where)):
        place = f"{where} answers[{number}]"
        text = _text(answer, "text", place)
        start = _field(answer, "answer_start", int, place)
        if start < 0 or start + len(text) > len(context):
            raise DataError(
                f"{place}: answer {text!r} at answer_start {start} lies outside the context ({len(context)} characters)"
            )
        found = context[start : start + len(text)]
        if found != text:
            raise DataError(f"{place}: the context at answer_start {start} reads {found!r}, not the answer {text!r}")
        answers.append((text, start))
    return answers


def _question(qa: Any, context: str, place: str) -> QAExample:
    identifier = _field(qa, "id", str, place)
    where = f"{place} id={identifier}"
    question = _text(qa, "question", where)
    impossible = _field(qa, "is_impossible", bool, where) if "is_impossible" in qa else False
    answers = [] if impossible and "answers" not in qa else _answers(qa, context, where)
    if impossible and answers:
        raise DataError(f"{where}: is_impossible is true but the question has {len(answers)} answer(s)")
    if not impossible and not answers:
        raise DataError(f'{where}: no answers (an unanswerable SQuAD 2.0 question says "is_impossible": true)')
    return QAExample(identifier, question, context, answers, impossible, where)


def read_squad(path: str | Path) -> list[QAExample]:
    """Every question of a SQuAD 1.1 or 2.0 file, in file order; question ids must be unique."""
    path = Path(path)
    try:
        document = unicode_only(json.loads("\n".join(text_lines(path))), str(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not JSON ({error.msg} at line {error.lineno} column {error.colno})") from error
    examples: list[QAExample] = []
    places: dict[str, str] = {}
    for i, article in enumerate(_field(document, "data", list, f"{path}: the top level")):
        for j, paragraph in enumerate(_field(article, "paragraphs", list, f"{path}: data[{i}]")):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            context = _text(paragraph, "context", where)
            for k, qa in enumerate(_field(paragraph, "qas", list, where)):
                example = _question(qa, context, f"{where}.qas[{k}]")
                if example.id in places:
                    raise DataError(f"{example.source}: the id is already used by {places[example.id]}")
                places[example.id] = example.source
                examples.append(example)
    if not examples:
        raise DataError(f"{path}: no questions found")
    return examples
