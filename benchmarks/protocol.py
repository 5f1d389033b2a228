"""The study's protocol, shared by its parts (benchmarks/study.py, benchmarks/multitask.py) and by
benchmarks/faithfulness.py: the scales, the methods' recipe settings and search spaces, and the runner that trains
each setting once in a forked process and journals its metrics. ``--resume`` reads the journal back by settings
key; its metrics are read through ``ptuning.training.run_metrics``, which also takes the flat shape single-task runs
had when older journal lines were written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ptuning.training.run_metrics import task_metrics

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("rotten-tomatoes", "conll2003-ner", "conll2003-chunk", "conll2003-qa")
METHODS: dict[str, dict[str, Any]] = {
    "finetune": {"method": "finetune"},
    "linear-probe": {"method": "linear-probe"},
    "shallow": {"method": "shallow"},
    "ptuning-v1": {"method": "ptuning-v1", "reparam": "lstm"},
    # the frozen backbone without its dropout: NER validation F1 67.2 -> 69.8 at 3 epochs, steps ~12% faster
    "deep": {"method": "deep", "backbone_dropout": False},
    # without warmup the MLP collapsed to one class on some seeds (rotten-tomatoes seeds 1 and 2 at lr 1e-3)
    "deep-mlp": {"method": "deep", "reparam": "mlp", "warmup_ratio": 0.1, "backbone_dropout": False},
}
PROMPTED = ("shallow", "ptuning-v1", "deep", "deep-mlp")


@dataclass(frozen=True)
class Scale:
    """How much of everything a run of the study uses."""

    train_examples: int
    eval_examples: int
    epochs: float
    seeds: tuple[int, ...]
    learning_rates: dict[str, tuple[float, ...]]
    prompt_lengths: tuple[int, ...]
    ablation_lengths: tuple[int, ...]
    depth_layers: dict[str, list[int] | None]
    cost_repeats: int
    cost_sentences: int
    longer_epochs: int
    longer_tasks: int  # at most this many tasks, the largest validation gaps first
    longer_batch_size: int  # smaller batches: more prompt updates per epoch
    data_train_examples: int  # the "data" part: this many training examples instead of train_examples
    data_tasks: int  # at most this many tasks, the largest validation gaps first
    # backbone dropout on/off searched per method (others: the METHODS setting)
    backbone_dropout: dict[str, tuple[bool, ...]] = field(default_factory=dict)
    batch_size: int = 16
    backbone: str = "minilm-l6"
    methods: tuple[str, ...] = tuple(METHODS)
    tasks: tuple[str, ...] = TASKS
    # longer / data rerun tasks whose validation gap exceeds this; None (quick): every task, so the parts run
    rerun_margin: float | None = 1.0
    # recipe fields a method takes on this backbone beyond METHODS (none on the encoders: their journals' keys stay)
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)


QUICK = Scale(
    train_examples=256,
    eval_examples=200,
    epochs=1,
    seeds=(0,),
    learning_rates={
        "finetune": (1e-4,),
        "linear-probe": (1e-2,),
        "shallow": (3e-2,),
        "ptuning-v1": (1e-2,),
        "deep": (3e-2,),
        "deep-mlp": (1e-3,),  # 3e-3 collapsed it to one class here too
    },
    prompt_lengths=(16,),
    ablation_lengths=(4, 16, 128),
    depth_layers={"all 6": None, "top 3": [3, 4, 5], "bottom 3": [0, 1, 2]},
    cost_repeats=5,
    cost_sentences=512,
    longer_epochs=2,
    longer_tasks=1,
    longer_batch_size=8,
    data_train_examples=512,
    data_tasks=1,
    rerun_margin=None,
)
FULL = Scale(
    train_examples=1000,
    eval_examples=500,
    epochs=3,
    seeds=(0, 1, 2),
    learning_rates={
        "finetune": (5e-5, 2e-4),
        "linear-probe": (3e-3, 3e-2),
        "shallow": (3e-2, 1e-1),
        "ptuning-v1": (3e-3, 1e-2),
        "deep": (3e-2, 6e-2),  # 1e-2 lost to 3e-2 on every task (measured)
        # 3e-3 and 1e-2 collapse it (every prediction one class, training loss stays at chance): measured
        "deep-mlp": (3e-4, 1e-3),
    },
    prompt_lengths=(16, 64),  # searched for deep; the other prompt methods use the first
    ablation_lengths=(4, 16, 32, 64, 128),
    depth_layers={"all 6": None, "top 3": [3, 4, 5], "bottom 3": [0, 1, 2], "top 1": [5], "bottom 1": [0]},
    cost_repeats=9,
    cost_sentences=2048,
    # batch 8 at 3 epochs: NER validation F1 67.2 -> 69.8 for 1.1x the time; 10 epochs: 76.2 (measured)
    longer_epochs=6,
    longer_tasks=4,  # 15-25 minutes a task on 2 cores
    longer_batch_size=8,
    data_train_examples=4000,  # 750 steps, as many as the longer part's (6 epochs of batch 8 on 1,000)
    data_tasks=4,  # every task that trails on validation: 17-25 minutes a task on 2 cores
    # off raised NER validation F1 for fine-tuning too (79.2 -> 80.9 at 3 epochs): searched, not assumed
    backbone_dropout={"finetune": (True, False)},
)
# The second scale: MPNet-base (110M) at MiniLM's parity budget and protocol, fine-tuning against deep on three tasks
# (each run 4-10x MiniLM's on these cores). Deep's lrs span the 60-step pilot's working 1e-2; fine-tuning's add 5e-4
# to MiniLM's grid, whose top NER chose. Fine-tuning keeps the backbone dropout MiniLM chose (off).
MPNET = dataclasses.replace(
    FULL,
    backbone="mpnet-base",
    methods=("finetune", "deep"),
    tasks=("conll2003-ner", "conll2003-chunk", "rotten-tomatoes"),  # cheapest first: CoNLL sentences are short
    learning_rates={"finetune": (5e-5, 2e-4, 5e-4), "deep": (3e-3, 1e-2, 3e-2)},
    backbone_dropout={"finetune": (False,)},
)
# the decoder at the parity budget, for the gap against size: sentiment only (the task a last-token head reads
# without the left-to-right limit of tagging), one rate per method from the decoder study, its deep prompt started
# from an instruction's keys/values (benchmarks/decoder.py: a random start stays at the majority class)
SMOLLM2 = dataclasses.replace(
    FULL,
    backbone="smollm2-135m",
    methods=("finetune", "deep"),
    tasks=("rotten-tomatoes",),
    learning_rates={"finetune": (5e-5,), "deep": (1e-2,)},
    prompt_lengths=(16,),
    backbone_dropout={"finetune": (False,)},  # SmolLM2 has no dropout: on or off is the same run
    method_settings={
        "deep": {
            "prompt_init": "text",
            "prompt_init_text": "Classify the sentiment of the following movie review as positive or negative.",
            "shift_positions": True,
            "head_lr": 5e-3,
        }
    },
)
SCALES = {scale.backbone: scale for scale in (FULL, MPNET, SMOLLM2)}
DEFAULT_BACKBONE = FULL.backbone
PROMPT_DROPOUT = 0.0  # the longer full-data NER runs learned faster without it


def train_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """One run of the study: ``ptuning train`` with these recipe fields (into a scratch folder unless kept)."""
    from ptuning.recipe import Recipe
    from ptuning.training.run import train

    if "output" in settings:  # a run whose checkpoint a later run starts from: kept
        return train(Recipe.from_dict({**settings, "overwrite": True}))
    with tempfile.TemporaryDirectory() as folder:
        return train(Recipe.from_dict({**settings, "output": folder}))


def _child(run: Callable[[dict[str, Any]], dict[str, Any]], settings: dict[str, Any], threads: int, queue) -> None:
    """One run in a forked process; its output goes to a log file, its metrics to the queue."""
    log = open(settings.pop("log"), "w")  # noqa: SIM115 - stays open for the life of this process
    sys.stdout = sys.stderr = log
    import torch

    torch.set_num_threads(threads)
    try:
        queue.put(run(settings))
    except BaseException as error:  # the parent waits on the queue: always answer
        queue.put({"error": f"{type(error).__name__}: {error}"})
        raise


class Runner:
    """Runs trainings (``run``: by default ``ptuning train``) in forked processes, ``jobs`` at a time, and remembers
    each result by its settings.

    Two one-thread jobs train about 1.4x more examples per second than one two-thread job on the 2-core
    machines (measured); the ablations reuse parity runs with identical settings instead of repeating them.
    """

    def __init__(
        self,
        jobs: int,
        resume: bool,
        results: Path = RESULTS,
        run: Callable[[dict[str, Any]], dict[str, Any]] = train_settings,
        journal: str = "runs.jsonl",
    ) -> None:
        self.jobs = jobs
        self.run = run  # settings -> metrics, in the forked process
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self.journal = results / "logs" / journal  # every finished run, so --resume skips it
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict[str, Any]] = {}
        if resume and self.journal.is_file():
            for line in self.journal.read_text().splitlines():
                entry = json.loads(line)
                self.done[entry["settings"]] = entry["metrics"]
        elif self.journal.is_file():
            self.journal.unlink()
        self.producers: dict[str, tuple[str, dict[str, Any]]] = {}  # a kept checkpoint -> the run that writes it
        self.producing = threading.RLock()

    def _checkpoint_for(self, start: str | None) -> None:
        """A journaled run's checkpoint is made again (same settings) only when a run that is not journaled starts
        from it and it is gone (another machine, a cleaned disk): a journaled result is never retrained for itself."""
        with self.producing:  # two runs that start from one missing checkpoint train it once
            if start is None or Path(start).is_dir() or start not in self.producers:
                return
            name, settings = self.producers[start]
            self.done.pop(json.dumps(settings, sort_keys=True), None)
            self.one(settings, name)

    def one(self, settings: dict[str, Any], name: str) -> dict[str, Any]:
        key = json.dumps(settings, sort_keys=True)
        if "output" in settings:
            self.producers[str(settings["output"])] = (name, settings)
        if key in self.done:
            return self.done[key]
        self._checkpoint_for(settings.get("init_from"))
        logs = self.journal.parent
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child_settings = {**settings, "log": str(logs / f"{name}.log")}
        process = context.Process(target=_child, args=(self.run, child_settings, self.threads, queue))
        started = time.perf_counter()
        process.start()
        metrics = queue.get()
        process.join()
        if "error" in metrics:
            raise RuntimeError(f"run {name} failed ({metrics['error']}); see {logs / name}.log")
        scores = []
        results = task_metrics(metrics)
        for task, result in results.items():  # a multi-task run: every task
            primary, nan = result["primary_metric"], float("nan")
            named = f"{task} " if len(results) > 1 else ""
            scores.append(
                f"{named}validation {primary} {result['validation'].get(primary, nan):.2f}, "
                f"test {result['test'].get(primary, nan):.2f}"
            )
        print(f"  {name}: {'; '.join(scores)} ({time.perf_counter() - started:.0f} s)", flush=True)
        self.done[key] = metrics
        with self.journal.open("a") as journal:
            journal.write(json.dumps({"settings": key, "metrics": metrics}) + "\n")
        return metrics

    def many(self, named_settings: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Run all, ``jobs`` at a time; results in the order given."""
        with ThreadPoolExecutor(self.jobs) as pool:
            return list(pool.map(lambda pair: self.one(pair[1], pair[0]), named_settings))


