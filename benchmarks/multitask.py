"""The study's multi-task part: does one deep prompt trained on several tasks help them, as the paper reports?

Three settings per task, at the parity scale (each task's training set subsampled, the same fixed validation and
test draws), each chosen on validation only:

* ``single``: deep prompt tuning of the task alone (the parity recipe: lr and prompt length searched on the first
  seed's validation score, then the other seeds);
* ``multi``: one prompt trained on all the tasks at once, a head per task, every batch from one task drawn in
  proportion to the tasks' sizes; lr and prompt length searched on the mean of the tasks' validation scores; each
  task scored with its own head of the joint run;
* ``multi-then-single``: each task trained alone again, starting from the joint run's prompt and its head for the
  task (``--init-from``), with the task's single-setting learning rate (the paper's second stage).

Run by ``benchmarks/study.py --parts multitask`` (the study imports this module; both take the protocol from
benchmarks/protocol.py); writes multitask.json rows ``{task, setting, metric, mean, std, seeds, scores, validation,
train_seconds}`` (the joint run's time for ``multi``, the second stage's own time for ``multi-then-single``).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from protocol import Point, Runner, Scale, search_space, seed_summary, settings_for

from ptuning.training.run_metrics import task_result_of

TASKS = ("conll2003-ner", "conll2003-pos", "conll2003-chunk", "conll2003-qa")
DEFAULT_TASKS = TASKS[:3]
SETTINGS = ("single", "multi", "multi-then-single", "single-as-many-steps")


def _name(kind: str, task: str, point: Point, seed: int) -> str:
    return f"multitask-{kind}-{task}-lr{point.lr:g}-P{point.prompt_length}-s{seed}"


def _primary(metrics: dict[str, Any], task: str) -> tuple[str, dict[str, Any]]:
    """The task's primary metric and its results, in a single-task or a multi-task run's metrics."""
    result = task_result_of(metrics, task)
    return result["primary_metric"], result


def _validation(metrics: dict[str, Any], task: str) -> float:
    primary, result = _primary(metrics, task)
    return result["validation"].get(primary, -1.0)


def _row(task: str, setting: str, seed_runs: list[dict[str, Any]], point: Point, seeds: tuple[int, ...]) -> dict:
    primary, _ = _primary(seed_runs[0], task)
    return {
        "task": task,
        "setting": setting,
        "metric": primary,
        **seed_summary([_primary(metrics, task)[1]["test"][primary] for metrics in seed_runs]),
        "seeds": list(seeds),
        "validation": statistics.fmean(_validation(metrics, task) for metrics in seed_runs),
        "lr": point.lr,
        "prompt_length": point.prompt_length,
        "train_seconds": statistics.fmean(metrics["train_seconds"] for metrics in seed_runs),
    }


def _searched(runner: Runner, scale: Scale, points: list[Point], name, settings, score) -> tuple[Point, list]:
    """Run every point on the first seed, pick the best ``score`` (of validation), run it on the other seeds."""
    first = scale.seeds[0]
    grid = runner.many([(name(point, first), settings(point, first)) for point in points])
    point, best = max(zip(points, grid, strict=True), key=lambda pair: score(pair[1]))
    rest = runner.many([(name(point, seed), settings(point, seed)) for seed in scale.seeds[1:]])
    return point, [best, *rest]


def multitask(scale: Scale, runner: Runner, tasks: tuple[str, ...], checkpoints: Path) -> dict[str, Any]:
    """Rows of the three settings for every task, and what was searched."""
    points = search_space(scale, "deep")
    rows: list[dict[str, Any]] = []
    chosen: dict[str, Point] = {}
    for task in tasks:
        print(f"multitask: {task} alone", flush=True)
        point, runs = _searched(
            runner,
            scale,
            points,
            lambda p, seed, task=task: _name("single", task, p, seed),
            lambda p, seed, task=task: settings_for(scale, task, "deep", p, seed),
            lambda metrics, task=task: _validation(metrics, task),
        )
        chosen[task] = point
        rows.append(_row(task, "single", runs, point, scale.seeds))

    joint = ",".join(tasks)
    print(f"multitask: {joint} jointly", flush=True)

    def joint_settings(point: Point, seed: int) -> dict[str, Any]:
        output = checkpoints / _name("multi", "joint", point, seed)
        return {**settings_for(scale, joint, "deep", point, seed), "output": str(output)}

    multi_point, multi_runs = _searched(
        runner,
        scale,
        points,
        lambda p, seed: _name("multi", "joint", p, seed),
        joint_settings,
        lambda metrics: statistics.fmean(_validation(metrics, task) for task in tasks),
    )
    rows += [_row(task, "multi", multi_runs, multi_point, scale.seeds) for task in tasks]

    print("multitask: each task from the joint prompt", flush=True)
    second = [
        (
            task,
            seed,
            {
                **settings_for(scale, task, "deep", chosen[task], seed),
                "init_from": joint_settings(multi_point, seed)["output"],
            },
        )
        for task in tasks
        for seed in scale.seeds
    ]
    results = runner.many(
        [(_name("multi-then-single", task, chosen[task], seed), settings) for task, seed, settings in second]
    )
    for task in tasks:
        runs = [metrics for (t, _, _), metrics in zip(second, results, strict=True) if t == task]
        # the second stage keeps the joint prompt's length; its lr is the task's single-setting one
        point = Point(chosen[task].lr, multi_point.prompt_length)
        rows.append(_row(task, "multi-then-single", runs, point, scale.seeds))

    # the control: is multi-then-single's gain the other tasks' data, or only more updates? Each task alone again,
    # from a fresh prompt of the joint prompt's length at its single lr, for as many steps as its prompt had in the
    # joint run and its second stage together (the best epoch on validation kept, as everywhere)
    print("multitask: each task alone for as many steps (the control)", flush=True)
    control = []
    for (task, seed, _), metrics in zip(second, results, strict=True):
        steps = multi_runs[scale.seeds.index(seed)]["steps"] + metrics["steps"]
        point = Point(chosen[task].lr, multi_point.prompt_length)
        control.append((task, seed, point, {**settings_for(scale, task, "deep", point, seed), "max_steps": steps}))
    controlled = runner.many(
        [
            (_name(f"single-{settings['max_steps']}-steps", task, point, seed), settings)
            for task, seed, point, settings in control
        ]
    )
    for task in tasks:
        runs = [metrics for (t, *_), metrics in zip(control, controlled, strict=True) if t == task]
        point = Point(chosen[task].lr, multi_point.prompt_length)
        rows.append({**_row(task, "single-as-many-steps", runs, point, scale.seeds), "steps": runs[0]["steps"]})
    return {
        "tasks": list(tasks),
        "searched": [point._asdict() for point in points],
        "joint": multi_point._asdict(),
        "sampling": "proportional",
        "rows": rows,
    }
