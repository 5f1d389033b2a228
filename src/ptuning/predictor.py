"""Answer inputs of any loaded task with one backbone: the features of every task are batched together by length,
one backbone forward per batch, each task's head on its own rows, answers in input order.

The command line's ``predict NAME=DIR ...`` runs on it, and so can a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import DataCollatorWithPadding

from .errors import DataError, PtuningError
from .model import PromptedModel
from .tasks import make_task
from .tasks.base import Task, run_model, token_count


def task_for(model: PromptedModel, name: str) -> Task:
    """The Task object that encodes, decodes and formats the inputs of the loaded task ``name``."""
    entry = model.tasks[name]
    room = model.text_room(entry.prompt)
    max_length = min(entry.extra.get("max_length") or room, room)
    family = entry.extra.get("task_name", entry.kind)
    return make_task(family, model.tokenizer, entry.labels, max_length, **entry.extra.get("task_options", {}))


@dataclass
class Request:
    """One input: the task it names and the example its Task parsed."""

    task: str
    example: Any


class Predictor:
    """Every task of a model, ready to answer; ``batch_size`` features per forward, whatever their tasks."""

    def __init__(self, model: PromptedModel, batch_size: int = 64):
        self.model = model.eval()
        self.batch_size = batch_size
        self.tasks: dict[str, Task] = {name: task_for(model, name) for name in model.task_names}

    @classmethod
    def from_checkpoints(cls, sources: dict[str, str | Path] | str | Path, batch_size: int = 64) -> Predictor:
        """Load each checkpoint (or run) folder onto one backbone under its name; or one folder, its tasks under
        the names it saved them with."""
        return cls(PromptedModel.from_pretrained(dict(sources) if isinstance(sources, dict) else sources), batch_size)

    def parse(self, record: Any, source: str) -> Request:
        """A JSON object naming its task (``{"task": "ner", "text": ...}``) and that task's input fields."""
        if not isinstance(record, dict):
            raise DataError(f'{source}: expected a JSON object naming its task, like {{"task": "...", "text": "..."}}')
        name = record.get("task")
        if name not in self.tasks:
            loaded = ", ".join(self.tasks)
            raise DataError(f"{source}: unknown task {name!r}; loaded tasks: {loaded}")
        fields = {key: value for key, value in record.items() if key != "task"}
        return Request(name, self.tasks[name].parse_input("", fields, source))

    def tokens(self, request: Request) -> int:
        """Tokens the request's features hold (what a batch's token budget counts)."""
        features = self.tasks[request.task].encode([request.example], with_labels=False).inputs
        return sum(token_count(feature["input_ids"]) for feature in features)

    def load(self, name: str, folder: str | Path) -> None:
        """Add a checkpoint's task under ``name`` (onto the same backbone; refused if made for another)."""
        self.model.load_task(folder, name=name)
        self.tasks[name] = task_for(self.model, name)

    def unload(self, name: str) -> None:
        del self.tasks[name]
        self.model.remove_task(name)

    def predict(self, requests: list[Request]) -> list[dict[str, Any]]:
        """The formatted answer of every request, in order (each as that task's own ``predict`` formats it)."""
        by_task: dict[str, list[int]] = {}
        for position, request in enumerate(requests):
            by_task.setdefault(request.task, []).append(position)
        answers: list[dict[str, Any]] = [{}] * len(requests)
        mixed = {name: rows for name, rows in by_task.items() if not self._runs_alone(name)}
        for name in set(by_task) - set(mixed):  # multiple choice: inputs of another shape, one task per batch
            examples = [requests[i].example for i in by_task[name]]
            predictions = self.tasks[name].predict(self.model.use(name), examples, self.batch_size)
            self.model.active = None
            self._format(name, by_task[name], examples, predictions, requests, answers)
        if mixed:
            self._predict_mixed(mixed, requests, answers)
        return answers

    def _runs_alone(self, name: str) -> bool:
        return self.model.tasks[name].kind == "multiple-choice"

    def _predict_mixed(self, by_task: dict[str, list[int]], requests: list[Request], answers: list[dict]) -> None:
        names = self.model.task_names
        encoded, features, task_ids, per_token, spans = {}, [], [], [], {}
        for name, rows in by_task.items():
            task = self.tasks[name]
            encoded[name] = task.encode([requests[i].example for i in rows], with_labels=False)
            spans[name] = (len(features), len(features) + len(encoded[name].inputs))
            features += encoded[name].inputs
            task_ids += [names.index(name)] * len(encoded[name].inputs)
            per_token += [task.per_token] * len(encoded[name].inputs)
        collator = DataCollatorWithPadding(self.model.tokenizer)
        logits = run_model(self.model, features, collator, self.batch_size, per_token, task_ids)
        for name, rows in by_task.items():
            start, end = spans[name]
            examples = [requests[i].example for i in rows]
            predictions = self.tasks[name].decode(logits[start:end], encoded[name], examples)
            self._format(name, rows, examples, predictions, requests, answers)
            for index in encoded[name].truncated:  # predict's truncation rule, said per input
                answers[rows[index]]["warning"] = (
                    f"the input is longer than {self.tasks[name].max_length} tokens and was truncated to fit"
                )

    def _format(self, name, rows, examples, predictions, requests, answers) -> None:
        for position, example, prediction in zip(rows, examples, predictions, strict=True):
            answers[position] = self.tasks[name].format_prediction(example, prediction)


def parse_sources(values: list[str]) -> dict[str, str] | None:
    """``NAME=DIR`` arguments as a mapping; None for one plain ``DIR`` (single-task predict)."""
    if len(values) == 1 and ("=" not in values[0] or Path(values[0]).exists()):
        return None
    sources: dict[str, str] = {}
    for value in values:
        name, separator, folder = value.partition("=")
        if not separator or not name or not folder:
            raise PtuningError(f"with several checkpoints, name each one: NAME=DIR (got {value!r})")
        if name in sources:
            raise PtuningError(f"the task name {name!r} is given twice")
        sources[name] = folder
    return sources
