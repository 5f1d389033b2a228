"""P-Tuning v2 on a real decoder LM (SmolLM2-135M-Instruct, fetched by ``make backbones``) against the seeds'
baselines: discrete prompting (no training: a template scored by label words, the best of several templates chosen
on validation), deep prompts with a linear head and with a verbalizer head (the LM head restricted to the label
words), full fine-tuning, and shallow prompt tuning.

Sentiment (rotten-tomatoes) runs every method; NER (conll2003-ner) runs the methods that tag tokens (a verbalizer
scores one label per text). Each training run is one ``ptuning train`` in a forked process, journaled in
``benchmarks/results/logs/decoder.jsonl`` so ``--resume`` continues an interrupted study; each row of
``benchmarks/results/decoder.json`` is one run: backbone, task, method, head, seed, template, scores.

    python benchmarks/decoder.py [--quick] [--resume] [--train-examples N] [--eval-examples N] [--seeds 0,1,2]

The default budget (subsamples of 1,000 training and 200 evaluation examples, 1 epoch, batch 16, two runs at a time)
keeps a run within a quarter of an hour on 2 cores; what was shrunk is written into the JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from protocol import (
    Runner,
    add_budget_flags,
    budget_changes,
    write_study,
)  # benchmarks/ is the script's folder, on sys.path
from report import prompt_start

from ptuning.training.run_metrics import single_task_metrics

BACKBONE = "smollm2-135m"
SENTIMENT, NER = "rotten-tomatoes", "conll2003-ner"


@dataclass(frozen=True)
class Template:
    """A discrete prompt: the template, its label words (verbatim: a BPE token after a colon carries its space)
    and whether the instruct model's chat template wraps it."""

    name: str
    template: str
    verbalizer: str
    chat_template: bool = False


TEMPLATES = (
    Template("review-colon", "Review: {text}\nSentiment (positive or negative):", "fresh= positive,rotten= negative"),
    Template("all-in-all", "{text} All in all, the movie was", "fresh= good,rotten= bad"),
    Template(
        "chat-one-word",
        "Is this movie review positive or negative? Answer with one word.\n\n{text}",
        "fresh=positive,rotten=negative",
        chat_template=True,
    ),
)
# the trained verbalizer head reads the first template (the one a user would write first)
VERBALIZER_TEMPLATE = TEMPLATES[0]


@dataclass(frozen=True)
class Method:
    name: str
    head: str
    settings: dict[str, Any]
    tasks: tuple[str, ...]
    start: str = "random"  # where the prompt starts: random (the reference code's N(0, 1)) or text (START_TEXTS)

    @property
    def label(self) -> str:
        """Its name for --methods and the journal: deep-linear, deep-text-verbalizer, ..."""
        return "-".join([self.name, *([self.start] if self.start != "random" else []), self.head])


DEEP = {"method": "deep", "lr": 1e-2, "backbone_dropout": False}
# a deep prompt started from the frozen model's own keys/values of a task instruction, positions shifted past it,
# so that at step 0 the model reads the instruction before the input (Li and Liang's initialization); no prompt
# dropout (as the parity study); a linear head at the linear probe's rate, the prompt at 1e-2 (chosen on seed 0's
# validation among 1e-3 and 1e-2: REPORT.md, pilots)
DEEP_TEXT_LINEAR = {**DEEP, "head_lr": 5e-3, "prompt_dropout": 0.0}
DEEP_TEXT_VERBALIZER = {**DEEP, "prompt_dropout": 0.0}
START_TEXTS = {
    SENTIMENT: "Classify the sentiment of the following movie review as positive or negative.",
    NER: "Find the names of people, organizations, locations and other entities in the following sentence.",
}
METHODS = (
    Method("deep", "linear", DEEP, (SENTIMENT, NER)),
    Method("deep", "verbalizer", DEEP, (SENTIMENT,)),
    Method("deep", "linear", DEEP_TEXT_LINEAR, (SENTIMENT, NER), start="text"),
    Method("deep", "verbalizer", DEEP_TEXT_VERBALIZER, (SENTIMENT,), start="text"),
    Method("finetune", "linear", {"method": "finetune", "lr": 5e-5}, (SENTIMENT, NER)),
    Method("shallow", "linear", {"method": "shallow", "lr": 3e-2}, (SENTIMENT,)),
)


@dataclass(frozen=True)
class Budget:
    train_examples: int
    eval_examples: int
    epochs: float
    seeds: tuple[int, ...]
    batch_size: int = 16
    prompt_length: int = 16
    prompt_lr: float | None = None  # the deep and shallow prompts' learning rate instead of each method's
    methods: tuple[str, ...] | None = None  # only these (prompting, deep-linear, ...); None: every one
    tasks: tuple[str, ...] = (SENTIMENT, NER)


FULL = Budget(train_examples=1000, eval_examples=200, epochs=1, seeds=(0, 1, 2))
QUICK = Budget(train_examples=32, eval_examples=16, epochs=1, seeds=(0,))


def base_settings(budget: Budget, task: str) -> dict[str, Any]:
    return {
        "model": BACKBONE,
        "dataset": task,
        "max_train_samples": budget.train_examples,
        "max_eval_samples": budget.eval_examples,
        "epochs": budget.epochs,
        "batch_size": budget.batch_size,
        "eval_batch_size": 32,
        "prompt_length": budget.prompt_length,
    }


def template_settings(template: Template) -> dict[str, Any]:
    return {"template": template.template, "verbalizer": template.verbalizer, "chat_template": template.chat_template}


