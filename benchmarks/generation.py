"""Prefix-Tuning for generation on a real decoder (SmolLM2-135M-Instruct, fetched by ``make backbones``): a deep prefix
against shallow prompt tuning, fine-tuning and zero-shot prompting (an instruction read by the frozen model), on two
generation tasks made from the packaged data:

- ``ner-generation``: a CoNLL-2003 sentence -> its entities written as "Peter Blackburn (PER); Brussels (LOC)"
  ("none" when it has none), scored by entity F1 over (text, type) pairs (the same entities seqeval scores);
- ``sentiment-generation``: a rotten-tomatoes review -> "positive" or "negative" (T5's text-to-text framing of
  classification), scored by exact match.

Each input is the user's message in the model's chat template, under the same instruction for every method. Each
training run is one ``ptuning train --task generation`` in a forked process, journaled in
``benchmarks/results/logs/generation.jsonl`` (``--resume`` continues an interrupted study); each row of
``benchmarks/results/generation.json`` is one run: task, method, seed, scores, trainable share, checkpoint size.

    python benchmarks/generation.py [--quick] [--resume] [--train-examples N] [--eval-examples N] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from protocol import (
    RESULTS,
    Runner,
    add_budget_flags,
    budget_changes,
    write_study,
)  # benchmarks/ is the script's folder, on sys.path

from ptuning.data.packaged import load_packaged
from ptuning.generation_metrics import entities_from_tags, format_entities
from ptuning.training.run_metrics import single_task_metrics

BACKBONE = "smollm2-135m"
DATA = RESULTS / "logs" / "generation-data"


@dataclass(frozen=True)
class GenerationTask:
    name: str
    instruction: str  # the template: the input goes at {text}
    parser: str | None
    max_new_tokens: int
    metric: str  # what the table reports: the parser's F1, or exact match for a one-word answer


TASKS = (
    GenerationTask(
        "ner-generation",
        "List the named entities of the sentence with their types (PER, ORG, LOC or MISC), as "
        '"Peter Blackburn (PER); Brussels (LOC)", or "none".\n\nSentence: {text}',
        "entities",
        48,
        "entities_f1",
    ),
    GenerationTask(
        "sentiment-generation",
        "Is this movie review positive or negative? Answer with one word.\n\n{text}",
        None,
        4,
        "exact_match",
    ),
)
START_TEXT = "Follow the instruction."  # where the prefix starts: the model's own keys/values of these tokens
METHODS: dict[str, dict[str, Any]] = {
    # the prefix, started from real tokens' keys/values (a random start stayed at the majority class on this model)
    "deep": {
        "method": "deep",
        "lr": 1e-2,
        "backbone_dropout": False,
        "prompt_dropout": 0.0,
        "prompt_init": "text",
        "prompt_init_text": START_TEXT,
        "shift_positions": True,
    },
    # prompt tuning: vectors before the input only, from the same tokens' embeddings, at the decoder study's rate
    "shallow": {
        "method": "shallow",
        "lr": 3e-2,
        "backbone_dropout": False,
        "prompt_init": "text",
        "prompt_init_text": START_TEXT,
    },
    "finetune": {"method": "finetune", "lr": 5e-5},
    "prompting": {"method": "prompting"},
}


@dataclass(frozen=True)
class Budget:
    train_examples: int
    eval_examples: int
    epochs: float
    seeds: tuple[int, ...]
    batch_size: int = 16
    prompt_length: int = 16


FULL = Budget(train_examples=1000, eval_examples=200, epochs=1, seeds=(0, 1, 2))
QUICK = Budget(train_examples=32, eval_examples=16, epochs=1, seeds=(0,))


def write_data() -> dict[str, dict[str, Path]]:
    """The two tasks' JSON-lines splits, written once from the packaged data (every example; runs subsample)."""
    files: dict[str, dict[str, Path]] = {}
    ner, sentiment = load_packaged("conll2003-ner"), load_packaged("rotten-tomatoes")
    for task, splits in (("ner-generation", ner), ("sentiment-generation", sentiment)):
        files[task] = {}
        for split in ("train", "validation", "test"):
            path = DATA / f"{task}-{split}.jsonl"
            files[task][split] = path
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w") as out:
                for example in getattr(splits, split):
                    if task == "ner-generation":
                        record = {
                            "input": " ".join(example.words),
                            "target": format_entities(entities_from_tags(example.words, example.tags)),
                        }
                    else:
                        record = {
                            "input": example.text,
                            "target": "positive" if example.label == "fresh" else "negative",
                        }
                    out.write(json.dumps(record) + "\n")
    return files


