"""Per task family: features from raw examples, decoding of predictions, and scores.

The registry gives each family (``vocabulary.Family``: its head kind and data format are declared there) its Task
class, imported on first use, so the command line answers ``--help`` and argument errors without loading torch or
transformers. Adding a family is an entry in the vocabulary, one here, and its Task module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..vocabulary import Family, family

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


def _generation() -> type[Task]:
    from .generation import GenerationTask

    return GenerationTask


# each family's Task class, loaded on first use
TASK_CLASSES: dict[Family, Callable[[], type[Task]]] = {
    Family.SEQUENCE_CLASSIFICATION: _sequence_classification,
    Family.TOKEN_CLASSIFICATION: _token_classification,
    Family.QUESTION_ANSWERING: _question_answering,
    Family.MULTIPLE_CHOICE: _multiple_choice,
    Family.SRL: _srl,
    Family.GENERATION: _generation,
}


def task_class(name: Family | str) -> type[Task]:
    """The Task class of family ``name``, or an error listing the families."""
    return TASK_CLASSES[family(name)]()


def make_task(
    name: Family | str, tokenizer: PreTrainedTokenizerBase, labels: list[str], max_length: int, **options: Any
) -> Task:
    """The Task of family ``name``; ``options`` are its decoding settings (QA: version_2, null_threshold, ...)."""
    return task_class(name)(tokenizer, labels, max_length, **options)


__all__ = ["TASK_CLASSES", "make_task", "task_class"]
