"""Faithfulness: ptuning's deep prompts against PEFT's prefix tuning, trained alike on the packaged MiniLM-L6.

    python benchmarks/faithfulness.py                      # 2 tasks x 3 arms x 3 seeds: ~10 min on 2 cores
    python benchmarks/faithfulness.py --resume             # reuse the runs an interrupted invocation finished
    python benchmarks/faithfulness.py --seeds 0 --max-steps 10 --out /tmp/faith   # a smoke run

Both implementations go through the same loop: the study's parity budget (1,000 training examples, 3 epochs of
batch 16, 500 validation and test examples), each task's deep learning rate and prompt length from parity.json,
flat prompt, positions shifted (PEFT numbers the text after the prefix), prompt dropout 0, backbone dropout off
(PEFT's backbone loaded with its dropout probabilities at 0), the head's dropout 0.1 in both, the same Trainer
arguments (AdamW, linear schedule, length-grouped batches, seed), validation each epoch keeping the best epoch, and
the same scorer. What differs is the implementation: ptuning's prompt route and head against PEFT's
``PrefixTuningConfig(prefix_projection=False)`` on ``AutoModelFor{Sequence,Token}Classification``. Three arms per seed:
ptuning and PEFT each initialized by itself from the seed (independent: the gap carries seed noise), and PEFT
started from ptuning's initial prompt and head (paired: the gap is the implementations' training alone). Before
training, each PEFT run is checked to be the same function as ptuning's with ptuning's
weights copied in (logits within 1e-4), and every run records a digest of its batches, so the data order is shown
equal rather than assumed. Writes benchmarks/results/faithfulness.json and faithfulness.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import FULL, RESULTS, Runner, seed_summary, write_json  # noqa: E402

TASKS = ("rotten-tomatoes", "conll2003-ner")
# (implementation, start): each initialized by itself from the seed (independent: seed noise in the gap), and PEFT
# started from ptuning's initial prompt and head (paired: the gap is the implementations' training alone)
ARMS = (("ptuning", "own"), ("peft", "own"), ("peft", "shared"))
PEFT_TASK_TYPES = {"sequence-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS"}
HEAD_DROPOUT = 0.1  # ptuning's head dropout (the backbone's hidden dropout) and PEFT's classifier dropout


def deep_settings(parity: Path, task: str) -> dict[str, Any]:
    """The parity study's deep learning rate and prompt length for ``task`` (chosen on validation)."""
    rows = json.loads(parity.read_text())["rows"] if parity.is_file() else []
    for row in rows:
        if row["task"] == task and row["method"] == "deep" and row.get("backbone", "minilm-l6") == "minilm-l6":
            return {"lr": row["lr"], "prompt_length": row["prompt_length"]}
    raise SystemExit(f"{parity} has no deep row for {task}: run benchmarks/study.py --parts parity first")


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


def peft_model(recipe, run, ours):
    """PEFT prefix tuning (flat prompt) on the backbone's own classification model, its dropout off but the head's."""
    import peft
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
        classifier_dropout=HEAD_DROPOUT,
    )
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


