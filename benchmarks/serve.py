"""One ``ptuning serve`` process holding many tasks on the packaged MiniLM: throughput, latency and memory.

Four task checkpoints (NER, POS and chunking heads on CoNLL-2003 sentences, a sentence classifier; prompts of
length 8-32, random: speed and memory do not depend on training) are served by one server process on loopback:

* closed-loop clients (each sends its next request when the last is answered) at several concurrencies:
  requests per second, p50 and p99 latency of mixed-task traffic (tasks drawn uniformly, interleaved), against
  single-task traffic of the same work: each task's traffic alone, as many requests a run, combined (seconds per
  request add up); a mixed run precedes each task's run, and the top concurrency repeats that ``--repeats`` times;
* resident memory (peak, and after the traffic) of a fresh server holding the four tasks against four fresh
  servers each holding one fine-tuned MiniLM (the same heads, every weight trained), each given the same
  requests (the fine-tuned ones their task's share); a bare process that loaded one fine-tuned model and ran one
  forward is reported too, as the least such a process could take;
* the scale adapter servers advertise: 10, 100 and 1,000 loaded tasks (copies of the four under new names,
  loaded at run time), resident memory and the throughput of traffic spread over all of them, against one task
  (each of the four alone, single-task traffic of the same work), measured before the climb and again after it
  (the baseline is their mean, as the machine drifts).

    python benchmarks/serve.py [--requests 500] [--concurrency 1,8,32] [--repeats 3] [--task-counts 1,10,100,1000]

Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ptuning import PromptConfig, PromptedModel
from ptuning.data.packaged import load_packaged

TOKEN = "bench"
TASKS = {  # name: (head, number of labels, prompt)
    "ner": ("token-classification", 9, PromptConfig(length=16)),
    "pos": ("token-classification", 47, PromptConfig(length=8)),
    "chunk": ("token-classification", 23, PromptConfig(length=32, layers=[2, 3, 4, 5])),
    "sent": ("sequence-classification", 2, PromptConfig(length=16)),
}


def write_checkpoints(folder: Path, finetuned: bool = False) -> dict[str, Path]:
    """The four tasks' checkpoints (``finetuned``: the same heads on a wholly trainable MiniLM each)."""
    torch.manual_seed(0)
    paths = {}
    for name, (head, labels, prompt) in TASKS.items():
        prompt = PromptConfig(method="finetune") if finetuned else prompt
        model = PromptedModel.from_backbone("minilm-l6", head, num_labels=labels, prompt=prompt, name=name)
        model.save_pretrained(folder / name)
        paths[name] = folder / name
    return paths


def memory_mb(pid: int | str, field: str = "VmRSS") -> float:
    """A process's resident memory now (``VmRSS``) or at its peak (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def call(port: int, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def start(paths: dict[str, Path], folder: Path, port: int, log: Path) -> subprocess.Popen:
    """A ``ptuning serve`` process for ``{name: checkpoint}``, ready; runtime loads from under ``folder``."""
    command = [
        sys.executable,
        "-m",
        "ptuning",
        "serve",
        *[f"{n}={p}" for n, p in paths.items()],
        "--port",
        str(port),
        "--models-dir",
        str(folder),
        "--max-queue",
        "100000",
    ]
    process = subprocess.Popen(
        command,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PTUNING_ADMIN_TOKEN": TOKEN},
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            call(port, "GET", "/health/ready")
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")


def inference_seconds(port: int) -> float:
    """The server's time in inference so far (its batches, features to formatted answers)."""
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    return float(metrics.split("ptuning_batch_seconds_sum ")[1].split()[0])


def closed_loop(port: int, requests: list[dict], concurrency: int) -> dict[str, float]:
    """``concurrency`` clients, each sending its share of the requests one after the other; also the server's
    inference time per request (the rest is HTTP, queueing and the clients, which share the cores)."""
    latencies: list[float] = []
    inference_before = inference_seconds(port)

    def client(share: list[dict]) -> None:
        for body in share:
            started = time.perf_counter()
            call(port, "POST", "/v1/predict", body)
            latencies.append(time.perf_counter() - started)

    shares = [requests[index::concurrency] for index in range(concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, shares))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests_per_second": len(requests) / elapsed,
        "inference_ms_per_request": 1000 * (inference_seconds(port) - inference_before) / len(requests),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def traffic(sentences: list[list[str]], tasks: list[str], count: int, seed: int = 0) -> list[dict]:
    """One input a request: a CoNLL-2003 sentence for a task drawn uniformly from ``tasks``."""
    generator = random.Random(seed)
    requests = []
    for index in range(count):
        task = tasks[generator.randrange(len(tasks))]
        base = task.split("@")[0]  # copies are named base@k
        words = sentences[index % len(sentences)]
        field = {"words": words} if TASKS[base][0] == "token-classification" else {"text": " ".join(words)}
        requests.append({"inputs": [{"task": task, **field}]})
    return requests


