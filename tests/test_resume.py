"""Resumable runs: a real training process killed after its first saved state, then resumed, ends equal to the
uninterrupted run; the state holds what trains, not the backbone; wrong resumes are refused with a message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.train import SAVED_MARK, latest_resume_state, prepare_output, save_tensors

DATA = "Peter B-PER\nBlackburn I-PER\nruns O\n\nOslo B-LOC\ncalls O\n\nMary B-PER\nsings O\n\nAnna B-PER\nwaits O\n"
# a second task for the multi-task run: chunk tags, another label set, a head of its own
CHUNKS = "Peter B-NP\nBlackburn I-NP\nruns B-VP\n\nOslo B-NP\ncalls B-VP\n\nthe B-NP\nsun I-NP\nshines B-VP\n"


def flags(tmp_path: Path, backbone: Path, output: str, *more: str, tasks: int = 1) -> list[str]:
    files = []
    for name, text in [("ner.conll", DATA), ("chunk.conll", CHUNKS)][:tasks]:
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    data = ",".join(files)
    return [
        "train", "--train", data, "--validation", data, "--model", str(backbone), "--max-steps", "150",
        "--batch-size", "2", "--lr", "0.1", "--prompt-length", "2", "--output", str(tmp_path / output), *more,
    ]  # fmt: skip


@pytest.mark.parametrize("tasks", [1, 2], ids=["one task", "two tasks"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_backbone_folder, tasks):
    """With two tasks the order of the tasks' batches must also continue where it stopped (the sampler's epoch)."""
    command = [sys.executable, "-m", "ptuning"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    whole = flags(tmp_path, tiny_backbone_folder, "whole", tasks=tasks)
    subprocess.run(command + whole, check=True, capture_output=True)
    interrupted = flags(tmp_path, tiny_backbone_folder, "run", "--save-steps", "10", tasks=tasks)
    process = subprocess.Popen(
        command + interrupted, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = tmp_path / "run" / "resume"
    while latest_resume_state(tmp_path / "run") is None:
        assert process.poll() is None, "the run ended before its first saved state"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = max(state.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert not (tmp_path / "run" / "checkpoint").exists() and int(saved.name.split("-")[1]) < 150
    held = sum(path.stat().st_size for path in saved.rglob("*") if path.is_file())
    assert held < 200_000  # prompts, heads, optimizer, RNG, progress: no backbone weights

    assert main(interrupted + ["--resume"]) == 0
    whole = load_file(str(tmp_path / "whole" / "checkpoint" / "ptuning_model.safetensors"))
    resumed = load_file(str(tmp_path / "run" / "checkpoint" / "ptuning_model.safetensors"))
    assert whole.keys() == resumed.keys()
    assert all((whole[key] - resumed[key]).abs().max().item() <= 1e-5 for key in whole)
    before, after = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("whole", "run"))
    assert after.get("validation", after.get("tasks")) == before.get("validation", before.get("tasks"))
    assert after["steps"] == before["steps"] == 150 and len(after.get("tasks", [None])) == tasks
    assert after["validation_curve"] == before["validation_curve"]
    assert not state.exists()  # a finished run keeps no resume state


def test_wrong_resumes_are_refused(tmp_path, tiny_backbone_folder, capsys):
    assert main(flags(tmp_path, tiny_backbone_folder, "none", "--resume")) == 2
    assert f"--resume: {tmp_path / 'none' / 'resume'} holds no saved state to continue" in capsys.readouterr().err
    state = tmp_path / "run" / "resume"
    (state / "checkpoint-10").mkdir(parents=True)
    (state / "checkpoint-10" / "trainer_state.json").write_text("{}")
    save_tensors({"x": torch.zeros(1)}, state / "checkpoint-10" / "trainable_state.safetensors")
    (state / "checkpoint-10" / SAVED_MARK).write_text("{}")
    recipe = {"train": str(tmp_path / "ner.conll"), "lr": 0.5}
    assert main(flags(tmp_path, tiny_backbone_folder, "run", "--resume")) == 2
    assert "resume/recipe.json is missing" in capsys.readouterr().err
    (state / "recipe.json").write_text(json.dumps(recipe))
    assert main(flags(tmp_path, tiny_backbone_folder, "run")) == 2
    assert "is not empty (an interrupted run (--resume continues it))" in capsys.readouterr().err
    assert main(flags(tmp_path, tiny_backbone_folder, "run", "--resume")) == 2
    assert "lr: 0.5 then, 0.1 now" in capsys.readouterr().err


def test_a_checkpoint_torn_by_a_kill_is_passed_over(tmp_path):
    """The Trainer writes its files in place: a kill mid-save leaves an empty trainer_state.json; resume takes the
    newest checkpoint that was marked complete after every process wrote its part."""
    state = tmp_path / "resume"
    for step in (10, 20):
        (state / f"checkpoint-{step}").mkdir(parents=True)
        (state / f"checkpoint-{step}" / "trainer_state.json").write_text("{}" if step == 10 else "")
        save_tensors({"x": torch.zeros(1)}, state / f"checkpoint-{step}" / "trainable_state.safetensors")
    assert latest_resume_state(tmp_path) is None
    with pytest.raises(PtuningError, match=r"holds only unfinished saves \(checkpoint-10, checkpoint-20: no complete"):
        prepare_output(tmp_path, overwrite=False, resume=True)
    (state / "checkpoint-10" / SAVED_MARK).write_text("{}")
    assert latest_resume_state(tmp_path) == state / "checkpoint-10"
