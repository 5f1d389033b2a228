"""Generation batching, continuous: the prompts of generation requests of any tasks wait in one list, and between
decoding steps every waiting prompt that fits the token budget joins the running batch (``decoding.RunningBatch``,
in the inference thread that prediction batches use: one model, one thread). Each step decodes every running row one
token, each under its own task's prompt and its own sampling (greedy, or a temperature and top_p); each row ends at
its own end (end of text, one of its stop strings, its length) and leaves, so a request that arrives while others
decode gets its first token at the next step, not after them. Only a seeded sample decodes apart, alone, in one
``generate`` call (the same seed writes the same text whatever the traffic), as does every prompt of a backbone whose
rows cannot join a running batch (``decoding.joins_rows``: a sliding window shorter than its positions): there the
oldest prompt and those that may decode beside it form a batch that runs to its end.

After every step each row's new text goes to its request on the event loop: a stream gets each piece as it is
written, an answer comes as soon as its row ends."""

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
from ..decoding import RunningBatch, choose, joins_rows
from ..errors import DataError
from ..generation import end_ids_of, generate_from_ids, pad_id_of
from ..predictor import Predictor, listed
from ..tasks.base import Task
from ..writing import Writing
from .batching import Admission
from .config import ServeConfig
from .errors import ApiError
from .metrics import Metrics

logger = logging.getLogger("ptuning")
INCOMPLETE = "\ufffd"  # what a character cut between two tokens decodes to until its last bytes come


@dataclass
class Piece:
    """What one step wrote for one row: its token and new text (text that may begin a stop string, or ends in a cut
    character, is held back until known), its answer on its last step, or the error that ended its row."""

    index: int
    token: int = -1
    text: str = ""
    special: bool = False
    answer: dict[str, Any] | None = None
    error: Exception | None = None


@dataclass(eq=False)
class Row:
    """One prompt to continue (the ``index``-th of its request), how (``writing``: its length and sampling), the
    queue its pieces go to, and what it has written so far."""

    task: str
    tokens: list[int]
    writing: Writing  # max_new_tokens always set
    stops: list[str]
    room: int  # positions its task's prompt leaves for text
    index: int
    events: asyncio.Queue[Piece]
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # its client left: the row ends at the next step
    written: list[int] = field(default_factory=list)  # its new tokens, the end of text left out
    sent: str = ""  # the text its request got so far
    steps: int = 0

    @property
    def apart(self) -> bool:
        """A seeded sample decodes alone: its draws must not depend on other rows."""
        return self.writing.sampled and self.writing.seed is not None

    def key(self) -> tuple:
        """Rows of one key may decode in one ``generate`` batch."""
        if not self.writing.sampled:
            return ("greedy",)
        if self.apart:
            return ("alone", id(self))
        return ("sampled", self.writing.temperature, self.writing.top_p, self.writing.max_new_tokens)


def generation_task(predictor: Predictor, name: str) -> Task:
    """The loaded generation task ``name``, or a 404 naming those there are."""
    task = predictor.tasks.get(name)
    if task is None or not task.generates:
        names = listed(known for known, loaded in predictor.tasks.items() if loaded.generates)
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


