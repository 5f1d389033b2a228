"""The transformers Trainer as a run uses it: batches of one task each, drawn from a seeded sampler; validation each
epoch keeping the best trainable state; resumable checkpoints of what trains only, resumed exactly."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..model import PromptedModel
from ..recipe import Recipe, task_weights
from .data import TaskRun
from .distributed import is_main_process
from .run_folder import (
    BEST_PROGRESS,
    BEST_STATE,
    LOSS_WINDOW,
    RESUME_DIR,
    SAVED_MARK,
    TRAINABLE_STATE,
    save_tensors,
)

logger = logging.getLogger("ptuning")


class EvaluateEachEpoch(TrainerCallback):
    """Score validation at each epoch end (and at the last step), keeping the best trainable state.

    With several tasks every task is scored and the best epoch is the one with the best mean of the tasks' primary
    metrics."""

    def __init__(
        self,
        model: PromptedModel,
        runs: list[TaskRun],
        batch_size: int,
        on_validation: Callable[[int, float], None] | None = None,
    ):
        self.model, self.runs, self.batch_size = model, [run for run in runs if run.validation], batch_size
        self.on_validation = on_validation  # (step, score) after each evaluation: a sweep's pruner listens
        self.best_metrics: dict[str, dict[str, float]] = {}
        self.best_score: float | None = None
        self.best_state = model.trainable_state()
        self.evaluated_step = -1
        self.curve: list[tuple[float, float]] = []  # (epoch, mean primary validation score): still rising?

    def _evaluate(self, state) -> None:
        if not self.runs or self.evaluated_step == state.global_step:
            return
        self.evaluated_step = state.global_step
        metrics = {
            run.name: run.task.evaluate(self.model.use(run.name), run.validation, self.batch_size) for run in self.runs
        }
        self.model.active = None
        state.log_history.append({"step": state.global_step, "epoch": state.epoch, "validation": metrics})
        score = statistics.mean(metrics[run.name][run.task.primary_metric] for run in self.runs)
        self.curve.append((round(state.epoch, 2), score))
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_metrics, self.best_score = metrics, score
            self.best_state = self.model.trainable_state()
        scores = ", ".join(
            f"{run.name + ' ' if len(self.runs) > 1 else ''}{run.task.primary_metric}="
            f"{metrics[run.name][run.task.primary_metric]:.2f}"
            for run in self.runs
        )
        logger.info("step %d validation %s%s", state.global_step, scores, " (best)" if improved else "")
        if self.on_validation is not None:
            self.on_validation(state.global_step, score)

    def save_state(self, folder: Path) -> None:
        """The best-so-far state and scores, beside a resumable checkpoint."""
        save_tensors(self.best_state, folder / BEST_STATE)
        progress = {
            "best_metrics": self.best_metrics,
            "best_score": self.best_score,
            "evaluated_step": self.evaluated_step,
            "curve": self.curve,
        }
        (folder / BEST_PROGRESS).write_text(json.dumps(progress, default=float) + "\n")

    def load_state(self, folder: Path) -> None:
        """The best-so-far state and scores saved beside the resumable checkpoint in ``folder``."""
        device = next(self.model.parameters()).device
        self.best_state = {name: tensor.to(device) for name, tensor in load_file(str(folder / BEST_STATE)).items()}
        progress = json.loads((folder / BEST_PROGRESS).read_text())
        self.best_metrics, self.best_score = progress["best_metrics"], progress["best_score"]
        self.evaluated_step, self.curve = progress["evaluated_step"], [tuple(point) for point in progress["curve"]]

    def on_step_end(self, args, state, control, **kwargs):
        # an epoch's last step: score before the Trainer saves this step's resumable state, so the state holds it
        if state.epoch == round(state.epoch):
            self._evaluate(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._evaluate(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._evaluate(state)


class TaskBatches(Sampler[list[int]]):
    """Batches of one task each, over the tasks' features concatenated: each step draws a task by its weight and
    takes that task's next batch (its features length-grouped and reshuffled each time they run out), so a step
    trains one head, with the shared prompt, as the paper's multi-task training does. A single task is the case of
    one weight. Every draw comes from a generator seeded by the seed and the epoch, never from the global RNG, so an
    epoch yields the same batches whether it runs whole or is resumed from a state saved in its middle."""

    def __init__(self, lengths: list[list[int]], batch_size: int, weights: list[float], seed: int):
        self.lengths, self.batch_size, self.weights, self.seed = lengths, batch_size, weights, seed
        self.offsets = [sum(len(task) for task in lengths[:index]) for index in range(len(lengths))]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The Trainer names each epoch (a resumed run too), so every epoch draws the same batches again."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(math.ceil(len(task) / self.batch_size) for task in self.lengths)

    def _batches(self, task: int, generator: torch.Generator) -> Iterator[list[int]]:
        while True:
            order = list(LengthGroupedSampler(self.batch_size, lengths=self.lengths[task], generator=generator))
            for start in range(0, len(order), self.batch_size):
                yield [self.offsets[task] + index for index in order[start : start + self.batch_size]]

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        streams = [self._batches(task, generator) for task in range(len(self.lengths))]
        weights = torch.tensor(self.weights)
        for _ in range(len(self)):
            yield next(streams[int(torch.multinomial(weights, 1, generator=generator))])


class TaskCollator:
    """Collates a one-task batch with that task's collator and adds its ``task_ids``."""

    def __init__(self, collators: list[Any]):
        self.collators = collators

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        task = features[0]["task_ids"]
        batch = self.collators[task]([{k: v for k, v in feature.items() if k != "task_ids"} for feature in features])
        batch["task_ids"] = torch.full((len(features),), task, dtype=torch.long)
        return batch


