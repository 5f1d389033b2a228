"""Saving only the trainable part, restoring it, and refusing checkpoints that do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_close, random_batch, tiny_backbone
from safetensors.torch import load_file
from transformers import BertModel

from ptuning import CheckpointError, PromptConfig, PromptedModel, PtuningError
from ptuning.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointConfig, TaskRecord, migrate, read_task
from ptuning.data.formats import ConllFormat, SquadFormat, SrlFormat

FORMAT1 = Path(__file__).parent / "data" / "format1"


def format1_backbone() -> BertModel:
    """The tiny BERT the format-1 checkpoints were written on, as saved: where PyTorch draws ``normal_`` without its
    AVX2 kernel (``ATEN_CPU_CAPABILITY=default``), ``tiny_backbone("bert")`` differs in the last bits, and the
    checkpoints' backbone fingerprint rightly refuses it."""
    backbone = tiny_backbone("bert")
    backbone.load_state_dict(load_file(str(FORMAT1 / "backbone.safetensors")))
    return backbone


def assert_logits_as_recorded(logits: torch.Tensor, expected: torch.Tensor) -> None:
    """The recorded labels (argmax) exactly and the logits to 1e-5: they were written on another CPU."""
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    assert_close(logits, expected)


def trained_like(task="token-classification") -> PromptedModel:
    torch.manual_seed(0)
    model = PromptedModel.from_backbone(
        tiny_backbone("bert"), task, labels=["B-PER", "I-PER", "O"], prompt=PromptConfig(length=4)
    )
    with torch.no_grad():
        model.head.classifier.bias.add_(torch.tensor([0.3, -0.2, 0.1]))
    return model.eval()


@pytest.mark.numerics
def test_round_trip_gives_identical_predictions(tmp_path):
    model = trained_like()
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path)
    restored = PromptedModel.from_pretrained(tmp_path, backbone=tiny_backbone("bert")).eval()
    with torch.no_grad():
        after = restored(input_ids=input_ids, attention_mask=attention_mask).logits
    # one process, the same kernels on the same shapes, and safetensors keeps fp32 bits: nothing may change
    assert torch.equal(before, after)
    assert restored.labels == ["B-PER", "I-PER", "O"] and restored.kind == "token-classification"


def test_checkpoint_holds_only_the_trainable_part(tmp_path):
    model = trained_like()
    model.tasks["default"].data = ConllFormat(tag_column=3)
    model.save_pretrained(tmp_path)
    weights = (tmp_path / WEIGHTS_NAME).stat().st_size
    assert weights < 4 * (model.trainable_parameters() + 200)  # float32 plus the safetensors header
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["ptuning_format"] == 3 and config["backbone_shape"]["model_type"] == "bert"
    assert config["backbone"] is None and config["prompts"]["default"]["length"] == 4
    task = config["tasks"]["default"]
    assert task["kind"] == "token-classification" and task["prompt"] == "default"
    assert task["data"]["tag_column"] == 3 and task["family"] is None and task["options"] == {}
    assert set(load_file(str(tmp_path / WEIGHTS_NAME))) == {
        "prompts.default.table",
        "heads.default.classifier.weight",
        "heads.default.classifier.bias",
    }


def test_backbone_of_another_shape_is_refused(tmp_path):
    trained_like().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="hidden_size: checkpoint 32, backbone 48"):
        PromptedModel.from_pretrained(tmp_path, backbone=tiny_backbone("bert", hidden_size=48))
    with pytest.raises(CheckpointError, match="model_type: checkpoint bert, backbone roberta"):
        PromptedModel.from_pretrained(tmp_path, backbone=tiny_backbone("roberta"))


def test_same_shape_other_weights_warns(tmp_path):
    trained_like().save_pretrained(tmp_path)
    other = tiny_backbone("bert")
    with torch.no_grad():
        other.embeddings.word_embeddings.weight.mul_(1.5)
    with pytest.warns(UserWarning, match="embedding weights differ"):
        PromptedModel.from_pretrained(tmp_path, backbone=other)  # a backbone passed on purpose: warned
    model = PromptedModel(other, None)
    with pytest.raises(CheckpointError, match="embedding weights differ.*cannot share this backbone"):
        model.load_task(tmp_path)  # onto a backbone that serves other tasks: refused
    assert model.task_names == []


