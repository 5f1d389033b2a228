"""Answer inputs of any loaded task with one backbone: the features of every task are batched together by length,
one backbone forward per batch, each task's head on its own rows, answers in input order.

The command line's ``predict NAME=DIR ...`` runs on it, and so can a server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import DataCollatorWithPadding

from .checkpoint import read_config
from .errors import DataError, PtuningError
from .model import PromptedModel
from .tasks import make_task
from .tasks.base import Encoded, Task, run_model, token_count
from .vocabulary import TaskName
from .writing import Writing

logger = logging.getLogger("ptuning")
LISTED = 20  # names a message lists at most: a server with a task registry may have thousands loaded


def listed(names: Iterable[str], limit: int = LISTED) -> str:
    """``names`` for a message: the first ``limit`` of them, then how many more ("none" if there are none)."""
    names = list(names)
    shown = ", ".join(names[:limit]) or "none"
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def unknown_task(name: Any, loaded: Iterable[str]) -> str:
    """What an error says of a task ``name`` not loaded: the loaded tasks (the first ``LISTED``)."""
    return f"unknown task {name!r}; loaded tasks: {listed(loaded)}"


def task_for(model: PromptedModel, name: str) -> Task:
    """The Task object that encodes, decodes and formats the inputs of the loaded task ``name``."""
    record = model.tasks[name]
    room = model.text_room(record.prompt)
    max_length = min(record.max_length or room, room)
    return make_task(record.family_name, model.tokenizer, record.labels, max_length, **record.task_options())


@contextmanager
def loading(name: str, folder: str | Path) -> Iterator[None]:
    """Errors of loading task ``name`` from ``folder``, said with both (of several tasks, which one failed)."""
    try:
        yield
    except PtuningError as error:
        raise type(error)(f"cannot load task {name!r} from {folder}: {error}") from error


@dataclass
class Request:
    """One input: the task it names, the example its Task parsed, and its features once encoded."""

    task: str
    example: Any
    encoded: Encoded | None = None


class Predictor:
    """Every task of a model, ready to answer: a forward holds ``batch_size`` features at most, whatever their
    tasks, and (with ``max_tokens``) at most that many padded tokens; ``progress`` shows a bar on long inputs."""

    def __init__(
        self,
        model: PromptedModel,
        batch_size: int = 64,
        max_tokens: int | None = None,
        progress: bool = True,
        writing: Writing | None = None,
    ):
        self.model = model.eval()
        self.writing = writing or Writing()  # how generation tasks write
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.progress = progress
        self.tasks: dict[str, Task] = {name: self._task(name) for name in model.task_names}

    @classmethod
    def from_checkpoints(cls, sources: dict[str, str | Path] | str | Path, **settings: Any) -> Predictor:
        """Load each checkpoint (or run) folder onto one backbone under its name; or one folder, its tasks under
        the names it saved them with. ``settings``: the constructor's (``batch_size``, ``max_tokens``, ...)."""
        if not isinstance(sources, dict):
            return cls(PromptedModel.from_pretrained(sources), **settings)
        (first, folder), *others = sources.items()
        lm_head = False  # any task may need the backbone's language-modelling head: it is kept for all
        for name, source in sources.items():
            with loading(name, source):
                lm_head = lm_head or any(record.uses_lm_head for record in read_config(source).tasks.values())
        with loading(first, folder):  # the first checkpoint names the backbone; any may need its LM head
            predictor = cls(PromptedModel.from_pretrained({first: folder}, lm_head=lm_head), **settings)
        for name, folder in others:
            predictor.load(name, folder)
        return predictor

    def _task(self, name: str) -> Task:
        task = task_for(self.model, name)
        task.log_truncation = False  # each cut input's answer says so; predict() logs one count per call
        return task

    def parse(self, record: Any, source: str) -> Request:
        """A JSON object naming its task (``{"task": "ner", "text": ...}``) and that task's input fields, encoded."""
        if not isinstance(record, dict):
            raise DataError(f'{source}: expected a JSON object naming its task, like {{"task": "...", "text": "..."}}')
        name = record.get("task")
        if not isinstance(name, str) or name not in self.tasks:  # a list or object would not even hash
            raise DataError(f"{source}: {unknown_task(name, self.tasks)}")
        fields = {key: value for key, value in record.items() if key != "task"}
        request = Request(name, self.tasks[name].parse_input("", fields, source))
        # a text of no tokens (empty, to a tokenizer that adds none of its own) would leave the model nothing to read
        for feature in self.encode(request).inputs:
            ids = feature["input_ids"]
            if not ids or any(isinstance(row, list) and not row for row in ids):
                raise DataError(f"{source}: no tokens to read (is its text empty?)")
        return request

    def encode(self, request: Request) -> Encoded:
        """The request's features, tokenized once (a server counts them on arrival, the batch reuses them)."""
        if request.encoded is None:
            request.encoded = self.tasks[request.task].encode([request.example], with_labels=False)
        return request.encoded

    def tokens(self, request: Request) -> int:
        """Tokens the request's features hold (what a batch's token budget counts)."""
        return sum(token_count(feature["input_ids"]) for feature in self.encode(request).inputs)

    def load(self, name: str, folder: str | Path) -> list[str]:
        """Add a checkpoint's task under ``name`` (a multi-task checkpoint's as ``NAME:TASK``) onto the same
        backbone (refused if made for another); returns the names added. A load that fails adds nothing."""
        with loading(name, folder):
            names = self.model.load_task(folder, name=name)
            try:
                for added in names:
                    self.tasks[added] = self._task(added)
            except Exception:
                for added in names:
                    self.tasks.pop(added, None)
                    self.model.remove_task(added)
                raise
        return names

    def unload(self, name: str) -> None:
        del self.tasks[name]
        self.model.remove_task(name)

    def predict(self, requests: list[Request]) -> list[dict[str, Any]]:
        """The formatted answer of every request, in order (each as that task's own ``predict`` formats it)."""
        answers: list[dict[str, Any]] = [{}] * len(requests)
        # tasks whose features are several rows (choices, a verbalizer's label words): inputs of another shape,
        # batched apart by task and number of rows
        alone: dict[tuple[str, int], list[int]] = {}
        mixed: list[int] = []
        written: list[int] = []  # generation: every task's inputs decoded together, each under its own prefix
        for position, request in enumerate(requests):
            if self.tasks[request.task].generates:
                written.append(position)
            elif self.tasks[request.task].choice_rows:
                choices = len(self.encode(request).inputs[0]["input_ids"])
                alone.setdefault((request.task, choices), []).append(position)
            else:
                mixed.append(position)
        for (name, _), positions in alone.items():
            self._answer(positions, requests, answers, self.tasks[name].collator())
        if mixed:
            self._answer(mixed, requests, answers, DataCollatorWithPadding(self.model.tokenizer))
        if written:
            self._write(written, requests, answers)
        truncated = sum("warning" in answer for answer in answers)
        if truncated:
            logger.warning("%d input(s) were longer than their task allows and were truncated", truncated)
        return answers

    def _answer(self, positions: list[int], requests: list[Request], answers: list[dict], collator) -> None:
        """Run the features of ``requests[positions]`` batched together; decode and format each request's own."""
        task_index = {name: index for index, name in enumerate(self.model.task_names)}
        features: list[dict[str, Any]] = []
        task_ids: list[int] = []
        per_token: list[bool] = []
        spans: list[tuple[int, int]] = []
        for position in positions:
            request = requests[position]
            inputs = self.encode(request).inputs
            spans.append((len(features), len(features) + len(inputs)))
            features += inputs
            task_ids += [task_index[request.task]] * len(inputs)
            per_token += [self.tasks[request.task].per_token] * len(inputs)
        logits = run_model(
            self.model, features, collator, self.batch_size, per_token, task_ids, self.max_tokens, self.progress
        )
        for position, (start, end) in zip(positions, spans, strict=True):
            request, task = requests[position], self.tasks[requests[position].task]
            (prediction,) = task.decode(logits[start:end], request.encoded, [request.example])
            answers[position] = task.format_prediction(request.example, prediction)
            if request.encoded.truncated:  # predict's truncation rule, said per input
                answers[position]["warning"] = (
                    f"the input is longer than {task.max_length} tokens and was truncated to fit"
                )

    def _write(self, positions: list[int], requests: list[Request], answers: list[dict]) -> None:
        """Generate the answers of ``requests[positions]``, inputs of similar length batched together whatever
        their tasks, each row under its task's prefix and cut at its task's answer length."""
        from .generation import generate_from_ids

        prompts = {position: self.encode(requests[position]).inputs[0]["input_ids"] for position in positions}
        order = sorted(positions, key=lambda position: len(prompts[position]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            names = [requests[position].task for position in chunk]
            settings = {"max_new_tokens": [self.tasks[name].max_new_tokens for name in names]}
            settings.update(self.writing.generation_kwargs())
            rows = [prompts[position] for position in chunk]
            written = generate_from_ids(self.model, self.model.tokenizer, rows, names, **settings)
            for position, result in zip(chunk, written, strict=True):
                request, task = requests[position], self.tasks[requests[position].task]
                answers[position] = task.format_prediction(request.example, result["generated_text"])
                if request.encoded.truncated:
                    answers[position]["warning"] = (
                        f"the input is longer than {task.max_length - task.max_new_tokens} tokens and was truncated"
                    )


def parse_sources(values: list[str]) -> dict[str, str] | None:
    """``NAME=DIR`` arguments as a mapping; None for one plain ``DIR`` (single-task predict)."""
    if len(values) == 1 and ("=" not in values[0] or Path(values[0]).exists()):
        return None
    sources: dict[str, str] = {}
    for value in values:
        name, separator, folder = value.partition("=")
        if not separator or not name or not folder:
            raise PtuningError(f"with several checkpoints, name each one: NAME=DIR (got {value!r})")
        TaskName(name)  # checked before minutes of loading the backbone
        if name in sources:
            raise PtuningError(f"the task name {name!r} is given twice")
        sources[name] = folder
    return sources
