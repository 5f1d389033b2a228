"""Hugging Face's Inference API shapes at ``POST /models/NAME``, NAME a served task, so that
``huggingface_hub.InferenceClient(model="http://HOST:PORT/models/NAME")`` works unchanged: the task's kind says
which shape the body ``{"inputs", "parameters"}`` takes and the answer has (as Hugging Face's endpoints answer for a
model of that task):

- token classification: a text (or a list of texts) -> ``[{entity_group, score, word, start, end}]`` per text (its
  words grouped as transformers' pipeline groups them, ``aggregation_strategy`` "first"; "simple" is the same here,
  as a word's tag is read on its first sub-token);
- text classification: a text, a ``{"text", "text_pair"}`` or a list of them -> per input ``[{label, score}]`` by
  score, the ``top_k`` best;
- question answering: ``{"question", "context"}`` (or a list) -> ``{answer, score, start, end}`` (score: the
  answer's probability);
- text generation (generation tasks): TGI's body and answer (``[{"generated_text"}]``, or its events with
  ``stream``).

Inputs go through the same batchers as ptuning's own routes. A parameter Hugging Face defines that ptuning's tasks
fix at training (``doc_stride``, ``stride``, ...) is refused unless null; a body of another kind than the task's is
a 422 saying which the task takes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, WithJsonSchema
from pydantic_core import PydanticCustomError

from ..predictor import unknown_task
from .contract import errors, with_limits
from .errors import ApiError
from .schemas import INPUTS_LIMIT, Text, TextGenerationBody, json_body, only, texts, unicode_text, validated
from .server import Server
from .text_generation import TextGeneration

STRINGS = {"type": "array", "items": {"type": "string"}, **INPUTS_LIMIT}
PAIR = {
    "type": "object",
    "properties": {"text": {"type": "string"}, "text_pair": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}
WORDS = {"type": "string", "pattern": "\\S"}  # not blank: a question or a context of spaces is refused
QUESTION = {
    "type": "object",
    "properties": {"question": WORDS, "context": WORDS},
    "required": ["question", "context"],
    "additionalProperties": False,
}


def fields_of(value: Any, names: tuple[str, ...], required: tuple[str, ...], said: str) -> dict[str, str]:
    """``value`` as an object of string fields ``names`` (``required`` among them), or the error ``said``."""
    if not isinstance(value, dict) or not set(required) <= value.keys() <= set(names):
        raise PydanticCustomError("shape", said)
    if not all(isinstance(field, str) for field in value.values()):
        raise PydanticCustomError("shape", said)
    return {name: unicode_text(field) for name, field in value.items()}


def one_or_many(check: Callable[[Any], Any], said: str) -> Callable[[Any], list[Any]]:
    """A validator of one input or a non-empty list of inputs, each passing ``check``: the inputs as a list."""

    def inputs(value: Any) -> list[Any]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise PydanticCustomError("shape", said)
        return [check(item) for item in items]

    return inputs


PAIR_SAID = 'expected a string, {"text": "...", "text_pair": "..."} or a non-empty list of them'
QUESTION_SAID = 'expected {"question": "...", "context": "..."} or a non-empty list of them'


def pair(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        return {"text": unicode_text(value)}
    return fields_of(value, ("text", "text_pair"), ("text",), PAIR_SAID)


def question(value: Any) -> dict[str, str]:
    return fields_of(value, ("question", "context"), ("question", "context"), QUESTION_SAID)


def unsupported(*harmless: Any) -> Any:
    """A parameter ptuning's task fixes at training: taken only at ``harmless`` values (null: the task's own)."""
    return Annotated[Any, only(None, *harmless), WithJsonSchema({"enum": [None, *harmless]})]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TokenClassificationParameters(Strict):
    aggregation_strategy: Literal["simple", "first"] | None = None
    ignore_labels: list[Text] | None = None
    stride: unsupported() = None


class TokenClassificationBody(Strict):
    """A token-classification task's body: a text or a list of texts."""

    inputs: Annotated[Any, AfterValidator(texts), WithJsonSchema({"anyOf": [{"type": "string"}, STRINGS]})]
    parameters: TokenClassificationParameters | None = None


class TextClassificationParameters(Strict):
    top_k: Annotated[StrictInt, Field(ge=1)] | None = None
    function_to_apply: Literal["softmax"] | None = None  # the tasks' probabilities are a softmax's


class TextClassificationBody(Strict):
    """A text-classification task's body: a text, a text pair, or a list of them."""

    inputs: Annotated[
        Any,
        AfterValidator(one_or_many(pair, PAIR_SAID)),
        WithJsonSchema(
            {"anyOf": [{"type": "string"}, PAIR, {**STRINGS, "items": {"anyOf": [{"type": "string"}, PAIR]}}]}
        ),
    ]
    parameters: TextClassificationParameters | None = None


class QuestionAnsweringParameters(Strict):
    top_k: unsupported(1) = None
    align_to_words: unsupported() = None
    doc_stride: unsupported() = None
    handle_impossible_answer: unsupported() = None
    max_answer_len: unsupported() = None
    max_question_len: unsupported() = None
    max_seq_len: unsupported() = None


