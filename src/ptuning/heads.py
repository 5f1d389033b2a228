"""Task heads: randomly initialized linear layers on the backbone's token representations."""

from __future__ import annotations

import torch
from torch import nn

from .errors import PtuningError

TASKS = ("sequence-classification", "token-classification")
POOLINGS = ("cls", "mean")


class SequenceClassificationHead(nn.Module):
    """One label per text, from the first token ("cls") or the mean of the real tokens ("mean")."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = torch.ones_like(hidden[..., 0]) if attention_mask is None else attention_mask.to(hidden.dtype)
            pooled = (hidden * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)
        return self.classifier(self.dropout(pooled))


class TokenClassificationHead(nn.Module):
    """One label per token, as in BERT fine-tuning for NER."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


def make_head(task: str, hidden_size: int, num_labels: int, dropout: float, pooling: str) -> nn.Module:
    if task == "sequence-classification":
        if pooling not in POOLINGS:
            raise PtuningError(f"unknown pooling {pooling!r}; supported: {', '.join(POOLINGS)}")
        return SequenceClassificationHead(hidden_size, num_labels, dropout, pooling)
    if task == "token-classification":
        return TokenClassificationHead(hidden_size, num_labels, dropout)
    raise PtuningError(f"unknown task {task!r}; supported: {', '.join(TASKS)}")
