"""Task heads (randomly initialized linear layers), what each head kind computes, and how a text becomes one
vector. A head kind is defined here once: its width, whether it reads a pooled vector or every token, its loss and
its output class; the model composes them, whatever the backbone and the prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import (
    ModelOutput,
    MultipleChoiceModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .config import POOLINGS
from .errors import PtuningError
from .vocabulary import HeadKind


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last axis; label -100 (sub-tokens, special tokens, padding) is ignored."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def span_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Extractive QA: logits (batch, tokens, 2) score start and end; labels (batch, 2) hold the answer's start and
    end token (0, the first token, when there is none)."""
    start = nn.functional.cross_entropy(logits[..., 0], labels[:, 0])
    return (start + nn.functional.cross_entropy(logits[..., 1], labels[:, 1])) / 2


def choice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multiple choice: logits (batch, choices) compete; labels (batch,) the right choice."""
    return nn.functional.cross_entropy(logits, labels)


@dataclass(frozen=True)
class HeadSpec:
    """What a head kind computes. width: a fixed number of outputs, or None for one per label name. pooled: the
    head reads one vector per text (the pooling's), else every token. choices: inputs are (batch, choices, tokens),
    each choice scored alone."""

    width: int | None
    pooled: bool
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    output: type[ModelOutput]
    choices: bool = False

    @property
    def labelled(self) -> bool:
        return self.width is None


# every head kind but causal-lm, which reads the backbone's own language-modelling head and has no task head
HEAD_KINDS: dict[HeadKind, HeadSpec] = {
    HeadKind.SEQUENCE_CLASSIFICATION: HeadSpec(None, True, label_loss, SequenceClassifierOutput),
    HeadKind.TOKEN_CLASSIFICATION: HeadSpec(None, False, label_loss, TokenClassifierOutput),
    HeadKind.QUESTION_ANSWERING: HeadSpec(2, False, span_loss, TokenClassifierOutput),
    HeadKind.MULTIPLE_CHOICE: HeadSpec(1, True, choice_loss, MultipleChoiceModelOutput, choices=True),
}


def label_names(kind: HeadKind, labels: list[str] | None, num_labels: int | None) -> list[str]:
    """A head's label names, from ``labels`` or ``num_labels`` (names "0", "1", ...); none for the kinds of a fixed
    width and causal-lm. Refused: repeated names, or none where the kind needs them."""
    labelled = kind in HEAD_KINDS and HEAD_KINDS[kind].labelled
    if labels is None:
        if num_labels is None and labelled:
            raise PtuningError("give labels or num_labels")
        labels = [str(index) for index in range(num_labels or 0)]
    elif num_labels is not None and num_labels != len(labels):
        raise PtuningError(f"num_labels={num_labels} but {len(labels)} labels were given")
    labels = [str(label) for label in labels]
    if len(set(labels)) != len(labels) or (labelled and not labels):
        raise PtuningError(f"labels must be distinct and non-empty, got {labels}")
    return labels


class LinearHead(nn.Module):
    """Dropout and a linear layer, on a pooled vector (one label per text) or on every token."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # a backbone held in bf16/fp16 hands over its type; the head computes in its own (fp32)
        return self.classifier(self.dropout(features.to(self.classifier.weight.dtype)))


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
        return hidden[:, 0]  # (batch, T, hidden) -> (batch, hidden)
    if pooling == "pooler":
        return backbone.pooler(hidden)  # (batch, hidden)
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)  # (batch, T)
    if pooling == "mean":
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (batch, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (batch, hidden)
    positions = torch.arange(hidden.shape[1], device=hidden.device)  # (T,)
    last = (attention_mask.to(torch.long) * positions).argmax(1)  # (batch,): last real token, left or right padding
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (batch, hidden)
