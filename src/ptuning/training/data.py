"""One task of a run: its data read once (the only place training reads the data layer), subsampled, its labels,
and its Task (what encodes, decodes and scores it) prepared for the model."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..data.formats import ExampleFormat
from ..data.readers import label_set
from ..data.spec import load_splits
from ..errors import DataError
from ..recipe import Recipe
from ..tasks import make_task, task_class
from ..templates import Verbalizer
from ..vocabulary import Family

if TYPE_CHECKING:
    from ..checkpoint import TaskRecord
    from ..model import PromptedModel
    from ..tasks.base import Task

EVAL_SUBSAMPLE_SEED = 0
QA_MAX_LENGTH = 256  # question-answering windows (with a stride); CPU cost grows with window length


@dataclass
class TaskRun:
    """One task of a run: its data, labels and Task (what encodes, decodes and scores it)."""

    name: str
    recipe: Recipe
    family: Family
    data_format: ExampleFormat
    train: list[Any]
    validation: list[Any]
    test: list[Any]
    labels: list[str]
    task: Task | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_length: int = 0
    verbalizer: Verbalizer | None = None  # the template and label words of a verbalizer head

    def describe(self, record: TaskRecord) -> TaskRecord:
        """The model's record of this task with what the checkpoint keeps so that eval and predict read and decode
        its data as training did."""
        return dataclasses.replace(
            record,
            family=self.family,
            data=self.data_format,
            dataset=self.recipe.dataset,
            max_length=self.max_length,
            options=dict(self.options),
        )


def read_task_run(name: str, recipe: Recipe) -> TaskRun:
    """Read one task's data (``recipe`` is that task's part of the run's recipe); training subsamples move with the
    seed, evaluation subsamples do not (every run of a comparison scores the same examples)."""
    verbalizer = recipe.verbalizer_spec()
    splits = load_splits(recipe.data_spec())
    labels = _labels(recipe, task_class(splits.family).gold, splits.train)
    if verbalizer is not None:
        _check_verbalizer(name, verbalizer, splits.family, labels)
    return TaskRun(
        name=name,
        recipe=recipe,
        family=splits.family,
        data_format=splits.data_format,
        train=_subsample(splits.train, recipe.max_train_samples, recipe.seed),
        validation=_subsample(splits.validation, recipe.max_eval_samples, EVAL_SUBSAMPLE_SEED),
        test=_subsample(splits.test, recipe.max_eval_samples, EVAL_SUBSAMPLE_SEED),
        labels=labels,
        options={**splits.options, **_generation_options(recipe, splits.family)},
        verbalizer=verbalizer,
    )


def _generation_options(recipe: Recipe, family: Family) -> dict[str, Any]:
    """What a generation task keeps in its checkpoint to write and score as it trained: its parser, answer length,
    and how an input becomes the text the model continues (a template, the chat template)."""
    if family != Family.GENERATION:
        return {}
    return {
        "parser": recipe.parser,
        "max_new_tokens": recipe.max_new_tokens,
        "chat_template": recipe.chat_template,
        "template": recipe.template,
    }


def _check_verbalizer(name: str, verbalizer: Verbalizer, family: Family, labels: list[str]) -> None:
    """A verbalizer scores sequence classification, a word for each label of the data, no other."""
    if family != Family.SEQUENCE_CLASSIFICATION:
        raise DataError(f"task {name!r}: a verbalizer scores the labels of sequence classification; this is {family}")
    if sorted(verbalizer.words) != sorted(labels):
        raise DataError(
            f"task {name!r}: the verbalizer's labels {sorted(verbalizer.words)} must be the data's labels "
            f"{sorted(labels)}: give one word for each (--verbalizer LABEL=WORD,...)"
        )


def prepare_task(run: TaskRun, model: PromptedModel, recipe: Recipe) -> None:
    """Give the run its Task and its inputs' length limit (what the model's prompt leaves room for), and check its
    labels on every split."""
    room = model.text_room(model.tasks[run.name].prompt)
    default_length = QA_MAX_LENGTH if run.family == Family.QUESTION_ANSWERING else room
    run.max_length = min(recipe.max_length or default_length, room)
    scorer = model.tasks[run.name].scorer
    extra = {} if scorer is None else {"verbalizer": scorer}
    run.task = make_task(run.family, model.tokenizer, run.labels, run.max_length, **run.options, **extra)
    for examples in (run.train, run.validation, run.test):
        try:
            run.task.check_labels(examples)
        except DataError as error:
            if run.recipe.labels is not None:
                raise
            raise DataError(f"{error}; declare the whole label set with --labels FILE|a,b,c") from error


def _subsample(examples: list[Any], limit: int | None, seed: int) -> list[Any]:
    if limit is None or len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


def _labels(recipe: Recipe, gold: Callable[[Any], Iterable[str]], examples: list[Any]) -> list[str]:
    """The declared label set (``--labels``), else every label of the whole training set."""
    declared = recipe.declared_labels()
    if declared is not None:
        return declared
    # from the whole training set: a subsample may miss rare labels that validation or test still hold
    return label_set(label for example in examples for label in gold(example))
