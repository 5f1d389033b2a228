"""The generation family: its JSON-lines data (input/target or chat messages) read with every bad line named, and its
features: the loss reads the target's tokens only, the end of the answer included."""

from __future__ import annotations

import json

import pytest

from ptuning.backbones import load_tokenizer
from ptuning.data.generation import GenerationExample, read_generation
from ptuning.errors import DataError
from ptuning.tasks.generation import IGNORED, GenerationTask
from ptuning.templates import verbatim

# a minimal chat template in the ChatML shape SmolLM2's uses
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write(tmp_path, records: list) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text(
        "".join((json.dumps(record) if not isinstance(record, str) else record) + "\n" for record in records)
    )
    return str(path)


def test_inputs_targets_and_messages_are_read(tmp_path):
    path = write(
        tmp_path,
        [
            {"input": "Peter runs", "target": "Peter (PER)"},
            {"input": "Oslo calls", "target": ["Oslo (LOC)", "Oslo(LOC)"]},
            "",
            {"messages": [{"role": "user", "content": "Mary sings"}, {"role": "assistant", "content": "Mary (PER)"}]},
        ],
    )
    first, second, third = read_generation(path)
    assert (first.text, first.targets, first.source) == ("Peter runs", ["Peter (PER)"], f"{path}:1")
    assert second.targets == ["Oslo (LOC)", "Oslo(LOC)"]
    assert third.messages == [{"role": "user", "content": "Mary sings"}] and third.targets == ["Mary (PER)"]
    assert third.source == f"{path}:4"


@pytest.mark.parametrize(
    "record,message",
    [
        ({"input": "a"}, ":1: missing 'target'"),
        ({"input": "a", "target": 3}, ":1: target: expected a non-empty string, got 3"),
        ({"input": "", "target": "b"}, ":1: input: expected a non-empty string"),
        (
            {"text": "a", "label": "b"},
            ":1: expected 'input' (with 'target') or 'messages'; the record has ['label', 'text']",
        ),
        ({"input": "a", "messages": []}, ":1: expected 'input' (with 'target') or 'messages'"),
        ({"messages": [{"role": "user", "content": "a"}]}, "the last message must be the assistant's, the target"),
        ({"messages": [{"role": "robot", "content": "a"}]}, "messages[0].role: expected one of"),
        ({"messages": [{"role": "user"}]}, "messages[0]: expected an object with exactly 'role' and 'content'"),
        ("[1, 2]", ":1: expected a JSON object, found list"),
    ],
)
def test_a_bad_line_is_named_with_what_was_expected(tmp_path, record, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        read_generation(write(tmp_path, [record]))


def test_a_generation_file_must_be_json_lines(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("input,target\na,b\n")
    with pytest.raises(DataError, match="generation data is JSON lines"):
        read_generation(path)


def test_the_loss_reads_the_target_and_its_end_only(tiny_decoder_folders):
    tokenizer = load_tokenizer(str(tiny_decoder_folders["llama"]))
    task = GenerationTask(tokenizer, [], max_length=64, max_new_tokens=16)
    example = GenerationExample("Peter runs in Oslo", targets=["Peter (PER)"])
    (feature,) = task.encode([example]).inputs
    tokenizer = verbatim(tokenizer)  # texts as written: no space put before them
    prompt = tokenizer("Peter runs in Oslo", add_special_tokens=False)["input_ids"]
    target = tokenizer("Peter (PER)", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert feature["input_ids"] == prompt + target
    assert feature["labels"] == [IGNORED] * len(prompt) + target
    (unlabeled,) = task.encode([example], with_labels=False).inputs
    assert unlabeled["input_ids"] == prompt and "labels" not in unlabeled


def test_chat_messages_are_rendered_and_the_answer_ends_its_turn(tiny_decoder_folders):
    tokenizer = load_tokenizer(str(tiny_decoder_folders["llama"]))
    tokenizer.chat_template = CHATML
    task = GenerationTask(tokenizer, [], max_length=256)
    plain = verbatim(tokenizer)
    example = GenerationExample(None, [{"role": "user", "content": "Mary sings"}], ["Mary (PER)"])
    (feature,) = task.encode([example]).inputs
    prompt = plain("<|im_start|>user\nMary sings<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    answer = plain("Mary (PER)<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert feature["input_ids"] == prompt["input_ids"] + answer
    assert feature["labels"] == [IGNORED] * len(prompt["input_ids"]) + answer
    plain_as_chat = GenerationTask(tokenizer, [], max_length=256, chat_template=True)
    assert plain_as_chat.encode([GenerationExample("Mary sings", targets=["Mary (PER)"])]).inputs == [feature]


def test_a_long_input_loses_its_first_tokens_and_keeps_the_target(tiny_decoder_folders):
    tokenizer = load_tokenizer(str(tiny_decoder_folders["llama"]))
    task = GenerationTask(tokenizer, [], max_length=24, max_new_tokens=4)
    text = " ".join(["Peter Blackburn runs in Oslo"] * 5)
    encoded = task.encode([GenerationExample(text, targets=["Peter (PER)"])])
    (feature,) = encoded.inputs
    tokenizer = verbatim(tokenizer)
    target = tokenizer("Peter (PER)", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert encoded.truncated == [0] and len(feature["input_ids"]) == 24
    assert feature["input_ids"][-len(target) :] == target
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert feature["input_ids"][: 24 - len(target)] == prompt[-(24 - len(target)) :]
    (unlabeled,) = task.encode([GenerationExample(text)], with_labels=False).inputs
    assert unlabeled["input_ids"] == prompt[-20:], "the room left for the answer's 4 new tokens"


def test_an_unknown_parser_is_refused(tiny_decoder_folders):
    tokenizer = load_tokenizer(str(tiny_decoder_folders["llama"]))
    with pytest.raises(Exception, match="unknown output parser 'tables'"):
        GenerationTask(tokenizer, [], max_length=12, max_new_tokens=4, parser="tables")
    with pytest.raises(Exception, match="max_new_tokens 64 leaves no room for the input within the 64 tokens"):
        GenerationTask(tokenizer, [], max_length=64)
