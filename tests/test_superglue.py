"""SuperGLUE readers on files in the distributed JSONL format, and the multiple-choice task end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_backbone
from transformers import Trainer, TrainingArguments

from ptuning import PromptConfig, PromptedModel
from ptuning.data.readers import LabeledText
from ptuning.data.superglue import ChoiceExample, copa_example, read_superglue
from ptuning.errors import DataError, PtuningError
from ptuning.tasks.multiple_choice import MultipleChoiceTask
from ptuning.vocabulary import SUPERGLUE_TASKS, Family

# Lines as distributed in the SuperGLUE archives (shortened texts), and the pairs and labels expected of them.
RECORDS = {
    "boolq": (
        [
            {
                "question": "is ethanol made from corn",
                "passage": "Ethanol fuel is made from corn.",
                "idx": 0,
                "label": True,
            },
            {"question": "is the sun a planet", "passage": "The Sun is a star.", "idx": 1, "label": False},
        ],
        [
            ("is ethanol made from corn", "Ethanol fuel is made from corn.", "True"),
            ("is the sun a planet", "The Sun is a star.", "False"),
        ],
    ),
    "cb": (
        [
            {"premise": "It was peeled down.", "hypothesis": "it was peeled", "label": "entailment", "idx": 0},
            {"premise": "He may come.", "hypothesis": "he came", "label": "neutral", "idx": 1},
            {"premise": "She left.", "hypothesis": "she stayed", "label": "contradiction", "idx": 2},
        ],
        [
            ("It was peeled down.", "it was peeled", "entailment"),
            ("He may come.", "he came", "neutral"),
            ("She left.", "she stayed", "contradiction"),
        ],
    ),
    "rte": (
        [
            {
                "premise": "No weapons found in Iraq yet.",
                "hypothesis": "Weapons found in Iraq.",
                "label": "not_entailment",
                "idx": 0,
            },
            {"premise": "A place of sorrow.", "hypothesis": "A sad place.", "label": "entailment", "idx": 1},
        ],
        [
            ("No weapons found in Iraq yet.", "Weapons found in Iraq.", "not_entailment"),
            ("A place of sorrow.", "A sad place.", "entailment"),
        ],
    ),
    "wic": (
        [
            {
                "word": "place",
                "sentence1": "Come over to my place later.",
                "sentence2": "No place for small groups.",
                "idx": 0,
                "label": False,
                "start1": 16,
                "start2": 3,
                "end1": 21,
                "end2": 8,
                "version": 1.1,
            },
            {
                "word": "run",
                "sentence1": "I run daily.",
                "sentence2": "They run fast.",
                "idx": 1,
                "label": True,
                "start1": 2,
                "start2": 5,
                "end1": 5,
                "end2": 8,
                "version": 1.1,
            },
        ],
        [
            ("place: Come over to my place later.", "No place for small groups.", "False"),
            ("run: I run daily.", "They run fast.", "True"),
        ],
    ),
    "wsc": (
        [
            {
                "text": "Mark told Pete lies about himself. He should have been truthful.",
                "target": {"span2_index": 6, "span1_index": 0, "span1_text": "Mark", "span2_text": "He"},
                "idx": 0,
                "label": True,
            },
            {
                "text": "The trophy does not fit the case because it is small.",
                "target": {"span2_index": 8, "span1_index": 0, "span1_text": "The trophy", "span2_text": "it"},
                "idx": 1,
                "label": False,
            },
        ],
        [
            ("Mark told Pete lies about himself. He should have been truthful.", 'Does "He" refer to "Mark"?', "True"),
            ("The trophy does not fit the case because it is small.", 'Does "it" refer to "The trophy"?', "False"),
        ],
    ),
}
COPA = [
    {
        "premise": "My body cast a shadow over the grass.",
        "choice1": "The sun was rising.",
        "choice2": "The grass was cut.",
        "question": "cause",
        "idx": 0,
        "label": 0,
    },
    {
        "premise": "The elderly woman suffered a stroke.",
        "choice1": "Her daughter came to care for her.",
        "choice2": "She went dancing.",
        "question": "effect",
        "idx": 1,
        "label": 0,
    },
    {
        "premise": "The pond froze over.",
        "choice1": "The weather was warm.",
        "choice2": "The temperature dropped.",
        "question": "cause",
        "idx": 2,
        "label": 1,
    },
    {
        "premise": "I poured water on the fire.",
        "choice1": "The fire grew.",
        "choice2": "The fire went out.",
        "question": "effect",
        "idx": 3,
        "label": 1,
    },
]


def write_jsonl(tmp_path, name: str, records: list[dict]):
    path = tmp_path / name
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def unlabeled(records: list[dict]) -> list[dict]:
    """Records as in the test files, which have no label."""
    return [{key: value for key, value in record.items() if key != "label"} for record in records]


@pytest.mark.parametrize("task", list(RECORDS))
def test_pair_tasks_read_as_templated_two_segment_texts(tmp_path, task):
    records, expected = RECORDS[task]
    examples = read_superglue(task, write_jsonl(tmp_path, "val.jsonl", records))
    assert all(isinstance(example, LabeledText) for example in examples)
    assert [(e.text, e.text_pair, e.label) for e in examples] == expected
    assert examples[1].source == f"{tmp_path / 'val.jsonl'}:2"
    test = read_superglue(task, write_jsonl(tmp_path, "test.jsonl", unlabeled(records)))
    assert [(e.text, e.text_pair) for e in test] == [pair[:2] for pair in expected]
    assert all(example.label is None for example in test)
    assert SUPERGLUE_TASKS[task] is Family.SEQUENCE_CLASSIFICATION


def test_copa_reads_as_two_choices_after_premise_and_connector(tmp_path):
    examples = read_superglue("copa", write_jsonl(tmp_path, "train.jsonl", COPA[:2]))
    assert examples[0] == ChoiceExample(
        "My body cast a shadow over the grass. because",
        ["The sun was rising.", "The grass was cut."],
        "0",
        f"{tmp_path / 'train.jsonl'}:1",
    )
    assert examples[1].context == "The elderly woman suffered a stroke. so"
    test = read_superglue("copa", write_jsonl(tmp_path, "test.jsonl", unlabeled(COPA)))
    assert [example.label for example in test] == [None] * 4
    assert SUPERGLUE_TASKS["copa"] is Family.MULTIPLE_CHOICE


@pytest.mark.parametrize(
    ("task", "record", "message"),
    [
        ("boolq", {"question": "q", "idx": 0, "label": True}, "missing field 'passage'"),
        ("boolq", {"question": "q", "passage": "p", "label": "yes"}, "field 'label' must be bool, found str"),
        ("rte", {"premise": "p", "hypothesis": "h", "label": "neutral"}, "field 'label' must be one of"),
        ("wic", {"word": 3, "sentence1": "a", "sentence2": "b"}, "field 'word' must be str, found int"),
        (
            "wsc",
            {"text": "t", "target": {"span1_text": "a"}, "label": True},
            "field 'target': missing field 'span2_text'",
        ),
        ("copa", {**COPA[0], "question": "reason"}, "field 'question' must be one of ['cause', 'effect']"),
        ("copa", {**COPA[0], "label": 2}, "field 'label' must be one of [0, 1]"),
        ("copa", {**COPA[0], "label": True}, "field 'label' must be int, found bool"),
    ],
)
def test_malformed_records_name_file_line_and_field(tmp_path, task, record, message):
    good = COPA[1] if task == "copa" else RECORDS[task][0][0]
    path = write_jsonl(tmp_path, "train.jsonl", [good, record])
    with pytest.raises(DataError, match=f"{path}:2: .*{message}".replace("[", r"\[").replace("]", r"\]")):
        read_superglue(task, path)


def test_unknown_task_lists_the_supported_ones(tmp_path):
    with pytest.raises(
        PtuningError, match="unknown SuperGLUE task 'record'; supported: boolq, cb, rte, wic, wsc, copa"
    ):
        read_superglue("record", tmp_path / "train.jsonl")


# multiple choice ---------------------------------------------------------------------------------


def copa_examples() -> list[ChoiceExample]:
    return [copa_example(record, str(index)) for index, record in enumerate(COPA)]


def test_each_choice_is_a_two_segment_pair_cut_to_max_length(minilm_tokenizer):
    task = MultipleChoiceTask(minilm_tokenizer, ["1", "0"], 64)
    assert task.labels == ["0", "1"] and task.name == "multiple-choice" and task.primary_metric == "accuracy"
    example = ChoiceExample("The pond froze over. because", ["It was warm.", "It got cold."], "1")
    feature = task.encode([example]).inputs[0]
    assert feature["labels"] == 1 and set(feature) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert [minilm_tokenizer.decode(ids) for ids in feature["input_ids"]] == [
        "[CLS] the pond froze over. because [SEP] it was warm. [SEP]",
        "[CLS] the pond froze over. because [SEP] it got cold. [SEP]",
    ]
    assert feature["token_type_ids"][1] == [0] * 8 + [1] * 5
    short = MultipleChoiceTask(minilm_tokenizer, ["0", "1"], 8).encode([example], with_labels=False)
    assert [len(ids) for ids in short.inputs[0]["input_ids"]] == [8, 8] and short.truncated == [0]
    assert "labels" not in short.inputs[0]


def test_collator_pads_all_choices_to_one_length(minilm_tokenizer):
    task = MultipleChoiceTask(minilm_tokenizer, ["0", "1"], 64)
    examples = [ChoiceExample("a", ["b", "c d e f"], "1"), ChoiceExample("a b", ["c", "d"], "0")]
    batch = task.collator()(task.encode(examples).inputs)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (2, 2, 8)
    assert batch["labels"].tolist() == [1, 0]
    assert batch["attention_mask"].sum(-1).tolist() == [[5, 8], [6, 6]]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == minilm_tokenizer.pad_token_id).all()


def test_choice_counts_and_labels_are_checked(minilm_tokenizer):
    task = MultipleChoiceTask(minilm_tokenizer, ["0", "1", "2"], 64)
    with pytest.raises(DataError, match="b.jsonl:4: 3 choices, but a.jsonl:1 has 2"):
        task.encode(
            [ChoiceExample("x", ["y", "z"], "0", "a.jsonl:1"), ChoiceExample("x", ["1", "2", "3"], "0", "b.jsonl:4")]
        )
    with pytest.raises(DataError, match="a:1: label '2' but only 2 choices"):
        task.encode([ChoiceExample("x", ["y", "z"], "2", "a:1")])
    with pytest.raises(PtuningError, match="choice indices"):
        MultipleChoiceTask(minilm_tokenizer, ["yes", "no"], 64)


def test_probabilities_scores_and_predictions(minilm_tokenizer):
    task = MultipleChoiceTask(minilm_tokenizer, ["0", "1"], 64)
    examples = copa_examples()  # gold choices 0, 0, 1, 1
    probabilities = task.decode(
        [np.array(row) for row in ([2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.5])], None, examples
    )
    assert probabilities[0] == pytest.approx([1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))])
    metrics = task.score(examples, probabilities)
    assert metrics["accuracy"] == pytest.approx(50.0)  # right on 0 and 2
    assert metrics["f1"] == pytest.approx(50.0)  # each index: precision 1/2, recall 1/2
    formatted = task.format_prediction(examples[2], probabilities[2])
    assert formatted["id"] == "2" and formatted["label"] == "1" and formatted["choice"] == "The temperature dropped."
    assert formatted["probability"] == pytest.approx(1 / (1 + np.exp(-3)))
    assert sum(formatted["probabilities"]) == pytest.approx(1.0)


def test_input_lines(minilm_tokenizer):
    task = MultipleChoiceTask(minilm_tokenizer, ["0", "1"], 64)
    assert task.parse_input("", {"context": "c", "choices": ["a", "b", "d"]}, "in:1") == ChoiceExample(
        "c", ["a", "b", "d"], None, "in:1"
    )
    assert task.parse_input("", {"premise": "p", "choices": ["a", "b"]}, "in:2").context == "p"
    copa = task.parse_input("", unlabeled(COPA)[2], "in:3")
    assert copa.context == "The pond froze over. because" and copa.label is None
    for record in (None, {"context": "c", "choices": "a"}, {"choices": ["a", "b"]}, {"context": "c", "choices": ["a"]}):
        with pytest.raises(DataError, match="in:4: expected"):
            task.parse_input("c", record, "in:4")
    with pytest.raises(DataError, match="in:5: field 'question'"):
        task.parse_input("", {**COPA[0], "question": "why"}, "in:5")


def test_training_with_the_trainer_lowers_the_loss_and_evaluates(tmp_path, minilm_tokenizer):
    examples = read_superglue("copa", write_jsonl(tmp_path, "train.jsonl", COPA))
    task = MultipleChoiceTask(minilm_tokenizer, ["0", "1"], 64)
    backbone = tiny_backbone("bert", vocab_size=30522, num_hidden_layers=2, pad_token_id=0)
    # mean pooling: the [CLS] state of a tiny random backbone hardly depends on the text, the mean does
    model = PromptedModel.from_backbone(backbone, "multiple-choice", prompt=PromptConfig(length=4), pooling="mean")
    features = task.encode(examples).inputs

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(**task.collator()(features)).loss.item()

    before = loss()
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=4,
        learning_rate=1e-1,
        max_steps=12,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    Trainer(model=model, args=arguments, train_dataset=features, data_collator=task.collator()).train()
    assert loss() < 0.8 * before
    metrics = task.evaluate(model, examples, batch_size=3)
    assert set(metrics) == {"accuracy", "f1"} and metrics["accuracy"] >= 75.0
