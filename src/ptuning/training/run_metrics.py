"""metrics.json: written in one shape, every task of the run under ``tasks`` (a single-task run is a run with one
task); read in that shape and in the flat one that single-task runs wrote before (study journals hold both).

    {"tasks": {name: {"task", "dataset", "primary_metric", "validation", "test", "train_examples"}},
     "validation_curve": [[epoch, mean primary validation score], ...], "train_examples": <all tasks'>,
     ...what the tasks share: parameters, device, times, steps, checkpoint, recipe}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def task_result(
    *,
    task: str,
    dataset: str | None,
    primary_metric: str,
    validation: dict[str, float],
    test: dict[str, float],
    train_examples: int,
) -> dict[str, Any]:
    """One task's entry of ``tasks``: its family, data, primary metric, best-epoch validation and test scores."""
    return {
        "task": task,
        "dataset": dataset,
        "primary_metric": primary_metric,
        "validation": validation,
        "test": test,
        "train_examples": train_examples,
    }


def run_metrics(
    tasks: dict[str, dict[str, Any]], validation_curve: list[tuple[float, float]], shared: dict[str, Any]
) -> dict[str, Any]:
    """A run's metrics: its tasks' results (:func:`task_result`, by task name), the validation curve, and ``shared``
    (what the tasks share)."""
    return {
        "tasks": tasks,
        "validation_curve": validation_curve,
        "train_examples": sum(result["train_examples"] for result in tasks.values()),
        **shared,
    }


def task_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each task's results by task name, from a run's metrics in either shape: a flat single-task run (written before
    every run had ``tasks``) gives its one task under the name ``""``."""
    return metrics.get("tasks", {"": metrics})


def single_task_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The results of a single-task run's one task, from its metrics in either shape."""
    results = task_metrics(metrics)
    if len(results) != 1:
        raise ValueError(f"a run of {len(results)} tasks ({', '.join(results)}), not of one")
    return next(iter(results.values()))


def task_result_of(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """The results of task ``name`` of a run, or a single-task run's one task whatever it was named (flat metrics
    name none)."""
    results = task_metrics(metrics)
    return single_task_metrics(metrics) if len(results) == 1 else results[name]


def run_summary(metrics: dict[str, Any], method: str) -> str:
    """What a finished run says last: each task's scores, what trained and how long, where the run was saved."""
    whole = ", the whole fine-tuned backbone included" if method == "finetune" else ""
    results = task_metrics(metrics)
    lines = []
    for name, result in results.items():
        primary = result["primary_metric"]
        scores = ", ".join(
            f"{split} {primary} {result[split][primary]:.2f}" for split in ("validation", "test") if result[split]
        )
        lines.append(f"{name + ': ' if len(results) > 1 else ''}{result['task']} on {result['dataset']}: {scores}")
    trained = (
        f"trainable {metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} parameters "
        f"({100 * metrics['trainable_share']:.3f}%), trained in {metrics['train_seconds'] / 60:.1f} min, "
        f"{metrics['steps']} steps"
        if metrics["trainable_parameters"]
        else f"trained nothing (method {method}: the backbone as it is, reading the template), 0 steps"
    )
    return (
        "\n".join(lines) + "\n" + trained + "\n"
        f"checkpoint ({metrics['checkpoint_bytes'] / 1024:.0f} KB{whole}): {metrics['checkpoint']}; "
        f"metrics: {Path(metrics['checkpoint']).parent / 'metrics.json'}"
    )
