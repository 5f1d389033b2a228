"""Generation batching: the prompts of generation requests of any tasks wait in one list; a batch takes the oldest and
every waiting prompt that may decode beside it within the token budget, and runs them in one ``generate`` call in the
inference thread that prediction batches use (one model, one thread). Greedy prompts of any tasks and answer lengths
share a batch; sampled ones only with the same temperature, top_p and length and no seed; a seeded one decodes alone
(the same seed writes the same text whatever the traffic).

After every decoding step a stopping criterion (``Watcher``) ends each row at its own end (end of text, one of its
stop strings, its length) and hands each row's new text to its request on the event loop: a stream gets each piece as
it is written, an answer comes as soon as its row ends. A batch runs to its end: transformers' ``generate`` takes no
new rows mid-call, so requests that arrive meanwhile wait for the next batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase, StoppingCriteria

from ..data.generation import GenerationExample
from ..errors import DataError
from ..generation import end_ids_of, generate_from_ids
from ..predictor import Predictor
from ..tasks.base import Task
from .batching import Admission
from .config import ServeConfig
from .errors import ApiError
from .metrics import Metrics

logger = logging.getLogger("ptuning")
INCOMPLETE = "\ufffd"  # what a character cut between two tokens decodes to until its last bytes come


@dataclass(frozen=True)
class Sampling:
    """How a request picks its tokens: greedy at temperature 0, else sampled from the ``top_p`` nucleus."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Piece:
    """What one step wrote for one row: its token and new text (text that may begin a stop string, or ends in a cut
    character, is held back until known), its answer on its last step, or the error that ended its batch."""

    index: int
    token: int = -1
    text: str = ""
    special: bool = False
    answer: dict[str, Any] | None = None
    error: Exception | None = None


@dataclass(eq=False)
class Row:
    """One prompt to continue (the ``index``-th of its request) and the queue its pieces go to."""

    task: str
    tokens: list[int]
    max_new_tokens: int
    stops: list[str]
    sampling: Sampling
    room: int  # positions its task's prefix leaves for text
    index: int
    events: asyncio.Queue[Piece]
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # its client left: the row ends at the next step

    def key(self) -> tuple:
        """Rows of one key may decode in one batch."""
        if self.sampling.temperature == 0:
            return ("greedy",)
        if self.sampling.seed is not None:
            return ("alone", id(self))
        return ("sampled", self.sampling.temperature, self.sampling.top_p, self.max_new_tokens)


def generation_task(predictor: Predictor, name: str) -> Task:
    """The loaded generation task ``name``, or a 404 naming those there are."""
    task = predictor.tasks.get(name)
    if task is None or not task.generates:
        names = ", ".join(known for known, loaded in predictor.tasks.items() if loaded.generates) or "none"
        kind = None if task is None else predictor.model.tasks[name].family_name
        what = f"unknown task {name!r}" if kind is None else f"task {name!r} is {kind}, not a generation task"
        raise ApiError(404, "unknown_task", f"{what}; generation tasks: {names}")
    return task


def prompt_tokens(task: Task, example: GenerationExample) -> list[int]:
    """The tokens the task continues for ``example`` (a text as its inputs were written, or chat messages rendered
    with the tokenizer's chat template up to the assistant's turn), or a 422 naming the field."""
    try:
        tokens = task.prompt_ids(example)
    except DataError as error:
        raise ApiError(422, "validation", str(error)) from error
    except TemplateError as error:  # the template's own refusal (roles out of order, ...)
        raise ApiError(422, "validation", f"{example.source}: the chat template refused them: {error}") from error
    if not tokens:
        raise ApiError(422, "validation", f"{example.source}: no tokens to continue from")
    return tokens


def shown(text: str, stops: list[str]) -> str:
    """The part of a row's text that can be sent now: without a cut character at its end, nor an end that may be the
    beginning of a stop string."""
    cut = len(text.rstrip(INCOMPLETE))
    for stop in stops:
        for length in range(min(len(stop) - 1, cut), 0, -1):
            if text[:cut].endswith(stop[:length]):
                cut -= length
                break
    return text[:cut]


