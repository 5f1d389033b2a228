"""Hugging Face's text-generation shape (TGI's ``/generate`` and ``/generate_stream``) over one generation task:
``POST /v1/tasks/NAME/generate`` ``{"inputs", "parameters"}`` -> ``{"generated_text"}``. TGI serves one model at its
root; here the path names the task, as ptuning's own ``/v1/tasks/NAME/predict`` does. As TGI's: greedy unless
``do_sample`` is true or a temperature other than 1 or a top_p under 1 asks for sampling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..data.generation import GenerationExample
from .errors import ApiError
from .generating import Piece, Row, Sampling, answers, generation_task, pieces, prompt_tokens
from .openai_api import error_event, event, streaming
from .registry import Held
from .schemas import TextGenerationBody, TextGenerationParameters, json_body, validated
from .server import Server

# a request, its rows, their pieces, and its task held loaded until the answer ends
Queued = tuple[TextGenerationBody, Sampling, list[Row], asyncio.Queue[Piece], Held]


def sampling_of(parameters: TextGenerationParameters) -> Sampling:
    sampled = (
        parameters.do_sample
        or parameters.temperature not in (None, 1)
        or (parameters.top_p is not None and parameters.top_p < 1)
    )
    if not sampled:
        return Sampling()
    return Sampling(parameters.temperature or 1.0, parameters.top_p or 1.0, parameters.seed)


def details(answer: dict[str, Any], sampling: Sampling) -> dict[str, Any]:
    return {
        "finish_reason": answer["finish_reason"],
        "generated_tokens": answer["completion_tokens"],
        "seed": sampling.seed,
    }


def text_generation_routes(server: Server) -> APIRouter:
    """The text-generation routes of ``server``."""
    router = APIRouter()

    async def queued(name: str, request: Request) -> Queued:
        body = validated(TextGenerationBody, await json_body(request, server.config.max_body_bytes))
        held = await server.resolve(name)
        try:
            task = generation_task(server.ready(), name)
            parameters = body.parameters or TextGenerationParameters()
            tokens = prompt_tokens(task, GenerationExample(body.inputs, source="inputs"))
            sampling = sampling_of(parameters)
            budget = parameters.max_new_tokens or task.max_new_tokens
            try:
                rows, events = server.generator.submit(name, [tokens], budget, parameters.stop or [], sampling)
            except ApiError as error:
                server.metrics.inputs.labels(name, str(error.status)).inc()
                raise
        except BaseException:
            held.release()
            raise
        return body, sampling, rows, events, held

    def full(body: TextGenerationBody, text: str) -> str:
        return body.inputs + text if body.parameters and body.parameters.return_full_text else text

    async def stream(
        body: TextGenerationBody, sampling: Sampling, rows: list[Row], events: asyncio.Queue[Piece], held: Held
    ) -> AsyncIterator[str]:
        """One event per generated token; the last holds the whole text (and the details, if asked)."""
        step = 0
        try:
            async for piece in pieces(rows, events):
                step += 1
                yield event(token_event(body, sampling, piece, step))
        except Exception as error:  # noqa: BLE001 - the client learns it in the stream, the log has it
            server.metrics.inputs.labels(rows[0].task, "500").inc()
            yield error_event(error)
            return
        finally:
            held.release()
        server.metrics.inputs.labels(rows[0].task, "200").inc()

    def token_event(body: TextGenerationBody, sampling: Sampling, piece: Piece, step: int) -> dict[str, Any]:
        token = {"id": piece.token, "text": piece.text, "logprob": None, "special": piece.special}
        answer, asked = piece.answer, bool(body.parameters and body.parameters.details)
        return {
            "index": step,
            "token": token,
            "generated_text": None if answer is None else full(body, answer["generated_text"]),
            "details": details(answer, sampling) if answer is not None and asked else None,
        }

    @router.post("/v1/tasks/{name}/generate", response_model=None)
    async def generate(name: str, request: Request) -> dict[str, Any] | StreamingResponse:
        body, sampling, rows, events, held = await queued(name, request)
        if body.stream:
            return streaming(stream(body, sampling, rows, events, held))
        with held:
            (answer,) = await answers(rows, events)
        server.metrics.inputs.labels(name, "200").inc()
        result = {"generated_text": full(body, answer["generated_text"])}
        if body.parameters and body.parameters.details:
            result["details"] = details(answer, sampling)
        return result

    @router.post("/v1/tasks/{name}/generate_stream", response_model=None)
    async def generate_stream(name: str, request: Request) -> StreamingResponse:
        return streaming(stream(*await queued(name, request)))

    return router
