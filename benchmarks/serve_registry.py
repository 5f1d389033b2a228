"""``ptuning serve`` with a task registry: 100,000 registered checkpoints on the packaged MiniLM, loaded on first use
under a memory budget.

The registry is written first: the four task shapes of ``serve.py`` (NER, POS and chunking heads, a sentence
classifier; prompts of length 8-32) saved by the library (``save_pretrained``), then each registered task a copy of
one of them with new random tensors of the same shapes and scale (the safetensors header reused, the data drawn
anew; the config hard-linked). One server registers them all with ``--models-dir`` and holds the loaded ones within
``--task-memory-mb``; a second serves the hot tasks preloaded (on its command line). Measured:

* registration: one directory listing of the models folder (``scan``, in this process, and the server's own log);
* cold loads: requests, one at a time, for tasks never asked for before (drawn uniformly from all); each one's
  latency less that of the same request once its task is loaded is the load's cost (``cold_load_ms``);
* hot throughput: closed-loop clients sending Zipf-skewed traffic over the hot tasks (the most popular, loaded and
  within the budget) to the registry server and the preloaded one, alternately, ``--repeats`` times;
* mixed traffic: Zipf-skewed over all registered tasks (the popular ones hit, the tail loads and evicts), and
  uniform (nearly every request a load);
* resident memory: the registry server's peak against the preloaded server's (backbone, server, the hot tasks) less
  its hot tasks, plus the registration's names (measured here with tracemalloc) and the budget.

    python benchmarks/serve_registry.py [--tasks 100000] [--folder DIR] [--memory-budget-mb 128] [--clean]

Writes benchmarks/results/serve_registry.json. A full registry takes ~31 GB of disk (``--tasks`` shrinks it; the
result says how many); the folder is kept for the next run (which writes only what is missing) unless ``--clean``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from serve import TASKS, call, closed_loop, memory_mb  # benchmarks/ is the script's folder, on sys.path

from ptuning import PromptedModel
from ptuning.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from ptuning.data.packaged import load_packaged
from ptuning.serving.registry import TASK_OVERHEAD_BYTES, scan

MARKER = "registry.json"  # what the folder holds: how many tasks are written


def task_names(count: int) -> list[str]:
    return [f"t{index:06d}" for index in range(count)]


def template_of(index: int) -> str:
    return list(TASKS)[index % len(TASKS)]


def write_templates(folder: Path) -> dict[str, Path]:
    """The four task shapes, saved by the library's own save path."""
    paths = {}
    for name, (head, labels, prompt) in TASKS.items():
        paths[name] = folder / name
        if not (paths[name] / WEIGHTS_NAME).is_file():
            model = PromptedModel.from_backbone("minilm-l6", head, num_labels=labels, prompt=prompt, name=name)
            model.save_pretrained(paths[name])
    return paths


