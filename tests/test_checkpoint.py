"""Saving only the trainable part, restoring it, and refusing checkpoints that do not fit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_batch, tiny_backbone

from ptuning import CheckpointError, PromptConfig, PromptedModel
from ptuning.model import CONFIG_NAME, WEIGHTS_NAME


def trained_like(task="token-classification") -> PromptedModel:
    torch.manual_seed(0)
    model = PromptedModel.from_backbone(
        tiny_backbone("bert"), task, labels=["B-PER", "I-PER", "O"], prompt=PromptConfig(length=4)
    )
    with torch.no_grad():
        model.head.classifier.bias.add_(torch.tensor([0.3, -0.2, 0.1]))
    return model.eval()


def test_round_trip_gives_identical_predictions(tmp_path):
    model = trained_like()
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path)
    restored = PromptedModel.from_pretrained(tmp_path, backbone=tiny_backbone("bert")).eval()
    with torch.no_grad():
        after = restored(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(before, after)
    assert restored.labels == ["B-PER", "I-PER", "O"] and restored.task == "token-classification"


def test_checkpoint_holds_only_the_trainable_part(tmp_path):
    model = trained_like()
    model.save_pretrained(tmp_path, extra={"reader": {"format": "conll", "tag_column": 3}})
    weights = (tmp_path / WEIGHTS_NAME).stat().st_size
    assert weights < 4 * (model.trainable_parameters() + 200)  # float32 plus the safetensors header
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["backbone_shape"]["model_type"] == "bert" and config["backbone"] is None
    assert config["prompt"]["length"] == 4 and config["extra"]["reader"]["tag_column"] == 3


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
    with pytest.warns(UserWarning, match="other embedding weights"):
        PromptedModel.from_pretrained(tmp_path, backbone=other)


def test_missing_or_broken_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="is missing"):
        PromptedModel.from_pretrained(tmp_path, backbone=tiny_backbone())
    trained_like().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="pass backbone="):
        PromptedModel.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PromptedModel.from_pretrained(tmp_path, backbone=tiny_backbone())
