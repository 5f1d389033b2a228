"""The study: the paper's findings at CPU scale on the packaged MiniLM-L6 and the packaged real datasets.

    python benchmarks/study.py --quick     # every part, reduced, into benchmarks/results/quick/
    python benchmarks/study.py             # the full run (parity, ablations, cost): about 2.5 hours on 2 cores
    python benchmarks/study.py --parts longer,data --resume   # then more steps / data where deep trails: ~2 h 40 min
    python benchmarks/study.py --parts data-longer --resume   # then both where deep still trails: ~40 min a task
    python benchmarks/study.py --parts multitask --resume     # multi-task P-Tuning v2 on three CoNLL-2003 tasks

Parts: the parity table (6 methods x 4 tasks, a learning-rate / prompt-length search on validation,
then seeds), ablations (prompt length, depth, reparameterization), longer training and more data (where deep
trails fine-tuning on validation, both trained again for more epochs / on more examples; data-longer: both, where
deep still trails with more data), multi-task training (benchmarks/multitask.py) and cost
(benchmarks/cost.py). Each training run is a forked process (its own peak RSS), reading the data subsample
and settings written in the report; two run at once by default. Results:
benchmarks/results/{parity,ablations,longer,data,data_longer,multitask,cost}.json, REPORT.md and PNG plots. ``--parts``
picks parts, ``--tasks`` the tasks the reruns may take; ``--resume`` reuses runs an earlier invocation finished.
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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import reparam_rows  # noqa: E402 - the bench scripts' folder is on the path first

from ptuning.model import stored_share  # noqa: E402

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
PARTS = ("parity", "ablations", "longer", "data", "data-longer", "multitask", "cost")
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
SCALES = {scale.backbone: scale for scale in (FULL, MPNET)}
DEFAULT_BACKBONE = FULL.backbone
PROMPT_DROPOUT = 0.0  # the longer full-data NER runs learned faster without it


def train_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """One run of the study: ``ptuning train`` with these recipe fields (into a scratch folder unless kept)."""
    from ptuning.train import Recipe, train

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

    def one(self, settings: dict[str, Any], name: str) -> dict[str, Any]:
        key = json.dumps(settings, sort_keys=True)
        kept = settings.get("output")
        if key in self.done and (kept is None or Path(kept).is_dir()):  # a kept checkpoint must still be there
            return self.done[key]
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
        for task, result in (metrics.get("tasks") or {"": metrics}).items():  # a multi-task run: every task
            primary, nan = result["primary_metric"], float("nan")
            scores.append(
                f"{task + ' ' if task else ''}validation {primary} {result['validation'].get(primary, nan):.2f}, "
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


def run_name(task: str, method: str, point: Point, seed: int, backbone: str = DEFAULT_BACKBONE) -> str:
    dropout = "" if point.backbone_dropout is None else f"-bd{int(point.backbone_dropout)}"
    scale = "" if backbone == DEFAULT_BACKBONE else f"{backbone}-"
    return f"parity-{scale}{task}-{method}-lr{point.lr:g}-P{point.prompt_length}{dropout}-s{seed}"


def row_point(row: dict[str, Any]) -> Point:
    """The setting a parity row was measured with."""
    return Point(row["lr"], row["prompt_length"], row.get("backbone_dropout"))


def recipe_setting(recipe: dict[str, Any], key: str, default: Any) -> Any:
    """A prompt setting of a journaled run's recipe: nested under "prompt" since checkpoint format 2, flat before."""
    return recipe.get("prompt", recipe).get(key, recipe.get(key, default))


def mean_or_none(values: list[float | None]) -> float | None:
    return None if None in values else statistics.fmean(values)


def seed_summary(scores: list[float]) -> dict[str, Any]:
    """Mean and standard deviation of one setting's test scores over its seeds."""
    return {
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "scores": scores,
    }


