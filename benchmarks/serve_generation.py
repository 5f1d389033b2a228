"""One ``ptuning serve`` process holding three generation tasks (Prefix-Tuning on one decoder): generated tokens per
second and time to first token of mixed-task traffic against single-task traffic of the same work.

Three checkpoints are trained for one step each (``ptuning train --task generation --max-steps 1``: speed does not
depend on quality) on a copying task made of CoNLL-2003 sentences, with deep prefixes of 8, 16 and 32 vectors and the
same answer length. One server process on loopback answers closed-loop clients (threads, each sending its next
request when the last has ended) that stream greedy OpenAI completions (``temperature: 0``, ``stream: true``,
``stream_options: {"include_usage": true}``) of CoNLL-2003 validation sentences drawn with a fixed seed:

* mixed traffic: ``--requests`` requests, at least as many as 3 tasks x the clients (so that each task's share fills
  the clients alone), the tasks in equal shares, shuffled (interleaved);
* single-task traffic of the same work: each task alone with its share of those requests at the same concurrency, one
  task after another, their tokens and times added up (``--single-work share``, the default). Requests join the
  running batch between decoding steps, so a client whose answer ended early is not held for a whole batch, in
  either traffic. ``--single-work full`` gives each task all the mixed run's prompts instead (3x the work).

Mixed and single-task runs alternate (which goes first alternates too, as the machine drifts) ``--repeats`` times at
each concurrency. Generated tokens are the usage's ``completion_tokens``; time to first token is the arrival of the
first non-empty text chunk; latency the arrival of ``[DONE]``. ``mixed_vs_single_throughput`` (per concurrency) is
the median over repeats of mixed tokens/s over single-task tokens/s. The greedy answers of the mixed runs are compared
with those of the single-task runs (a mixed batch should write what each task writes alone).

    python benchmarks/serve_generation.py [--backbone smollm2-135m|PATH] [--requests 24] [--concurrency 1,8,32]
        [--repeats 3] [--max-tokens 32] [--single-work share|full] [--quick]

Writes benchmarks/results/serve_generation.json (``--quick``: benchmarks/results/quick/serve_generation.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from protocol import RESULTS, write_json  # benchmarks/ is the script's folder, on sys.path
from serve import call, start
from transformers import AutoConfig

from ptuning.backbones import load_tokenizer, resolve
from ptuning.data.packaged import load_packaged

PREFIXES = {"a": 8, "b": 16, "c": 32}  # task name: deep prefix length
FULL = {"requests": 24, "concurrency": "1,8,32", "repeats": 3}
QUICK = {"requests": 6, "concurrency": "1,8", "repeats": 2}
TRAIN_EXAMPLES = 8
SEED = 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_checkpoints(backbone: str, folder: Path, max_tokens: int) -> dict[str, Path]:
    """The three tasks' runs: one optimizer step each on a few CoNLL-2003 sentences to copy."""
    sentences = [" ".join(s.words) for s in load_packaged("conll2003-ner").train if len(s.words) >= 6]
    data = folder / "copy.jsonl"
    data.write_text("".join(json.dumps({"input": s, "target": s}) + "\n" for s in sentences[:TRAIN_EXAMPLES]))
    runs = {}
    for name, length in PREFIXES.items():
        runs[name] = folder / name
        command = [
            *(sys.executable, "-m", "ptuning", "train", "--model", backbone, "--train", str(data)),
            *("--task", "generation", "--max-steps", "1", "--batch-size", "4", "--prompt-length", str(length)),
            *("--max-new-tokens", str(max_tokens), "--output", str(runs[name])),
        ]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"training task {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return runs


