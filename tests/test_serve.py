"""``ptuning serve``: a real server process on loopback, answered by a real HTTP client."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import assert_same_answer
from test_predict_many import MIXED_INPUTS as INPUTS

pytest.importorskip("fastapi")

from ptuning.predictor import Predictor  # noqa: E402 - after the skip

TOKEN = "s3cret"
ADMIN = {"PTUNING_ADMIN_TOKEN": TOKEN}  # the environment that enables runtime loading
TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Client:
    """Requests to the server under test; every answer is (status, headers, JSON or text)."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                status, answer_headers, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, answer_headers, raw = error.code, dict(error.headers), error.read()
        text = raw.decode()
        try:
            return status, answer_headers, json.loads(text)
        except json.JSONDecodeError:
            return status, answer_headers, text


def start(
    runs: Path, *flags: str, tasks: tuple[str, ...] = ("ner", "sent"), env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, Client]:
    """A server process on a free loopback port serving the runs ``tasks`` of ``runs``, ready (``env``: more
    environment variables); its output goes to a file (a pipe nobody reads would fill up with access-log lines and
    stall it)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="ptuning-serve-", suffix=".log", delete=False)  # noqa: SIM115
    command = [
        sys.executable,
        "-m",
        "ptuning",
        "serve",
        *(f"{task}={runs / task}" for task in tasks),
        "--port",
        str(port),
        *flags,
    ]
    inherited = {name: value for name, value in os.environ.items() if name not in ADMIN}  # a token only when asked
    environment = {**inherited, "HF_HUB_OFFLINE": "1", **(env or {})}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    process.log = Path(log.name)
    client = Client(port)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if client.call("GET", "/health/ready")[0] == 200:
                return process, client
        except OSError:
            pass  # not listening yet
        if process.poll() is not None:
            raise RuntimeError(f"the server stopped: {process.log.read_text()}")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not get ready in 90 s")


def stop(process: subprocess.Popen) -> str:
    """SIGTERM, wait, and the server's output."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    output = process.log.read_text()
    process.log.unlink()
    return output


def served(runs: Path, *flags: str, tasks: tuple[str, ...] = ("ner", "sent"), env: dict[str, str] | None = None):
    """A module fixture's body: the client of a server started as ``start`` starts it, which must stop without a
    traceback in its log (no request made it fail)."""
    process, client = start(runs, *flags, tasks=tasks, env=env)
    yield client
    output = stop(process)
    assert "Traceback" not in output, output


def predictor_of(runs: Path, tasks: tuple[str, ...]) -> Predictor:
    """The offline Predictor of the same runs, to compare a server's answers with."""
    return Predictor.from_checkpoints({name: runs / name for name in tasks}, progress=False)


@pytest.fixture(scope="module")
def server(tiny_runs):
    process, client = start(tiny_runs, "--max-inputs-per-request", "8", "--max-body-bytes", "4000")
    yield client
    stop(process)


@pytest.fixture(scope="module")
def offline(tiny_runs):
    """What `ptuning predict ner=... sent=...` answers for each input."""
    predictor = Predictor.from_checkpoints({"ner": tiny_runs / "ner", "sent": tiny_runs / "sent"})
    return [predictor.predict([predictor.parse(record, "x")])[0] for record in INPUTS]


def test_health_tasks_and_metrics(server):
    assert server.call("GET", "/health/live")[:3:2] == (200, {"status": "live"})
    assert server.call("GET", "/health/ready")[:3:2] == (200, {"status": "ready"})
    status, _, body = server.call("GET", "/v1/tasks")
    assert body["backbone"]["dtype"] == "float32" and body["backbone"]["device"] == "cpu"
    tasks = {task["name"]: task for task in body["tasks"]}
    assert status == 200 and set(tasks) == {"ner", "sent"}
    assert tasks["ner"]["kind"] == "token-classification" and tasks["ner"]["prompt_length"] == 2
    assert tasks["sent"]["labels"] == ["neg", "pos"] and tasks["sent"]["prompt_length"] == 5
    assert 0 < tasks["ner"]["stored_bytes"] < 50_000 and tasks["ner"]["method"] == "deep"
    server.call("POST", "/v1/predict", {"inputs": INPUTS[:2]})
    status, headers, text = server.call("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'ptuning_inputs_total{status="200",task="ner"}' in text and "ptuning_batch_tokens_bucket" in text
    assert "ptuning_queue_depth" in text and 'ptuning_request_seconds_count{endpoint="/v1/predict"}' in text


@pytest.mark.numerics
def test_mixed_task_answers_equal_offline_predict(server, offline):
    status, _, body = server.call("POST", "/v1/predict", {"inputs": INPUTS})
    assert status == 200 and len(body["outputs"]) == len(INPUTS)
    for answer, expected in zip(body["outputs"], offline, strict=True):
        assert_same_answer(answer, expected)
    status, _, body = server.call("POST", "/v1/tasks/sent/predict", {"inputs": [{"text": "a good film"}]})
    assert status == 200
    assert_same_answer(body["outputs"][0], offline[1])


@pytest.mark.numerics
def test_a_bf16_server_answers_like_fp32_predict(tiny_runs, offline):
    process, client = start(tiny_runs, "--precision", "bf16", "--device", "cpu")
    try:
        status, _, body = client.call("POST", "/v1/predict", {"inputs": INPUTS})
        backbone = client.call("GET", "/v1/tasks")[2]["backbone"]
    finally:
        stop(process)
    assert status == 200 and backbone["dtype"] == "bfloat16"
    for answer, expected in zip(body["outputs"], offline, strict=True):
        assert answer.get("label") == expected.get("label") and answer.get("tags") == expected.get("tags")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error_type"),
    [
        ("POST", "/v1/predict", {"inputs": [{"task": "pos", "text": "x"}]}, 404, "unknown_task"),
        ("POST", "/v1/predict", {"inputs": [{"text": "x"}]}, 422, "validation"),  # no task named
        ("POST", "/v1/tasks/pos/predict", {"inputs": [{"text": "x"}]}, 404, "unknown_task"),
        ("POST", "/v1/predict", b"{not json", 422, "invalid_json"),
        ("POST", "/v1/predict", {"inputs": "text"}, 422, "validation"),
        ("POST", "/v1/predict", {"inputs": []}, 422, "validation"),
        ("POST", "/v1/predict", {"inputs": [{"task": "sent", "text": 3}]}, 422, "validation"),
        ("POST", "/v1/predict", {"inputs": [{"task": "sent", "text": "x"}] * 9}, 413, "too_many_inputs"),
        ("POST", "/v1/predict", {"inputs": [{"task": "sent", "text": "x" * 5000}]}, 413, "too_large"),
        ("GET", "/v1/nothing", None, 404, "not_found"),
        ("POST", "/v1/tasks", {"name": "x", "path": "ner"}, 404, "not_found"),  # no admin token
    ],
)
def test_bad_requests_get_4xx_json(server, method, path, body, status, error_type):
    answer_status, _, answer = server.call(method, path, body)
    assert (answer_status, answer["error_type"]) == (status, error_type) and answer["error"]


