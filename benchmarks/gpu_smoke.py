"""A short train-and-evaluate on a GPU, for when one is at hand: deep prompt tuning against fine-tuning.

On the packaged MiniLM-L6 and a CoNLL-2003 NER subsample, trains each method for ``--steps`` optimizer steps on
the chosen device and precision, evaluates on validation, and reports steps per second, peak accelerator memory,
the validation F1 and the trainable share. The methods alternate ``--repeats`` times in one process. CI and the
tests stay on the CPU; ``--device cpu --steps 2`` runs it anywhere for a look.

    python benchmarks/gpu_smoke.py [--device auto] [--precision bf16] [--steps 200] [--repeats 1]

Writes benchmarks/results/gpu_smoke.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from ptuning import PromptConfig
from ptuning.devices import resolve_device
from ptuning.recipe import Recipe
from ptuning.training.run import train
from ptuning.training.run_metrics import single_task_metrics

METHODS = {"deep": PromptConfig(method="deep", length=16), "finetune": PromptConfig(method="finetune")}


def run(method: str, device: str, precision: str, steps: int, samples: int, folder: Path) -> dict:
    recipe = Recipe(
        dataset="conll2003-ner",
        max_train_samples=samples,
        max_eval_samples=min(samples, 500),
        max_steps=steps,
        batch_size=32,
        device=device,
        precision=precision,
        prompt=METHODS[method],
        output=str(folder / method),
        overwrite=True,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    metrics = train(recipe)
    return {
        "steps_per_second": metrics["steps"] / metrics["train_seconds"],
        "train_seconds": metrics["train_seconds"],
        "validation_f1": single_task_metrics(metrics)["validation"].get("f1"),
        "trainable_share": metrics["trainable_share"],
        "device": metrics["device"],
        "peak_accelerator_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--precision", default="bf16", help="fp32, bf16 or fp16")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run (shrink for a look)")
    parser.add_argument("--samples", type=int, default=4000, help="training sentences")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each method")
    parser.add_argument("--output", default="benchmarks/results/gpu_smoke.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for method in METHODS:
                runs[method].append(run(method, args.device, args.precision, args.steps, args.samples, Path(work)))
                print(f"repeat {repeat + 1} {method}: {runs[method][-1]}", flush=True)
    speed = {method: statistics.median(r["steps_per_second"] for r in results) for method, results in runs.items()}
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "precision": args.precision,
        "steps": args.steps,
        "runs": runs,
        "steps_per_second": speed,
        "deep_vs_finetune_speed": speed["deep"] / speed["finetune"],
    }
    print(json.dumps({key: value for key, value in result.items() if key != "runs"}, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
