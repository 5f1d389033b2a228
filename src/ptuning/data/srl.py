"""Semantic role labelling data: one instance per (sentence, predicate), in a small column format.

The format (UTF-8 text, one token per line, whitespace-separated columns ``WORD PREDICATE_FLAG TAG``)::

    # The cat chased the mouse, predicate "chased"
    The     0  B-ARG0
    cat     0  I-ARG0
    chased  1  B-V
    the     0  B-ARG1
    mouse   0  I-ARG1
    .       0  O

``PREDICATE_FLAG`` is ``1`` on the one predicate token of the instance and ``0`` (or ``-``) elsewhere;
``TAG`` is a BIO role tag (``B-ARG0``, ``I-ARG1``, ``B-V``, ``B-ARGM-TMP``, ``O``, ...). A blank line ends an
instance. A sentence with several predicates is written once per predicate, each copy with its own flag and
tags: that is how CoNLL-2005/2012 frames become instances for tagging. A line starting with ``#`` is a comment,
unless it is a well-formed token line (the word ``#``, the pound sign of the WSJ). Malformed input raises
DataError naming the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .readers import open_lines

PREDICATE_FLAG = "1"
FLAGS = (PREDICATE_FLAG, "0", "-")
COLUMNS = 3


@dataclass
class SRLInstance:
    """A sentence, the index of its predicate word, and one role tag per word."""

    words: list[str]
    predicate_index: int
    tags: list[str]
    source: str = ""


def read_srl(path: str | Path) -> list[SRLInstance]:
    """Instances of a ``WORD PREDICATE_FLAG TAG`` column file (see the module docstring)."""
    path = Path(path)
    instances: list[SRLInstance] = []
    rows: list[tuple[int, list[str]]] = []  # (line number, columns) of the open instance

    def close_instance() -> None:
        if rows:
            instances.append(_instance(path, rows))
        rows.clear()

    for number, line in enumerate(open_lines(path), start=1):
        fields = line.split()
        if not fields:
            close_instance()
            continue
        well_formed = len(fields) == COLUMNS and fields[1] in FLAGS
        if line.startswith("#") and not well_formed:
            continue
        if len(fields) != COLUMNS:
            raise DataError(
                f"{path}:{number}: expected {COLUMNS} columns WORD PREDICATE_FLAG TAG, found {len(fields)}: {line!r}"
            )
        if not well_formed:
            raise DataError(f"{path}:{number}: the predicate flag must be one of {list(FLAGS)}, found {fields[1]!r}")
        rows.append((number, fields))
    close_instance()
    if not instances:
        raise DataError(f"{path}: no instances found")
    return instances


def _instance(path: Path, rows: list[tuple[int, list[str]]]) -> SRLInstance:
    start = rows[0][0]
    predicates = [index for index, (_, fields) in enumerate(rows) if fields[1] == PREDICATE_FLAG]
    if not predicates:
        raise DataError(f"{path}:{start}: the instance starting here has no predicate (no token flagged 1)")
    if len(predicates) > 1:
        raise DataError(
            f"{path}:{rows[predicates[1]][0]}: a second predicate in the instance starting at line {start}; "
            "write the sentence once per predicate"
        )
    words = [fields[0] for _, fields in rows]
    tags = [fields[2] for _, fields in rows]
    return SRLInstance(words, predicates[0], tags, f"{path}:{start}")
