"""Every task type trains a few steps on the packaged MiniLM from files in the official formats,
then evaluates (with per-example predictions) and predicts from its checkpoint through the CLI."""

from __future__ import annotations

import json

import pytest

from ptuning import PromptConfig
from ptuning.checkpoint import read_task
from ptuning.cli import main
from ptuning.recipe import Recipe
from ptuning.training.run import train
from ptuning.training.run_metrics import single_task_metrics

pytestmark = pytest.mark.integration

SQUAD = {
    "version": "v2.0",
    "data": [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": "Peter Blackburn visited Brussels in August. The European Commission said it disagreed.",
                    "qas": [
                        {
                            "id": "q1",
                            "question": "Who visited Brussels?",
                            "answers": [{"text": "Peter Blackburn", "answer_start": 0}],
                            "is_impossible": False,
                        },
                        {
                            "id": "q2",
                            "question": "Where did he go?",
                            "answers": [{"text": "Brussels", "answer_start": 24}],
                            "is_impossible": False,
                        },
                        {"id": "q3", "question": "Which river is named?", "answers": [], "is_impossible": True},
                    ],
                }
            ],
        }
    ],
}
RTE = [
    {"premise": "A man is playing a guitar.", "hypothesis": "A man plays music.", "label": "entailment", "idx": 0},
    {"premise": "The cat sleeps.", "hypothesis": "The cat is running.", "label": "not_entailment", "idx": 1},
    {"premise": "It rains in Paris.", "hypothesis": "Paris is wet.", "label": "entailment", "idx": 2},
]
COPA = [
    {
        "premise": "The man broke his toe.",
        "choice1": "He dropped a hammer on his foot.",
        "choice2": "He got a hole in his sock.",
        "question": "cause",
        "label": 0,
        "idx": 0,
    },
    {
        "premise": "I tipped the bottle.",
        "choice1": "The liquid in the bottle froze.",
        "choice2": "The liquid in the bottle poured out.",
        "question": "effect",
        "label": 1,
        "idx": 1,
    },
]
SRL = """The 0 B-ARG0
cat 0 I-ARG0
chased 1 B-V
a 0 B-ARG1
mouse 0 I-ARG1

The 0 B-ARG0
dog 0 I-ARG0
slept 1 B-V
"""

CASES = {
    "squad_v2": (
        "data.json",
        json.dumps(SQUAD),
        '{"question": "Who visited?", "context": "Angela Merkel visited Rome."}',
        {"exact", "f1"},
    ),
    "rte": (
        "data.jsonl",
        "\n".join(json.dumps(r) for r in RTE),
        '{"text": "A dog barks.", "text_pair": "A dog is loud."}',
        {"accuracy", "f1"},
    ),
    "copa": (
        "data.jsonl",
        "\n".join(json.dumps(r) for r in COPA),
        json.dumps({"premise": "It got dark.", "choices": ["The sun set.", "I ate."]}),
        {"accuracy"},
    ),
    "srl": ("data.srl", SRL, '{"words": ["A", "bird", "sang"], "predicate": 2}', {"f1", "precision", "recall"}),
}


@pytest.mark.parametrize("task", list(CASES))
def test_task_trains_evaluates_and_predicts(task, tmp_path, capsys):
    name, content, query, metric_keys = CASES[task]
    data = tmp_path / name
    data.write_text(content + "\n")
    metrics = train(
        Recipe(
            task=task,
            train=str(data),
            validation=str(data),
            test=str(data),
            max_steps=3,
            batch_size=4,
            prompt=PromptConfig(length=4),
            output=str(tmp_path / "run"),
        )
    )
    result = single_task_metrics(metrics)
    assert metric_keys <= set(result["test"]) and metric_keys <= set(result["validation"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 3

    predictions = tmp_path / "predictions.jsonl"
    assert main(["eval", str(tmp_path / "run"), "--test", str(data), "--predictions", str(predictions)]) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert rows and all("id" in row for row in rows)
    if task == "squad_v2":
        assert {row["id"] for row in rows} == {"q1", "q2", "q3"} and all("prediction_text" in row for row in rows)

    query_file = tmp_path / "query.jsonl"
    query_file.write_text(query + "\n")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--input", str(query_file)]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[-1])
    if task == "squad_v2":
        assert answer["prediction_text"] in "Angela Merkel visited Rome." and "score" in answer
    elif task == "srl":
        assert len(answer["tags"]) == 3
    else:
        assert "label" in answer


def test_labels_come_from_the_whole_training_set_when_it_is_subsampled(tmp_path):
    data = tmp_path / "train.conll"
    data.write_text("Paris B-LOC\n\nPeter B-PER\n\nruns O\n\nBerlin B-LOC\n")
    metrics = train(
        Recipe(
            train=str(data),
            validation=str(data),
            max_train_samples=1,
            max_steps=1,
            batch_size=1,
            prompt=PromptConfig(length=2),
            output=str(tmp_path / "run"),
        )
    )
    assert metrics["train_examples"] == 1 and "f1" in single_task_metrics(metrics)["validation"]
    assert read_task(tmp_path / "run").labels == ["B-LOC", "B-PER", "O"]
