"""The prompt table: flat or MLP-reparameterized, turned into per-layer (key, value) pairs."""

from __future__ import annotations

import torch
from torch import nn

from ..config import PromptConfig


class DeepPromptEncoder(nn.Module):
    """Produces, for each prompted layer, key and value tensors of shape (batch, kv_heads, length, head_dim).

    The flat form is a ``(length, layers * 2 * kv_heads * head_dim)`` table initialized N(0, 1) like the
    reference code's ``nn.Embedding``. The MLP form (``reparam="mlp"``) computes that same table from a
    ``(length, hidden)`` embedding; :meth:`folded_table` evaluates it once for saving and inference.
    """

    def __init__(
        self, config: PromptConfig, num_layers: int, num_kv_heads: int, head_dim: int, folded: bool = False
    ):
        super().__init__()
        self.config = config
        self.layers = config.prompted_layers(num_layers)
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        width = len(self.layers) * 2 * num_kv_heads * head_dim
        self.uses_mlp = config.reparam == "mlp" and not folded
        if self.uses_mlp:
            hidden = num_kv_heads * head_dim
            self.embedding = nn.Embedding(config.length, hidden)
            self.mlp = nn.Sequential(
                nn.Linear(hidden, config.reparam_hidden), nn.Tanh(), nn.Linear(config.reparam_hidden, width)
            )
        else:
            self.table = nn.Parameter(torch.randn(config.length, width))
        self.dropout = nn.Dropout(config.dropout)

    def folded_table(self) -> torch.Tensor:
        """The flat table this encoder represents, ``(length, layers * 2 * kv_heads * head_dim)``."""
        if self.uses_mlp:
            return self.mlp(self.embedding.weight)
        return self.table

    def forward(self, batch_size: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        table = self.dropout(self.folded_table())
        length = table.shape[0]
        # (length, layers, 2, heads, head_dim) -> (layers, 2, heads, length, head_dim)
        per_layer = table.view(length, len(self.layers), 2, self.num_kv_heads, self.head_dim).permute(1, 2, 3, 0, 4)
        shape = (batch_size, self.num_kv_heads, length, self.head_dim)
        return {
            layer: (per_layer[i, 0].unsqueeze(0).expand(shape), per_layer[i, 1].unsqueeze(0).expand(shape))
            for i, layer in enumerate(self.layers)
        }
