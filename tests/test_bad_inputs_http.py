"""Every bad input to ``ptuning serve`` is answered: a 4xx JSON ``{error, error_type}`` naming the field or the task,
never a traceback; a checkpoint or setting that cannot work stops ``serve`` at start with ``ptuning: error:``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from test_serve import ADMIN, TOKEN, served  # noqa: E402 - after the skip

from ptuning import PromptConfig, PromptedModel  # noqa: E402
from ptuning.cli import main  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_TIMEOUT = 120  # a start that fails must end, not hang


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_runs, tiny_backbone_folder, minilm_tokenizer) -> Path:
    """The --models-dir: the two tiny runs and checkpoints that cannot join them, each for a reason of its own."""
    from conftest import tiny_backbone

    folder = tmp_path_factory.mktemp("models")
    for name in ("ner", "sent", "mismatch", "badkind"):
        shutil.copytree(tiny_runs / ("sent" if name == "sent" else "ner"), folder / name)
    for name, change in (("mismatch", {"labels": ["A", "B", "C", "D", "E", "F"]}), ("badkind", {"kind": "nonsense"})):
        config_file = folder / name / "checkpoint" / "ptuning_config.json"  # a head of 6 labels, or no such kind
        config = json.loads(config_file.read_text())
        next(iter(config["tasks"].values())).update(change)
        config_file.write_text(json.dumps(config))
    wider = tmp_path_factory.mktemp("wider-bert")  # another backbone shape: hidden size 48
    tiny_backbone("bert", vocab_size=minilm_tokenizer.vocab_size, hidden_size=48).save_pretrained(wider)
    minilm_tokenizer.save_pretrained(wider)
    PromptedModel.from_backbone(str(wider), "token-classification", num_labels=3).save_pretrained(folder / "other")
    finetuned = PromptConfig(method="finetune")
    PromptedModel.from_backbone(
        str(tiny_backbone_folder), "sequence-classification", labels=["neg", "pos"], prompt=finetuned
    ).save_pretrained(folder / "full")
    (folder / "file.txt").write_text("not a checkpoint\n")
    (folder / "nul.jsonl").write_text('{"name": "x", "path": "ner\\u0000"}\n')  # a path no file system takes
    (folder / "latin1.jsonl").write_bytes(b'{"name": "x", "path": "ner"}\n{"name": "caf\xe9", "path": "ner"}\n')
    (folder / "empty").mkdir()
    return folder


@pytest.fixture(scope="module")
def server(models):
    yield from served(models, "--models-dir", str(models), env=ADMIN)


def loaded(server) -> set[str]:
    return {task["name"] for task in server.call("GET", "/v1/tasks")[2]["tasks"]}


def inputs(**fields) -> dict:
    return {"inputs": [{"task": "sent", "text": "a good film", **fields}]}


PREDICT, NER, LOAD = "/v1/predict", "/v1/tasks/ner/predict", "/v1/tasks"
TYPE, JSON = "validation", "invalid_json"

# (route, body, status, error_type, what the message says); every route is POSTed, loads with the admin token
HTTP_CASES = [
    # predict: each field of one JSON type, named when wrong
    (PREDICT, inputs(text_pair=7), 422, TYPE, "inputs[0].text_pair: expected a string, got 7"),
    (PREDICT, inputs(task=["ner"]), 422, TYPE, 'inputs[0].task: expected a string, got ["ner"]'),
    (PREDICT, inputs(text="\ud800"), 422, TYPE, "inputs[0].text: a lone surrogate at character 0"),
    (PREDICT, inputs(text_pair="ok\udfff"), 422, TYPE, "inputs[0].text_pair: a lone surrogate at character 2"),
    (PREDICT, inputs(task="ner", words=[None]), 422, TYPE, "inputs[0].words[0]: expected a string, got null"),
    (PREDICT, inputs(task="ner", words=["Oslo", 1]), 422, TYPE, "inputs[0].words[1]: expected a string, got 1"),
    (PREDICT, inputs(task="ner", words=[{}]), 422, TYPE, "inputs[0].words[0]: expected a string, got {}"),
    (PREDICT, inputs(task="ner", words=["a", "\ud83d"]), 422, TYPE, "inputs[0].words[1]: a lone surrogate"),
    (PREDICT, inputs(task="ner", words="Peter runs"), 422, TYPE, "inputs[0].words: expected a list"),
    (PREDICT, inputs(question=5), 422, TYPE, "inputs[0].question: expected a string, got 5"),
    (PREDICT, inputs(context=False), 422, TYPE, "inputs[0].context: expected a string, got false"),
    (PREDICT, inputs(choices="a"), 422, TYPE, 'inputs[0].choices: expected a list, got "a"'),
    (PREDICT, inputs(predicate="1"), 422, TYPE, 'inputs[0].predicate: expected an integer, got "1"'),
    (PREDICT, inputs(predicate=True), 422, TYPE, "inputs[0].predicate: expected an integer, got true"),
    (PREDICT, inputs(id=[1]), 422, TYPE, "inputs[0].id: expected a string or an integer, got [1]"),
    (PREDICT, {"inputs": [7]}, 422, TYPE, "inputs[0]: expected a JSON object, got 7"),
    (PREDICT, {"inputs": {"task": "ner"}}, 422, TYPE, "inputs: expected a list"),
    (PREDICT, {"input": []}, 422, TYPE, "inputs: missing"),
    (PREDICT, b"[1]", 422, TYPE, "the body: expected a JSON object, got [1]"),
    (PREDICT, {"inputs": [{"task": "ner"}]}, 422, TYPE, 'inputs[0]: expected {"words": [...]} or {"text": "..."}'),
    (PREDICT, inputs(task="a.b"), 404, "unknown_task", "inputs[0]: unknown task 'a.b'"),
    (PREDICT, {"inputs": [{"text": "x"}]}, 422, TYPE, "inputs[0].task: missing"),
    (PREDICT, inputs(predicate=1.5), 422, TYPE, "inputs[0].predicate: expected an integer, got 1.5"),
    (NER, {"inputs": [{"text": 7}]}, 422, TYPE, "inputs[0].text: expected a string, got 7"),
    (NER, {"inputs": ["Oslo"]}, 422, TYPE, 'inputs[0]: expected a JSON object, got "Oslo"'),
    # bodies that are not JSON at all: nested too deep, a number too long, bytes not UTF-8
    (PREDICT, b"[" * 50_000, 422, JSON, "the body is not JSON"),
    (PREDICT, b'{"inputs": [{"id": 1' + b"0" * 5000 + b"}]}", 422, JSON, "the body is not JSON"),
    (PREDICT, b'{"inputs": [{"text": "\xff"}]}', 422, JSON, "the body is not JSON"),
    # runtime loads: the body's types, then the task's name and folder, each named
    (LOAD, {"name": "a.b", "path": "ner"}, 422, TYPE, "without '.' and not a torch Module attribute, got 'a.b'"),
    (LOAD, {"name": "", "path": "ner"}, 422, TYPE, "a name is any non-empty text without '.'"),
    (LOAD, {"name": "train", "path": "ner"}, 422, TYPE, "not a torch Module attribute, got 'train'"),
    (LOAD, {"name": "training", "path": "ner"}, 422, TYPE, "not a torch Module attribute, got 'training'"),
    (LOAD, {"name": "ner", "path": "ner"}, 422, TYPE, "a task named 'ner' is loaded already"),
    (LOAD, {"name": 5, "path": "ner"}, 422, TYPE, "name: expected a string, got 5"),
    (LOAD, {"name": "\ud800", "path": "ner"}, 422, TYPE, "name: a lone surrogate at character 0"),
    (LOAD, {"name": "x", "path": ["ner"]}, 422, TYPE, 'path: expected a string, got ["ner"]'),
    (LOAD, {"name": "x"}, 422, TYPE, "path: missing"),
    (LOAD, {"name": "x", "path": "ner", "force": True}, 422, TYPE, "force: unknown field"),
    (LOAD, b'"ner"', 422, TYPE, 'the body: expected a JSON object, got "ner"'),
    (LOAD, {"name": "x", "path": "ner\u0000"}, 422, TYPE, "cannot load task 'x': 'ner\\x00' is not a folder under"),
    (LOAD, {"name": "x", "path": "a" * 5000}, 422, TYPE, "cannot load task 'x': 'aaaa"),
    (LOAD, {"name": "x", "path": "file.txt"}, 422, TYPE, "cannot load task 'x': 'file.txt' is not a folder under"),
    (LOAD, {"name": "x", "path": "empty"}, 422, TYPE, "is not a ptuning checkpoint"),
    (LOAD, {"name": "x", "path": "other"}, 422, TYPE, "was trained for another backbone shape"),
    (LOAD, {"name": "x", "path": "full"}, 422, TYPE, "a fine-tuned backbone serves its own task only"),
    (LOAD, {"name": "x", "path": "mismatch"}, 422, TYPE, "does not match its config"),
    (LOAD, {"name": "x", "path": "badkind"}, 422, TYPE, "unknown task 'nonsense'"),
]


@pytest.mark.parametrize(("route", "body", "status", "error_type", "message"), HTTP_CASES)
def test_a_bad_request_is_answered_naming_what_is_wrong(server, route, body, status, error_type, message):
    answer_status, _, answer = server.call("POST", route, body, AUTH if route == LOAD else None)
    assert (answer_status, answer["error_type"]) == (status, error_type), answer
    assert message in answer["error"], answer["error"]


def test_a_failed_load_registers_nothing(server):
    """However a runtime load fails (a bad name; a checkpoint refused before, while or after its modules are added),
    the tasks are those of before, and the same name loads correctly afterwards."""
    refused = [("a.b", "ner"), ("train", "ner"), ("retry", "other"), ("retry", "full"), ("retry", "mismatch")]
    for name, path in [*refused, ("retry", "badkind"), ("retry", "empty")]:
        status, _, answer = server.call("POST", "/v1/tasks", {"name": name, "path": path}, AUTH)
        assert status == 422 and f"task {name!r}" in answer["error"], answer
        assert loaded(server) == {"ner", "sent"}
    status, _, answer = server.call("POST", "/v1/tasks", {"name": "retry", "path": "ner"}, AUTH)
    assert status == 200 and {task["name"] for task in answer["tasks"]} == {"ner", "sent", "retry"}
    one = server.call("POST", "/v1/predict", {"inputs": [{"task": "retry", "text": "Peter runs"}]})
    assert one[0] == 200 and one[2]["outputs"][0]["words"] == ["Peter", "runs"]
    assert server.call("DELETE", "/v1/tasks/retry", None, AUTH)[0] == 200
    assert loaded(server) == {"ner", "sent"}


ADMIN_SOURCES = "PTUNING_ADMIN_TOKEN or --admin-token-file PATH"
# (command line with MODELS for the models folder, TOKEN and EMPTY for files holding a token or nothing, what the
# error says); each exits 2 without loading forever
START_CASES = [
    ("serve ner=MODELS/nope", ["cannot load task 'ner' from MODELS/nope", "is not a ptuning checkpoint"]),
    ("serve ner=MODELS/file.txt", ["cannot load task 'ner' from MODELS/file.txt", "is not a ptuning checkpoint"]),
    ("serve ner.v1=MODELS/ner", ["task names key", "without '.'", "got 'ner.v1'"]),
    ("serve ner=MODELS/ner other=MODELS/other", ["cannot load task 'other' from MODELS/other", "backbone shape"]),
    ("serve ner=MODELS/ner full=MODELS/full", ["cannot load task 'full' from MODELS/full"]),
    ("serve full=MODELS/full ner=MODELS/ner", ["cannot load task 'ner' from MODELS/ner"]),
    ("serve ner=MODELS/ner x=MODELS/badkind", ["cannot load task 'x' from MODELS/badkind", "'nonsense'"]),
    ("serve MODELS/nope", ["MODELS/nope is not a ptuning checkpoint"]),
    ("serve MODELS/ner --admin-token t --models-dir MODELS", ["--admin-token would show the token", ADMIN_SOURCES]),
    ("serve MODELS/ner --admin-token-file TOKEN", ["runtime loading needs both an admin token", "--models-dir"]),
    ("serve MODELS/ner --admin-token-file TOKEN --models-dir MODELS/nowhere", ["nowhere' is not a folder"]),
    ("serve MODELS/ner --admin-token-file TOKEN --models-dir MODELS/file.txt", ["file.txt' is not a folder"]),
    ("serve MODELS/ner --admin-token-file MODELS/empty/x --models-dir MODELS", ["MODELS/empty/x: cannot read it"]),
    ("serve MODELS/ner --admin-token-file EMPTY --models-dir MODELS", ["the admin token", "is empty"]),
    ("serve MODELS/ner --max-loaded-tasks 5", ["--max-loaded-tasks limit registered tasks", "--models-dir"]),
    ("serve MODELS/ner --models-dir MODELS --task-memory-mb 0", ["task_memory_mb (--task-memory-mb) must be positive"]),
    ("serve MODELS/ner --task-listing MODELS/nope.json", ["task_listing (--task-listing)", "is not a file"]),
    ("serve MODELS/ner --task-listing MODELS/file.txt", ["file.txt: not JSON"]),
    ("serve MODELS/ner --task-listing MODELS/nul.jsonl", ["nul.jsonl:1: the folder path", "a NUL character"]),
    ("serve MODELS/ner --task-listing MODELS/latin1.jsonl", ["latin1.jsonl:2: not UTF-8 text (byte 0xe9)"]),
    pytest.param(
        "serve MODELS/ner --models-dir LOCKED",
        ["--models-dir", "locked: cannot read it (Permission denied)"],
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder (test_serve_registry fakes it)"),
    ),
    ("serve MODELS/ner --port 70000", ["port (--port) must be a port number, 0 to 65535", "got 70000"]),
    ("serve MODELS/ner --port -1", ["port (--port) must be a port number"]),
    ("serve MODELS/ner --port TAKEN", ["cannot listen on 127.0.0.1:", "Address already in use"]),
    ("serve MODELS/ner --host no.such.host.invalid", ["--host no.such.host.invalid: cannot listen there"]),
    ("predict ner.v1=MODELS/ner sent=MODELS/sent", ["got 'ner.v1'"]),
    ("predict ner=MODELS/ner train=MODELS/sent", ["not a torch Module attribute, got 'train'"]),
]


@pytest.mark.parametrize(("command", "messages"), START_CASES)
def test_a_start_that_cannot_work_stops_with_exit_2(models, capsys, monkeypatch, tmp_path, command, messages):
    monkeypatch.delenv("PTUNING_ADMIN_TOKEN", raising=False)
    taken = socket.socket()  # a port another program listens on
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    files = {"TOKEN": tmp_path / "token", "EMPTY": tmp_path / "empty", "LOCKED": tmp_path / "locked"}
    files["TOKEN"].write_text(f"{TOKEN}\n")
    files["EMPTY"].write_text("")
    for file in (files["TOKEN"], files["EMPTY"]):
        file.chmod(0o600)
    files["LOCKED"].mkdir(mode=0o000)  # a folder nobody but root may list
    argv = [part.replace("MODELS", str(models)).replace("TAKEN", port) for part in command.split()]
    argv = [str(files.get(part, part)) for part in argv]
    if argv[0] == "serve":
        argv[1:1] = ["--port", "0"]  # a free port; a --port of the case comes later and wins
    codes: list[int] = []
    # off the main thread uvicorn installs no signal handlers; a daemon thread cannot keep pytest from ending
    runner = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    runner.start()
    runner.join(START_TIMEOUT)
    err = capsys.readouterr().err
    assert codes == [2], f"still running after {START_TIMEOUT} s: {err}" if not codes else err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ptuning: error: ")
    for message in messages:
        assert message.replace("MODELS", str(models)) in last
    taken.close()
