"""The examples of one task, as every source (packaged, hub, local files) hands them over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..vocabulary import Family
from .formats import ExampleFormat


@dataclass
class Splits:
    """Train/validation/test examples of one task; its family, how more files of the same kind are read
    (``data_format``), and the family's decoding options the data implies (SQuAD 2.0: ``{"version_2": True}``)."""

    family: Family
    train: list[Any]
    validation: list[Any]
    test: list[Any]
    data_format: ExampleFormat
    options: dict[str, Any] = field(default_factory=dict)
