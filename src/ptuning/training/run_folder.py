"""The run's folder: refused when it holds another run, resumable state kept in it, the run staged beside it and
moved into place when it has succeeded."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import PtuningError
from ..recipe import Recipe
from .distributed import world_size

RESUME_DIR = "resume"
RESUME_RECIPE = "recipe.json"
TRAINABLE_STATE = "trainable_state.safetensors"
BEST_STATE = "best_state.safetensors"
BEST_PROGRESS = "best_progress.json"
LOSS_WINDOW = "loss_window_{}.json"  # per process: the loss summed since the last log
SAVED_MARK = "complete.json"  # written last, atomically: a checkpoint without it was torn by a kill
TRAIN_LOG = "train.log"

logger = logging.getLogger("ptuning")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Tensors to a safetensors file, from any device."""
    save_file({name: tensor.contiguous().cpu() for name, tensor in tensors.items()}, str(path))


def prepare_output(output: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse to train into a folder that holds files, unless ``overwrite`` (the old run is replaced on success) or
    ``resume`` (an interrupted run's state is there to continue)."""
    if output.exists() and not output.is_dir():
        raise PtuningError(f"--output {output} is a file, not a folder")
    if resume:
        if latest_resume_state(output) is None:
            torn = sorted(path.name for path in (output / RESUME_DIR).glob("checkpoint-*"))
            held = f"only unfinished saves ({', '.join(torn)}: no {SAVED_MARK})" if torn else "no saved state"
            raise PtuningError(f"--resume: {output / RESUME_DIR} holds {held} to continue (train with --save-steps N)")
        return
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        held = "a previous run?"
        if (output / RESUME_DIR).is_dir():
            resumable = latest_resume_state(output) is not None
            held = (
                "an interrupted run (--resume continues it)" if resumable else "an interrupted run with no saved state"
            )
        raise PtuningError(
            f"--output {output} is not empty ({held}); give --overwrite to replace it, or another --output"
        )


def latest_resume_state(output: Path) -> Path | None:
    """The newest complete resumable checkpoint of an interrupted run (the one marked after every process wrote)."""
    finished = [path for path in (output / RESUME_DIR).glob("checkpoint-*") if (path / SAVED_MARK).is_file()]
    return max(finished, key=lambda path: int(path.name.rpartition("-")[2]), default=None)


def check_same_recipe(recipe: Recipe, output: Path) -> None:
    """A resumed run must be the interrupted one: the same recipe, but for how the run was started."""
    path = output / RESUME_DIR / RESUME_RECIPE
    if not path.is_file():
        raise PtuningError(f"--resume: {path} is missing: that state was not written by --save-steps")
    saved = json.loads(path.read_text())
    current = json.loads(json.dumps(recipe.to_dict()))
    changed = sorted(
        key
        for key in set(saved) | set(current)
        if key not in Recipe.run_control_keys() and saved.get(key) != current.get(key)
    )
    if changed:
        differences = "; ".join(f"{key}: {saved.get(key)!r} then, {current.get(key)!r} now" for key in changed)
        raise PtuningError(f"--resume continues the run in {output} with its own recipe, which differs: {differences}")
    saved_processes = json.loads((latest_resume_state(output) / SAVED_MARK).read_text()).get("processes", 1)
    if saved_processes != world_size():
        raise PtuningError(
            f"--resume: the state in {output} was saved by {saved_processes} data-parallel process(es), this run has "
            f"{world_size()}: each process's share of the batches and its random state would differ, so the result "
            f"would not be the interrupted run's; resume with {saved_processes} process(es)"
        )


def file_logging(output: Path) -> logging.Handler:
    """The run's log lines into ``train.log`` of ``output`` too; remove the handler when the run ends."""
    handler = logging.FileHandler(output / TRAIN_LOG, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


@contextmanager
def staged_run(recipe: Recipe) -> Iterator[Path]:
    """The folder to train into: a sibling of ``output``, moved into place when the body has succeeded, so a failed
    run leaves an existing ``output`` untouched and ``overwrite`` never leaves stale files of the old run behind.
    Checks ``output`` first (and the recipe of a resumed run), keeps the recipe of a resumable one."""
    output = Path(recipe.output)
    prepare_output(output, recipe.overwrite, recipe.resume)
    created = not output.exists()
    if recipe.resume:
        check_same_recipe(recipe, output)
        for stale in output.parent.glob(f".{output.name}.partial-*"):  # the staged folder of the killed process
            shutil.rmtree(stale, ignore_errors=True)
    elif (output / RESUME_DIR).exists():  # an interrupted run's state that --overwrite replaces
        shutil.rmtree(output / RESUME_DIR)
    if recipe.save_steps and not recipe.resume:
        (output / RESUME_DIR).mkdir(parents=True)
        (output / RESUME_DIR / RESUME_RECIPE).write_text(json.dumps(recipe.to_dict(), indent=2) + "\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    handler = file_logging(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if recipe.save_steps and latest_resume_state(output) is None:  # nothing to resume: no dead-end folder
            shutil.rmtree(output / RESUME_DIR, ignore_errors=True)
            if created and output.is_dir() and not any(output.iterdir()):
                output.rmdir()
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
    _move_into_place(staging, output)


def _move_into_place(staging: Path, output: Path) -> None:
    """Replace ``output`` (when it exists) by the finished run in ``staging``."""
    replaced = None
    if output.exists():
        replaced = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
        output.rename(replaced / output.name)
    staging.rename(output)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