class QuestionAnsweringBody(Strict):
    """A question-answering task's body: a question and its context, or a list of them."""

    inputs: Annotated[
        Any,
        AfterValidator(one_or_many(question, QUESTION_SAID)),
        WithJsonSchema({"anyOf": [QUESTION, {**STRINGS, "items": QUESTION}]}),
    ]
    parameters: QuestionAnsweringParameters | None = None


class Entity(BaseModel):
    entity_group: str
    score: float
    word: str
    start: int
    end: int


class LabelScore(BaseModel):
    label: str
    score: float


class Answer(BaseModel):
    answer: str
    score: float
    start: int
    end: int


class GeneratedText(BaseModel):
    generated_text: str
    details: dict[str, Any] | None = None


Answered = list[Entity] | list[list[Entity]] | list[list[LabelScore]] | Answer | list[Answer] | list[GeneratedText]
Body = TokenClassificationBody | TextClassificationBody | QuestionAnsweringBody | TextGenerationBody


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` written in place of their references: a request body's schema stands alone in
    the OpenAPI document, where ``#/$defs/...`` would point nowhere (the models are not recursive)."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": inlined(TypeAdapter(Body).json_schema())}},
}
STREAM = {"text/event-stream": {"schema": {"type": "string", "description": "TGI's events, with stream: true"}}}


def hf_inference_routes(server: Server) -> APIRouter:
    """``POST /models/{name}`` of ``server``."""
    router = APIRouter()

    async def predicted(name: str, records: list[dict[str, str]]) -> list[dict[str, Any]]:
        return await server.answer(server.parse(server.predict_inputs({"inputs": records}, name), name))

    async def token_classification(name: str, body: TokenClassificationBody, single: bool) -> list[Any]:
        ignored = set((body.parameters or TokenClassificationParameters()).ignore_labels or [])
        fields = ("entity_group", "score", "word", "start", "end")
        found = await predicted(name, [{"text": text} for text in body.inputs])
        answers = [
            [
                {key: entity[key] for key in fields}
                for entity in answer["entities"]
                if entity["entity_group"] not in ignored
            ]
            for answer in found
        ]
        return answers[0] if single else answers

    async def text_classification(name: str, body: TextClassificationBody, single: bool) -> list[list[dict[str, Any]]]:
        top_k = (body.parameters or TextClassificationParameters()).top_k
        answers = []
        for answer in await predicted(name, body.inputs):
            ranked = sorted(answer["probabilities"].items(), key=lambda item: -item[1])
            answers.append([{"label": label, "score": score} for label, score in ranked[:top_k]])
        return answers  # a list per input even for one: Hugging Face's client reads the first

    async def question_answering(name: str, body: QuestionAnsweringBody, single: bool) -> Any:
        answers = [
            # no answer: offsets 0, as transformers' pipeline gives them
            {
                "answer": found["prediction_text"],
                "score": found["probability"],
                "start": max(found["start"], 0),
                "end": max(found["end"], 0),
            }
            for found in await predicted(name, body.inputs)
        ]
        return answers[0] if single else answers

    async def generation(name: str, body: TextGenerationBody, single: bool) -> Any:
        call = await server.holding(name, lambda held: TextGeneration(server, held, name, body))
        return call.streamed() if body.stream else [await call.answer()]

    shapes: dict[str, tuple[type[BaseModel], Callable[[str, Any, bool], Awaitable[Any]]]] = {
        "token-classification": (TokenClassificationBody, token_classification),
        "sequence-classification": (TextClassificationBody, text_classification),
        "question-answering": (QuestionAnsweringBody, question_answering),
        "generation": (TextGenerationBody, generation),
    }

    @router.post(
        "/models/{name}",
        response_model=None,
        openapi_extra={"requestBody": with_limits(REQUEST_BODY, server.config)},
        responses={200: {"model": Answered, "content": STREAM}, **errors(429)},
    )
    async def model(name: str, request: Request) -> Any:
        """Task ``name``'s answer in the Hugging Face Inference API's shape for its kind (a stream holds its task
        loaded on its own until it ends)."""
        # the body read (within --max-body-bytes) and its count checked before a registered task loads for it
        payload = await json_body(request, server.config.max_body_bytes)
        if isinstance(payload, dict) and isinstance(payload.get("inputs"), list):
            server.check_count(len(payload["inputs"]))
        with await server.resolve(name):  # a registered task loads on first use
            predictor = server.ready()
            if name not in predictor.tasks:
                raise ApiError(404, "unknown_task", unknown_task(name, predictor.tasks))
            kind = predictor.model.tasks[name].family_name
            if kind not in shapes:
                raise ApiError(
                    422,
                    "validation",
                    f"task {name!r} is {kind}: /models/NAME answers token-classification, sequence-classification, "
                    "question-answering and generation tasks",
                )
            shape, answer = shapes[kind]
            try:
                body = validated(shape, payload)
            except ApiError as error:  # the body of another kind's call, most likely: say which this task takes
                raise ApiError(error.status, error.error_type, f"task {name!r} is {kind}: {error}") from None
            return await answer(name, body, not isinstance(payload["inputs"], list))

    return router
