"""Generation tasks through the commands on tiny decoders: ``train --task generation`` (a deep prefix, the loss on
the target), ``eval`` scoring written answers, ``predict`` of one task and of several tasks in one batch (each answer
equal to that task's own), and a generation task predicted beside a classification task on one backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_decoder_commands import run_cli
from transformers import AutoModelForCausalLM

from ptuning.backbones import load_tokenizer
from ptuning.cli import main
from ptuning.templates import verbatim

PAIRS = [
    ("Peter Blackburn runs in Oslo", "Peter Blackburn (PER); Oslo (LOC)"),
    ("Mary sings in Oslo today", "Mary (PER); Oslo (LOC)"),
    ("a good film with fine acting", "none"),
    ("the plot never drags", "none"),
]
FAST = ["--max-steps", "3", "--batch-size", "2", "--lr", "0.1", "--prompt-length", "3", "--max-new-tokens", "6"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def generation_runs(tiny_decoder_folders, tmp_path_factory) -> dict[str, Path]:
    """On the tiny Llama: ``ner`` (entities, scored by the entities parser), ``copy`` (another prefix, shifted
    positions, a longer answer) and ``sent`` (sequence classification), all on one backbone."""
    folder = tmp_path_factory.mktemp("generation")
    data = write_jsonl(folder / "ner.jsonl", [{"input": text, "target": target} for text, target in PAIRS])
    copy = write_jsonl(folder / "copy.jsonl", [{"input": text, "target": text} for text, _ in PAIRS])
    (folder / "sent.csv").write_text("text,label\ngood film,pos\nbad film,neg\n")
    backbone = ["--model", str(tiny_decoder_folders["llama"])]
    runs = {name: folder / name for name in ("ner", "copy", "sent")}
    ner = ["--train", str(data), "--validation", str(data), "--task", "generation", "--parser", "entities"]
    assert main(["train", *backbone, *ner, *FAST, "--output", str(runs["ner"])]) == 0
    copying = ["--train", str(copy), "--task", "generation", "--shift-positions", "--seed", "3"]
    assert main(["train", *backbone, *copying, *FAST, "--max-new-tokens", "9", "--output", str(runs["copy"])]) == 0
    assert (
        main(["train", *backbone, "--train", str(folder / "sent.csv"), *FAST[:6], "--output", str(runs["sent"])]) == 0
    )
    return runs


def predict(argv: list[str], lines: list[str], capsys, monkeypatch) -> list[dict]:
    text = "".join(line + "\n" for line in lines)
    code, out, err = run_cli(capsys, "predict", *argv, stdin=text, monkeypatch=monkeypatch)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_a_generation_run_scores_its_written_answers(generation_runs):
    metrics = json.loads((generation_runs["ner"] / "metrics.json").read_text())["tasks"]["default"]
    assert metrics["task"] == "generation" and metrics["primary_metric"] == "entities_f1"
    assert set(metrics["validation"]) == {
        "exact_match", "f1", "rougeL", "entities_precision", "entities_recall", "entities_f1"
    }  # fmt: skip
    config = json.loads((generation_runs["ner"] / "checkpoint" / "ptuning_config.json").read_text())
    task = config["tasks"]["default"]
    assert task["kind"] == "causal-lm" and task["family"] == "generation"
    assert task["options"] == {"parser": "entities", "max_new_tokens": 6, "chat_template": False, "template": None}


def test_eval_writes_the_answers_and_scores_them(generation_runs, tmp_path, capsys):
    data = write_jsonl(tmp_path / "test.jsonl", [{"input": text, "target": target} for text, target in PAIRS])
    assert main(["eval", str(generation_runs["ner"]), "--test", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "entities_f1" in printed and "rougeL" in printed


def test_tasks_mixed_in_one_batch_answer_as_each_alone(generation_runs, capsys, monkeypatch):
    texts = [text for text, _ in PAIRS] + ["Oslo", "Peter Blackburn runs in Oslo and Mary sings"]
    alone = {
        name: predict(
            [str(generation_runs[name])], [json.dumps({"input": text}) for text in texts], capsys, monkeypatch
        )
        for name in ("ner", "copy")
    }
    assert all(len(answer["generated_text"]) > 0 for answers in alone.values() for answer in answers)
    assert alone["ner"] != alone["copy"], "two prefixes write differently"
    lines, expected = [], []
    for index, text in enumerate(texts):  # interleaved: each batch mixes the two tasks
        for name in ("ner", "copy") if index % 2 else ("copy", "ner"):
            lines.append(json.dumps({"task": name, "input": text}))
            expected.append(alone[name][index])
    sources = [f"{name}={generation_runs[name]}" for name in ("ner", "copy")]
    assert predict(sources, lines, capsys, monkeypatch) == expected


def test_a_generation_task_is_predicted_beside_a_classification_task(generation_runs, capsys, monkeypatch):
    sent_alone = predict([str(generation_runs["sent"])], ["good film"], capsys, monkeypatch)
    ner_alone = predict([str(generation_runs["ner"])], ["Mary sings"], capsys, monkeypatch)
    lines = [json.dumps({"task": "sent", "text": "good film"}), json.dumps({"task": "ner", "input": "Mary sings"})]
    sources = [f"{name}={generation_runs[name]}" for name in ("sent", "ner")]
    mixed = predict(sources, lines, capsys, monkeypatch)
    assert mixed[1] == ner_alone[0]
    assert mixed[0]["label"] == sent_alone[0]["label"]
    assert abs(mixed[0]["probability"] - sent_alone[0]["probability"]) < 1e-5


def test_prompting_and_finetune_write_too_and_prompting_mixes_with_prefixes(
    generation_runs, tiny_decoder_folders, tmp_path, capsys, monkeypatch
):
    """The baselines: a template read by the frozen backbone (trains nothing), and a fine-tuned backbone. A prompting
    task shares a batch with prefixed tasks, its rows under no prefix: each answer as its task's alone; and the
    prompting answer is the frozen backbone's own greedy continuation of the filled template."""
    data = write_jsonl(tmp_path / "ner.jsonl", [{"input": text, "target": target} for text, target in PAIRS])
    backbone = str(tiny_decoder_folders["llama"])
    template = "Entities in: {text}\nAnswer:"
    common = ["train", "--model", backbone, "--train", str(data), "--task", "generation", *FAST]
    for method in ("prompting", "finetune"):
        output = tmp_path / method
        assert main([*common, "--method", method, "--template", template, "--output", str(output)]) == 0
        metrics = json.loads((output / "metrics.json").read_text())
        assert metrics["trainable_parameters"] == (0 if method == "prompting" else metrics["total_parameters"])
    texts = ["Peter runs", "Mary sings in Oslo"]
    alone = predict([str(tmp_path / "prompting")], [json.dumps({"input": text}) for text in texts], capsys, monkeypatch)
    tokenizer = load_tokenizer(backbone)
    model = AutoModelForCausalLM.from_pretrained(backbone).eval()
    for text, answer in zip(texts, alone, strict=True):
        ids = verbatim(tokenizer)(template.replace("{text}", text), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            written = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        expected = tokenizer.decode(written[0, ids.shape[1] :], skip_special_tokens=True)
        assert answer["generated_text"] == expected
    ner_alone = predict(
        [str(generation_runs["ner"])], [json.dumps({"input": text}) for text in texts], capsys, monkeypatch
    )
    lines = [json.dumps({"task": name, "input": text}) for text in texts for name in ("p", "ner")]
    sources = [f"p={tmp_path / 'prompting'}", f"ner={generation_runs['ner']}"]
    mixed = predict(sources, lines, capsys, monkeypatch)
    assert mixed == [answer for pair in zip(alone, ner_alone, strict=True) for answer in pair]
    tuned = predict([str(tmp_path / "finetune")], ["Peter runs"], capsys, monkeypatch)
    assert tuned[0]["input"] == "Peter runs" and "generated_text" in tuned[0]


def test_a_shallow_prompt_trains_predicts_and_mixes_with_a_prefix(
    generation_runs, tiny_decoder_folders, tmp_path, capsys, monkeypatch
):
    """Prompt tuning for generation: a shallow prompt of 4 vectors trains (only it), its run predicts, and its inputs
    share one batch with a deep prefix's, each answer as its task's alone."""
    data = write_jsonl(tmp_path / "ner.jsonl", [{"input": text, "target": target} for text, target in PAIRS])
    argv = ["train", "--model", str(tiny_decoder_folders["llama"]), "--train", str(data), "--validation", str(data)]
    run = tmp_path / "shallow"
    shallow = ["--task", "generation", "--method", "shallow", *FAST[:6], "--prompt-length", "4"]
    assert main([*argv, *shallow, "--max-new-tokens", "6", "--output", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    hidden = AutoModelForCausalLM.from_pretrained(tiny_decoder_folders["llama"]).config.hidden_size
    assert metrics["trainable_parameters"] == 4 * hidden
    assert "rougeL" in metrics["tasks"]["default"]["validation"]
    texts = [text for text, _ in PAIRS] + ["Oslo"]
    alone = predict([str(run)], [json.dumps({"input": text}) for text in texts], capsys, monkeypatch)
    ner_alone = predict([str(generation_runs["ner"])], [json.dumps({"input": t}) for t in texts], capsys, monkeypatch)
    assert alone != ner_alone
    lines = [json.dumps({"task": name, "input": text}) for text in texts for name in ("soft", "ner")]
    mixed = predict([f"soft={run}", f"ner={generation_runs['ner']}"], lines, capsys, monkeypatch)
    assert mixed == [answer for pair in zip(alone, ner_alone, strict=True) for answer in pair]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--method", "linear-probe"], "leave out --verbalizer, --head and method linear-probe"),
        (["--head", "verbalizer"], "leave out --verbalizer, --head"),
        (["--method", "ptuning-v1"], "supports methods deep (prefix-tuning), shallow (prompt tuning), finetune and"),
        (["--method", "shallow", "--reparam", "mlp"], "reparam 'mlp' does not apply to method 'shallow'"),
        (["--max-new-tokens", "500"], "max_new_tokens 500 leaves no room for the input"),
        (["--parser", "tables"], "unknown output parser 'tables'"),
    ],
)
def test_what_generation_does_not_take_is_refused(tiny_decoder_folders, tmp_path, capsys, flags, message):
    data = write_jsonl(tmp_path / "ner.jsonl", [{"input": text, "target": target} for text, target in PAIRS])
    argv = ["train", "--model", str(tiny_decoder_folders["llama"]), "--train", str(data), "--task", "generation"]
    assert main([*argv, "--max-steps", "1", "--output", str(tmp_path / "run"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_predict_samples_with_a_seed_stops_at_a_string_and_writes_fewer_tokens(generation_runs, capsys, monkeypatch):
    run = [str(generation_runs["copy"])]
    lines = [json.dumps({"input": text}) for text, _ in PAIRS]
    greedy = predict(run, lines, capsys, monkeypatch)
    sampled = [
        predict([*run, "--temperature", "1.5", "--seed", str(seed)], lines, capsys, monkeypatch) for seed in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2] and sampled[0] != greedy
    short = predict([*run, "--max-new-tokens", "2"], lines, capsys, monkeypatch)
    for long, cut in zip(greedy, short, strict=True):
        assert long["generated_text"].startswith(cut["generated_text"]) and len(cut["generated_text"]) < len(
            long["generated_text"]
        )
    stop = greedy[0]["generated_text"][3:5]
    stopped = predict([*run, "--stop", stop], lines[:1], capsys, monkeypatch)
    assert stopped[0]["generated_text"] == greedy[0]["generated_text"][: greedy[0]["generated_text"].index(stop)]
    code, _, err = run_cli(capsys, "predict", *run, "--top-p", "0", stdin="a\n", monkeypatch=monkeypatch)
    assert code == 2 and "top_p (--top-p) must be in (0, 1], got 0.0" in err


def test_generation_settings_on_another_task_are_refused(tmp_path, capsys):
    (tmp_path / "sent.csv").write_text("text,label\ngood film,pos\nbad film,neg\n")
    argv = ["train", "--train", str(tmp_path / "sent.csv"), "--output", str(tmp_path / "run")]
    for flags in (["--parser", "entities"], ["--max-new-tokens", "8"]):
        assert main([*argv, *flags]) == 2
        assert "--parser and --max-new-tokens set how a generation task writes: give --task generation" in (
            capsys.readouterr().err
        )
