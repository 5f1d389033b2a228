"""One ``ptuning serve`` process holding many tasks on the packaged MiniLM: throughput, latency and memory.

Four task checkpoints (NER, POS and chunking heads on CoNLL-2003 sentences, a sentence classifier; prompts of
length 8-32, random: speed and memory do not depend on training) are served by one server process on loopback:

* closed-loop clients (each sends its next request when the last is answered) at several concurrencies:
  requests per second, p50 and p99 latency; mixed-task traffic against single-task traffic on the same server;
* resident memory of the server holding the four tasks against four processes each holding one fine-tuned MiniLM
  (each measured as a real process that loaded the model and ran one forward; the sum is reported);
* the scale adapter servers advertise: 1, 10, 100 and 1,000 loaded tasks (copies of the four under new names,
  loaded at run time), resident memory and the throughput of traffic spread over all of them.

    python benchmarks/serve.py [--requests 2000] [--concurrency 1,8,32] [--task-counts 1,10,100,1000]

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


def write_checkpoints(folder: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    paths = {}
    for name, (head, labels, prompt) in TASKS.items():
        model = PromptedModel.from_backbone("minilm-l6", head, num_labels=labels, prompt=prompt, name=name)
        model.save_pretrained(folder / name, extra={"task_name": head})
        paths[name] = folder / name
    return paths


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def call(port: int, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def start(paths: dict[str, Path], folder: Path, port: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "ptuning",
        "serve",
        *[f"{n}={p}" for n, p in paths.items()],
        "--port",
        str(port),
        "--admin-token",
        TOKEN,
        "--models-dir",
        str(folder),
        "--max-queue",
        "100000",
    ]
    process = subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
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


def closed_loop(port: int, requests: list[dict], concurrency: int) -> dict[str, float]:
    """``concurrency`` clients, each sending its share of the requests one after the other."""
    latencies: list[float] = []

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


def finetuned_process_mb() -> float:
    """Resident memory of a process holding one fine-tuned MiniLM (the packaged weights, all trainable) after a
    forward pass."""
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


def measure(requests: int, concurrencies: list[int], task_counts: list[int], port: int) -> dict:
    sentences = [sentence.words for sentence in load_packaged("conll2003-ner").validation[:512]]
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        paths = write_checkpoints(folder)
        checkpoint_bytes = statistics.fmean(sum(f.stat().st_size for f in path.iterdir()) for path in paths.values())
        process = start(paths, folder, port, folder / "server.log")
        try:
            call(port, "POST", "/v1/predict", traffic(sentences, list(TASKS), 1)[0])  # warm-up
            loads = {}
            for concurrency in concurrencies:
                for kind, tasks in (("mixed", list(TASKS)), ("single", ["ner"])):
                    loads[f"{kind}@{concurrency}"] = closed_loop(port, traffic(sentences, tasks, requests), concurrency)
                    print(f"  {kind} traffic, {concurrency} clients: {loads[f'{kind}@{concurrency}']}", flush=True)
            server_mb = rss_mb(process.pid)
            finetuned_mb = finetuned_process_mb()
            curve, loaded = [], list(TASKS)
            for count in task_counts:
                while len(loaded) < count:
                    base = list(TASKS)[len(loaded) % len(TASKS)]
                    name = f"{base}@{len(loaded)}"
                    call(port, "POST", "/v1/tasks", {"name": name, "path": base})
                    loaded.append(name)
                serving = loaded[:count]
                # every loaded task named in the traffic; the first `count` when fewer than the four are asked
                load = closed_loop(port, traffic(sentences, serving, requests), max(concurrencies))
                curve.append({"tasks": count, "rss_mb": rss_mb(process.pid), **load})
                print(f"  {count} tasks: {curve[-1]}", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    top = max(concurrencies)
    first, last = curve[0], curve[-1]
    per_task = (last["rss_mb"] - first["rss_mb"]) * 2**20 / max(last["tasks"] - first["tasks"], 1)
    return {
        "backbone": "all-MiniLM-L6-v2 (packaged)",
        "requests": requests,
        "traffic": "one CoNLL-2003 validation sentence a request, tasks drawn uniformly",
        "closed_loop": loads,
        "mixed_vs_single_throughput": loads[f"mixed@{top}"]["requests_per_second"]
        / loads[f"single@{top}"]["requests_per_second"],
        "server_rss_mb_4_tasks": server_mb,
        "finetuned_process_rss_mb": finetuned_mb,
        "memory_ratio_vs_finetuned": server_mb / (4 * finetuned_mb),
        "task_curve": curve,
        "checkpoint_bytes_mean": checkpoint_bytes,
        "memory_per_added_task_bytes": per_task,
        "memory_per_task_vs_checkpoint": per_task / checkpoint_bytes,
        "throughput_most_vs_fewest_tasks": last["requests_per_second"] / first["requests_per_second"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement (shrink for a look)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--task-counts", default="1,10,100,1000")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output", default="benchmarks/results/serve.json")
    args = parser.parse_args()
    result = measure(
        args.requests,
        [int(c) for c in args.concurrency.split(",")],
        [int(c) for c in args.task_counts.split(",")],
        args.port,
    )
    print(json.dumps({key: value for key, value in result.items() if not isinstance(value, dict | list)}, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
