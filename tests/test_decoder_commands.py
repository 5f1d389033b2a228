"""Decoders through every command: a tiny Llama shaped like SmolLM2 and a tiny GPT-2, each saved with a byte-level
BPE tokenizer that has no pad token, trained, scored, asked and served as any encoder is."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_close, assert_same_answer
from test_predict_many import MIXED_INPUTS

from ptuning import PromptedModel
from ptuning.backbones import load_tokenizer
from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.predictor import Predictor

DECODERS = ("llama", "gpt2")
SENTENCES = "text,label\ngood film,pos\nbad film,neg\nfine acting,pos\ndull plot,neg\n"
TAGS = "Peter B-PER\nBlackburn I-PER\nruns O\n\nOslo B-LOC\ncalls O\n\nMary B-PER\nsings O\n"
DATA = {"sent": "sent.csv", "ner": "ner.conll"}
FAST = ["--max-steps", "2", "--batch-size", "2", "--lr", "0.1", "--prompt-length", "3"]
# the encoder's interleaved inputs of both tasks, and texts longer than the checkpoint's 128 tokens
MIXED = [
    *MIXED_INPUTS,
    {"task": "sent", "text": "good film " * 80},  # longer than the checkpoint's 128 tokens: truncated
    {"task": "ner", "text": "Peter runs in Oslo " * 40},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("decoder-data")
    (folder / DATA["sent"]).write_text(SENTENCES)
    (folder / DATA["ner"]).write_text(TAGS)
    return folder


def run_train(data: Path, backbone: Path, task: str, output: Path, *flags: str) -> Path:
    """``ptuning train`` on the task's file; the run folder."""
    argv = ["train", "--model", str(backbone), "--train", str(data / DATA[task]), "--output", str(output)]
    assert main([*argv, *FAST, *flags]) == 0
    return output


@pytest.fixture(scope="module")
def decoder_runs(data, tiny_decoder_folders, tmp_path_factory) -> dict[str, Path]:
    """Per decoder, a folder holding ``sent/`` (sequence classification) and ``ner/`` (tagging) runs of method deep,
    both on the one backbone."""
    runs = {}
    for model_type in DECODERS:
        runs[model_type] = tmp_path_factory.mktemp(f"{model_type}-runs")
        for task in DATA:
            run_train(data, tiny_decoder_folders[model_type], task, runs[model_type] / task)
    return runs


