"""What every route shares: the predictor once loaded, the batchers, the metrics; readiness, the request's inputs
parsed by their tasks, and the listing of the loaded tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import PtuningError
from ..predictor import Predictor
from ..predictor import Request as TaskInput
from .batching import Batcher
from .config import ServeConfig
from .errors import ApiError
from .generating import GenerationBatcher
from .metrics import Metrics
from .schemas import MixedPredictBody, PredictBody, validated


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

    def ready(self) -> Predictor:
        if self.failure is not None:
            raise ApiError(503, "load_failed", f"the model failed to load: {self.failure}")
        if self.predictor is None or self.batcher is None or self.generator is None:
            raise ApiError(503, "not_ready", "the model is still loading")
        return self.predictor

    def inputs(self, payload: Any, task: str | None) -> list[TaskInput]:
        """The request's inputs, each parsed by its task (``task``: the path's task for every input; else each names
        its own, a 404 if no such task is loaded)."""
        predictor = self.ready()
        inputs = validated(PredictBody if task is not None else MixedPredictBody, payload).inputs
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
                    "kind": entry.family_name,
                    "labels": entry.labels,
                    "backbone": model.backbone_reference,
                    "method": prompt.method,
                    "prompt_length": prompt.length if prompt.has_prompt else 0,
                    "stored_bytes": stored,
                }
            )
        return described