class PromptTrainer(Trainer):
    """The Trainer, whose batches come from :class:`TaskBatches` (one task each, the same batches for an epoch
    whenever it runs, so a run resumed mid-epoch continues with the batches it would have drawn), and whose
    resumable checkpoints hold what trains (prompts and heads: megabytes, not the frozen backbone), the best-so-far
    validation state and the training-loss window not yet logged."""

    def __init__(self, *args: Any, task_batches: TaskBatches, head_lr: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.task_batches = task_batches
        self.head_lr = head_lr
        self.resumed_loss_window: dict[str, float] | None = None
        self.add_callback(ResumeExactly(self))

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the task heads' parameters in groups of their own at ``head_lr``."""
        if self.optimizer is not None or self.head_lr is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decayed = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}  # (a head's, decayed) -> parameters
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((name.startswith("heads."), name in decayed), []).append(parameter)
        optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_class(
            [
                {
                    "params": parameters,
                    "weight_decay": self.args.weight_decay if decay else 0.0,
                    **({"lr": self.head_lr} if head else {}),
                }
                for (head, decay), parameters in groups.items()
            ],
            **optimizer_kwargs,
        )
        return self.optimizer

    def get_train_dataloader(self) -> DataLoader:
        loader = DataLoader(self.train_dataset, batch_sampler=self.task_batches, collate_fn=self.data_collator)
        return self.accelerator.prepare(loader)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        save_tensors(model.trainable_state(), folder / TRAINABLE_STATE)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, EvaluateEachEpoch):
                callback.save_state(folder)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Mark the checkpoint complete once every process has written its part, then drop the older ones: a kill
        at any instant leaves at least one complete checkpoint (the Trainer's own files are written in place)."""
        super()._save_checkpoint(model, trial)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        # each process's loss summed since the last log: a resumed run logs the same windows as an unbroken one
        window = {"loss_sum": float(self._tr_loss), "last_logged_step": self._globalstep_last_logged}
        (folder / LOSS_WINDOW.format(self.args.process_index)).write_text(json.dumps(window) + "\n")
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        staged = folder / f".{SAVED_MARK}"
        staged.write_text(json.dumps({"step": self.state.global_step, "processes": self.args.world_size}) + "\n")
        os.replace(staged, folder / SAVED_MARK)
        for older in folder.parent.glob("checkpoint-*"):
            if older != folder:
                shutil.rmtree(older)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        folder = Path(resume_from_checkpoint)
        model = self.accelerator.unwrap_model(model or self.model)
        model.restore_trainable_state(load_file(str(folder / TRAINABLE_STATE)))
        window = folder / LOSS_WINDOW.format(self.args.process_index)
        self.resumed_loss_window = json.loads(window.read_text()) if window.is_file() else None


class ResumeExactly(TrainerCallback):
    """What the Trainer leaves out of an exact resume: the unlogged loss of the checkpoint, put back once the Trainer
    has reset its logging state (after loading the checkpoint, just before ``on_train_begin``); and the epoch of the
    batch sampler, which the Trainer does not reach when it skips a resumed epoch's first batches under data
    parallelism (the sampler then sits below two wrappers)."""

    def __init__(self, trainer: PromptTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        window = self.trainer.resumed_loss_window
        if window is not None:
            self.trainer._tr_loss = torch.tensor(window["loss_sum"], device=args.device)
            self.trainer._globalstep_last_logged = window["last_logged_step"]

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the epoch index plus the share done: whole at a boundary, fractional in a resumed epoch
        self.trainer.task_batches.set_epoch(math.floor(state.epoch or 0))


def training_arguments(recipe: Recipe, output: Path, device: torch.device, multi_task: bool) -> TrainingArguments:
    """The Trainer's arguments for ``recipe``, training into ``output`` (its resumable state in the recipe's own
    output folder); ``multi_task``: a step leaves the other tasks' heads without gradients."""
    resumable = recipe.save_steps is not None
    return TrainingArguments(
        # resumable state lives in the final folder (a staged run's folder is gone when its process is killed)
        output_dir=str(Path(recipe.output) / RESUME_DIR if resumable else output / "trainer"),
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate(),
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup(),  # transformers 5: a float below 1 is a share of the steps
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        lr_scheduler_type="linear",
        logging_steps=0.05,  # a share of the steps: short runs log a training loss too
        save_strategy="steps" if resumable else "no",
        save_steps=recipe.save_steps or 500,
        save_total_limit=None,  # PromptTrainer drops older checkpoints once the new one is complete
        eval_strategy="no",
        report_to=[],
        seed=recipe.seed,
        use_cpu=device.type == "cpu",
        bf16=recipe.precision == "bf16",
        fp16=recipe.precision == "fp16",
        remove_unused_columns=False,
        disable_tqdm=not is_main_process(),
        # a step of one task leaves the other tasks' heads without gradients on that process
        ddp_find_unused_parameters=multi_task,
    )


def task_batches(recipe: Recipe, encoded: list[list[dict[str, Any]]]) -> TaskBatches:
    """The batches of a run whose tasks' training features are ``encoded`` (a list a task, in the run's order): one
    task a batch, the task drawn by the recipe's ``task_sampling``."""
    lengths = [[len(feature["input_ids"]) for feature in task] for task in encoded]
    weights = task_weights(recipe.task_sampling, [len(task) for task in encoded])
    return TaskBatches(lengths, recipe.batch_size, weights, recipe.seed)


def make_trainer(
    model: PromptedModel,
    recipe: Recipe,
    runs: list[TaskRun],
    output: Path,
    callback: EvaluateEachEpoch,
    device: torch.device,
) -> PromptTrainer:
    """The Trainer of a run's tasks (each prepared: :func:`~ptuning.training.data.prepare_task`), every batch from
    one task (drawn by ``task_sampling`` when there are several), validated by ``callback``."""
    encoded = [run.task.encode(run.train).inputs for run in runs]
    features = [{**feature, "task_ids": index} for index, task in enumerate(encoded) for feature in task]
    batches = task_batches(recipe, encoded)
    if len(runs) > 1:
        logger.info(
            "task sampling %s: %s",
            recipe.task_sampling,
            ", ".join(f"{run.name} {weight:.2f}" for run, weight in zip(runs, batches.weights, strict=True)),
        )
    return PromptTrainer(
        model=model,
        args=training_arguments(recipe, output, device, multi_task=len(runs) > 1),
        train_dataset=features,
        data_collator=TaskCollator([run.task.collator() for run in runs]),
        callbacks=[callback],
        task_batches=batches,
        head_lr=recipe.head_lr,
    )
