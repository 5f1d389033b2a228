"""What every route shares: the predictor once loaded, the batchers, the metrics, the task registry; readiness, the
tasks a request names resolved (loaded on first use), the request's inputs parsed by their tasks, and the listing of
the tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import PtuningError
from ..predictor import Predictor
from ..predictor import Request as TaskInput
from .batching import Batcher
from .config import ServeConfig
from .errors import ApiError
from .generating import GenerationBatcher
from .metrics import Metrics
from .registry import Held, Registry, stored_bytes
from .schemas import InputFields, MixedPredictBody, PredictBody, validated

Started = TypeVar("Started")


@dataclass
class Server:
    """What the endpoints share: the predictor once loaded, the batchers (inputs to predict, prompts to continue),
    the metrics."""

    sources: dict[str, str] | str
    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    predictor: Predictor | None = None
    batcher: Batcher | None = None
    generator: GenerationBatcher | None = None
    failure: Exception | None = None  # why the model did not load
    # what ends the process when the model cannot load (serve() sets uvicorn's exit flag)
    stop: Callable[[], None] = field(default=lambda: None)
    registry: Registry = field(init=False)

    def __post_init__(self) -> None:
        self.registry = Registry.from_config(self.config, self.metrics)  # a bad listing stops the start

    def ready(self) -> Predictor:
        if self.failure is not None:
            raise ApiError(503, "load_failed", f"the model failed to load: {self.failure}")
        if self.predictor is None or self.batcher is None or self.generator is None:
            raise ApiError(503, "not_ready", "the model is still loading")
        return self.predictor

    async def resolve(self, names: str | Iterable[Any]) -> Held:
        """The one way a route names tasks: each registered task of ``names`` is loaded on first use (or a 503
        ``task_load_failed``) and kept loaded until the returned hold is released (``with await
        server.resolve(name):`` around the answer, or ``.release()`` at a stream's end). Names neither loaded nor
        registered pass, for the route's own unknown-task answer."""
        self.ready()
        return await self.registry.acquire([names] if isinstance(names, str) else names)

    async def holding(self, name: str, start: Callable[[Held], Started]) -> Started:
        """``start(held)`` (a request queued) with task ``name`` held loaded until its answer ends; the hold is
        released at once if ``start`` fails."""
        held = await self.resolve(name)
        try:
            return start(held)
        except BaseException:
            held.release()
            raise

    def predict_inputs(self, payload: Any, task: str | None) -> list[InputFields]:
        """A predict body's inputs, validated once (``task``: the path's task for every input; else each names its
        own), not empty and not too many: checked before any task they name is loaded."""
        inputs = validated(PredictBody if task is not None else MixedPredictBody, payload).inputs
        if not inputs:
            raise ApiError(422, "validation", "inputs is empty")
        self.check_count(len(inputs))
        return inputs

    def check_count(self, count: int) -> None:
        """A 413 for more inputs than --max-inputs-per-request."""
        if count > self.config.max_inputs_per_request:
            raise ApiError(413, "too_many_inputs", f"{count} inputs; at most {self.config.max_inputs_per_request}")

    @staticmethod
    def named_tasks(inputs: list[InputFields], task: str | None) -> list[Any]:
        """The tasks a predict body's inputs name (``task``: the path's task for every input)."""
        return [task] if task is not None else [fields.task for fields in inputs]

    def parse(self, inputs: list[InputFields], task: str | None) -> list[TaskInput]:
        """The validated inputs, each parsed by its task (``task``: the path's task for every input; else each names
        its own, a 404 if no such task is loaded)."""
        predictor = self.ready()
        parsed = []
        for index, fields in enumerate(inputs):
            record = fields.model_dump(exclude_unset=True) | ({} if task is None else {"task": task})
            try:
                parsed.append(predictor.parse(record, f"inputs[{index}]"))
            except PtuningError as error:
                unknown = record.get("task") not in predictor.tasks
                raise ApiError(
                    404 if unknown else 422, "unknown_task" if unknown else "validation", str(error)
                ) from error
        return parsed

    async def answer(self, inputs: list[TaskInput]) -> list[dict[str, Any]]:
        """The inputs' answers from the batcher, in order, each counted by its task and the status."""
        try:
            outputs = await self.batcher.answer(inputs)
        except ApiError as error:
            for item in inputs:
                self.metrics.inputs.labels(item.task, str(error.status)).inc()
            raise
        for item in inputs:
            self.metrics.inputs.labels(item.task, "200").inc()
        return outputs

    def backbone(self) -> dict[str, str]:
        """The shared backbone: its reference, where it runs and the type its weights are held in."""
        model = self.ready().model
        weight = next(model.backbone.parameters())
        dtype = str(weight.dtype).removeprefix("torch.")
        return {"name": str(model.backbone_reference), "device": str(weight.device), "dtype": dtype}

    def listing(self) -> dict[str, Any]:
        """What GET /v1/tasks answers (and load/unload after their change): the backbone, every loaded task, and the
        registry's counts."""
        return {"backbone": self.backbone(), "tasks": self.describe(), "registry": self.registry.summary()}

    def describe(self) -> list[dict[str, Any]]:
        model = self.ready().model
        described = []
        for name, entry in list(model.tasks.items()):  # a copy: the inference thread may load meanwhile
            prompt = model.prompt_configs.get(entry.prompt)
            if prompt is None:  # unloaded meanwhile
                continue
            described.append(
                {
                    "name": name,
                    "kind": entry.family_name,
                    "labels": entry.labels,
                    "backbone": model.backbone_reference,
                    "method": prompt.method,
                    "prompt_length": prompt.length if prompt.has_prompt else 0,
                    "stored_bytes": stored_bytes(model, [name]),
                    "pinned": name not in self.registry.task_unit,
                }
            )
        return described
