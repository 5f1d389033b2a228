"""One backbone serving four tasks: mixed-task batches against single-task streams and per-task switching.

On the packaged MiniLM-L6, a stream of real CoNLL-2003 sentences is split over four tasks (prompts of different
lengths and layer sets, token and sequence heads) and answered three ways, inference only, the same batches of
token ids for all:

* ``mixed``: the stream in order, ``batch`` examples a forward, whatever their tasks (one backbone pass, each
  example's prompt gathered by its task, each head on its rows);
* ``single``: the same examples as four single-task streams, each batched ``batch`` at a time (the ideal a server
  cannot have: every batch full and of one task);
* ``switch``: each window of arrivals run as batches of one task each (what a server does when a forward takes one
  task, as PEFT's prefix tuning does).

Each at two windows: a server answering arrivals in order, ``batch`` at a time (window = batch), and one that may
reorder a window of arrivals by length to pad less (window 256, as ``ptuning predict`` sorts its input).

Plus the prompt's overhead: the prompted forward against the plain backbone's on the same batch (one task).
Configurations alternate within each repeat, in one process; medians are reported.

    python benchmarks/multitask_throughput.py [--sentences 1024] [--batch 32] [--repeats 5] [--windows 32,256]

Writes benchmarks/results/multitask_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from ptuning import PromptConfig, PromptedModel
from ptuning.data.packaged import load_packaged

# name: (head, number of labels, prompt)
TASKS = {
    "ner": ("token-classification", 9, PromptConfig(length=16, dropout=0.0)),
    "pos": ("token-classification", 47, PromptConfig(length=8, dropout=0.0)),
    "chunk": ("token-classification", 23, PromptConfig(length=32, layers=[2, 3, 4, 5], dropout=0.0)),
    "topic": ("sequence-classification", 4, PromptConfig(length=64, dropout=0.0)),
}


def build_model() -> PromptedModel:
    torch.manual_seed(0)
    model = PromptedModel.from_backbone(
        "minilm-l6", *TASKS["ner"][:1], num_labels=TASKS["ner"][1], prompt=TASKS["ner"][2], name="ner"
    )
    for name, (head, labels, prompt) in list(TASKS.items())[1:]:
        model.add_task(name, head, [str(i) for i in range(labels)], prompt=prompt)
    return model.eval()


def stream(model: PromptedModel, sentences: int, seed: int = 0) -> tuple[list[dict], list[int]]:
    """Tokenized CoNLL-2003 training sentences and a task for each, drawn uniformly."""
    words = [sentence.words for sentence in load_packaged("conll2003-ner").train[:sentences]]
    encoded = model.tokenizer(words, is_split_into_words=True, truncation=True, max_length=128)
    features = [{key: encoded[key][i] for key in ("input_ids", "attention_mask")} for i in range(len(words))]
    tasks = [random.Random(seed + i).randrange(len(TASKS)) for i in range(len(words))]
    return features, tasks


def batches(features, tasks, rows: list[list[int]], collator) -> list[dict]:
    """Collated batches of the given rows, each with its task_ids."""
    result = []
    for indices in rows:
        batch = collator([features[i] for i in indices])
        batch["task_ids"] = torch.tensor([tasks[i] for i in indices])
        result.append(batch)
    return result


def cut(rows: list[int], lengths: list[int], size: int, window: int) -> list[list[int]]:
    """Batches of ``size`` rows; within each ``window`` of rows, sorted by length first (when window > size)."""
    result = []
    for start in range(0, len(rows), window):
        chunk = rows[start : start + window]
        if window > size:
            chunk = sorted(chunk, key=lambda row: lengths[row])
        result += [chunk[first : first + size] for first in range(0, len(chunk), size)]
    return result


def plans(tasks: list[int], lengths: list[int], size: int, window: int) -> dict[str, list[list[int]]]:
    """Which rows each configuration runs together; a server may reorder ``window`` arrivals (by length)."""
    order = list(range(len(tasks)))
    arrivals = [order[start : start + window] for start in range(0, len(order), window)]
    per_task = [[row for row in order if tasks[row] == task] for task in range(len(TASKS))]
    return {
        "mixed": [batch for rows in arrivals for batch in cut(rows, lengths, size, window)],
        "single": [batch for rows in per_task for batch in cut(rows, lengths, size, window)],
        "switch": [
            batch
            for rows in arrivals
            for task in range(len(TASKS))
            for batch in cut([row for row in rows if tasks[row] == task], lengths, size, window)
        ],
    }


def seconds(model: PromptedModel, prepared: list[dict]) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in prepared:
            if len(batch["input_ids"]):
                model(**batch)
    return time.perf_counter() - started


def overhead(model: PromptedModel, batch: dict, repeats: int) -> dict[str, float]:
    """Median forward time of one task's prompted forward and of the plain backbone on the same batch."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    times: dict[str, list[float]] = {"prompted": [], "plain": []}
    model.use("ner")
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            for kind in times:
                started = time.perf_counter()
                model(**inputs) if kind == "prompted" else model.backbone(**inputs)
                times[kind].append(time.perf_counter() - started)
    model.active = None
    median = {kind: statistics.median(values[1:]) for kind, values in times.items()}
    return {
        "prompted_ms": median["prompted"] * 1000,
        "plain_ms": median["plain"] * 1000,
        "ratio": median["prompted"] / median["plain"],
    }