def parity_row(
    task: str, method: str, point: Point, grid: list, seeds: tuple[int, ...], seed_runs: list
) -> dict[str, Any]:
    """One row of parity.json: test mean and std over the seeds of one setting, with its costs."""
    best_metrics = seed_runs[0]
    primary = best_metrics["primary_metric"]
    return {
        "backbone": best_metrics["recipe"]["model"],
        "task": task,
        "method": method,
        "metric": primary,
        **seed_summary([m["test"][primary] for m in seed_runs]),
        "seeds": list(seeds),
        "validation": statistics.fmean(m["validation"][primary] for m in seed_runs),
        **point._asdict(),
        # as trained (the point leaves it to the method's default when None)
        "backbone_dropout": recipe_setting(best_metrics["recipe"], "backbone_dropout", True),
        "grid": [{**grid_point._asdict(), "validation": m["validation"].get(primary)} for grid_point, m in grid],
        "trainable_parameters": best_metrics["trainable_parameters"],
        "trainable_share": best_metrics["trainable_share"],
        # from the counts: runs recorded before the share left out the training-only MLP/LSTM stay comparable
        "stored_share": stored_share(
            best_metrics["stored_parameters"], best_metrics["trainable_parameters"], best_metrics["total_parameters"]
        ),
        "train_seconds": statistics.fmean(m["train_seconds"] for m in seed_runs),
        # last logged window, mean over seeds; runs journalled before it was recorded have none
        "train_loss": mean_or_none([m.get("train_loss") for m in seed_runs]),
        "peak_rss_mb": max(m["peak_rss_mb"] for m in seed_runs),
        "checkpoint_bytes": best_metrics["checkpoint_bytes"],
    }


