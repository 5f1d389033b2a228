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
from ptuning.training.run_folder import SAVED_MARK, latest_resume_state, prepare_output, save_tensors
from ptuning.training.run_metrics import task_metrics

# seven sentences of different lengths: four batches of 2 an epoch, length-grouped, so most steps are mid-epoch
DATA = (
    "Peter B-PER\nBlackburn I-PER\nruns O\n\nOslo B-LOC\ncalls O\n\nMary B-PER\nsings O\n\nAnna B-PER\nwaits O\n\n"
    "Paris B-LOC\nand O\nRome B-LOC\nvote O\ntoday O\n\nJohn B-PER\nSmith I-PER\nof O\nOslo B-LOC\nwins O\n\n"
    "Bonn B-LOC\nwaits O\nfor O\nAnna B-PER\n"
)
# a second task for the multi-task run: chunk tags, another label set, a head of its own (two batches an epoch)
CHUNKS = "Peter B-NP\nBlackburn I-NP\nruns B-VP\n\nOslo B-NP\ncalls B-VP\n\nthe B-NP\nsun I-NP\nshines B-VP\n"
STEPS = 60


def flags(tmp_path: Path, backbone: Path, output: str, *more: str, tasks: int = 1) -> list[str]:
    """A run of the default recipe (prompt and backbone dropout on, length-grouped batches) on one or two tasks."""
    files = []
    for name, text in [("ner.conll", DATA), ("chunk.conll", CHUNKS)][:tasks]:
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    data = ",".join(files)
    return [
        "train", "--train", data, "--validation", data, "--model", str(backbone), "--max-steps", str(STEPS),
        "--batch-size", "2", "--lr", "0.1", "--prompt-length", "2", "--output", str(tmp_path / output), *more,
    ]  # fmt: skip


def saved_step(state: Path | None) -> int:
    return -1 if state is None else int(state.name.rpartition("-")[2])


def assert_same_run(tmp_path: Path, run: str, reference: str = "whole") -> None:
    """Weights within 1e-5 (the same kernels on the same shapes: equal in practice, a tolerance all the same),
    the same validation scores and curve, the same logged training losses."""
    whole = load_file(str(tmp_path / reference / "checkpoint" / "ptuning_model.safetensors"))
    resumed = load_file(str(tmp_path / run / "checkpoint" / "ptuning_model.safetensors"))
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-5, atol=1e-5, msg=key)
    before, after = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in (reference, run))
    for metrics in (before, after):  # scores only: the two runs read their data from different folders
        metrics["scores"] = {name: (task["validation"], task["test"]) for name, task in task_metrics(metrics).items()}
    assert after["scores"] == before["scores"]
    assert after["steps"] == before["steps"] == STEPS
    assert after["validation_curve"] == before["validation_curve"]
    logged = [[entry["loss"] for entry in json.loads((tmp_path / name / "log.json").read_text()) if "loss" in entry]
              for name in (reference, run)]  # fmt: skip
    assert len(logged[0]) == len(logged[1]) > 5
    torch.testing.assert_close(torch.tensor(logged[1]), torch.tensor(logged[0]), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_backbone_folder) -> dict[int, Path]:
    """The run with one task and with two, each trained whole without saving any state, once for the module."""
    folders = {}
    for tasks in (1, 2):
        folder = tmp_path_factory.mktemp(f"whole-{tasks}")
        assert main(flags(folder, tiny_backbone_folder, "whole", tasks=tasks)) == 0
        folders[tasks] = folder / "whole"
    return folders


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("tasks", "save_steps", "kill_after"),
    [(1, 3, 6), (1, 5, 5), (2, 3, 3)],
    ids=["one task, killed at step 6 of a 4-batch epoch", "one task, at step 5", "two tasks, at step 3"],
)
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(
    tmp_path, tiny_backbone_folder, uninterrupted, capsys, tasks, save_steps, kill_after
):
    """The run is killed once a state saved in the middle of an epoch is complete; resumed, it ends as the run that
    saved nothing (so the save interval does not change the model either). With two tasks the order of the tasks'
    batches must also continue where it stopped. A resume by another number of processes is refused."""
    (tmp_path / "whole").symlink_to(uninterrupted[tasks])
    command = [sys.executable, "-m", "ptuning"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    interrupted = flags(tmp_path, tiny_backbone_folder, "run", "--save-steps", str(save_steps), tasks=tasks)
    process = subprocess.Popen(
        command + interrupted, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = tmp_path / "run" / "resume"
    while saved_step(latest_resume_state(tmp_path / "run")) < kill_after:
        assert process.poll() is None, f"the run ended before its state of step {kill_after}"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = latest_resume_state(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists() and kill_after <= saved_step(saved) < STEPS
    assert saved_step(saved) % (4 if tasks == 1 else 6) != 0, "the kill was meant to land mid-epoch"
    held = sum(path.stat().st_size for path in saved.rglob("*") if path.is_file())
    assert held < 200_000  # prompts, heads, optimizer, RNG, progress: no backbone weights

    mark = saved / SAVED_MARK
    written = mark.read_text()
    mark.write_text(json.dumps({**json.loads(written), "processes": 2}))  # as if saved by two data-parallel processes
    assert main(interrupted + ["--resume"]) == 2
    assert "was saved by 2 data-parallel process(es), this run has 1" in capsys.readouterr().err
    mark.write_text(written)
    assert main([*interrupted, "--save-steps", "7", "--resume"]) == 0  # how often it saves is no part of the model
    assert_same_run(tmp_path, "run")
    assert not state.exists()  # a finished run keeps no resume state


@pytest.mark.numerics
def test_the_save_interval_does_not_change_the_model(tmp_path, tiny_backbone_folder, uninterrupted):
    (tmp_path / "whole").symlink_to(uninterrupted[1])
    assert main(flags(tmp_path, tiny_backbone_folder, "every-13", "--save-steps", "13")) == 0
    assert_same_run(tmp_path, "every-13")


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


def test_a_run_that_fails_before_saving_a_state_leaves_no_dead_end(tmp_path, tiny_backbone_folder, capsys):
    """A --save-steps run that fails before its first saved state leaves nothing that asks for --resume (which would
    find no state) or for --overwrite."""
    argv = flags(tmp_path, tiny_backbone_folder, "run", "--save-steps", "2")
    (tmp_path / "dev.conll").write_text("Anna B-MISC\nsleeps O\n")  # a label the training data lacks: refused
    argv[argv.index("--validation") + 1] = str(tmp_path / "dev.conll")
    assert main(argv) == 2
    assert "B-MISC" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    (tmp_path / "run" / "resume").mkdir(parents=True)  # as a run killed before its first save leaves it
    (tmp_path / "run" / "resume" / "recipe.json").write_text("{}")
    assert main(flags(tmp_path, tiny_backbone_folder, "run")) == 2
    assert "(an interrupted run with no saved state); give --overwrite" in capsys.readouterr().err
