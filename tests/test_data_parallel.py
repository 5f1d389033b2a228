"""Data-parallel training on CPU: ``torchrun --nproc_per_node 2 -m ptuning train`` over gloo writes one run (from
rank 0, with its world size), the two processes end with the same weights, and those equal one process trained
with the same global batch on the same data (to 1e-5: the gradients are summed in another order)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_backbone
from safetensors.torch import load_file

from ptuning.cli import main
from ptuning.training.run_folder import latest_resume_state
from ptuning.training.run_metrics import single_task_metrics

TEXTS = "text,label\ngood film,pos\nbad film,neg\nfine acting,pos\ndull plot,neg\n"


@pytest.fixture(scope="module")
def quiet_backbone(tmp_path_factory, minilm_tokenizer):
    """A tiny BERT without dropout: two processes and one then draw no different masks."""
    folder = tmp_path_factory.mktemp("quiet-bert")
    backbone = tiny_backbone(
        "bert", vocab_size=minilm_tokenizer.vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    backbone.save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


def test_two_processes_write_one_run_equal_to_one_process_with_the_same_global_batch(tmp_path, quiet_backbone):
    data = tmp_path / "sent.csv"
    data.write_text(TEXTS)
    common = ["train", "--train", str(data), "--model", str(quiet_backbone), "--max-steps", "3", "--lr", "0.1",
              "--prompt-dropout", "0", "--device", "cpu"]  # fmt: skip
    assert main([*common, "--batch-size", "4", "--output", str(tmp_path / "one")]) == 0
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ptuning"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, *common, "--batch-size", "2", "--output", str(tmp_path / "two")],
        env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("checkpoint (") == 1  # one summary, from the writing process
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "sent.csv", "two"]  # nothing staged is left
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["global_batch_size"], metrics["steps"]) == (2, 4, 3)
    first, second = metrics["replica_checksums"]
    assert first == second
    one = load_file(str(tmp_path / "one" / "checkpoint" / "ptuning_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoint" / "ptuning_model.safetensors"))
    assert one.keys() == two.keys()
    assert all((one[key] - two[key]).abs().max().item() <= 1e-5 for key in one)


def kill_every_process_of(marker: str) -> None:
    """SIGKILL the launcher and its workers (a crash or a job kill takes them all; torchrun's workers would outlive
    their launcher's own kill)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in command and int(pid) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.mark.numerics
def test_a_killed_data_parallel_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_backbone_folder):
    """Twelve examples in batches of 2 on each of 2 processes: 3 steps an epoch; the kill lands after step 4, mid-epoch,
    with the backbone's and the prompt's dropout on (each process's random state is restored)."""
    data = tmp_path / "sent.csv"
    more = ["great cast,pos", "weak story,neg", "lovely score,pos", "poor pacing,neg", "bright,pos", "slow,neg"]
    data.write_text(TEXTS + "\n".join([*more, "a fine and moving film,pos", "flat,neg"]) + "\n")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ptuning"]
    common = ["train", "--train", str(data), "--validation", str(data), "--model", str(tiny_backbone_folder),
              "--max-steps", "30", "--batch-size", "2", "--lr", "0.1", "--device", "cpu"]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([*launch, *common, "--output", str(tmp_path / "whole")], env=environment, check=True, timeout=300)
    interrupted = [*launch, *common, "--output", str(tmp_path / "run"), "--save-steps", "2"]
    process = subprocess.Popen(interrupted, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while int((latest_resume_state(tmp_path / "run") or Path("checkpoint--1")).name.rpartition("-")[2]) < 4:
        assert process.poll() is None, "the run ended before its saved state of step 4"  # every process's part
        time.sleep(0.002)
    kill_every_process_of(str(tmp_path / "run"))
    process.wait()
    saved = latest_resume_state(tmp_path / "run")
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {path.name for path in saved.iterdir()}  # each process's RNG
    assert int(saved.name.rpartition("-")[2]) % 3 != 0, "the kill was meant to land mid-epoch"
    done = subprocess.run([*interrupted, "--resume"], env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = load_file(str(tmp_path / "whole" / "checkpoint" / "ptuning_model.safetensors"))
    resumed = load_file(str(tmp_path / "run" / "checkpoint" / "ptuning_model.safetensors"))
    assert all((whole[key] - resumed[key]).abs().max().item() <= 1e-5 for key in whole)
    before, after = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("whole", "run"))
    assert single_task_metrics(after)["validation"] == single_task_metrics(before)["validation"]
    assert after["validation_curve"] == before["validation_curve"]
    assert after["replica_checksums"] == pytest.approx(before["replica_checksums"], rel=1e-6)