class Watcher(StoppingCriteria):
    """Called after every step with the ids so far (batch, T + new): ends each row at its own end, as
    ``generate_from_ids`` would alone, and sends each row's new text to its request on the event loop."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        rows: list[Row],
        end_ids: list[int],
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics,
    ):
        self.tokenizer, self.rows, self.end_ids, self.loop, self.metrics = tokenizer, rows, set(end_ids), loop, metrics
        self.special = set(tokenizer.all_special_ids)
        self.new: list[list[int]] = [[] for _ in rows]
        self.sent = [""] * len(rows)
        self.done = [False] * len(rows)
        self.step = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        self.step += 1
        tokens = input_ids[:, -1].tolist()  # (batch,)
        for position, row in enumerate(self.rows):
            if self.done[position]:
                continue
            if self.step == 1:
                self.metrics.time_to_first_token.observe(time.perf_counter() - row.arrived)
            piece = self.advance(position, tokens[position])
            if piece is not None:
                self.loop.call_soon_threadsafe(row.events.put_nowait, piece)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)  # (batch,)

    def advance(self, position: int, token: int) -> Piece | None:
        """Row ``position``'s piece for its new ``token`` (None for a row whose client left)."""
        row, new = self.rows[position], self.new[position]
        reason = None
        if row.cancelled:
            self.done[position] = True
            self.metrics.generated_tokens.labels(row.task).inc(self.step)
            return None
        if token in self.end_ids:  # the end-of-text token counts as a completion token, never as text
            text, reason = self.tokenizer.decode(new, skip_special_tokens=True), "eos_token"
        else:
            new.append(token)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            found = [text.find(stop) for stop in row.stops if stop in text]
            if found:
                text, reason = text[: min(found)], "stop_sequence"
            elif self.step >= row.max_new_tokens:
                reason = "length"
        sent = self.sent[position]
        if reason is None:
            ready = shown(text, row.stops)
            delta = ready[len(sent) :] if len(ready) > len(sent) and ready.startswith(sent) else ""
            self.sent[position] = sent + delta
            return Piece(row.index, token, delta, token in self.special)
        self.done[position] = True
        self.metrics.generated_tokens.labels(row.task).inc(self.step)
        answer = {
            "generated_text": text,
            "finish_reason": reason,
            "prompt_tokens": len(row.tokens),
            "completion_tokens": self.step,
        }
        return Piece(row.index, token, text[len(sent) :], token in self.special, answer)


