"""Training and evaluation wiring: a recipe in, a checkpoint and metrics.json out.

The transformers Trainer runs the optimization (progress bars, schedule, length-grouped batches);
our callback evaluates on validation each epoch with the task's own word-level scorer and keeps the
best trainable state, so checkpoints hold only the prompt and the head.
"""

from __future__ import annotations

import json
import logging
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .data.readers import label_set
from .data.sources import load_splits
from .errors import DataError, PtuningError
from .model import DEFAULT_TASK, PromptedModel
from .recipe import Recipe
from .tasks import make_task, model_task, task_class
from .tasks.base import Task

logger = logging.getLogger("ptuning")
EVAL_SUBSAMPLE_SEED = 0


def _subsample(examples: list[Any], limit: int | None, seed: int) -> list[Any]:
    if limit is None or len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


class EvaluateEachEpoch(TrainerCallback):
    """Score validation at each epoch end (and at the last step), keeping the best trainable state."""

    def __init__(self, model: PromptedModel, task: Task, examples: list[Any], batch_size: int):
        self.model, self.task, self.examples, self.batch_size = model, task, examples, batch_size
        self.best_metrics: dict[str, float] | None = None
        self.best_state = model.trainable_state()
        self.evaluated_step = -1
        self.curve: list[tuple[float, float]] = []  # (epoch, primary validation score): is it still rising?

    def _evaluate(self, state) -> None:
        if not self.examples or self.evaluated_step == state.global_step:
            return
        self.evaluated_step = state.global_step
        metrics = self.task.evaluate(self.model, self.examples, self.batch_size)
        state.log_history.append({"step": state.global_step, "epoch": state.epoch, "validation": metrics})
        key = self.task.primary_metric
        self.curve.append((round(state.epoch, 2), metrics[key]))
        improved = self.best_metrics is None or metrics[key] > self.best_metrics[key]
        if improved:
            self.best_metrics = metrics
            self.best_state = self.model.trainable_state()
        logger.info("step %d validation %s=%.2f%s", state.global_step, key, metrics[key], " (best)" if improved else "")

    def on_epoch_end(self, args, state, control, **kwargs):
        self._evaluate(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._evaluate(state)


def _file_logging(output: Path) -> logging.Handler:
    handler = logging.FileHandler(output / "train.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def prepare_output(output: Path, overwrite: bool) -> None:
    """Refuse to train into a folder that holds files, unless ``overwrite`` (the old run is replaced on success)."""
    if output.exists() and not output.is_dir():
        raise PtuningError(f"--output {output} is a file, not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise PtuningError(
            f"--output {output} is not empty (a previous run?); give --overwrite to replace it, or another --output"
        )


def train(recipe: Recipe) -> dict[str, Any]:
    """Train a prompt for the recipe; write checkpoint, train.log, log.json and metrics.json to ``output``.

    The run is written to a sibling folder first and moved into place when it has succeeded, so a failed run
    leaves an existing ``output`` untouched and ``overwrite`` never leaves stale files of the old run behind.
    """
    output = Path(recipe.output)
    prepare_output(output, recipe.overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    handler = _file_logging(staging)
    try:
        metrics = _train(recipe, staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
    replaced = None
    if output.exists():
        replaced = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
        output.rename(replaced / output.name)
    staging.rename(output)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    return metrics


def run_task_name(recipe: Recipe) -> str:
    """The name a run's task gets in its checkpoint: the dataset's, else "default" (files are often train.*)."""
    return recipe.dataset.replace(".", "-") if recipe.dataset else DEFAULT_TASK


def _labels(recipe: Recipe, gold, examples: list[Any]) -> list[str]:
    """The declared label set (``--labels``), else every label of the whole training set."""
    declared = recipe.declared_labels()
    if declared is not None:
        return declared
    # from the whole training set: a subsample may miss rare labels that validation or test still hold
    return label_set(label for example in examples for label in gold(example))


def _train(recipe: Recipe, output: Path, final_output: Path) -> dict[str, Any]:
    """Train into ``output``; paths recorded in metrics.json name ``final_output``, where the run ends up."""
    splits = load_splits(recipe)
    task_name = splits.task
    train_examples = _subsample(splits.train, recipe.max_train_samples, recipe.seed)
    # evaluation subsamples do not move with the seed: every run of a comparison scores the same examples
    validation = _subsample(splits.validation, recipe.max_eval_samples, EVAL_SUBSAMPLE_SEED)
    test = _subsample(splits.test, recipe.max_eval_samples, EVAL_SUBSAMPLE_SEED)
    labels = _labels(recipe, task_class(task_name).gold, splits.train)

    set_seed(recipe.seed)
    model = PromptedModel.from_backbone(
        recipe.model,
        model_task(task_name),
        labels=labels,
        prompt=recipe.prompt,
        pooling=recipe.pooling,
        name=run_task_name(recipe),
    )
    # QA windows: 256 tokens (with a stride) unless asked otherwise; CPU cost grows with window length
    default_length = 256 if task_name == "question-answering" else model.max_text_length
    max_length = min(recipe.max_length or default_length, model.max_text_length)
    task_options = dict(splits.reader.get("options", {}))
    task = make_task(task_name, model.tokenizer, labels, max_length, **task_options)
    for examples in (train_examples, validation, test):
        try:
            task.check_labels(examples)
        except DataError as error:
            if recipe.labels is not None:
                raise
            raise DataError(f"{error}; declare the whole label set with --labels FILE|a,b,c") from error
    features = task.encode(train_examples).inputs
    logger.info(
        "%s on %s: %d train / %d validation / %d test examples, %d labels; trainable %d of %d parameters (%.3f%%)",
        task_name,
        recipe.dataset or recipe.train,
        len(train_examples),
        len(validation),
        len(test),
        len(labels),
        model.trainable_parameters(),
        model.total_parameters(),
        100 * model.trainable_parameters() / model.total_parameters(),
    )

    arguments = TrainingArguments(
        output_dir=str(output / "trainer"),
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate(),
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup(),  # transformers 5: a float below 1 is a share of the steps
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        lr_scheduler_type="linear",
        logging_steps=0.05,  # a share of the steps: short runs log a training loss too
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=recipe.seed,
        train_sampling_strategy="group_by_length",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    callback = EvaluateEachEpoch(model, task, validation, recipe.eval_batch_size)
    trainer = Trainer(
        model=model, args=arguments, train_dataset=features, data_collator=task.collator(), callbacks=[callback]
    )
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    shutil.rmtree(output / "trainer", ignore_errors=True)  # save_strategy="no": nothing of ours is in there
    model.restore_trainable_state(callback.best_state)
    calibrated = task.calibrate(model, validation, recipe.eval_batch_size)
    validation_metrics = callback.best_metrics or {}
    if calibrated:
        task_options.update(calibrated)
        validation_metrics = task.evaluate(model, validation, recipe.eval_batch_size)
        logger.info("calibrated on validation: %s", calibrated)

    checkpoint = output / "checkpoint"
    extra = {
        "reader": splits.reader,
        "dataset": recipe.dataset,
        "max_length": max_length,
        "task_name": task_name,
        "task_options": task_options,
    }
    model.save_pretrained(checkpoint, extra=extra)
    test_metrics = task.evaluate(model, test, recipe.eval_batch_size) if test else {}
    metrics = {
        "task": task_name,
        "dataset": recipe.dataset or recipe.train,
        "primary_metric": task.primary_metric,
        "validation": validation_metrics,
        "validation_curve": callback.curve,
        "test": test_metrics,
        "trainable_parameters": model.trainable_parameters(),
        "total_parameters": model.total_parameters(),
        "trainable_share": model.trainable_parameters() / model.total_parameters(),
        "stored_parameters": model.stored_parameters(),
        "stored_share": model.stored_share(),
        "train_seconds": round(train_seconds, 1),
        # the last logged window, not the run's mean: tells underfitting (high) from overfitting (low)
        "train_loss": next((entry["loss"] for entry in reversed(trainer.state.log_history) if "loss" in entry), None),
        "train_examples": len(train_examples),
        "steps": trainer.state.global_step,
        "checkpoint": str(final_output / "checkpoint"),
        "checkpoint_bytes": sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # of this process, so far
        "recipe": recipe.to_dict(),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output / "log.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
    return metrics
