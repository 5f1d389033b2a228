"""Generation examples: an input to write from (a text, or chat messages) and the target text(s) to write, from JSON
lines ``{"input": ..., "target": ...}`` (a target may be a list of acceptable texts) or ``{"messages": [{"role":
..., "content": ...}, ...]}`` whose last message, the assistant's, is the target."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .readers import json_object, open_lines

ROLES = ("system", "user", "assistant")


@dataclass
class GenerationExample:
    """One input (``text``, or ``messages`` for the chat template) and its targets (none for unlabeled input)."""

    text: str | None
    messages: list[dict[str, str]] | None = None
    targets: list[str] = field(default_factory=list)
    source: str = ""


def _string(value: Any, name: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{source}: {name}: expected a non-empty string, got {json.dumps(value)}")
    return value


def _messages(value: Any, source: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{source}: messages: expected a non-empty list of {{role, content}} objects")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise DataError(f"{source}: messages[{index}]: expected an object with exactly 'role' and 'content'")
        if message["role"] not in ROLES:
            raise DataError(f"{source}: messages[{index}].role: expected one of {ROLES}, got {message['role']!r}")
        _string(message["content"], f"messages[{index}].content", source)
    return value


def generation_example(record: dict[str, Any], source: str, labeled: bool) -> GenerationExample:
    """The example of one JSON record (``labeled``: it must hold its target)."""
    if ("input" in record) == ("messages" in record):
        raise DataError(f"{source}: expected 'input' (with 'target') or 'messages'; the record has {sorted(record)}")
    if "messages" in record:
        messages = _messages(record["messages"], source)
        if messages[-1]["role"] == "assistant":
            return GenerationExample(None, messages[:-1], [messages[-1]["content"]], source)
        if labeled:
            raise DataError(f"{source}: messages: the last message must be the assistant's, the target")
        return GenerationExample(None, messages, [], source)
    text = _string(record["input"], "input", source)
    target = record.get("target")
    if target is None:
        if labeled:
            raise DataError(f"{source}: missing 'target' (a string, or a list of acceptable strings)")
        return GenerationExample(text, None, [], source)
    targets = target if isinstance(target, list) and target else [target]
    return GenerationExample(text, None, [_string(item, "target", source) for item in targets], source)


def read_generation(path: str | Path) -> list[GenerationExample]:
    """The examples of a JSON-lines file (blank lines skipped); each malformed line is named."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(f"{path}: generation data is JSON lines: name the file .jsonl")
    examples = []
    for number, line in enumerate(open_lines(path), start=1):
        if line.strip():
            source = f"{path}:{number}"
            examples.append(generation_example(json_object(line, source), source, labeled=True))
    if not examples:
        raise DataError(f"{path}: no records found")
    return examples
