"""Which backbones can receive prompts, how, and their position ids.

An architecture is listed only once tests prove that its prompts change its output, that padding
does not leak, and (where transformers' cache route works) that it matches that route; everything
else is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class Architecture:
    """decoder: causal self-attention (pool the last token, generation possible).
    route: "interface" (transformers' AttentionInterface) or the name of our adapter module.
    mlm_head: an encoder's masked-language-modelling head, the attribute of its ``AutoModelForMaskedLM`` model that
    maps hidden states to vocabulary logits (None: not supported for verbalizer heads); a decoder's is its output
    embeddings."""

    decoder: bool = False
    route: str = "interface"
    mlm_head: str | None = None


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(mlm_head="cls"),
    "roberta": Architecture(mlm_head="lm_head"),
    "xlm-roberta": Architecture(mlm_head="lm_head"),
    "electra": Architecture(),
    "distilbert": Architecture(),
    "albert": Architecture(),
    "modernbert": Architecture(),
    "deberta": Architecture(route="deberta"),
    "deberta-v2": Architecture(route="deberta"),
    "mpnet": Architecture(route="mpnet"),
    "gpt2": Architecture(decoder=True),
    "llama": Architecture(decoder=True),
    "mistral": Architecture(decoder=True),
    "qwen2": Architecture(decoder=True),
}


def model_type_of(config: PretrainedConfig) -> str:
    return getattr(config, "model_type", None) or type(config).__name__


def architecture(config: PretrainedConfig) -> Architecture:
    model_type = model_type_of(config)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported for prompt injection; supported: {', '.join(ARCHITECTURES)}"
        )
    spec = ARCHITECTURES[model_type]
    if getattr(config, "is_decoder", False) and not spec.decoder:
        raise UnsupportedModelError(
            f"{model_type!r} configured as a decoder (is_decoder=True) is not supported; use it as an encoder"
        )
    return spec


def attention_geometry(config: PretrainedConfig) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of the self-attention that prompts join."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def _counts_from_padding(embeddings: nn.Module | None) -> bool:
    """RoBERTa-style position ids (RoBERTa, XLM-R, MPNet): they start after the padding index, which pads keep."""
    return hasattr(embeddings, "create_position_ids_from_inputs_embeds")


def first_text_position(backbone: nn.Module) -> int:
    """Position id of the first text token: RoBERTa-style models start after their padding index."""
    embeddings = getattr(backbone, "embeddings", None)
    if _counts_from_padding(embeddings):
        return embeddings.padding_idx + 1
    return 0


def max_text_length(backbone: nn.Module, taken: int) -> int:
    """How many tokens fit the position table when ``taken`` positions go to the prompt."""
    return backbone.config.max_position_embeddings - first_text_position(backbone) - taken


def shifted_position_ids(backbone: nn.Module, input_ids: torch.Tensor, shift: int | torch.Tensor) -> torch.Tensor:
    """The model's default position ids moved ``shift`` places on, as the reference code's prefix does (an int, or
    (batch, 1) per example when a batch mixes tasks)."""
    embeddings = getattr(backbone, "embeddings", None)
    if _counts_from_padding(embeddings):  # as RoBERTa's create_position_ids_from_input_ids (MPNet's has no shift)
        real = input_ids.ne(embeddings.padding_idx).long()
        return (torch.cumsum(real, dim=1) + shift) * real + embeddings.padding_idx
    length = input_ids.shape[1]
    positions = torch.arange(length, device=input_ids.device) + shift  # (length,) or (batch, length)
    return positions.expand(input_ids.shape[0], length)


def language_model_head(model: nn.Module) -> nn.Module:
    """The module of a model loaded with its language-modelling head (``AutoModelForCausalLM`` or
    ``AutoModelForMaskedLM``) that maps last hidden states (..., hidden) to vocabulary logits (..., vocab)."""
    spec = architecture(model.config)
    if spec.decoder:
        return model.get_output_embeddings()
    if spec.mlm_head is None or not hasattr(model, spec.mlm_head):
        supported = ", ".join(name for name, entry in ARCHITECTURES.items() if entry.decoder or entry.mlm_head)
        raise UnsupportedModelError(
            f"the masked-language-modelling head of {model_type_of(model.config)!r} is not supported for verbalizer "
            f"heads; supported: {supported}"
        )
    return getattr(model, spec.mlm_head)
