"""What a new user gets wrong ends in ``ptuning: error:`` (exit 2, no traceback), and never costs them a run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptuning import PromptedModel
from ptuning.checkpoint import WEIGHTS_NAME, read_task
from ptuning.cli import main, parser

TRAIN = "Peter B-PER\nBlackburn I-PER\nruns O\n\nOslo B-LOC\ncalls O\n\nMary B-PER\nsings O\n"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def conll_files(tmp_path):
    train, validation = tmp_path / "train.conll", tmp_path / "dev.conll"
    train.write_text(TRAIN)
    validation.write_text("Anna B-PER\nsleeps O\n")
    return train, validation


def tiny_train(tmp_path, backbone, train, validation, *extra: str) -> list[str]:
    """Flags of a two-step training run on the tiny backbone."""
    return [
        "train",
        "--train",
        str(train),
        "--validation",
        str(validation),
        "--model",
        str(backbone),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--prompt-length",
        "2",
        "--output",
        str(tmp_path / "run"),
        *extra,
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "batch_size (--batch-size) must be at least 1, got 0"),
        (["--max-steps", "0"], "max_steps (--max-steps) must be at least 1 (or -1: train for --epochs), got 0"),
        (["--lr", "-1"], "lr (--lr) must be positive, got -1.0"),
        (["--epochs", "0"], "epochs (--epochs) must be positive, got 0.0"),
        (["--warmup-ratio", "1.5"], "warmup_ratio (--warmup-ratio) must be in [0, 1), got 1.5"),
        (["--prompt-dropout", "1"], "prompt_dropout (--prompt-dropout) must be in [0, 1), got 1.0"),
        (["--prompt-length", "0"], "prompt_length (--prompt-length) must be at least 1, got 0"),
        (["--max-length", "0"], "max_length (--max-length) must be at least 8, got 0"),
        (["--eval-batch-size", "-2"], "eval_batch_size (--eval-batch-size) must be at least 1, got -2"),
        (["--max-train-samples", "0"], "max_train_samples (--max-train-samples) must be at least 1, got 0"),
        (["--weight-decay", "-0.1"], "weight_decay (--weight-decay) must be 0 or more, got -0.1"),
        (["--dataset", "conll2003-ner,conll2003"], "dataset (--dataset) names 'conll2003', neither a packaged dataset"),
        (["--method", "shallow", "--reparam", "mlp"], "reparam 'mlp' does not apply to method 'shallow'"),
    ],
)
def test_numeric_and_named_flags_are_checked_before_anything_runs(tmp_path, capsys, flags, message):
    code, _, err = run_cli(capsys, "train", *flags, "--output", str(tmp_path / "run"))
    assert code == 2 and f"ptuning: error: flags: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("batch_size: 1.5\n", "batch_size (--batch-size) must be a int, got 1.5"),
        ("lr: fast\n", "lr (--lr) must be a float, got 'fast'"),
        ("epochs: 0\n", "epochs (--epochs) must be positive, got 0.0"),
        ("prompt_layers: [0, x]\n", "prompt_layers (--prompt-layers) must be a list of integers"),
        ("shift_positions: 'yes'\n", "shift_positions (--shift-positions) must be a bool"),
    ],
)
def test_recipe_values_are_checked_naming_the_file(tmp_path, capsys, yaml_text, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: conll2003-ner\n" + yaml_text)
    code, _, err = run_cli(capsys, "train", "--config", str(recipe))
    assert code == 2 and f"ptuning: error: {recipe}: {message}" in err


def test_a_nullable_setting_takes_none_on_the_command_line():
    from ptuning.cli import build_recipe

    train = parser().parse_args(["train", "--train", "a.conll", "--reparam", "none", "--pair-column", "none"])
    flags = {key: value for key, value in vars(train).items() if key not in ("command", "handler")}
    recipe = build_recipe(flags)
    assert recipe.prompt.reparam is None and recipe.pair_column == "none"  # only reparam declares None a value


def test_each_task_of_a_recipe_sets_its_data_keys_and_they_make_its_data_spec():
    from ptuning.recipe import Recipe

    assert Recipe.per_task_keys() == (
        "name", "dataset", "train", "validation", "test", "task", "labels", "tag_column", "text_column",
        "pair_column", "label_column", "tokens_column", "tags_column", "head", "template", "verbalizer",
        "chat_template", "parser", "max_new_tokens",
    )  # fmt: skip
    spec = Recipe(train="a.csv", validation="b.csv", task="boolq", text_column="sentence").data_spec()
    assert (spec.train, spec.validation, spec.task, spec.text_column) == ("a.csv", "b.csv", "boolq", "sentence")


def test_yaml_exponent_without_a_dot_is_a_learning_rate(tmp_path):
    from ptuning.cli import build_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: conll2003-ner\nlr: 1e-2\n")  # YAML 1.1 reads this as a string
    assert build_recipe({"config": str(recipe)}).lr == 0.01


def test_help_and_version_and_argument_errors_load_neither_torch_nor_transformers():
    """What makes them answer at once: the command line imports the heavy libraries only to run a command."""
    probe = (
        "import sys\nfrom ptuning.cli import main\n"
        "for argv in (['--version'], ['train', '--help'], ['train', '--batch-size', '0']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]"
    assert "ptuning " in result.stdout and "batch_size (--batch-size) must be at least 1" in result.stderr


def test_help_lists_each_task_once_every_packaged_dataset_and_the_defaults(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    choices = text.split("--task {")[1].split("}")[0].split(",")
    assert len(choices) == len(set(choices)) and "srl" in choices and "squad_v2" in choices
    assert "conll2003-qa" in text and "rotten-tomatoes" in text
    assert "(default: 32)" in text and "(default: minilm-l6)" in text and "(default: runs/ptuning)" in text
    with pytest.raises(SystemExit):
        parser().parse_args(["predict", "--help"])
    assert "(default: 64)" in capsys.readouterr().out


def test_eval_and_predict_batch_size_is_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["predict", "run", "--batch-size", "0"])
    assert exit_info.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err


def test_training_into_a_run_folder_is_refused_without_overwrite(tmp_path, capsys, conll_files, tiny_backbone_folder):
    old = tmp_path / "run"
    (old / "checkpoint" / "backbone").mkdir(parents=True)  # an old fine-tuning run: its backbone must not survive
    (old / "train.log").write_text("the old run's log\n")
    argv = tiny_train(tmp_path, tiny_backbone_folder, *conll_files)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "is not empty (a previous run?); give --overwrite" in err
    assert (old / "train.log").read_text() == "the old run's log\n"

    code, out, err = run_cli(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert not (old / "checkpoint" / "backbone").exists() and "the old run" not in (old / "train.log").read_text()
    metrics = json.loads((old / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(old / "checkpoint") and metrics["steps"] == 2
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".run")) == []  # no staging left


def test_a_failed_run_leaves_the_old_run_untouched(tmp_path, capsys, conll_files, tiny_backbone_folder):
    old = tmp_path / "run"
    old.mkdir()
    (old / "train.log").write_text("the old run's log\n")
    broken = tmp_path / "broken.conll"
    broken.write_text("Peter B-PER\nruns\n")
    train, validation = conll_files
    code, _, err = run_cli(capsys, *tiny_train(tmp_path, tiny_backbone_folder, broken, validation, "--overwrite"))
    assert code == 2 and f"{broken}:2: expected 2 columns" in err
    assert [path.name for path in old.iterdir()] == ["train.log"]
    assert (old / "train.log").read_text() == "the old run's log\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.conll", "dev.conll", "run", "train.conll"]


def test_validation_labels_missing_from_training_are_declared_with_labels(
    tmp_path, capsys, conll_files, tiny_backbone_folder
):
    train, validation = conll_files
    validation.write_text("Anna B-PER\nsleeps O\n\nEU B-ORG\nrejects O\n")
    argv = tiny_train(tmp_path, tiny_backbone_folder, train, validation)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and f"{validation}:4: label(s) ['B-ORG'] unknown to the model" in err  # the word's own line
    assert "declare the whole label set with --labels" in err

    code, _, err = run_cli(capsys, *argv, "--labels", "O,B-PER,I-PER,B-LOC,B-ORG")
    assert code == 0, err
    assert read_task(tmp_path / "run").labels == ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"]
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("O\nB-PER\n")
    code, _, err = run_cli(capsys, *argv, "--labels", str(labels_file), "--overwrite")
    assert code == 2 and f"{train}:2: label(s) ['I-PER'] unknown to the model" in err


def test_run_folder_loads_in_python_as_on_the_command_line(tmp_path, capsys, conll_files, tiny_backbone_folder):
    assert main(tiny_train(tmp_path, tiny_backbone_folder, *conll_files)) == 0
    model = PromptedModel.from_pretrained(tmp_path / "run")
    assert model.labels == ["B-LOC", "B-PER", "I-PER", "O"]


def test_truncated_or_corrupted_weights_are_a_checkpoint_error(tmp_path, capsys, conll_files, tiny_backbone_folder):
    assert main(tiny_train(tmp_path, tiny_backbone_folder, *conll_files)) == 0
    weights = tmp_path / "run" / "checkpoint" / WEIGHTS_NAME
    data = weights.read_bytes()
    for broken in (data[: len(data) // 2], b"\x00" * 16, b""):
        weights.write_bytes(broken)
        code, _, err = run_cli(capsys, "predict", str(tmp_path / "run"), "--input", str(conll_files[0]))
        assert code == 2 and f"{weights} is not a readable safetensors file" in err and "Traceback" not in err


def test_a_conll_checkpoint_given_a_csv_says_what_it_reads(tmp_path, capsys, conll_files, tiny_backbone_folder):
    assert main(tiny_train(tmp_path, tiny_backbone_folder, *conll_files)) == 0
    table = tmp_path / "test.csv"
    table.write_text("text,label\nPeter runs,B-PER\n")
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "run"), "--test", str(table))
    assert code == 2 and "a .csv file, but this model reads CoNLL column files" in err
    not_conll = tmp_path / "test.txt"
    not_conll.write_text("Peter B-PER\nruns O extra\n")
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "run"), "--test", str(not_conll))
    assert code == 2 and f"{not_conll}:2: expected 2 columns" in err and "(expected CoNLL column files" in err


def test_json_lines_named_json_point_at_the_classification_task(tmp_path, capsys):
    lines = tmp_path / "train.json"
    lines.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    code, _, err = run_cli(capsys, "train", "--train", str(lines), "--output", str(tmp_path / "run"))
    assert code == 2 and "a .json file is read as SQuAD JSON" in err and "--task sequence-classification" in err


def test_recipe_round_trips_through_metrics(tmp_path, conll_files, tiny_backbone_folder):
    """metrics.json keeps the recipe; feeding it back gives the same Recipe (every value passes the checks)."""
    from ptuning.recipe import Recipe

    assert main(tiny_train(tmp_path, tiny_backbone_folder, *conll_files)) == 0
    recipe = json.loads((tmp_path / "run" / "metrics.json").read_text())["recipe"]
    assert Recipe.from_dict(recipe).to_dict() == recipe
