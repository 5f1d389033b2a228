"""Where a run's examples come from: a packaged or hub dataset by name, or local files read by their format.

A reader is a small dict kept in the checkpoint (``{"format": "conll", "tag_column": 3}``, ...), so ``eval`` reads
new files the way the training files were read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, PtuningError
from ..tasks import file_reader, squad_reader
from .hf import load_hf
from .packaged import Splits, load_packaged
from .readers import read_conll, read_labeled_texts
from .squad import read_squad
from .srl import read_srl
from .superglue import SUPERGLUE_TASKS, read_superglue

if TYPE_CHECKING:
    from ..recipe import Recipe

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
HF_COLUMNS = ("text_column", "pair_column", "label_column", "tokens_column", "tags_column")

# --task values that name a file format rather than a task family: (family, how its files are read and decoded)
FORMAT_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "squad": ("question-answering", squad_reader(None)),
    "squad_v2": ("question-answering", squad_reader(None, version_2=True)),
    **{name: (task, {"format": "superglue", "task": name}) for name, task in SUPERGLUE_TASKS.items()},
}


def file_task(recipe: Recipe) -> tuple[str, dict[str, Any]]:
    """The task family and reader for ``--train`` files: from ``--task``, else from the file's extension."""
    if recipe.task in FORMAT_TASKS:
        return FORMAT_TASKS[recipe.task]
    suffix = Path(recipe.train or "").suffix.lower()
    family = recipe.task or (
        "question-answering"
        if suffix == ".json"
        else "sequence-classification"
        if suffix in TABLE_SUFFIXES
        else "token-classification"
    )
    return family, file_reader(family, recipe)


def describe(reader: dict[str, Any]) -> str:
    """What files of this reader look like, for error messages."""
    kind = reader.get("format")
    if kind == "conll":
        return (
            "CoNLL column files: one word per line, whitespace-separated columns, the tag in column "
            f"{reader.get('tag_column', -1)} (-1: the last), a blank line between sentences"
        )
    if kind == "table":
        pair = f", {reader['pair_column']!r}" if reader.get("pair_column") else ""
        return (
            f"CSV/TSV with a header row, or JSON lines, with the columns {reader['text_column']!r}{pair} and "
            f"{reader['label_column']!r}"
        )
    if kind == "squad":
        return "SQuAD JSON files ({'data': [{'paragraphs': [{'context', 'qas'}]}]})"
    if kind == "superglue":
        return f"SuperGLUE {reader['task']} JSON lines as distributed"
    if kind == "srl":
        return "SRL column files: WORD PREDICATE_FLAG TAG per line, a blank line between instances"
    return f"files of format {kind!r}"


def read_examples(path: str | Path, reader: dict[str, Any]) -> list[Any]:
    """Examples of one file, read the way the checkpoint's training data was read."""
    kind = reader.get("format")
    suffix = Path(path).suffix.lower()
    if kind in ("conll", "srl") and suffix in TABLE_SUFFIXES:
        raise DataError(f"{path}: a {suffix} file, but this model reads {describe(reader)}")
    try:
        if kind == "conll":
            return read_conll(path, reader["tag_column"])
        if kind == "table":
            return read_labeled_texts(path, reader["text_column"], reader["pair_column"], reader["label_column"])
        if kind == "squad":
            return read_squad(path)
        if kind == "superglue":
            return read_superglue(reader["task"], path)
        if kind == "srl":
            return read_srl(path)
    except DataError as error:
        hint = (
            "; a .json file is read as SQuAD JSON: for JSON lines of texts and labels give --task "
            "sequence-classification (or name the file .jsonl)"
            if kind == "squad" and suffix == ".json"
            else f" (expected {describe(reader)})"
        )
        raise DataError(f"{error}{hint}") from error
    raise PtuningError(f"files of this checkpoint's data ({kind or 'unknown format'}) cannot be read; use --dataset")


def load_dataset(name: str, task: str | None, reader: dict[str, Any]) -> Splits:
    """A dataset by name: ``hf:NAME[:CONFIG]`` (columns from ``reader``) or a packaged one."""
    if name.startswith("hf:"):
        return load_hf(name, task or "sequence-classification", reader["columns"])
    return load_packaged(name)


def load_splits(recipe: Recipe) -> Splits:
    """The recipe's training, validation and test examples."""
    if recipe.dataset:
        columns = {name: getattr(recipe, name) for name in HF_COLUMNS}
        return load_dataset(recipe.dataset, recipe.task, {"columns": columns})
    if not recipe.train:
        raise PtuningError("give --dataset NAME or --train FILE (with --validation/--test)")
    task, reader = file_task(recipe)
    parts = [read_examples(path, reader) if path else [] for path in (recipe.train, recipe.validation, recipe.test)]
    return Splits(task, *parts, reader=reader)
