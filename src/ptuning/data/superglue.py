"""Readers for the SuperGLUE tasks in their distributed JSONL form (``train.jsonl``, ``val.jsonl``, ``test.jsonl``).

BoolQ, CB, RTE, WiC and WSC become text pairs (``LabeledText``, two segments) for sequence classification;
COPA becomes a ``ChoiceExample`` for multiple choice. Each input template lives in one small function below.
Labels are kept as the strings of the data's values: booleans become ``"True"``/``"False"``, COPA's choice
indices ``"0"``/``"1"``; test files, which have no ``label``, give ``label=None``. Missing fields, wrong
types and impossible values raise DataError naming the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, PtuningError
from ..vocabulary import SUPERGLUE_TASKS
from .readers import LabeledText, _records

COPA_CONNECTORS = {"cause": "because", "effect": "so"}
ENTAILMENT_LABELS = {
    "cb": ("entailment", "contradiction", "neutral"),
    "rte": ("entailment", "not_entailment"),
}


@dataclass
class ChoiceExample:
    """A multiple-choice example: each choice is read as the pair (``context``, choice).

    ``label`` is the index of the right choice as a string ("0", "1", ...), None for unlabeled input.
    """

    context: str
    choices: list[str]
    label: str | None
    source: str = ""


# templates ---------------------------------------------------------------------------------------


def boolq_pair(question: str, passage: str) -> tuple[str, str]:
    """BoolQ: the question first, so truncation of a long pair cuts the passage rather than the question."""
    return question, passage


def entailment_pair(premise: str, hypothesis: str) -> tuple[str, str]:
    """CB and RTE: (premise, hypothesis), the order natural-language-inference models are trained on."""
    return premise, hypothesis


def wic_pair(word: str, sentence1: str, sentence2: str) -> tuple[str, str]:
    """WiC: ``"{word}: {sentence1}"`` and ``sentence2``; naming the word tells the model which sense to compare."""
    return f"{word}: {sentence1}", sentence2


def wsc_pair(text: str, span1_text: str, span2_text: str) -> tuple[str, str]:
    """WSC: the text, then the question whether the pronoun (span 2) refers to the candidate (span 1)."""
    return text, f'Does "{span2_text}" refer to "{span1_text}"?'


def copa_context(premise: str, question: str) -> str:
    """COPA: the premise followed by its connector ("because" for a cause, "so" for an effect).

    Each choice is then the second segment, e.g. ("The man broke his toe. because", "He dropped a hammer on
    his foot."), as in the P-Tuning v2 reference; the choices stay verbatim for predictions.
    """
    return f"{premise} {COPA_CONNECTORS[question]}"


# records -----------------------------------------------------------------------------------------


def _field(record: dict[str, Any], name: str, kind: type, where: str) -> Any:
    """``record[name]`` checked to be a ``kind`` (a JSON boolean is not accepted as a number)."""
    if name not in record:
        raise DataError(f"{where}: missing field {name!r}; the record has {sorted(record)}")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"{where}: field {name!r} must be {kind.__name__}, found {type(value).__name__} {value!r}")
    return value


def _label(record: dict[str, Any], kind: type, where: str, allowed: tuple[Any, ...] | None = None) -> str | None:
    """The label as a string, None where the record has none (test files)."""
    if record.get("label") is None:
        return None
    value = _field(record, "label", kind, where)
    if allowed is not None and value not in allowed:
        raise DataError(f"{where}: field 'label' must be one of {list(allowed)}, found {value!r}")
    return str(value)


def _boolq(record: dict[str, Any], where: str) -> LabeledText:
    text, pair = boolq_pair(_field(record, "question", str, where), _field(record, "passage", str, where))
    return LabeledText(text, pair, _label(record, bool, where), where)


def _entailment(task: str) -> Callable[[dict[str, Any], str], LabeledText]:
    def read(record: dict[str, Any], where: str) -> LabeledText:
        text, pair = entailment_pair(_field(record, "premise", str, where), _field(record, "hypothesis", str, where))
        return LabeledText(text, pair, _label(record, str, where, ENTAILMENT_LABELS[task]), where)

    return read


def _wic(record: dict[str, Any], where: str) -> LabeledText:
    word, first, second = (_field(record, name, str, where) for name in ("word", "sentence1", "sentence2"))
    text, pair = wic_pair(word, first, second)
    return LabeledText(text, pair, _label(record, bool, where), where)


def _wsc(record: dict[str, Any], where: str) -> LabeledText:
    target = _field(record, "target", dict, where)
    spans = [_field(target, name, str, f"{where}: field 'target'") for name in ("span1_text", "span2_text")]
    text, pair = wsc_pair(_field(record, "text", str, where), *spans)
    return LabeledText(text, pair, _label(record, bool, where), where)


def copa_example(record: dict[str, Any], where: str) -> ChoiceExample:
    """One COPA record ``{premise, choice1, choice2, question, label}`` as a two-choice example."""
    premise, question, *choices = (
        _field(record, name, str, where) for name in ("premise", "question", "choice1", "choice2")
    )
    if question not in COPA_CONNECTORS:
        raise DataError(f"{where}: field 'question' must be one of {list(COPA_CONNECTORS)}, found {question!r}")
    return ChoiceExample(copa_context(premise, question), choices, _label(record, int, where, (0, 1)), where)


READERS: dict[str, Callable[[dict[str, Any], str], LabeledText | ChoiceExample]] = {
    "boolq": _boolq,
    "cb": _entailment("cb"),
    "rte": _entailment("rte"),
    "wic": _wic,
    "wsc": _wsc,
    "copa": copa_example,
}


def read_superglue(task: str, path: str | Path) -> list[LabeledText] | list[ChoiceExample]:
    """Examples of one SuperGLUE JSONL file of ``task`` (one of ``SUPERGLUE_TASKS``)."""
    if task not in READERS:
        raise PtuningError(f"unknown SuperGLUE task {task!r}; supported: {', '.join(SUPERGLUE_TASKS)}")
    path = Path(path)
    examples = [READERS[task](record, f"{path}:{number}") for number, record in _records(path)]
    if not examples:
        raise DataError(f"{path}: no records found")
    return examples