def parity(scale: Scale, runner: Runner, write: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Per task: every method's grid on validation with the first seed, then the best settings on the other seeds.

    ``write(rows)`` is called after each task, so an interrupted run keeps the tasks it finished.
    """
    rows: list[dict[str, Any]] = []
    first = scale.seeds[0]
    for task in scale.tasks:
        print(f"{task} ({scale.backbone})", flush=True)
        planned = [(method, point) for method in scale.methods for point in search_space(scale, method)]
        results = runner.many(
            [
                (run_name(task, method, point, first, scale.backbone), settings_for(scale, task, method, point, first))
                for method, point in planned
            ]
        )
        grids: dict[str, list] = {method: [] for method in scale.methods}
        for (method, point), metrics in zip(planned, results, strict=True):
            grids[method].append((point, metrics))
        best = {}
        for method, grid in grids.items():
            primary = grid[0][1]["primary_metric"]
            best[method] = max(grid, key=lambda entry: entry[1]["validation"].get(primary, -1.0))
        reruns = [(method, seed) for method in scale.methods for seed in scale.seeds[1:]]
        rerun_results = runner.many(
            [
                (
                    run_name(task, method, best[method][0], seed, scale.backbone),
                    settings_for(scale, task, method, best[method][0], seed),
                )
                for method, seed in reruns
            ]
        )
        for method in scale.methods:
            point, first_metrics = best[method]
            seed_runs = [first_metrics] + [
                metrics for (m, _), metrics in zip(reruns, rerun_results, strict=True) if m == method
            ]
            rows.append(parity_row(task, method, point, grids[method], scale.seeds, seed_runs))
        write(rows)
    return rows


def mean_curve(seed_runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Validation score after each epoch, averaged over seeds: shows whether a method was still improving."""
    curves = [m.get("validation_curve", []) for m in seed_runs]
    epochs = min(len(curve) for curve in curves)
    return [(curves[0][i][0], statistics.fmean(curve[i][1] for curve in curves)) for i in range(epochs)]


def trailing_tasks(
    parity_rows: list[dict[str, Any]], margin: float | None
) -> tuple[list[str], list[str], dict[str, tuple]]:
    """Tasks where the deep variant chosen on validation trails fine-tuning by more than ``margin`` points on
    validation (None: every task; largest gap first), the tasks already within it, and per task (finetune row,
    deep row)."""
    by_key = {(row["task"], row["method"]): row for row in parity_rows}
    gaps = {}
    for task in TASKS:
        if (task, "finetune") in by_key:
            finetune = by_key[(task, "finetune")]
            variants = [by_key[(task, m)] for m in ("deep", "deep-mlp") if (task, m) in by_key]  # a rerun has one
            deep = max(variants, key=lambda row: row["validation"])
            gaps[task] = (finetune["validation"] - deep["validation"], finetune, deep)
    trailing = [task for task in gaps if margin is None or gaps[task][0] > margin]
    behind = sorted(trailing, key=lambda task: -gaps[task][0])
    return behind, [task for task in gaps if task not in behind], {task: gaps[task][1:] for task in gaps}


def rerun_trailing(
    scale: Scale,
    runner: Runner,
    parity_rows: list[dict[str, Any]],
    changes: dict[str, Any],
    tasks: int,
    tag: str,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Train fine-tuning and the chosen deep variant again with ``changes`` to their settings (searched lr and
    prompt length kept, every seed, best epoch on validation) on at most ``tasks`` trailing tasks (of ``only``,
    when given: a budget that cannot rerun every task picks where it decides most)."""
    behind, within, pairs = trailing_tasks(parity_rows, scale.rerun_margin)
    rerun = [task for task in behind if only is None or task in only][:tasks]
    rows = []
    for task in rerun:
        print(f"{task}: {changes}", flush=True)
        planned = [(row, seed) for row in pairs[task] for seed in scale.seeds]
        results = runner.many(  # one batch: no job slot waits between the two methods
            [
                (
                    f"{run_name(task, row['method'], row_point(row), seed)}-{tag}",
                    {**settings_for(scale, task, row["method"], row_point(row), seed), **changes},
                )
                for row, seed in planned
            ]
        )
        for row in pairs[task]:
            seed_runs = [metrics for (r, _), metrics in zip(planned, results, strict=True) if r is row]
            rows.append(
                {
                    **parity_row(task, row["method"], row_point(row), [], scale.seeds, seed_runs),
                    **changes,
                    "train_examples": seed_runs[0]["train_examples"],
                    "steps": seed_runs[0]["steps"],
                    "validation_curve": mean_curve(seed_runs),
                }
            )
    return {
        "changes": changes,
        "margin": scale.rerun_margin,
        "rows": rows,
        "within_a_point_already": within,
        "behind_not_rerun": [task for task in behind if task not in rerun],
    }


def longer(
    scale: Scale, runner: Runner, parity_rows: list[dict[str, Any]], only: set[str] | None = None
) -> dict[str, Any]:
    """More optimizer steps where deep trails: ``longer_epochs`` epochs of ``longer_batch_size`` examples.
    Prompts learn more slowly than fine-tuning, and the paper trains them for 30-40 epochs on the whole set."""
    changes = {"epochs": scale.longer_epochs, "batch_size": scale.longer_batch_size}
    tag = f"e{scale.longer_epochs}-b{scale.longer_batch_size}"
    return {**changes, **rerun_trailing(scale, runner, parity_rows, changes, scale.longer_tasks, tag, only)}


def more_data(
    scale: Scale, runner: Runner, parity_rows: list[dict[str, Any]], only: set[str] | None = None
) -> dict[str, Any]:
    """More training examples where deep trails most (parity epochs and batch): tells a low-data effect from a
    ceiling of the method, and the rows' training losses tell underfitting from overfitting."""
    changes = {"max_train_samples": scale.data_train_examples}
    tag = f"n{scale.data_train_examples}"
    return rerun_trailing(scale, runner, parity_rows, changes, scale.data_tasks, tag, only)


def more_data_longer(
    scale: Scale, runner: Runner, data_rows: list[dict[str, Any]], only: set[str] | None = None
) -> dict[str, Any]:
    """Where deep still trails with more data (the data part's rows), ``longer_epochs`` epochs on that data at
    the parity batch: its validation curves were still climbing at the last epoch, fine-tuning's flattening."""
    changes = {"max_train_samples": scale.data_train_examples, "epochs": scale.longer_epochs}
    tag = f"n{scale.data_train_examples}-e{scale.longer_epochs}"
    return rerun_trailing(scale, runner, data_rows, changes, scale.data_tasks, tag, only)


def ablations(scale: Scale, runner: Runner, parity_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompt length on NER and sentiment, depth on NER (deep at each task's best lr, first seed);
    reparameterization per task from the parity rows. Runs identical to parity runs are reused."""
    seed = scale.seeds[0]
    by_key = {(row["task"], row["method"]): row for row in parity_rows}
    length_tasks = [task for task in ("conll2003-ner", "rotten-tomatoes") if (task, "deep") in by_key]
    planned = [
        (task, length, by_key[(task, "deep")]["lr"]) for task in length_tasks for length in scale.ablation_lengths
    ]
    results = runner.many(
        [
            (
                run_name(task, "deep", Point(lr, length), seed),
                settings_for(scale, task, "deep", Point(lr, length), seed),
            )
            for task, length, lr in planned
        ]
    )
    length_rows = [
        {
            "task": task,
            "prompt_length": length,
            "lr": lr,
            "metric": metrics["primary_metric"],
            "test": metrics["test"][metrics["primary_metric"]],
            "validation": metrics["validation"][metrics["primary_metric"]],
            "trainable_share": metrics["trainable_share"],
        }
        for (task, length, lr), metrics in zip(planned, results, strict=True)
    ]
    ner = by_key.get(("conll2003-ner", "deep"))
    depth_rows = []
    if ner:
        depth_settings = [
            (
                f"depth-{name.replace(' ', '')}",
                {
                    **settings_for(scale, "conll2003-ner", "deep", row_point(ner), seed),
                    **({} if layers is None else {"prompt_layers": layers}),  # all layers: the parity run itself
                },
            )
            for name, layers in scale.depth_layers.items()
        ]
        for (name, layers), metrics in zip(scale.depth_layers.items(), runner.many(depth_settings), strict=True):
            depth_rows.append(
                {
                    "layers": name,
                    "prompt_layers": layers,
                    "prompt_length": ner["prompt_length"],
                    "lr": ner["lr"],
                    "test": metrics["test"]["f1"],
                    "validation": metrics["validation"]["f1"],
                    "train_seconds": metrics["train_seconds"],
                }
            )
    return {"prompt_length": length_rows, "depth": depth_rows, "reparam": reparam_rows(parity_rows)}


def rows_of(results: Path, source: str, part: str) -> list[dict[str, Any]]:
    """The MiniLM rows a part builds on (parity's or data's), or a clear stop naming the part to run first."""
    path = results / f"{source}.json"
    if not path.is_file():
        raise SystemExit(f"the {part} part builds on {path}, which does not exist: run --parts {source} first")
    return [row for row in json.loads(path.read_text())["rows"] if backbone_of(row) == DEFAULT_BACKBONE]


def backbone_of(row: dict[str, Any]) -> str:
    return row.get("backbone", DEFAULT_BACKBONE)  # rows written before the second scale are MiniLM's


def write_parity(results: Path, setup: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """parity.json with this backbone's rows replaced and the other backbones' kept; ``setup`` is MiniLM's setup,
    ``setups`` every backbone's."""
    path = results / "parity.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    backbone = setup["scale"]["backbone"]
    kept = [row for row in earlier.get("rows", []) if backbone_of(row) != backbone]
    setups = {**earlier.get("setups", {}), backbone: setup}
    if "setup" in earlier:
        setups.setdefault(DEFAULT_BACKBONE, earlier["setup"])
    content = {"setup": setups.get(DEFAULT_BACKBONE, setup), "setups": setups, "rows": kept + rows}
    write_json(results, "parity.json", content)


def write_json(results: Path, name: str, content: dict[str, Any]) -> None:
    (results / name).write_text(json.dumps(content, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every part, reduced (about 15 minutes)")
    parser.add_argument(
        "--parts",
        default=None,
        help=f"comma-separated subset of {','.join(PARTS)} (default: all with --quick; "
        "without, all but longer, data and data-longer, which need hours beyond the 2.5 h of the others)",
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks the longer/data/data-longer parts may rerun (default: all), and those the "
        "multitask part trains together (default: conll2003-ner,conll2003-pos,conll2003-chunk)",
    )
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        choices=sorted(SCALES),
        help="the parity part on another backbone (mpnet-base: fine-tuning and deep on NER, chunking and sentiment, "
        "rows added to parity.json; fetch it with make backbones)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once, the cores shared among them")
    parser.add_argument("--resume", action="store_true", help="reuse runs finished by an earlier invocation")
    args = parser.parse_args()
    scale = QUICK if args.quick else SCALES[args.backbone]
    default_parts = "parity,ablations,longer,data,data-longer,multitask,cost" if args.quick else "parity,ablations,cost"
    if args.backbone != DEFAULT_BACKBONE:
        default_parts = "parity"
    parts = set((args.parts or default_parts).split(","))
    if unknown := parts - set(PARTS):
        parser.error(f"unknown part(s) {sorted(unknown)}; expected some of {', '.join(PARTS)}")
    if args.backbone != DEFAULT_BACKBONE and (args.quick or parts != {"parity"}):
        parser.error(f"--backbone {args.backbone} runs the full parity part only")
    only = set(args.tasks.split(",")) if args.tasks else None
    known = set(TASKS) | {"conll2003-pos"}  # the multitask part's third CoNLL task
    if only and (unknown := only - known):
        parser.error(f"unknown task(s) {sorted(unknown)}; expected some of {', '.join(sorted(known))}")
    results = RESULTS / "quick" if args.quick else RESULTS  # a quick run never overwrites the full results
    results.mkdir(parents=True, exist_ok=True)
    setup = {
        "mode": "quick" if args.quick else "full",
        "scale": scale.__dict__,
        "backbone": {"minilm-l6": "all-MiniLM-L6-v2 (packaged)", "mpnet-base": "all-mpnet-base-v2 (make backbones)"}[
            scale.backbone
        ],
        "date": time.strftime("%Y-%m-%d"),
        "jobs": args.jobs,
        "prompt_dropout": PROMPT_DROPOUT,
    }
    journal = "runs.jsonl" if scale.backbone == DEFAULT_BACKBONE else f"runs-{scale.backbone}.jsonl"
    runner = Runner(args.jobs, args.resume, results, journal=journal)
    import ptuning.train  # noqa: F401 - imported once here, inherited by every forked run

    started = time.perf_counter()
    if "parity" in parts:
        parity(scale, runner, lambda rows: write_parity(results, setup, rows))
    if "ablations" in parts:
        rows = rows_of(results, "parity", "ablations")
        write_json(results, "ablations.json", {"setup": setup, **ablations(scale, runner, rows)})
    if "longer" in parts:
        rows = rows_of(results, "parity", "longer")
        write_json(results, "longer.json", {"setup": setup, **longer(scale, runner, rows, only)})
    if "data" in parts:
        rows = rows_of(results, "parity", "data")
        write_json(results, "data.json", {"setup": setup, **more_data(scale, runner, rows, only)})
    if "data-longer" in parts:
        rows = rows_of(results, "data", "data-longer")
        write_json(results, "data_longer.json", {"setup": setup, **more_data_longer(scale, runner, rows, only)})
    if "multitask" in parts:
        import multitask

        chosen = tuple(sorted(only, key=multitask.TASKS.index)) if only else multitask.DEFAULT_TASKS
        checkpoints = results / "logs" / "checkpoints"
        write_json(
            results, "multitask.json", {"setup": setup, **multitask.multitask(scale, runner, chosen, checkpoints)}
        )
    if "cost" in parts:
        import cost

        print("cost", flush=True)
        result = cost.measure(scale.cost_repeats, scale.cost_sentences)
        print(cost.summary(result), flush=True)
        write_json(results, "cost.json", result)
    import report

    report.write(results)
    print(
        f"study ({setup['mode']}) done in {(time.perf_counter() - started) / 60:.1f} min; see {results / 'REPORT.md'}"
    )


if __name__ == "__main__":
    main()