class Point(NamedTuple):
    """One setting of a method's search: learning rate, prompt length, backbone dropout (None: the method's)."""

    lr: float
    prompt_length: int | None = None
    backbone_dropout: bool | None = None


def settings_for(scale: Scale, task: str, method: str, point: Point, seed: int) -> dict[str, Any]:
    """Recipe fields of one run of the study (backbone dropout on is the recipe default, so left out)."""
    settings = {
        "dataset": task,
        "max_train_samples": scale.train_examples,
        "max_eval_samples": scale.eval_examples,
        "epochs": scale.epochs,
        "batch_size": scale.batch_size,
        "eval_batch_size": 64,
        **METHODS[method],
        **scale.method_settings.get(method, {}),
        "lr": point.lr,
        "seed": seed,
    }
    if scale.backbone != DEFAULT_BACKBONE:  # MiniLM's journalled settings name no model
        settings["model"] = scale.backbone
    if point.prompt_length is not None:
        settings["prompt_length"] = point.prompt_length
        settings["prompt_dropout"] = PROMPT_DROPOUT
    if point.backbone_dropout is not None:
        settings["backbone_dropout"] = point.backbone_dropout
    if settings.get("backbone_dropout") is True:
        del settings["backbone_dropout"]
    return settings


def search_space(scale: Scale, method: str) -> list[Point]:
    """The settings searched on validation for ``method``."""
    if method == "deep":
        lengths = scale.prompt_lengths
    elif method in PROMPTED:  # deep-mlp too: at length 64 it collapsed to one class even at lr 1e-3 (measured)
        lengths = scale.prompt_lengths[:1]
    else:
        lengths = (None,)
    return [
        Point(lr, length, dropout)
        for lr in scale.learning_rates[method]
        for length in lengths
        for dropout in scale.backbone_dropout.get(method, (None,))
    ]


