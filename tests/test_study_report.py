"""The study harness: what it searches, the recipes it builds, and how the report picks the deep variant."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

report = pytest.importorskip("report")  # needs matplotlib (the bench extra)
import protocol  # noqa: E402 - benchmarks/ is put on the path first
import study  # noqa: E402

from ptuning.recipe import Recipe  # noqa: E402
from ptuning.training.run_metrics import task_result_of  # noqa: E402


def test_search_space_per_method() -> None:
    scale = protocol.FULL
    assert protocol.search_space(scale, "deep") == [
        (lr, length, None) for lr in scale.learning_rates["deep"] for length in scale.prompt_lengths
    ]
    for method in ("deep-mlp", "shallow", "ptuning-v1"):
        assert {point.prompt_length for point in protocol.search_space(scale, method)} == {scale.prompt_lengths[0]}
    # fine-tuning gets the backbone-dropout choice the deep recipe makes, searched on validation like its lr
    assert protocol.search_space(scale, "finetune") == [
        (lr, None, dropout) for lr in scale.learning_rates["finetune"] for dropout in (True, False)
    ]


def test_settings_are_valid_recipes() -> None:
    point = protocol.Point(3e-3, 64)
    prompted = Recipe.from_dict(
        {**protocol.settings_for(protocol.FULL, "conll2003-ner", "deep-mlp", point, 1), "output": "x"}
    )
    assert (prompted.prompt.method, prompted.prompt.reparam, prompted.prompt.length) == ("deep", "mlp", 64)
    assert prompted.prompt.dropout == protocol.PROMPT_DROPOUT and prompted.prompt.backbone_dropout is False
    assert prompted.max_train_samples == protocol.FULL.train_examples and prompted.seed == 1
    finetune = protocol.settings_for(protocol.FULL, "rotten-tomatoes", "finetune", protocol.Point(5e-5, None, True), 0)
    assert "prompt_length" not in finetune and "prompt_dropout" not in finetune
    assert "backbone_dropout" not in finetune  # the default: runs journaled before the option stay reusable
    without = protocol.settings_for(protocol.FULL, "rotten-tomatoes", "finetune", protocol.Point(5e-5, None, False), 0)
    assert Recipe.from_dict({**without, "output": "x"}).prompt.backbone_dropout is False


def _row(task: str, method: str, mean: float, validation: float) -> dict:
    return {
        "task": task,
        "method": method,
        "metric": "f1",
        "mean": mean,
        "std": 0.5,
        "seeds": [0, 1, 2],
        "scores": [mean - 0.5, mean, mean + 0.5],
        "validation": validation,
        "lr": 0.01,
        "prompt_length": None if method == "finetune" else 16,
        "trainable_share": 1.0 if method == "finetune" else 0.01,
        "stored_share": 1.0 if method == "finetune" else 0.003,
        "train_seconds": 10.0,
        "peak_rss_mb": 900.0,
        "checkpoint_bytes": 4096,
    }


def test_report_picks_the_deep_variant_on_validation_not_test(tmp_path: Path) -> None:
    setup = {"mode": "full", "date": "2026-11-22", "jobs": 2, "prompt_dropout": 0.0, "scale": protocol.FULL.__dict__}
    rows = [
        _row("conll2003-ner", "finetune", 84.0, 88.0),
        _row("conll2003-ner", "deep", 85.0, 80.0),  # better on test, worse on validation: must not be chosen
        _row("conll2003-ner", "deep-mlp", 83.0, 82.0),
    ]
    (tmp_path / "parity.json").write_text(json.dumps({"setup": setup, "rows": rows}))
    text = report.write(tmp_path).read_text()
    assert "| conll2003-ner | 84.00 | deep-mlp 83.00 | -1.00 | 0.300% |" in text
    assert "| conll2003-ner | deep | f1 85.00 ± 0.50 | 3 |" in text
    assert (tmp_path / "parity.png").stat().st_size > 0


class RecordingRunner:
    """Stands in for protocol.Runner: records the settings asked for and answers fixed metrics."""

    def __init__(self) -> None:
        self.asked: list[dict] = []

    def many(self, named_settings: list) -> list[dict]:
        self.asked += [settings for _, settings in named_settings]
        return [
            {
                "primary_metric": "f1",
                "recipe": Recipe.from_dict({**settings, "output": "x"}).to_dict(),
                "test": {"f1": 80.0 + settings["seed"]},
                "validation": {"f1": 81.0},
                "validation_curve": [[1.0, 70.0 + settings["seed"]], [2.0, 81.0]],
                "trainable_parameters": 10,
                "total_parameters": 1000,
                "stored_parameters": 5,  # a reparameterization folded away: fewer stored than trained
                "trainable_share": 0.01,
                "train_seconds": 1.0,
                "train_loss": 0.1 + settings["seed"] / 100,
                "train_examples": settings["max_train_samples"],
                "steps": 7,
                "peak_rss_mb": 1.0,
                "checkpoint_bytes": 1,
            }
            for _, settings in named_settings
        ]


def test_longer_training_only_where_deep_trails_on_validation() -> None:
    rows = [
        {**_row("conll2003-ner", "finetune", 84.0, 88.0), "backbone_dropout": False},  # as searched
        _row("conll2003-ner", "deep", 85.0, 80.0),
        _row("conll2003-ner", "deep-mlp", 70.0, 82.0),  # chosen: better validation
        _row("rotten-tomatoes", "finetune", 80.0, 80.0),
        _row("rotten-tomatoes", "deep", 79.0, 79.5),  # within a point on validation: not rerun
        _row("rotten-tomatoes", "deep-mlp", 60.0, 60.0),
        _row("conll2003-chunk", "finetune", 90.0, 90.0),
        _row("conll2003-chunk", "deep", 86.0, 87.0),  # behind by 3: less than NER's 6, past the one-task limit
        _row("conll2003-chunk", "deep-mlp", 80.0, 80.0),
    ]
    runner = RecordingRunner()
    scale = dataclasses.replace(protocol.FULL, longer_tasks=1)
    result = study.longer(scale, runner, rows)
    assert result["within_a_point_already"] == ["rotten-tomatoes"]
    assert result["behind_not_rerun"] == ["conll2003-chunk"]
    assert [(r["task"], r["method"]) for r in result["rows"]] == [
        ("conll2003-ner", "finetune"),
        ("conll2003-ner", "deep-mlp"),
    ]
    assert {s["epochs"] for s in runner.asked} == {protocol.FULL.longer_epochs}
    assert {s["batch_size"] for s in runner.asked} == {protocol.FULL.longer_batch_size}
    assert all(s["backbone_dropout"] is False for s in runner.asked)  # the searched setting, and deep-mlp's
    assert [row["backbone_dropout"] for row in result["rows"]] == [False, False]  # recorded as trained
    assert protocol.FULL.longer_batch_size < protocol.FULL.batch_size  # more updates per epoch, not only more epochs
    assert [s["seed"] for s in runner.asked] == list(protocol.FULL.seeds) * 2
    assert result["rows"][1]["mean"] == pytest.approx(81.0)  # seeds 0, 1, 2 -> 80, 81, 82
    assert result["rows"][1]["stored_share"] == pytest.approx(5 / (1000 - 10 + 5))  # of the model that serves
    assert result["rows"][1]["validation_curve"] == [(1.0, pytest.approx(71.0)), (2.0, pytest.approx(81.0))]


def test_report_shows_the_gap_after_more_steps(tmp_path: Path) -> None:
    finetune, deep = _row("conll2003-chunk", "finetune", 86.0, 88.0), _row("conll2003-chunk", "deep", 85.5, 87.0)
    for row, curve in ((finetune, [[1.0, 80.0], [2.0, 88.0]]), (deep, [[1.0, 60.0], [2.0, 87.0]])):
        row.update(epochs=2, batch_size=8, validation_curve=curve)
    longer = {"epochs": 2, "batch_size": 8, "rows": [finetune, deep], "within_a_point_already": ["rotten-tomatoes"]}
    (tmp_path / "longer.json").write_text(json.dumps(longer))
    text = report.write(tmp_path).read_text()
    assert "## More optimizer steps (2 epochs of batch 8)" in text
    assert "| conll2003-chunk | 86.00 | deep 85.50 | -0.50 | 0.300% |" in text
    assert "by more than 1 point(s), both were trained again" in text
    assert "Already within it: rotten-tomatoes" in text
    assert (tmp_path / "longer.png").stat().st_size > 0


def test_more_data_reruns_the_largest_gap_with_more_examples_and_reports_train_loss(tmp_path: Path) -> None:
    rows = [
        _row("conll2003-ner", "finetune", 84.0, 88.0),
        _row("conll2003-ner", "deep", 75.0, 78.0),  # behind by 10
        _row("conll2003-ner", "deep-mlp", 60.0, 60.0),
        _row("conll2003-chunk", "finetune", 90.0, 90.0),
        _row("conll2003-chunk", "deep", 86.0, 87.0),  # behind by 3: past the one-task limit
        _row("conll2003-chunk", "deep-mlp", 80.0, 80.0),
    ]
    runner = RecordingRunner()
    result = study.more_data(dataclasses.replace(protocol.FULL, data_tasks=1), runner, rows)
    assert {s["max_train_samples"] for s in runner.asked} == {protocol.FULL.data_train_examples}
    assert {(s["epochs"], s["batch_size"]) for s in runner.asked} == {(protocol.FULL.epochs, protocol.FULL.batch_size)}
    assert result["behind_not_rerun"] == ["conll2003-chunk"]
    assert [(r["method"], r["train_examples"], r["steps"]) for r in result["rows"]] == [
        ("finetune", protocol.FULL.data_train_examples, 7),
        ("deep", protocol.FULL.data_train_examples, 7),
    ]
    assert result["rows"][1]["train_loss"] == pytest.approx(0.11)  # seeds 0, 1, 2 -> 0.10, 0.11, 0.12
    # quick mode reruns whatever the gap, so its reduced run exercises the part
    quick = study.more_data(dataclasses.replace(protocol.QUICK, data_tasks=2), RecordingRunner(), rows)
    assert [row["task"] for row in quick["rows"]] == ["conll2003-ner"] * 2 + ["conll2003-chunk"] * 2
    (tmp_path / "data.json").write_text(json.dumps(result))
    text = report.write(tmp_path).read_text()
    examples = protocol.FULL.data_train_examples
    assert f"## More training data ({examples} examples)" in text
    assert f"| conll2003-ner | deep | {examples} | 7 | f1 81.00 ± 1.00 | 81.00 | 0.110 | 0.01 | 16 |" in text


def test_train_loss_is_missing_rather_than_averaged_over_some_seeds() -> None:
    assert study.mean_or_none([0.2, None, 0.4]) is None
    assert study.mean_or_none([0.2, 0.4]) == pytest.approx(0.3)


def test_data_longer_reruns_where_deep_still_trails_after_more_data_among_the_chosen_tasks(tmp_path: Path) -> None:
    data_rows = [  # the data part keeps one deep variant a task
        _row("conll2003-ner", "finetune", 84.0, 88.0),
        _row("conll2003-ner", "deep", 75.0, 78.0),  # behind by 10, but not among the chosen tasks
        _row("conll2003-chunk", "finetune", 90.0, 90.0),
        _row("conll2003-chunk", "deep-mlp", 86.0, 87.0),  # behind by 3
        _row("rotten-tomatoes", "finetune", 80.0, 80.0),
        _row("rotten-tomatoes", "deep", 80.0, 79.5),  # within a point
    ]
    runner = RecordingRunner()
    only = {"conll2003-chunk", "rotten-tomatoes"}
    result = study.more_data_longer(protocol.FULL, runner, data_rows, only)
    assert {(s["dataset"], s["max_train_samples"], s["epochs"], s["batch_size"]) for s in runner.asked} == {
        ("conll2003-chunk", protocol.FULL.data_train_examples, protocol.FULL.longer_epochs, protocol.FULL.batch_size)
    }
    assert [row["method"] for row in result["rows"]] == ["finetune", "deep-mlp"]
    assert result["within_a_point_already"] == ["rotten-tomatoes"]
    assert result["behind_not_rerun"] == ["conll2003-ner"]
    (tmp_path / "data_longer.json").write_text(json.dumps(result))
    text = report.write(tmp_path).read_text()
    examples, epochs = protocol.FULL.data_train_examples, protocol.FULL.longer_epochs
    assert f"## More data and more epochs ({examples} examples, {epochs} epochs)" in text
    assert "behind but not rerun (time): conll2003-ner." in text
    assert "| conll2003-chunk | 81.00 | deep-mlp 81.00 | +0.00 | 0.503% |" in text  # the recorded runs: a tie


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parts", "parity,speed"], "unknown part(s) ['speed']; expected some of parity, ablations"),
        (
            ["--parts", "data", "--tasks", "ner"],
            "unknown task(s) ['ner']; expected some of conll2003-chunk, conll2003-ner, conll2003-pos",
        ),
    ],
)
def test_study_rejects_unknown_parts_and_tasks(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", ["study.py", *argv])
    with pytest.raises(SystemExit):
        study.main()
    assert message in capsys.readouterr().err


def test_a_part_without_the_results_it_builds_on_names_the_part_to_run_first(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"data-longer part builds on .*data\.json.*run --parts data first"):
        study.rows_of(tmp_path, "data", "data-longer")
    (tmp_path / "data.json").write_text(json.dumps({"rows": [_row("conll2003-ner", "finetune", 84.0, 88.0)]}))
    assert study.rows_of(tmp_path, "data", "data-longer")[0]["mean"] == 84.0


def test_cost_without_peft_prefix_tuning_says_why_and_reports_the_rest(tmp_path) -> None:
    """Where PEFT cannot prefix-tune (transformers 5.24 with peft 0.21.2) the cost part measures the rest."""
    import cost

    steps = {"deep": 0.5, "finetune": 1.0, "deep-no-backbone-dropout": 0.4}
    median = dict(steps)
    result = {
        "batch_size": 32,
        "prompt_length": 16,
        "batch_tokens": [32, 40],
        "repeats": 3,
        "step_seconds_median": steps,
        "training_memory_mb": {"deep": 100.0, "finetune": 300.0, "deep-no-backbone-dropout": 60.0},
        "peft_prefix_not_measured": "peft 0.21.2 with transformers 5.24.0: ValueError: Model does not support ...",
        "step_time_ratio_vs_finetune": cost.ratio(median, "deep", "finetune"),
        "step_time_ratio_vs_peft": cost.ratio(median, "deep", "peft-prefix"),
        "peak_mem_ratio_vs_finetune": 1 / 3,
        "no_backbone_dropout_step_time_ratio_vs_finetune": cost.ratio(median, "deep-no-backbone-dropout", "finetune"),
        "no_backbone_dropout_step_time_ratio_vs_peft": cost.ratio(median, "deep-no-backbone-dropout", "peft-prefix"),
        "epoch_sentences": 64,
        "examples_per_second": {"dynamic_padding_length_grouped": 20.0, "padded_to_128": 5.0},
        "epoch_speedup_vs_pad128": 4.0,
    }
    printed = cost.summary(result)
    assert "PEFT prefix tuning not measured: peft 0.21.2 with transformers 5.24.0" in printed
    assert "deep / finetune step time 0.50x, deep / PEFT prefix not measured" in printed
    (tmp_path / "cost.json").write_text(json.dumps(result))
    text = report.write(tmp_path).read_text()
    assert "PEFT prefix tuning was not measured: peft 0.21.2" in text and "**0.50x**" in text


class MultiTaskRunner:
    """Stands in for protocol.Runner in the multitask part: single runs score by lr, joint runs per task."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict]] = []

    def many(self, named_settings: list) -> list[dict]:
        self.asked += named_settings
        answers = []
        for _, settings in named_settings:
            Recipe.from_dict({"output": "x", **settings})  # every asked setting is a valid recipe
            bonus = 100 * settings["lr"] + settings["prompt_length"] / 100 + settings["seed"]
            result = {"primary_metric": "f1", "test": {"f1": 70 + bonus}, "validation": {"f1": 60 + bonus}}
            if "," in settings["dataset"]:
                tasks = settings["dataset"].split(",")
                answers.append({"tasks": {task: result for task in tasks}, "train_seconds": 30.0, "steps": 180})
            else:
                answers.append({**result, "train_seconds": 10.0, "steps": settings.get("max_steps", 60)})
        return answers


