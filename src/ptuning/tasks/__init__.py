"""Per task family: features from raw examples, decoding of predictions, and scores."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from ..errors import PtuningError
from .base import Encoded, Task, run_model
from .multiple_choice import MultipleChoiceTask
from .question_answering import QuestionAnsweringTask
from .sequence_classification import SequenceClassificationTask
from .srl import SRLTask
from .token_classification import TokenClassificationTask

# task name -> (task class, the PromptedModel task its head is)
TASK_CLASSES: dict[str, tuple[type[Task], str]] = {
    "sequence-classification": (SequenceClassificationTask, "sequence-classification"),
    "token-classification": (TokenClassificationTask, "token-classification"),
    "question-answering": (QuestionAnsweringTask, "question-answering"),
    "multiple-choice": (MultipleChoiceTask, "multiple-choice"),
    "srl": (SRLTask, "token-classification"),
}


def task_class(name: str) -> type[Task]:
    if name not in TASK_CLASSES:
        raise PtuningError(f"unknown task {name!r}; supported: {', '.join(TASK_CLASSES)}")
    return TASK_CLASSES[name][0]


def model_task(name: str) -> str:
    task_class(name)
    return TASK_CLASSES[name][1]


def make_task(
    name: str, tokenizer: PreTrainedTokenizerBase, labels: list[str], max_length: int, **options: Any
) -> Task:
    """The task ``name``; ``options`` are its decoding settings (QA: version_2, null_threshold, doc_stride ...)."""
    return task_class(name)(tokenizer, labels, max_length, **options)


__all__ = ["Encoded", "Task", "make_task", "model_task", "run_model", "task_class", "TASK_CLASSES"]
