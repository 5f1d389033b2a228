"""The request bodies of ptuning's own routes: each field of one JSON type, checked strictly; a body that does not
fit is a 422 naming each wrong field."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import Request
from pydantic import AfterValidator, BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError
from pydantic_core import PydanticCustomError

from ..data.readers import LONE_SURROGATE, lone_surrogate_at
from .errors import ApiError


def unicode_text(text: str) -> str:
    """``text``, if it is Unicode text (no lone surrogate)."""
    at = lone_surrogate_at(text)
    if at is not None:
        raise PydanticCustomError("unicode", LONE_SURROGATE, {"at": at})
    return text


def text_or_integer(value: Any) -> str | int:
    """An id: a string or an integer, as clients number their inputs either way."""
    if isinstance(value, str):
        return unicode_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise PydanticCustomError("id_type", "expected a string or an integer")


Text = Annotated[StrictStr, AfterValidator(unicode_text)]


class InputFields(BaseModel):
    """The fields an input may give, each of one JSON type (its task says which it needs); others are ignored."""

    model_config = ConfigDict(strict=True, extra="allow")

    task: Text | None = None
    text: Text | None = None
    text_pair: Text | None = None
    words: list[Text] | None = None
    predicate: StrictInt | None = None
    question: Text | None = None
    context: Text | None = None
    premise: Text | None = None
    choices: list[Text] | None = None
    choice1: Text | None = None
    choice2: Text | None = None
    id: Annotated[Any, AfterValidator(text_or_integer)] | None = None


class PredictBody(BaseModel):
    """The body of the predict routes."""

    model_config = ConfigDict(strict=True)

    inputs: list[InputFields]


class LoadBody(BaseModel):
    """The body of a runtime load: the checkpoint folder ``path`` (under --models-dir) as the task ``name``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: Text
    path: Text


# pydantic's error types in JSON's words: what a field was missing, or what it expected
SAID = {"missing": "missing", "extra_forbidden": "unknown field"}
EXPECTED = {"model_type": "a JSON object", "string_type": "a string", "int_type": "an integer", "list_type": "a list"}


Body = TypeVar("Body", bound=BaseModel)


def validated(model: type[Body], payload: Any) -> Body:
    """``payload`` as ``model``, or a 422 naming each wrong field (``inputs[0].words[2]``), what it expects and what
    it got."""
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
            where = where.removeprefix(".") or "the body"
            kind, got = problem["type"], json.dumps(problem["input"])
            got = got if len(got) <= 40 else got[:37] + "..."
            expected = f"expected {EXPECTED[kind]}" if kind in EXPECTED else problem["msg"]
            problems.append(f"{where}: {SAID.get(kind) or f'{expected}, got {got}'}")
        raise ApiError(422, "validation", "; ".join(problems)) from None


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
