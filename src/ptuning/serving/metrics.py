"""The server's Prometheus metrics (``GET /metrics``): inputs by task, requests by endpoint, batches, the queue,
generated tokens and time to first token, the task registry (registered, loaded, loads, evictions, failures)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.generated_tokens = Counter(
            "ptuning_generated_tokens", "Tokens generated, by task", ["task"], registry=self.registry
        )
        self.time_to_first_token = Histogram(
            "ptuning_time_to_first_token_seconds",
            "From a generation prompt's arrival to its first generated token",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.generation_batch_rows = Histogram(
            "ptuning_generation_batch_rows", "Rows decoded per generation step", buckets=buckets, registry=self.registry
        )
        self.generation_batch_seconds = Histogram(
            "ptuning_generation_batch_seconds",
            "Time of a generation call: one step of the running batch (with the prefill of rows joining it), or a "
            "batch decoded apart to its end",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.registered_tasks = Gauge(
            "ptuning_registered_tasks", "Checkpoints registered (loaded on first use)", registry=self.registry
        )
        self.loaded_tasks = Gauge(
            "ptuning_loaded_registered_tasks", "Registered checkpoints loaded now", registry=self.registry
        )
        self.loaded_task_bytes = Gauge(
            "ptuning_loaded_registered_task_bytes",
            "Bytes of the loaded registered tasks' prompts and heads",
            registry=self.registry,
        )
        self.loads = Counter("ptuning_task_loads", "Registered checkpoints loaded on use", registry=self.registry)
        self.evictions = Counter(
            "ptuning_task_evictions", "Registered checkpoints dropped, least recently used", registry=self.registry
        )
        self.load_failures = Counter(
            "ptuning_task_load_failures", "Registered checkpoints that failed to load", registry=self.registry
        )
        self.load_seconds = Histogram(
            "ptuning_task_load_seconds",
            "A registered checkpoint's load, waiting for the inference thread included",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )

    def forget(self, tasks: Iterable[str]) -> None:
        """Drop the series of tasks no longer loaded: a registry serving 100,000 tasks in turn would otherwise keep a
        series per task (and status) forever."""
        for task in tasks:
            self.inputs.remove_by_labels({"task": task})
            self.generated_tokens.remove_by_labels({"task": task})
