"""Where one task's examples come from: a packaged or hub dataset by name, or local files read by their format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PtuningError
from ..vocabulary import FAMILIES, FORMAT_ALIASES, Family, family
from .formats import TABLE_SUFFIXES, ExampleFormat, HubFormat, make_format
from .hf import load_hf
from .packaged import load_packaged
from .splits import Splits

# the settings of local files' formats (each format takes those that are its fields), and of hub datasets' columns
FILE_COLUMNS = ("tag_column", "text_column", "pair_column", "label_column")
HUB_COLUMNS = ("text_column", "pair_column", "label_column", "tokens_column", "tags_column")


@dataclass(frozen=True)
class DataSpec:
    """One task's data: a dataset name, or train/validation/test files; ``task`` is the ``--task`` value (a family,
    or a format alias such as ``squad_v2``; None: from the dataset, or the training file's extension); the rest are
    the column settings of the files' format or the hub dataset."""

    dataset: str | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    task: str | None = None
    tag_column: int = -1
    text_column: str = "text"
    pair_column: str | None = None
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"

    def hub_columns(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in HUB_COLUMNS}

    def family(self) -> Family | None:
        """The family ``--task`` names, itself or through a format alias; None when it is not given."""
        if self.task is None:
            return None
        alias = FORMAT_ALIASES.get(self.task)
        return alias.family if alias else family(self.task)

    def file_reading(self) -> tuple[Family, ExampleFormat, dict[str, Any]]:
        """The family, format and decoding options of the local files: from ``--task``, else from the training
        file's extension (.json: SQuAD, a table's: sequence classification, any other: CoNLL columns)."""
        chosen = self.family()
        if chosen is None:
            suffix = Path(self.train or "").suffix.lower()
            chosen = (
                Family.QUESTION_ANSWERING
                if suffix == ".json"
                else Family.SEQUENCE_CLASSIFICATION
                if suffix in TABLE_SUFFIXES
                else Family.TOKEN_CLASSIFICATION
            )
        reading = FORMAT_ALIASES.get(self.task or "") or FAMILIES[chosen]
        columns = {name: getattr(self, name) for name in FILE_COLUMNS}
        data_format = make_format(reading.data_format, {**columns, **reading.format_settings})
        return chosen, data_format, dict(reading.options)


def load_dataset(name: str, family: Family | None = None, data_format: ExampleFormat | None = None) -> Splits:
    """A dataset by name: ``hf:NAME[:CONFIG]``, read for ``family`` (default: sequence classification) with the
    columns of ``data_format`` (a saved hub format; default: the default columns), or a packaged one."""
    if name.startswith("hf:"):
        columns = data_format.columns if isinstance(data_format, HubFormat) else DataSpec().hub_columns()
        return load_hf(name, family or Family.SEQUENCE_CLASSIFICATION, columns)
    return load_packaged(name)


def load_splits(spec: DataSpec) -> Splits:
    """The training, validation and test examples of ``spec``."""
    if spec.dataset:
        return load_dataset(spec.dataset, spec.family(), HubFormat(spec.dataset, spec.hub_columns()))
    if not spec.train:
        raise PtuningError("give --dataset NAME or --train FILE (with --validation/--test)")
    chosen, data_format, options = spec.file_reading()
    parts = [data_format.read(path) if path else [] for path in (spec.train, spec.validation, spec.test)]
    return Splits(chosen, *parts, data_format=data_format, options=options)
