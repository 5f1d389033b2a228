"""Data-parallel training on CPU: ``torchrun --nproc_per_node 2 -m ptuning train`` over gloo writes one run (from
rank 0, with its world size), the two processes end with the same weights, and those equal one process trained
with the same global batch on the same data (to 1e-5: the gradients are summed in another order)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_backbone
from safetensors.torch import load_file

from ptuning.cli import main

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
