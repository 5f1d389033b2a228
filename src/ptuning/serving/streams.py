"""What the generation routes share once a request is read: its prompts queued under one task (held loaded until the
answer ends), answered whole or as server-sent events, each of its inputs counted by status once it ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse

from ..writing import Writing
from .errors import ApiError
from .generating import Piece, answers, pieces

if TYPE_CHECKING:
    from .registry import Held
    from .server import Server

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: Any) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(payload)}\n\n"


def error_event(error: Exception) -> str:
    """A failure after the stream began (its status is sent already): the error body as the last event."""
    error_type = error.error_type if isinstance(error, ApiError) else "internal"
    return event({"error": str(error), "error_type": error_type})


def streaming(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=STREAM_HEADERS)


class Queued:
    """A request's prompts (token ids) queued under task ``task`` as ``writing`` says, the task ``held`` loaded until
    the answer ends (released here at its end, or by ``Server.holding`` if queueing fails)."""

    def __init__(
        self, server: Server, held: Held, task: str, prompts: list[list[int]], writing: Writing, stops: list[str]
    ):
        self.metrics, self.held, self.task = server.metrics, held, task
        try:
            self.rows, self.events = server.generator.submit(task, prompts, writing, stops)
        except ApiError as error:
            self.metrics.inputs.labels(task, str(error.status)).inc(len(prompts))
            raise

    async def answers(self) -> list[dict[str, Any]]:
        """Each prompt's answer, in order, once all have ended."""
        with self.held:
            found = await answers(self.rows, self.events)
        self.metrics.inputs.labels(self.task, "200").inc(len(found))
        return found

    async def sse(
        self, render: Callable[[Piece], list[str]], end: Callable[[], list[str]] | None = None
    ) -> AsyncIterator[str]:
        """The events ``render`` makes of each piece as it is written, then ``end()``'s if given; a failure ends the
        stream with its error event (the client learns it there: the status was sent)."""
        try:
            async for piece in pieces(self.rows, self.events):
                for item in render(piece):
                    yield item
        except Exception as error:  # noqa: BLE001 - the client learns it in the stream, the log has it
            self.metrics.inputs.labels(self.task, "500").inc(len(self.rows))
            yield error_event(error)
            return
        finally:
            self.held.release()
        self.metrics.inputs.labels(self.task, "200").inc(len(self.rows))
        for item in end() if end is not None else []:
            yield item
