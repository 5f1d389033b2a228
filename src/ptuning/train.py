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
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .config import PromptConfig
from .data.hf import load_hf
from .data.packaged import Splits, load_packaged
from .data.readers import label_set, read_conll, read_labeled_texts
from .data.squad import read_squad
from .data.srl import read_srl
from .data.superglue import SUPERGLUE_TASKS, read_superglue
from .errors import PtuningError
from .model import PromptedModel
from .tasks import Task, make_task, model_task, task_class

logger = logging.getLogger("ptuning")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
HF_COLUMNS = ("text_column", "pair_column", "label_column", "tokens_column", "tags_column")
# by learning-rate family (see lr_family): a deep prompt through the MLP collapses at the flat table's 1e-2
# (every prediction one class; measured at 3e-3 and 1e-2 on rotten-tomatoes, learns at 1e-3 with warmup)
DEFAULT_LEARNING_RATES = {"finetune": 5e-5, "linear-probe": 5e-3, "deep-mlp": 1e-3}


def lr_family(method: str, reparam: str | None) -> str:
    """Which usual learning rate a configuration wants: recipes' lrs do not carry across families."""
    return "deep-mlp" if method == "deep" and reparam == "mlp" else method


EVAL_SUBSAMPLE_SEED = 0


@dataclass
class Recipe:
    """Everything a training run needs; YAML recipes and CLI flags fill it (flags win)."""

    dataset: str | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    task: str | None = None
    tag_column: int = -1
    text_column: str = "text"
    pair_column: str | None = None
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    model: str = "minilm-l6"
    method: str = "deep"
    prompt_length: int = 16
    prompt_layers: list[int] | None = None
    reparam: str | None = None
    reparam_hidden: int = 512
    prompt_init: str = "random"
    prompt_dropout: float = 0.1
    shift_positions: bool = False
    backbone_dropout: bool = True
    pooling: str | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float | None = None
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    eval_batch_size: int = 64
    seed: int = 42
    max_length: int | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    output: str = "runs/ptuning"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "recipe") -> Recipe:
        values = {key.replace("-", "_"): value for key, value in values.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PtuningError(f"{source}: unknown keys {unknown}; known: {sorted(known - {'extra'})}")
        return cls(**values)

    def learning_rate(self) -> float:
        """The given lr, else the method's usual one: prompts want ~1e-2 (1e-3 through the deep MLP), full
        fine-tuning ~5e-5."""
        if self.lr is not None:
            return self.lr
        return DEFAULT_LEARNING_RATES.get(lr_family(self.method, self.reparam), 1e-2)

    def warmup(self) -> float:
        """The given warmup share, else 10% for the deep MLP (without, it collapsed to one class on some
        seeds: measured on rotten-tomatoes) and none for the rest, as in the reference code."""
        if self.warmup_ratio is not None:
            return self.warmup_ratio
        return 0.1 if lr_family(self.method, self.reparam) == "deep-mlp" else 0.0

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(
            method=self.method,
            length=self.prompt_length,
            layers=self.prompt_layers,
            reparam=self.reparam,
            reparam_hidden=self.reparam_hidden,
            init=self.prompt_init,
            dropout=self.prompt_dropout,
            shift_positions=self.shift_positions,
            backbone_dropout=self.backbone_dropout,
        )


# --task values that name a file format: (task, how its files are read and decoded)
FORMAT_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "squad": ("question-answering", {"format": "squad", "options": {"version_2": False}}),
    "squad_v2": ("question-answering", {"format": "squad", "options": {"version_2": True}}),
    "srl": ("srl", {"format": "srl"}),
    **{name: (task, {"format": "superglue", "task": name}) for name, task in SUPERGLUE_TASKS.items()},
}


