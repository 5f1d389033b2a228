"""Data-parallel launches (torchrun, accelerate launch): which process this is, and whether the replicas agree."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..model import PromptedModel


def is_main_process() -> bool:
    """Rank 0 of a data-parallel launch (torchrun, accelerate launch), or the only process: the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """How many data-parallel processes train this run (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def replica_checksums(model: PromptedModel) -> list[float]:
    """A checksum of the trainable weights from every data-parallel process (one entry alone): they must agree."""
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [checksum]
    gathered: list[float] = [0.0] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, checksum)
    return gathered
