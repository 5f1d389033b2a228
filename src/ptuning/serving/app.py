"""The FastAPI application: the model loads in the background after start, the errors answer as JSON, every request
is measured, and the health and metrics routes stand beside the API's routes; ``/openapi.json`` describes them all
(``contract``) and ``/docs`` shows it with Swagger UI's files served from fastapi-offline's copy (no CDN: the page
works on a machine without internet)."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..devices import place, resolve_device
from ..predictor import Predictor
from .batching import Batcher
from .config import ServeConfig
from .contract import publish
from .errors import answer_errors_as_json
from .generating import GenerationBatcher
from .hf_inference import hf_inference_routes
from .native import native_routes
from .openai_api import openai_routes
from .server import Server
from .text_generation import text_generation_routes

logger = logging.getLogger("ptuning")


def freeze_loaded_objects() -> None:
    """Move what is loaded now out of the garbage collector's sight: a model is hundreds of thousands of
    long-lived objects, and each full collection walking them would pause every request."""
    gc.collect()
    gc.freeze()


def create_app(sources: dict[str, str] | str, config: ServeConfig) -> FastAPI:
    """The application for ``{name: checkpoint folder}`` (or one folder and its tasks); the model loads in the
    background after start (``/health/ready`` answers 503 until then); if it cannot, ``server.stop`` is called."""
    server = Server(sources, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        batching: list[asyncio.Task] = []

        async def load() -> None:
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
            batcher = Batcher(predictor, config, server.metrics)
            # one inference thread and one queue limit for both: the model runs one batch at a time
            server.generator = GenerationBatcher(predictor, config, server.metrics, batcher.worker, batcher.admission)
            server.registry.start(predictor, batcher.worker)  # registered tasks load in the inference thread
            server.batcher, server.predictor = batcher, predictor
            batching.extend(asyncio.create_task(runner.run()) for runner in (batcher, server.generator))
            logger.info("ready: %s (%.1f s)", ", ".join(predictor.tasks), time.perf_counter() - started)

        loading = asyncio.create_task(load())
        yield
        loading.cancel()
        for task in batching:
            task.cancel()
        if server.batcher is not None:
            server.batcher.worker.shutdown(wait=True)

    # Swagger UI's validator badge would send the schema's address to a site on the internet
    app = FastAPIOffline(title="ptuning", lifespan=lifespan, swagger_ui_parameters={"validatorUrl": None})
    app.state.server = server
    answer_errors_as_json(app)

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

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(native_routes(server))
    app.include_router(openai_routes(server))
    app.include_router(text_generation_routes(server))
    app.include_router(hf_inference_routes(server))
    publish(app, always_up={"/health/live", "/metrics"})
    return app
