"""OpenAI's completions API over the generation tasks: ``POST /v1/completions``, ``POST /v1/chat/completions`` and
``GET /v1/models``; ``model`` names the task. As OpenAI's: temperature 1 (sampling) unless told, 0 is greedy;
``stream: true`` answers server-sent events (``data: {chunk}`` ... ``data: [DONE]``); usage counts tokens. The answer
length defaults to the task's own (``max_new_tokens`` of its training)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..data.generation import GenerationExample
from ..writing import Writing
from .contract import JSON_OR_EVENTS, errors, json_request
from .errors import ApiError
from .generating import Piece, generation_task, prompt_tokens
from .registry import Held
from .schemas import ChatBody, CompletionBody, OpenAIBody, json_body, validated
from .server import Server
from .streams import Queued, event, streaming

FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def usage(found: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(answer["prompt_tokens"] for answer in found)
    completion = sum(answer["completion_tokens"] for answer in found)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Call(Queued):
    """One completions request: its prompts queued under the task ``model`` names, and the answer's common fields."""

    def __init__(
        self, server: Server, held: Held, body: OpenAIBody, examples: list[GenerationExample], max_tokens: int | None
    ):
        predictor = server.ready()
        task = generation_task(predictor, body.model)
        if len(examples) > server.config.max_inputs_per_request:
            raise ApiError(
                413, "too_many_inputs", f"{len(examples)} prompts; at most {server.config.max_inputs_per_request}"
            )
        tokens = [prompt_tokens(task, example) for example in examples]
        temperature = 1.0 if body.temperature is None else body.temperature
        writing = Writing(max_new_tokens=max_tokens or task.max_new_tokens)
        if temperature > 0:
            writing = dataclasses.replace(writing, temperature=temperature, top_p=body.top_p or 1.0, seed=body.seed)
        super().__init__(server, held, body.model, tokens, writing, body.stop or [])
        self.model = body.model
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.created = int(time.time())

    def head(self, prefix: str, kind: str) -> dict[str, Any]:
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": self.created, "model": self.model}

    def stream(self, head: dict[str, Any], chunks: Callable[[Piece], list[dict[str, Any]]]) -> AsyncIterator[str]:
        """The events of a streamed answer: ``chunks(piece)`` gives each piece's chunks' choices; then usage (if
        asked) and ``[DONE]``."""
        found: list[dict[str, Any]] = []
        extra = {"usage": None} if self.include_usage else {}

        def render(piece: Piece) -> list[str]:
            if piece.answer is not None:
                found.append(piece.answer)
            return [event({**head, "choices": [choice], **extra}) for choice in chunks(piece)]

        def end() -> list[str]:
            usage_event = [event({**head, "choices": [], "usage": usage(found)})] if self.include_usage else []
            return [*usage_event, "data: [DONE]\n\n"]

        return self.sse(render, end)


def completion_chunks(piece: Piece) -> list[dict[str, Any]]:
    choices = []
    if piece.text:
        choices.append({"index": piece.index, "text": piece.text, "logprobs": None, "finish_reason": None})
    if piece.answer is not None:
        reason = FINISH[piece.answer["finish_reason"]]
        choices.append({"index": piece.index, "text": "", "logprobs": None, "finish_reason": reason})
    return choices


def chat_chunks(piece: Piece) -> list[dict[str, Any]]:
    choices = []
    if piece.text:
        choices.append({"index": 0, "delta": {"content": piece.text}, "logprobs": None, "finish_reason": None})
    if piece.answer is not None:
        reason = FINISH[piece.answer["finish_reason"]]
        choices.append({"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason})
    return choices


def openai_routes(server: Server) -> APIRouter:
    """The OpenAI-compatible routes of ``server``."""
    router = APIRouter()
    limit = server.config.max_body_bytes

    def card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "ptuning"}

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = [name for name, task in server.ready().tasks.items() if task.generates]
        return {"object": "list", "data": [card(name) for name in names]}

    @router.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        with await server.resolve(name):
            generation_task(server.ready(), name)
        return card(name)

    streams = {"responses": {**JSON_OR_EVENTS, **errors(404, 429)}, "response_model": None}

    @router.post("/v1/completions", openapi_extra=json_request(CompletionBody, server.config), **streams)
    async def completions(request: Request) -> dict[str, Any] | StreamingResponse:
        body = validated(CompletionBody, await json_body(request, limit))
        examples = [GenerationExample(text, source=f"prompt[{index}]") for index, text in enumerate(body.prompt)]
        call = await server.holding(body.model, lambda held: Call(server, held, body, examples, body.max_tokens))
        head = call.head("cmpl", "text_completion")
        if body.stream:
            return streaming(call.stream(head, completion_chunks))
        found = await call.answers()
        choices = [
            {
                "index": index,
                "text": answer["generated_text"],
                "logprobs": None,
                "finish_reason": FINISH[answer["finish_reason"]],
            }
            for index, answer in enumerate(found)
        ]
        return {**head, "choices": choices, "usage": usage(found)}

    @router.post("/v1/chat/completions", openapi_extra=json_request(ChatBody, server.config), **streams)
    async def chat(request: Request) -> dict[str, Any] | StreamingResponse:
        body = validated(ChatBody, await json_body(request, limit))
        messages = [
            {"role": "system" if message.role == "developer" else message.role, "content": message.content}
            for message in body.messages
        ]
        example = GenerationExample(None, messages, source="messages")
        budget = body.max_completion_tokens or body.max_tokens
        call = await server.holding(body.model, lambda held: Call(server, held, body, [example], budget))
        head = call.head("chatcmpl", "chat.completion")
        if body.stream:
            head["object"] = "chat.completion.chunk"

            async def events() -> AsyncIterator[str]:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                yield event({**head, "choices": [first], **({"usage": None} if call.include_usage else {})})
                async for item in call.stream(head, chat_chunks):
                    yield item

            return streaming(events())
        (answer,) = await call.answers()
        message = {"role": "assistant", "content": answer["generated_text"]}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH[answer["finish_reason"]]}
        return {**head, "choices": [choice], "usage": usage([answer])}

    return router