def combined(runs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Runs of equal request counts as one: their seconds per request add up, latencies pooled (p99: the worst)."""
    return {
        "requests_per_second": 1 / statistics.fmean(1 / run["requests_per_second"] for run in runs.values()),
        "inference_ms_per_request": statistics.fmean(run["inference_ms_per_request"] for run in runs.values()),
        "p50_ms": statistics.fmean(run["p50_ms"] for run in runs.values()),
        "p99_ms": max(run["p99_ms"] for run in runs.values()),
        "by_run": {name: run["requests_per_second"] for name, run in runs.items()},
    }


def single_task(port: int, sentences: list[list[str]], count: int, concurrency: int) -> dict[str, Any]:
    """The mix's work as single-task traffic: each task's own run of ``count`` requests, combined."""
    return combined({task: closed_loop(port, traffic(sentences, [task], count), concurrency) for task in TASKS})


def mixed_and_single(port: int, sentences, count: int, concurrency: int, seed: int) -> tuple[dict, dict]:
    """Mixed-task traffic against the same work as single-task traffic, alternating: a mixed run of ``count``
    requests, then one task's run, for each task in turn (the machine drifts less between neighbours)."""
    mixed, single = {}, {}
    for index, task in enumerate(TASKS):
        requests = traffic(sentences, list(TASKS), count, seed=seed * len(TASKS) + index)
        mixed[f"mixed-{index}"] = closed_loop(port, requests, concurrency)
        single[task] = closed_loop(port, traffic(sentences, [task], count), concurrency)
    return combined(mixed), combined(single)


def finetuned_bare_process_mb() -> float:
    """Resident memory of a process holding one fine-tuned MiniLM (the packaged weights, all trainable) after a
    forward pass: the least a process serving it could take."""
    probe = (
        "import torch, sys\nfrom ptuning import PromptConfig, PromptedModel\n"
        "m = PromptedModel.from_backbone('minilm-l6', 'token-classification', num_labels=9, "
        "prompt=PromptConfig(method='finetune')).eval()\n"
        "with torch.no_grad(): m(input_ids=torch.ones(8, 32, dtype=torch.long))\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout
    return int(output.strip().splitlines()[-1]) / 1024


def served_memory(paths: dict[str, Path], folder: Path, port: int, requests: list[dict], concurrency: int) -> dict:
    """A fresh server for ``paths`` given ``requests``: its peak and final resident memory, in MB."""
    process = start(paths, folder, port, folder / f"memory-{len(paths)}.log")
    try:
        closed_loop(port, requests, concurrency)
        return {"peak_mb": memory_mb(process.pid, "VmHWM"), "after_mb": memory_mb(process.pid)}
    finally:
        process.terminate()
        process.wait(timeout=60)


def compare_memory(work: Path, paths: dict[str, Path], sentences, count: int, concurrency: int, port: int) -> dict:
    """One server holding the four tasks against four each holding one fine-tuned model, the same requests."""
    finetuned = write_checkpoints(work / "finetuned", finetuned=True)
    requests = traffic(sentences, list(TASKS), count)
    prompted = served_memory(paths, paths["ner"].parent, port, requests, concurrency)
    separate = {}
    for task, path in finetuned.items():
        share = [body for body in requests if body["inputs"][0]["task"] == task]
        separate[task] = served_memory({task: path}, path.parent, port, share, concurrency)
        print(f"  fine-tuned {task} server: {separate[task]}", flush=True)
    bare = finetuned_bare_process_mb()
    return {
        "prompted_server": prompted,
        "finetuned_servers": separate,
        "finetuned_bare_process_mb": bare,
        "memory_ratio_vs_finetuned": prompted["peak_mb"] / sum(run["peak_mb"] for run in separate.values()),
        "memory_ratio_vs_finetuned_after_traffic": prompted["after_mb"]
        / sum(run["after_mb"] for run in separate.values()),
        "memory_ratio_vs_finetuned_bare": prompted["after_mb"] / (len(TASKS) * bare),
    }


def task_curve(port: int, process: subprocess.Popen, sentences, counts: list[int], requests: int, concurrency: int):
    """Load copies of the four up to each count (resident memory after loading, throughput of traffic spread over
    all loaded tasks); the one-task point is each of the four alone (single-task traffic of the same work),
    measured before the climb and again after unloading back to the four."""
    loaded = list(TASKS)

    def one_task() -> dict:
        load = single_task(port, sentences, requests, concurrency)
        print(f"  1 task (each alone): {load}", flush=True)
        return {"tasks": 1, "loaded": len(TASKS), "rss_mb": memory_mb(process.pid), **load}

    curve = [one_task()]
    for count in [count for count in counts if count > 1]:
        while len(loaded) < count:
            base = list(TASKS)[len(loaded) % len(TASKS)]
            name = f"{base}@{len(loaded)}"
            call(port, "POST", "/v1/tasks", {"name": name, "path": base})
            loaded.append(name)
        loaded_mb = memory_mb(process.pid)
        load = closed_loop(port, traffic(sentences, loaded, requests), concurrency)
        print(f"  {count} tasks: {load}", flush=True)
        curve.append({"tasks": count, "loaded": count, "rss_mb": loaded_mb, **load})
    while len(loaded) > len(TASKS):
        call(port, "DELETE", f"/v1/tasks/{loaded.pop()}")
    return curve, one_task()


def measure(requests: int, concurrencies: list[int], repeats: int, task_counts: list[int], port: int) -> dict:
    sentences = [sentence.words for sentence in load_packaged("conll2003-ner").validation[:512]]
    top = max(concurrencies)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "prompted"
        paths = write_checkpoints(folder)
        checkpoint_bytes = statistics.fmean(sum(f.stat().st_size for f in path.iterdir()) for path in paths.values())
        memory = compare_memory(Path(work), paths, sentences, requests, top, port)
        print(f"  memory: {memory}", flush=True)
        process = start(paths, folder, port, folder / "server.log")
        try:
            call(port, "POST", "/v1/predict", traffic(sentences, list(TASKS), 1)[0])  # warm-up
            loads: dict[str, dict] = {}
            ratios = []
            for concurrency in concurrencies:
                for repeat in range(repeats if concurrency == top else 1):
                    mixed, single = mixed_and_single(port, sentences, requests, concurrency, repeat)
                    ratios.append(mixed["requests_per_second"] / single["requests_per_second"])
                    loads[f"mixed@{concurrency}"], loads[f"single@{concurrency}"] = mixed, single
                    print(f"  {concurrency} clients: mixed {mixed}, single-task {single}", flush=True)
            top_ratios = ratios[-repeats:]
            curve, again = task_curve(port, process, sentences, task_counts, requests, top)
        finally:
            process.terminate()
            process.wait(timeout=60)
    first, last = curve[0], curve[-1]
    # memory per task from the four-task server (the one-task point) to the most tasks
    per_task = (last["rss_mb"] - first["rss_mb"]) * 2**20 / max(last["loaded"] - first["loaded"], 1)
    fewest = statistics.fmean([first["requests_per_second"], again["requests_per_second"]])
    return {
        "backbone": "all-MiniLM-L6-v2 (packaged)",
        "requests": requests,
        "traffic": "one CoNLL-2003 validation sentence a request, tasks drawn uniformly",
        "closed_loop": loads,
        "mixed_vs_single_throughput_repeats": top_ratios,
        "mixed_vs_single_throughput": statistics.median(top_ratios),
        **memory,
        "task_curve": curve,
        "fewest_tasks_again": again,
        "checkpoint_bytes_mean": checkpoint_bytes,
        "memory_per_added_task_bytes": per_task,
        "memory_per_task_vs_checkpoint": per_task / checkpoint_bytes,
        "throughput_most_vs_fewest_tasks": last["requests_per_second"] / fewest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per measurement (shrink for a look)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3, help="alternating mixed/single runs at the top concurrency")
    parser.add_argument("--task-counts", default="1,10,100,1000")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output", default="benchmarks/results/serve.json")
    args = parser.parse_args()
    result = measure(
        args.requests,
        [int(c) for c in args.concurrency.split(",")],
        args.repeats,
        [int(c) for c in args.task_counts.split(",")],
        args.port,
    )
    print(json.dumps({key: value for key, value in result.items() if not isinstance(value, dict | list)}, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
