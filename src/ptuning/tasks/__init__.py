"""Per task family: features from raw examples, decoding of predictions, and scores."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..errors import PtuningError
from .base import Encoded, Task, run_model
from .sequence_classification import SequenceClassificationTask
from .token_classification import TokenClassificationTask

TASK_CLASSES: dict[str, type[Task]] = {
    "sequence-classification": SequenceClassificationTask,
    "token-classification": TokenClassificationTask,
}


def make_task(name: str, tokenizer: PreTrainedTokenizerBase, labels: list[str], max_length: int) -> Task:
    if name not in TASK_CLASSES:
        raise PtuningError(f"unknown task {name!r}; supported: {', '.join(TASK_CLASSES)}")
    return TASK_CLASSES[name](tokenizer, labels, max_length)


__all__ = ["Encoded", "Task", "make_task", "run_model", "TASK_CLASSES"]