def test_multitask_part_runs_single_joint_and_second_stage(tmp_path) -> None:
    import multitask

    runner = MultiTaskRunner()
    tasks = ("conll2003-ner", "conll2003-pos")
    result = multitask.multitask(protocol.FULL, runner, tasks, tmp_path)
    kinds = Counter(name.split("-conll")[0].split("-joint")[0] for name, _ in runner.asked)
    # a 4-point search on seed 0 and 2 more seeds: per task alone, and jointly; then 2 tasks x 3 seeds
    assert kinds == {
        "multitask-single": 12,
        "multitask-multi": 6,
        "multitask-multi-then-single": 6,
        "multitask-single-240-steps": 6,  # the control: the joint run's 180 steps and the second stage's 60
    }
    control = [settings for name, settings in runner.asked if "-240-steps" in name]
    assert all(settings["max_steps"] == 240 and settings["prompt_length"] == 64 for settings in control)
    assert all("init_from" not in settings and settings["lr"] == 0.06 for settings in control)
    joint = [settings for name, settings in runner.asked if name.startswith("multitask-multi-joint")]
    assert all(settings["dataset"] == "conll2003-ner,conll2003-pos" and "output" in settings for settings in joint)
    second = [settings for name, settings in runner.asked if "then-single" in name]
    assert {settings["init_from"] for settings in second} == {
        str(tmp_path / f"multitask-multi-joint-lr0.06-P64-s{seed}") for seed in (0, 1, 2)
    }
    assert all(settings["lr"] == 0.06 for settings in second)  # each task's single-setting lr
    rows = {(row["task"], row["setting"]): row for row in result["rows"]}
    assert set(rows) == {(task, setting) for task in tasks for setting in multitask.SETTINGS}
    single = rows[("conll2003-ner", "single")]
    assert single["scores"] == [76.64, 77.64, 78.64] and single["mean"] == pytest.approx(77.64)
    assert rows[("conll2003-pos", "multi")]["train_seconds"] == 30.0 and result["joint"]["prompt_length"] == 64

    (tmp_path / "multitask.json").write_text(
        json.dumps(
            {
                "setup": {
                    "mode": "full",
                    "date": "d",
                    "scale": {
                        "train_examples": 1000,
                        "eval_examples": 500,
                        "epochs": 3,
                        "batch_size": 16,
                        "seeds": [0, 1, 2],
                    },
                },
                **result,
            }
        )
    )
    text = report.write(tmp_path).read_text()
    assert "| conll2003-ner (f1) | 77.64 ± 1.00 (val 67.64) |" in text and (tmp_path / "multitask.png").is_file()


