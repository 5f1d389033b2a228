"""Per task family: features from raw examples, decoding of predictions, and scores.

The registry defines each task family once: the kind of head it trains (``heads.HEAD_KINDS``: width, loss), its
Task class (imported on first use, so the command line answers ``--help`` and argument errors without loading
torch or transformers), and how its files are read. Adding a family is an entry here and its Task module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import PtuningError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .base import Task


def _sequence_classification() -> type[Task]:
    from .sequence_classification import SequenceClassificationTask

    return SequenceClassificationTask


def _token_classification() -> type[Task]:
    from .token_classification import TokenClassificationTask

    return TokenClassificationTask


def _question_answering() -> type[Task]:
    from .question_answering import QuestionAnsweringTask

    return QuestionAnsweringTask


def _multiple_choice() -> type[Task]:
    from .multiple_choice import MultipleChoiceTask

    return MultipleChoiceTask


def _srl() -> type[Task]:
    from .srl import SRLTask

    return SRLTask


def conll_reader(settings: Any) -> dict[str, Any]:
    return {"format": "conll", "tag_column": settings.tag_column}


def table_reader(settings: Any) -> dict[str, Any]:
    columns = ("text_column", "pair_column", "label_column")
    return {"format": "table", **{column: getattr(settings, column) for column in columns}}


def squad_reader(settings: Any, version_2: bool = False) -> dict[str, Any]:
    return {"format": "squad", "options": {"version_2": version_2}}


def srl_reader(settings: Any) -> dict[str, Any]:
    return {"format": "srl"}


def copa_reader(settings: Any) -> dict[str, Any]:
    return {"format": "superglue", "task": "copa"}


@dataclass(frozen=True)
class TaskFamily:
    """A task family: the head kind it trains (a ``heads.HEAD_KINDS`` name), its Task class (loaded on first use),
    and the reader of its local files, made from the recipe's column settings (kept in the checkpoint)."""

    model_task: str
    load: Callable[[], type[Task]]
    reader: Callable[[Any], dict[str, Any]]


TASK_FAMILIES: dict[str, TaskFamily] = {
    "sequence-classification": TaskFamily("sequence-classification", _sequence_classification, table_reader),
    "token-classification": TaskFamily("token-classification", _token_classification, conll_reader),
    "question-answering": TaskFamily("question-answering", _question_answering, squad_reader),
    "multiple-choice": TaskFamily("multiple-choice", _multiple_choice, copa_reader),
    "srl": TaskFamily("token-classification", _srl, srl_reader),
}


def _family(name: str) -> TaskFamily:
    if name not in TASK_FAMILIES:
        raise PtuningError(f"unknown task {name!r}; supported: {', '.join(TASK_FAMILIES)}")
    return TASK_FAMILIES[name]


def task_class(name: str) -> type[Task]:
    return _family(name).load()


def model_task(name: str) -> str:
    return _family(name).model_task


def file_reader(name: str, settings: Any) -> dict[str, Any]:
    """How the local files of task family ``name`` are read, with the recipe's column settings."""
    return _family(name).reader(settings)


def make_task(
    name: str, tokenizer: PreTrainedTokenizerBase, labels: list[str], max_length: int, **options: Any
) -> Task:
    """The task ``name``; ``options`` are its decoding settings (QA: version_2, null_threshold, doc_stride ...)."""
    return task_class(name)(tokenizer, labels, max_length, **options)


__all__ = ["TASK_FAMILIES", "TaskFamily", "file_reader", "make_task", "model_task", "task_class"]
