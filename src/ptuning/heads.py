"""Task heads (randomly initialized linear layers, or a verbalizer: the backbone's own language-modelling head
restricted to the label words), what each head kind computes, and how a text becomes one vector. A head kind is
defined here once: its width, whether it reads a pooled vector or every token, its loss and its output class; the
model composes them, whatever the backbone and the prompt.
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


def target_token_loss(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal LM's loss on the labelled tokens only (label -100 elsewhere): the state at t predicts token t + 1.
    The vocabulary logits are computed for those positions alone: a generation target is a few tokens after a long
    input, and the whole (batch, T, vocab) logits would cost most of the step. Returns the loss and those logits."""
    targets = labels[:, 1:]  # (batch, T - 1)
    kept = targets != -100  # (batch, T - 1)
    logits = lm_head(hidden[:, :-1][kept])  # (targets, vocab)
    return nn.functional.cross_entropy(logits.float(), targets[kept]), logits


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
    last = last_real_token(attention_mask)  # (batch,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (batch, hidden)


def last_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """The index of each row's last real token, left or right padding: (batch, T) -> (batch,)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (attention_mask.to(torch.long) * positions).argmax(1)  # (batch,)


class VerbalizerHead(nn.Module):
    """Label scores from the backbone's language-modelling head, restricted to one word per label: the
    log-probability of each label's word (``word_ids``, per label its token ids) where the template says.

    A causal LM scores the words as the next token(s) after the template: one word token each, at the last real
    token; words of several tokens (``expands``) come as one row per label (the template and that label's word, as
    multiple choice expands its choices), each word token's log-probability given the template and the word's
    previous tokens summed. A masked LM scores at the mask (``mask_token_id``), single-token words only. The head
    holds no weights of its own: the language-modelling head is handed to each call (frozen unless the backbone
    trains), so a checkpoint stores nothing for it.
    """

    def __init__(self, word_ids: list[list[int]], mask_token_id: int | None):
        super().__init__()
        if mask_token_id is not None and any(len(ids) != 1 for ids in word_ids):
            raise PtuningError(
                f"a masked LM scores one token at the mask, but label words have {[len(ids) for ids in word_ids]} "
                "tokens: give words of one token each (a causal LM scores words of several tokens)"
            )
        self.word_ids = [list(ids) for ids in word_ids]
        self.mask_token_id = mask_token_id
        self.expands = mask_token_id is None and any(len(ids) > 1 for ids in word_ids)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        input_ids: torch.Tensor,
        lm_head: nn.Module,
    ) -> torch.Tensor:
        """(rows, labels) scores from the rows' hidden states (rows, T, hidden); expanded rows (row ``r`` the
        template and the word of label ``r % labels``): (rows, 1), each row its word's summed log-probability."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)  # (rows, T)
        rows = torch.arange(hidden.shape[0], device=hidden.device)  # (rows,)
        if self.expands:
            return self._word_sums(hidden, last_real_token(attention_mask), lm_head)  # (rows, 1)
        if self.mask_token_id is None:
            positions = last_real_token(attention_mask)  # (rows,)
        else:
            masks = input_ids.eq(self.mask_token_id)  # (rows, T)
            if not bool(masks.sum(1).eq(1).all()):
                raise PtuningError("a masked-LM verbalizer needs exactly one mask token in each input")
            positions = masks.to(torch.long).argmax(1)  # (rows,)
        log_probs = self._log_probs(hidden[rows, positions], lm_head)  # (rows, vocab)
        first = torch.tensor([ids[0] for ids in self.word_ids], device=hidden.device)  # (labels,)
        return log_probs[:, first]  # (rows, labels)

    def _word_sums(self, hidden: torch.Tensor, last: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Each expanded row's word: its tokens are the row's last, each predicted by the state before it."""
        labels = len(self.word_ids)
        scores = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)  # (rows,)
        for label, ids in enumerate(self.word_ids):
            rows = torch.arange(label, hidden.shape[0], labels, device=hidden.device)  # (batch,)
            offsets = torch.arange(-len(ids), 0, device=hidden.device)  # (n,): the states before each word token
            positions = last[rows, None] + offsets  # (batch, n)
            log_probs = self._log_probs(hidden[rows[:, None], positions], lm_head)  # (batch, n, vocab)
            targets = torch.tensor(ids, device=hidden.device).expand(len(rows), -1)  # (batch, n)
            scores[rows] = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1)  # (batch,)
        return scores.unsqueeze(-1)  # (rows, 1)

    @staticmethod
    def _log_probs(states: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Log-probabilities over the vocabulary (..., vocab) of hidden states (..., hidden), computed in fp32."""
        weight = next(lm_head.parameters())
        return torch.log_softmax(lm_head(states.to(weight.dtype)).float(), dim=-1)  # (..., vocab)