def test_second_backbone_settings_journal_and_names() -> None:
    point = protocol.Point(1e-2, 64)
    settings = protocol.settings_for(protocol.MPNET, "conll2003-ner", "deep", point, 0)
    assert Recipe.from_dict({**settings, "output": "x"}).model == "mpnet-base"
    minilm = protocol.settings_for(protocol.FULL, "conll2003-ner", "deep", point, 0)
    assert "model" not in minilm  # MiniLM's journal keys
    assert study.run_name("conll2003-ner", "deep", point, 0, "mpnet-base").startswith("parity-mpnet-base-conll")
    assert protocol.MPNET.methods == ("finetune", "deep") and "conll2003-ner" in protocol.MPNET.tasks
    assert protocol.search_space(protocol.MPNET, "finetune") == [(lr, None, False) for lr in (5e-5, 2e-4, 5e-4)]


def _scaled(backbone: str, method: str, mean: float, parameters: int) -> dict:
    return {**_row("conll2003-ner", method, mean, mean), "backbone": backbone, "trainable_parameters": parameters}


def test_parity_keeps_other_backbones_rows_and_reports_the_gap_against_size(tmp_path: Path) -> None:
    minilm = {"mode": "full", "date": "2026-11-22", "jobs": 2, "scale": protocol.FULL.__dict__}
    old = [_row("conll2003-ner", "finetune", 80.0, 80.0), _row("conll2003-ner", "deep", 73.0, 73.0)]
    old[0]["trainable_parameters"] = 22_700_000
    (tmp_path / "parity.json").write_text(json.dumps({"setup": minilm, "rows": old}))  # written before backbones
    mpnet = {**minilm, "date": "2026-12-01", "scale": protocol.MPNET.__dict__}
    new = [_scaled("mpnet-base", "finetune", 85.0, 109_000_000), _scaled("mpnet-base", "deep", 83.0, 109_000_000)]
    study.write_parity(tmp_path, mpnet, new)
    study.write_parity(tmp_path, mpnet, new)  # a rerun replaces its own rows, never the other backbone's
    written = json.loads((tmp_path / "parity.json").read_text())
    assert written["setup"]["date"] == "2026-11-22" and set(written["setups"]) == {"minilm-l6", "mpnet-base"}
    assert len(written["rows"]) == 4
    assert [row["mean"] for row in study.rows_of(tmp_path, "parity", "longer")] == [80.0, 73.0]  # MiniLM's only
    pairs = report.scale_pairs(written)
    assert [(pair["backbone"], round(pair["gap"], 2)) for pair in pairs] == [("minilm-l6", -7.0), ("mpnet-base", -2.0)]
    text = report.write(tmp_path).read_text()
    assert "| conll2003-ner (f1) | mpnet-base | 109.0M | 85.00 ± 0.50 | 83.00 ± 0.50 | -2.00 ± 0.71 | -2.00 | " in text
    assert "| 84.5, 85.0, 85.5 / 82.5, 83.0, 83.5 |" in text  # every seed shown: a collapsed one is seen
    assert "--backbone mpnet-base --resume" in text
    assert (tmp_path / "scale.png").stat().st_size > 0
    assert "| conll2003-ner | deep | f1 83.00" not in text.split("## Gap against")[0]  # MiniLM's tables stay MiniLM's


