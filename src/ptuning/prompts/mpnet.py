"""Deep prompts for MPNet, whose self-attention bypasses the AttentionInterface.

The prompt keys/values are prepended after the projections; the relative position bias is zero in the
prompt columns, which are always visible (the mask gets visible columns in front).
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention

from ..errors import UnsupportedModelError
from .attention import current_prompts, extend_mask, open_mask


def _forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
    """MPNetSelfAttention.forward with this layer's prompt keys/values prepended, if any."""
    prompts = current_prompts()
    if prompts is None:
        return type(self).forward(self, hidden_states, attention_mask, position_bias, output_attentions, **kwargs)
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    # query, key, value: (batch, heads, T, head_dim)
    query, key, value = (proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q, self.k, self.v))
    prompt = prompts.take(self, key, value)
    if prompt is None:
        return type(self).forward(self, hidden_states, attention_mask, position_bias, output_attentions, **kwargs)
    length = prompt.key.shape[2]

    key = torch.cat([prompt.key.to(key.dtype), key], dim=2)  # (batch, heads, P + T, head_dim)
    value = torch.cat([prompt.value.to(value.dtype), value], dim=2)  # (batch, heads, P + T, head_dim)
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.attention_head_size)  # (batch, h, T, P + T)
    if position_bias is not None:  # no relative position between the text and the prompt
        scores = scores + nn.functional.pad(position_bias, (length, 0))
    if attention_mask is None and prompt.visible is not None:
        attention_mask = open_mask(query, hidden_states.shape[1], additive=True)  # (1, 1, T, T)
    if attention_mask is not None:
        scores = scores + extend_mask(attention_mask, length, prompt.visible)  # additive (batch, 1, *, P + T)
    probs = self.dropout(nn.functional.softmax(scores, dim=-1))
    output = self.o(torch.matmul(probs, value).transpose(1, 2).flatten(2))
    return (output, probs) if output_attentions else (output,)


def install(backbone: nn.Module) -> None:
    """Give every MPNet self-attention of ``backbone`` the prompt-aware forward (idempotent)."""
    modules = [module for module in backbone.modules() if isinstance(module, MPNetSelfAttention)]
    if not modules:
        raise UnsupportedModelError(f"{type(backbone).__name__} has no MPNet self-attention to prompt")
    for module in modules:
        if getattr(module.forward, "__func__", None) is not _forward:
            module.forward = types.MethodType(_forward, module)
