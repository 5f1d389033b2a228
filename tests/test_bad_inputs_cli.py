"""Every bad input of the command line, one row each: ``ptuning: error:`` naming what is wrong, exit code 2, no
traceback, checked before the work, and nothing of the user's written or replaced."""

from __future__ import annotations

import io
import logging
import sys
from dataclasses import dataclass, field

import pytest

from ptuning.cli import main

SWEEP = (
    "sweep --train {runs}/ner.conll --validation {runs}/ner.conll --model {tiny} --max-steps 2 --batch-size 2 "
    "--output {tmp}/sw"
)
TRAIN = "train --train {runs}/ner.conll --model {tiny} --max-steps 1 --batch-size 2 --output {tmp}/run"
EVAL = "eval {runs}/ner --test {runs}/ner.conll"
LATIN1 = "Peter B-PER\ncaf\xe9 O\n".encode("latin-1")


@dataclass
class Case:
    """A command (``{runs}``: the tiny runs' folder, ``{tiny}``: their backbone, ``{ft}``: a fine-tuned run,
    ``{tmp}``: the test's folder) and what it must answer."""

    argv: str
    message: str  # in stderr (an error) or in stdout (an answer)
    code: int = 2
    stdin: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)  # written under {tmp} first
    before: str | None = None  # a command that must succeed first (what the case then refuses to replace)
    absent: tuple[str, ...] = ("sw", "run")  # under {tmp}: never made
    made: tuple[str, ...] = ()  # under {tmp}: written
    unsaid: str | None = None  # in neither stdout nor stderr


