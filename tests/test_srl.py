"""SRL: the WORD PREDICATE_FLAG TAG reader, features with a marked predicate, decoding, scoring and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_backbone

from ptuning import PromptConfig, PromptedModel
from ptuning.data.readers import label_set
from ptuning.data.srl import SRLInstance, read_srl
from ptuning.errors import DataError
from ptuning.tasks.srl import SRLTask

# One sentence with two predicates, written once per predicate, and a sentence with the WSJ word "#".
SRL = """# The cat chased the mouse and caught it .
The 0 B-ARG0
cat 0 I-ARG0
chased 1 B-V
the 0 B-ARG1
mouse 0 I-ARG1
and 0 O
caught 0 O
it 0 O
. 0 O

# same sentence, predicate "caught"
The - B-ARG0
cat - I-ARG0
chased - O
the - O
mouse - O
and - O
caught 1 B-V
it - B-ARG1
. - O


It 0 B-ARG0
cost 1 B-V
# 0 B-ARG1
5 0 I-ARG1
. 0 O
"""
LABELS = ["B-ARG0", "B-ARG1", "B-V", "I-ARG0", "I-ARG1", "O"]


def write(tmp_path, text: str, name: str = "train.srl"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reader_gives_one_instance_per_predicate(tmp_path):
    path = write(tmp_path, SRL)
    chased, caught, cost = read_srl(path)
    sentence = ["The", "cat", "chased", "the", "mouse", "and", "caught", "it", "."]
    assert chased == SRLInstance(
        sentence, 2, ["B-ARG0", "I-ARG0", "B-V", "B-ARG1", "I-ARG1", "O", "O", "O", "O"], f"{path}:2"
    )
    assert caught.words == sentence and caught.predicate_index == 6 and caught.source == f"{path}:13"
    assert caught.tags == ["B-ARG0", "I-ARG0", "O", "O", "O", "O", "B-V", "B-ARG1", "O"]
    assert cost.words == ["It", "cost", "#", "5", "."] and cost.tags[2:4] == ["B-ARG1", "I-ARG1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("mouse 0 I-ARG1", "mouse I-ARG1"), ":6: expected 3 columns WORD PREDICATE_FLAG TAG, found 2"),
        (("mouse 0 I-ARG1", "mouse x I-ARG1"), ":6: the predicate flag must be one of ['1', '0', '-'], found 'x'"),
        (("caught 0 O", "caught 1 O"), ":8: a second predicate in the instance starting at line 2"),
        (("cost 1 B-V", "cost 0 B-V"), ":24: the instance starting here has no predicate"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, change, message):
    path = write(tmp_path, SRL.replace(*change))
    with pytest.raises(DataError) as error:
        read_srl(path)
    assert str(error.value).startswith(f"{path}{message}")


def test_empty_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="the file is empty"):
        read_srl(write(tmp_path, "\n\n"))
    with pytest.raises(DataError, match="no instances found"):
        read_srl(write(tmp_path, "# only a comment\n"))


def test_labels_only_on_first_subtokens_of_sentence_words(minilm_tokenizer):
    task = SRLTask(minilm_tokenizer, LABELS, 64)
    instance = SRLInstance(["Blackburnshire", "outmaneuvered", "Oslo"], 1, ["B-ARG0", "B-V", "B-ARG1"])
    inputs = task.encode([instance]).inputs[0]
    tokens = minilm_tokenizer.convert_ids_to_tokens(inputs["input_ids"])
    predicate = ["out", "##man", "##eu", "##vered"]
    assert tokens == ["[CLS]", "blackburn", "##shire", *predicate, "oslo", "[SEP]", *predicate, "[SEP]"]
    assert inputs["token_type_ids"] == [0] * 9 + [1] * 5
    labels = inputs["labels"]
    labelled = [index for index, label in enumerate(labels) if label != -100]
    assert [tokens[index] for index in labelled] == ["blackburn", "out", "oslo"]
    assert [labels[index] for index in labelled] == [0, 2, 1]
    assert labels[9:] == [-100] * 5  # the predicate segment carries no label


def test_decode_and_score_read_sentence_words_only(minilm_tokenizer):
    task = SRLTask(minilm_tokenizer, LABELS, 64)
    assert task.name == "token-classification" and task.primary_metric == "f1"
    instance = SRLInstance(["Blackburnshire", "outmaneuvered", "Oslo"], 1, ["B-ARG0", "B-V", "B-ARG1"])
    encoded = task.encode([instance], with_labels=False)
    logits = np.zeros((14, len(LABELS)))
    logits[:, 5] = 1.0  # "O" wherever nothing else is said
    logits[1, 0] = logits[2, 4] = 5.0  # blackburn -> B-ARG0; ##shire (not a first sub-token) -> I-ARG1, ignored
    logits[3, 2] = 5.0  # out -> B-V
    logits[10, 1] = 9.0  # the predicate segment says B-ARG1: ignored
    [tags] = task.decode([logits], encoded, [instance])
    assert tags == ["B-ARG0", "B-V", "O"]
    metrics = task.score([instance], [tags])
    assert metrics["precision"] == pytest.approx(100.0)  # both predicted spans are right
    assert metrics["recall"] == pytest.approx(200 / 3)  # ARG1 is missed
    assert metrics["accuracy"] == pytest.approx(200 / 3)
    formatted = task.format_prediction(instance, tags)
    assert formatted["predicate"] == 1
    argument = formatted["arguments"][0]
    assert (argument["entity_group"], argument["word"], argument["word_start"], argument["word_end"]) == (
        "ARG0",
        "Blackburnshire",
        0,
        1,
    )
    assert argument["start"] == 0 and argument["end"] == len("Blackburnshire") and 0 < argument["score"] <= 1


def test_long_sentences_are_cut_but_keep_the_predicate(minilm_tokenizer):
    task = SRLTask(minilm_tokenizer, LABELS, 6)
    instance = SRLInstance(["a", "b", "c", "ran", "d"], 3, ["O", "O", "O", "B-V", "O"])
    encoded = task.encode([instance])
    tokens = minilm_tokenizer.convert_ids_to_tokens(encoded.inputs[0]["input_ids"])
    assert tokens == ["[CLS]", "a", "b", "[SEP]", "ran", "[SEP]"] and encoded.truncated == [0]
    assert task.decode([np.zeros((6, len(LABELS)))], encoded, [instance]) == [["B-ARG0", "B-ARG0", "O", "O", "O"]]


def test_input_lines(minilm_tokenizer):
    task = SRLTask(minilm_tokenizer, LABELS, 64)
    parsed = task.parse_input("", {"words": ["It", "rained"], "predicate": 1}, "in:1")
    assert parsed == SRLInstance(["It", "rained"], 1, ["O", "O"], "in:1")
    for record in (None, {"words": ["a"]}, {"words": ["a"], "predicate": 1}, {"words": ["a"], "predicate": True}):
        with pytest.raises(DataError, match="in:2: expected"):
            task.parse_input("a", record, "in:2")


def test_training_steps_lower_the_loss(tmp_path, minilm_tokenizer):
    instances = read_srl(write(tmp_path, SRL))
    labels = label_set(tag for instance in instances for tag in instance.tags)
    assert labels == LABELS
    task = SRLTask(minilm_tokenizer, labels, 64)
    backbone = tiny_backbone("bert", vocab_size=30522, num_hidden_layers=2, pad_token_id=0)
    model = PromptedModel.from_backbone(backbone, "token-classification", labels=labels, prompt=PromptConfig(length=4))
    batch = task.collator()(task.encode(instances).inputs)

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(**batch).loss.item()

    before = loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    for _ in range(10):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss() < 0.7 * before
    assert set(task.evaluate(model, instances)) == {"accuracy", "precision", "recall", "f1"}
