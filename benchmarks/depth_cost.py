"""What prompting only the top layers saves: activations kept for backward and training-step time.

With a frozen backbone, nothing below the lowest prompted layer needs gradients, so autograd records
no graph there. This measures it on the packaged MiniLM-L6 with real CoNLL-2003 sentences: bytes of
tensors saved for backward (exact, via saved-tensor hooks) and the median step time, configurations
alternated in one process so machine noise hits all alike.

    python benchmarks/depth_cost.py [--batch-size 32] [--repeats 7] [--length 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from cost import saved_for_backward

from ptuning import PromptConfig, PromptedModel
from ptuning.data.packaged import load_packaged
from ptuning.tasks import make_task


def step_seconds(model: PromptedModel, batch: dict) -> float:
    started = time.perf_counter()
    model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--output", default="benchmarks/results/depth_cost.json")
    args = parser.parse_args()

    splits = load_packaged("conll2003-ner")
    labels = sorted({tag for sentence in splits.train for tag in sentence.tags})
    configs = {"all 6 layers": None, "top 3 layers": [3, 4, 5], "top 1 layer": [5]}
    models = {}
    for name, layers in configs.items():
        torch.manual_seed(0)
        prompt = PromptConfig(length=args.length, layers=layers, dropout=0.0)
        models[name] = PromptedModel.from_backbone("minilm-l6", "token-classification", labels=labels, prompt=prompt)
        models[name].eval()  # no dropout: compare the attention work only
    task = make_task("token-classification", models["all 6 layers"].tokenizer, labels, 128)
    batch = task.collator()(task.encode(splits.train[: args.batch_size]).inputs)

    memory = {name: saved_for_backward(model, batch) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(step_seconds(model, batch))
    baseline = "all 6 layers"
    rows = []
    for name in models:
        median = statistics.median(times[name])
        rows.append(
            {
                "prompted_layers": name,
                "saved_activation_mb": memory[name] / 2**20,
                "saved_activation_ratio": memory[name] / memory[baseline],
                "step_seconds_median": median,
                "step_time_ratio": median / statistics.median(times[baseline]),
            }
        )
        print(
            f"{name:>13}: saved for backward {memory[name] / 2**20:7.1f} MB "
            f"({rows[-1]['saved_activation_ratio']:.2f}x), "
            f"step {median * 1000:6.0f} ms ({rows[-1]['step_time_ratio']:.2f}x)"
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps(
            {
                "batch_size": args.batch_size,
                "prompt_length": args.length,
                "repeats": args.repeats,
                "tokens": int(batch["attention_mask"].sum()),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
