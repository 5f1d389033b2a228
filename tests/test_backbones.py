"""Backbone aliases: the packaged MiniLM, and all-mpnet-base-v2 fetched by ``make backbones`` (the study's second
scale; not needed by the tests, so its real-model check runs only where it was fetched)."""

from __future__ import annotations

import pytest
import torch

from ptuning import PromptConfig, PromptedModel, PtuningError
from ptuning.backbones import MPNET_FOLDER, backbones_home, resolve


def test_mpnet_alias_says_how_to_fetch_it_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PTUNING_BACKBONES", str(tmp_path))
    with pytest.raises(PtuningError, match=f"alias 'mpnet-base' needs all-mpnet-base-v2 in {tmp_path}.*make backbones"):
        resolve("mpnet-base")


@pytest.mark.skipif(
    not (backbones_home() / MPNET_FOLDER / "model.safetensors").is_file(), reason="make backbones has not run here"
)
def test_mpnet_base_takes_a_deep_prompt_in_every_layer():
    torch.manual_seed(0)
    model = PromptedModel.from_backbone("mpnet-base", "token-classification", num_labels=3,
                                        prompt=PromptConfig(length=4, dropout=0.0)).eval()  # fmt: skip
    assert model.backbone.config.num_hidden_layers == 12 and model.total_parameters() > 100_000_000
    batch = model.tokenizer(["Peter visited Oslo"], return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
        model.prompts["default"].table.mul_(3.0)
        after = model(**batch).logits
    assert (before - after).abs().max().item() > 1e-4  # the prompt reaches the output
