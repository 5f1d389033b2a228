"""``ptuning serve``: the tasks of several checkpoints on one backbone over HTTP (FastAPI + uvicorn).

Requests name their task per input. Inputs wait in one queue; a batcher forms batches of any tasks by a token
budget, waiting at most ``max_wait_ms`` after the first input for more, and runs each batch in one inference
thread (the event loop stays free: health and metrics answer while a batch runs); a request's inputs may span
batches and come back in order. Errors are JSON ``{"error", "error_type"}`` with a 4xx status for bad input; every
field of a request body has one JSON type, checked strictly (a 422 names the field).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .data.readers import LONE_SURROGATE, lone_surrogate_at
from .devices import place, resolve_device
from .errors import PtuningError
from .predictor import Predictor
from .predictor import Request as TaskInput
from .serve_config import ServeConfig

logger = logging.getLogger("ptuning")
TRIM_INTERVAL_S = 1.0


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None on another C library)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def freeze_loaded_objects() -> None:
    """Move what is loaded now out of the garbage collector's sight: a model is hundreds of thousands of
    long-lived objects, and each full collection walking them would pause every request."""
    gc.collect()
    gc.freeze()


class ApiError(Exception):
    """An error answered as ``{"error", "error_type"}`` with its status."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_type, self.headers = status, error_type, headers


