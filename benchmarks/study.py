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
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import (  # noqa: E402 - the bench scripts' folder is on the path first
    DEFAULT_BACKBONE,
    PROMPT_DROPOUT,
    QUICK,
    RESULTS,
    SCALES,
    TASKS,
    Point,
    Runner,
    Scale,
    search_space,
    seed_summary,
    settings_for,
    write_json,
)
from report import reparam_rows  # noqa: E402

from ptuning.prompts.backbone import stored_share  # noqa: E402
from ptuning.training.run_metrics import single_task_metrics  # noqa: E402

PARTS = ("parity", "ablations", "longer", "data", "data-longer", "multitask", "cost")


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


def parity_row(
    task: str, method: str, point: Point, grid: list, seeds: tuple[int, ...], seed_runs: list
) -> dict[str, Any]:
    """One row of parity.json: test mean and std over the seeds of one setting, with its costs."""
    best_metrics = seed_runs[0]
    primary = single_task_metrics(best_metrics)["primary_metric"]
    return {
        "backbone": best_metrics["recipe"]["model"],
        "task": task,
        "method": method,
        "metric": primary,
        **seed_summary([single_task_metrics(m)["test"][primary] for m in seed_runs]),
        "seeds": list(seeds),
        "validation": statistics.fmean(single_task_metrics(m)["validation"][primary] for m in seed_runs),
        **point._asdict(),
        # as trained (the point leaves it to the method's default when None)
        "backbone_dropout": recipe_setting(best_metrics["recipe"], "backbone_dropout", True),
        "grid": [
            {**grid_point._asdict(), "validation": single_task_metrics(m)["validation"].get(primary)}
            for grid_point, m in grid
        ],
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
            primary = single_task_metrics(grid[0][1])["primary_metric"]
            best[method] = max(grid, key=lambda entry: single_task_metrics(entry[1])["validation"].get(primary, -1.0))
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
        _length_row(task, length, lr, metrics) for (task, length, lr), metrics in zip(planned, results, strict=True)
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
            result = single_task_metrics(metrics)
            depth_rows.append(
                {
                    "layers": name,
                    "prompt_layers": layers,
                    "prompt_length": ner["prompt_length"],
                    "lr": ner["lr"],
                    "test": result["test"]["f1"],
                    "validation": result["validation"]["f1"],
                    "train_seconds": metrics["train_seconds"],
                }
            )
    return {"prompt_length": length_rows, "depth": depth_rows, "reparam": reparam_rows(parity_rows)}


def _length_row(task: str, length: int, lr: float, metrics: dict[str, Any]) -> dict[str, Any]:
    """A row of the prompt-length ablation: one run's scores."""
    result = single_task_metrics(metrics)
    primary = result["primary_metric"]
    return {
        "task": task,
        "prompt_length": length,
        "lr": lr,
        "metric": primary,
        "test": result["test"][primary],
        "validation": result["validation"][primary],
        "trainable_share": metrics["trainable_share"],
    }


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
        help="the parity part on another backbone (mpnet-base: fine-tuning and deep on NER, chunking and sentiment; "
        "smollm2-135m: on sentiment; rows added to parity.json; fetch them with make backbones)",
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
        "backbone": {
            "minilm-l6": "all-MiniLM-L6-v2 (packaged)",
            "mpnet-base": "all-mpnet-base-v2 (make backbones)",
            "smollm2-135m": "SmolLM2-135M-Instruct (make backbones)",
        }[scale.backbone],
        "date": time.strftime("%Y-%m-%d"),
        "jobs": args.jobs,
        "prompt_dropout": PROMPT_DROPOUT,
    }
    journal = "runs.jsonl" if scale.backbone == DEFAULT_BACKBONE else f"runs-{scale.backbone}.jsonl"
    runner = Runner(args.jobs, args.resume, results, journal=journal)
    import ptuning.training.run  # noqa: F401 - imported once here, inherited by every forked run

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