class Writer:
    """Hands each row's new tokens to its request as pieces (on the event loop ``loop``) and ends each row at its own
    end, as ``generate_from_ids`` would alone."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, end_ids: list[int], loop: asyncio.AbstractEventLoop, metrics: Metrics
    ):
        self.tokenizer, self.end_ids, self.loop, self.metrics = tokenizer, set(end_ids), loop, metrics
        self.special = set(tokenizer.all_special_ids)

    def advance(self, row: Row, token: int) -> bool:
        """Row ``row``'s new ``token``: its piece sent; whether the row has ended (a row whose client left ends
        unsent)."""
        row.steps += 1
        if row.steps == 1:
            self.metrics.time_to_first_token.observe(time.perf_counter() - row.arrived)
        reason = None
        if row.cancelled:
            self.metrics.generated_tokens.labels(row.task).inc(row.steps)
            return True
        if token in self.end_ids:  # the end-of-text token counts as a completion token, never as text
            text, reason = self.tokenizer.decode(row.written, skip_special_tokens=True), "eos_token"
        else:
            row.written.append(token)
            text = self.tokenizer.decode(row.written, skip_special_tokens=True)
            found = [text.find(stop) for stop in row.stops if stop in text]
            if found:
                text, reason = text[: min(found)], "stop_sequence"
            elif row.steps >= row.writing.max_new_tokens:
                reason = "length"
        if reason is None:
            ready = shown(text, row.stops)
            delta = ready[len(row.sent) :] if len(ready) > len(row.sent) and ready.startswith(row.sent) else ""
            row.sent += delta
            self.send(row, Piece(row.index, token, delta, token in self.special))
            return False
        self.metrics.generated_tokens.labels(row.task).inc(row.steps)
        answer = {
            "generated_text": text,
            "finish_reason": reason,
            "prompt_tokens": len(row.tokens),
            "completion_tokens": row.steps,
        }
        self.send(row, Piece(row.index, token, text[len(row.sent) :], token in self.special, answer))
        return True

    def send(self, row: Row, piece: Piece) -> None:
        self.loop.call_soon_threadsafe(row.events.put_nowait, piece)


class Watcher(StoppingCriteria):
    """A ``generate`` call's stopping criterion, called after every step with the tokens so far: each row's new one
    goes through the ``writer``; a row that ended is done."""

    def __init__(self, writer: Writer, rows: list[Row], metrics: Metrics):
        self.writer, self.rows, self.metrics = writer, rows, metrics
        self.done = [False] * len(rows)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        self.metrics.generation_batch_rows.observe(self.done.count(False))
        for position, (row, token) in enumerate(zip(self.rows, input_ids[:, -1].tolist(), strict=True)):
            if not self.done[position]:
                self.done[position] = self.writer.advance(row, token)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)  # (batch,)


class GenerationBatcher:
    """The waiting generation prompts, the running batch, the scheduling loop, and the decoding in the shared
    inference ``worker``."""

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
        self.running: list[Row] = []  # the rows of ``batch``, in its order
        self.batch: RunningBatch | None = None  # made in the inference thread
        self.continuous = joins_rows(predictor.model)
        self.arrived = asyncio.Event()

    def submit(
        self, task: str, prompts: list[list[int]], writing: Writing, stops: list[str]
    ) -> tuple[list[Row], asyncio.Queue[Piece]]:
        """Queue a request's prompts (each checked to fit its task's positions with ``writing.max_new_tokens`` new
        tokens); its pieces come on the queue."""
        model = self.predictor.model
        room = model.text_room(model.tasks[task].prompt)
        for index, tokens in enumerate(prompts):
            if len(tokens) + writing.max_new_tokens > room:
                raise ApiError(
                    422,
                    "validation",
                    f"prompt {index}: {len(tokens)} prompt tokens and {writing.max_new_tokens} new ones exceed the "
                    f"{room} positions task {task!r} allows; shorten the prompt or ask for fewer tokens",
                )
        self.admission.admit(len(prompts))
        events: asyncio.Queue[Piece] = asyncio.Queue()
        rows = [Row(task, tokens, writing, stops, room, index, events) for index, tokens in enumerate(prompts)]
        self.waiting += rows
        self.arrived.set()
        return rows, events

    def cost(self, rows: list[Row]) -> int:
        """The tokens ``rows`` hold at most decoding together: padded rows x (longest prompt + longest answer)."""
        longest = max(len(row.tokens) for row in rows) + max(row.writing.max_new_tokens for row in rows)
        return len(rows) * longest

    def fits(self, rows: list[Row]) -> bool:
        """Whether ``rows`` may decode in one ``generate`` batch: within the token budget, and each task's longest
        prompt with the batch's longest answer within that task's positions."""
        if self.cost(rows) > self.config.max_batch_tokens:
            return False
        budget = max(row.writing.max_new_tokens for row in rows)
        longest: dict[str, int] = {}
        for row in rows:
            longest[row.task] = max(longest.get(row.task, 0), len(row.tokens))
        return all(longest[row.task] + budget <= row.room for row in rows)

    def drop_cancelled(self) -> None:
        """Prompts whose clients left before they started are dropped."""
        left = [row for row in self.waiting if row.cancelled]
        self.admission.leave(len(left))
        self.waiting = [row for row in self.waiting if not row.cancelled]

    def take(self, rows: list[Row]) -> list[Row]:
        """``rows`` leave the waiting list."""
        chosen = set(map(id, rows))
        self.waiting = [row for row in self.waiting if id(row) not in chosen]
        self.admission.leave(len(rows))
        return rows

    def batch_apart(self) -> list[Row]:
        """A batch to decode apart: the oldest prompt and every waiting one that may decode beside it."""
        batch = [self.waiting[0]]
        key = batch[0].key()
        for row in self.waiting[1:]:
            if row.key() == key and self.fits([*batch, row]):
                batch.append(row)
        return self.take(batch)

    def joining(self) -> list[Row]:
        """The waiting prompts that join the running batch at the next step: in order of arrival, up to the first
        that would take it past the token budget (the first always joins an empty batch) or that decodes apart."""
        joining: list[Row] = []
        for row in self.waiting:
            rows = [*self.running, *joining, row]
            if row.apart or (len(rows) > 1 and self.cost(rows) > self.config.max_batch_tokens):
                break
            joining.append(row)
        return self.take(joining)

    def loaded(self, rows: list[Row], writer: Writer) -> list[Row]:
        """The rows whose task is loaded (in the inference thread: a task unloaded since is gone for certain); the
        others learn it."""
        for row in rows:
            if row.task not in self.predictor.tasks:
                error = ApiError(404, "unknown_task", f"task {row.task!r} was unloaded")
                writer.send(row, Piece(row.index, error=error))
        return [row for row in rows if row.task in self.predictor.tasks]

    def decode(self, rows: list[Row], writer: Writer) -> None:
        """Generate a batch apart to its end, in one ``generate`` call; a watcher hands out the text."""
        rows = self.loaded(rows, writer)
        if not rows:
            return
        model, writing = self.predictor.model, rows[0].writing
        with self.metrics.generation_batch_seconds.time():
            generate_from_ids(
                model,
                model.tokenizer,
                [row.tokens for row in rows],
                [row.task for row in rows],
                max_new_tokens=[row.writing.max_new_tokens for row in rows],
                temperature=writing.temperature,
                top_p=writing.top_p,
                seed=writing.seed,
                watchers=[Watcher(writer, rows, self.metrics)],
            )

    def step(self, joining: list[Row], writer: Writer) -> None:
        """One decoding step of the running batch, in the inference thread: ``joining`` prefilled into it, each row's
        next token chosen and handed out, the rows that ended leave, the others decode their token."""
        model = self.predictor.model
        if self.batch is None:
            self.batch = RunningBatch(model, pad_id_of(model, model.tokenizer))
        with self.metrics.generation_batch_seconds.time():
            live = self.loaded(self.running, writer)
            self.keep([position for position, row in enumerate(self.running) if row in live])
            joining = self.loaded(joining, writer)
            if joining:
                self.batch.join([row.tokens for row in joining], [row.task for row in joining])
                self.running += joining
            if not self.running:
                return
            self.metrics.generation_batch_rows.observe(len(self.running))
            tokens = choose(self.batch.logits, [row.writing for row in self.running])  # (batch,)
            ended = [writer.advance(row, token) for row, token in zip(self.running, tokens.tolist(), strict=True)]
            going_on = [position for position, end in enumerate(ended) if not end]
            self.keep(going_on)
            if going_on:
                self.batch.step(tokens[going_on])

    def keep(self, positions: list[int]) -> None:
        """Only the running rows at ``positions`` go on decoding."""
        self.batch.keep(positions)
        self.running = [self.running[position] for position in positions]

    def fail(self, rows: list[Row], error: Exception) -> None:
        """A failure of the model, not of the input: every row in it learns it."""
        logger.error("generation failed", exc_info=error)
        for row in rows:
            row.events.put_nowait(Piece(row.index, error=error))

    async def run(self) -> None:
        """Between steps, let waiting prompts join the running batch and decode one step; a seeded sample (or any
        prompt, on a backbone whose rows cannot join) decodes apart. With nothing running, wait at most
        ``max_wait_ms`` after the oldest prompt's arrival for company."""
        loop = asyncio.get_running_loop()
        model = self.predictor.model
        writer = Writer(model.tokenizer, end_ids_of(model, model.tokenizer), loop, self.metrics)
        while True:
            while not self.waiting and not self.running:
                self.arrived.clear()
                await self.arrived.wait()
            if not self.running:
                delay = self.waiting[0].arrived + self.config.max_wait_ms / 1000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            self.drop_cancelled()
            if self.waiting and (not self.continuous or self.waiting[0].apart):
                batch = self.batch_apart()
                try:
                    await loop.run_in_executor(self.worker, self.decode, batch, writer)
                except Exception as error:  # noqa: BLE001 - its rows learn it
                    self.fail(batch, error)
                continue
            joining = self.joining()
            try:
                await loop.run_in_executor(self.worker, self.step, joining, writer)
            except Exception as error:  # noqa: BLE001 - its rows learn it; the running batch is gone
                self.fail([*self.running, *[row for row in joining if row not in self.running]], error)
                self.running, self.batch = [], None


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
