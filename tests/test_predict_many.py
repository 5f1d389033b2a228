"""``ptuning predict NAME=DIR ...``: one backbone answers a stream that interleaves tasks, as each checkpoint alone."""

from __future__ import annotations

import json

import pytest
from conftest import assert_same_answer

from ptuning.cli import main


@pytest.fixture
def runs(tiny_runs):
    return tiny_runs


def predict(capsys, tmp_path, lines: list[str], *checkpoints: str) -> tuple[int, list[dict], str]:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(line + "\n" for line in lines))
    capsys.readouterr()
    code = main(["predict", *checkpoints, "--input", str(inputs)])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


# inputs of the two tiny runs, interleaved: plain text, given words, a text pair, a long text
MIXED_INPUTS = [
    {"task": "ner", "text": "Peter visited Oslo"},
    {"task": "sent", "text": "a good film"},
    {"task": "ner", "words": ["Mary", "sings", "in", "Oslo", "today"]},
    {"task": "sent", "text": "dull", "text_pair": "and long"},
    {"task": "sent", "text": "fine acting all along the way, and a plot that never drags"},
    {"task": "ner", "text": "Blackburn"},
]


@pytest.mark.numerics
def test_interleaved_tasks_answer_as_each_checkpoint_alone(runs, tmp_path, capsys):
    records = MIXED_INPUTS
    lines = [json.dumps(record) for record in records]
    code, answers, err = predict(capsys, tmp_path, lines, f"ner={runs / 'ner'}", f"sent={runs / 'sent'}")
    assert code == 0, err
    assert len(answers) == len(records)
    for record, answer in zip(records, answers, strict=True):
        alone_record = {key: value for key, value in record.items() if key != "task"}
        code, (alone,), _ = predict(capsys, tmp_path, [json.dumps(alone_record)], str(runs / record["task"]))
        assert code == 0
        assert_same_answer(answer, alone)
    assert "tags" in answers[0] and "label" in answers[1]


def test_unknown_task_and_plain_text_are_refused_naming_the_line(runs, tmp_path, capsys):
    sources = (f"ner={runs / 'ner'}", f"sent={runs / 'sent'}")
    code, _, err = predict(
        capsys, tmp_path, ['{"task": "ner", "text": "Oslo"}', '{"task": "pos", "text": "x"}'], *sources
    )
    assert code == 2 and "in.jsonl:2: unknown task 'pos'; loaded tasks: ner, sent" in err
    code, _, err = predict(capsys, tmp_path, ["Peter runs"], *sources)
    assert code == 2 and "in.jsonl:1: expected a JSON object naming its task" in err
    code, _, err = predict(capsys, tmp_path, ["x"], str(runs / "ner"), f"sent={runs / 'sent'}")
    assert code == 2 and "name each one: NAME=DIR" in err


def test_one_checkpoint_keeps_plain_text_lines(runs, tmp_path, capsys):
    code, answers, _ = predict(capsys, tmp_path, ["Peter visited Oslo", '{"words": ["Mary"]}'], str(runs / "ner"))
    assert code == 0 and [answer["words"] for answer in answers] == [["Peter", "visited", "Oslo"], ["Mary"]]


def test_over_long_inputs_are_truncated_with_a_warning(runs, tmp_path, capsys):
    long_text = " ".join(["Oslo"] * 100)  # past the tiny backbone's 64 positions
    lines = [json.dumps({"task": "ner", "text": long_text}), json.dumps({"task": "ner", "text": "Oslo"})]
    code, answers, _ = predict(capsys, tmp_path, lines, f"ner={runs / 'ner'}", f"sent={runs / 'sent'}")
    assert code == 0 and len(answers[0]["tags"]) == 100 and "warning" not in answers[1]
    assert "longer than 64 tokens and was truncated" in answers[0]["warning"]
    assert answers[0]["tags"][-1] == "O"  # cut-off words are outside any span
    code, (alone,), _ = predict(capsys, tmp_path, [long_text], str(runs / "ner"))
    assert code == 0 and alone["warning"] == answers[0]["warning"]


