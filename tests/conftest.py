"""Tiny randomly initialized backbones of every supported architecture, and shared helpers."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    ElectraConfig,
    ElectraModel,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

ARCHITECTURES = {
    "bert": (BertConfig, BertModel),
    "roberta": (RobertaConfig, RobertaModel),
    "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel),
    "electra": (ElectraConfig, ElectraModel),
}
VOCAB = 120
PAD = 1


def tiny_backbone(model_type: str = "bert", attn_implementation: str = "sdpa", **overrides):
    config_class, model_class = ARCHITECTURES[model_type]
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=PAD,
        attn_implementation=attn_implementation,
    )
    if model_type == "electra":
        settings["embedding_size"] = 24
    settings.update(overrides)
    torch.manual_seed(0)
    return model_class(config_class(**settings)).eval()


def random_batch(batch_size: int = 3, length: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with ragged padding (row i loses i tokens at the end)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch_size):
        if row:
            input_ids[row, length - row :] = PAD
            attention_mask[row, length - row :] = 0
    return input_ids, attention_mask


@pytest.fixture(params=[(arch, impl) for arch in ARCHITECTURES for impl in ("sdpa", "eager")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def arch_impl(request) -> tuple[str, str]:
    return request.param


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from ptuning.backbones import load_tokenizer

    return load_tokenizer("minilm-l6")