def test_concurrent_load_loses_nothing(server, offline):
    """2,000 requests of 1-3 mixed-task inputs, 32 at a time: every answer right and in order."""
    generator = random.Random(0)
    plans = [[generator.randrange(len(INPUTS)) for _ in range(generator.randint(1, 3))] for _ in range(2000)]

    def send(plan: list[int]) -> bool:
        status, _, body = server.call("POST", "/v1/predict", {"inputs": [INPUTS[i] for i in plan]})
        assert status == 200
        for answer, index in zip(body["outputs"], plan, strict=True):
            assert_same_answer(answer, offline[index])
        return True

    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(send, plans, timeout=300))
    assert time.monotonic() - started < 300
    _, _, text = server.call("GET", "/metrics")
    batches = float(text.split("ptuning_batch_inputs_count ")[1].split()[0])
    inputs = sum(len(plan) for plan in plans)
    assert batches < inputs  # concurrent inputs shared batches
    assert float(text.split("ptuning_batch_seconds_count ")[1].split()[0]) == batches  # each batch timed


def test_queue_full_is_429_with_retry_after(tiny_runs):
    process, client = start(tiny_runs, "--max-queue", "2")
    try:
        status, headers, body = client.call("POST", "/v1/predict", {"inputs": INPUTS[:3]})
        assert (status, body["error_type"], headers["retry-after"]) == (429, "overloaded", "1")
        assert client.call("POST", "/v1/predict", {"inputs": INPUTS[:2]})[0] == 200
    finally:
        stop(process)


def test_runtime_load_and_unload_need_the_token_and_the_models_dir(tiny_runs, tmp_path):
    (tmp_path / "token").write_text(f"{TOKEN}\n")  # the token from a file here (from the environment elsewhere)
    (tmp_path / "token").chmod(0o600)
    process, client = start(tiny_runs, "--admin-token-file", str(tmp_path / "token"), "--models-dir", str(tiny_runs))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert client.call("POST", "/v1/tasks", {"name": "ner2", "path": "ner"})[0] == 401
        bad = client.call("POST", "/v1/tasks", {"name": "x", "path": "../.."}, auth)
        assert bad[0] == 422 and "not a folder under --models-dir" in bad[2]["error"]
        status, _, body = client.call("POST", "/v1/tasks", {"name": "ner2", "path": "ner"}, auth)
        assert status == 200 and {task["name"] for task in body["tasks"]} == {"ner", "sent", "ner2"}
        one = client.call("POST", "/v1/predict", {"inputs": [{"task": "ner2", "text": "Peter runs"}]})
        assert one[0] == 200 and one[2]["outputs"][0]["words"] == ["Peter", "runs"]
        assert client.call("DELETE", "/v1/tasks/ner2", None, auth)[0] == 200
        assert client.call("POST", "/v1/tasks/ner2/predict", {"inputs": [{"text": "x"}]})[0] == 404
        assert client.call("DELETE", "/v1/tasks/ner2", None, auth)[0] == 404
    finally:
        stop(process)


def test_sigterm_answers_the_requests_in_flight(tiny_runs):
    process, client = start(tiny_runs, "--max-wait-ms", "800")  # a batch waits 0.8 s for company
    answers = []
    sender = threading.Thread(target=lambda: answers.append(client.call("POST", "/v1/predict", {"inputs": INPUTS})))
    sender.start()
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    sender.join(timeout=30)
    assert answers and answers[0][0] == 200 and len(answers[0][2]["outputs"]) == len(INPUTS)
    # uvicorn shuts down gracefully, then re-raises the signal: the exit status says SIGTERM ended it
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in stop(process)


def test_bad_settings_stop_before_loading(tiny_runs, capsys):
    from ptuning.cli import main

    assert main(["serve", str(tiny_runs / "ner"), "--max-batch-tokens", "0"]) == 2
    assert "max_batch_tokens (--max-batch-tokens) must be at least 1, got 0" in capsys.readouterr().err
