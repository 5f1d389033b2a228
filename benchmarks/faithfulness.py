"""Faithfulness: ptuning's methods against an independent implementation, trained alike.

    python benchmarks/faithfulness.py                      # deep prompts vs PEFT prefix tuning (MiniLM): ~10 min
    python benchmarks/faithfulness.py --compare finetune   # fine-tuning vs transformers' own model (MPNet): ~40 min
    python benchmarks/faithfulness.py --resume             # reuse the runs an interrupted invocation finished
    python benchmarks/faithfulness.py --seeds 0 --max-steps 10 --out /tmp/faith   # a smoke run

Both implementations go through the same loop: the study's parity budget (1,000 training examples, 3 epochs of
batch 16, 500 validation and test examples), each task's learning rate (and prompt length) from parity.json's rows
of that method and backbone, the head's dropout 0.1 in both, the same Trainer arguments (AdamW, linear schedule,
length-grouped batches, seed), validation each epoch keeping the best epoch, and the same scorer.

- ``prefix``: ptuning's ``deep`` (flat prompt, positions shifted as PEFT numbers the text after the prefix, prompt
  dropout 0, backbone dropout off) against PEFT's ``PrefixTuningConfig(prefix_projection=False)`` on
  ``AutoModelFor{Sequence,Token}Classification`` (its dropout probabilities at 0), on the packaged MiniLM-L6.
- ``finetune``: ptuning's ``finetune`` baseline (backbone dropout off, as the second-scale study ran it) against
  ``AutoModelForTokenClassification`` itself, on MPNet-base, where the study saw fine-tuning collapse on some seeds.

Three arms per seed: ptuning and the reference each initialized by itself from the seed (independent: the gap
carries seed noise), and the reference started from ptuning's initial prompt and head (paired: the gap is the
implementations' training alone). Before training, each reference run is checked to be the same function as
ptuning's with ptuning's weights copied in (logits within 1e-4), and every run records a digest of its batches and
counts the parameters its loss reaches, so like-for-like is shown rather than assumed. Writes
benchmarks/results/faithfulness.json/.png (prefix) or faithfulness-finetune.json/.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import FULL, RESULTS, Runner, seed_summary, write_json  # noqa: E402

PEFT_TASK_TYPES = {"sequence-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS"}
HEAD_DROPOUT = 0.1  # ptuning's head dropout (the backbone's hidden dropout) and the reference's classifier dropout


@dataclass(frozen=True)
class Comparison:
    """One of ptuning's methods on one backbone against a reference implementation of it."""

    method: str
    backbone: str
    reference: str  # "peft" | "transformers"
    tasks: tuple[str, ...]
    output: str  # file stem of the results, the plot and the journal

    @property
    def arms(self) -> tuple[tuple[str, str], ...]:
        """(implementation, start): each initialized by itself from the seed, and the reference started from
        ptuning's initial prompt and head."""
        return (("ptuning", "own"), (self.reference, "own"), (self.reference, "shared"))


COMPARISONS = {
    "prefix": Comparison("deep", "minilm-l6", "peft", ("rotten-tomatoes", "conll2003-ner"), "faithfulness"),
    "finetune": Comparison("finetune", "mpnet-base", "transformers", ("conll2003-ner",), "faithfulness-finetune"),
}
PREFIX = COMPARISONS["prefix"]


def chosen_settings(parity: Path, comparison: Comparison, task: str) -> dict[str, Any]:
    """The parity study's learning rate (and prompt length) for ``task`` with the comparison's method and backbone
    (chosen on validation)."""
    rows = json.loads(parity.read_text())["rows"] if parity.is_file() else []
    for row in rows:
        if (row["task"], row["method"], row.get("backbone", "minilm-l6")) == (
            task,
            comparison.method,
            comparison.backbone,
        ):
            return {"lr": row["lr"], **({"prompt_length": row["prompt_length"]} if row.get("prompt_length") else {})}
    raise SystemExit(
        f"{parity} has no {comparison.method} row for {task} on {comparison.backbone}: run benchmarks/study.py first"
    )


class RecordingCollator:
    """The task's collator, hashing every training batch it makes: equal digests mean equal data order."""

    def __init__(self, collator) -> None:
        self.collator = collator
        self.digest = hashlib.sha256()

    def __call__(self, features):
        batch = self.collator(features)
        self.digest.update(batch["input_ids"].numpy().tobytes())
        self.digest.update(batch["labels"].numpy().tobytes())
        return batch


