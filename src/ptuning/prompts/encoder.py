"""The prompt table: trained directly or produced by a reparameterization, folded for inference.

One table serves every prompted method: ``deep`` reads it as per-layer keys/values, ``shallow`` and
``ptuning-v1`` as input embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import PromptConfig


class PromptEncoder(nn.Module):
    """A ``(length, width)`` table of prompt vectors.

    Flat: an ``nn.Parameter`` (N(0, 1) like the reference code's ``nn.Embedding``, unless ``initial`` is
    given). Reparameterized (``config.reparam``): Embedding -> [bidirectional 2-layer LSTM if ``lstm``] -> Linear ->
    ``activation`` -> Linear; the prompt method picks the activation (Tanh: P-Tuning v2's deep MLP; ReLU: P-tuning
    v1's). ``folded=True`` builds the flat form a saved checkpoint holds.
    """

    def __init__(
        self,
        config: PromptConfig,
        width: int,
        embedding_dim: int,
        initial: torch.Tensor | None = None,
        folded: bool = False,
        activation: type[nn.Module] = nn.Tanh,
    ):
        super().__init__()
        self.reparam = None if folded else config.reparam
        hidden = config.reparam_hidden
        if self.reparam is None:
            # (length, width)
            self.table = nn.Parameter(initial.clone() if initial is not None else torch.randn(config.length, width))
        else:
            self.embedding = nn.Embedding(config.length, embedding_dim)
            mlp_input = embedding_dim
            if self.reparam == "lstm":
                self.lstm = nn.LSTM(embedding_dim, hidden // 2, num_layers=2, bidirectional=True, batch_first=True)
                mlp_input = 2 * (hidden // 2)
            self.mlp = nn.Sequential(nn.Linear(mlp_input, hidden), activation(), nn.Linear(hidden, width))
        self.dropout = nn.Dropout(config.dropout)

    def folded_table(self) -> torch.Tensor:
        """The flat table this encoder represents, ``(length, width)``."""
        if self.reparam is None:
            return self.table  # (length, width)
        vectors = self.embedding.weight  # (length, embedding_dim)
        if self.reparam == "lstm":
            vectors = self.lstm(vectors.unsqueeze(0))[0].squeeze(0)  # (length, 2 * (hidden // 2))
        return self.mlp(vectors)  # (length, width)

    def forward(self) -> torch.Tensor:
        table = self.folded_table()  # (length, width)
        return self.dropout(table) if self.training else table  # eval: no copy of the table per forward


def split_key_values(
    table: torch.Tensor, layers: list[int], kv_heads: int, head_dim: int, batch_size: int
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Read a ``(length, layers * 2 * kv_heads * head_dim)`` table as per-layer (key, value) pairs.

    Column order is layer, then key/value, then head, then head dim (PEFT's prefix-tuning order too).
    Each tensor is ``(batch, kv_heads, length, head_dim)``, a broadcast view: no copy per example.
    """
    length = table.shape[0]
    per_layer = table.view(length, len(layers), 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)  # (L, 2, kvh, P, hd)
    shape = (batch_size, kv_heads, length, head_dim)
    return {  # each (batch, kvh, P, hd), a view
        layer: (per_layer[i, 0].unsqueeze(0).expand(shape), per_layer[i, 1].unsqueeze(0).expand(shape))
        for i, layer in enumerate(layers)
    }


def gather_key_values(
    prompts: list[tuple[torch.Tensor, list[int]]], rows: torch.Tensor, kv_heads: int, head_dim: int
) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], dict[int, torch.Tensor | None]]:
    """Per-layer (key, value) for a batch mixing prompts: example ``i`` reads ``prompts[rows[i]]`` (a row equal to
    ``len(prompts)`` reads none), each prompt a ``(length, layers * 2 * kv_heads * head_dim)`` table and its layers.

    In each layer the prompts are left-padded to the longest that reaches it; ``visible[layer]`` is
    ``(batch, longest)``, True on each example's real columns (None where every column of every example is real),
    so the attention masks the padding: a zero key would still take softmax weight. Per layer, the prompts are
    stacked once and indexed per example.
    """
    by_prompt = []
    for table, layers in prompts:
        length = table.shape[0]
        per_layer = table.view(length, len(layers), 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)  # (L, 2, kvh, P, hd)
        by_prompt.append(dict(zip(layers, per_layer, strict=True)))
    template = prompts[0][0]  # (P, layers * 2 * kvh * hd): the dtype and device of every bank
    key_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    visible: dict[int, torch.Tensor | None] = {}
    for layer in sorted({layer for _, layers in prompts for layer in layers}):
        longest = max(by_layer[layer].shape[2] for by_layer in by_prompt if layer in by_layer)
        # row i: prompt i left-padded with zeros; the last row, and a prompt that skips this layer, stay all zeros
        bank = template.new_zeros(len(prompts) + 1, 2, kv_heads, longest, head_dim)  # (n+1, 2, kvh, longest, hd)
        starts = [longest - by_layer[layer].shape[2] if layer in by_layer else longest for by_layer in by_prompt]
        for index, (by_layer, start) in enumerate(zip(by_prompt, starts, strict=True)):
            if layer in by_layer:
                bank[index, :, :, start:] = by_layer[layer]  # (2, kvh, P, hd)
        first_real = torch.tensor([*starts, longest], device=template.device)  # (n+1,)
        open_bank = torch.arange(longest, device=template.device) >= first_real[:, None]  # (n+1, longest)
        picked = bank.index_select(0, rows)  # (batch, 2, kvh, longest, hd)
        key_values[layer] = (picked[:, 0], picked[:, 1])  # each (batch, kvh, longest, hd)
        opened = open_bank.index_select(0, rows)  # (batch, longest)
        visible[layer] = None if bool(opened.all()) else opened
    return key_values, visible
