"""ptuning's own routes: the task listing (the loaded tasks and the registry's counts; ``?registered=true`` pages
through the registered names with ``offset`` and ``limit``), predict (tasks named per input, or by the path; a
registered task loads on first use), and runtime load and unload behind the admin token. Another API (another client's
conventions) is another module of routes like this one, included by ``create_app``."""

from __future__ import annotations

import asyncio
import gc
import hmac
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import PtuningError
from ..predictor import unknown_task
from .contract import errors, json_request
from .errors import ApiError
from .schemas import LoadBody, MixedPredictBody, PredictBody, json_body, validated
from .server import Server

# declares the admin routes' bearer token in the schema; ``authorized`` answers its absence (401, not 403)
BEARER = HTTPBearer(auto_error=False, description="the admin token (PTUNING_ADMIN_TOKEN or --admin-token-file)")
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
        inputs = server.predict_inputs(await json_body(request, config.max_body_bytes), task)
        with await server.resolve(server.named_tasks(inputs, task)):  # after the checks: a load costs
            if task is not None and task not in server.ready().tasks:
                raise ApiError(404, "unknown_task", unknown_task(task, server.ready().tasks))
            return {"outputs": await server.answer(server.parse(inputs, task))}

    @router.post("/v1/predict", openapi_extra=json_request(MixedPredictBody, config), responses=errors(404, 429))
    async def predict_any(request: Request) -> dict[str, Any]:
        return await predict(request, None)

    @router.post("/v1/tasks/{name}/predict", openapi_extra=json_request(PredictBody, config), responses=errors(429))
    async def predict_task(name: str, request: Request) -> dict[str, Any]:
        return await predict(request, name)

    async def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> None:
        # in constant time: how long a wrong token takes to refuse tells nothing of the right one
        given = b"" if credentials is None else credentials.credentials.encode("latin-1")  # the header's own bytes
        if not hmac.compare_digest(given, config.admin_token.encode("utf-8", "surrogateescape")):  # as the env held it
            raise ApiError(401, "unauthorized", "a bearer token is needed (Authorization: Bearer TOKEN)")

    async def loading_off() -> None:
        raise ApiError(
            404, "not_found", "runtime loading is off (start the server with PTUNING_ADMIN_TOKEN or --admin-token-file)"
        )

    # without a token the routes take no credentials (the schema asks none) and answer 404
    admin = (
        {"dependencies": [Security(authorized)]}
        if config.admin_token is not None
        else {"dependencies": [Depends(loading_off)], "responses": errors(404)}
    )

    @router.post("/v1/tasks", openapi_extra=json_request(LoadBody, config), **admin)
    async def load_task(request: Request) -> dict[str, Any]:
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

    @router.delete("/v1/tasks/{name}", **admin)
    async def unload_task(name: str) -> dict[str, Any]:
        predictor = server.ready()
        if name not in predictor.tasks:
            raise ApiError(404, "unknown_task", unknown_task(name, predictor.tasks))
        await asyncio.get_running_loop().run_in_executor(server.batcher.worker, predictor.unload, name)
        server.registry.forget(name)
        return server.listing()

    return router