def test_missing_or_broken_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="is missing"):
        PromptedModel.from_pretrained(tmp_path, backbone=tiny_backbone())
    trained_like().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="pass backbone="):
        PromptedModel.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PromptedModel.from_pretrained(tmp_path, backbone=tiny_backbone())


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["ner", "sent", "probe"])
def test_format_1_checkpoints_predict_as_before(name, tmp_path):
    """Checkpoints written before format 2 (tests/data/format1) give the labels they gave then and the logits to
    1e-5, and re-save as 2."""
    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    expected = load_file(str(FORMAT1 / "logits.safetensors"))[name]
    model = PromptedModel.from_pretrained(FORMAT1 / name, backbone=format1_backbone()).eval()
    with torch.no_grad():
        assert_logits_as_recorded(model(input_ids=input_ids, attention_mask=attention_mask).logits, expected)
    record = model.tasks["default"]
    assert model.task_names == ["default"] and record.data == ConllFormat(tag_column=-1)
    assert record.family_name == record.kind and record.dataset is None and record.options == {}
    model.save_pretrained(tmp_path)
    again = PromptedModel.from_pretrained(tmp_path, backbone=format1_backbone()).eval()
    with torch.no_grad():
        assert_logits_as_recorded(again(input_ids=input_ids, attention_mask=attention_mask).logits, expected)


def test_unknown_format_version_is_refused(tmp_path):
    trained_like().save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "ptuning_format": 4}))
    with pytest.raises(CheckpointError, match="format 4; this ptuning reads formats 1 to 3"):
        PromptedModel.from_pretrained(tmp_path, backbone=tiny_backbone())


@pytest.mark.numerics
def test_several_checkpoints_share_one_backbone(tmp_path):
    """Each task loaded onto the backbone answers as its own checkpoint did; the backbone is held once."""
    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    logits = load_file(str(FORMAT1 / "logits.safetensors"))
    model = PromptedModel.from_pretrained(
        {"ner": FORMAT1 / "ner", "sent": FORMAT1 / "sent"}, backbone=format1_backbone()
    )
    assert model.load_task(FORMAT1 / "probe", name="probe") == ["probe"]
    assert model.task_names == ["ner", "sent", "probe"]
    backbone_parameters = sum(p.numel() for p in model.backbone.parameters())
    stored = sum(p.numel() for p in model.prompts.parameters()) + sum(p.numel() for p in model.heads.parameters())
    assert model.total_parameters() == backbone_parameters + stored
    model.eval()
    for name in model.task_names:
        with torch.no_grad():
            assert_logits_as_recorded(
                model.use(name)(input_ids=input_ids, attention_mask=attention_mask).logits, logits[name]
            )
    with pytest.raises(PtuningError, match="a task named .ner. is loaded already"):
        model.load_task(FORMAT1 / "ner", name="ner")
    model.save_pretrained(tmp_path)  # format 2 holds all three, and loads back whole
    again = PromptedModel.from_pretrained(tmp_path, backbone=format1_backbone()).eval()
    assert again.task_names == ["ner", "sent", "probe"] and again.tasks["sent"].labels == ["neg", "pos"]
    with torch.no_grad():
        assert_logits_as_recorded(
            again.use("sent")(input_ids=input_ids, attention_mask=attention_mask).logits, logits["sent"]
        )


def test_a_model_of_several_tasks_needs_a_task_named(tmp_path):
    model = PromptedModel.from_pretrained(
        {"ner": FORMAT1 / "ner", "sent": FORMAT1 / "sent"}, backbone=format1_backbone()
    )
    with pytest.raises(PtuningError, match=r"several tasks \(ner, sent\): choose one with model.use"):
        _ = model.labels
    with pytest.raises(PtuningError, match="no task named 'pos'; loaded: ner, sent"):
        model.use("pos")


def test_a_checkpoint_whose_weights_do_not_match_leaves_the_model_as_it_was(tmp_path):
    trained_like().save_pretrained(tmp_path / "good")
    bad = tmp_path / "bad"
    trained_like().save_pretrained(bad)
    weights = load_file(str(bad / WEIGHTS_NAME))
    weights["heads.default.classifier.weight"] = weights["heads.default.classifier.weight"][:2]
    from safetensors.torch import save_file

    save_file(weights, str(bad / WEIGHTS_NAME))
    model = PromptedModel.from_pretrained({"good": tmp_path / "good"}, backbone=tiny_backbone())
    with pytest.raises(CheckpointError, match=r"does not match its config: \['heads.default.classifier.weight"):
        model.load_task(bad, name="bad")
    assert model.task_names == ["good"] and list(model.prompts) == ["good"] and list(model.heads) == ["good"]