def test_faithfulness_summary_compares_like_for_like(tmp_path: Path) -> None:
    faithfulness = pytest.importorskip("faithfulness")

    def run(implementation: str, score: float, digest: str) -> dict:
        return {
            "implementation": implementation,
            "primary_metric": "f1",
            "validation": {"f1": score - 1},
            "test": {"f1": score},
            "loss_curve": [(10, 1.0), (20, 0.5)],
            "batches": digest,
            "trainable_parameters": 100,
            "same_function_difference": 0.0 if implementation == "peft" else None,
            "train_seconds": 5.0,
        }

    ours, theirs, paired = faithfulness.PREFIX.arms
    results = {}
    for task in faithfulness.PREFIX.tasks:
        scores = [(70.0, 71.0, 70.5), (72.0, 70.0, 72.0), (74.0, 72.0, 73.0)]
        for seed, (mine, independent, shared) in enumerate(scores):
            digest = f"{task}{seed}"
            results[(task, ours, seed)] = run("ptuning", mine, digest)
            results[(task, theirs, seed)] = run("peft", independent, digest)
            results[(task, paired, seed)] = run("peft", shared, digest if task == "rotten-tomatoes" else "other")
    summary = faithfulness.summarize(results, [0, 1, 2])
    rows = {(row["task"], row["implementation"], row["start"]): row for row in summary["rows"]}
    assert rows[("conll2003-ner", "ptuning", "own")]["mean"] == 72.0
    assert rows[("conll2003-ner", "peft", "own")]["mean"] == 71.0
    assert rows[("conll2003-ner", "peft", "own")]["std"] == pytest.approx(1.0)
    assert set(rows[("conll2003-ner", "peft", "own")]) >= {"task", "implementation", "metric", "mean", "std", "seeds"}
    checks = summary["checks"]["conll2003-ner"]
    assert checks["test_gap"] == pytest.approx(1.0) and checks["validation_gap"] == pytest.approx(1.0)
    assert (
        checks["paired_test_gap"] == pytest.approx(72.0 - 71.5 - 1 / 3)
        and checks["paired_largest_seed_difference"] == 1
    )
    assert summary["checks"]["rotten-tomatoes"]["same_batches"] and not checks["same_batches"]
    faithfulness.plot(summary, tmp_path / "faithfulness.png")
    assert (tmp_path / "faithfulness.png").stat().st_size > 0
    setup = {"date": "d", "command": "c", "backbone": "b"}
    section = "\n".join(report.faithfulness_section({"setup": setup, **summary}))
    assert "same batches in the same order: NO" in section and "ptuning - PEFT **+1.00** test" in section
    assert "| conll2003-ner | peft | ptuning's | f1 71.83 ± 1.26 |" in section
    finetune = {**setup, "method": "finetune", "reference": "transformers"}
    section = "\n".join(report.faithfulness_section({"setup": finetune, **summary}, "faithfulness-finetune.png"))
    assert "fine-tuning baseline against the transformers library's own model class" in section
    assert "ptuning - transformers **+1.00** test" in section and "(faithfulness-finetune.png)" in section


