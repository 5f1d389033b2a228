"""A batch whose examples belong to several tasks: one backbone forward wherever their prompts allow it
(``PromptedBackbone.encode_prompted``), each task's head on its own rows (a sub-batch, as the adapters library's
``BatchSplit``), outputs back in input order."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from .errors import PtuningError
from .heads import HEAD_KINDS


@dataclass
class MixedTaskOutput:
    """The outputs of a batch whose examples belong to several tasks: each task's head output on its rows.

    ``outputs[name].logits`` holds the rows ``rows[name]`` of the batch, in batch order; :meth:`per_example` lists
    every example's logits in input order.
    """

    outputs: dict[str, ModelOutput]
    rows: dict[str, torch.Tensor]

    def per_example(self) -> list[torch.Tensor]:
        count = sum(len(rows) for rows in self.rows.values())
        logits: list[torch.Tensor] = [torch.empty(0)] * count
        for name, rows in self.rows.items():
            for position, row in enumerate(rows.tolist()):
                logits[row] = self.outputs[name].logits[position]
        return logits


def mixed_forward(
    model: nn.Module, input_ids: torch.Tensor, attention_mask, token_type_ids, task_ids: torch.Tensor
) -> MixedTaskOutput:
    """A PromptedModel's forward on a batch of several tasks (``task_ids``: (batch,)): each head on its own rows."""
    names = model.task_names
    present = sorted(set(task_ids.tolist()))
    kinds = {model.tasks[names[index]].kind for index in present}
    expands = any(
        getattr(model.heads[names[index]], "expands", False) for index in present if names[index] in model.heads
    )
    if expands or any(kind not in HEAD_KINDS or HEAD_KINDS[kind].choices for kind in kinds):
        raise PtuningError(
            "multiple-choice and causal-lm tasks run one task per batch, not mixed with others, as do verbalizer "
            "tasks whose words have several tokens"
        )
    hidden = model.encode(input_ids, attention_mask, token_type_ids, task_ids=task_ids)  # (batch, T, hidden)
    outputs, rows = {}, {}
    for index in present:  # in batch order
        name = names[index]
        rows[name] = (task_ids == index).nonzero().squeeze(1)  # (rows,)
        mask = None if attention_mask is None else attention_mask[rows[name]]  # (rows, T)
        ids = input_ids[rows[name]]  # (rows, T)
        logits = model.head_logits(name, hidden[rows[name]], mask, ids)  # (rows, labels) or (rows, T, width)
        outputs[name] = HEAD_KINDS[model.tasks[name].kind].output(logits=logits)
    return MixedTaskOutput(outputs=outputs, rows=rows)
