"""Training and evaluation wiring: a recipe in, a checkpoint and metrics.json out.

The transformers Trainer runs the optimization (progress bars, schedule, length-grouped batches);
our callback evaluates on validation each epoch with the task's own word-level scorer and keeps the
best trainable state, so checkpoints hold only the prompt and the head.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from .config import PromptConfig
from .data.readers import label_set
from .data.sources import load_splits
from .devices import check_precision, dtype_of, resolve_device
from .errors import DataError, PtuningError
from .model import PromptedModel
from .recipe import Recipe, task_weights
from .tasks import make_task, model_task, task_class
from .tasks.base import Task

RESUME_DIR = "resume"
RESUME_RECIPE = "recipe.json"
TRAINABLE_STATE = "trainable_state.safetensors"
BEST_STATE = "best_state.safetensors"
BEST_PROGRESS = "best_progress.json"
LOSS_WINDOW = "loss_window_{}.json"  # per process: the loss summed since the last log
SAVED_MARK = "complete.json"  # written last, atomically: a checkpoint without it was torn by a kill


def is_main_process() -> bool:
    """Rank 0 of a data-parallel launch (torchrun, accelerate launch), or the only process: the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def replica_checksums(model: PromptedModel) -> list[float]:
    """A checksum of the trainable weights from every data-parallel process (one entry alone): they must agree."""
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [checksum]
    gathered: list[float] = [0.0] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, checksum)
    return gathered


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({name: tensor.contiguous().cpu() for name, tensor in tensors.items()}, str(path))


logger = logging.getLogger("ptuning")
EVAL_SUBSAMPLE_SEED = 0


def _subsample(examples: list[Any], limit: int | None, seed: int) -> list[Any]:
    if limit is None or len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


