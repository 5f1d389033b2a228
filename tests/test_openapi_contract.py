"""The server's published contract holds: schemathesis generates requests from ``/openapi.json`` (valid ones and
invalid ones, every declared route, and methods no route takes) against a real ``ptuning serve`` process with
generation and classification tasks and the admin routes on, and runs all its checks: each answer's status, content
type, headers and body are the ones the schema declares, what the schema admits is accepted and what it refuses is
refused, no 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import ADMIN, start, stop
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


@pytest.fixture(scope="module")
def server(runs):  # noqa: F811 - the imported fixture
    # the admin routes on (without their token, which schemathesis is not given: each answers 401)
    process, client = start(runs, "--max-inputs-per-request", "4", "--models-dir", str(runs), tasks=TASKS, env=ADMIN)
    yield client
    output = stop(process)
    assert "Traceback" not in output, output


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
