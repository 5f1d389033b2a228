"""The server's published contract holds: schemathesis generates requests from ``/openapi.json`` (valid ones and
invalid ones, every declared route, and methods no route takes) against a real ``ptuning serve`` process with
generation and classification tasks and the admin routes on, and runs all its checks: each answer's status, content
type, headers and body are the ones the schema declares, what the schema admits is accepted and what it refuses is
refused, no 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from pydantic import BaseModel
from test_serve import ADMIN, TOKEN, served
from test_serve_generation import TASKS, runs  # noqa: F401 - the fixture, used by name

pytest.importorskip("schemathesis")

EXAMPLES = 10  # per operation and phase: enough to find each kind of mismatch, in about half a minute on 2 cores
# schemathesis's statuses for a refused invalid request, and 413 (Content Too Large): a list of inputs over
# --max-inputs-per-request is refused with it, as the schema's maxItems says
REFUSED = '["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]'
# Requests naming the loaded tasks (schemathesis draws names that are not, 404): a task checks the fields its kind
# needs and the positions its prompt leaves, which one schema for all tasks cannot say, and refuses with 422 (so 422
# joins schemathesis's statuses for a valid request here)
NAMED = f"""
[dictionaries.tasks]
values = {list(TASKS)!r}

[parameters]
"path.name" = {{ dictionary = "tasks", probability = 0.8 }}
"body.model" = {{ dictionary = "tasks", probability = 0.8 }}
"body.inputs[*].task" = {{ dictionary = "tasks", probability = 0.8 }}

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""


class HubInputs(BaseModel):
    """A body another module's route declares as a pydantic parameter."""

    inputs: str


@pytest.fixture(scope="module")
def server(runs):  # noqa: F811 - the imported fixture
    # the admin routes on (without their token, which schemathesis is not given: each answers 401)
    yield from served(runs, "--max-inputs-per-request", "4", "--models-dir", str(runs), tasks=TASKS, env=ADMIN)


def schemathesis(server, folder: Path, config: str, *flags: str) -> None:
    """Run schemathesis with all its checks against ``server`` (``config``: its TOML); fail with its report."""
    (folder / "schemathesis.toml").write_text(
        f"[checks.negative_data_rejection]\nexpected-statuses = {REFUSED}\n{config}"
    )
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(folder / "schemathesis.toml")),
        *("run", f"{server.base}/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", "0"),
        *("--generation-database", "none", "--no-color", *flags),
        # one worker: hypothesis's lambda descriptions fail in threads on Python 3.11 (ast.parse's recursion depth)
        *("--workers", "1"),
    ]
    # in the test's folder: schemathesis keeps a cache of crashes where it runs
    found = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=folder)
    assert found.returncode == 0, found.stdout + found.stderr


def test_schemathesis_finds_no_failure(server, tmp_path):
    schemathesis(server, tmp_path, "")


def test_answers_of_loaded_tasks_are_as_declared(server, tmp_path):
    """Valid requests naming the loaded tasks: real answers (JSON and server-sent events), each as declared."""
    schemathesis(server, tmp_path, NAMED, "--mode", "positive", "--phases", "fuzzing")


def test_a_method_no_route_takes_is_405_listing_those_the_path_takes(server):
    for method, path, allowed in [
        ("PUT", "/v1/tasks", "GET, POST"),
        ("GET", "/v1/tasks/ner", "DELETE"),
        ("DELETE", "/v1/predict", "POST"),
        ("POST", "/metrics", "GET"),
    ]:
        status, headers, body = server.call(method, path)
        assert (status, headers["allow"], body["error_type"]) == (405, allowed, "method_not_allowed")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_what_the_server_serves(server, page):
    """Swagger UI (and ReDoc) work without internet: every script, style and icon the page loads is served here."""
    status, headers, html = server.call("GET", page)
    assert status == 200 and headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)""", html) + re.findall(r"""url: ?["']([^"']+)""", html)
    assert {url.rsplit(".", 1)[-1] for url in urls} >= {"js", "json"} and all(url.startswith("/") for url in urls)
    assert "//" not in "".join(urls) and "cdn" not in html and "https://" not in html
    kinds = {"js": "javascript", "css": "text/css", "png": "image/png", "json": "application/json"}
    for url in urls:
        with urllib.request.urlopen(server.base + url, timeout=30) as answer:
            assert answer.status == 200 and kinds[url.rsplit(".", 1)[-1]] in answer.headers["content-type"]
            assert len(answer.read()) > 100


def test_the_admin_token_is_checked_whole(server):
    """Only the exact token passes (compared in constant time, which behaviour cannot show; its bytes as sent)."""
    right = server.call("DELETE", "/v1/tasks/nosuch", None, {"Authorization": f"Bearer {TOKEN}"})
    assert (right[0], right[2]["error_type"]) == (404, "unknown_task")  # past the token: no such task to unload
    assert server.call("DELETE", "/v1/tasks/nosuch", None, {"Authorization": f"bearer {TOKEN}"})[0] == 404
    for given in [
        None,
        "",
        "Bearer",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN.upper()}",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN[:-1]}é",
    ]:
        headers = {} if given is None else {"Authorization": given}
        status, _, body = server.call("DELETE", "/v1/tasks/ner", None, headers)
        assert (status, body["error_type"]) == (401, "unauthorized"), given
    assert "ner" in {task["name"] for task in server.call("GET", "/v1/tasks")[2]["tasks"]}


