"""Which backbones can receive prompts, their attention geometry, and their position ids.

An architecture is listed only once a test proves that its prompts change its output and match
transformers' own cache route; everything else is refused by name.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from .errors import UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra")


def check_supported(config: PretrainedConfig) -> None:
    model_type = getattr(config, "model_type", None) or type(config).__name__
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported for prompt injection; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if getattr(config, "is_decoder", False):
        raise UnsupportedModelError(
            f"{model_type!r} configured as a decoder (is_decoder=True) is not supported; use it as an encoder"
        )


def attention_geometry(config: PretrainedConfig) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of the self-attention that prompts join."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def first_text_position(backbone: nn.Module) -> int:
    """Position id of the first text token: RoBERTa-style models start after their padding index."""
    embeddings = backbone.embeddings
    if hasattr(embeddings, "create_position_ids_from_input_ids"):
        return embeddings.padding_idx + 1
    return 0


def max_text_length(backbone: nn.Module, shift: int) -> int:
    """How many tokens fit the position table when text positions are shifted by ``shift``."""
    return backbone.config.max_position_embeddings - first_text_position(backbone) - shift


def shifted_position_ids(backbone: nn.Module, input_ids: torch.Tensor, shift: int) -> torch.Tensor:
    """The model's default position ids moved ``shift`` places on, as the reference code's prefix does."""
    embeddings = backbone.embeddings
    if hasattr(embeddings, "create_position_ids_from_input_ids"):
        return embeddings.create_position_ids_from_input_ids(input_ids, embeddings.padding_idx, shift)
    length = input_ids.shape[1]
    return torch.arange(shift, shift + length, device=input_ids.device).expand(input_ids.shape[0], length)