@dataclass
class TaskRun:
    """One task of a run: its data, labels and Task (what encodes, decodes and scores it)."""

    name: str
    recipe: Recipe
    family: str
    reader: dict[str, Any]
    train: list[Any]
    validation: list[Any]
    test: list[Any]
    labels: list[str]
    task: Task | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_length: int = 0

    def extra(self) -> dict[str, Any]:
        """What the checkpoint keeps so that eval and predict read and decode this task's data as training did."""
        return {
            "reader": self.reader,
            "dataset": self.recipe.dataset,
            "max_length": self.max_length,
            "task_name": self.family,
            "task_options": self.options,
        }


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

    def __init__(self, *args: Any, task_batches: TaskBatches, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.task_batches = task_batches
        self.resumed_loss_window: dict[str, float] | None = None
        self.add_callback(ResumeExactly(self))

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


def _file_logging(output: Path) -> logging.Handler:
    handler = logging.FileHandler(output / "train.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def prepare_output(output: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse to train into a folder that holds files, unless ``overwrite`` (the old run is replaced on success) or
    ``resume`` (an interrupted run's state is there to continue)."""
    if output.exists() and not output.is_dir():
        raise PtuningError(f"--output {output} is a file, not a folder")
    if resume:
        if latest_resume_state(output) is None:
            torn = sorted(path.name for path in (output / RESUME_DIR).glob("checkpoint-*"))
            held = f"only unfinished saves ({', '.join(torn)}: no {SAVED_MARK})" if torn else "no saved state"
            raise PtuningError(f"--resume: {output / RESUME_DIR} holds {held} to continue (train with --save-steps N)")
        return
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        held = "a previous run?"
        if (output / RESUME_DIR).is_dir():
            resumable = latest_resume_state(output) is not None
            held = (
                "an interrupted run (--resume continues it)" if resumable else "an interrupted run with no saved state"
            )
        raise PtuningError(
            f"--output {output} is not empty ({held}); give --overwrite to replace it, or another --output"
        )


def latest_resume_state(output: Path) -> Path | None:
    """The newest complete resumable checkpoint of an interrupted run (the one marked after every process wrote)."""
    finished = [path for path in (output / RESUME_DIR).glob("checkpoint-*") if (path / SAVED_MARK).is_file()]
    return max(finished, key=lambda path: int(path.name.rpartition("-")[2]), default=None)


def _check_same_recipe(recipe: Recipe, output: Path) -> None:
    """A resumed run must be the interrupted one: the same recipe, but for how the run was started."""
    path = output / RESUME_DIR / RESUME_RECIPE
    if not path.is_file():
        raise PtuningError(f"--resume: {path} is missing: that state was not written by --save-steps")
    saved = json.loads(path.read_text())
    current = json.loads(json.dumps(recipe.to_dict()))
    changed = sorted(
        key
        for key in set(saved) | set(current)
        if key not in Recipe.run_control_keys() and saved.get(key) != current.get(key)
    )
    if changed:
        differences = "; ".join(f"{key}: {saved.get(key)!r} then, {current.get(key)!r} now" for key in changed)
        raise PtuningError(f"--resume continues the run in {output} with its own recipe, which differs: {differences}")
    saved_processes = json.loads((latest_resume_state(output) / SAVED_MARK).read_text()).get("processes", 1)
    if saved_processes != world_size():
        raise PtuningError(
            f"--resume: the state in {output} was saved by {saved_processes} data-parallel process(es), this run has "
            f"{world_size()}: each process's share of the batches and its random state would differ, so the result "
            f"would not be the interrupted run's; resume with {saved_processes} process(es)"
        )


def train(recipe: Recipe, on_validation: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train a prompt for the recipe; write checkpoint, train.log, log.json and metrics.json to ``output``.

    The run is written to a sibling folder first and moved into place when it has succeeded, so a failed run
    leaves an existing ``output`` untouched and ``overwrite`` never leaves stale files of the old run behind.
    """
    output = Path(recipe.output)
    if not is_main_process():  # another data-parallel process: trains its share of each batch, writes nothing
        logger.setLevel(logging.WARNING)
        with tempfile.TemporaryDirectory() as scratch:
            return _train(recipe, Path(scratch), output, on_validation)
    prepare_output(output, recipe.overwrite, recipe.resume)
    created = not output.exists()
    if recipe.resume:
        _check_same_recipe(recipe, output)
        for stale in output.parent.glob(f".{output.name}.partial-*"):  # the staged folder of the killed process
            shutil.rmtree(stale, ignore_errors=True)
    elif (output / RESUME_DIR).exists():  # an interrupted run's state that --overwrite replaces
        shutil.rmtree(output / RESUME_DIR)
    if recipe.save_steps and not recipe.resume:
        (output / RESUME_DIR).mkdir(parents=True)
        (output / RESUME_DIR / RESUME_RECIPE).write_text(json.dumps(recipe.to_dict(), indent=2) + "\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    handler = _file_logging(staging)
    try:
        metrics = _train(recipe, staging, output, on_validation)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if recipe.save_steps and latest_resume_state(output) is None:  # nothing to resume: no dead-end folder
            shutil.rmtree(output / RESUME_DIR, ignore_errors=True)
            if created and output.is_dir() and not any(output.iterdir()):
                output.rmdir()
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


def _labels(recipe: Recipe, gold, examples: list[Any]) -> list[str]:
    """The declared label set (``--labels``), else every label of the whole training set."""
    declared = recipe.declared_labels()
    if declared is not None:
        return declared
    # from the whole training set: a subsample may miss rare labels that validation or test still hold
    return label_set(label for example in examples for label in gold(example))


def _task_run(name: str, recipe: Recipe) -> TaskRun:
    """Read one task's data; training subsamples move with the seed, evaluation subsamples do not (every run of a
    comparison scores the same examples)."""
    splits = load_splits(recipe)
    return TaskRun(
        name=name,
        recipe=recipe,
        family=splits.task,
        reader=splits.reader,
        train=_subsample(splits.train, recipe.max_train_samples, recipe.seed),
        validation=_subsample(splits.validation, recipe.max_eval_samples, EVAL_SUBSAMPLE_SEED),
        test=_subsample(splits.test, recipe.max_eval_samples, EVAL_SUBSAMPLE_SEED),
        labels=_labels(recipe, task_class(splits.task).gold, splits.train),
        options=dict(splits.reader.get("options", {})),
    )


def _build_model(recipe: Recipe, runs: list[TaskRun]) -> PromptedModel:
    """The backbone with one prompt and a head per task (several tasks share the prompt), or from ``init_from``."""
    first = runs[0]
    prompt = recipe.prompt
    source = None
    if recipe.init_from is not None:
        source = PromptedModel.read_config(recipe.init_from)
        prompt = _initial_prompt(recipe, source)
    model = PromptedModel.from_backbone(
        recipe.model,
        model_task(first.family),
        labels=first.labels,
        prompt=prompt,
        pooling=recipe.pooling,
        name=first.name,
    )
    for run in runs[1:]:
        model.add_task(run.name, model_task(run.family), run.labels, pooling=recipe.pooling, shared_prompt=first.name)
    if source is not None:
        try:
            model.check_backbone(Path(recipe.init_from), source, fingerprint="refuse")
        except PtuningError as error:
            raise PtuningError(f"--init-from: {error}; start from a run on --model {recipe.model}") from error
        _copy_from(model, recipe.init_from, runs)
    return model


def _initial_prompt(recipe: Recipe, source: dict[str, Any]) -> PromptConfig:
    """The prompt a run started from a saved one trains: the saved prompt's shape (flat, as saved), this recipe's
    training settings (dropout, backbone dropout)."""
    prompts = source["prompts"]
    if len(prompts) != 1:
        raise PtuningError(f"--init-from {recipe.init_from} holds {len(prompts)} prompts; start from a run with one")
    saved = PromptConfig.from_dict(next(iter(prompts.values())))
    if saved.method != "deep" or recipe.prompt.method != "deep":
        raise PtuningError(f"--init-from starts a deep prompt from a deep prompt; {recipe.init_from} is {saved.method}")
    started = dataclasses.replace(
        saved, reparam=None, dropout=recipe.prompt.dropout, backbone_dropout=recipe.prompt.backbone_dropout
    )
    asked = dataclasses.replace(recipe.prompt, reparam=None)
    differences = [
        f"{item.name} {getattr(started, item.name)!r} (the recipe says {getattr(asked, item.name)!r})"
        for item in dataclasses.fields(PromptConfig)
        if getattr(started, item.name) != getattr(asked, item.name)
    ]
    if differences:
        logger.warning("--init-from %s: the prompt keeps its saved shape: %s", recipe.init_from, ", ".join(differences))
    return started


def _copy_from(model: PromptedModel, source: str, runs: list[TaskRun]) -> None:
    """Load the saved prompt into the model's, and each task's head where the source has a task of that name with
    the same labels (its head then starts trained)."""
    saved = PromptedModel.from_pretrained(source)
    with torch.no_grad():
        model.prompts[runs[0].name].table.copy_(next(iter(saved.prompts.values())).folded_table())
        for run in runs:
            entry = saved.tasks.get(run.name)
            if entry is not None and entry.labels == run.labels and run.name in saved.heads:
                model.heads[run.name].load_state_dict(saved.heads[run.name].state_dict())
                logger.info("%s: head from %s", run.name, source)
    logger.info("prompt from %s", source)


def _arguments(recipe: Recipe, output: Path, device: torch.device, multi_task: bool) -> TrainingArguments:
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


def _trainer(model, recipe: Recipe, runs: list[TaskRun], output: Path, callback, device) -> Trainer:
    """The Trainer whose every batch comes from one task (drawn by ``task_sampling`` when there are several)."""
    encoded = [run.task.encode(run.train).inputs for run in runs]
    features = [{**feature, "task_ids": index} for index, task in enumerate(encoded) for feature in task]
    lengths = [[len(feature["input_ids"]) for feature in task] for task in encoded]
    weights = task_weights(recipe.task_sampling, [len(task) for task in encoded])
    if len(runs) > 1:
        logger.info(
            "task sampling %s: %s",
            recipe.task_sampling,
            ", ".join(f"{run.name} {weight:.2f}" for run, weight in zip(runs, weights, strict=True)),
        )
    return PromptTrainer(
        model=model,
        args=_arguments(recipe, output, device, multi_task=len(runs) > 1),
        train_dataset=features,
        data_collator=TaskCollator([run.task.collator() for run in runs]),
        callbacks=[callback],
        task_batches=TaskBatches(lengths, recipe.batch_size, weights, recipe.seed),
    )


def _prepare_task(run: TaskRun, model: PromptedModel, recipe: Recipe) -> None:
    """The run's Task, its inputs' length limit, and its labels checked on every split."""
    room = model.text_room(model.tasks[run.name].prompt)
    # QA windows: 256 tokens (with a stride) unless asked otherwise; CPU cost grows with window length
    default_length = 256 if run.family == "question-answering" else room
    run.max_length = min(recipe.max_length or default_length, room)
    run.task = make_task(run.family, model.tokenizer, run.labels, run.max_length, **run.options)
    for examples in (run.train, run.validation, run.test):
        try:
            run.task.check_labels(examples)
        except DataError as error:
            if run.recipe.labels is not None:
                raise
            raise DataError(f"{error}; declare the whole label set with --labels FILE|a,b,c") from error


def _train(recipe: Recipe, output: Path, final_output: Path, on_validation=None) -> dict[str, Any]:
    """Train into ``output``; paths recorded in metrics.json name ``final_output``, where the run ends up."""
    device = resolve_device(recipe.device)
    check_precision(recipe.precision, device)
    runs = [_task_run(name, part) for name, part in recipe.parts()]
    set_seed(recipe.seed)
    model = _build_model(recipe, runs)
    if recipe.init_from is not None:  # the saved prompt's shape is what trains: metrics.json records it
        recipe = dataclasses.replace(recipe, prompt=next(iter(model.prompt_configs.values())))
    if recipe.precision != "fp32" and recipe.prompt.method != "finetune":
        model.cast_backbone(dtype_of(recipe.precision))
    model.to(device)  # evaluation between epochs and after training runs where the Trainer trains
    logger.info("device %s, precision %s", device, recipe.precision)
    for run in runs:
        _prepare_task(run, model, recipe)
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
    trainer = _trainer(model, recipe, runs, output, callback, device)
    resume_from = latest_resume_state(Path(recipe.output)) if recipe.resume else None
    if resume_from is not None:
        callback.load_state(resume_from)
        logger.info("resuming from %s", resume_from)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    train_seconds = time.perf_counter() - started
    replicas = replica_checksums(model)
    if not is_main_process():
        return {}
    if len(set(replicas)) > 1:
        logger.warning("the data-parallel processes ended with different weights: checksums %s", replicas)
    shutil.rmtree(output / "trainer", ignore_errors=True)  # save_strategy="no": nothing of ours is in there
    if callback.best_score is not None:  # the best validated epoch; without validation data, the last weights
        model.restore_trainable_state(callback.best_state)

    results: dict[str, dict[str, Any]] = {}
    for run in runs:
        model.use(run.name)
        validation = callback.best_metrics.get(run.name, {})
        calibrated = run.task.calibrate(model, run.validation, recipe.eval_batch_size)
        if calibrated:
            run.options.update(calibrated)
            validation = run.task.evaluate(model, run.validation, recipe.eval_batch_size)
            logger.info("%s calibrated on validation: %s", run.name, calibrated)
        model.extra = run.extra()
        results[run.name] = {"validation": validation}
    model.active = None
    checkpoint = output / "checkpoint"
    model.save_pretrained(checkpoint)
    for run in runs:
        test = run.task.evaluate(model.use(run.name), run.test, recipe.eval_batch_size) if run.test else {}
        results[run.name].update(
            test=test,
            primary_metric=run.task.primary_metric,
            task=run.family,
            dataset=run.recipe.dataset or run.recipe.train,
            train_examples=len(run.train),
        )
    model.active = None
    shared = {
        "trainable_parameters": model.trainable_parameters(),
        "total_parameters": model.total_parameters(),
        "trainable_share": model.trainable_parameters() / model.total_parameters(),
        "stored_parameters": model.stored_parameters(),
        "stored_share": model.stored_share(),
        "device": str(trainer.args.device),
        "world_size": world_size(),
        "global_batch_size": recipe.batch_size * world_size(),
        "replica_checksums": replicas,
        "precision": recipe.precision,
        "train_seconds": round(train_seconds, 1),
        # the last logged window, not the run's mean: tells underfitting (high) from overfitting (low)
        "train_loss": next((entry["loss"] for entry in reversed(trainer.state.log_history) if "loss" in entry), None),
        "steps": trainer.state.global_step,
        "checkpoint": str(final_output / "checkpoint"),
        "checkpoint_bytes": sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # of this process, so far
        "recipe": recipe.to_dict(),
    }
    if len(runs) == 1:  # a single-task run keeps its flat shape
        only = results[runs[0].name]
        metrics = {
            **{key: only[key] for key in ("task", "dataset", "primary_metric", "validation", "test")},
            "validation_curve": callback.curve,
            "train_examples": only["train_examples"],
            **shared,
        }
    else:
        metrics = {
            "tasks": results,
            "validation_curve": callback.curve,
            "train_examples": sum(len(run.train) for run in runs),
            **shared,
        }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output / "log.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
    return metrics