def reference_model(implementation: str, recipe, run, ours):
    """The reference on the backbone's own classification model, its dropout off but the head's: PEFT prefix
    tuning (flat prompt) on it, or the model itself, every weight trained."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from ptuning.backbones import resolve

    family = ours.tasks[run.name].kind
    loader = (
        AutoModelForSequenceClassification if family == "sequence-classification" else AutoModelForTokenClassification
    )
    base = loader.from_pretrained(
        resolve(recipe.model),
        num_labels=len(run.labels),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    base.dropout.p = HEAD_DROPOUT  # the dropout before the classifier (BERT's and MPNet's heads name it so)
    if implementation == "transformers":
        return base
    import peft

    config = base.config
    return peft.get_peft_model(
        base,
        peft.PrefixTuningConfig(
            task_type=PEFT_TASK_TYPES[family],
            num_virtual_tokens=recipe.prompt.length,
            token_dim=config.hidden_size,
            num_attention_heads=config.num_attention_heads,
            num_layers=config.num_hidden_layers,
            prefix_projection=False,
        ),
    )


def copy_start(implementation: str, ours, model) -> None:
    """Give the reference ptuning's initial prompt and head (the pretrained backbone is the same already)."""
    from ptuning.peft_interop import copy_into_peft

    if implementation == "peft":
        copy_into_peft(ours, model)
    else:
        model.classifier.load_state_dict(ours.head.classifier.state_dict())


def probe_batch(run) -> dict[str, Any]:
    """Eight real validation inputs, collated by the task."""
    from ptuning.tasks.base import MODEL_INPUTS

    features = run.task.encode(run.validation[:8]).inputs
    return run.task.collator()([{k: f[k] for k in MODEL_INPUTS if k in f} for f in features])


def reached_parameters(model, batch: dict[str, Any]) -> int:
    """How many trainable parameters the loss reaches (a trainable weight the task never uses, such as a pooler
    under a token head, is not trained); in eval mode and on forked RNG, so training draws what it would have."""
    import torch

    with torch.random.fork_rng():
        model.eval()
        model(**batch).logits.float().sum().backward()
    count = sum(p.numel() for p in model.parameters() if p.requires_grad and p.grad is not None)
    model.zero_grad(set_to_none=True)
    return count


def same_function(implementation: str, recipe, run, ours) -> float:
    """A second reference model given ptuning's initial weights must give ptuning's logits (else it is not the same
    model and the comparison says nothing); returns the largest difference on real validation inputs."""
    import torch

    from ptuning.peft_interop import EXACT

    with torch.random.fork_rng():
        twin = reference_model(implementation, recipe, run, ours).eval()
    copy_start(implementation, ours, twin)
    batch = probe_batch(run)
    ours.eval()
    with torch.no_grad():
        difference = float((ours(**batch).logits - twin(**batch).logits).abs().max())
    ours.train()
    if not difference <= EXACT:
        raise RuntimeError(f"{implementation}'s model differs from ptuning's by {difference:.3g} with the same weights")
    return difference


