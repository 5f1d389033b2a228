"""``ptuning sweep``: trials on Optuna storage, continued by a rerun of the same sweep with more trials (another
sweep is refused there, ``--overwrite`` starts over); the best recipe is a YAML recipe ``ptuning train --config``
takes; every --search spec is checked before the first trial (the values against the recipe: test_bad_inputs_cli)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import yaml

from ptuning.cli import main
from ptuning.sweep import parse_search

FINISHED = ("COMPLETE", "PRUNED")  # the median pruner may stop a trial after its first epochs
DATA = "Peter B-PER\nBlackburn I-PER\nruns O\n\nOslo B-LOC\ncalls O\n\nMary B-PER\nsings O\n"


def sweep_flags(tmp_path, backbone, *more: str) -> list[str]:
    data = tmp_path / "ner.conll"
    data.write_text(DATA)
    return [
        "sweep", "--train", str(data), "--validation", str(data), "--model", str(backbone), "--max-steps", "4",
        "--batch-size", "2", "--search", "lr=0.01:0.5:log", "--search", "prompt_length=2,3",
        "--output", str(tmp_path / "sweep"), *more,
    ]  # fmt: skip


def test_a_rerun_with_more_trials_continues_the_study_and_the_best_recipe_trains(
    tmp_path, tiny_backbone_folder, capsys
):
    assert main(sweep_flags(tmp_path, tiny_backbone_folder, "--trials", "2")) == 0
    assert main(sweep_flags(tmp_path, tiny_backbone_folder, "--trials", "3")) == 0
    assert "study 'ptuning': 3 trials" in capsys.readouterr().out
    folder = tmp_path / "sweep"
    study = optuna.load_study(study_name="ptuning", storage=f"sqlite:///{folder / 'sweep.db'}")
    assert len(study.trials) == 3 and all(trial.intermediate_values for trial in study.trials)  # per-epoch reports
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [row["trial"] for row in rows] == ["0", "1", "2"] and all(row["state"] in FINISHED for row in rows)
    assert {row["prompt_length"] for row in rows} <= {"2", "3"} and all(0.01 <= float(row["lr"]) <= 0.5 for row in rows)
    assert (folder / "sweep.png").stat().st_size > 0
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["lr"] == study.best_params["lr"] and best["max_steps"] == 4
    assert main(["train", "--config", str(folder / "best.yaml"), "--output", str(tmp_path / "best")]) == 0
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert metrics["recipe"]["lr"] == study.best_params["lr"]


def test_overwrite_starts_over_where_another_sweep_is_refused(tmp_path, tiny_backbone_folder, capsys):
    folder = tmp_path / "sweep"
    assert main(sweep_flags(tmp_path, tiny_backbone_folder, "--trials", "1")) == 0
    (folder / "notes.txt").write_text("of the old sweep\n")
    other = sweep_flags(tmp_path, tiny_backbone_folder, "--trials", "1", "--prompt-dropout", "0.2")
    assert main(other) == 2
    assert "is another sweep's (prompt_dropout: 0.1 then, 0.2 now)" in capsys.readouterr().err
    assert main([*other, "--overwrite"]) == 0
    assert not (folder / "notes.txt").exists()
    assert yaml.safe_load((folder / "best.yaml").read_text())["prompt_dropout"] == 0.2
    assert main([*other, "--resume", "--trials", "2"]) == 0  # the same sweep: continued
    study = optuna.load_study(study_name="ptuning", storage=f"sqlite:///{folder / 'sweep.db'}")
    assert len(study.trials) == 2 and study.user_attrs["ptuning_sweep"]["recipe"]["prompt_dropout"] == 0.2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lr", "expected NAME=LOW:HIGH[:log] or NAME=a,b,c"),
        ("speed=1:2", "'speed' is not a recipe key to search"),
        ("output=a,b", "'output' is not a recipe key to search"),
        ("lr=0.5:0.1", "needs LOW < HIGH"),
        ("lr=0:1:log", "LOW > 0 on a log scale"),
        ("lr=a:b", "expected NAME=LOW:HIGH[:log]"),
        ("lr=0.1:1:ln", "expected NAME=LOW:HIGH[:log]"),
    ],
)
def test_bad_search_specs_are_refused(tmp_path, tiny_backbone_folder, capsys, spec, message):
    flags = sweep_flags(tmp_path, tiny_backbone_folder, "--search", spec)
    assert main(flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep" / "sweep.db").exists()  # refused before any trial


def test_search_specs_read_ranges_and_typed_choices():
    assert parse_search("prompt-length=4:64:log").suggest.__self__.low == 4
    ranged = parse_search("prompt_length=4:64")
    assert (ranged.key, ranged.low, ranged.high, ranged.log) == ("prompt_length", 4, 64, False)
    assert parse_search("reparam=none,mlp").choices == (None, "mlp")
    assert parse_search("prompt_dropout=0.0,0.1").choices == (0.0, 0.1)


def test_jobs_are_processes_sharing_one_study(tmp_path, tiny_backbone_folder, capsys):
    # the workers continue the study this process starts, never start it over themselves
    assert main(sweep_flags(tmp_path, tiny_backbone_folder, "--trials", "4", "--jobs", "2", "--overwrite")) == 0
    study = optuna.load_study(study_name="ptuning", storage=f"sqlite:///{tmp_path / 'sweep' / 'sweep.db'}")
    finished = [trial for trial in study.trials if trial.state.name in FINISHED]
    assert 4 <= len(finished) <= 5  # each process stops at 4 finished; one running trial may still end after
    assert len(study.trials) == len(finished)
    runs = {trial.user_attrs["run"] for trial in finished}
    assert len(runs) == len(finished)  # one run folder each, whichever process ran it
    completed = [trial for trial in finished if trial.state.name == "COMPLETE"]
    assert completed and all(Path(trial.user_attrs["run"], "metrics.json").is_file() for trial in completed)
