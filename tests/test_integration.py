"""End to end on the packaged MiniLM and a slice of the real CoNLL-2003 (a few dozen steps)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import set_seed

from ptuning import PromptConfig, PromptedModel
from ptuning.cli import main
from ptuning.data.packaged import load_packaged
from ptuning.recipe import Recipe
from ptuning.tasks import make_task
from ptuning.training.run import train
from ptuning.training.run_metrics import task_metrics

pytestmark = pytest.mark.integration


def mean_loss(model: PromptedModel, task, examples) -> float:
    encoded = task.encode(examples)
    batch = task.collator()(encoded.inputs)
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def test_training_lowers_loss_writes_metrics_and_predicts(tmp_path, capsys):
    recipe = Recipe(
        dataset="conll2003-ner",
        max_train_samples=320,
        max_eval_samples=64,
        max_steps=30,
        batch_size=16,
        lr=3e-2,
        prompt=PromptConfig(length=8),
        output=str(tmp_path / "run"),
    )
    metrics = train(recipe)

    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(task_metrics(written)) == ["conll2003-ner"]  # a run of one task, named by its dataset
    result = written["tasks"]["conll2003-ner"]
    assert (result["task"], result["dataset"]) == ("token-classification", "conll2003-ner")
    assert result["primary_metric"] == "f1"
    assert result["validation"].keys() >= {"f1", "precision", "recall"} and "f1" in result["test"]
    assert result["train_examples"] == written["train_examples"] == 320
    assert 0 < written["trainable_share"] < 0.03
    assert written["trainable_parameters"] == 8 * 6 * 2 * 384 + 384 * 9 + 9
    assert written["steps"] == 30 and written["train_seconds"] > 0
    logged = json.loads((tmp_path / "run" / "log.json").read_text())
    assert written["train_loss"] == [entry["loss"] for entry in logged if "loss" in entry][-1] > 0
    assert (tmp_path / "run" / "train.log").read_text().count("validation f1") >= 1
    # scored at the end of epoch 1 (step 20) and at the last step (30); the best of them is kept
    assert [epoch for epoch, _ in written["validation_curve"]] == [1.0, 1.5]
    assert result["validation"]["f1"] == max(score for _, score in written["validation_curve"])
    assert metrics["checkpoint_bytes"] < 200_000

    trained = PromptedModel.from_pretrained(tmp_path / "run" / "checkpoint")
    set_seed(recipe.seed)
    untrained = PromptedModel.from_backbone(
        "minilm-l6", "token-classification", labels=trained.labels, prompt=trained.prompt_config
    )
    task = make_task("token-classification", trained.tokenizer, trained.labels, 128)
    examples = load_packaged("conll2003-ner").train[:64]
    assert mean_loss(trained, task, examples) < 0.7 * mean_loss(untrained, task, examples)

    sentences = tmp_path / "in.txt"
    sentences.write_text("Peter Blackburn flew to Brussels .\n")
    assert main(["predict", str(tmp_path / "run"), "--input", str(sentences)]) == 0
    prediction = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert prediction["words"][0] == "Peter" and len(prediction["tags"]) == 6
