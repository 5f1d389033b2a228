"""ptuning's own routes: the task listing (the loaded tasks and the registry's counts; ``?registered=true`` pages
through the registered names with ``offset`` and ``limit``), predict (tasks named per input, or by the path; a
registered task loads on first use), and runtime load and unload behind --admin-token. Another API (another client's
conventions) is another module of routes like this one, included by ``create_app``."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from ..errors import PtuningError
from .errors import ApiError
from .schemas import LoadBody, json_body, validated
from .server import Server

MAX_PAGE = 1000  # registered names in one page of the listing at most


def native_routes(server: Server) -> APIRouter:
    """The routes under ``/v1`` of ``server``."""
    config = server.config
    router = APIRouter()

    @router.get("/v1/tasks")
    async def tasks(
        registered: bool = False, offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1)] = 100
    ) -> dict[str, Any]:
        listing = server.listing()
        if registered:
            limit = min(limit, MAX_PAGE)
            listing["registered"] = {"offset": offset, "limit": limit, "tasks": server.registry.page(offset, limit)}
        return listing

    async def predict(request: Request, task: str | None) -> dict[str, Any]:
        payload = await json_body(request, config.max_body_bytes)
        with await server.resolve(server.named_tasks(payload, task)):
            if task is not None and task not in server.ready().tasks:
                raise ApiError(
                    404, "unknown_task", f"unknown task {task!r}; loaded tasks: {', '.join(server.ready().tasks)}"
                )
            inputs = server.inputs(payload, task)
            try:
                outputs = await server.batcher.answer(inputs)
            except ApiError as error:
                for item in inputs:
                    server.metrics.inputs.labels(item.task, str(error.status)).inc()
                raise
        for item in inputs:
            server.metrics.inputs.labels(item.task, "200").inc()
        return {"outputs": outputs}

    @router.post("/v1/predict")
    async def predict_any(request: Request) -> dict[str, Any]:
        return await predict(request, None)

    @router.post("/v1/tasks/{name}/predict")
    async def predict_task(name: str, request: Request) -> dict[str, Any]:
        return await predict(request, name)

    def authorized(request: Request) -> None:
        if config.admin_token is None:
            raise ApiError(404, "not_found", "runtime loading is off (start the server with --admin-token)")
        if request.headers.get("authorization") != f"Bearer {config.admin_token}":
            raise ApiError(401, "unauthorized", "a bearer token is needed (Authorization: Bearer TOKEN)")

    @router.post("/v1/tasks")
    async def load_task(request: Request) -> dict[str, Any]:
        authorized(request)
        predictor = server.ready()
        body = validated(LoadBody, await json_body(request, config.max_body_bytes))
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
            names = await loop.run_in_executor(server.batcher.worker, predictor.load, body.name, str(folder))
        except PtuningError as error:
            raise ApiError(422, "validation", str(error)) from error
        server.registry.pin(names)
        gc.freeze()  # the new task's objects too (a full collection here would take longer than the load)
        return server.listing()

    @router.delete("/v1/tasks/{name}")
    async def unload_task(name: str, request: Request) -> dict[str, Any]:
        authorized(request)
        predictor = server.ready()
        if name not in predictor.tasks:
            raise ApiError(404, "unknown_task", f"unknown task {name!r}; loaded tasks: {', '.join(predictor.tasks)}")
        await asyncio.get_running_loop().run_in_executor(server.batcher.worker, predictor.unload, name)
        server.registry.forget(name)
        return server.listing()

    return router