def prompts(backbone: str, max_tokens: int) -> list[str]:
    """CoNLL-2003 validation sentences of 5 to 40 words whose tokens and answer fit the backbone's positions."""
    tokenizer = load_tokenizer(backbone)
    positions = AutoConfig.from_pretrained(resolve(backbone)).max_position_embeddings
    found = []
    for sentence in load_packaged("conll2003-ner").validation:
        text = " ".join(sentence.words)
        # one more token than the text's: the tokenizer's leading special token, if it adds one
        if 5 <= len(sentence.words) <= 40 and len(tokenizer(text).input_ids) + 1 + max_tokens <= positions:
            found.append(text)
    if not found:
        raise RuntimeError(f"no CoNLL-2003 sentence fits {positions} positions with {max_tokens} new tokens")
    return found


def traffic(texts: list[str], count: int, seed: int, max_tokens: int) -> list[dict[str, Any]]:
    """``count`` streamed greedy completions: the tasks in equal shares (the remainder to the first), shuffled."""
    generator = random.Random(seed)
    names = [list(PREFIXES)[index % len(PREFIXES)] for index in range(count)]
    generator.shuffle(names)
    return [
        {
            "model": name,
            "prompt": generator.choice(texts),
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for name in names
    ]


def stream(port: int, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed completion: its text, generated tokens, time to first text and latency (seconds)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    first, usage, finish, done, pieces = None, None, None, False, []
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            for line in response:  # server-sent events: "data: {...}" lines between blank ones
                if not line.startswith(b"data: "):
                    continue
                if line.strip() == b"data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"the stream ended with an error: {chunk}")
                for choice in chunk["choices"]:
                    if choice["text"] and first is None:
                        first = time.perf_counter()
                    pieces.append(choice["text"])
                    finish = choice["finish_reason"] or finish
                usage = chunk.get("usage") or usage
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{error.code} for {body['model']!r}: {error.read().decode()}") from error
    ended = time.perf_counter()
    if not done or usage is None or finish is None:
        raise RuntimeError(f"incomplete stream for {body}: [DONE] {done}, usage {usage}, finish {finish}")
    return {
        "text": "".join(pieces),
        "tokens": usage["completion_tokens"],
        "prompt_tokens": usage["prompt_tokens"],
        "chunks": sum(bool(piece) for piece in pieces),
        "finish_reason": finish,
        "ttft": None if first is None else first - started,
        "latency": ended - started,
    }


def histogram(port: int, name: str) -> tuple[float, float]:
    """A server histogram's (sum, count) so far."""
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    return tuple(float(metrics.split(f"{name}_{part} ")[1].split()[0]) for part in ("sum", "count"))


def closed_loop(port: int, requests: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """``concurrency`` clients, each streaming its share of the requests one after the other."""
    answers: list[dict[str, Any] | None] = [None] * len(requests)
    rows_before = histogram(port, "ptuning_generation_batch_rows")

    def client(first: int) -> None:
        for index in range(first, len(requests), concurrency):
            answers[index] = stream(port, requests[index])

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(min(concurrency, len(requests)))))
    elapsed = time.perf_counter() - started
    rows_after = histogram(port, "ptuning_generation_batch_rows")
    steps = rows_after[1] - rows_before[1]
    return {"seconds": elapsed, "answers": answers, "steps": steps, "rows": rows_after[0] - rows_before[0]}


def percentile(values: list[float], share: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else None


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs as one: tokens and seconds add up, latencies pooled (milliseconds)."""
    answers = [answer for run in runs for answer in run["answers"]]
    tokens, seconds = sum(answer["tokens"] for answer in answers), sum(run["seconds"] for run in runs)
    ttft = [1000 * answer["ttft"] for answer in answers if answer["ttft"] is not None]
    latency = [1000 * answer["latency"] for answer in answers]
    steps = sum(run["steps"] for run in runs)
    return {
        "requests": len(answers),
        "generated_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "ttft_p50_ms": percentile(ttft, 0.5),
        "ttft_p99_ms": percentile(ttft, 0.99),
        "latency_p50_ms": percentile(latency, 0.5),
        "latency_p99_ms": percentile(latency, 0.99),
        "prompt_tokens_mean": statistics.fmean(answer["prompt_tokens"] for answer in answers),
        "without_text": len(answers) - len(ttft),
        "text_chunks_per_answer": statistics.fmean(answer["chunks"] for answer in answers),
        "decoding_steps": steps,
        "rows_per_step": sum(run["rows"] for run in runs) / steps if steps else None,
        "finish_reasons": {
            reason: sum(answer["finish_reason"] == reason for answer in answers)
            for reason in sorted({answer["finish_reason"] for answer in answers})
        },
    }


def mixed_and_single(port: int, requests: list[dict[str, Any]], concurrency: int, mixed_first: bool, work: str):
    """The mixed run of ``requests`` and single-task runs, in the order asked; and how many greedy answers differ
    between the two. ``work`` "full": each task answers all of ``requests`` alone (as many requests a run as the
    mixed run: as many rounds of the closed loop); "share": each task its share of them."""
    if work == "full":
        singles = {name: [{**body, "model": name} for body in requests] for name in PREFIXES}
    else:
        singles = {name: [body for body in requests if body["model"] == name] for name in PREFIXES}

    def single() -> list[dict[str, Any]]:
        return [closed_loop(port, bodies, concurrency) for bodies in singles.values()]

    if mixed_first:
        mixed = closed_loop(port, requests, concurrency)
        alone = single()
    else:
        alone = single()
        mixed = closed_loop(port, requests, concurrency)
    # each task's answers to the prompts, by prompt (a prompt recurs rarely, and then has one greedy answer)
    by_prompt = {
        (body["model"], body["prompt"]): answer["text"]
        for run, bodies in zip(alone, singles.values(), strict=True)
        for body, answer in zip(bodies, run["answers"], strict=True)
    }
    differ = sum(
        answer["text"] != by_prompt[body["model"], body["prompt"]]
        for body, answer in zip(requests, mixed["answers"], strict=True)
    )
    return summary([mixed]), summary(alone), differ


def check_streaming(port: int, texts: list[str], max_tokens: int) -> int:
    """Stream against plain answers, one prompt a task (also the warm-up): how many differ."""
    differ = 0
    for body in traffic(texts, len(PREFIXES), SEED, max_tokens):
        plain_body = {key: value for key, value in body.items() if key != "stream_options"}
        plain = call(port, "POST", "/v1/completions", {**plain_body, "stream": False})
        streamed = stream(port, body)
        differ += plain["choices"][0]["text"] != streamed["text"]
        differ += plain["usage"]["completion_tokens"] != streamed["tokens"]
    return differ


def measure(args: argparse.Namespace, concurrencies: list[int]) -> dict[str, Any]:
    texts = prompts(args.backbone, args.max_tokens)
    port = args.port or free_port()
    by_concurrency: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        runs = train_checkpoints(args.backbone, Path(work), args.max_tokens)
        log = Path(work) / "server.log"
        process = start(runs, Path(work), port, log)
        try:
            stream_differs = check_streaming(port, texts, args.max_tokens)
            closed_loop(port, traffic(texts, 2 * len(PREFIXES), SEED, args.max_tokens), len(PREFIXES))  # warm-up
            for concurrency in concurrencies:
                repeats = []
                for repeat in range(args.repeats):
                    count = max(args.requests, len(PREFIXES) * concurrency)  # a task's share fills the clients
                    requests = traffic(texts, count, SEED + 1 + repeat, args.max_tokens)
                    mixed, single, differ = mixed_and_single(
                        port, requests, concurrency, repeat % 2 == 0, args.single_work
                    )
                    ratio = mixed["tokens_per_second"] / single["tokens_per_second"]
                    repeats.append({"mixed": mixed, "single": single, "ratio": ratio, "answers_differ": differ})
                    print(
                        f"  {concurrency} clients, repeat {repeat}: mixed {mixed['tokens_per_second']:.1f} tok/s, "
                        f"single-task {single['tokens_per_second']:.1f} tok/s, ratio {ratio:.3f}, "
                        f"{differ} answers differ",
                        flush=True,
                    )
                by_concurrency[str(concurrency)] = {
                    "requests": count,
                    "mixed_vs_single_throughput": statistics.median(run["ratio"] for run in repeats),
                    "repeats": repeats,
                }
        finally:
            process.terminate()
            process.wait(timeout=60)
            server_log = log.read_text()
    return {
        "stream_vs_plain_differences": stream_differs,
        "server_tracebacks": server_log.count("Traceback"),
        "by_concurrency": by_concurrency,
        "mixed_vs_single_throughput": {c: entry["mixed_vs_single_throughput"] for c, entry in by_concurrency.items()},
    }


def table(result: dict[str, Any]) -> str:
    """One line per concurrency: medians over repeats."""
    lines = [
        "| clients | mixed tok/s | single tok/s | mixed/single | TTFT p50 / p99 ms (mixed) "
        "| TTFT p50 / p99 ms (single) | latency p50 / p99 ms (mixed) | rows/step mixed, single |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def median(runs: list[dict[str, Any]], kind: str, field: str) -> float:
        values = [run[kind][field] for run in runs if run[kind][field] is not None]
        return statistics.median(values) if values else float("nan")

    for concurrency, entry in result["by_concurrency"].items():
        runs = entry["repeats"]
        lines.append(
            f"| {concurrency} | {median(runs, 'mixed', 'tokens_per_second'):.1f} | "
            f"{median(runs, 'single', 'tokens_per_second'):.1f} | {entry['mixed_vs_single_throughput']:.3f} | "
            f"{median(runs, 'mixed', 'ttft_p50_ms'):.0f} / {median(runs, 'mixed', 'ttft_p99_ms'):.0f} | "
            f"{median(runs, 'single', 'ttft_p50_ms'):.0f} / {median(runs, 'single', 'ttft_p99_ms'):.0f} | "
            f"{median(runs, 'mixed', 'latency_p50_ms'):.0f} / {median(runs, 'mixed', 'latency_p99_ms'):.0f} | "
            f"{median(runs, 'mixed', 'rows_per_step'):.1f}, {median(runs, 'single', 'rows_per_step'):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m", help="a decoder: an alias or a local folder")
    parser.add_argument(
        "--requests",
        type=int,
        help=f"requests per mixed run at least (default {FULL['requests']}; 3 x the clients if more)",
    )
    parser.add_argument("--concurrency", help=f"concurrent clients, comma-separated (default {FULL['concurrency']})")
    parser.add_argument("--repeats", type=int, help=f"alternated mixed/single runs (default {FULL['repeats']})")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens written at most per answer")
    parser.add_argument(
        "--single-work",
        choices=["full", "share"],
        default="share",
        help="single-task runs: each task answers its share of the mixed run's prompts (share) or all of them (full)",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    parser.add_argument("--output", help="default: benchmarks/results/serve_generation.json (--quick: results/quick/)")
    args = parser.parse_args()
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    shrunk = {key: getattr(args, key) for key in FULL if getattr(args, key) != FULL[key]}
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    started = time.time()
    result = measure(args, concurrencies)
    content = {
        "command": " ".join(["python", *sys.argv]),
        "mode": "quick" if args.quick else "full",
        "shrunk": shrunk,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cores": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "backbone": args.backbone,
        "tasks": {name: {"prefix_length": length} for name, length in PREFIXES.items()},
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "single_work": args.single_work,
        "traffic": "streamed greedy completions of CoNLL-2003 validation sentences, tasks in equal shares, shuffled",
        "wall_seconds": time.time() - started,
        **result,
    }
    print(table(result))
    print(json.dumps(result["mixed_vs_single_throughput"]))
    output = Path(args.output) if args.output else RESULTS / ("quick" if args.quick else "") / "serve_generation.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output.parent, output.name, content)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
