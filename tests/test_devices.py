"""Devices and precision: nothing hard-coded, refused with a message where the machine cannot, bf16 end to end on CPU
(the frozen backbone held in bf16, the prompt and heads trained and saved in fp32)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ptuning import PromptConfig, PromptedModel
from ptuning.cli import main
from ptuning.devices import check_precision, resolve_device
from ptuning.errors import PtuningError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def train(tmp_path, backbone, *flags: str) -> int:
    data = tmp_path / "ner.conll"
    data.write_text("Peter B-PER\nruns O\n\nOslo B-LOC\ncalls O\n\nMary B-PER\nsings O\n")
    common = ["--model", str(backbone), "--max-steps", "3", "--batch-size", "2", "--lr", "0.1", "--prompt-length", "2"]
    return main(["train", "--train", str(data), "--output", str(tmp_path / "run"), *common, *flags])


@NO_CUDA
def test_auto_takes_the_cpu_without_an_accelerator_and_a_missing_device_is_refused():
    if not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(PtuningError, match="--device cuda: no CUDA device is available"):
        resolve_device("cuda")


def test_precisions_the_device_cannot_train_in_are_refused():
    with pytest.raises(PtuningError, match="--precision fp16 needs a GPU"):
        check_precision("fp16", torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))  # CPU autocast has bf16


@NO_CUDA
def test_train_refuses_before_loading_anything(tmp_path, tiny_backbone_folder, capsys):
    assert train(tmp_path, tiny_backbone_folder, "--device", "cuda") == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err
    assert train(tmp_path, tiny_backbone_folder, "--precision", "fp16", "--device", "cpu") == 2
    assert "--precision fp16 needs a GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train(tmp_path, tiny_backbone_folder, "--device", "gpu")
    assert (
        "argument --device: invalid choice: 'gpu' (choose from 'auto', 'cpu', 'cuda', 'mps')" in capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_bf16_trains_a_fp32_prompt_on_a_bf16_backbone_and_the_checkpoint_loads_on_fp32(tmp_path, tiny_backbone_folder):
    assert train(tmp_path, tiny_backbone_folder, "--precision", "bf16", "--device", "auto") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["device"] == str(resolve_device("auto"))
    saved = load_file(str(tmp_path / "run" / "checkpoint" / "ptuning_model.safetensors"))
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    # the checkpoint names the backbone it was made for: the fp32 one it was cast from (no refusal on loading)
    model = PromptedModel.from_pretrained(tmp_path / "run", backbone=str(tiny_backbone_folder))
    assert next(model.backbone.parameters()).dtype == torch.float32


@pytest.mark.numerics
def test_a_bf16_backbone_answers_like_the_fp32_one_and_keeps_prompt_and_head_fp32(tiny_backbone_folder):
    torch.manual_seed(0)
    model = PromptedModel.from_backbone(
        str(tiny_backbone_folder), "token-classification", num_labels=3, prompt=PromptConfig(length=4, dropout=0.0)
    ).eval()
    ids = torch.randint(5, 1000, (2, 7))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        fingerprint = model.backbone_fingerprint()
        model.cast_backbone(torch.bfloat16)
        half = model(input_ids=ids).logits
    assert next(model.backbone.parameters()).dtype == torch.bfloat16
    assert model.prompts["default"].table.dtype == torch.float32 and half.dtype == torch.float32
    assert model.backbone_fingerprint() == fingerprint
    assert (half - full).abs().max().item() < 0.1  # bf16 keeps ~3 significant digits


def test_a_finetuned_backbone_is_not_cast(tiny_backbone_folder):
    model = PromptedModel.from_backbone(
        str(tiny_backbone_folder), "sequence-classification", num_labels=2, prompt=PromptConfig(method="finetune")
    )
    with pytest.raises(PtuningError, match="fine-tuning trains the backbone"):
        model.cast_backbone(torch.bfloat16)


def test_eval_and_predict_run_where_told(tiny_runs, tmp_path, capsys):
    lines = tmp_path / "in.txt"
    lines.write_text("Peter visited Oslo\n")
    assert main(["predict", str(tiny_runs / "ner"), "--device", "cpu", "--input", str(lines)]) == 0
    assert json.loads(capsys.readouterr().out)["words"] == ["Peter", "visited", "Oslo"]
    assert main(["eval", str(tiny_runs / "ner"), "--device", "cpu", "--test", str(tiny_runs / "ner.conll")]) == 0
    assert "f1" in json.loads(capsys.readouterr().out)


@pytest.mark.numerics
def test_eval_and_predict_in_bf16_answer_like_fp32(tiny_runs, tmp_path, capsys):
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"task": "ner", "text": "Peter visited Oslo"}\n{"task": "sent", "text": "a good film"}\n')
    answers = {}
    for precision in ("fp32", "bf16"):
        sources = [f"ner={tiny_runs / 'ner'}", f"sent={tiny_runs / 'sent'}"]
        assert main(["predict", *sources, "--precision", precision, "--input", str(lines)]) == 0
        answers[precision] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        test = ["--test", str(tiny_runs / "ner.conll")]
        assert main(["eval", str(tiny_runs / "ner"), "--precision", precision, *test]) == 0
        answers[precision].append(json.loads(capsys.readouterr().out))
    full, half = answers["fp32"], answers["bf16"]
    assert full[0]["tags"] == half[0]["tags"] and full[1]["label"] == half[1]["label"]
    assert abs(full[1]["probabilities"][full[1]["label"]] - half[1]["probabilities"][half[1]["label"]]) < 0.05
    assert full[2]["f1"] == pytest.approx(half[2]["f1"], abs=1e-6)  # the tiny model's tags are the same either way


def test_inference_precisions_the_device_lacks_are_refused_before_loading(tiny_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(PromptedModel, "from_pretrained", lambda *args, **kwargs: pytest.fail("a checkpoint loaded"))
    lines = tmp_path / "in.txt"
    lines.write_text("Peter visited Oslo\n")
    commands = [
        ["predict", str(tiny_runs / "ner"), "--input", str(lines)],
        ["eval", str(tiny_runs / "ner"), "--test", str(tiny_runs / "ner.conll")],
        ["serve", str(tiny_runs / "ner")],
    ]
    for command in commands:
        assert main([*command, "--device", "cpu", "--precision", "fp16"]) == 2
        assert "--precision fp16 needs a GPU (CUDA or MPS); on a CPU use bf16 or fp32" in capsys.readouterr().err


def test_a_finetuned_checkpoint_is_not_cast_for_inference(tiny_backbone_folder, tmp_path, capsys):
    model = PromptedModel.from_backbone(
        str(tiny_backbone_folder),
        "sequence-classification",
        labels=["neg", "pos"],
        prompt=PromptConfig(method="finetune"),
    )
    model.save_pretrained(tmp_path / "run" / "checkpoint")
    lines = tmp_path / "in.txt"
    lines.write_text("a good film\n")
    assert main(["predict", str(tmp_path / "run"), "--precision", "bf16", "--input", str(lines)]) == 2
    assert "fine-tuning trains the backbone" in capsys.readouterr().err
