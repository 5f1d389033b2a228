"""The server's published contract: ``/openapi.json`` names every route's request body, each status it may answer
(errors with their ``{"error", "error_type"}`` body) and each content type it sends, so that clients generated from it
and tools testing against it (schemathesis) hold the server to what it does. Routes read their JSON bodies themselves
(``schemas.json_body``: a 413 before parsing, 422s naming each field), so their bodies are declared here, from the
same pydantic models, with the limits of the server's settings.

Every route gets the errors of its kind when the schema is built (``publish``): 500 always; 503 unless the route
answers without the model (``always_up``); 404 with a path parameter (no such task); 413 and 422 with a JSON body
(422 with a query); 401 and 404 with the admin token (runtime loading off). A route adds its own with
``responses=errors(...)``; FastAPI's own request validation answers the same error body (422)."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from .config import ServeConfig
from .errors import error_response
from .schemas import MAX_ITEMS_SETTING, said

REFS = "#/components/schemas/"


class ErrorBody(BaseModel):
    """The body of every error."""

    error: str = Field(description="what is wrong, naming the field or the task")
    error_type: str = Field(
        description="its kind: validation, invalid_json, unknown_task, not_found, method_not_allowed, unauthorized, "
        "too_large, too_many_inputs, overloaded, not_ready, load_failed, task_load_failed, internal"
    )


WHY = {
    401: "Authorization: Bearer TOKEN is missing or wrong",
    404: "no such task (or runtime loading is off)",
    413: "the body is over --max-body-bytes, or its inputs over --max-inputs-per-request",
    422: "the body is not JSON, or a field does not fit (the message names it)",
    429: "more inputs wait than --max-queue allows; retry after Retry-After seconds",
    500: "the server failed (its log has the traceback)",
    503: "the model is still loading, or failed to load; or a registered task failed to load (task_load_failed, with "
    "Retry-After: the seconds until it is tried again)",
}
# the statuses that send Retry-After: 429 always, 503 for task_load_failed only
RETRY_AFTER = {
    status: {"Retry-After": {"required": required, "description": said, "schema": {"type": "integer"}}}
    for status, required, said in [
        (429, True, "seconds to wait"),
        (503, False, "seconds until the task's load is tried again (task_load_failed)"),
    ]
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route that may answer ``statuses`` besides those of its kind (``publish`` gives each its
    body)."""
    return {status: {"description": WHY[status]} for status in statuses}


class EventStream(StreamingResponse):
    """Server-sent events (as ``response_class=``, it declares the route's 200 as ``text/event-stream``)."""

    media_type = "text/event-stream"


# one server-sent event, as OpenAPI 3.2 (and FastAPI) describe each item of a stream: its data a JSON chunk, or
# OpenAI's closing [DONE]
EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
    "required": ["data"],
}
EVENTS = {"text/event-stream": {"itemSchema": EVENT}}
# ``responses=`` of a route that answers JSON, or server-sent events when the body asks ``stream: true``
JSON_OR_EVENTS: dict[int | str, dict[str, Any]] = {200: {"content": EVENTS, "description": "JSON, or events"}}


def json_request(model: type[BaseModel], config: ServeConfig) -> dict[str, Any]:
    """``openapi_extra=`` of a route reading ``model`` from its JSON body itself: the model's schema, with the array
    limits of ``config`` where the model marks them."""
    schema = model.model_json_schema(ref_template=REFS + "{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": with_limits(schema, config)}}}}


def with_limits(schema: Any, config: ServeConfig) -> Any:
    """``schema`` with each ``MAX_ITEMS_SETTING`` marker replaced by ``maxItems``: that setting's value."""
    if isinstance(schema, list):
        return [with_limits(item, config) for item in schema]
    if not isinstance(schema, dict):
        return schema
    found = {key: with_limits(value, config) for key, value in schema.items() if key != MAX_ITEMS_SETTING}
    if MAX_ITEMS_SETTING in schema:
        found["maxItems"] = getattr(config, schema[MAX_ITEMS_SETTING])
    return found


def publish(app: FastAPI, always_up: set[str]) -> None:
    """Build ``app``'s OpenAPI schema (once, when first asked) with every route's errors and bodies; ``always_up``:
    the paths that answer without the model (no 503). A route whose parameters FastAPI validates answers its 422s in
    the one error body too."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's locations begin with where the value was ("body", "query"); a body's fields are named as ours are
        problems = [{**problem, "loc": problem["loc"][problem["loc"][:1] == ("body",) :]} for problem in error.errors()]
        return error_response(422, "validation", said(problems))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = completed(schema, always_up)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def completed(schema: dict[str, Any], always_up: set[str]) -> dict[str, Any]:
    """FastAPI's schema with the request bodies' models moved to the components and each operation's errors, each
    with the one error body."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema()
    components.pop("HTTPValidationError", None)  # FastAPI's own 422 body: the server answers ErrorBody instead
    components.pop("ValidationError", None)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                body["schema"] = to_components(body["schema"], components)
            responses = operation.setdefault("responses", {})
            for answer in responses.values():  # a stream is described per event (FastAPI says a string of it all)
                content = answer.get("content", {})
                if "text/event-stream" in content and "itemSchema" not in content["text/event-stream"]:
                    content["text/event-stream"] = EVENTS["text/event-stream"]
            if "HTTPValidationError" in str(responses.get("422")):  # FastAPI's, said of any route with a parameter
                del responses["422"]
            declared = {int(status): answer for status, answer in responses.items() if status.isdigit()}
            for status in sorted({*declared, *statuses_of(path, operation, always_up)}):
                if status >= 400:
                    said_why = declared.get(status, {}).get("description")
                    responses[str(status)] = error_body(status, said_why or WHY.get(status, "an error"))
    return schema


def statuses_of(path: str, operation: dict[str, Any], always_up: set[str]) -> set[int]:
    """The errors any route of this kind may answer."""
    found = {500}
    if path not in always_up:
        found.add(503)
    parameters = operation.get("parameters", [])
    if any(parameter.get("in") == "path" for parameter in parameters):
        found.add(404)
    if "requestBody" in operation or any(parameter.get("in") != "path" for parameter in parameters):
        found.add(422)  # a body (or a query) that does not fit
    if "requestBody" in operation:
        found.add(413)
    if operation.get("security"):
        found |= {401, 404}
    return found


def error_body(status: int, description: str) -> dict[str, Any]:
    answer = {"description": description, "content": {"application/json": {"schema": {"$ref": REFS + "ErrorBody"}}}}
    if status in RETRY_AFTER:
        answer["headers"] = copy.deepcopy(RETRY_AFTER[status])
    return answer


def to_components(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A body's schema as a reference to the components, where it goes with the models it uses (pydantic's $defs)."""
    schema = dict(schema)
    components.update(schema.pop("$defs", {}))
    if "title" not in schema or "$ref" in schema:
        return schema
    components[schema["title"]] = schema
    return {"$ref": REFS + schema["title"]}
