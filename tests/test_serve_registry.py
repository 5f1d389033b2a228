"""The task registry of ``ptuning serve``: checkpoints of ``--models-dir`` and ``--task-listing`` registered at start
and loaded on first use by a real server process: a registered task answers as the same checkpoint preloaded does,
the least recently used are dropped under ``--max-loaded-tasks`` and ``--task-memory-mb``, concurrent first
requests load once, a broken checkpoint is a 503 JSON error while the others keep being served, and the listing
pages through what is registered."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import assert_same_answer
from test_serve import served, start, stop

pytest.importorskip("fastapi")

from ptuning.errors import PtuningError  # noqa: E402 - after the skip
from ptuning.model import PromptedModel  # noqa: E402
from ptuning.predictor import Predictor  # noqa: E402
from ptuning.serving.config import ServeConfig  # noqa: E402
from ptuning.serving.errors import ApiError  # noqa: E402
from ptuning.serving.generating import generation_task  # noqa: E402
from ptuning.serving.metrics import Metrics  # noqa: E402
from ptuning.serving.registry import TASK_OVERHEAD_BYTES, Registry, read_listing, scan  # noqa: E402

NER_INPUT = {"text": "Peter Blackburn runs in Oslo"}
SENT_INPUT = {"text": "a good film with fine acting"}
COPIES = ("a", "b", "c", "d", "e", "many")  # registered copies of the ner run


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_runs, tiny_backbone_folder, minilm_tokenizer) -> Path:
    """A --models-dir: copies of the ner run, a copy of sent, a multi-task checkpoint, and folders that cannot load
    (a truncated weights file, another backbone shape, an empty folder), beside a file and a dotted folder."""
    from conftest import tiny_backbone

    folder = tmp_path_factory.mktemp("registry")
    for name in COPIES:
        shutil.copytree(tiny_runs / "ner", folder / name)
    shutil.copytree(tiny_runs / "sent", folder / "sent2")
    shutil.copytree(tiny_runs / "ner", folder / "broken")
    weights = folder / "broken" / "checkpoint" / "ptuning_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    wider = tmp_path_factory.mktemp("wider")
    tiny_backbone("bert", vocab_size=minilm_tokenizer.vocab_size, hidden_size=48).save_pretrained(wider)
    minilm_tokenizer.save_pretrained(wider)
    PromptedModel.from_backbone(str(wider), "token-classification", num_labels=3).save_pretrained(folder / "other")
    multi = PromptedModel.from_backbone(
        str(tiny_backbone_folder), "token-classification", labels=["O", "B-X"], name="tag"
    )
    multi.add_task("cls", "sequence-classification", ["neg", "pos"], shared_prompt="tag")
    multi.save_pretrained(folder / "multi")
    (folder / "empty").mkdir()
    (folder / "v1.old").mkdir()
    (folder / "notes.txt").write_text("not a checkpoint\n")
    return folder


@pytest.fixture(scope="module")
def server(tiny_runs, models):
    yield from served(tiny_runs, "--models-dir", str(models), "--max-loaded-tasks", "2")


def metric(client, name: str) -> float:
    text = client.call("GET", "/metrics")[2]
    return float(text.split(f"\n{name} ")[1].split()[0])


def loaded(client) -> set[str]:
    return {task["name"] for task in client.call("GET", "/v1/tasks")[2]["tasks"] if not task["pinned"]}


def predict(client, task: str, record: dict) -> tuple[int, dict]:
    status, _, body = client.call("POST", f"/v1/tasks/{task}/predict", {"inputs": [record]})
    return status, body


def test_scan_registers_folders_by_name_and_a_listing_by_its_entries(models, tmp_path):
    found = scan(str(models))
    assert set(found) == {*COPIES, "sent2", "broken", "other", "multi", "empty"}  # no file, no dotted name
    assert found["a"] is None  # the path is models/a, not kept
    (tmp_path / "tasks.json").write_text(json.dumps({"x": "ckpt/x", "y": "/abs/y"}))
    assert read_listing(str(tmp_path / "tasks.json")) == {"x": str(tmp_path / "ckpt/x"), "y": "/abs/y"}
    (tmp_path / "tasks.jsonl").write_text('{"name": "x", "path": "x"}\n\n{"name": "x.1", "path": "y"}\n')
    with pytest.raises(PtuningError, match=r"tasks.jsonl:3: expected a task name"):
        read_listing(str(tmp_path / "tasks.jsonl"))
    (tmp_path / "tasks.jsonl").write_text('{"name": "x", "path": "x"}\n{"name": "y", "path": "y\\u0000z"}\n')
    with pytest.raises(PtuningError, match=r"tasks.jsonl:2: the folder path 'y\\x00z' holds a NUL character"):
        read_listing(str(tmp_path / "tasks.jsonl"))


def test_a_folder_or_listing_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    """--models-dir unreadable (faked: this may run as root, who reads any folder) and a listing not UTF-8 each stop
    the start with a PtuningError naming the file (test_bad_inputs_http runs them through ``serve``)."""
    (tmp_path / "tasks.json").write_bytes(b'{"x": "x",\n "\xff": "y"}')
    with pytest.raises(PtuningError, match=r"tasks.json:2: not UTF-8 text \(byte 0xff\)"):
        read_listing(str(tmp_path / "tasks.json"))

    def refused(path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("os.scandir", refused)
    with pytest.raises(PtuningError, match=rf"--models-dir {tmp_path}: cannot read it \(Permission denied\)"):
        scan(str(tmp_path))


def test_a_registered_task_loads_on_first_use_and_answers_as_preloaded(server):
    assert "a" not in loaded(server)
    loads = metric(server, "ptuning_task_loads_total")
    status, _, body = server.call(
        "POST", "/v1/predict", {"inputs": [{"task": "a", **NER_INPUT}, {"task": "ner", **NER_INPUT}]}
    )
    assert status == 200
    assert_same_answer(body["outputs"][0], body["outputs"][1])
    assert metric(server, "ptuning_task_loads_total") == loads + 1
    assert metric(server, "ptuning_task_load_seconds_count") == loads + 1
    assert "a" in loaded(server)
    again = predict(server, "a", NER_INPUT)  # loaded now: no second load
    assert again[0] == 200 and metric(server, "ptuning_task_loads_total") == loads + 1
    assert_same_answer(again[1]["outputs"][0], body["outputs"][1])
    sent = predict(server, "sent2", SENT_INPUT)
    assert sent[0] == 200 and sent[1]["outputs"][0] == predict(server, "sent", SENT_INPUT)[1]["outputs"][0]


def test_least_recently_used_is_dropped_under_max_loaded_tasks(server):
    evictions = metric(server, "ptuning_task_evictions_total")
    for name in ("a", "b", "a", "c"):  # b is the least recently used when c comes
        assert predict(server, name, NER_INPUT)[0] == 200
    assert loaded(server) == {"a", "c"}
    assert metric(server, "ptuning_task_evictions_total") >= evictions + 1
    assert metric(server, "ptuning_loaded_registered_tasks") == 2
    assert predict(server, "ner", NER_INPUT)[0] == 200  # the command line's tasks stay
    assert predict(server, "b", NER_INPUT)[0] == 200 and loaded(server) == {"b", "c"}


def test_a_dropped_tasks_series_leave_the_metrics(server):
    """Per-task series live while their task is loaded: /metrics does not grow with every task ever served."""
    assert predict(server, "d", NER_INPUT)[0] == 200
    assert 'ptuning_inputs_total{status="200",task="d"}' in server.call("GET", "/metrics")[2]
    for name in ("a", "b"):  # d is the least recently used when b comes (--max-loaded-tasks 2)
        assert predict(server, name, NER_INPUT)[0] == 200
    assert "d" not in loaded(server)
    text = server.call("GET", "/metrics")[2]
    assert 'task="d"' not in text
    assert 'ptuning_inputs_total{status="200",task="b"}' in text and 'task="ner"' in text


def test_concurrent_first_requests_load_once(server):
    loads = metric(server, "ptuning_task_loads_total")
    barrier = threading.Barrier(12)

    def ask(_: int) -> tuple[int, dict]:
        barrier.wait()
        return predict(server, "many", NER_INPUT)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    assert all(status == 200 for status, _ in answers)
    assert metric(server, "ptuning_task_loads_total") == loads + 1
    assert all(body == answers[0][1] for _, body in answers)


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("broken", "is not a readable safetensors file"),
        ("other", "another backbone shape"),
        ("empty", "is not a ptuning checkpoint"),
    ],
)
def test_a_checkpoint_that_cannot_load_is_a_503_and_the_server_serves_on(server, name, said):
    failures = metric(server, "ptuning_task_load_failures_total")
    status, headers, body = server.call("POST", f"/v1/tasks/{name}/predict", {"inputs": [NER_INPUT]})
    assert status == 503 and body["error_type"] == "task_load_failed"
    assert f"task {name!r} failed to load" in body["error"] and said in body["error"]
    assert int(headers["retry-after"]) > 0
    again = server.call("POST", "/v1/predict", {"inputs": [{"task": name, **NER_INPUT}]})
    assert again[0] == 503 and again[2]["error"] == body["error"]
    assert metric(server, "ptuning_task_load_failures_total") == failures + 1  # remembered, not tried again
    assert server.call("GET", "/health/ready")[0] == 200
    assert predict(server, "ner", NER_INPUT)[0] == 200 and predict(server, "d", NER_INPUT)[0] == 200


def test_a_multi_task_checkpoint_serves_each_task_as_name_colon_task(server):
    status, body = predict(server, "multi:cls", SENT_INPUT)
    assert status == 200 and body["outputs"][0]["label"] in ("neg", "pos")
    assert {"multi:tag", "multi:cls"} <= loaded(server)
    status, body = predict(server, "multi:nothing", SENT_INPUT)
    assert status == 404 and "multi:tag" in body["error"]
    assert predict(server, "never", SENT_INPUT)[0] == 404
    assert server.call("POST", "/v1/tasks", {"name": "x", "path": "a"})[0] == 404  # admin loads need --admin-token


def test_a_body_refused_loads_none_of_the_tasks_it_names(server):
    """Too many inputs, or a body too large, are refused before any registered task they name loads."""
    loads = metric(server, "ptuning_task_loads_total")
    many = [{"task": "e", **NER_INPUT}] * 257  # over the default --max-inputs-per-request, 256
    status, _, body = server.call("POST", "/v1/predict", {"inputs": many})
    assert (status, body["error_type"]) == (413, "too_many_inputs")
    assert server.call("POST", "/v1/tasks/e/predict", {"inputs": [NER_INPUT] * 257})[0] == 413
    assert server.call("POST", "/models/e", {"inputs": ["Peter runs"] * 257})[0] == 413
    assert server.call("POST", "/models/e", {"inputs": "x" * 1_000_001})[0] == 413  # over --max-body-bytes
    assert metric(server, "ptuning_task_loads_total") == loads and "e" not in loaded(server)


def test_an_unknown_task_is_told_with_twenty_loaded_tasks_at_most(server):
    """With thousands of tasks loaded, a 404 names the first 20 and counts the others."""
    loaded_now = SimpleNamespace(tasks={f"t{index}": SimpleNamespace(generates=True) for index in range(45)})
    first = ", ".join(f"t{index}" for index in range(20))
    with pytest.raises(PtuningError) as refused:
        Predictor.parse(loaded_now, {"task": "nope"}, "inputs[0]")
    assert str(refused.value) == f"inputs[0]: unknown task 'nope'; loaded tasks: {first} and 25 more"
    with pytest.raises(ApiError) as refused:
        generation_task(loaded_now, "nope")
    assert str(refused.value) == f"unknown task 'nope'; generation tasks: {first} and 25 more"
    status, body = predict(server, "nope", NER_INPUT)  # a few loaded: all named
    assert status == 404 and body["error"].startswith("unknown task 'nope'; loaded tasks: ner, sent")
    assert "more" not in body["error"]


def test_the_listing_counts_and_pages_through_the_registered(server):
    status, _, body = server.call("GET", "/v1/tasks")
    assert status == 200 and "registered" not in body
    assert body["registry"]["registered"] == 11 and body["registry"]["max_loaded_tasks"] == 2
    assert body["registry"]["loaded"] <= 2 + 1  # a load may be under way when every loaded one is held
    assert metric(server, "ptuning_registered_tasks") == 11
    page = server.call("GET", "/v1/tasks?registered=true&offset=1&limit=3")[2]["registered"]
    assert [entry["name"] for entry in page["tasks"]] == ["b", "broken", "c"]
    assert page["offset"] == 1 and page["limit"] == 3
    assert server.call("GET", "/v1/tasks?registered=true&offset=20")[2]["registered"]["tasks"] == []


def test_memory_budget_drops_the_least_recently_used(tiny_runs, models, tmp_path):
    """A budget for two copies of the ner run; a third is listed outside --models-dir."""
    listing = tmp_path / "tasks.jsonl"
    listing.write_text(json.dumps({"name": "listed", "path": str(models / "c")}) + "\n")
    size = (models / "a" / "checkpoint" / "ptuning_model.safetensors").stat().st_size
    budget = str(2.5 * (size + TASK_OVERHEAD_BYTES) / 2**20)
    process, client = start(
        tiny_runs, "--models-dir", str(models), "--task-listing", str(listing), "--task-memory-mb", budget
    )
    try:
        for name in ("a", "b", "a", "listed"):
            assert predict(client, name, NER_INPUT)[0] == 200
        assert loaded(client) == {"a", "listed"}
        registry = client.call("GET", "/v1/tasks")[2]["registry"]
        assert 0 < registry["loaded_bytes"] <= float(budget) * 2**20 and registry["registered"] == 12
        assert metric(client, "ptuning_task_evictions_total") == 1
    finally:
        stop(process)


@pytest.fixture(scope="module")
def decoder_models(tmp_path_factory, tiny_decoder_folders) -> Path:
    """A generation checkpoint on a tiny Llama (``pinned/``), and copies of it registered in ``models/``."""
    import torch

    from ptuning import PromptConfig
    from ptuning.vocabulary import Family

    folder = tmp_path_factory.mktemp("decoder-registry")
    torch.manual_seed(0)
    backbone = str(tiny_decoder_folders["llama"])
    model = PromptedModel.from_backbone(backbone, "causal-lm", prompt=PromptConfig(length=3))
    record = model.tasks["default"]
    record.family, record.options = Family.GENERATION, {"max_new_tokens": 6}  # as ``train --task generation`` saves
    model.save_pretrained(folder / "pinned")
    for name in ("gen", "card"):
        shutil.copytree(folder / "pinned", folder / "models" / name)
    return folder


def test_generation_routes_load_a_registered_task_on_first_use(decoder_models):
    process, client = start(decoder_models, "--models-dir", str(decoder_models / "models"), tasks=("pinned",))
    try:
        asked = {"prompt": "Mary sings in", "max_tokens": 4, "temperature": 0}
        status, _, registered = client.call("POST", "/v1/completions", {"model": "gen", **asked})
        pinned = client.call("POST", "/v1/completions", {"model": "pinned", **asked})[2]
        assert status == 200 and registered["choices"] == pinned["choices"]
        generated = client.call("POST", "/v1/tasks/gen/generate", {"inputs": "Mary sings in"})
        assert generated[0] == 200 and generated[2]["generated_text"]
        assert client.call("GET", "/v1/models/card")[2]["id"] == "card"  # loaded to learn it generates
        assert metric(client, "ptuning_task_loads_total") == 2
    finally:
        stop(process)


class StubPredictor:
    """What the registry asks of a predictor: tasks loaded and unloaded by name (no modules: 0 bytes each)."""

    def __init__(self) -> None:
        self.tasks: dict[str, str] = {}
        self.model = SimpleNamespace(tasks={}, heads={}, prompts={})

    def load(self, name: str, folder: str) -> list[str]:
        self.tasks[name] = folder
        return [name]

    def unload(self, name: str) -> None:
        del self.tasks[name]


@pytest.fixture
def stub_registry(tmp_path):
    """A registry of ``x``, ``y`` and ``z`` loading into a :class:`StubPredictor`, one loaded at most; and ``nul``,
    whose path no file system takes."""
    with ThreadPoolExecutor(1) as worker:
        checkpoints = {"x": None, "y": None, "z": None, "nul": str(tmp_path / "a\0b")}
        registry = Registry(checkpoints, ServeConfig(models_dir=str(tmp_path), max_loaded_tasks=1), Metrics())
        registry.start(StubPredictor(), worker)
        yield registry


def test_a_hold_outliving_an_admin_unload_does_not_count_against_the_reload(stub_registry):
    """A request holds x; an admin unloads x; another request loads x again: the first request's release leaves the
    new load held by the second (not dropped under it), and every count ends at 0."""
    registry = stub_registry

    async def scenario() -> None:
        first = await registry.acquire(["x"])
        registry.metrics.inputs.labels("x", "200").inc()
        registry.predictor.unload("x")  # DELETE /v1/tasks/x: the predictor first, then the registry
        registry.forget("x")
        assert "x" not in registry.loaded
        sample = registry.metrics.registry.get_sample_value
        assert sample("ptuning_loaded_registered_task_bytes") == 0
        assert sample("ptuning_inputs_total", {"task": "x", "status": "200"}) is None
        second = await registry.acquire(["x"])
        first.release()
        assert registry.loaded["x"].held == 1
        other = await registry.acquire(["y"])  # over --max-loaded-tasks 1: x is held, so it stays
        assert set(registry.loaded) == {"x", "y"} and "x" in registry.predictor.tasks
        second.release()
        other.release()
        assert [entry.held for entry in registry.loaded.values()] == [0, 0]
        (await registry.acquire(["z"])).release()  # x and y, free now, are dropped for it
        assert set(registry.loaded) == {"z"} and set(registry.predictor.tasks) == {"z"}

    asyncio.run(scenario())


def test_a_load_failing_before_it_reads_the_folder_ends_as_a_503_and_is_tried_again(stub_registry):
    """A path whose size cannot even be asked (a NUL byte: ValueError) fails its load like any other: a 503 naming
    the task, remembered for a while, then tried again, never a load left under way for every request to await."""
    registry = stub_registry

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(ApiError) as refused:
                await registry.acquire(["nul"])
            assert (refused.value.status, refused.value.error_type) == (503, "task_load_failed")
            assert "task 'nul' failed to load" in str(refused.value)
            assert not registry.loading and not registry.incoming
        registry.failures["nul"] = (registry.failures["nul"][0], 0.0)  # its Retry-After passed: tried again
        with pytest.raises(ApiError):
            await registry.acquire(["nul"])
        assert registry.metrics.registry.get_sample_value("ptuning_task_load_failures_total") == 2

    asyncio.run(scenario())
