"""Continuous batching over HTTP: a real ``ptuning serve`` process holding a deep-prefix and a shallow-prompt generation
task on one tiny Llama. A request that arrives while a long one decodes joins it between steps: its first token comes
before the long one ends, and every answer still equals its task's greedy answer alone."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_generation_commands import FAST, PAIRS, write_jsonl
from test_serve import TIMEOUT, predictor_of, served

pytest.importorskip("fastapi")

from ptuning.cli import main  # noqa: E402 - after the skip
from ptuning.generation import generate_texts  # noqa: E402
from ptuning.predictor import Predictor  # noqa: E402

TASKS = ("copy", "soft")
LONG = 110  # new tokens of the long request: most of the 125 positions the copy task's shifted prefix leaves


@pytest.fixture(scope="module")
def runs(tiny_decoder_folders, tmp_path_factory) -> Path:
    """``copy`` (a deep prefix, positions shifted) and ``soft`` (a shallow prompt of 4 vectors) on a tiny Llama."""
    folder = tmp_path_factory.mktemp("serve-continuous")
    copy = write_jsonl(folder / "copy.jsonl", [{"input": text, "target": text} for text, _ in PAIRS])
    data = write_jsonl(folder / "ner.jsonl", [{"input": text, "target": target} for text, target in PAIRS])
    model = ["--model", str(tiny_decoder_folders["llama"]), "--task", "generation"]
    copying = ["--train", str(copy), "--shift-positions", "--seed", "3", *FAST, "--max-new-tokens", "9"]
    assert main(["train", *model, *copying, "--output", str(folder / "copy")]) == 0
    shallow = ["--train", str(data), "--method", "shallow", *FAST[:6], "--prompt-length", "4"]
    assert main(["train", *model, *shallow, "--max-new-tokens", "6", "--output", str(folder / "soft")]) == 0
    return folder


@pytest.fixture(scope="module")
def server(runs):
    yield from served(runs, tasks=TASKS)


@pytest.fixture(scope="module")
def predictor(runs) -> Predictor:
    return predictor_of(runs, TASKS)


def expected(predictor: Predictor, task: str, text: str, max_new_tokens: int) -> dict:
    return generate_texts(predictor.model, predictor.model.tokenizer, [text], [task], max_new_tokens=max_new_tokens)[0]


def streamed(client, body: dict, first: threading.Event | None = None) -> tuple[str, float, float]:
    """A streamed completion's text, and when its first text and its end came (``first`` is set at the first)."""
    host, port = client.base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    connection.request(
        "POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200
    text, started = "", None
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        text += json.loads(line[6:])["choices"][0]["text"]
        if started is None:
            started = time.perf_counter()
            if first is not None:
                first.set()
    connection.close()
    return text, started, time.perf_counter()


@pytest.mark.numerics
def test_a_request_arriving_mid_decode_gets_its_first_token_before_the_long_one_ends(server, predictor):
    long_text, short_text = "Mary sings", "Peter Blackburn runs in Oslo"
    long_expected = expected(predictor, "copy", long_text, LONG)
    assert long_expected["finish_reason"] == "length", "the long answer takes all its steps"
    decoding = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        body = {"model": "copy", "prompt": long_text, "temperature": 0, "max_tokens": LONG}
        long_answer = pool.submit(streamed, server, body, decoding)
        assert decoding.wait(TIMEOUT)
        short, short_first, short_end = streamed(server, {"model": "soft", "prompt": short_text, "temperature": 0})
        long, long_first, long_end = long_answer.result()
    assert short_first < long_end and short_end < long_end, "the short request joined the running decode"
    assert long == long_expected["generated_text"]
    assert short == expected(predictor, "soft", short_text, 6)["generated_text"]


@pytest.mark.numerics
def test_concurrent_rows_of_both_methods_join_and_answer_as_alone(server, predictor):
    texts = [text for text, _ in PAIRS] + ["Oslo"]
    plans = [(task, text, length) for text in texts for task in TASKS for length in (2, 7, 12)]
    wanted = [expected(predictor, task, text, length)["generated_text"] for task, text, length in plans]

    def send(plan: tuple[str, str, int]) -> str:
        task, text, length = plan
        body = {"model": task, "prompt": text, "temperature": 0, "max_tokens": length}
        status, _, answer = server.call("POST", "/v1/completions", body)
        assert status == 200, answer
        return answer["choices"][0]["text"]

    def sample(task: str) -> int:
        body = {"model": task, "prompt": texts[0], "temperature": 1.2, "top_p": 0.9, "max_tokens": 5}
        status, _, answer = server.call("POST", "/v1/completions", body)
        assert status == 200, answer
        return answer["usage"]["completion_tokens"]

    with ThreadPoolExecutor(6) as pool:
        samples = [pool.submit(sample, task) for task in TASKS * 2]  # unseeded samples decode beside greedy rows
        assert list(pool.map(send, plans)) == wanted
        assert all(1 <= future.result() <= 5 for future in samples)