FORMAT_2_QA = {
    "ptuning_format": 2,
    "backbone": "minilm-l6",
    "backbone_shape": {"model_type": "bert", "hidden_size": 32},
    "backbone_fingerprint": 1.5,
    "prompts": {"qa": {"method": "deep", "length": 4}},
    "tasks": {
        "qa": {
            "kind": "question-answering",
            "prompt": "qa",
            "labels": [],
            "pooling": "cls",
            "extra": {
                "reader": {"format": "squad", "options": {"version_2": True}},
                "dataset": None,
                "max_length": 128,
                "task_name": "question-answering",
                "task_options": {"null_threshold": 0.5},
                "imported_from": {"peft_adapter": "/adapters/qa"},
            },
        },
        "ner": {"kind": "token-classification", "prompt": "qa", "labels": ["O"], "pooling": "cls", "extra": {}},
    },
}


def test_format_2_migrates_to_typed_task_records():
    """Each task's untyped ``extra`` becomes fields: the reader without its options is the data format, the
    reader's options and task_options (over them) the family's options."""
    migrated = migrate(json.loads(json.dumps(FORMAT_2_QA)), "config.json")
    assert migrated == {
        "ptuning_format": 3,
        "backbone": "minilm-l6",
        "backbone_shape": {"model_type": "bert", "hidden_size": 32},
        "backbone_fingerprint": 1.5,
        "prompts": {"qa": {"method": "deep", "length": 4}},
        "tasks": {
            "qa": {
                "kind": "question-answering",
                "prompt": "qa",
                "labels": [],
                "pooling": "cls",
                "family": "question-answering",
                "data": {"format": "squad"},
                "dataset": None,
                "max_length": 128,
                "options": {"version_2": True, "null_threshold": 0.5},
            },
            "ner": {
                "kind": "token-classification",
                "prompt": "qa",
                "labels": ["O"],
                "pooling": "cls",
                "family": None,
                "data": None,
                "dataset": None,
                "max_length": None,
                "options": {},
            },
        },
        "imported_from": {"peft_adapter": "/adapters/qa"},
    }
    config = CheckpointConfig.from_dict(migrated)
    assert (
        config.tasks["qa"].family_name == "question-answering"
        and config.tasks["ner"].family_name == "token-classification"
    )


def test_format_1_migrates_through_format_2():
    raw = json.loads((FORMAT1 / "sent" / CONFIG_NAME).read_text())
    migrated = migrate(raw, "sent")
    assert migrated["ptuning_format"] == 3 and list(migrated["prompts"]) == list(migrated["tasks"]) == ["default"]
    assert migrated["tasks"]["default"] == {
        "kind": "sequence-classification",
        "prompt": "default",
        "labels": ["neg", "pos"],
        "pooling": "mean",
        "family": "sequence-classification",
        "data": {"format": "conll", "tag_column": -1},
        "dataset": None,
        "max_length": None,
        "options": {},
    }
    with pytest.raises(CheckpointError, match=r"lacks \['labels'\]"):
        migrate({key: value for key, value in raw.items() if key != "labels"}, "sent")


def test_format_3_round_trip(tmp_path):
    config = CheckpointConfig(
        backbone="minilm-l6",
        backbone_shape={"model_type": "bert", "hidden_size": 32},
        backbone_fingerprint=-4.5,
        prompts={"shared": PromptConfig(length=3, layers=[0, 2]), "probe": PromptConfig(method="linear-probe")},
        tasks={
            "shared": TaskRecord(
                "question-answering",
                "shared",
                [],
                "cls",
                family="question-answering",
                data=SquadFormat(),
                dataset="conll2003-qa",
                max_length=64,
                options={"version_2": True},
            ),
            "srl": TaskRecord("token-classification", "shared", ["O", "B-V"], "cls", family="srl", data=SrlFormat()),
            "probe": TaskRecord("sequence-classification", "probe", ["a", "b"], "mean"),
        },
        imported_from={"peft_adapter": "/a"},
    )
    config.save(tmp_path)
    again = CheckpointConfig.read(tmp_path)
    assert again == CheckpointConfig.from_dict(json.loads(config.to_json()))
    assert again.to_json() == config.to_json() and again.tasks["srl"].family_name == "srl"
    assert read_task(tmp_path, "probe").labels == ["a", "b"]
    with pytest.raises(PtuningError, match="holds the tasks shared, srl, probe: name one"):
        read_task(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**json.loads(config.to_json()), "comment": 1}))
    with pytest.raises(CheckpointError, match=r"unknown checkpoint config keys \['comment'\]"):
        CheckpointConfig.read(tmp_path)
