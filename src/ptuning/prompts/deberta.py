"""Deep prompts for DeBERTa and DeBERTa-v2/v3, whose disentangled attention bypasses the AttentionInterface.

As in the P-Tuning v2 reference code, the prompt keys join the content-to-content scores only (scaled
like them); the relative-position terms (c2p, p2c) are computed for the text exactly as the model does
and are zero in the prompt columns; the prompt columns are always visible and the prompt values join the
weighted sum. The projections are left alone (with ``share_att_key`` they also project the relative
embeddings): the prompt is prepended after them.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from transformers.models.deberta import modeling_deberta as v1
from transformers.models.deberta_v2 import modeling_deberta_v2 as v2

from ..errors import UnsupportedModelError
from .attention import current_prompts, extend_mask


def _v1_parts(module, hidden_states, query_states, relative_pos, rel_embeddings):
    """DeBERTa: query (divided by the score scale), key, value, each (batch, heads, length, head_dim), and the
    relative-position bias of the text (batch, heads, query, key) or None."""

    def project(states):  # in_proj holds q, k, v interleaved per head
        return module.transpose_for_scores(module.in_proj(states)).chunk(3, dim=-1)

    query, key, value = project(hidden_states)
    if query_states is not None:
        query = project(query_states)[0]
    query = query + module.transpose_for_scores(module.q_bias[None, None, :])
    value = value + module.transpose_for_scores(module.v_bias[None, None, :])
    scale_factor = 1 + len(module.pos_att_type)
    query = query / v1.scaled_size_sqrt(query, scale_factor).to(dtype=query.dtype)
    bias = None
    if module.relative_attention and rel_embeddings is not None and relative_pos is not None:
        rel_embeddings = module.pos_dropout(rel_embeddings)
        bias = module.disentangled_att_bias(query, key, relative_pos, rel_embeddings, scale_factor)
    return query, key, value, bias


def _v2_parts(module, hidden_states, query_states, relative_pos, rel_embeddings):
    """DeBERTa-v2/v3: as :func:`_v1_parts`; the model itself works on (batch * heads, length, head_dim)."""
    heads = module.num_attention_heads

    def project(linear, states):
        return module.transpose_for_scores(linear(states), heads)

    query = project(module.query_proj, hidden_states if query_states is None else query_states)
    key = project(module.key_proj, hidden_states)
    value = project(module.value_proj, hidden_states)
    scale_factor = 1 + len({"c2p", "p2c"} & set(module.pos_att_type))
    bias = None
    if module.relative_attention:  # takes the unscaled query, scales its terms itself
        rel_embeddings = module.pos_dropout(rel_embeddings)
        bias = module.disentangled_attention_bias(query, key, relative_pos, rel_embeddings, scale_factor)
    query = query / v2.scaled_size_sqrt(query, scale_factor).to(dtype=query.dtype)

    def unflatten(tensor):
        return tensor.view(-1, heads, *tensor.shape[1:])

    bias = unflatten(bias) if torch.is_tensor(bias) else None
    return unflatten(query), unflatten(key), unflatten(value), bias


def _forward(
    self,
    hidden_states,
    attention_mask,
    output_attentions=False,
    query_states=None,
    relative_pos=None,
    rel_embeddings=None,
):
    """DisentangledSelfAttention.forward with this layer's prompt keys/values prepended, if any."""
    prompts = current_prompts()
    if prompts is None:
        return type(self).forward(
            self, hidden_states, attention_mask, output_attentions, query_states, relative_pos, rel_embeddings
        )
    parts = _v1_parts if isinstance(self, v1.DisentangledSelfAttention) else _v2_parts
    # query, key, value (batch, heads, T, head_dim); bias (batch, heads, T, T) or None
    query, key, value, bias = parts(self, hidden_states, query_states, relative_pos, rel_embeddings)
    prompt = prompts.take(self, key, value)
    if prompt is None:
        return type(self).forward(
            self, hidden_states, attention_mask, output_attentions, query_states, relative_pos, rel_embeddings
        )
    prompt_key, prompt_value = prompt.key.to(key.dtype), prompt.value.to(value.dtype)  # (batch, heads, P, head_dim)
    length = prompt_key.shape[2]

    scores = torch.matmul(query, torch.cat([prompt_key, key], dim=2).transpose(-1, -2))  # (batch, heads, T, P + T)
    if bias is not None:  # no relative position between the text and the prompt
        scores = scores + nn.functional.pad(bias, (length, 0))
    talking_logits, talking_weights = getattr(self, "head_logits_proj", None), getattr(self, "head_weights_proj", None)
    if talking_logits is not None:
        scores = talking_logits(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    mask = extend_mask(attention_mask.bool(), length, prompt.visible)  # (batch, 1, T, P + T)
    probs = self.dropout(nn.functional.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=-1))
    if talking_weights is not None:
        probs = talking_weights(probs.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    context = torch.matmul(probs, torch.cat([prompt_value, value], dim=2)).transpose(1, 2).flatten(2)  # (batch, T, H)
    return context, (probs if output_attentions else None)


def install(backbone: nn.Module) -> None:
    """Give every disentangled attention of ``backbone`` the prompt-aware forward (idempotent)."""
    modules = [
        module
        for module in backbone.modules()
        if isinstance(module, (v1.DisentangledSelfAttention, v2.DisentangledSelfAttention))
    ]
    if not modules:
        raise UnsupportedModelError(f"{type(backbone).__name__} has no DeBERTa disentangled attention to prompt")
    for module in modules:
        if getattr(module.forward, "__func__", None) is not _forward:
            module.forward = types.MethodType(_forward, module)
