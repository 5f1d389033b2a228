"""Multi-task P-Tuning v2: one shared deep prompt, a head per task, every batch from one task; then per-task
training from the joint prompt (--init-from)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import random_batch, tiny_backbone

from ptuning import PromptConfig, PromptedModel
from ptuning.checkpoint import read_config
from ptuning.cli import main
from ptuning.recipe import Recipe, task_weights
from ptuning.training.build import build_model
from ptuning.training.data import read_task_run
from ptuning.training.trainer import TaskBatches, TaskCollator

NER = "Peter B-PER\nBlackburn I-PER\nruns O\n\nOslo B-LOC\ncalls O\n\nMary B-PER\nsings O\n"
CHUNK = "Peter B-NP X\nruns B-VP Y\n\nOslo B-NP X\ncalls B-VP Y\n\nMary B-NP X\nsings B-VP Y\n"
SENTIMENT = "text,label\ngood film,pos\nbad film,neg\nfine acting,pos\ndull plot,neg\n"


def test_task_weights():
    assert task_weights("proportional", [100, 300]) == [0.25, 0.75]
    assert task_weights("uniform", [100, 300]) == [0.5, 0.5]
    low, high = task_weights("temperature:2", [100, 400])  # sqrt: 10 and 20
    assert (round(low, 6), round(high, 6)) == (round(1 / 3, 6), round(2 / 3, 6))


@pytest.mark.parametrize(("sampling", "share"), [("proportional", 0.75), ("uniform", 0.5), ("temperature:2", 0.634)])
def test_batches_come_from_one_task_drawn_by_its_weight(sampling, share):
    lengths = [[5 + i % 7 for i in range(100)], [3 + i % 11 for i in range(300)]]
    batches = TaskBatches(lengths, 10, task_weights(sampling, [100, 300]), seed=0)
    assert len(batches) == 40
    drawn = Counter()
    for epoch in range(200):
        batches.set_epoch(epoch)  # as the Trainer does, a resumed run too
        for batch in batches:
            tasks = {0 if index < 100 else 1 for index in batch}
            assert len(tasks) == 1 and len(batch) == 10
            drawn[tasks.pop()] += 1
    assert abs(drawn[1] / (drawn[0] + drawn[1]) - share) < 0.03
    batches.set_epoch(7)
    again = list(batches)
    batches.set_epoch(8)
    assert list(batches) != again
    batches.set_epoch(7)
    assert list(batches) == again  # an epoch draws the same batches whenever it runs: a resumed run continues


def test_collator_marks_the_batch_with_its_task():
    collate = TaskCollator([lambda features: {"n": torch.tensor([len(features)])}] * 2)
    batch = collate([{"input_ids": [1], "task_ids": 1}, {"input_ids": [2], "task_ids": 1}])
    assert batch["task_ids"].tolist() == [1, 1] and batch["n"].tolist() == [2]


def test_a_step_trains_the_shared_prompt_and_its_own_head_only():
    model = PromptedModel(tiny_backbone("bert"), None)
    model.add_task("ner", "token-classification", ["B", "I", "O"], prompt=PromptConfig(length=4, dropout=0.0))
    model.add_task("sent", "sequence-classification", ["neg", "pos"], shared_prompt="ner")
    model.train()
    input_ids, attention_mask = random_batch()
    for index, (name, labels) in enumerate([("ner", torch.zeros_like(input_ids)), ("sent", torch.tensor([0, 1, 0]))]):
        model.zero_grad(set_to_none=True)
        task_ids = torch.full((3,), index)
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, task_ids=task_ids).loss.backward()
        assert model.prompts["ner"].table.grad.abs().sum() > 0
        assert {head for head in model.heads if model.heads[head].classifier.weight.grad is not None} == {name}


@pytest.fixture
def data(tmp_path):
    for name, content in (("ner.conll", NER), ("chunk.conll", CHUNK), ("sent.csv", SENTIMENT)):
        (tmp_path / name).write_text(content)
    return tmp_path


def multi_argv(data, backbone, *extra: str) -> list[str]:
    files = ",".join(str(data / name) for name in ("ner.conll", "chunk.conll", "sent.csv"))
    return [
        "train",
        "--train",
        files,
        "--validation",
        files,
        "--test",
        files,
        "--model",
        str(backbone),
        "--max-steps",
        "6",
        "--batch-size",
        "2",
        "--prompt-length",
        "3",
        "--output",
        str(data / "multi"),
        *extra,
    ]


def test_one_command_trains_three_tasks_on_one_prompt(data, tiny_backbone_folder, capsys):
    assert main(multi_argv(data, tiny_backbone_folder, "--tag-column", "1")) == 0
    metrics = json.loads((data / "multi" / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"ner", "chunk", "sent"} and metrics["steps"] == 6
    assert metrics["tasks"]["ner"]["primary_metric"] == "f1" and "f1" in metrics["tasks"]["ner"]["test"]
    assert "accuracy" in metrics["tasks"]["sent"]["validation"] and metrics["train_examples"] == 3 + 3 + 4
    config = read_config(data / "multi")
    assert list(config.prompts) == ["ner"] and {t.prompt for t in config.tasks.values()} == {"ner"}
    assert config.tasks["chunk"].labels == ["B-NP", "B-VP"]  # column 1 of chunk.conll
    model = PromptedModel.from_pretrained(data / "multi")
    stored = sum(p.numel() for p in model.prompts.parameters()) + sum(p.numel() for p in model.heads.parameters())
    assert model.stored_parameters() == stored and len(model.prompts) == 1  # one prompt, three small heads

    code = main(["eval", str(data / "multi"), "--test", str(data / "ner.conll")])
    err = capsys.readouterr().err
    assert code == 2 and "holds several tasks (ner, chunk, sent): choose one with --task NAME" in err
    assert main(["eval", str(data / "multi"), "--task", "chunk", "--test", str(data / "chunk.conll")]) == 0
    assert "f1" in json.loads(capsys.readouterr().out)
    (data / "in.txt").write_text("Peter runs\n")
    assert main(["predict", str(data / "multi"), "--task", "ner", "--input", str(data / "in.txt")]) == 0
    assert json.loads(capsys.readouterr().out)["words"] == ["Peter", "runs"]
    assert main(["predict", str(data / "multi"), "--input", str(data / "in.txt")]) == 2


def test_multi_task_refusals(data, tiny_backbone_folder, capsys):
    code = main(multi_argv(data, tiny_backbone_folder, "--task-names", "a,b"))
    assert code == 2 and "3 tasks but 2 task names" in capsys.readouterr().err
    code = main(multi_argv(data, tiny_backbone_folder, "--task-names", "a,a,b"))
    assert code == 2 and "two tasks are named 'a'" in capsys.readouterr().err
    argv = multi_argv(data, tiny_backbone_folder)
    argv[argv.index("--validation") + 1] = str(data / "ner.conll")
    code = main(argv)
    assert code == 2 and "3 training sets but 1 validation files" in capsys.readouterr().err
    recipe = data / "r.yaml"
    recipe.write_text(f"tasks:\n  - train: {data / 'ner.conll'}\n    lr: 0.1\n")
    code = main(["train", "--config", str(recipe), "--output", str(data / "x")])
    assert code == 2 and "tasks[0]: a task sets only name, dataset" in capsys.readouterr().err
    code = main(multi_argv(data, tiny_backbone_folder, "--dataset", "conll2003-ner"))
    assert code == 2 and "from --dataset a,b or from --train a,b, not from both" in capsys.readouterr().err
    code = main(multi_argv(data, tiny_backbone_folder, "--task-sampling", "temperature:0"))
    assert code == 2 and "must be proportional, uniform or temperature:T" in capsys.readouterr().err


def test_a_recipe_lists_tasks_with_their_own_columns(data, tiny_backbone_folder):
    recipe = Recipe.from_dict(
        {
            "tasks": [
                {"name": "entities", "train": str(data / "ner.conll")},
                {"name": "phrases", "train": str(data / "chunk.conll"), "tag_column": 1},
            ],
            "model": str(tiny_backbone_folder),
        }
    )
    parts = recipe.parts()
    assert [name for name, _ in parts] == ["entities", "phrases"]
    assert [part.tag_column for _, part in parts] == [-1, 1] and all(part.tasks is None for _, part in parts)


def test_init_from_starts_from_the_joint_prompt_and_the_task_head(data, tiny_backbone_folder):
    assert main(multi_argv(data, tiny_backbone_folder)) == 0
    joint = PromptedModel.from_pretrained(data / "multi")
    recipe = Recipe.from_dict(
        {
            "train": str(data / "chunk.conll"),
            "task_names": "chunk",
            "model": str(tiny_backbone_folder),
            "init_from": str(data / "multi"),
            "prompt_dropout": 0.0,
        }
    )
    runs = [read_task_run(name, part) for name, part in recipe.parts()]
    model = build_model(recipe, runs)
    # the weights are copied from the joint checkpoint, not computed: bitwise
    assert torch.equal(model.prompts["chunk"].table, joint.prompts["ner"].table)
    assert model.prompt_config.length == 3 and model.prompt_config.dropout == 0.0  # the saved prompt's shape
    assert torch.equal(model.heads["chunk"].classifier.weight, joint.heads["chunk"].classifier.weight)
    # a task the joint run did not have starts with the joint prompt and a fresh head
    other = Recipe.from_dict({**recipe.to_dict(), "task_names": "phrases"})
    fresh = build_model(other, [read_task_run(name, part) for name, part in other.parts()])
    assert torch.equal(fresh.prompts["phrases"].table, joint.prompts["ner"].table)
    assert not torch.equal(fresh.heads["phrases"].classifier.weight, joint.heads["chunk"].classifier.weight)


def test_init_from_trains_on_and_refuses_what_it_cannot_start_from(
    data, tiny_backbone_folder, minilm_tokenizer, capsys
):
    assert main(multi_argv(data, tiny_backbone_folder)) == 0
    argv = [
        "train",
        "--train",
        str(data / "ner.conll"),
        "--task-names",
        "ner",
        "--model",
        str(tiny_backbone_folder),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--init-from",
        str(data / "multi"),
        "--output",
        str(data / "s"),
    ]
    assert main([*argv, "--prompt-length", "4"]) == 0
    recorded = json.loads((data / "s" / "metrics.json").read_text())["recipe"]
    assert recorded["init_from"] == str(data / "multi")
    assert recorded["prompt"]["length"] == 3  # what trained: the saved prompt's length, not the asked 4
    assert "the prompt keeps its saved shape: length 3 (the recipe says 4)" in capsys.readouterr().err
    other = data / "other-backbone"  # another shape: the saved prompt's vectors cannot enter its layers
    tiny_backbone("bert", vocab_size=minilm_tokenizer.vocab_size, hidden_size=16).save_pretrained(other)
    minilm_tokenizer.save_pretrained(other)
    elsewhere = [*argv[: argv.index("--model") + 1], str(other), *argv[argv.index("--model") + 2 : -1], str(data / "o")]
    assert main(elsewhere) == 2
    err = capsys.readouterr().err
    assert (
        "ptuning: error: --init-from: checkpoint" in err and "another backbone shape (hidden_size: checkpoint 32" in err
    )
    assert "Traceback" not in err and not (data / "o").exists()
    shallow = [
        "train",
        "--train",
        str(data / "ner.conll"),
        "--model",
        str(tiny_backbone_folder),
        "--max-steps",
        "1",
        "--method",
        "shallow",
        "--output",
        str(data / "sh"),
    ]
    assert main(shallow) == 0
    argv[argv.index("--init-from") + 1], argv[-1] = str(data / "sh"), str(data / "t")
    capsys.readouterr()
    assert main(argv) == 2
    assert "--init-from starts a deep prompt from a deep prompt" in capsys.readouterr().err