@pytest.mark.numerics
@pytest.mark.parametrize("reference", ["peft", "transformers"])
def test_a_reference_from_ptunings_start_trains_exactly_like_ptuning(reference: str) -> None:
    """The faithfulness benchmark's paired arm on the packaged MiniLM, shrunk: same batches, same function, the same
    parameters reached by the loss (ptuning's fine-tuned backbone keeps a pooler a token head never uses), and the
    same scores and loss curve after training."""
    faithfulness = pytest.importorskip("faithfulness")
    if reference == "peft":
        pytest.importorskip("peft")
    comparison = faithfulness.PREFIX
    if reference == "transformers":
        comparison = faithfulness.Comparison("finetune", "minilm-l6", reference, ("conll2003-ner",), "t")
    shrink = {"max_train_samples": 16, "max_eval_samples": 8, "max_steps": 4, "batch_size": 4}
    chosen = {"lr": 0.06 if reference == "peft" else 1e-4, "prompt_length": 4}
    arms = (("ptuning", "own"), (reference, "shared"))
    settings = [faithfulness.settings_for(comparison, "conll2003-ner", arm, 0, chosen, 0) for arm in arms]
    runs = [faithfulness.train_alike({**one, **shrink}) for one in settings]
    ours, theirs = runs
    assert theirs["same_function_difference"] <= 1e-4 and ours["batches"] == theirs["batches"]
    assert ours["trainable_parameters"] == theirs["trainable_parameters"] and ours["steps"] == 4
    # the scores count predicted tags, which are decisions: exactly alike
    assert ours["validation"] == theirs["validation"] and ours["test"] == theirs["test"]
    assert [step for step, _ in ours["loss_curve"]] == [step for step, _ in theirs["loss_curve"]]
    assert [loss for _, loss in ours["loss_curve"]] == pytest.approx(
        [loss for _, loss in theirs["loss_curve"]], abs=1e-5
    )


