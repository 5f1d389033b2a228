"""Per task family: features from raw examples, decoding of predictions, and scores.

The registry names each task family and the model head it trains; a family's Task class is imported on first use,
so the command line answers ``--help`` and argument errors without loading torch or transformers.
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


@dataclass(frozen=True)
class TaskFamily:
    """A task family: the PromptedModel head it trains, and its Task class (loaded on first use)."""

    model_task: str
    load: Callable[[], type[Task]]


TASK_FAMILIES: dict[str, TaskFamily] = {
    "sequence-classification": TaskFamily("sequence-classification", _sequence_classification),
    "token-classification": TaskFamily("token-classification", _token_classification),
    "question-answering": TaskFamily("question-answering", _question_answering),
    "multiple-choice": TaskFamily("multiple-choice", _multiple_choice),
    "srl": TaskFamily("token-classification", _srl),
}


def _family(name: str) -> TaskFamily:
    if name not in TASK_FAMILIES:
        raise PtuningError(f"unknown task {name!r}; supported: {', '.join(TASK_FAMILIES)}")
    return TASK_FAMILIES[name]


def task_class(name: str) -> type[Task]:
    return _family(name).load()


def model_task(name: str) -> str:
    return _family(name).model_task


def make_task(
    name: str, tokenizer: PreTrainedTokenizerBase, labels: list[str], max_length: int, **options: Any
) -> Task:
    """The task ``name``; ``options`` are its decoding settings (QA: version_2, null_threshold, doc_stride ...)."""
    return task_class(name)(tokenizer, labels, max_length, **options)


__all__ = ["TASK_FAMILIES", "TaskFamily", "make_task", "model_task", "task_class"]