def error_response(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # a message quoting a lone surrogate could not be encoded as UTF-8: the answer would become a 500
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


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


@dataclass
class Pending:
    """One input in the queue and where its answer goes."""

    request: TaskInput
    tokens: int
    answer: asyncio.Future


@dataclass
class Metrics:
    """Prometheus metrics of one server (its own registry)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.inputs = Counter(
            "ptuning_inputs", "Inputs answered, by task and status", ["task", "status"], registry=self.registry
        )
        self.requests = Counter(
            "ptuning_requests", "HTTP requests, by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram("ptuning_request_seconds", "Request latency", ["endpoint"], registry=self.registry)
        buckets = (1, 2, 4, 8, 16, 32, 64, 128, 256)
        self.batch_inputs = Histogram(
            "ptuning_batch_inputs", "Inputs per batch", buckets=buckets, registry=self.registry
        )
        self.batch_tokens = Histogram(
            "ptuning_batch_tokens",
            "Tokens per batch",
            registry=self.registry,
            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384),
        )
        self.queue_depth = Gauge("ptuning_queue_depth", "Inputs waiting", registry=self.registry)
        self.batch_seconds = Histogram(
            "ptuning_batch_seconds", "Inference time of a batch, features to formatted answers", registry=self.registry
        )


class Batcher:
    """The queue, the batching loop, and the one inference thread."""

    def __init__(self, predictor: Predictor, config: ServeConfig, metrics: Metrics):
        self.predictor, self.config, self.metrics = predictor, config, metrics
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.carried: Pending | None = None  # the input that would have overflowed the last batch
        self.waiting = 0
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="ptuning-inference")
        self.malloc_trim = glibc_malloc_trim()
        self.trimmed_at = time.monotonic()

    def predict(self, requests: list[TaskInput]) -> list[dict[str, Any]]:
        """One batch's answers (in the inference thread); then, at most once a second, the heap memory the batch
        freed goes back to the system: batches of ever-new shapes otherwise leave the C allocator holding
        hundreds of MB it no longer uses."""
        with self.metrics.batch_seconds.time():
            answers = self.predictor.predict(requests)
        if self.malloc_trim is not None and time.monotonic() - self.trimmed_at >= TRIM_INTERVAL_S:
            self.malloc_trim(0)
            self.trimmed_at = time.monotonic()
        return answers

    async def answer(self, inputs: list[TaskInput]) -> list[dict[str, Any]]:
        """Queue the inputs and wait for their answers, in order."""
        if self.waiting + len(inputs) > self.config.max_queue:
            raise ApiError(
                429,
                "overloaded",
                f"{self.waiting} inputs are waiting already; retry shortly",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        pending = [Pending(item, self.predictor.tokens(item), loop.create_future()) for item in inputs]
        self.waiting += len(pending)
        self.metrics.queue_depth.set(self.waiting)
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
            self.waiting -= len(batch)
            self.metrics.queue_depth.set(self.waiting)
            self.metrics.batch_inputs.observe(len(batch))
            self.metrics.batch_tokens.observe(tokens)
            try:
                answers = await loop.run_in_executor(self.worker, self.predict, [i.request for i in batch])
            except Exception as error:  # a failure of the model, not of the input: every waiting request learns it
                logger.exception("batch failed")
                for item in batch:
                    item.answer.set_exception(error)
                continue
            for item, answer in zip(batch, answers, strict=True):
                item.answer.set_result(answer)


@dataclass
class Server:
    """What the endpoints share: the predictor once loaded, the batcher, the metrics."""

    sources: dict[str, str] | str
    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    predictor: Predictor | None = None
    batcher: Batcher | None = None
    failure: Exception | None = None  # why the model did not load
    # what ends the process when the model cannot load (serve() sets uvicorn's exit flag)
    stop: Callable[[], None] = field(default=lambda: None)

    def ready(self) -> Predictor:
        if self.failure is not None:
            raise ApiError(503, "load_failed", f"the model failed to load: {self.failure}")
        if self.predictor is None or self.batcher is None:
            raise ApiError(503, "not_ready", "the model is still loading")
        return self.predictor

    def inputs(self, payload: Any, task: str | None) -> list[TaskInput]:
        """The request's inputs, each parsed by its task (``task``: the path's task for every input)."""
        predictor = self.ready()
        inputs = validated(PredictBody, payload).inputs
        if not inputs:
            raise ApiError(422, "validation", "inputs is empty")
        if len(inputs) > self.config.max_inputs_per_request:
            raise ApiError(
                413, "too_many_inputs", f"{len(inputs)} inputs; at most {self.config.max_inputs_per_request}"
            )
        parsed = []
        for index, fields in enumerate(inputs):
            record = fields.model_dump(exclude_unset=True) | ({} if task is None else {"task": task})
            try:
                parsed.append(predictor.parse(record, f"inputs[{index}]"))
            except PtuningError as error:
                unknown = record.get("task") not in predictor.tasks
                raise ApiError(422, "unknown_task" if unknown else "validation", str(error)) from error
        return parsed

    def backbone(self) -> dict[str, str]:
        """The shared backbone: its reference, where it runs and the type its weights are held in."""
        model = self.ready().model
        weight = next(model.backbone.parameters())
        dtype = str(weight.dtype).removeprefix("torch.")
        return {"name": str(model.backbone_reference), "device": str(weight.device), "dtype": dtype}

    def listing(self) -> dict[str, Any]:
        """What GET /v1/tasks answers (and load/unload after their change): the backbone and every task."""
        return {"backbone": self.backbone(), "tasks": self.describe()}

    def describe(self) -> list[dict[str, Any]]:
        model = self.ready().model
        described = []
        for name, entry in model.tasks.items():
            prompt = model.prompt_configs[entry.prompt]
            stored = (
                sum(p.numel() * p.element_size() for p in model.heads[name].parameters()) if name in model.heads else 0
            )
            if entry.prompt in model.prompts:
                table = model.prompts[entry.prompt].folded_table()
                stored += table.numel() * table.element_size()
            described.append(
                {
                    "name": name,
                    "kind": entry.extra.get("task_name", entry.kind),
                    "labels": entry.labels,
                    "backbone": model.backbone_reference,
                    "method": prompt.method,
                    "prompt_length": prompt.length if prompt.has_prompt else 0,
                    "stored_bytes": stored,
                }
            )
        return described


async def _json_body(request: Request, limit: int) -> Any:
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


def create_app(sources: dict[str, str] | str, config: ServeConfig) -> FastAPI:
    """The application for ``{name: checkpoint folder}`` (or one folder and its tasks); the model loads in the
    background after start (``/health/ready`` answers 503 until then); if it cannot, ``server.stop`` is called."""
    server = Server(sources, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        batching: asyncio.Task | None = None

        async def load() -> None:
            nonlocal batching
            started = time.perf_counter()
            try:
                predictor = await loop.run_in_executor(
                    None,
                    functools.partial(
                        Predictor.from_checkpoints, server.sources, max_tokens=config.forward_tokens, progress=False
                    ),
                )
                place(predictor.model, resolve_device(config.device), config.precision)
            except Exception as error:  # a server without its model would answer 503 forever
                server.failure = error
                server.stop()
                return
            freeze_loaded_objects()
            server.batcher = Batcher(predictor, config, server.metrics)
            server.predictor = predictor
            batching = asyncio.create_task(server.batcher.run())
            logger.info("ready: %s (%.1f s)", ", ".join(predictor.tasks), time.perf_counter() - started)

        loading = asyncio.create_task(load())
        yield
        loading.cancel()
        if batching is not None:
            batching.cancel()
        if server.batcher is not None:
            server.batcher.worker.shutdown(wait=True)

    app = FastAPI(title="ptuning", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.error_type, str(error), error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # a failure of the server, not of the request (the server log has its traceback)
        return error_response(500, "internal", f"the server failed ({type(error).__name__}: {error})")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http")
        return error_response(error.status_code, kind, str(error.detail))

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        server.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        server.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        server.ready()
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        return server.listing()

    async def predict(request: Request, task: str | None) -> dict[str, Any]:
        if task is not None and task not in server.ready().tasks:
            raise ApiError(
                404, "unknown_task", f"unknown task {task!r}; loaded tasks: {', '.join(server.ready().tasks)}"
            )
        inputs = server.inputs(await _json_body(request, config.max_body_bytes), task)
        try:
            outputs = await server.batcher.answer(inputs)
        except ApiError as error:
            for item in inputs:
                server.metrics.inputs.labels(item.task, str(error.status)).inc()
            raise
        for item in inputs:
            server.metrics.inputs.labels(item.task, "200").inc()
        return {"outputs": outputs}

    @app.post("/v1/predict")
    async def predict_any(request: Request) -> dict[str, Any]:
        return await predict(request, None)

    @app.post("/v1/tasks/{name}/predict")
    async def predict_task(name: str, request: Request) -> dict[str, Any]:
        return await predict(request, name)

    def authorized(request: Request) -> None:
        if config.admin_token is None:
            raise ApiError(404, "not_found", "runtime loading is off (start the server with --admin-token)")
        if request.headers.get("authorization") != f"Bearer {config.admin_token}":
            raise ApiError(401, "unauthorized", "a bearer token is needed (Authorization: Bearer TOKEN)")

    @app.post("/v1/tasks")
    async def load_task(request: Request) -> dict[str, Any]:
        authorized(request)
        predictor = server.ready()
        body = validated(LoadBody, await _json_body(request, config.max_body_bytes))
        root = Path(config.models_dir).resolve()  # ServeConfig: set with the token
        try:
            folder = (root / body.path).resolve()
            found = folder.is_relative_to(root) and folder.is_dir()
        except (OSError, ValueError):  # a NUL byte, a name too long: no folder either
            found = False
        if not found:
            raise ApiError(
                422, "validation", f"cannot load task {body.name!r}: {body.path!r} is not a folder under --models-dir"
            )
        loop = asyncio.get_running_loop()
        try:  # in the inference thread, between batches; a load that fails adds nothing
            await loop.run_in_executor(server.batcher.worker, predictor.load, body.name, str(folder))
        except PtuningError as error:
            raise ApiError(422, "validation", str(error)) from error
        gc.freeze()  # the new task's objects too (a full collection here would take longer than the load)
        return server.listing()

    @app.delete("/v1/tasks/{name}")
    async def unload_task(name: str, request: Request) -> dict[str, Any]:
        authorized(request)
        predictor = server.ready()
        if name not in predictor.tasks:
            raise ApiError(404, "unknown_task", f"unknown task {name!r}; loaded tasks: {', '.join(predictor.tasks)}")
        await asyncio.get_running_loop().run_in_executor(server.batcher.worker, predictor.unload, name)
        return server.listing()

    return app


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for uvicorn to serve on (as uvicorn binds its own: address reuse on)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, protocol)
    except OSError as error:
        raise PtuningError(f"--host {host}: cannot listen there ({error.strerror or error})") from error
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        listener.close()
        raise PtuningError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return listener


def serve(sources: dict[str, str] | str, config: ServeConfig) -> None:
    """Run the server until SIGINT/SIGTERM (uvicorn answers the requests in flight before it stops); a model that
    cannot load stops it, and its error is raised."""
    import uvicorn

    listener = _listen(config.host, config.port)  # before loading anything: a taken port is known at once
    app = create_app(sources, config)
    runner = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info"))
    server: Server = app.state.server
    server.stop = functools.partial(setattr, runner, "should_exit", True)
    with listener, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn stopped gracefully, then raised it again
        runner.run(sockets=[listener])
    if server.failure is not None:
        raise server.failure