def file_task(recipe: Recipe) -> tuple[str, dict[str, Any]]:
    """The task and reader for ``--train`` files: from ``--task``, else from the file's extension."""
    if recipe.task in FORMAT_TASKS:
        return FORMAT_TASKS[recipe.task]
    suffix = Path(recipe.train or "").suffix.lower()
    task = recipe.task or (
        "question-answering"
        if suffix == ".json"
        else "sequence-classification"
        if suffix in TABLE_SUFFIXES
        else "token-classification"
    )
    if task == "question-answering":
        return FORMAT_TASKS["squad"]
    if task in ("token-classification", "srl"):
        return task, {"format": "conll", "tag_column": recipe.tag_column} if task != "srl" else {"format": "srl"}
    reader = {
        "format": "table",
        "text_column": recipe.text_column,
        "pair_column": recipe.pair_column,
        "label_column": recipe.label_column,
    }
    return task, reader


def read_examples(path: str | Path, reader: dict[str, Any]) -> list[Any]:
    """Examples of one file, read the way the checkpoint's training data was read."""
    kind = reader.get("format")
    if kind == "conll":
        return read_conll(path, reader["tag_column"])
    if kind == "table":
        return read_labeled_texts(path, reader["text_column"], reader["pair_column"], reader["label_column"])
    if kind == "squad":
        return read_squad(path)
    if kind == "superglue":
        return read_superglue(reader["task"], path)
    if kind == "srl":
        return read_srl(path)
    raise PtuningError(f"files of this checkpoint's data ({kind or 'unknown format'}) cannot be read; use --dataset")


def load_dataset(name: str, task: str | None, reader: dict[str, Any]) -> Splits:
    """A dataset by name: ``hf:NAME[:CONFIG]`` (columns from ``reader``) or a packaged one."""
    if name.startswith("hf:"):
        return load_hf(name, task or "sequence-classification", reader["columns"])
    return load_packaged(name)


def load_splits(recipe: Recipe) -> Splits:
    if recipe.dataset:
        columns = {name: getattr(recipe, name) for name in HF_COLUMNS}
        return load_dataset(recipe.dataset, recipe.task, {"columns": columns})
    if not recipe.train:
        raise PtuningError("give --dataset NAME or --train FILE (with --validation/--test)")
    task, reader = file_task(recipe)
    parts = [read_examples(path, reader) if path else [] for path in (recipe.train, recipe.validation, recipe.test)]
    return Splits(task, *parts, reader=reader)


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


def train(recipe: Recipe) -> dict[str, Any]:
    """Train a prompt for the recipe; write checkpoint, train.log, log.json and metrics.json to ``output``."""
    output = Path(recipe.output)
    output.mkdir(parents=True, exist_ok=True)
    handler = _file_logging(output)
    try:
        return _train(recipe, output)
    finally:
        logger.removeHandler(handler)
        handler.close()


def _train(recipe: Recipe, output: Path) -> dict[str, Any]:
    splits = load_splits(recipe)
    task_name = splits.task
    train_examples = _subsample(splits.train, recipe.max_train_samples, recipe.seed)
    # evaluation subsamples do not move with the seed: every run of a comparison scores the same examples
    validation = _subsample(splits.validation, recipe.max_eval_samples, EVAL_SUBSAMPLE_SEED)
    test = _subsample(splits.test, recipe.max_eval_samples, EVAL_SUBSAMPLE_SEED)
    gold = task_class(task_name).gold
    # from the whole training set: a subsample may miss rare labels that validation or test still hold
    labels = label_set(label for example in splits.train for label in gold(example))

    set_seed(recipe.seed)
    model = PromptedModel.from_backbone(
        recipe.model, model_task(task_name), labels=labels, prompt=recipe.prompt_config(), pooling=recipe.pooling
    )
    # QA windows: 256 tokens (with a stride) unless asked otherwise; CPU cost grows with window length
    default_length = 256 if task_name == "question-answering" else model.max_text_length
    max_length = min(recipe.max_length or default_length, model.max_text_length)
    task_options = dict(splits.reader.get("options", {}))
    task = make_task(task_name, model.tokenizer, labels, max_length, **task_options)
    for examples in (validation, test):
        task.check_labels(examples)
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
        "checkpoint": str(checkpoint),
        "checkpoint_bytes": sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # of this process, so far
        "recipe": asdict(recipe),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output / "log.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
    return metrics