def layout(weights: Path) -> tuple[bytes, list[tuple[int, float]]]:
    """A safetensors file's header (as stored) and each tensor's float count and standard deviation, in order."""
    raw = weights.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    tensors = sorted((value for key, value in header.items() if key != "__metadata__"), key=lambda t: t["data_offsets"])
    assert all(tensor["dtype"] == "F32" for tensor in tensors), "the templates hold fp32 tensors"
    data = np.frombuffer(raw[8 + size :], dtype=np.float32)
    segments = []
    for tensor in tensors:
        start, end = (offset // 4 for offset in tensor["data_offsets"])
        segments.append((end - start, float(data[start:end].std()) or 0.02))
    return raw[: 8 + size], segments


def write_registry(folder: Path, count: int) -> dict[str, Any]:
    """``count`` registered checkpoints in ``folder/models`` (those written by an earlier run kept); the
    templates in ``folder/templates``."""
    templates = write_templates(folder / "templates")
    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    written = json.loads(marker.read_text())["tasks"] if marker.is_file() else 0
    for name in task_names(written)[count:]:  # a smaller registry than the last run's
        shutil.rmtree(models / name)
    layouts = {name: layout(path / WEIGHTS_NAME) for name, path in templates.items()}
    per_task = statistics.fmean(len(header) + 4 * sum(n for n, _ in segments) for header, segments in layouts.values())
    needed = (count - written) * per_task
    free = shutil.disk_usage(folder).free
    if needed > 0.9 * free:
        raise SystemExit(f"{count - written} tasks need {needed / 1e9:.1f} GB; {free / 1e9:.1f} GB free: use --tasks")
    rng = np.random.default_rng(written)
    started = time.perf_counter()
    for index in range(written, count):
        target = models / f"t{index:06d}"
        shape = template_of(index)
        header, segments = layouts[shape]
        target.mkdir(exist_ok=True)
        config = target / CONFIG_NAME
        if not config.exists():
            os.link(templates[shape] / CONFIG_NAME, config)
        data = np.concatenate([rng.standard_normal(n, dtype=np.float32) * std for n, std in segments])
        with open(target / WEIGHTS_NAME, "wb") as out:
            out.write(header)
            out.write(data.tobytes())
        if (index + 1) % 10_000 == 0:
            print(f"  written {index + 1} / {count} ({time.perf_counter() - started:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps({"tasks": count}))
    return {
        "write_seconds": seconds,
        "written_now": max(count - written, 0),
        "checkpoint_bytes_mean": per_task,
        "registry_gb": count * per_task / 1e9,
    }


def serve(checkpoints: list[str], port: int, log: Path, *flags: str) -> tuple[subprocess.Popen, float]:
    """A ``ptuning serve`` process, ready, and the seconds it took."""
    command = [sys.executable, "-m", "ptuning", "serve", *checkpoints, "--port", str(port), "--max-queue", "100000"]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, *flags], stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            call(port, "GET", "/health/ready")
            return process, time.perf_counter() - started
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    return float(text.split(f"\n{name} ")[1].split()[0])


def registry_counts(port: int) -> dict[str, float]:
    names = ("task_loads_total", "task_evictions_total", "task_load_failures_total", "task_load_seconds_sum")
    return {name: metric(port, f"ptuning_{name}") for name in names}


def body(task: str, words: list[str]) -> dict:
    """One request: a sentence for ``task`` (words for a token head, text for a sentence classifier)."""
    tokens = TASKS[template_of(int(task[1:]))][0] == "token-classification"
    return {"inputs": [{"task": task, **({"words": words} if tokens else {"text": " ".join(words)})}]}


def zipf_traffic(names: list[str], count: int, exponent: float, sentences, seed: int) -> list[dict]:
    """``count`` requests, the ``k``-th of ``names`` asked for in proportion to ``1 / k**exponent`` (0: uniform)."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, len(names) + 1, dtype=np.float64) ** exponent
    chosen = rng.choice(len(names), size=count, p=weights / weights.sum())
    return [body(names[index], sentences[(seed + i) % len(sentences)]) for i, index in enumerate(chosen)]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def timed(port: int, request: dict) -> float:
    started = time.perf_counter()
    call(port, "POST", "/v1/predict", request)
    return 1000 * (time.perf_counter() - started)


def cold_loads(port: int, names: list[str], sentences) -> dict[str, Any]:
    """Each task's first request, one at a time, then at once the same request again (loaded): the load's cost is
    the difference (the two neighbours in time, as the shared machine drifts)."""
    before = registry_counts(port)
    first, again = [], []
    for index, name in enumerate(names):
        request = body(name, sentences[index % len(sentences)])
        first.append(timed(port, request))
        again.append(timed(port, request))
    after = registry_counts(port)
    extra = [cold - hot for cold, hot in zip(first, again, strict=True)]
    loads = after["task_loads_total"] - before["task_loads_total"]
    return {
        "tasks": len(names),
        "cold_request_ms_p50": statistics.median(first),
        "cold_request_ms_p99": percentile(first, 0.99),
        "hot_request_ms_p50": statistics.median(again),
        "cold_load_ms_p50": statistics.median(extra),
        "cold_load_ms_p99": percentile(extra, 0.99),
        "server_load_ms_mean": 1000 * (after["task_load_seconds_sum"] - before["task_load_seconds_sum"]) / loads,
        "loads": loads,
    }


def run_traffic(port: int, requests: list[dict], concurrency: int) -> dict[str, Any]:
    before = registry_counts(port)
    result = closed_loop(port, requests, concurrency)
    after = registry_counts(port)
    result.update({key: after[key] - before[key] for key in ("task_loads_total", "task_evictions_total")})
    result["hit_rate"] = 1 - result["task_loads_total"] / len(requests)
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"writing {args.tasks} registered tasks under {folder}", flush=True)
    written = write_registry(folder, args.tasks)
    print(f"  {written}", flush=True)
    started = time.perf_counter()
    registered = scan(str(folder / "models"))
    scan_seconds = time.perf_counter() - started
    tracemalloc.start()  # what the server keeps of the registration: the names, and their order for the listing
    kept = scan(str(folder / "models")), sorted(registered)
    registration_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del kept
    assert len(registered) == args.tasks, (len(registered), args.tasks)
    sentences = [sentence.words for sentence in load_packaged("conll2003-ner").validation[:512]]
    names = task_names(args.tasks)
    random.Random(0).shuffle(names)  # popularity rank -> task: the popular ones are of every shape
    hot = names[: args.hot_tasks]
    pinned = f"base={folder / 'templates' / 'ner'}"
    flags = ["--models-dir", str(folder / "models"), "--task-memory-mb", str(args.memory_budget_mb)]
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    registry, start_seconds = serve([pinned], args.port, logs / "registry.log", *flags)
    preloaded = None
    try:
        call(args.port, "POST", "/v1/predict", body("t000000", sentences[0]))  # warm-up (one load)
        baseline_mb = memory_mb(registry.pid)
        print(f"registry server ready in {start_seconds:.1f} s, {baseline_mb:.0f} MB", flush=True)
        tail = names[len(names) // 2 :]
        cold = cold_loads(args.port, random.Random(1).sample(tail, min(args.cold, len(tail))), sentences)
        print(f"  cold loads: {cold}", flush=True)
        preloaded, _ = serve(
            [pinned, *[f"{name}={folder / 'models' / name}" for name in hot]], args.port + 1, logs / "preloaded.log"
        )
        for index, name in enumerate(hot):  # the hot tasks loaded in the registry server
            call(args.port, "POST", "/v1/predict", body(name, sentences[index % len(sentences)]))
        for port in (args.port, args.port + 1):  # warm-up: the traffic's shapes once
            closed_loop(port, zipf_traffic(hot, args.requests // 4, args.zipf, sentences, 99), args.concurrency)
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            requests = zipf_traffic(hot, args.requests, args.zipf, sentences, repeat)
            if repeat % 2:  # each server goes first as often: the machine drifts
                eager = closed_loop(args.port + 1, requests, args.concurrency)
                lazy = run_traffic(args.port, requests, args.concurrency)
            else:
                lazy = run_traffic(args.port, requests, args.concurrency)
                eager = closed_loop(args.port + 1, requests, args.concurrency)
            runs.append({"registry": lazy, "preloaded": eager})
            ratio = lazy["requests_per_second"] / eager["requests_per_second"]
            print(f"  hot repeat {repeat}: registry {lazy}, preloaded {eager}, ratio {ratio:.3f}", flush=True)
        ratios = [run["registry"]["requests_per_second"] / run["preloaded"]["requests_per_second"] for run in runs]
        skewed = run_traffic(args.port, zipf_traffic(names, args.requests, args.zipf, sentences, 7), args.concurrency)
        print(f"  Zipf over all: {skewed}", flush=True)
        uniform = run_traffic(args.port, zipf_traffic(names, args.requests, 0.0, sentences, 8), args.concurrency)
        print(f"  uniform over all: {uniform}", flush=True)
        peak_mb, after_mb = memory_mb(registry.pid, "VmHWM"), memory_mb(registry.pid)
        preloaded_peak_mb = memory_mb(preloaded.pid, "VmHWM")
        listing = call(args.port, "GET", "/v1/tasks")["registry"]
    finally:
        for process in (registry, preloaded):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)
    logged = next(line for line in (logs / "registry.log").read_text().splitlines() if "registered" in line)
    hot_mb = len(hot) * (written["checkpoint_bytes_mean"] + TASK_OVERHEAD_BYTES) / 2**20
    shapes = TASKS.items()
    bound_mb = preloaded_peak_mb - hot_mb + registration_mb + args.memory_budget_mb
    return {
        "backbone": "all-MiniLM-L6-v2 (packaged)",
        "registered_tasks": args.tasks,
        "shrunk": args.tasks < 100_000,
        "task_shapes": {name: f"{kind}, {labels} labels, prompt {p.length}" for name, (kind, labels, p) in shapes},
        **written,
        "scan_seconds": scan_seconds,
        "server_registration_log": logged.split("ptuning: ")[-1].strip(),
        "server_ready_seconds": start_seconds,
        "memory_budget_mb": args.memory_budget_mb,
        "loaded_at_end": listing,
        "peak_rss_mb": peak_mb,
        "rss_after_mb": after_mb,
        "rss_after_start_mb": baseline_mb,
        "preloaded_server_peak_rss_mb": preloaded_peak_mb,
        "hot_tasks": len(hot),
        "hot_tasks_mb": hot_mb,
        "registration_mb": registration_mb,
        # the backbone and server as the preloaded server holds them (its peak less its hot tasks), the registration's
        # names, and the budget
        "peak_rss_bound_mb": bound_mb,
        "peak_rss_within_budget": peak_mb <= bound_mb,
        **{key: value for key, value in cold.items() if key.startswith(("cold_load", "cold_request", "hot_request"))},
        "cold_loads": cold,
        "zipf_exponent": args.zipf,
        "concurrency": args.concurrency,
        "requests_per_run": args.requests,
        "hot_throughput_ratio": statistics.median(ratios),
        "hot_throughput_ratio_repeats": ratios,
        # the server's own time in its batches per request, preloaded over registry (the clients' share left out)
        "hot_inference_ratio": statistics.median(
            run["preloaded"]["inference_ms_per_request"] / run["registry"]["inference_ms_per_request"] for run in runs
        ),
        "hot_runs": runs,
        "mixed_zipf": skewed,
        "mixed_uniform": uniform,
        "mixed_zipf_requests_per_second": skewed["requests_per_second"],
        "mixed_uniform_requests_per_second": uniform["requests_per_second"],
        "explained": (
            "cold_load_ms: a task's first request less the same request sent at once again (loaded), one at a time: "
            "reading its folder (config, safetensors; from disk when the page cache no longer holds it), checking "
            "the backbone, building its prompt, head and task, dropping the least recently used first, all in the "
            "inference thread; hot throughput: the registry server against one holding the hot tasks preloaded, "
            "alternating runs of the same requests (median ratio), on 2 cores shared with the clients"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="registered tasks to write (shrink for a look)")
    parser.add_argument("--folder", default="/tmp/ptuning-serve-registry", help="where the registry is written")
    parser.add_argument("--clean", action="store_true", help="remove the folder after the run")
    parser.add_argument("--memory-budget-mb", type=float, default=128.0, help="the server's --task-memory-mb")
    parser.add_argument("--hot-tasks", type=int, default=100, help="the most popular tasks, preloaded for comparison")
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity exponent of the skewed traffic")
    parser.add_argument("--cold", type=int, default=200, help="cold loads timed one at a time")
    parser.add_argument("--requests", type=int, default=400, help="requests per traffic run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8, help="alternating registry/preloaded hot runs")
    parser.add_argument("--port", type=int, default=8775, help="the registry server's; the preloaded one's is +1")
    parser.add_argument("--output", default="benchmarks/results/serve_registry.json")
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        result = measure(args)
    finally:
        if args.clean:
            shutil.rmtree(args.folder, ignore_errors=True)
    result["total_seconds"] = time.perf_counter() - started
    print(json.dumps({key: value for key, value in result.items() if not isinstance(value, dict | list)}, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