class GenerationBatcher:
    """The waiting generation prompts, the batching loop, and their decoding in the shared inference ``worker``."""

    def __init__(
        self,
        predictor: Predictor,
        config: ServeConfig,
        metrics: Metrics,
        worker: ThreadPoolExecutor,
        admission: Admission,
    ):
        self.predictor, self.config, self.metrics = predictor, config, metrics
        self.worker, self.admission = worker, admission
        self.waiting: list[Row] = []
        self.arrived = asyncio.Event()

    def submit(
        self, task: str, prompts: list[list[int]], max_new_tokens: int, stops: list[str], sampling: Sampling
    ) -> tuple[list[Row], asyncio.Queue[Piece]]:
        """Queue a request's prompts (each checked to fit its task's positions); its pieces come on the queue."""
        model = self.predictor.model
        room = model.text_room(model.tasks[task].prompt)
        for index, tokens in enumerate(prompts):
            if len(tokens) + max_new_tokens > room:
                raise ApiError(
                    422,
                    "validation",
                    f"prompt {index}: {len(tokens)} prompt tokens and {max_new_tokens} new ones exceed the {room} "
                    f"positions task {task!r} allows; shorten the prompt or ask for fewer tokens",
                )
        self.admission.admit(len(prompts))
        events: asyncio.Queue[Piece] = asyncio.Queue()
        rows = [
            Row(task, tokens, max_new_tokens, stops, sampling, room, index, events)
            for index, tokens in enumerate(prompts)
        ]
        self.waiting += rows
        self.arrived.set()
        return rows, events

    def fits(self, rows: list[Row]) -> bool:
        """Whether ``rows`` may decode together: their padded rows within the token budget, and each task's longest
        prompt with the batch's longest answer within that task's positions."""
        budget = max(row.max_new_tokens for row in rows)
        if len(rows) * (max(len(row.tokens) for row in rows) + budget) > self.config.max_batch_tokens:
            return False
        longest: dict[str, int] = {}
        for row in rows:
            longest[row.task] = max(longest.get(row.task, 0), len(row.tokens))
        return all(longest[row.task] + budget <= row.room for row in rows)

    def take(self) -> list[Row]:
        """The next batch: the oldest prompt and every waiting one that may decode beside it, in order of arrival;
        prompts whose clients left are dropped."""
        left = [row for row in self.waiting if row.cancelled]
        self.admission.leave(len(left))
        self.waiting = [row for row in self.waiting if not row.cancelled]
        if not self.waiting:
            return []
        batch = [self.waiting[0]]
        key = batch[0].key()
        for row in self.waiting[1:]:
            if row.key() == key and self.fits([*batch, row]):
                batch.append(row)
        chosen = set(map(id, batch))
        self.waiting = [row for row in self.waiting if id(row) not in chosen]
        self.admission.leave(len(batch))
        return batch

    def decode(self, rows: list[Row], loop: asyncio.AbstractEventLoop) -> None:
        """Generate the batch (in the inference thread: a task unloaded since its prompts arrived is gone for
        certain); the watcher hands out the text."""
        for row in rows:
            if row.task not in self.predictor.tasks:
                error = ApiError(404, "unknown_task", f"task {row.task!r} was unloaded")
                loop.call_soon_threadsafe(row.events.put_nowait, Piece(row.index, error=error))
        rows = [row for row in rows if row.task in self.predictor.tasks]
        if not rows:
            return
        model, sampling = self.predictor.model, rows[0].sampling
        watcher = Watcher(model.tokenizer, rows, end_ids_of(model, model.tokenizer), loop, self.metrics)
        with self.metrics.generation_batch_seconds.time():
            generate_from_ids(
                model,
                model.tokenizer,
                [row.tokens for row in rows],
                [row.task for row in rows],
                max_new_tokens=[row.max_new_tokens for row in rows],
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                watchers=[watcher],
            )

    async def run(self) -> None:
        """Form batches (waiting at most ``max_wait_ms`` after the oldest prompt's arrival for company) and decode
        each; a batch that fails tells its rows (those that had ended no longer listen)."""
        loop = asyncio.get_running_loop()
        while True:
            while not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
            delay = self.waiting[0].arrived + self.config.max_wait_ms / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            batch = self.take()
            if not batch:
                continue
            self.metrics.generation_batch_rows.observe(len(batch))
            try:
                await loop.run_in_executor(self.worker, self.decode, batch, loop)
            except Exception as error:  # a failure of the model, not of the input: every waiting row learns it
                logger.exception("generation batch failed")
                for row in batch:
                    row.events.put_nowait(Piece(row.index, error=error))


async def pieces(rows: list[Row], events: asyncio.Queue[Piece]) -> AsyncIterator[Piece]:
    """A request's pieces as they are written, until each of its rows has ended (a failed batch's error raised);
    rows still running when the reader stops (an error, a client gone) are ended."""
    ended = 0
    try:
        while ended < len(rows):
            piece = await events.get()
            if piece.error is not None:
                raise piece.error
            ended += piece.answer is not None
            yield piece
    finally:
        for row in rows:
            row.cancelled = True


async def answers(rows: list[Row], events: asyncio.Queue[Piece]) -> list[dict[str, Any]]:
    """Each row's answer, in order, once all have ended."""
    found = {piece.index: piece.answer async for piece in pieces(rows, events) if piece.answer is not None}
    return [found[index] for index in range(len(rows))]