def measure(sentences: int, size: int, repeats: int, windows: list[int]) -> dict:
    model = build_model()
    features, tasks = stream(model, sentences)
    lengths = [len(feature["input_ids"]) for feature in features]
    collator = DataCollatorWithPadding(model.tokenizer)
    prepared = {
        f"{name}@{window}": batches(features, tasks, rows, collator)
        for window in windows
        for name, rows in plans(tasks, lengths, size, window).items()
    }
    times: dict[str, list[float]] = {name: [] for name in prepared}
    for name in prepared:  # warm-up
        seconds(model, prepared[name][:2])
    for repeat in range(repeats):
        for name in prepared:
            times[name].append(seconds(model, prepared[name]))
            speed = len(features) / times[name][-1]
            print(f"  repeat {repeat + 1}/{repeats} {name}: {speed:.1f} examples/s", flush=True)
    throughput = {name: len(features) / statistics.median(values) for name, values in times.items()}
    ratios = {
        f"window {window}": {
            "mixed_vs_single": throughput[f"mixed@{window}"] / throughput[f"single@{window}"],
            "mixed_vs_switch": throughput[f"mixed@{window}"] / throughput[f"switch@{window}"],
        }
        for window in windows
    }
    return {
        "backbone": "all-MiniLM-L6-v2 (packaged)",
        "tasks": {
            name: {"head": head, "prompt_length": prompt.length, "layers": prompt.layers or "all"}
            for name, (head, _, prompt) in TASKS.items()
        },
        "sentences": len(features),
        "batch": size,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "forwards": {name: sum(1 for batch in prepared[name] if len(batch["input_ids"])) for name in prepared},
        "examples_per_second": throughput,
        "windows": windows,
        "ratios": ratios,
        "prompt_overhead": overhead(model, prepared[f"mixed@{windows[0]}"][0], 3 * repeats),
    }


def summary(result: dict) -> str:
    speeds = result["examples_per_second"]
    cost = result["prompt_overhead"]
    return "\n".join(
        [
            f"{result['sentences']} CoNLL-2003 sentences over {len(result['tasks'])} tasks, batch {result['batch']}, "
            f"medians of {result['repeats']} alternated repeats:",
            *[
                f"  {name:>6}: {speed:7.1f} examples/s ({result['forwards'][name]} forwards)"
                for name, speed in speeds.items()
            ],
            *[
                f"{window} (arrivals a server may reorder by length): mixed / single-task streams "
                f"{ratio['mixed_vs_single']:.2f}x, mixed / switching per task {ratio['mixed_vs_switch']:.2f}x"
                for window, ratio in result["ratios"].items()
            ],
            f"prompted forward {cost['prompted_ms']:.1f} ms vs plain backbone {cost['plain_ms']:.1f} ms: "
            f"{cost['ratio']:.2f}x",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1024, help="stream length (shrink for a quick look)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--windows", default="32,256", help="arrivals a server may reorder by length (the batch: none, in order)"
    )
    parser.add_argument("--output", default="benchmarks/results/multitask_throughput.json")
    args = parser.parse_args()
    result = measure(args.sentences, args.batch, args.repeats, [int(value) for value in args.windows.split(",")])
    print(summary(result))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
