"""The request bodies of ptuning's own routes and of the generation APIs (OpenAI's completions, Hugging Face's text
generation): each field of one JSON type, checked strictly; a body that does not fit is a 422 naming each wrong field.
The generation bodies take the fields their APIs define: those we do not support are refused unless they hold the
value that changes nothing (``n: 1``, ``logprobs: null``), and a field no API defines is refused (a typo is told)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError, core_schema

from ..data.readers import LONE_SURROGATE, lone_surrogate_at
from .errors import ApiError


def unicode_text(text: str) -> str:
    """``text``, if it is Unicode text (no lone surrogate)."""
    at = lone_surrogate_at(text)
    if at is not None:
        raise PydanticCustomError("unicode", LONE_SURROGATE, {"at": at})
    return text


def integral(value: Any) -> Any:
    """An integer as JSON Schema reads one (and so a published schema promises): 3 and 3.0 alike."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def text_or_integer(value: Any) -> str | int:
    """An id: a string or an integer, as clients number their inputs either way."""
    if isinstance(value, str):
        return unicode_text(value)
    value = integral(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise PydanticCustomError("id_type", "expected a string or an integer")


Text = Annotated[StrictStr, AfterValidator(unicode_text)]
Integer = Annotated[StrictInt, BeforeValidator(integral)]
# in a JSON schema: this array's maxItems is this ServeConfig setting (the published schema says the server's value)
MAX_ITEMS_SETTING = "x-max-items-setting"
# a list of inputs: not empty (422), at most --max-inputs-per-request of them (413 beyond)
INPUTS_LIMIT = {"minItems": 1, MAX_ITEMS_SETTING: "max_inputs_per_request"}
STRING: dict[str, Any] = {"type": "string"}


class InputFields(BaseModel):
    """The fields an input may give, each of one JSON type (its task says which it needs); others are ignored."""

    model_config = ConfigDict(strict=True, extra="allow")

    task: Text | None = None
    text: Text | None = None
    text_pair: Text | None = None
    words: list[Text] | None = None
    predicate: Integer | None = None
    question: Text | None = None
    context: Text | None = None
    premise: Text | None = None
    choices: list[Text] | None = None
    choice1: Text | None = None
    choice2: Text | None = None
    id: Annotated[Any, AfterValidator(text_or_integer), WithJsonSchema({"type": ["string", "integer"]})] | None = None


class PredictBody(BaseModel):
    """The body of ``POST /v1/tasks/NAME/predict``: inputs of the path's task."""

    model_config = ConfigDict(strict=True)

    inputs: Annotated[list[InputFields], Field(json_schema_extra=INPUTS_LIMIT)]


class NamedInputFields(InputFields):
    """An input that names its task."""

    task: Text


class MixedPredictBody(BaseModel):
    """The body of ``POST /v1/predict``: inputs of any tasks, each naming its own."""

    model_config = ConfigDict(strict=True)

    inputs: Annotated[list[NamedInputFields], Field(json_schema_extra=INPUTS_LIMIT)]


class LoadBody(BaseModel):
    """The body of a runtime load: the checkpoint folder ``path`` (under --models-dir) as the task ``name``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: Text
    path: Text


class only:  # noqa: N801 - read as a type's metadata: Annotated[Any, only(None, 1)]
    """A field taken only at the values that change nothing (a bool is not a number here: ``true`` is not 1); its
    schema is the enum of those values."""

    def __init__(self, *harmless: Any):
        self.harmless = harmless

    def check(self, value: Any) -> Any:
        if not any(
            isinstance(value, bool) == isinstance(allowed, bool) and value == allowed for allowed in self.harmless
        ):
            said = " or ".join(json.dumps(allowed) for allowed in self.harmless)
            raise PydanticCustomError("unsupported", "not supported here (only {said})", {"said": said})
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        return {"enum": list(self.harmless)}


def texts(value: Any) -> list[str]:
    """A prompt: a string, or a non-empty list of strings (prompts as token ids are not taken)."""
    if isinstance(value, str):
        return [unicode_text(value)]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [unicode_text(item) for item in value]
    raise PydanticCustomError("texts", "expected a string or a non-empty list of strings")


def stop_strings(value: Any) -> list[str]:
    """Stop strings: a non-empty string or a list of them (null: none)."""
    if value is None:
        return []
    found = [value] if isinstance(value, str) else value
    if isinstance(found, list) and all(isinstance(item, str) and item for item in found):
        return [unicode_text(item) for item in found]
    raise PydanticCustomError("stop", "expected a non-empty string or a list of non-empty strings")


def message_text(value: Any) -> str:
    """A message's content: a string, or a list of text parts ``{"type": "text", "text": ...}`` (joined)."""
    if isinstance(value, str):
        return unicode_text(value)
    if isinstance(value, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in value
    ):
        return unicode_text("".join(part["text"] for part in value))
    raise PydanticCustomError("content", 'expected a string or a list of {"type": "text", "text": ...} parts')


# the JSON schemas of the fields a function checks (a string or a list, ...)
TEXTS = {"anyOf": [STRING, {"type": "array", "items": STRING, **INPUTS_LIMIT}]}
STOP = {
    "anyOf": [
        {"type": "null"},
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}},
    ]
}
TEXT_PART = {"type": "object", "properties": {"type": {"const": "text"}, "text": STRING}, "required": ["type", "text"]}
CONTENT = {"anyOf": [STRING, {"type": "array", "items": TEXT_PART}]}
Stop = Annotated[Any, AfterValidator(stop_strings), WithJsonSchema(STOP)]
NewTokens = Annotated[StrictInt, Field(ge=1), BeforeValidator(integral)]  # the bound inside: the schema says it
Seed = Integer  # any: generation takes it modulo 2^64
TopP = Annotated[float, Field(gt=0, le=1)]


