"""Dynamic batching: inputs of any tasks wait in one queue; batches form by a token budget, waiting at most
``max_wait_ms`` after the first input for more, and run one at a time in one inference thread (the event loop
stays free: health and metrics answer while a batch runs); a request's inputs may span batches and come back in
order."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..predictor import Predictor
from ..predictor import Request as TaskInput
from .config import ServeConfig
from .errors import ApiError
from .metrics import Metrics

logger = logging.getLogger("ptuning")
TRIM_INTERVAL_S = 1.0


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None on another C library)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class Admission:
    """The inputs waiting in every queue (predict inputs and generation prompts alike): past ``limit`` a request is
    refused with 429."""

    def __init__(self, limit: int, metrics: Metrics):
        self.limit, self.metrics = limit, metrics
        self.waiting = 0

    def admit(self, count: int) -> None:
        if self.waiting + count > self.limit:
            raise ApiError(
                429,
                "overloaded",
                f"{self.waiting} inputs are waiting already; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.waiting += count
        self.metrics.queue_depth.set(self.waiting)

    def leave(self, count: int) -> None:
        self.waiting -= count
        self.metrics.queue_depth.set(self.waiting)


@dataclass
class Pending:
    """One input in the queue and where its answer goes."""

    request: TaskInput
    tokens: int
    answer: asyncio.Future


class Batcher:
    """The queue, the batching loop, and the one inference thread."""

    def __init__(self, predictor: Predictor, config: ServeConfig, metrics: Metrics):
        self.predictor, self.config, self.metrics = predictor, config, metrics
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.carried: Pending | None = None  # the input that would have overflowed the last batch
        self.admission = Admission(config.max_queue, metrics)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="ptuning-inference")
        self.malloc_trim = glibc_malloc_trim()
        self.trimmed_at = time.monotonic()

    def predict(self, requests: list[TaskInput]) -> list[dict[str, Any] | ApiError]:
        """One batch's answers (in the inference thread; an error for an input whose task was unloaded since it
        arrived); then, at most once a second, the heap memory the batch freed goes back to the system: batches of
        ever-new shapes otherwise leave the C allocator holding hundreds of MB it no longer uses."""
        present = [request for request in requests if request.task in self.predictor.tasks]
        with self.metrics.batch_seconds.time():
            found = iter(self.predictor.predict(present) if present else [])
        answers = [
            next(found)
            if request.task in self.predictor.tasks
            else ApiError(404, "unknown_task", f"task {request.task!r} was unloaded")
            for request in requests
        ]
        if self.malloc_trim is not None and time.monotonic() - self.trimmed_at >= TRIM_INTERVAL_S:
            self.malloc_trim(0)
            self.trimmed_at = time.monotonic()
        return answers

    async def answer(self, inputs: list[TaskInput]) -> list[dict[str, Any]]:
        """Queue the inputs and wait for their answers, in order."""
        self.admission.admit(len(inputs))
        loop = asyncio.get_running_loop()
        try:
            pending = [Pending(item, self.predictor.tokens(item), loop.create_future()) for item in inputs]
        except BaseException:  # inputs that never joined the queue do not wait in it
            self.admission.leave(len(inputs))
            raise
        for item in pending:
            self.queue.put_nowait(item)
        return list(await asyncio.gather(*(item.answer for item in pending)))

    async def _next(self, timeout: float | None) -> Pending | None:
        if self.carried is not None:
            item, self.carried = self.carried, None
            return item
        if timeout is None:
            return await self.queue.get()
        if timeout <= 0:
            return None if self.queue.empty() else self.queue.get_nowait()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def run(self) -> None:
        """Form batches by the token budget and the wait bound; answer each batch's inputs."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._next(None)]
            tokens = batch[0].tokens
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while tokens < self.config.max_batch_tokens:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if tokens + item.tokens > self.config.max_batch_tokens:
                    self.carried = item
                    break
                batch.append(item)
                tokens += item.tokens
            self.admission.leave(len(batch))
            self.metrics.batch_inputs.observe(len(batch))
            self.metrics.batch_tokens.observe(tokens)
            try:
                answers = await loop.run_in_executor(self.worker, self.predict, [i.request for i in batch])
            except Exception as error:  # a failure of the model, not of the input: every waiting request learns it
                logger.exception("batch failed")
                for item in batch:
                    if not item.answer.done():
                        item.answer.set_exception(error)
                continue
            for item, answer in zip(batch, answers, strict=True):
                if item.answer.done():  # its request was cancelled
                    continue
                if isinstance(answer, ApiError):
                    item.answer.set_exception(answer)
                else:
                    item.answer.set_result(answer)