def run_cli(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    capsys.readouterr()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("model_type", DECODERS)
def test_a_decoder_tokenizer_pads_with_eos_on_the_right_and_splits_words_as_in_text(
    model_type, tiny_decoder_folders, tmp_path
):
    folder = tiny_decoder_folders[model_type]
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>" and tokenizer.padding_side == "right"
    words = ["Peter", "Blackburn", "runs"]
    split = tokenizer(words, is_split_into_words=True)
    assert split["input_ids"] == tokenizer(" ".join(words))["input_ids"]  # a word alone as inside the sentence
    assert sorted(set(split.word_ids())) == [0, 1, 2]
    # a tokenizer saved to pad on the left (as many decoders' are) still pads on the right here
    left = tmp_path / "left"
    left.mkdir()
    for item in folder.iterdir():
        (left / item.name).write_bytes(item.read_bytes())
    config = json.loads((left / "tokenizer_config.json").read_text())
    (left / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    assert load_tokenizer(str(left)).padding_side == "right"
    (left / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": None, "bos_token": None}))
    with pytest.raises(PtuningError, match="has neither a pad token nor an eos token"):
        load_tokenizer(str(left))


@pytest.mark.parametrize("model_type", DECODERS)
def test_train_and_eval_classification_and_tagging_on_a_decoder(model_type, decoder_runs, data, capsys):
    runs = decoder_runs[model_type]
    record = json.loads((runs / "sent" / "checkpoint" / "ptuning_config.json").read_text())
    assert record["tasks"]["default"]["pooling"] == "last" and record["prompts"]["default"]["method"] == "deep"
    code, out, err = run_cli(capsys, "eval", str(runs / "sent"), "--test", str(data / DATA["sent"]))
    assert code == 0, err
    assert set(json.loads(out)) == {"accuracy", "f1"}
    code, out, err = run_cli(capsys, "eval", str(runs / "ner"), "--test", str(data / DATA["ner"]))
    assert code == 0, err
    assert set(json.loads(out)) == {"accuracy", "precision", "recall", "f1"}


@pytest.mark.parametrize(
    ("method", "task", "model_type"),
    [
        ("shallow", "ner", "llama"),
        ("ptuning-v1", "sent", "gpt2"),
        ("finetune", "sent", "llama"),
        ("linear-probe", "ner", "gpt2"),
    ],
)
def test_the_other_methods_train_eval_and_predict_on_a_decoder(
    method, task, model_type, data, tiny_decoder_folders, tmp_path, capsys
):
    run = run_train(data, tiny_decoder_folders[model_type], task, tmp_path / "run", "--method", method)
    code, out, err = run_cli(capsys, "eval", str(run), "--test", str(data / DATA[task]))
    assert code == 0 and "accuracy" in json.loads(out), err
    (tmp_path / "in.txt").write_text("Peter runs in Oslo\n")
    code, out, err = run_cli(capsys, "predict", str(run), "--input", str(tmp_path / "in.txt"))
    assert code == 0, err
    answer = json.loads(out)
    assert answer["tags"] if task == "ner" else answer["label"] in ("neg", "pos")


def test_predict_reads_plain_lines_and_json_from_stdin_on_a_decoder(decoder_runs, capsys, monkeypatch):
    runs = decoder_runs["llama"]
    lines = 'Peter Blackburn runs\n{"words": ["Oslo", "calls"]}\n'
    code, out, err = run_cli(capsys, "predict", str(runs / "ner"), stdin=lines, monkeypatch=monkeypatch)
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 0, err
    assert [answer["words"] for answer in answers] == [["Peter", "Blackburn", "runs"], ["Oslo", "calls"]]
    assert all(len(answer["tags"]) == len(answer["words"]) for answer in answers)
    lines = 'a good film\n{"text": "dull", "text_pair": "and long"}\n'
    code, out, err = run_cli(capsys, "predict", str(runs / "sent"), stdin=lines, monkeypatch=monkeypatch)
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [answer["text"] for answer in answers] == ["a good film", "dull"], err
    assert all(answer["label"] in ("neg", "pos") for answer in answers)


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", DECODERS)
def test_two_tasks_on_one_decoder_answer_a_mixed_batch_as_each_alone(model_type, decoder_runs, tmp_path, capsys):
    """Padded beside longer inputs of another task, each input gets the answer it gets alone: padding on the
    right keeps every real token's position and the last real token's place."""
    runs = decoder_runs[model_type]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(record) + "\n" for record in MIXED))
    code, out, err = run_cli(capsys, "predict", f"ner={runs / 'ner'}", f"sent={runs / 'sent'}", "--input", str(inputs))
    assert code == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == len(MIXED) and "tags" in answers[0] and "label" in answers[1]
    assert ["warning" in answer for answer in answers] == [False] * 6 + [True] * 2  # the long ones, truncated
    for record, answer in zip(MIXED, answers, strict=True):
        inputs.write_text(json.dumps({key: value for key, value in record.items() if key != "task"}) + "\n")
        code, out, _ = run_cli(capsys, "predict", str(runs / record["task"]), "--input", str(inputs))
        assert code == 0
        assert_same_answer(answer, json.loads(out))


@pytest.mark.numerics
def test_tagging_on_a_decoder_reads_only_the_left_context(decoder_runs):
    """What docs/tasks.md says of tagging on a decoder: a token's tag scores do not change with the words after it."""
    model = PromptedModel.from_pretrained(decoder_runs["llama"] / "ner").eval()
    tokenizer = model.tokenizer
    first = tokenizer(["Peter", "runs", "in", "Oslo"], is_split_into_words=True, return_tensors="pt")
    second = tokenizer(["Peter", "runs", "dull", "plot"], is_split_into_words=True, return_tensors="pt")
    shared = first.word_ids().index(2)  # tokens of the two words both inputs begin with
    with torch.no_grad():
        a = model(input_ids=first["input_ids"], attention_mask=first["attention_mask"]).logits
        b = model(input_ids=second["input_ids"], attention_mask=second["attention_mask"]).logits
    assert_close(a[0, :shared], b[0, :shared])
    assert not torch.allclose(a[0, shared], b[0, shared])  # the third word differs, and so do its scores


def test_serve_answers_a_real_http_client_on_a_decoder(decoder_runs):
    pytest.importorskip("fastapi")
    from test_serve import start, stop

    runs = decoder_runs["llama"]
    offline = Predictor.from_checkpoints({"ner": runs / "ner", "sent": runs / "sent"})
    expected = [offline.predict([offline.parse(record, "x")])[0] for record in MIXED]
    process, client = start(runs)
    try:
        status, _, body = client.call("GET", "/v1/tasks")
        tasks = {task["name"]: task for task in body["tasks"]}
        assert status == 200 and tasks["sent"]["labels"] == ["neg", "pos"]
        assert tasks["ner"]["kind"] == "token-classification"
        status, _, body = client.call("POST", "/v1/predict", {"inputs": MIXED})
        assert status == 200 and len(body["outputs"]) == len(MIXED)
        for answer, wanted in zip(body["outputs"], expected, strict=True):
            assert_same_answer(answer, wanted)
    finally:
        stop(process)
