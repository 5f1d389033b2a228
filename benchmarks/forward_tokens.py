"""Forwards by padded-token budget: what ``ptuning serve --forward-tokens`` buys on this machine.

The server's inference path without HTTP: a Predictor holding four tasks on the packaged MiniLM-L6 (prompts of
length 8-32, token and sequence heads) answers queue batches of ``--batch`` CoNLL-2003 validation sentences, tasks
drawn uniformly, already tokenized (the server tokenizes on arrival). Each queue batch runs as forwards of at most
``rows x longest row`` padded tokens per budget, against forwards of up to 64 rows (no budget, the Predictor's
default). Configurations alternate within each repeat, in one process; medians are reported.

    python benchmarks/forward_tokens.py [--requests 800] [--batch 32] [--budgets 128,256,512,1024] [--repeats 3]

Writes benchmarks/results/forward_tokens.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from ptuning import PromptConfig, PromptedModel
from ptuning.data.packaged import load_packaged
from ptuning.predictor import Predictor, Request

TASKS = {  # name: (head, number of labels, prompt)
    "ner": ("token-classification", 9, PromptConfig(length=16)),
    "pos": ("token-classification", 47, PromptConfig(length=8)),
    "chunk": ("token-classification", 23, PromptConfig(length=32, layers=[2, 3, 4, 5])),
    "sent": ("sequence-classification", 2, PromptConfig(length=16)),
}


def build_predictor() -> Predictor:
    torch.manual_seed(0)
    first, (head, labels, prompt) = next(iter(TASKS.items()))
    model = PromptedModel.from_backbone("minilm-l6", head, num_labels=labels, prompt=prompt, name=first)
    for name, (head, labels, prompt) in list(TASKS.items())[1:]:
        model.add_task(name, head, [str(label) for label in range(labels)], prompt=prompt)
    return Predictor(model.eval(), progress=False)


def requests(predictor: Predictor, count: int, seed: int = 0) -> list[Request]:
    sentences = [sentence.words for sentence in load_packaged("conll2003-ner").validation[:count]]
    generator = random.Random(seed)
    parsed = []
    for words in sentences:
        task = list(TASKS)[generator.randrange(len(TASKS))]
        field = {"words": words} if TASKS[task][0] == "token-classification" else {"text": " ".join(words)}
        request = predictor.parse({"task": task, **field}, "benchmark")
        predictor.encode(request)
        parsed.append(request)
    return parsed


def seconds(predictor: Predictor, inputs: list[Request], batch: int, budget: int | None) -> float:
    predictor.max_tokens = budget
    started = time.perf_counter()
    for start in range(0, len(inputs), batch):
        predictor.predict(inputs[start : start + batch])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=800, help="sentences (shrink for a look)")
    parser.add_argument("--batch", type=int, default=32, help="inputs a queue batch")
    parser.add_argument("--budgets", default="128,256,512,1024", help="padded tokens a forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/forward_tokens.json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    predictor = build_predictor()
    inputs = requests(predictor, args.requests)
    configurations: list[int | None] = [None, *[int(budget) for budget in args.budgets.split(",")]]
    seconds(predictor, inputs[: args.batch * 2], args.batch, None)  # warm-up
    timings: dict[str, list[float]] = {str(budget): [] for budget in configurations}
    for repeat in range(args.repeats):
        for budget in configurations:
            timings[str(budget)].append(seconds(predictor, inputs, args.batch, budget))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in timings.items()), flush=True)
    baseline = statistics.median(timings["None"])
    result = {
        "backbone": "all-MiniLM-L6-v2 (packaged)",
        "requests": len(inputs),
        "queue_batch": args.batch,
        "threads": torch.get_num_threads(),
        "baseline": "forwards of up to 64 rows, no token budget",
        "inputs_per_second": {k: len(inputs) / statistics.median(v) for k, v in timings.items()},
        "speedup_vs_baseline": {k: baseline / statistics.median(v) for k, v in timings.items() if k != "None"},
        "seconds": timings,
    }
    print(json.dumps({key: result[key] for key in ("inputs_per_second", "speedup_vs_baseline")}, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