def test_a_route_another_module_adds_is_published_with_the_errors_of_its_kind():
    """A route added beside ours (a path, a pydantic body, a query) is described
    with the errors of its kind, in the one error body, which FastAPI's own validation answers too."""
    from fastapi.testclient import TestClient

    from ptuning.serving.app import create_app
    from ptuning.serving.config import ServeConfig

    app = create_app("unused", ServeConfig())  # never started: nothing loads

    @app.post("/elsewhere/{name}")
    async def infer(name: str, body: HubInputs, top_k: int = 1) -> dict:
        return {"name": name, "top_k": top_k}

    operation = app.openapi()["paths"]["/elsewhere/{name}"]["post"]
    assert set(operation["responses"]) == {"200", "404", "413", "422", "500", "503"}
    for status in ("404", "422", "503"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    client = TestClient(app)
    answer = client.post("/elsewhere/x", json={"inputs": 5})
    assert answer.status_code == 422
    assert answer.json() == {"error": "inputs: expected a string, got 5", "error_type": "validation"}
    answer = client.post("/elsewhere/x?top_k=many", json={"inputs": "text"})
    assert answer.status_code == 422 and answer.json()["error"].startswith("query.top_k: ")
    assert client.post("/elsewhere/x?top_k=3", json={"inputs": "text"}).json() == {"name": "x", "top_k": 3}
    answer = client.put("/elsewhere/x")
    assert (answer.status_code, answer.headers["allow"]) == (405, "POST")


def test_a_405_lists_the_methods_without_building_the_schema():
    """The Allow header comes from the routes (those of included routers among them, which FastAPI keeps as one route
    listing no methods), not from the OpenAPI schema, which a 405 does not build."""
    from fastapi.testclient import TestClient

    from ptuning.serving.app import create_app
    from ptuning.serving.config import ServeConfig

    app = create_app("unused", ServeConfig())  # never started: nothing loads
    client = TestClient(app)
    for method, path, allowed in [("PUT", "/v1/tasks", "GET, POST"), ("POST", "/openapi.json", "GET, HEAD")]:
        answer = client.request(method, path)
        assert (answer.status_code, answer.headers["allow"]) == (405, allowed)
    assert app.openapi_schema is None


def test_the_published_error_kinds_are_those_the_docs_list():
    """ErrorBody names every error_type docs/serving.md's Errors table lists (and no other); the 503 says which
    sends Retry-After and declares it."""
    from ptuning.serving.app import create_app
    from ptuning.serving.config import ServeConfig

    table = (Path(__file__).parent.parent / "docs" / "serving.md").read_text().split("## Errors")[1].split("\n## ")[0]
    documented = {
        kind
        for row in table.splitlines()
        if row.startswith("| 4") or row.startswith("| 5")
        for kind in re.findall(r"`([a-z_]+)`", row.split("|")[2])
    }
    schema = create_app("unused", ServeConfig()).openapi()
    said = schema["components"]["schemas"]["ErrorBody"]["properties"]["error_type"]["description"]
    assert set(said.removeprefix("its kind: ").split(", ")) == documented
    unavailable = schema["paths"]["/v1/predict"]["post"]["responses"]["503"]
    assert "task_load_failed" in unavailable["description"]
    assert unavailable["headers"]["Retry-After"]["required"] is False
