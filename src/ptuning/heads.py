"""Task heads (randomly initialized linear layers) and how a text becomes one vector."""

from __future__ import annotations

import torch
from torch import nn

from .config import POOLINGS
from .errors import PtuningError

TASKS = ("sequence-classification", "token-classification", "question-answering", "multiple-choice", "causal-lm")
# Tasks whose head outputs a fixed number of scores rather than one per label name.
HEAD_WIDTH = {"question-answering": 2, "multiple-choice": 1}


class LinearHead(nn.Module):
    """Dropout and a linear layer, on a pooled vector (one label per text) or on every token."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))


def check_pooling(pooling: str, backbone: nn.Module) -> None:
    if pooling not in POOLINGS:
        raise PtuningError(f"unknown pooling {pooling!r}; supported: {', '.join(POOLINGS)}")
    if pooling == "pooler" and getattr(backbone, "pooler", None) is None:
        raise PtuningError(f"pooling 'pooler' needs a backbone with a pooler; {type(backbone).__name__} has none")
    untrained = sorted(key for key in getattr(backbone, "untrained_keys", ()) if "pooler." in key)
    if pooling == "pooler" and untrained:
        raise PtuningError(
            f"the backbone has no trained pooler weights ({', '.join(untrained)} missing), so pooling 'pooler' "
            "would be freshly random on every load; use pooling 'cls' or 'mean'"
        )


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str, backbone: nn.Module) -> torch.Tensor:
    """One vector per text: first token, mean of real tokens, last real token (decoders), or the backbone's pooler."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "pooler":
        return backbone.pooler(hidden)
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    if pooling == "mean":
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (attention_mask.to(torch.long) * positions).argmax(1)  # last real token, left or right padding
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
