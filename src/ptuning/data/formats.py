"""How examples are laid out, one dataclass per data format (``vocabulary.DataFormat``): each reads a file, says what
the files it reads look like (for error messages), and saves as a small dict kept in the checkpoint
(``{"format": "conll", "tag_column": 3}``), so ``eval`` reads new files the way the training files were read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from ..errors import DataError, PtuningError
from ..vocabulary import DataFormat
from .generation import read_generation
from .readers import read_conll, read_labeled_texts
from .squad import read_squad
from .srl import read_srl
from .superglue import read_superglue

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


@dataclass(frozen=True)
class ExampleFormat(ABC):
    """How a task's examples are laid out; its fields are its settings, named like the recipe keys that set them."""

    kind: ClassVar[DataFormat]
    column_file: ClassVar[bool] = False  # a word-per-line file: a table's extension is a mistake, said plainly

    @abstractmethod
    def describe(self) -> str:
        """What files of this format look like, for error messages."""

    @abstractmethod
    def load(self, path: Path) -> list[Any]:
        """The examples of one file (its errors not yet told what this format expects)."""

    def read(self, path: str | Path) -> list[Any]:
        """The examples of one file; a malformed file's error says what this format expects."""
        path = Path(path)
        suffix = path.suffix.lower()
        if self.column_file and suffix in TABLE_SUFFIXES:
            raise DataError(f"{path}: a {suffix} file, but this model reads {self.describe()}")
        try:
            return self.load(path)
        except DataError as error:
            raise DataError(f"{error}{self.hint(suffix)}") from error

    def hint(self, suffix: str) -> str:
        """What a read error adds: by default, what this format expects."""
        return f" (expected {self.describe()})"

    def to_dict(self) -> dict[str, Any]:
        """The saved form: the format's name and its settings."""
        return {"format": str(self.kind), **asdict(self)}


@dataclass(frozen=True)
class ConllFormat(ExampleFormat):
    kind: ClassVar[DataFormat] = DataFormat.CONLL
    column_file: ClassVar[bool] = True

    tag_column: int = -1

    def describe(self) -> str:
        return (
            "CoNLL column files: one word per line, whitespace-separated columns, the tag in column "
            f"{self.tag_column} (-1: the last), a blank line between sentences"
        )

    def load(self, path: Path) -> list[Any]:
        return read_conll(path, self.tag_column)


@dataclass(frozen=True)
class TableFormat(ExampleFormat):
    kind: ClassVar[DataFormat] = DataFormat.TABLE

    text_column: str = "text"
    pair_column: str | None = None
    label_column: str = "label"

    def describe(self) -> str:
        pair = f", {self.pair_column!r}" if self.pair_column else ""
        return (
            f"CSV/TSV with a header row, or JSON lines, with the columns {self.text_column!r}{pair} and "
            f"{self.label_column!r}"
        )

    def load(self, path: Path) -> list[Any]:
        return read_labeled_texts(path, self.text_column, self.pair_column, self.label_column)


@dataclass(frozen=True)
class SquadFormat(ExampleFormat):
    kind: ClassVar[DataFormat] = DataFormat.SQUAD

    def describe(self) -> str:
        return "SQuAD JSON files ({'data': [{'paragraphs': [{'context', 'qas'}]}]})"

    def load(self, path: Path) -> list[Any]:
        return read_squad(path)

    def hint(self, suffix: str) -> str:
        if suffix == ".json":  # JSON lines of texts named .json is the likely mistake
            return (
                "; a .json file is read as SQuAD JSON: for JSON lines of texts and labels give --task "
                "sequence-classification (or name the file .jsonl)"
            )
        return super().hint(suffix)


@dataclass(frozen=True)
class SuperGlueFormat(ExampleFormat):
    kind: ClassVar[DataFormat] = DataFormat.SUPERGLUE

    task: str  # which SuperGLUE task (vocabulary.SUPERGLUE_TASKS): each has its own fields

    def describe(self) -> str:
        return f"SuperGLUE {self.task} JSON lines as distributed"

    def load(self, path: Path) -> list[Any]:
        return read_superglue(self.task, path)


@dataclass(frozen=True)
class SrlFormat(ExampleFormat):
    kind: ClassVar[DataFormat] = DataFormat.SRL
    column_file: ClassVar[bool] = True

    def describe(self) -> str:
        return "SRL column files: WORD PREDICATE_FLAG TAG per line, a blank line between instances"

    def load(self, path: Path) -> list[Any]:
        return read_srl(path)


@dataclass(frozen=True)
class GenerationFormat(ExampleFormat):
    kind: ClassVar[DataFormat] = DataFormat.GENERATION

    def describe(self) -> str:
        return 'JSON lines: {"input": TEXT, "target": TEXT or [TEXT, ...]} or {"messages": [{"role", "content"}, ...]}'

    def load(self, path: Path) -> list[Any]:
        return read_generation(path)


@dataclass(frozen=True)
class HubFormat(ExampleFormat):
    """A hub dataset's columns (``hf:NAME[:CONFIG]``): text/pair/label, or tokens/tags. No local file has it."""

    kind: ClassVar[DataFormat] = DataFormat.HUB

    dataset: str
    columns: dict[str, str | None] = field(default_factory=dict)

    def describe(self) -> str:
        return f"the columns {self.columns} of {self.dataset}"

    def load(self, path: Path) -> list[Any]:
        raise PtuningError(f"files of this checkpoint's data ({self.kind}) cannot be read; use --dataset")


FORMATS: dict[DataFormat, type[ExampleFormat]] = {
    DataFormat.CONLL: ConllFormat,
    DataFormat.TABLE: TableFormat,
    DataFormat.SQUAD: SquadFormat,
    DataFormat.SUPERGLUE: SuperGlueFormat,
    DataFormat.SRL: SrlFormat,
    DataFormat.HUB: HubFormat,
    DataFormat.GENERATION: GenerationFormat,
}


def make_format(data_format: DataFormat, settings: Mapping[str, Any]) -> ExampleFormat:
    """The format ``data_format`` with those of ``settings`` that are its own (others are ignored: a recipe's column
    settings serve every format, and old checkpoints saved the SQuAD decoding options beside the format)."""
    cls = FORMATS[data_format]
    own = {item.name: settings[item.name] for item in fields(cls) if item.name in settings}
    try:
        return cls(**own)
    except TypeError as error:  # a saved form that lacks a setting without default
        raise PtuningError(f"data format {data_format} needs {[item.name for item in fields(cls)]}: {error}") from None


def data_format_from_dict(saved: Mapping[str, Any]) -> ExampleFormat | None:
    """The format of a saved form (``to_dict``, or an older checkpoint's reader dict); None where it names none this
    version knows (a checkpoint made without data, or by a newer version): such a model predicts, it reads no files."""
    try:
        data_format = DataFormat(saved.get("format"))
    except ValueError:
        return None
    return make_format(data_format, saved)


def read_examples(path: str | Path, data_format: ExampleFormat | None) -> list[Any]:
    """Examples of one file, read the way a checkpoint's training data was read (``data_format``: its saved format)."""
    if data_format is None:
        raise PtuningError("files of this checkpoint's data (unknown format) cannot be read; use --dataset")
    return data_format.read(path)
