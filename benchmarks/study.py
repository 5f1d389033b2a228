"""The study: the paper's findings at CPU scale on the packaged MiniLM-L6 and the packaged real datasets.

    python benchmarks/study.py --quick     # every part, reduced: about 15 minutes on 2 cores
    python benchmarks/study.py             # the full run: about 2.5 hours on 2 cores

Parts: the parity table (6 methods x 4 tasks, a learning-rate / prompt-length search on validation,
then seeds), ablations (prompt length, depth, reparameterization), and cost (benchmarks/cost.py). Each
training run is a forked process (its own peak RSS), reading the data subsample and settings written in
the report. Results: benchmarks/results/{parity,ablations,cost}.json, REPORT.md and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("rotten-tomatoes", "conll2003-ner", "conll2003-chunk", "conll2003-qa")
METHODS: dict[str, dict[str, Any]] = {
    "finetune": {"method": "finetune"},
    "linear-probe": {"method": "linear-probe"},
    "shallow": {"method": "shallow"},
    "ptuning-v1": {"method": "ptuning-v1", "reparam": "lstm"},
    "deep": {"method": "deep"},
    "deep-mlp": {"method": "deep", "reparam": "mlp"},
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
    batch_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)


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
        "deep": (1e-2,),
        "deep-mlp": (3e-3,),
    },
    prompt_lengths=(16,),
    ablation_lengths=(4, 32, 128),
    depth_layers={"all 6": None, "top 3": [3, 4, 5], "bottom 3": [0, 1, 2]},
    cost_repeats=5,
    cost_sentences=512,
)
FULL = Scale(
    train_examples=1500,
    eval_examples=1000,
    epochs=2,
    seeds=(0, 1, 2),
    learning_rates={
        "finetune": (5e-5, 1e-4),
        "linear-probe": (5e-3, 2e-2),
        "shallow": (1e-2, 3e-2),
        "ptuning-v1": (3e-3, 1e-2),
        "deep": (1e-2, 3e-2),
        "deep-mlp": (1e-3, 3e-3),
    },
    prompt_lengths=(16, 64),  # searched for deep and deep-mlp; shallow and ptuning-v1 use the first
    ablation_lengths=(4, 8, 16, 32, 64, 128),
    depth_layers={"all 6": None, "top 3": [3, 4, 5], "bottom 3": [0, 1, 2], "top 1": [5], "bottom 1": [0]},
    cost_repeats=9,
    cost_sentences=2048,
)


def _child(settings: dict[str, Any], queue) -> None:
    """One training run in a forked process; its output goes to a log file, its metrics to the queue."""
    log = open(settings.pop("log"), "w")  # noqa: SIM115 - stays open for the life of this process
    sys.stdout = sys.stderr = log
    from ptuning.train import Recipe, train

    try:
        with tempfile.TemporaryDirectory() as folder:
            queue.put(train(Recipe(**settings, output=folder)))
    except BaseException as error:  # the parent waits on the queue: always answer
        queue.put({"error": f"{type(error).__name__}: {error}"})
        raise


def run(settings: dict[str, Any], name: str) -> dict[str, Any]:
    """Train with ``settings`` (Recipe fields) in a fresh forked process and return its metrics."""
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=({**settings, "log": str(logs / f"{name}.log")}, queue))
    started = time.perf_counter()
    process.start()
    metrics = queue.get()
    process.join()
    if "error" in metrics:
        raise RuntimeError(f"run {name} failed ({metrics['error']}); see {logs / name}.log")
    primary = metrics["primary_metric"]
    print(
        f"  {name}: validation {primary} {metrics['validation'].get(primary, float('nan')):.2f}, "
        f"test {metrics['test'].get(primary, float('nan')):.2f} ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return metrics


def base_settings(scale: Scale, task: str) -> dict[str, Any]:
    return {
        "dataset": task,
        "max_train_samples": scale.train_examples,
        "max_eval_samples": scale.eval_examples,
        "epochs": scale.epochs,
        "batch_size": scale.batch_size,
        "eval_batch_size": 64,
    }


def parity(scale: Scale) -> list[dict[str, Any]]:
    """Per task and method: search lr (and prompt length) on validation with the first seed, then all seeds."""
    rows = []
    for task in TASKS:
        for method, method_settings in METHODS.items():
            print(f"{task} / {method}", flush=True)
            lengths = (
                scale.prompt_lengths
                if method in ("deep", "deep-mlp")
                else scale.prompt_lengths[:1]
                if method in PROMPTED
                else (None,)
            )
            grid = []
            for lr in scale.learning_rates[method]:
                for length in lengths:
                    settings = {**base_settings(scale, task), **method_settings, "lr": lr, "seed": scale.seeds[0]}
                    if length is not None:
                        settings["prompt_length"] = length
                    metrics = run(settings, f"parity-{task}-{method}-lr{lr}-P{length}-s{scale.seeds[0]}")
                    grid.append((settings, metrics))
            primary = grid[0][1]["primary_metric"]
            best_settings, best_metrics = max(grid, key=lambda pair: pair[1]["validation"].get(primary, -1.0))
            seed_runs = [best_metrics] + [
                run({**best_settings, "seed": seed}, f"parity-{task}-{method}-best-s{seed}") for seed in scale.seeds[1:]
            ]
            scores = [m["test"][primary] for m in seed_runs]
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "metric": primary,
                    "mean": statistics.fmean(scores),
                    "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                    "seeds": list(scale.seeds),
                    "scores": scores,
                    "validation": statistics.fmean(m["validation"][primary] for m in seed_runs),
                    "lr": best_settings["lr"],
                    "prompt_length": best_settings.get("prompt_length"),
                    "grid": [
                        {
                            "lr": s["lr"],
                            "prompt_length": s.get("prompt_length"),
                            "validation": m["validation"].get(primary),
                        }
                        for s, m in grid
                    ],
                    "trainable_parameters": best_metrics["trainable_parameters"],
                    "trainable_share": best_metrics["trainable_share"],
                    "stored_share": best_metrics["stored_share"],
                    "train_seconds": statistics.fmean(m["train_seconds"] for m in seed_runs),
                    "peak_rss_mb": max(m["peak_rss_mb"] for m in seed_runs),
                    "checkpoint_bytes": best_metrics["checkpoint_bytes"],
                }
            )
    return rows


def ablations(scale: Scale, parity_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompt length on NER and sentiment; depth on NER; reparameterization per task (from the parity runs)."""
    seed = scale.seeds[0]
    length_rows = []
    for task in ("conll2003-ner", "rotten-tomatoes"):
        for length in scale.ablation_lengths:
            settings = {
                **base_settings(scale, task),
                "method": "deep",
                "lr": 1e-2,
                "prompt_length": length,
                "seed": seed,
            }
            metrics = run(settings, f"length-{task}-P{length}")
            length_rows.append(
                {
                    "task": task,
                    "prompt_length": length,
                    "metric": metrics["primary_metric"],
                    "test": metrics["test"][metrics["primary_metric"]],
                    "validation": metrics["validation"][metrics["primary_metric"]],
                    "trainable_share": metrics["trainable_share"],
                }
            )
    depth_rows = []
    for name, layers in scale.depth_layers.items():
        settings = {
            **base_settings(scale, "conll2003-ner"),
            "method": "deep",
            "lr": 1e-2,
            "prompt_length": 16,
            "prompt_layers": layers,
            "seed": seed,
        }
        metrics = run(settings, f"depth-{name.replace(' ', '')}")
        depth_rows.append(
            {
                "layers": name,
                "prompt_layers": layers,
                "test": metrics["test"]["f1"],
                "validation": metrics["validation"]["f1"],
                "train_seconds": metrics["train_seconds"],
            }
        )
    by_key = {(row["task"], row["method"]): row for row in parity_rows}
    reparam_rows = [
        {
            "task": task,
            "flat": by_key[(task, "deep")]["mean"],
            "mlp": by_key[(task, "deep-mlp")]["mean"],
            "metric": by_key[(task, "deep")]["metric"],
        }
        for task in TASKS
    ]
    return {"prompt_length": length_rows, "depth": depth_rows, "reparam": reparam_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every part, reduced (about 15 minutes)")
    parser.add_argument("--parts", default="parity,ablations,cost", help="comma-separated subset to run")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    parts = set(args.parts.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    setup = {
        "mode": "quick" if args.quick else "full",
        "scale": scale.__dict__,
        "backbone": "all-MiniLM-L6-v2 (packaged)",
        "date": time.strftime("%Y-%m-%d"),
    }
    import ptuning.train  # noqa: F401 - imported once here, inherited by every forked run

    started = time.perf_counter()
    if "parity" in parts:
        rows = parity(scale)
        (RESULTS / "parity.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    if "ablations" in parts:
        rows = json.loads((RESULTS / "parity.json").read_text())["rows"]
        result = ablations(scale, rows)
        (RESULTS / "ablations.json").write_text(json.dumps({"setup": setup, **result}, indent=2) + "\n")
    if "cost" in parts:
        import cost

        print("cost", flush=True)
        result = cost.measure(scale.cost_repeats, scale.cost_sentences)
        print(cost.summary(result), flush=True)
        (RESULTS / "cost.json").write_text(json.dumps(result, indent=2) + "\n")
    import report

    report.write(RESULTS)
    print(
        f"study ({setup['mode']}) done in {(time.perf_counter() - started) / 60:.1f} min; see {RESULTS / 'REPORT.md'}"
    )


if __name__ == "__main__":
    main()