def row(task: str, method: str, head: str, seed: int | None, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    result = single_task_metrics(metrics)
    primary = result["primary_metric"]
    return {
        "backbone": BACKBONE,
        "task": task,
        "method": method,
        "head": head,
        "seed": seed,
        **extra,
        "primary_metric": primary,
        "validation": result["validation"].get(primary),
        "test": result["test"].get(primary),
        "trainable_share": metrics["trainable_share"],
        "train_seconds": metrics["train_seconds"],
        "steps": metrics["steps"],
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Test score mean and spread over seeds, per task, method and head (prompting: the template chosen on
    validation)."""
    groups: dict[tuple[str, str, str, str | None], list[dict[str, Any]]] = {}
    for entry in rows:
        if entry["method"] == "prompting" and not entry["chosen"]:
            continue
        groups.setdefault((entry["task"], entry["method"], entry["head"], entry.get("start")), []).append(entry)
    return [
        {
            "task": task,
            "method": method,
            "head": head,
            "start": start,
            "runs": len(group),
            "test_mean": statistics.fmean(entry["test"] for entry in group),
            "test_std": statistics.stdev([entry["test"] for entry in group]) if len(group) > 1 else 0.0,
            "validation_mean": statistics.fmean(entry["validation"] for entry in group),
            "trainable_share": group[0]["trainable_share"],
        }
        for (task, method, head, start), group in groups.items()
    ]


def markdown(summary_rows: list[dict[str, Any]], budget: Budget) -> str:
    """The summary as the README and REPORT show it: test score, mean ± std over the seeds, per task and method."""
    lines = [
        "| task (test metric) | method | head | prompt start | runs | test | validation | trainable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in summary_rows:
        metric = "accuracy" if entry["task"] == SENTIMENT else "f1"
        lines.append(
            f"| {entry['task']} ({metric}) | {entry['method']} | {entry['head']} | {prompt_start(entry)} | "
            f"{entry['runs']} | "
            f"{entry['test_mean']:.1f} ± {entry['test_std']:.1f} | {entry['validation_mean']:.1f} | "
            f"{100 * entry['trainable_share']:.3f}% |"
        )
    shrunk = f"{budget.train_examples} training, {budget.eval_examples} validation and test examples, "
    return "\n".join(lines) + f"\n\nBudget: {shrunk}{budget.epochs:g} epoch(s), batch {budget.batch_size}."


def chosen(budget: Budget, name: str) -> bool:
    return budget.methods is None or name in budget.methods


def study(budget: Budget, runner: Runner) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    # discrete prompting trains nothing and draws nothing at random: one run per template, the best on validation
    prompting = []
    for template in TEMPLATES if chosen(budget, "prompting") else ():
        settings = {**base_settings(budget, SENTIMENT), "method": "prompting", **template_settings(template)}
        metrics = runner.one(settings, f"prompting-{template.name}")
        prompting.append(row(SENTIMENT, "prompting", "verbalizer", None, metrics, template=template.name))
    best = max(prompting, key=lambda entry: entry["validation"], default=None)
    rows += [{**entry, "chosen": entry is best} for entry in prompting]
    trained = []
    for method in METHODS:
        if not chosen(budget, method.label):
            continue
        for task in (task for task in method.tasks if task in budget.tasks):
            for seed in budget.seeds:
                settings = {**base_settings(budget, task), **method.settings, "seed": seed}
                if budget.prompt_lr is not None and method.name in ("deep", "shallow") and method.start == "random":
                    settings["lr"] = budget.prompt_lr
                if method.head == "verbalizer":
                    settings.update(head="verbalizer", **template_settings(VERBALIZER_TEMPLATE))
                if method.start == "text":
                    settings.update(prompt_init="text", prompt_init_text=START_TEXTS[task], shift_positions=True)
                trained.append((task, method, seed, (f"{task}-{method.label}-{seed}", settings)))
    results = runner.many([named for *_, named in trained])
    rows += [
        row(task, method.name, method.head, seed, metrics, start=method.start)
        for (task, method, seed, _), metrics in zip(trained, results, strict=True)
    ]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_flags(parser, "decoder")
    parser.add_argument("--prompt-lr", type=float, help="deep and shallow prompts' learning rate (default: 1e-2, 3e-2)")
    parser.add_argument("--methods", help="only these, comma-separated: prompting, deep-linear, deep-verbalizer, ...")
    parser.add_argument("--tasks", help=f"only these, comma-separated (default {SENTIMENT},{NER})")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    changes = budget_changes(args)
    if args.prompt_lr:
        changes["prompt_lr"] = args.prompt_lr
    if args.methods:
        changes["methods"] = tuple(args.methods.split(","))
    if args.tasks:
        changes["tasks"] = tuple(args.tasks.split(","))
    budget = Budget(**{**asdict(budget), **changes})
    journal = "decoder-quick.jsonl" if args.quick else "decoder.jsonl"
    runner = Runner(jobs=args.jobs, resume=args.resume, journal=journal)
    started = time.perf_counter()
    rows = study(budget, runner)
    output = write_study(
        "decoder",
        args,
        argv,
        {
            "backbone": BACKBONE,
            "budget": asdict(budget),
            "shrunk": "training and evaluation subsampled, no learning-rate search (one rate per method)",
            "templates": [asdict(template) for template in TEMPLATES],
            "summary": summary(rows),
            "rows": rows,
        },
    )
    print(markdown(summary(rows), budget))
    print(f"{len(rows)} rows in {time.perf_counter() - started:.0f} s: {output}")


if __name__ == "__main__":
    main()