class Message(BaseModel):
    """One chat message (``developer`` is read as ``system``; a ``name`` is ignored)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[Any, AfterValidator(message_text), WithJsonSchema(CONTENT)]
    name: Text | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: StrictBool = False


class OpenAIBody(BaseModel):
    """What OpenAI's completions and chat completions share; ``model`` names a generation task."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: Text
    max_tokens: NewTokens | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: TopP | None = None
    stop: Stop = None
    seed: Seed | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    user: Text | None = None
    metadata: dict[str, Any] | None = None
    service_tier: Text | None = None
    n: Annotated[Any, only(None, 1)] = None
    presence_penalty: Annotated[Any, only(None, 0)] = None
    frequency_penalty: Annotated[Any, only(None, 0)] = None
    logit_bias: Annotated[Any, only(None, {})] = None
    store: Annotated[Any, only(None, False)] = None


class CompletionBody(OpenAIBody):
    """``POST /v1/completions``."""

    prompt: Annotated[Any, AfterValidator(texts), WithJsonSchema(TEXTS)]
    logprobs: Annotated[Any, only(None)] = None
    echo: Annotated[Any, only(None, False)] = None
    best_of: Annotated[Any, only(None, 1)] = None
    suffix: Annotated[Any, only(None)] = None


class ChatBody(OpenAIBody):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: NewTokens | None = None
    parallel_tool_calls: StrictBool | None = None
    logprobs: Annotated[Any, only(None, False)] = None
    top_logprobs: Annotated[Any, only(None)] = None
    tools: Annotated[Any, only(None, [])] = None
    tool_choice: Annotated[Any, only(None, "none")] = None
    functions: Annotated[Any, only(None, [])] = None
    function_call: Annotated[Any, only(None, "none")] = None
    response_format: Annotated[Any, only(None, {"type": "text"})] = None
    modalities: Annotated[Any, only(None, ["text"])] = None
    reasoning_effort: Annotated[Any, only(None)] = None
    audio: Annotated[Any, only(None)] = None
    prediction: Annotated[Any, only(None)] = None


class TextGenerationParameters(BaseModel):
    """The ``parameters`` of Hugging Face's text generation (TGI)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    max_new_tokens: NewTokens | None = None
    do_sample: StrictBool | None = None
    temperature: Annotated[float, Field(gt=0)] | None = None
    top_p: TopP | None = None
    stop: Stop = None
    seed: Seed | None = None
    details: StrictBool | None = None
    return_full_text: StrictBool | None = None
    decoder_input_details: Annotated[Any, only(None, False)] = None
    best_of: Annotated[Any, only(None, 1)] = None
    repetition_penalty: Annotated[Any, only(None, 1)] = None
    frequency_penalty: Annotated[Any, only(None, 0)] = None
    top_k: Annotated[Any, only(None)] = None
    top_n_tokens: Annotated[Any, only(None, 0)] = None
    truncate: Annotated[Any, only(None)] = None
    typical_p: Annotated[Any, only(None, 1)] = None
    watermark: Annotated[Any, only(None, False)] = None
    grammar: Annotated[Any, only(None)] = None
    adapter_id: Annotated[Any, only(None)] = None


class TextGenerationBody(BaseModel):
    """``POST /v1/tasks/NAME/generate`` (and ``generate_stream``)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    inputs: Text
    parameters: TextGenerationParameters | None = None
    stream: StrictBool | None = None


# pydantic's error types in JSON's words: what a field was missing, or what it expected
SAID = {"missing": "missing", "extra_forbidden": "unknown field"}
EXPECTED = {
    "model_type": "a JSON object",
    "string_type": "a string",
    "int_type": "an integer",
    "list_type": "a list",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a JSON object",
}


Body = TypeVar("Body", bound=BaseModel)


def validated(model: type[Body], payload: Any) -> Body:
    """``payload`` as ``model``, or a 422 naming each wrong field (``inputs[0].words[2]``), what it expects and what
    it got."""
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise ApiError(422, "validation", said(error.errors())) from None


def said(problems: list[Any]) -> str:
    """pydantic's problems in one line, each naming its field (``inputs[0].words[2]``), what it expects and what it
    got."""
    found = []
    for problem in problems:
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
        where = where.removeprefix(".") or "the body"
        kind, got = problem["type"], json.dumps(problem["input"], default=repr)
        got = got if len(got) <= 40 else got[:37] + "..."
        expected = f"expected {EXPECTED[kind]}" if kind in EXPECTED else problem["msg"]
        found.append(f"{where}: {SAID.get(kind) or f'{expected}, got {got}'}")
    return "; ".join(found)


async def json_body(request: Request, limit: int) -> Any:
    """The request's body as JSON: a 413 beyond ``limit`` bytes, a 422 if it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the body has {declared} bytes; at most {limit}")
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "too_large", f"the body has {len(body)} bytes; at most {limit}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # also bytes not UTF-8, nesting too deep, a 5,000-digit number
        raise ApiError(422, "invalid_json", f"the body is not JSON: {error}") from error