def seed_summary(scores: list[float]) -> dict[str, Any]:
    """Mean and standard deviation of one setting's test scores over its seeds."""
    return {
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "scores": scores,
    }


def write_json(results: Path, name: str, content: dict[str, Any]) -> None:
    (results / name).write_text(json.dumps(content, indent=2) + "\n")


def add_budget_flags(parser: argparse.ArgumentParser, study: str) -> None:
    """The flags every subsampled study of the decoder takes (``study``: its results' name)."""
    parser.add_argument("--quick", action="store_true", help="a smoke run: 32 training, 16 evaluation examples")
    parser.add_argument("--resume", action="store_true", help="reuse runs finished by an earlier invocation")
    parser.add_argument("--train-examples", type=int, help="training subsample (default 1000)")
    parser.add_argument("--eval-examples", type=int, help="validation and test subsample (default 200)")
    parser.add_argument("--epochs", type=float, help="training epochs (default 1)")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once, the cores shared among them")
    parser.add_argument("--output", help=f"default: benchmarks/results/{study}.json (--quick: results/quick/)")


def budget_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The budget fields the flags of :func:`add_budget_flags` change."""
    changes: dict[str, Any] = {
        name: getattr(args, name) for name in ("train_examples", "eval_examples", "epochs") if getattr(args, name)
    }
    if args.seeds:
        changes["seeds"] = tuple(int(seed) for seed in args.seeds.split(","))
    return changes


def write_study(study: str, args: argparse.Namespace, argv: list[str] | None, content: dict[str, Any]) -> Path:
    """The study's JSON (its command recorded), under results/quick/ for a quick run (never over the full one)."""
    output = Path(args.output or RESULTS / ("quick" if args.quick else "") / f"{study}.json")
    command = f"python benchmarks/{study}.py " + " ".join(sys.argv[1:] if argv is None else argv)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output.parent, output.name, {**content, "command": command})
    return output