def evaluable(model):
    """PEFT's model with what the evaluation callback asks of a model (``use``, ``active``, trainable state)."""
    model.active = None
    model.use = lambda name: model
    model.trainable_state = lambda: {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.restore_trainable_state = lambda state: model.load_state_dict(state, strict=False)
    return model


def train_alike(settings: dict[str, Any]) -> dict[str, Any]:
    """One run of ``settings["implementation"]`` through the shared loop, started from its own initialization or
    (``start: shared``) from ptuning's; a flat record: the task's scores (as a single-task run's metrics.json held
    them before it had ``tasks``) beside what the comparison checks."""
    import torch
    from transformers import set_seed

    from ptuning.recipe import Recipe
    from ptuning.training.build import build_model
    from ptuning.training.data import prepare_task, read_task_run
    from ptuning.training.trainer import EvaluateEachEpoch, PromptTrainer, task_batches, training_arguments

    settings = dict(settings)
    implementation = settings.pop("implementation")
    start = settings.pop("start", "own")
    with tempfile.TemporaryDirectory() as folder:
        recipe = Recipe.from_dict({**settings, "output": folder})
        set_seed(recipe.seed)
        [run] = [read_task_run(name, part) for name, part in recipe.parts()]
        ours = build_model(recipe, [run])  # ptuning's model; the reference's run uses it for the inputs and check
        prepare_task(run, ours, recipe)
        difference = None
        model = ours
        if implementation != "ptuning":
            difference = same_function(implementation, recipe, run, ours)
            set_seed(recipe.seed)  # the reference initialized from the same seed as ptuning's
            model = evaluable(reference_model(implementation, recipe, run, ours))
            if start == "shared":
                copy_start(implementation, ours, model)
        reached = reached_parameters(model, probe_batch(run))
        model.train()
        callback = EvaluateEachEpoch(model, [run], recipe.eval_batch_size)
        collator = RecordingCollator(run.task.collator())
        features = run.task.encode(run.train).inputs
        trainer = PromptTrainer(  # ptuning's batches (length-grouped, seeded per epoch) for every implementation
            model=model,
            args=training_arguments(recipe, Path(folder), torch.device("cpu"), multi_task=False),
            train_dataset=features,  # without task_ids: the reference models take none
            data_collator=collator,
            callbacks=[callback],
            task_batches=task_batches(recipe, [features]),
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    model.restore_trainable_state(callback.best_state)
    primary = run.task.primary_metric
    return {
        "implementation": implementation,
        "start": start,
        "primary_metric": primary,
        "validation": callback.best_metrics[run.name],
        "test": run.task.evaluate(model, run.test, recipe.eval_batch_size),
        "validation_curve": callback.curve,
        "loss_curve": [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry],
        "batches": collator.digest.hexdigest(),
        "trainable_parameters": reached,
        "same_function_difference": difference,
        "train_seconds": round(seconds, 1),
        "steps": trainer.state.global_step,
    }


def settings_for(
    comparison: Comparison, task: str, arm: tuple[str, str], seed: int, chosen: dict[str, Any], max_steps: int
) -> dict[str, Any]:
    implementation, start = arm
    settings = {
        "implementation": implementation,
        "dataset": task,
        "model": comparison.backbone,
        "method": comparison.method,
        "lr": chosen["lr"],
    }
    if comparison.method == "finetune":
        settings["backbone_dropout"] = False
    else:
        settings |= {
            "prompt_length": chosen["prompt_length"],
            "shift_positions": True,
            "prompt_dropout": 0.0,
            "backbone_dropout": False,
        }
    settings |= {
        "max_train_samples": FULL.train_examples,
        "max_eval_samples": FULL.eval_examples,
        "epochs": FULL.epochs,
        "batch_size": FULL.batch_size,
        "eval_batch_size": 64,
        "seed": seed,
    }
    if task == "rotten-tomatoes":
        settings["pooling"] = "pooler"  # BertForSequenceClassification classifies the pooler output
    if max_steps > 0:
        settings["max_steps"] = max_steps
    if start != "own":  # own starts are journalled without the key
        settings["start"] = start
    return settings


def mean_loss_curve(runs: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """Training loss at each logged step, averaged over seeds."""
    steps = min(len(run["loss_curve"]) for run in runs)
    return [
        (runs[0]["loss_curve"][i][0], statistics.fmean(run["loss_curve"][i][1] for run in runs)) for i in range(steps)
    ]


def arm_name(arm: tuple[str, str]) -> str:
    return arm[0] if arm[1] == "own" else f"{arm[0]} from ptuning's start"


def gap(ours: dict[str, Any], theirs: dict[str, Any], key: str) -> float:
    return ours[key]["mean"] - theirs[key]["mean"] if key == "validation" else ours["mean"] - theirs["mean"]


def summarize(
    results: dict[tuple[str, tuple[str, str], int], dict[str, Any]], seeds: list[int], comparison: Comparison = PREFIX
) -> dict[str, Any]:
    """Rows per (task, arm) with test and validation mean ± std over the seeds; checks of like-for-like and the
    gaps (ptuning - reference) independent and paired; mean training-loss curves."""
    rows, checks, curves = [], {}, {}
    arms = comparison.arms
    for task in comparison.tasks:
        runs_of, row_of = {}, {}
        for arm in arms:
            runs = [results[(task, arm, seed)] for seed in seeds]
            primary = runs[0]["primary_metric"]
            test = seed_summary([run["test"][primary] for run in runs])
            validation = seed_summary([run["validation"][primary] for run in runs])
            row_of[arm] = {
                "task": task,
                "implementation": arm[0],
                "start": arm[1],
                "metric": primary,
                "mean": test["mean"],
                "std": test["std"],
                "seeds": seeds,
                "scores": test["scores"],
                "validation": {"mean": validation["mean"], "std": validation["std"], "scores": validation["scores"]},
                "trainable_parameters": runs[0]["trainable_parameters"],
                "train_seconds": statistics.fmean(run["train_seconds"] for run in runs),
                "final_train_loss": statistics.fmean(run["loss_curve"][-1][1] for run in runs),
            }
            rows.append(row_of[arm])
            runs_of[arm] = runs
            curves.setdefault(task, {})[arm_name(arm)] = mean_loss_curve(runs)
        ours, theirs, paired = (row_of[arm] for arm in arms)
        checks[task] = {
            "same_batches": all(
                len({runs_of[arm][index]["batches"] for arm in arms}) == 1 for index in range(len(seeds))
            ),
            "same_trainable_parameters": len({row["trainable_parameters"] for row in (ours, theirs, paired)}) == 1,
            "max_logit_difference_same_weights": max(
                run["same_function_difference"] for arm in arms[1:] for run in runs_of[arm]
            ),
            "test_gap": gap(ours, theirs, "test"),
            "validation_gap": gap(ours, theirs, "validation"),
            "paired_test_gap": gap(ours, paired, "test"),
            "paired_validation_gap": gap(ours, paired, "validation"),
            "paired_largest_seed_difference": float(
                max(abs(a - b) for a, b in zip(ours["scores"], paired["scores"], strict=True))
            ),
        }
    return {"rows": rows, "checks": checks, "loss_curves": curves}


def plot(summary: dict[str, Any], path: Path, comparison: Comparison = PREFIX) -> None:
    from report import finish, plt

    figure, axes = plt.subplots(1, len(comparison.tasks), figsize=(5 * len(comparison.tasks), 3.6), squeeze=False)
    axes = list(axes[0])
    for axis, task in zip(axes, comparison.tasks, strict=True):
        for arm, style in zip(comparison.arms, ("-", "--", ":"), strict=True):
            row = next(r for r in summary["rows"] if r["task"] == task and (r["implementation"], r["start"]) == arm)
            steps, losses = zip(*summary["loss_curves"][task][arm_name(arm)], strict=True)
            label = f"{arm_name(arm)}: test {row['metric']} {row['mean']:.2f} ± {row['std']:.2f}"
            axis.plot(steps, losses, style, label=label, linewidth=2.5 if arm[1] == "shared" else 1.5)
        axis.set_title(f"{task}: {comparison.method}, {comparison.backbone}, mean of {len(row['seeds'])} seeds")
        if axis is not axes[-1]:
            axis.set_ylabel("training loss")
            axis.legend(fontsize=8)
            axis.set_xlabel("step")
    finish(figure, axes[-1], "step", "training loss", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="prefix", help="which method to compare")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--max-steps", type=int, default=0, help="stop each run after this many steps (0: 3 epochs)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, the cores shared among them")
    parser.add_argument("--resume", action="store_true", help="reuse runs finished by an earlier invocation")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results and the plot")
    args = parser.parse_args()
    comparison = COMPARISONS[args.compare]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = {task: chosen_settings(RESULTS / "parity.json", comparison, task) for task in comparison.tasks}
    runner = Runner(args.jobs, args.resume, args.out, run=train_alike, journal=f"{comparison.output}.jsonl")
    import ptuning.training.run  # noqa: F401 - imported once here, inherited by every forked run

    planned = [(task, arm, seed) for task in comparison.tasks for seed in seeds for arm in comparison.arms]
    started = time.perf_counter()
    metrics = runner.many(
        [
            (
                f"{comparison.output}-{task}-{'-'.join(arm)}-s{seed}",
                settings_for(comparison, task, arm, seed, chosen[task], args.max_steps),
            )
            for task, arm, seed in planned
        ]
    )
    summary = summarize(dict(zip(planned, metrics, strict=True)), seeds, comparison)
    command = "python benchmarks/faithfulness.py" + (f" --compare {args.compare}" if args.compare != "prefix" else "")
    setup = {
        "backbone": comparison.backbone,
        "method": comparison.method,
        "reference": comparison.reference,
        "date": time.strftime("%Y-%m-%d"),
        "settings": {
            task: settings_for(comparison, task, ("either", "own"), seeds[0], chosen[task], args.max_steps)
            for task in comparison.tasks
        },
        "command": command + (f" --seeds {args.seeds}" if args.seeds != "0,1,2" else ""),
    }
    write_json(args.out, f"{comparison.output}.json", {"setup": setup, **summary})
    plot(summary, args.out / f"{comparison.output}.png", comparison)
    for row in summary["rows"]:
        print(
            f"{row['task']:16} {arm_name((row['implementation'], row['start'])):33} test {row['metric']} "
            f"{row['mean']:.2f} ± {row['std']:.2f}, "
            f"validation {row['validation']['mean']:.2f} ± {row['validation']['std']:.2f}"
        )
    for task, check in summary["checks"].items():
        print(
            f"{task}: ptuning - {comparison.reference} test {check['test_gap']:+.2f}, "
            f"validation {check['validation_gap']:+.2f}; {check}"
        )
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; see {args.out / f'{comparison.output}.json'}")


if __name__ == "__main__":
    main()
