"""The heads' own learning rate (``--head-lr``): the optimizer puts the heads' parameters in groups of their own at
that rate, the rest at ``--lr``, weight decay kept apart as the Trainer keeps it; a run trains with it and the head
moves accordingly."""

from __future__ import annotations

import torch
from conftest import tiny_backbone
from safetensors.torch import load_file
from transformers import TrainingArguments

from ptuning import PromptedModel
from ptuning.cli import main
from ptuning.training.trainer import PromptTrainer


def test_the_heads_train_at_their_own_rate_and_the_prompt_at_lr(tmp_path):
    model = PromptedModel(tiny_backbone("bert"), "sequence-classification", ["a", "b"])
    arguments = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-2, weight_decay=0.1, report_to=[])
    trainer = PromptTrainer(model=model, args=arguments, task_batches=None, head_lr=1e-4)
    optimizer = trainer.create_optimizer()
    rate = {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}
    trained = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert set(rate) == {id(parameter) for parameter in trained.values()}
    assert rate[id(trained["heads.default.classifier.weight"])] == (1e-4, 0.1)
    assert rate[id(trained["heads.default.classifier.bias"])] == (1e-4, 0.0)  # no decay on biases, as the Trainer
    assert rate[id(trained["prompts.default.table"])][0] == 1e-2
    default = PromptTrainer(model=model, args=arguments, task_batches=None).create_optimizer()
    assert {group["lr"] for group in default.param_groups} == {1e-2}


def test_a_run_with_a_tiny_head_rate_keeps_its_head_where_it_started(tmp_path, tiny_backbone_folder):
    """The same seed draws the same head: at a head rate of 1e-9 it stays the drawn one (Adam moves it 1e-9 a step)
    after 1 step as after 8, while the prompt moves; at 0.1 the head moves too."""
    data = tmp_path / "sent.csv"
    data.write_text("text,label\ngood film,pos\nbad film,neg\nfine acting,pos\ndull plot,neg\n")
    common = ["train", "--model", str(tiny_backbone_folder), "--train", str(data), "--batch-size", "2", "--lr", "0.1"]
    saved = {}
    for steps, head_lr in (("1", "1e-9"), ("8", "1e-9"), ("8", "0.1")):
        output = tmp_path / f"run-{steps}-{head_lr}"
        assert main([*common, "--max-steps", steps, "--head-lr", head_lr, "--output", str(output)]) == 0
        saved[steps, head_lr] = load_file(str(output / "checkpoint" / "ptuning_model.safetensors"))
    head, prompt = "heads.default.classifier.weight", "prompts.default.table"
    torch.testing.assert_close(saved["8", "1e-9"][head], saved["1", "1e-9"][head], rtol=0, atol=1e-7)
    assert (saved["8", "1e-9"][prompt] - saved["1", "1e-9"][prompt]).abs().max() > 0.05
    assert (saved["8", "0.1"][head] - saved["8", "1e-9"][head]).abs().max() > 0.05
