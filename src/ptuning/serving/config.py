"""The settings of ``ptuning serve``: kept apart from the server so that ``--help`` loads no web framework."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..devices import DEVICE_HELP, DEVICES, FORWARD_TOKENS, FORWARD_TOKENS_HELP, INFERENCE_PRECISION_HELP, PRECISIONS
from ..errors import PtuningError
from ..settings import at_least, check_settings, positive, setting

# where the admin token comes from: never the command line, which every user of the machine can read (ps)
ADMIN_TOKEN_VARIABLE = "PTUNING_ADMIN_TOKEN"
ADMIN_TOKEN_SOURCES = f"{ADMIN_TOKEN_VARIABLE} or --admin-token-file"
ADMIN_TOKEN_FLAG_REFUSED = (
    "--admin-token would show the token to every user of this machine (ps lists command lines); give it by "
    f"{ADMIN_TOKEN_SOURCES} PATH (its first line) instead"
)
logger = logging.getLogger("ptuning")


def port_number(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number, 0 to 65535 (0: any free port)"


@dataclass
class ServeConfig:
    """Settings of ``ptuning serve`` (each a flag)."""

    host: str = setting("127.0.0.1", "address to bind (loopback unless told otherwise)")
    port: int = setting(8000, "port", check=port_number)
    device: str = setting("auto", DEVICE_HELP, choices=DEVICES)
    precision: str = setting("fp32", INFERENCE_PRECISION_HELP, choices=PRECISIONS)
    max_batch_tokens: int = setting(4096, "token budget of one batch, inputs of any tasks", check=at_least(1))
    forward_tokens: int = setting(FORWARD_TOKENS, FORWARD_TOKENS_HELP, check=at_least(1))
    max_wait_ms: float = setting(5.0, "longest wait for more inputs after the first of a batch", check=at_least(0))
    max_queue: int = setting(1024, "inputs waiting at most; more are refused with 429", check=at_least(1))
    max_inputs_per_request: int = setting(256, "inputs in one request at most (413 beyond)", check=at_least(1))
    max_body_bytes: int = setting(1_000_000, "request body size at most (413 beyond)", check=at_least(1))
    admin_token: str | None = setting(
        None, f"enables POST/DELETE /v1/tasks, given as a bearer token (from {ADMIN_TOKEN_SOURCES})", cli=False
    )
    admin_token_file: str | None = setting(
        None,
        f"a file whose first line is the admin token, which enables POST/DELETE /v1/tasks (load, unload at run "
        f"time) with Authorization: Bearer TOKEN; or set {ADMIN_TOKEN_VARIABLE}",
    )
    models_dir: str | None = setting(
        None,
        "a folder of checkpoint folders, each registered as a task named like its folder and loaded on its first "
        "request (not at start); also the folder admin loads (with an admin token) may read",
    )
    task_listing: str | None = setting(
        None, "a JSON object (or JSONL of {name, path} lines) of task name -> checkpoint folder to register too"
    )
    max_loaded_tasks: int | None = setting(
        None,
        "registered checkpoints loaded at once at most (one of several tasks, NAME:TASK, counts once); the least "
        "recently used is dropped",
        check=at_least(1),
    )
    task_memory_mb: float | None = setting(
        None,
        "memory of the loaded registered tasks (prompts, heads, ~40 KB each beside) at most, in MB (2^20 bytes)",
        check=positive,
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if self.admin_token is None:
            self.admin_token = admin_token_from(os.environ.get(ADMIN_TOKEN_VARIABLE), self.admin_token_file)
        if self.admin_token is not None and not self.admin_token.strip():
            raise PtuningError(f"the admin token ({ADMIN_TOKEN_SOURCES}) is empty: any request could load tasks")
        if self.admin_token is not None and self.models_dir is None:  # a token alone would load nothing
            raise PtuningError(
                f"runtime loading needs both an admin token ({ADMIN_TOKEN_SOURCES}: who may load) and --models-dir "
                "(what it may read)"
            )
        # os.path's tests: a path under a folder we may not search is not one either (Path's raise PermissionError)
        if self.models_dir is not None and not os.path.isdir(self.models_dir):
            raise PtuningError(f"models_dir (--models-dir) {self.models_dir!r} is not a folder")
        if self.task_listing is not None and not os.path.isfile(self.task_listing):
            raise PtuningError(f"task_listing (--task-listing) {self.task_listing!r} is not a file")
        limits = {"--max-loaded-tasks": self.max_loaded_tasks, "--task-memory-mb": self.task_memory_mb}
        given = [flag for flag, value in limits.items() if value is not None]
        if given and self.models_dir is None and self.task_listing is None:  # refused, not ignored
            raise PtuningError(
                f"{' and '.join(given)} limit registered tasks: register some with --models-dir or --task-listing"
            )


def admin_token_from(variable: str | None, file: str | None) -> str | None:
    """The admin token: the environment variable's value, or the first line of ``file`` (a warning if others than
    its owner may read it); None if neither is given."""
    if variable is not None and file is not None:
        raise PtuningError(f"the admin token is given twice ({ADMIN_TOKEN_VARIABLE} and --admin-token-file): give one")
    if file is None:
        return variable
    try:
        mode = os.stat(file).st_mode
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PtuningError(f"--admin-token-file {file}: cannot read it ({error})") from error
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning("--admin-token-file %s may be read by other users of this machine: chmod 600 it", file)
    return lines[0].strip() if lines else ""
