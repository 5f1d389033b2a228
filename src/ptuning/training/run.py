"""A whole run: a recipe in; a checkpoint, train.log, log.json and metrics.json out."""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerState, set_seed

from ..devices import check_precision, dtype_of, resolve_device
from ..model import PromptedModel
from ..recipe import Recipe
from .build import build_model
from .data import TaskRun, prepare_task, read_task_run
from .distributed import is_main_process, replica_checksums, world_size
from .run_folder import latest_resume_state, staged_run
from .run_metrics import run_metrics, task_result
from .trainer import EvaluateEachEpoch, make_trainer

logger = logging.getLogger("ptuning")


def train(recipe: Recipe, on_validation: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train a prompt for the recipe; write checkpoint, train.log, log.json and metrics.json to ``output`` and
    return the metrics (:mod:`~ptuning.training.run_metrics`; empty on a data-parallel process other than the first).

    The run is written to a sibling folder first and moved into place when it has succeeded, so a failed run
    leaves an existing ``output`` untouched and ``overwrite`` never leaves stale files of the old run behind.
    ``on_validation(step, score)`` hears each validation's mean primary score (a sweep's pruner).
    """
    output = Path(recipe.output)
    if not is_main_process():  # another data-parallel process: trains its share of each batch, writes nothing
        logger.setLevel(logging.WARNING)
        with tempfile.TemporaryDirectory() as scratch:
            return _train(recipe, Path(scratch), output, on_validation)
    with staged_run(recipe) as staging:
        return _train(recipe, staging, output, on_validation)


def _train(recipe: Recipe, output: Path, final_output: Path, on_validation=None) -> dict[str, Any]:
    """Train into ``output``; paths recorded in metrics.json name ``final_output``, where the run ends up."""
    device = resolve_device(recipe.device)
    check_precision(recipe.precision, device)
    runs = [read_task_run(name, part) for name, part in recipe.parts()]
    set_seed(recipe.seed)
    model = build_model(recipe, runs)
    if recipe.init_from is not None:  # the saved prompt's shape is what trains: metrics.json records it
        recipe = dataclasses.replace(recipe, prompt=next(iter(model.prompt_configs.values())))
    if recipe.precision != "fp32" and recipe.prompt.method != "finetune":
        model.cast_backbone(dtype_of(recipe.precision))
    model.to(device)  # evaluation between epochs and after training runs where the Trainer trains
    logger.info("device %s, precision %s", device, recipe.precision)
    for run in runs:
        prepare_task(run, model, recipe)
        logger.info(
            "%s (%s on %s): %d train / %d validation / %d test examples, %d labels",
            run.name,
            run.family,
            run.recipe.dataset or run.recipe.train,
            len(run.train),
            len(run.validation),
            len(run.test),
            len(run.labels),
        )
    logger.info(
        "trainable %d of %d parameters (%.3f%%)",
        model.trainable_parameters(),
        model.total_parameters(),
        100 * model.trainable_parameters() / model.total_parameters(),
    )
    # validation runs on the writing process alone (the others would score the same examples again)
    callback = EvaluateEachEpoch(model, runs if is_main_process() else [], recipe.eval_batch_size, on_validation)
    started = time.perf_counter()
    if model.trainable_parameters() == 0:  # prompting: no optimizer, no steps; validation scores what is given
        logger.info("method %s trains nothing: scoring validation and test", recipe.prompt.method)
        state = TrainerState(epoch=0.0)
        callback.on_train_end(None, state, None)
        history, steps, run_device = state.log_history, 0, str(device)
    else:
        trainer = make_trainer(model, recipe, runs, output, callback, device)
        resume_from = latest_resume_state(Path(recipe.output)) if recipe.resume else None
        if resume_from is not None:
            callback.load_state(resume_from)
            logger.info("resuming from %s", resume_from)
        trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
        history, steps, run_device = trainer.state.log_history, trainer.state.global_step, str(trainer.args.device)
    train_seconds = time.perf_counter() - started
    replicas = replica_checksums(model)
    if not is_main_process():
        return {}
    if len(set(replicas)) > 1:
        logger.warning("the data-parallel processes ended with different weights: checksums %s", replicas)
    shutil.rmtree(output / "trainer", ignore_errors=True)  # save_strategy="no": nothing of ours is in there
    if callback.best_score is not None:  # the best validated epoch; without validation data, the last weights
        model.restore_trainable_state(callback.best_state)
    validations = _calibrate(model, runs, callback, recipe.eval_batch_size)
    model.save_pretrained(output / "checkpoint")
    tasks = {
        run.name: task_result(
            task=run.family,
            dataset=run.recipe.dataset or run.recipe.train,
            primary_metric=run.task.primary_metric,
            validation=validations[run.name],
            test=run.task.evaluate(model.use(run.name), run.test, recipe.eval_batch_size) if run.test else {},
            train_examples=len(run.train),
        )
        for run in runs
    }
    model.active = None
    shared = _shared_metrics(model, recipe, run_device, history, steps, replicas, train_seconds, output, final_output)
    metrics = run_metrics(tasks, callback.curve, shared)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output / "log.json").write_text(json.dumps(history, indent=2) + "\n")
    return metrics


def _calibrate(
    model: PromptedModel, runs: list[TaskRun], callback: EvaluateEachEpoch, batch_size: int
) -> dict[str, dict[str, float]]:
    """Let each task calibrate its decoding on validation (scored again when it did), and hand each task's data
    description to the checkpoint; returns each task's validation scores."""
    validations = {}
    for run in runs:
        model.use(run.name)
        validation = callback.best_metrics.get(run.name, {})
        calibrated = run.task.calibrate(model, run.validation, batch_size)
        if calibrated:
            run.options.update(calibrated)
            validation = run.task.evaluate(model, run.validation, batch_size)
            logger.info("%s calibrated on validation: %s", run.name, calibrated)
        model.tasks[run.name] = run.describe(model.tasks[run.name])
        validations[run.name] = validation
    model.active = None
    return validations


def _shared_metrics(
    model: PromptedModel,
    recipe: Recipe,
    device: str,
    history: list[dict[str, Any]],
    steps: int,
    replicas: list[float],
    train_seconds: float,
    output: Path,
    final_output: Path,
) -> dict[str, Any]:
    """What a run's tasks share in metrics.json: sizes, device, times, steps and where the checkpoint ends up."""
    checkpoint = output / "checkpoint"
    return {
        "trainable_parameters": model.trainable_parameters(),
        "total_parameters": model.total_parameters(),
        "trainable_share": model.trainable_parameters() / model.total_parameters(),
        "stored_parameters": model.stored_parameters(),
        "stored_share": model.stored_share(),
        "device": device,
        "world_size": world_size(),
        "global_batch_size": recipe.batch_size * world_size(),
        "replica_checksums": replicas,
        "precision": recipe.precision,
        "train_seconds": round(train_seconds, 1),
        # the last logged window, not the run's mean: tells underfitting (high) from overfitting (low)
        "train_loss": next((entry["loss"] for entry in reversed(history) if "loss" in entry), None),
        "steps": steps,
        "checkpoint": str(final_output / "checkpoint"),
        "checkpoint_bytes": sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # of this process, so far
        "recipe": recipe.to_dict(),
    }
