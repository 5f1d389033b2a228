"""The task registry: checkpoints registered by name and loaded on their first request, the least recently used
dropped under a budget.

What registers: each folder of ``--models-dir`` under its own name (a listing of the folder, nothing read inside it
until its task is asked for: 100,000 register in a fraction of a second), and each entry of ``--task-listing`` (a
JSON object ``{name: folder}``, or JSONL lines ``{"name", "path"}``; a relative path is read from the listing's
folder). A folder whose checkpoint holds several tasks registers one name, ``NAME``; once loaded its tasks are
``NAME:TASK`` (a request for ``NAME:TASK`` loads ``NAME``), and they load and are dropped together. The tasks given
on the command line (and those an admin loads) are pinned: never dropped, a registered folder of the same name
shadowed.

How a registered task loads: the first request that names it starts one load (an asyncio task: concurrent first
requests await the same one, and a client that leaves does not cancel it), run in the inference thread between
batches (as an admin load is), so the other tasks keep being served. Before the load, the least recently used loaded
registered checkpoints are dropped (their CPU heap given back to the system; on a GPU their memory stays in PyTorch's
cache for the next loads) until ``--max-loaded-tasks`` (checkpoints, a multi-task one counting once) and
``--task-memory-mb`` hold (their prompts' and heads' bytes and ``TASK_OVERHEAD_BYTES`` each; the new one's estimated
by its weights file); a task that requests hold (in flight, queued, awaiting its load) is never dropped, so while
every loaded task is busy a budget may be exceeded until one is free. A load that fails (not a checkpoint, another
backbone, a corrupted file) answers 503 ``task_load_failed`` naming the task, with Retry-After: the failure is
remembered for ``RETRY_AFTER_S`` and answered again without reading the folder, then the next request tries again
(the folder may have been repaired).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import WEIGHTS_NAME, checkpoint_folder
from ..data.readers import json_object, text_lines
from ..errors import PtuningError
from ..model import PromptedModel
from ..predictor import Predictor
from ..vocabulary import TaskName
from .batching import glibc_malloc_trim
from .config import ServeConfig
from .errors import ApiError
from .metrics import Metrics

logger = logging.getLogger("ptuning")
RETRY_AFTER_S = 10.0  # a failed load is answered from memory this long, then tried again
# what a loaded task holds beyond its tensors (its modules, records and Task): ~36 KB measured on MiniLM
TASK_OVERHEAD_BYTES = 40_000
MB = 2**20


def task_name(name: Any) -> bool:
    """Whether ``name`` may name a task (a folder ``x.v1`` or ``.cache`` may not: task names hold no '.')."""
    try:
        TaskName(name)
    except PtuningError:
        return False
    return True


def scan(folder: str) -> dict[str, str | None]:
    """Each folder in ``folder`` by name (one directory listing: no folder is opened), its path None: it is
    ``folder/name``, not kept (100,000 paths would hold ~9 MB)."""
    try:
        with os.scandir(folder) as entries:
            found = [entry.name for entry in entries if entry.is_dir()]
    except OSError as error:  # no permission, most likely
        raise PtuningError(f"--models-dir {folder}: cannot read it ({error.strerror or error})") from error
    skipped = {name for name in found if not task_name(name)}
    if skipped:
        logger.warning("--models-dir: %d folder(s) not task names: %s", len(skipped), sorted(skipped)[:5])
    return dict.fromkeys(name for name in found if name not in skipped)


def read_listing(path: str) -> dict[str, str]:
    """A listing of task name -> checkpoint folder: a JSON object, or (``.jsonl``) one ``{"name", "path"}`` a line."""
    listing, base = Path(path), Path(path).parent
    try:
        lines = text_lines(listing)  # UTF-8, or an error naming the line
    except OSError as error:
        raise PtuningError(f"{listing}: cannot read it ({error.strerror or error})") from error
    pairs: list[tuple[str, Any, Any]] = []
    if listing.suffix == ".jsonl":
        for number, line in enumerate(lines, 1):
            if line.strip():
                entry = json_object(line, f"{listing}:{number}")
                if set(entry) != {"name", "path"}:
                    raise PtuningError(f'{listing}:{number}: expected {{"name": TASK, "path": FOLDER}}')
                pairs.append((f"{listing}:{number}", entry["name"], entry["path"]))
    else:
        try:
            entries = json.loads("\n".join(lines))
        except json.JSONDecodeError as error:
            raise PtuningError(f"{listing}: not JSON ({error}); expected {{TASK: FOLDER, ...}}") from error
        if not isinstance(entries, dict):
            raise PtuningError(f"{listing}: expected a JSON object {{TASK: FOLDER, ...}} (or a .jsonl file)")
        pairs = [(f"{listing}, task {name!r}", name, folder) for name, folder in entries.items()]
    found: dict[str, str] = {}
    for where, name, folder in pairs:
        if not task_name(name) or not isinstance(folder, str) or not folder:
            raise PtuningError(f"{where}: expected a task name (no '.') and a folder path, got {name!r}: {folder!r}")
        if "\0" in folder:  # no file system takes it: every load would fail
            raise PtuningError(f"{where}: the folder path {folder!r} holds a NUL character")
        if name in found:
            raise PtuningError(f"{where}: the task name {name!r} is listed twice")
        found[name] = str(base / folder)
    return found


def stored_bytes(model: PromptedModel, names: Iterable[str]) -> int:
    """The bytes the tasks ``names`` hold in ``model``: their heads and prompts (a shared prompt counted once)."""
    names = [name for name in names if name in model.tasks]
    prompts = {model.tasks[name].prompt for name in names}
    modules = [model.heads[name] for name in names if name in model.heads]
    modules += [model.prompts[prompt] for prompt in prompts if prompt in model.prompts]
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


def estimated_bytes(folder: str) -> int:
    """What a checkpoint will take once loaded, before reading it: its weights file's size and one task's
    overhead."""
    try:
        return (checkpoint_folder(folder) / WEIGHTS_NAME).stat().st_size + TASK_OVERHEAD_BYTES
    except OSError:
        return TASK_OVERHEAD_BYTES


@dataclass
class Loaded:
    """A registered checkpoint now loaded: its tasks, their bytes, and the requests holding it."""

    tasks: list[str]
    bytes: int
    held: int = 0


class Held:
    """Registered checkpoints a request keeps loaded until :meth:`release` (or the end of its ``with`` block): the
    loaded entries themselves, not their names, so that a checkpoint unloaded and loaded again meanwhile (a new
    entry) keeps the count of the requests holding it now."""

    def __init__(self) -> None:
        self.entries: list[Loaded] = []

    def release(self) -> None:
        for entry in self.entries:
            entry.held -= 1
        self.entries = []

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Registry:
    """Registered checkpoints by name, the loaded ones in least-recently-used order, their loads and drops."""

    def __init__(self, checkpoints: dict[str, str | None], config: ServeConfig, metrics: Metrics):
        self.checkpoints, self.config, self.metrics = checkpoints, config, metrics
        self.names = sorted(checkpoints)  # the order the listing pages through
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self.task_unit: dict[str, str] = {}  # a loaded registered task -> its registered name
        self.loading: dict[str, asyncio.Task] = {}
        self.incoming: dict[str, int] = {}  # loads under way -> their estimated bytes
        self.wanted: Counter[str] = Counter()  # requests awaiting a load: what they await is not dropped
        self.failures: dict[str, tuple[str, float]] = {}  # name -> (why its load failed, when)
        self.pinned: set[str] = set()
        self.predictor: Predictor | None = None
        self.worker: ThreadPoolExecutor | None = None
        self.malloc_trim = glibc_malloc_trim()
        metrics.registered_tasks.set(len(checkpoints))

    @classmethod
    def from_config(cls, config: ServeConfig, metrics: Metrics) -> Registry:
        """The checkpoints of ``--models-dir`` and ``--task-listing`` (the listing's path wins a shared name)."""
        started = time.perf_counter()
        checkpoints = scan(config.models_dir) if config.models_dir is not None else {}
        if config.task_listing is not None:
            checkpoints |= read_listing(config.task_listing)
        if checkpoints:
            logger.info("registered %d task(s) in %.2f s", len(checkpoints), time.perf_counter() - started)
        return cls(checkpoints, config, metrics)

    def start(self, predictor: Predictor, worker: ThreadPoolExecutor) -> None:
        """Serve with ``predictor`` (its tasks now pinned), loading in ``worker``, the inference thread."""
        self.predictor, self.worker = predictor, worker
        self.pinned = set(predictor.tasks)

    @property
    def loaded_bytes(self) -> int:
        return sum(entry.bytes for entry in self.loaded.values())

    def gauge(self) -> None:
        """The gauges of what is loaded, after each change of it."""
        self.metrics.loaded_tasks.set(len(self.loaded))
        self.metrics.loaded_task_bytes.set(self.loaded_bytes)

    def unit_of(self, name: Any) -> str | None:
        """The registered name that holds task ``name`` (None: pinned, or neither loaded nor registered)."""
        if not isinstance(name, str) or name in self.pinned:
            return None
        unit = self.task_unit.get(name)
        if unit is not None:
            return unit
        if name in self.checkpoints:
            return name
        head, separator, _ = name.rpartition(":")  # a task of a multi-task checkpoint: NAME:TASK
        return head if separator and head in self.checkpoints else None

    async def acquire(self, names: Iterable[Any]) -> Held:
        """Each registered task of ``names`` loaded (on first use) and held until the answer's release."""
        held = Held()
        try:
            for unit in dict.fromkeys(self.unit_of(name) for name in names):
                if unit is None:
                    continue
                self.wanted[unit] += 1
                try:
                    while unit not in self.loaded:
                        loading = self.loading.get(unit)
                        if loading is None:
                            self.refuse_if_failed(unit)
                            loading = self.loading[unit] = asyncio.create_task(self.load(unit))
                            loading.add_done_callback(lambda done: done.cancelled() or done.exception())
                        await asyncio.shield(loading)
                finally:
                    self.wanted[unit] -= 1
                    if not self.wanted[unit]:
                        del self.wanted[unit]
                entry = self.loaded[unit]
                entry.held += 1
                self.loaded.move_to_end(unit)
                held.entries.append(entry)
        except BaseException:
            held.release()
            raise
        return held

    def refuse_if_failed(self, unit: str) -> None:
        failed = self.failures.get(unit)
        if failed is None:
            return
        left = failed[1] + RETRY_AFTER_S - time.monotonic()
        if left <= 0:
            del self.failures[unit]
            return
        raise ApiError(503, "task_load_failed", failed[0], headers={"Retry-After": str(math.ceil(left))})

    def victims(self) -> list[str]:
        """The least recently used loaded checkpoints to drop for the budgets to hold with the loads under way
        (none that a request holds or awaits)."""
        limit = self.config.max_loaded_tasks
        budget = None if self.config.task_memory_mb is None else self.config.task_memory_mb * MB
        count = len(self.loaded) + len(self.incoming)
        total = self.loaded_bytes + sum(self.incoming.values())
        chosen = []
        for unit, entry in self.loaded.items():
            if (limit is None or count <= limit) and (budget is None or total <= budget):
                break
            if entry.held or unit in self.wanted:
                continue
            chosen.append(unit)
            count, total = count - 1, total - entry.bytes
        return chosen

    def drop(self, units: list[str]) -> list[str]:
        """Forget ``units`` as loaded (no request finds them loaded from now on); their tasks, to unload."""
        tasks = []
        for unit in units:
            tasks += self.loaded.pop(unit).tasks
        for task in tasks:
            self.task_unit.pop(task, None)
        self.metrics.forget(tasks)
        self.metrics.evictions.inc(len(units))
        self.gauge()
        return tasks

    def swap(self, dropped: list[str], name: str, folder: str) -> tuple[list[str], int]:
        """In the inference thread: unload ``dropped``, load ``folder`` as ``name``; its tasks and their bytes."""
        self.unload(dropped)
        tasks = self.predictor.load(name, folder)
        return tasks, stored_bytes(self.predictor.model, tasks) + TASK_OVERHEAD_BYTES * len(tasks)

    def unload(self, tasks: list[str]) -> None:
        """Unload ``tasks`` and give their memory back to the system (~0.3 ms): the allocator would otherwise keep
        the freed tensors of a churning registry, over twice the budget."""
        for task in tasks:
            if task in self.predictor.tasks:
                self.predictor.unload(task)
        if tasks and self.malloc_trim is not None:
            self.malloc_trim(0)

    async def load(self, unit: str) -> None:
        """Load the registered checkpoint ``unit`` after dropping what the budgets ask; then drop more if it
        turned out bigger than estimated."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:  # all of it: whatever fails, the load ends (a load left under way would be awaited forever)
            folder = self.checkpoints[unit] or os.path.join(self.config.models_dir, unit)
            self.incoming[unit] = estimated_bytes(folder)
            dropped = self.drop(self.victims())
            tasks, size = await loop.run_in_executor(self.worker, self.swap, dropped, unit, folder)
        except Exception as error:  # whatever the folder holds, the server stays up and says which task failed
            if not isinstance(error, PtuningError):
                logger.exception("task %r failed to load", unit)
            message = f"task {unit!r} failed to load: {error}"
            self.failures[unit] = (message, time.monotonic())
            self.metrics.load_failures.inc()
            retry = {"Retry-After": str(math.ceil(RETRY_AFTER_S))}
            raise ApiError(503, "task_load_failed", message, headers=retry) from error
        finally:
            self.incoming.pop(unit, None)
            del self.loading[unit]
        self.metrics.loads.inc()
        self.metrics.load_seconds.observe(time.perf_counter() - started)
        self.loaded[unit] = Loaded(tasks, size)
        self.task_unit.update(dict.fromkeys(tasks, unit))
        self.gauge()
        extra = self.victims()
        if extra:
            await loop.run_in_executor(self.worker, self.unload, self.drop(extra))

    def pin(self, tasks: list[str]) -> None:
        """Tasks an admin loaded: never dropped."""
        self.pinned.update(tasks)

    def forget(self, task: str) -> None:
        """A task an admin unloaded (pinned or registered; unloaded from the predictor already): a registered
        checkpoint keeps its other tasks' bytes, and is no longer loaded once it has none (the requests holding it
        hold an entry forgotten, whose count no longer matters)."""
        self.pinned.discard(task)
        self.metrics.forget([task])
        unit = self.task_unit.pop(task, None)
        if unit is not None:
            entry = self.loaded[unit]
            entry.tasks.remove(task)
            entry.bytes = stored_bytes(self.predictor.model, entry.tasks) + TASK_OVERHEAD_BYTES * len(entry.tasks)
            if not entry.tasks:
                del self.loaded[unit]
            self.gauge()

    def summary(self) -> dict[str, Any]:
        """Counts for the task listing: registered, loaded (and their bytes), the budgets."""
        return {
            "registered": len(self.checkpoints),
            "loaded": len(self.loaded),
            "loaded_bytes": self.loaded_bytes,
            "max_loaded_tasks": self.config.max_loaded_tasks,
            "task_memory_mb": self.config.task_memory_mb,
        }

    def page(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """Registered names ``offset`` to ``offset + limit`` in name order, each with whether it is loaded."""
        return [{"name": name, "loaded": name in self.loaded} for name in self.names[offset : offset + limit]]