def same_function(recipe, run, ours) -> float:
    """A second PEFT model given ptuning's initial weights must give ptuning's logits (else PEFT is not the same
    model and the comparison says nothing); returns the largest difference on real validation inputs."""
    import torch

    from ptuning.peft_interop import EXACT, copy_into_peft
    from ptuning.tasks.base import MODEL_INPUTS

    with torch.random.fork_rng():
        twin = peft_model(recipe, run, ours).eval()
    copy_into_peft(ours, twin)
    features = run.task.encode(run.validation[:8]).inputs
    batch = run.task.collator()([{k: f[k] for k in MODEL_INPUTS if k in f} for f in features])
    ours.eval()
    with torch.no_grad():
        difference = float((ours(**batch).logits - twin(**batch).logits).abs().max())
    ours.train()
    if not difference <= EXACT:
        raise RuntimeError(f"PEFT's model differs from ptuning's by {difference:.3g} given the same weights")
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
    (``start: shared``) from ptuning's; metrics like ``ptuning train``'s."""
    import torch
    from transformers import Trainer, set_seed

    from ptuning.peft_interop import copy_into_peft
    from ptuning.train import EvaluateEachEpoch, Recipe, _arguments, _build_model, _prepare_task, _task_run

    settings = dict(settings)
    implementation = settings.pop("implementation")
    start = settings.pop("start", "own")
    with tempfile.TemporaryDirectory() as folder:
        recipe = Recipe.from_dict({**settings, "output": folder})
        set_seed(recipe.seed)
        [run] = [_task_run(name, part) for name, part in recipe.parts()]
        ours = _build_model(recipe, [run])  # ptuning's model; PEFT's run uses it for the task's inputs and the check
        _prepare_task(run, ours, recipe)
        difference = None
        model = ours
        if implementation == "peft":
            difference = same_function(recipe, run, ours)
            set_seed(recipe.seed)  # PEFT's model initialized from the same seed as ptuning's
            model = evaluable(peft_model(recipe, run, ours))
            if start == "shared":
                copy_into_peft(ours, model)
        model.train()
        callback = EvaluateEachEpoch(model, [run], recipe.eval_batch_size)
        collator = RecordingCollator(run.task.collator())
        trainer = Trainer(
            model=model,
            args=_arguments(recipe, Path(folder), torch.device("cpu"), multi_task=False),
            train_dataset=run.task.encode(run.train).inputs,
            data_collator=collator,
            callbacks=[callback],
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
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "same_function_difference": difference,
        "train_seconds": round(seconds, 1),
        "steps": trainer.state.global_step,
    }


def settings_for(task: str, arm: tuple[str, str], seed: int, deep: dict[str, Any], max_steps: int) -> dict[str, Any]:
    implementation, start = arm
    settings = {
        "implementation": implementation,
        "dataset": task,
        "model": "minilm-l6",
        "method": "deep",
        "lr": deep["lr"],
        "prompt_length": deep["prompt_length"],
        "shift_positions": True,
        "prompt_dropout": 0.0,
        "backbone_dropout": False,
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


def summarize(results: dict[tuple[str, tuple[str, str], int], dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Rows per (task, arm) with test and validation mean ± std over the seeds; checks of like-for-like and the
    gaps (ptuning - PEFT) independent and paired; mean training-loss curves."""
    rows, checks, curves = [], {}, {}
    for task in TASKS:
        runs_of, row_of = {}, {}
        for arm in ARMS:
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
        ours, theirs, paired = (row_of[arm] for arm in ARMS)
        checks[task] = {
            "same_batches": all(
                len({runs_of[arm][index]["batches"] for arm in ARMS}) == 1 for index in range(len(seeds))
            ),
            "same_trainable_parameters": len({row["trainable_parameters"] for row in (ours, theirs, paired)}) == 1,
            "max_logit_difference_same_weights": max(
                run["same_function_difference"] for arm in ARMS[1:] for run in runs_of[arm]
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


def plot(summary: dict[str, Any], path: Path) -> None:
    from report import finish, plt

    figure, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.6))
    for axis, task in zip(axes, TASKS, strict=True):
        for arm, style in zip(ARMS, ("-", "--", ":"), strict=True):
            row = next(r for r in summary["rows"] if r["task"] == task and (r["implementation"], r["start"]) == arm)
            steps, losses = zip(*summary["loss_curves"][task][arm_name(arm)], strict=True)
            label = f"{arm_name(arm)}: test {row['metric']} {row['mean']:.2f} ± {row['std']:.2f}"
            axis.plot(steps, losses, style, label=label, linewidth=2.5 if arm[1] == "shared" else 1.5)
        axis.set_title(f"{task} (mean of {len(row['seeds'])} seeds)")
        if axis is not axes[-1]:
            axis.set_ylabel("training loss")
            axis.legend(fontsize=8)
            axis.set_xlabel("step")
    finish(figure, axes[-1], "step", "training loss", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--max-steps", type=int, default=0, help="stop each run after this many steps (0: 3 epochs)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, the cores shared among them")
    parser.add_argument("--resume", action="store_true", help="reuse runs finished by an earlier invocation")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of faithfulness.json/.png")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    deep = {task: deep_settings(RESULTS / "parity.json", task) for task in TASKS}
    runner = Runner(args.jobs, args.resume, args.out, run=train_alike, journal="faithfulness.jsonl")
    import ptuning.train  # noqa: F401 - imported once here, inherited by every forked run

    planned = [(task, arm, seed) for task in TASKS for seed in seeds for arm in ARMS]
    started = time.perf_counter()
    metrics = runner.many(
        [
            (
                f"faithfulness-{task}-{'-'.join(arm)}-s{seed}",
                settings_for(task, arm, seed, deep[task], args.max_steps),
            )
            for task, arm, seed in planned
        ]
    )
    summary = summarize(dict(zip(planned, metrics, strict=True)), seeds)
    setup = {
        "backbone": "minilm-l6",
        "date": time.strftime("%Y-%m-%d"),
        "settings": {
            task: settings_for(task, ("either", "own"), seeds[0], deep[task], args.max_steps) for task in TASKS
        },
        "command": "python benchmarks/faithfulness.py" + (f" --seeds {args.seeds}" if args.seeds != "0,1,2" else ""),
    }
    write_json(args.out, "faithfulness.json", {"setup": setup, **summary})
    plot(summary, args.out / "faithfulness.png")
    for row in summary["rows"]:
        print(
            f"{row['task']:16} {arm_name((row['implementation'], row['start'])):28} test {row['metric']} "
            f"{row['mean']:.2f} ± {row['std']:.2f}, "
            f"validation {row['validation']['mean']:.2f} ± {row['validation']['std']:.2f}"
        )
    for task, check in summary["checks"].items():
        print(
            f"{task}: ptuning - peft test {check['test_gap']:+.2f}, validation {check['validation_gap']:+.2f}; {check}"
        )
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; see {args.out / 'faithfulness.json'}")


if __name__ == "__main__":
    main()
