"""Hugging Face's text-generation shape (TGI's ``/generate`` and ``/generate_stream``) over one generation task:
``POST /v1/tasks/NAME/generate`` ``{"inputs", "parameters"}`` -> ``{"generated_text"}``. TGI serves one model at its
root; here the path names the task, as ptuning's own ``/v1/tasks/NAME/predict`` does. As TGI's: greedy unless
``do_sample`` is true or a temperature other than 1 or a top_p under 1 asks for sampling."""

from __future__ import annotations

import itertools
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..data.generation import GenerationExample
from ..writing import Writing
from .contract import JSON_OR_EVENTS, EventStream, errors, json_request
from .generating import Piece, generation_task, prompt_tokens
from .registry import Held
from .schemas import TextGenerationBody, TextGenerationParameters, json_body, validated
from .server import Server
from .streams import Queued, event, streaming


def writing_of(parameters: TextGenerationParameters, max_new_tokens: int) -> Writing:
    sampled = (
        parameters.do_sample
        or parameters.temperature not in (None, 1)
        or (parameters.top_p is not None and parameters.top_p < 1)
    )
    if not sampled:
        return Writing(max_new_tokens=max_new_tokens)
    temperature, top_p = parameters.temperature or 1.0, parameters.top_p or 1.0
    return Writing(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=parameters.seed)


def details(answer: dict[str, Any], writing: Writing) -> dict[str, Any]:
    return {
        "finish_reason": answer["finish_reason"],
        "generated_tokens": answer["completion_tokens"],
        "seed": writing.seed,
    }


class TextGeneration(Queued):
    """One request of the text-generation shape: its prompt queued under task ``name`` (the task ``held`` loaded until
    the answer ends), answered whole or streamed (one event per token, the last holding the whole text and, if asked,
    the details)."""

    def __init__(self, server: Server, held: Held, name: str, body: TextGenerationBody):
        task = generation_task(server.ready(), name)
        self.body, self.parameters = body, body.parameters or TextGenerationParameters()
        tokens = prompt_tokens(task, GenerationExample(body.inputs, source="inputs"))
        self.writing = writing_of(self.parameters, self.parameters.max_new_tokens or task.max_new_tokens)
        super().__init__(server, held, name, [tokens], self.writing, self.parameters.stop or [])

    def full(self, text: str) -> str:
        return self.body.inputs + text if self.parameters.return_full_text else text

    async def answer(self) -> dict[str, Any]:
        """``{"generated_text"}`` (and ``details`` if asked)."""
        (answer,) = await self.answers()
        result = {"generated_text": self.full(answer["generated_text"])}
        if self.parameters.details:
            result["details"] = details(answer, self.writing)
        return result

    def streamed(self) -> StreamingResponse:
        steps = itertools.count(1)  # the events' index: one piece a step
        return streaming(self.sse(lambda piece: [event(self.token_event(piece, next(steps)))]))

    def token_event(self, piece: Piece, step: int) -> dict[str, Any]:
        token = {"id": piece.token, "text": piece.text, "logprob": None, "special": piece.special}
        answer = piece.answer
        return {
            "index": step,
            "token": token,
            "generated_text": None if answer is None else self.full(answer["generated_text"]),
            "details": details(answer, self.writing) if answer is not None and self.parameters.details else None,
        }


def text_generation_routes(server: Server) -> APIRouter:
    """The text-generation routes of ``server``."""
    router = APIRouter()

    async def call(name: str, request: Request) -> TextGeneration:
        body = validated(TextGenerationBody, await json_body(request, server.config.max_body_bytes))
        return await server.holding(name, lambda held: TextGeneration(server, held, name, body))

    body = {"openapi_extra": json_request(TextGenerationBody, server.config)}

    @router.post("/v1/tasks/{name}/generate", responses={**JSON_OR_EVENTS, **errors(429)}, response_model=None, **body)
    async def generate(name: str, request: Request) -> dict[str, Any] | StreamingResponse:
        generation = await call(name, request)
        return generation.streamed() if generation.body.stream else await generation.answer()

    @router.post("/v1/tasks/{name}/generate_stream", response_class=EventStream, responses=errors(429), **body)
    async def generate_stream(name: str, request: Request) -> StreamingResponse:
        return (await call(name, request)).streamed()

    return router