def settings_for(budget: Budget, task: GenerationTask, files: dict[str, Path], method: str, seed: int | None):
    settings = {
        "model": BACKBONE,
        "task": "generation",
        "train": str(files["train"]),
        "validation": str(files["validation"]),
        "test": str(files["test"]),
        "max_train_samples": budget.train_examples,
        "max_eval_samples": budget.eval_examples,
        "epochs": budget.epochs,
        "batch_size": budget.batch_size,
        "eval_batch_size": 32,
        "prompt_length": budget.prompt_length,
        "template": task.instruction,
        "chat_template": True,
        "parser": task.parser,
        "max_new_tokens": task.max_new_tokens,
        **METHODS[method],
    }
    if seed is not None:
        settings["seed"] = seed
    return settings


def row(task: GenerationTask, method: str, seed: int | None, metrics: dict[str, Any]) -> dict[str, Any]:
    result = single_task_metrics(metrics)
    return {
        "backbone": BACKBONE,
        "task": task.name,
        "method": method,
        "seed": seed,
        "metric": task.metric,
        "validation": result["validation"],
        "test": result["test"],
        "trainable_share": metrics["trainable_share"],
        "checkpoint_bytes": metrics.get("checkpoint_bytes"),
        "train_seconds": metrics["train_seconds"],
        "steps": metrics["steps"],
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in rows:
        groups.setdefault((entry["task"], entry["method"]), []).append(entry)
    result = []
    for (task, method), group in groups.items():
        primary = group[0]["metric"]
        tests = [entry["test"][primary] for entry in group]
        result.append(
            {
                "task": task,
                "method": method,
                "metric": primary,
                "runs": len(group),
                "test_mean": statistics.fmean(tests),
                "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                "validation_mean": statistics.fmean(entry["validation"][primary] for entry in group),
                "test_rougeL_mean": statistics.fmean(entry["test"]["rougeL"] for entry in group),
                "trainable_share": group[0]["trainable_share"],
                "checkpoint_bytes": group[0]["checkpoint_bytes"],
            }
        )
    return result


def markdown(rows: list[dict[str, Any]], budget: Budget) -> str:
    lines = [
        "| task (test metric) | method | runs | test | validation | test ROUGE-L | trainable | checkpoint |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in rows:
        size = "" if entry["checkpoint_bytes"] is None else f"{entry['checkpoint_bytes'] / 1e6:.2f} MB"
        lines.append(
            f"| {entry['task']} ({entry['metric']}) | {entry['method']} | {entry['runs']} | {entry['test_mean']:.1f} ± "
            f"{entry['test_std']:.1f} | {entry['validation_mean']:.1f} | {entry['test_rougeL_mean']:.1f} | "
            f"{100 * entry['trainable_share']:.3f}% | {size} |"
        )
    shrunk = f"{budget.train_examples} training, {budget.eval_examples} validation and test examples"
    return "\n".join(lines) + f"\n\nBudget: {shrunk}, {budget.epochs:g} epoch(s), batch {budget.batch_size}."


def study(budget: Budget, runner: Runner, tasks: tuple[str, ...], methods: tuple[str, ...]) -> list[dict[str, Any]]:
    files = write_data()
    planned = []
    for task in (task for task in TASKS if task.name in tasks):
        for method in methods:
            for seed in [None] if method == "prompting" else budget.seeds:  # prompting draws nothing
                settings = settings_for(budget, task, files[task.name], method, seed)
                planned.append((task, method, seed, (f"{task.name}-{method}-{seed}", settings)))
    results = runner.many([named for *_, named in planned])
    return [row(task, method, seed, metrics) for (task, method, seed, _), metrics in zip(planned, results, strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_flags(parser, "generation")
    parser.add_argument("--tasks", default=",".join(task.name for task in TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    changes = budget_changes(args)
    budget = Budget(**{**asdict(budget), **changes})
    runner = Runner(
        jobs=args.jobs, resume=args.resume, journal="generation-quick.jsonl" if args.quick else "generation.jsonl"
    )
    started = time.perf_counter()
    rows = study(budget, runner, tuple(args.tasks.split(",")), tuple(args.methods.split(",")))
    output = write_study(
        "generation",
        args,
        argv,
        {
            "backbone": BACKBONE,
            "budget": asdict(budget),
            "shrunk": "training and evaluation subsampled, no learning-rate search (one rate per method)",
            "tasks": [asdict(task) for task in TASKS],
            "methods": METHODS,
            "summary": summary(rows),
            "rows": rows,
        },
    )
    print(markdown(summary(rows), budget))
    print(f"{len(rows)} rows in {time.perf_counter() - started:.0f} s: {output}")


if __name__ == "__main__":
    main()
