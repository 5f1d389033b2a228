"""The command line: recipes and flags, and bad input answered by a message and exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_same_answer

from ptuning import PromptConfig, PromptedModel
from ptuning.cli import build_recipe, main, parser
from ptuning.data.formats import ConllFormat
from ptuning.training.run_metrics import single_task_metrics


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_default_recipe_and_flag_overrides(tmp_path):
    default = build_recipe({})
    assert (default.dataset, default.model, default.prompt.method) == ("conll2003-ner", "minilm-l6", "deep")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text("dataset: rotten-tomatoes\nlr: 0.02\nprompt-length: 8\n")
    recipe = build_recipe({"config": str(recipe_path), "lr": 0.005})
    assert (recipe.dataset, recipe.lr, recipe.prompt.length) == ("rotten-tomatoes", 0.005, 8)
    assert build_recipe({"train": "x.conll"}).dataset is None
    # another method than the recipe's drops the recipe's lr for that method's default, unless --lr is given
    finetune = build_recipe({"method": "finetune"})
    assert finetune.lr is None and finetune.learning_rate() == 5e-5
    assert build_recipe({"method": "finetune", "lr": 1e-4}).learning_rate() == 1e-4
    assert build_recipe({"method": "deep"}).lr == default.lr
    # the deep MLP reparameterization collapses at the flat table's lr: it gets its own default
    mlp = build_recipe({"reparam": "mlp"})
    assert mlp.lr is None and mlp.learning_rate() == 1e-3 and mlp.warmup() == 0.1
    assert default.warmup() == 0.0 and build_recipe({"reparam": "mlp", "warmup_ratio": 0.0}).warmup() == 0.0
    assert build_recipe({"reparam": "mlp", "lr": 3e-4}).learning_rate() == 3e-4
    assert build_recipe({"method": "ptuning-v1", "reparam": "mlp"}).learning_rate() == 1e-2


def test_backbone_dropout_flag_reaches_the_prompt_config():
    assert build_recipe({}).prompt.backbone_dropout is True
    assert parser().parse_args(["train", "--no-backbone-dropout"]).backbone_dropout is False
    assert build_recipe({"backbone_dropout": False}).prompt.backbone_dropout is False


def test_unknown_recipe_key_is_refused(tmp_path, capsys):
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text("learning_rate: 0.1\n")
    code, _, err = run_cli(capsys, "train", "--config", str(recipe_path))
    assert code == 2 and "unknown keys ['learning_rate']" in err and "Traceback" not in err


def test_malformed_training_file_gives_file_and_line(tmp_path, capsys):
    bad = tmp_path / "train.conll"
    bad.write_text("EU NNP B-ORG\nrejects O\n")
    code, _, err = run_cli(capsys, "train", "--train", str(bad), "--output", str(tmp_path / "run"))
    assert code == 2 and f"{bad}:2: expected 3 columns" in err


def test_empty_training_file(tmp_path, capsys):
    empty = tmp_path / "train.csv"
    empty.write_text("")
    code, _, err = run_cli(capsys, "train", "--train", str(empty), "--output", str(tmp_path / "run"))
    assert code == 2 and "the file is empty" in err


@pytest.fixture
def ner_checkpoint(tmp_path, tiny_backbone_folder):
    """A checkpoint on a tiny BERT whose backbone reference resolves to a saved local folder."""
    torch.manual_seed(0)
    model = PromptedModel.from_backbone(
        str(tiny_backbone_folder),
        "token-classification",
        labels=["B-PER", "I-PER", "O"],
        prompt=PromptConfig(length=2),
    )
    folder = tmp_path / "run" / "checkpoint"
    model.tasks["default"].data = ConllFormat(tag_column=-1)
    model.save_pretrained(folder)
    return tmp_path / "run"


def test_eval_refuses_labels_unknown_to_checkpoint(ner_checkpoint, tmp_path, capsys):
    test_file = tmp_path / "test.conll"
    test_file.write_text("Paris B-LOC\n")
    code, _, err = run_cli(capsys, "eval", str(ner_checkpoint), "--test", str(test_file))
    assert code == 2 and f"{test_file}:1: label(s) ['B-LOC'] unknown to the model" in err


def test_eval_and_predict_on_a_checkpoint(ner_checkpoint, tmp_path, capsys):
    test_file = tmp_path / "test.conll"
    test_file.write_text("Peter B-PER\nBlackburn I-PER\nruns O\n")
    code, out, _ = run_cli(capsys, "eval", str(ner_checkpoint), "--test", str(test_file))
    assert code == 0 and set(json.loads(out)) == {"accuracy", "precision", "recall", "f1"}
    inputs = tmp_path / "in.txt"
    inputs.write_text('Peter Blackburn runs\n\n{"words": ["Oslo", "calls"]}\n')
    code, out, _ = run_cli(capsys, "predict", str(ner_checkpoint), "--input", str(inputs))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [line["words"] for line in lines] == [["Peter", "Blackburn", "runs"], ["Oslo", "calls"]]
    assert all(len(line["tags"]) == len(line["words"]) for line in lines)
    inputs.write_text("{broken\n")
    code, _, err = run_cli(capsys, "predict", str(ner_checkpoint), "--input", str(inputs))
    assert code == 2 and "in.txt:1: not a JSON object" in err


def test_not_a_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(capsys, "predict", str(tmp_path), "--input", str(tmp_path / "x"))
    assert code == 2 and "is not a ptuning checkpoint" in err


def test_eval_writes_predictions_and_metrics_files(ner_checkpoint, tmp_path, capsys):
    test_file = tmp_path / "test.conll"
    test_file.write_text("Peter B-PER\nBlackburn I-PER\n\nruns O\n")
    predictions, metrics_file = tmp_path / "out.jsonl", tmp_path / "m.json"
    code, out, _ = run_cli(
        capsys,
        "eval",
        str(ner_checkpoint),
        "--test",
        str(test_file),
        "--predictions",
        str(predictions),
        "--output-metrics",
        str(metrics_file),
    )
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert code == 0 and [line["id"] for line in lines] == [f"{test_file}:1", f"{test_file}:4"]
    assert [line["words"] for line in lines] == [["Peter", "Blackburn"], ["runs"]]
    assert json.loads(metrics_file.read_text()) == json.loads(out)


@pytest.mark.numerics
def test_eval_forward_budget_changes_the_forwards_not_the_scores(ner_checkpoint, tmp_path, capsys, monkeypatch):
    test_file = tmp_path / "test.conll"
    sentences = ["Peter B-PER\nruns O", "Peter B-PER\nBlackburn I-PER\nruns O\nfast O", "runs O"]
    test_file.write_text("\n\n".join(sentences) + "\n")
    forwards = []
    original = PromptedModel.forward
    monkeypatch.setattr(PromptedModel, "forward", lambda self, *a, **k: forwards.append(1) or original(self, *a, **k))
    results = []
    for budget in ("100000", "4"):  # every sentence in one forward; one sentence per forward
        forwards.clear()
        predictions = tmp_path / f"predictions-{budget}.jsonl"
        code, out, _ = run_cli(
            capsys, "eval", str(ner_checkpoint), "--test", str(test_file), "--forward-tokens", budget,
            "--predictions", str(predictions),
        )  # fmt: skip
        assert code == 0
        records = [json.loads(line) for line in predictions.read_text().splitlines()]
        results.append((json.loads(out), records, len(forwards)))
    (one_metrics, one_predictions, one_count), (many_metrics, many_predictions, many_count) = results
    assert (one_count, many_count) == (1, 3)
    assert one_metrics == many_metrics  # counts of predicted tags, which must not change
    assert_same_answer(many_predictions, one_predictions)  # tags exactly, scores to 1e-5 (padded batches differ)


def test_a_run_without_validation_keeps_its_trained_weights(tmp_path, tiny_backbone_folder):
    """No validation data: no best epoch to choose, so the checkpoint holds the last weights, not the initial ones."""
    data = tmp_path / "ner.conll"
    data.write_text("Peter B-PER\nruns O\n\nOslo B-LOC\ncalls O\n")
    common = ["train", "--train", str(data), "--model", str(tiny_backbone_folder), "--lr", "0.1", "--batch-size", "2"]
    tables = {}
    for steps in (1, 6):
        assert main([*common, "--max-steps", str(steps), "--output", str(tmp_path / str(steps))]) == 0
        model = PromptedModel.from_pretrained(tmp_path / str(steps))
        tables[steps] = model.prompts[model.default_task].table.detach()
    assert not torch.allclose(tables[1], tables[6])  # five more steps at lr 0.1 moved the prompt
    assert single_task_metrics(json.loads((tmp_path / "6" / "metrics.json").read_text()))["validation"] == {}