CASES = {
    # a sweep continues only the study it is the same sweep of
    "sweep-over-another-study": Case(
        f"{SWEEP} --train {{tmp}}/other.conll --search prompt_length=2,3",
        "study 'ptuning' in {tmp}/sw/sweep.db is another sweep's (train: '{runs}/ner.conll' then, '{tmp}/other.conll' "
        "now; --search: lr=0.01:0.5:log then, prompt_length=2,3 now): rerun that sweep to continue it, give "
        "--overwrite to start over",
        files={"other.conll": b"Anna B-PER\nsleeps O\n"},
        before=f"{SWEEP} --search lr=0.01:0.5:log --trials 1",
        absent=(),
    ),
    "sweep-into-a-folder-of-files": Case(
        f"{SWEEP} --search lr=0.01,0.1",
        "--output {tmp}/sw is not empty and {tmp}/sw/sweep.db holds no study 'ptuning'",
        files={"sw/notes.txt": b"mine\n"},
        absent=("sw/sweep.db", "sw/trials"),
    ),
    "sweep-resume-without-a-study": Case(
        f"{SWEEP} --search lr=0.01,0.1 --resume", "--resume: {tmp}/sw/sweep.db holds no study 'ptuning' to continue"
    ),
    "sweep-resume-and-overwrite": Case(f"{SWEEP} --search lr=0.01,0.1 --resume --overwrite", "give one"),
    "sweep-save-steps": Case(f"{SWEEP} --search lr=0.01,0.1 --save-steps 1", "--save-steps: a sweep's trials do not"),
    "sweep-empty-choices": Case(
        f"{SWEEP} --search prompt_length=,",
        "--search prompt_length=none: prompt_length (--prompt-length) needs a value",
    ),
    "sweep-unknown-choice": Case(
        f"{SWEEP} --search method=deep,bogus", "--search method=bogus: method (--method) is 'bogus'; expected one of"
    ),
    "sweep-choices-that-clash": Case(
        f"{SWEEP} --search method=deep,shallow --search reparam=none,mlp",
        "--search method=shallow, reparam=mlp: reparam 'mlp' does not apply to method 'shallow'",
    ),
    "sweep-range-end-out-of-range": Case(
        f"{SWEEP} --search prompt_dropout=0:1",
        "--search prompt_dropout=1: prompt_dropout (--prompt-dropout) must be in",
    ),
    "sweep-list-choice": Case(f"{SWEEP} --search prompt_layers=[1]", "a choice is a number, a word or none, not [1]"),
    "sweep-key-twice": Case(f"{SWEEP} --search lr=0.1,0.2 --search lr=0.01:0.1", "--search lr is given twice"),
    "sweep-without-validation": Case(
        "sweep --train {runs}/ner.conll --model {tiny} --search lr=0.1,0.2 --output {tmp}/sw",
        "a sweep selects on validation: give --validation, or a dataset that has a validation split (task 'default'",
    ),
    "sweep-storage-that-cannot-open": Case(
        f"{SWEEP} --search lr=0.1,0.2 --storage bogus://user:secret@host/db", "the study storage cannot be opened"
    ),
    "sweep-output-a-file": Case(
        SWEEP.replace("{tmp}/sw", "{tmp}/f") + " --search lr=0.1,0.2", "--output {tmp}/f is a file", files={"f": b"x"}
    ),
    "sweep-bad-training-file": Case(  # found by the first trial: said once, without Optuna's traceback
        SWEEP.replace("{runs}/ner.conll", "{tmp}/bad.conll", 1) + " --search lr=0.1,0.2",
        "{tmp}/bad.conll:2: expected 2 columns like the first token line, found 1",
        files={"bad.conll": b"Peter B-PER\nruns\n"},
        absent=(),
    ),
    # input files and standard input are UTF-8, read by the one reader training files go through
    "predict-stdin-not-utf8": Case(
        "predict {runs}/ner", "<stdin>:2: not UTF-8 text (byte 0xe9)", stdin=b"ok\ncaf\xe9\n"
    ),
    "predict-input-not-utf8": Case(
        "predict {runs}/ner --input {tmp}/latin1.txt",
        "{tmp}/latin1.txt:2: not UTF-8 text (byte 0xe9)",
        files={"latin1.txt": LATIN1},
    ),
    "train-file-not-utf8": Case(
        TRAIN.replace("{runs}/ner.conll", "{tmp}/latin1.conll"),
        "{tmp}/latin1.conll:2: not UTF-8 text (byte 0xe9)",
        files={"latin1.conll": LATIN1},
    ),
    "recipe-not-utf8": Case(
        "train --config {tmp}/r.yaml --output {tmp}/run",
        "{tmp}/r.yaml:1: not UTF-8 text",
        files={"r.yaml": "# caf\xe9\n".encode("latin-1")},
    ),
    # JSON input fields are what they must be, never made into text
    "predict-word-null": Case(
        "predict {runs}/ner", "<stdin>:1: words[1]: expected a string, got null", stdin=b'{"words": ["a", null]}\n'
    ),
    "predict-word-number": Case(
        "predict {runs}/ner", "<stdin>:2: words[0]: expected a string, got 1", stdin=b'ok\n{"words": [1]}\n'
    ),
    "predict-word-object": Case(
        "predict {runs}/ner", "<stdin>:1: words[0]: expected a string, got {}", stdin=b'{"words": [{}]}\n'
    ),
    "predict-text-pair-number": Case(
        "predict {runs}/sent",
        "<stdin>:1: text_pair: expected a string, got 5",
        stdin=b'{"text": "a", "text_pair": 5}\n',
    ),
    "predict-lone-surrogate": Case(
        "predict {runs}/sent", "<stdin>:1: text: a lone surrogate at character 1", stdin=b'{"text": "a\\ud83d"}\n'
    ),
    "train-jsonl-pair-number": Case(
        "train --train {tmp}/t.jsonl --pair-column b --model {tiny} --output {tmp}/run",
        "{tmp}/t.jsonl:2: b: expected a string, got 7",
        files={"t.jsonl": b'{"text": "a", "b": "c", "label": "x"}\n{"text": "a", "b": 7, "label": "y"}\n'},
    ),
    # output files are checked before the work, whose results they would lose
    "eval-metrics-onto-a-folder": Case(
        f"{EVAL} --output-metrics {{tmp}}/out", "--output-metrics {tmp}/out is a folder", files={"out/keep.txt": b"x"}
    ),
    "eval-predictions-under-a-file": Case(
        f"{EVAL} --predictions {{tmp}}/afile/p.jsonl",
        "--predictions {tmp}/afile/p.jsonl: {tmp}/afile is a file, so no folder can be made there",
        files={"afile": b"x"},
    ),
    "eval-predictions-onto-its-input": Case(
        f"{EVAL} --predictions {{runs}}/ner.conll", "--predictions {runs}/ner.conll is an input of this command"
    ),
    "eval-predictions-into-a-new-folder": Case(
        f"{EVAL} --predictions {{tmp}}/new/p.jsonl", '"accuracy"', code=0, made=("new/p.jsonl",)
    ),
    "eval-dataset-of-another-task": Case(
        "eval {runs}/ner --dataset rotten-tomatoes --split validation",
        "--dataset rotten-tomatoes holds sequence-classification data; this checkpoint does token-classification",
    ),
    "train-output-under-a-file": Case(
        TRAIN.replace("{tmp}/run", "{tmp}/f/run"), "--output {tmp}/f/run: {tmp}/f is a file", files={"f": b"x"}
    ),
    "train-labels-a-folder": Case(f"{TRAIN} --labels {{tmp}}", "labels (--labels) {tmp} is a folder"),
    # recipes and flags that name no task, or more names than tasks
    "recipe-with-no-tasks": Case(
        "train --config {tmp}/r.yaml --output {tmp}/run",
        "{tmp}/r.yaml: tasks is an empty list: give one mapping per task",
        files={"r.yaml": b"tasks: []\n"},
    ),
    "task-names-more-than-tasks": Case(f"{TRAIN} --task-names a,b", "flags: 1 task but 2 task names (a,b)"),
    "task-names-empty-name": Case(
        f"{TRAIN} --task-names a,", "task_names (--task-names) must be comma-separated names"
    ),
    # a word of no tokens is not truncation
    "predict-zero-width-word": Case(
        "predict {runs}/ner",
        '"words": ["Peter", "visited", "Oslo", "\u200b"]',
        code=0,
        stdin='{"words": ["Peter", "visited", "Oslo", "\u200b"]}\n'.encode(),
        unsaid="truncated",
    ),
    # a fine-tuned checkpoint is refused beside others for what it is
    "predict-fine-tuned-beside-another": Case(
        "predict a={runs}/ner b={ft}",
        "checkpoint {ft}/checkpoint is fine-tuned: it carries its own backbone ({ft}/checkpoint/backbone)",
        stdin=b'{"task": "a", "text": "x"}\n',
    ),
}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_runs, tiny_backbone_folder):
    """A fine-tuned run on the tiny backbone (its embeddings trained: its fingerprint is its own)."""
    folder = tmp_path_factory.mktemp("finetuned") / "run"
    data = str(tiny_runs / "ner.conll")
    argv = ["train", "--train", data, "--validation", data, "--model", str(tiny_backbone_folder), "--method"]
    argv += ["finetune", "--lr", "0.01", "--max-steps", "2", "--batch-size", "2", "--output", str(folder)]
    assert main(argv) == 0
    return folder


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_answered(case, tmp_path, tiny_runs, tiny_backbone_folder, finetuned, capsys, monkeypatch):
    places = {"{runs}": str(tiny_runs), "{tiny}": str(tiny_backbone_folder), "{ft}": str(finetuned)}
    places["{tmp}"] = str(tmp_path)

    def fill(text: str) -> str:
        for place, path in places.items():
            text = text.replace(place, path)
        return text

    for name, data in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    if case.before:
        assert main([fill(token) for token in case.before.split()]) == 0
    held = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    held.update({path: path.read_bytes() for path in tiny_runs.rglob("*") if path.is_file()})
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(case.stdin)))
    for handler in logging.getLogger("optuna").handlers:  # Optuna's own (and its colour formatter) keep the stderr
        if type(handler) is logging.StreamHandler:  # they were made with
            monkeypatch.setattr(handler, "stream", sys.stderr)
            monkeypatch.setattr(handler.formatter, "stream", sys.stderr, raising=False)

    code = main([fill(token) for token in case.argv.split()])

    out, err = capsys.readouterr()
    said = [line for line in err.splitlines() if line.startswith("ptuning: error: ")] if case.code else [out]
    assert code == case.code, err
    assert any(fill(case.message) in text for text in said) and "Traceback" not in err, err
    assert case.unsaid is None or case.unsaid not in out + err
    assert all((path.is_file() and path.read_bytes() == data) for path, data in held.items())  # nothing replaced
    assert not [name for name in case.absent if (tmp_path / name).exists()]
    assert all((tmp_path / name).is_file() for name in case.made)