def test_a_journal_of_flat_single_task_runs_still_resumes_and_reads_like_new_runs(tmp_path: Path) -> None:
    """Journals written while single-task metrics were flat: their settings keys are the ones the study asks for
    today, --resume answers from them without training, and their rows equal those of the same run in today's
    shape (every task under ``tasks``)."""
    journaled = (Path(__file__).resolve().parents[1] / "benchmarks/results/logs/runs.jsonl").read_text().splitlines()
    old = json.loads(journaled[0])
    point = protocol.Point(0.03, 16)
    settings = protocol.settings_for(protocol.FULL, "conll2003-ner", "deep", point, 0)
    assert json.dumps(settings, sort_keys=True) == old["settings"]  # the key a new run of it is journaled under
    flat = old["metrics"]
    shared = {key: value for key, value in flat.items() if key not in ("task", "dataset", "primary_metric", "test")}
    result = {key: flat[key] for key in ("task", "dataset", "primary_metric", "validation", "test", "train_examples")}
    nested = {**shared, "tasks": {"conll2003-ner": result}}
    (tmp_path / "logs").mkdir()
    new_line = {"settings": json.dumps({**settings, "seed": 1}, sort_keys=True), "metrics": nested}
    (tmp_path / "logs" / "runs.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(new_line) + "\n")

    def refuse(settings: dict) -> dict:
        raise AssertionError("a journaled run was trained again")

    runner = protocol.Runner(1, resume=True, results=tmp_path, run=refuse)
    answers = [runner.one({**settings, "seed": seed}, f"s{seed}") for seed in (0, 1)]
    assert answers == [flat, nested]
    rows = [study.parity_row("conll2003-ner", "deep", point, [(point, m)], (0,), [m]) for m in answers]
    assert rows[0] == rows[1] and rows[0]["mean"] == flat["test"]["f1"] and rows[0]["grid"][0]["validation"]
    # the multitask part reads a task of a joint run, or a single-task run's one task, in either shape
    assert task_result_of(flat, "conll2003-ner").items() >= task_result_of(nested, "conll2003-ner").items()
    assert task_result_of({"tasks": {"a": result, "b": {}}}, "a") is result


def test_a_quick_study_writes_apart_from_the_full_results(tmp_path, monkeypatch) -> None:
    """A smoke run (--quick) never overwrites the full results, even where results/quick/ does not exist yet; the
    budget flags change only what was given."""
    monkeypatch.setattr(protocol, "RESULTS", tmp_path)
    flags = argparse.Namespace(output=None, quick=True, train_examples=5, eval_examples=None, epochs=None, seeds="0,2")
    assert protocol.budget_changes(flags) == {"train_examples": 5, "seeds": (0, 2)}
    written = protocol.write_study("decoder", flags, ["--quick"], {"rows": []})
    assert written == tmp_path / "quick" / "decoder.json"
    assert json.loads(written.read_text()) == {"rows": [], "command": "python benchmarks/decoder.py --quick"}
    flags.quick = False
    assert protocol.write_study("decoder", flags, [], {}) == tmp_path / "decoder.json"


def test_a_journaled_run_is_retrained_only_when_a_new_run_starts_from_its_missing_checkpoint(tmp_path) -> None:
    """On a machine without the checkpoints, --resume answers journaled runs from the journal (a joint run is not
    trained again for itself); a run not journaled that starts from a missing checkpoint has it made again first,
    once however many such runs start from it."""
    joint = {"task": "a,b", "seed": 0, "output": str(tmp_path / "joint")}
    stage = {"task": "a", "seed": 0, "init_from": joint["output"]}
    logs, trained = tmp_path / "logs", tmp_path / "trained"
    logs.mkdir()
    trained.mkdir()
    lines = [{"settings": json.dumps(s, sort_keys=True), "metrics": {"journaled": s["task"]}} for s in (joint, stage)]
    (logs / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    def train(settings: dict) -> dict:  # runs in the forked child: what it trained is left on disk
        if "init_from" in settings:
            assert Path(settings["init_from"]).is_dir(), "started before its checkpoint was made"
        else:
            Path(settings["output"]).mkdir()
        (trained / settings["task"]).write_text(json.dumps(settings))
        return {"task": settings["task"], "primary_metric": "accuracy", "validation": {}, "test": {}}

    runner = protocol.Runner(2, resume=True, results=tmp_path, run=train)
    assert runner.one(joint, "joint") == {"journaled": "a,b"}
    assert runner.one(stage, "stage") == {"journaled": "a"}
    assert list(trained.iterdir()) == []
    fresh = [{**stage, "task": task} for task in ("b", "c")]
    assert [m["task"] for m in runner.many([(s["task"], s) for s in fresh])] == ["b", "c"]
    assert sorted(path.name for path in trained.iterdir()) == ["a,b", "b", "c"]
    assert json.loads((trained / "a,b").read_text()) == joint  # the same settings, trained once
    again = protocol.Runner(1, resume=True, results=tmp_path, run=train)
    again.one(joint, "joint")
    assert again.one(fresh[0], "b")["task"] == "b"  # journaled now
    assert sorted(path.name for path in trained.iterdir()) == ["a,b", "b", "c"]