@pytest.mark.numerics
def test_multiple_choice_beside_a_tagger_answers_as_alone_and_warns_when_cut(tiny_backbone_folder):
    """A multiple-choice task runs in batches of its own (one per number of choices); its answers equal the task's
    own predict, in input order, and an input cut to fit says so like any other."""
    import torch

    from ptuning import PromptConfig, PromptedModel
    from ptuning.predictor import Predictor

    torch.manual_seed(0)
    model = PromptedModel.from_backbone(str(tiny_backbone_folder), "multiple-choice", prompt=PromptConfig(length=4))
    model.add_task("ner", "token-classification", ["B-LOC", "I-LOC", "O"], prompt=PromptConfig(length=2))
    predictor = Predictor(model)
    choice = predictor.tasks[model.task_names[0]]
    records = [
        {"task": model.task_names[0], "context": "The man broke his toe.", "choices": ["He fell.", "He sang."]},
        {"task": "ner", "words": ["Oslo", "is", "cold"]},
        {"task": model.task_names[0], "context": " ".join(["long"] * 100), "choices": ["a", "b", "c"]},
    ]
    requests = [predictor.parse(record, f"in:{line}") for line, record in enumerate(records, 1)]
    answers = predictor.predict(requests)
    examples = [requests[0].example, requests[2].example]
    alone = [choice.format_prediction(e, choice.predict(model.use(model.task_names[0]), [e])[0]) for e in examples]
    assert_same_answer(answers[0], alone[0])
    assert_same_answer({k: v for k, v in answers[2].items() if k != "warning"}, alone[1])
    assert "tags" in answers[1] and "warning" not in answers[0]
    assert "truncated" in answers[2]["warning"]


def test_a_task_loaded_into_a_serving_model_answers_without_dropout(tiny_backbone_folder, tmp_path):
    """A task added at run time to a model in eval mode is in eval mode too: its answers are deterministic and
    equal those of the same checkpoint loaded at start (prompt dropout 0.5 would change them)."""
    import torch

    from ptuning import PromptConfig, PromptedModel
    from ptuning.predictor import Predictor

    torch.manual_seed(0)
    prompt = PromptConfig(length=4, dropout=0.5)
    PromptedModel.from_backbone(
        str(tiny_backbone_folder), "token-classification", num_labels=3, prompt=prompt
    ).save_pretrained(tmp_path / "ner")
    predictor = Predictor.from_checkpoints({"ner": tmp_path / "ner"})
    predictor.load("again", tmp_path / "ner")
    model = predictor.model
    assert not model.prompts["again"].training and not model.heads["again"].training
    words = {"words": ["Peter", "visited", "Oslo"]}
    requests = [predictor.parse({"task": task, **words}, "in") for task in ("ner", "again", "again")]
    first, second, third = predictor.predict(requests)
    assert_same_answer(second, first)
    assert_same_answer(third, first)


def test_truncated_inputs_are_logged_once_per_call_not_once_per_input(runs, caplog):
    from ptuning.predictor import Predictor

    predictor = Predictor.from_checkpoints({"ner": runs / "ner"})
    long_text = " ".join(["Oslo"] * 100)
    requests = [predictor.parse({"task": "ner", "text": text}, "in") for text in (long_text, "Oslo", long_text)]
    with caplog.at_level("WARNING", logger="ptuning"):
        answers = predictor.predict(requests)
    assert ["warning" in answer for answer in answers] == [True, False, True]
    truncation = [record.getMessage() for record in caplog.records if "truncated" in record.getMessage()]
    assert truncation == ["2 input(s) were longer than their task allows and were truncated"]


@pytest.mark.numerics
def test_the_forward_budget_changes_how_inputs_are_batched_not_the_answers(runs, tmp_path, capsys):
    texts = ["Peter visited Oslo", " ".join(["Oslo"] * 40), "Mary", "Anna met Peter in Bergen and Oslo"]
    lines = [json.dumps({"task": "ner" if index % 2 else "sent", "text": text}) for index, text in enumerate(texts)]
    sources = (f"ner={runs / 'ner'}", f"sent={runs / 'sent'}")
    code, one_batch, _ = predict(capsys, tmp_path, lines, *sources, "--forward-tokens", "100000")
    assert code == 0
    code, small_forwards, _ = predict(capsys, tmp_path, lines, *sources, "--forward-tokens", "8")  # one input each
    assert code == 0
    for small, whole in zip(small_forwards, one_batch, strict=True):
        assert_same_answer(small, whole)
