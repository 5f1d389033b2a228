"""Datasets from the Hugging Face hub (or its local cache) through ``datasets.load_dataset``.

``hf:NAME`` or ``hf:NAME:CONFIG``. Integer labels with ``ClassLabel`` features become their names, so
checkpoints keep readable labels. Works where the hub or its cache is reachable; otherwise the error
says so instead of a library traceback.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError, PtuningError
from ..vocabulary import Family
from .formats import HubFormat
from .readers import LabeledText, TaggedSentence
from .splits import Splits

SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}


def parse_name(dataset: str) -> tuple[str, str | None]:
    parts = dataset.removeprefix("hf:").split(":")
    if not parts[0] or len(parts) > 2:
        raise PtuningError(f"expected hf:NAME or hf:NAME:CONFIG, got {dataset!r}")
    return parts[0], parts[1] if len(parts) == 2 else None


def _names(feature: Any) -> list[str] | None:
    """Label names of a ClassLabel feature (or of a sequence of them)."""
    feature = getattr(feature, "feature", feature)
    return list(feature.names) if hasattr(feature, "names") else None


def _column(split, column: str, dataset: str, split_name: str) -> list:
    if column not in split.column_names:
        raise DataError(f"{dataset} ({split_name}): no column {column!r}; columns: {split.column_names}")
    return split[column]


def load_hf(dataset: str, family: Family, columns: dict[str, str | None]) -> Splits:
    """Splits of a hub dataset for ``family``; ``columns`` names text/pair/label or tokens/tags columns."""
    import datasets

    name, config = parse_name(dataset)
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as error:  # datasets raises many types (connection, missing config, file not found)
        raise PtuningError(
            f"could not load {dataset!r} with datasets.load_dataset (needs the hub or its local cache): "
            f"{type(error).__name__}: {error}"
        ) from error
    parts: dict[str, list] = {}
    for ours, candidates in SPLIT_NAMES.items():
        split_name = next((candidate for candidate in candidates if candidate in loaded), None)
        parts[ours] = [] if split_name is None else _convert(loaded[split_name], family, columns, dataset, split_name)
    if not parts["train"]:
        raise DataError(f"{dataset}: no train split; splits: {list(loaded)}")
    data_format = HubFormat(dataset, dict(columns))
    return Splits(Family(family), parts["train"], parts["validation"], parts["test"], data_format=data_format)


def _convert(split, family: Family, columns: dict[str, str | None], dataset: str, split_name: str) -> list:
    source = f"{dataset} ({split_name}) row"
    if family == Family.TOKEN_CLASSIFICATION:
        tokens = _column(split, columns["tokens_column"], dataset, split_name)
        tags = _column(split, columns["tags_column"], dataset, split_name)
        names = _names(split.features[columns["tags_column"]])
        return [
            TaggedSentence(list(words), [names[t] if names else str(t) for t in row_tags], f"{source} {i}")
            for i, (words, row_tags) in enumerate(zip(tokens, tags, strict=True))
        ]
    if family != Family.SEQUENCE_CLASSIFICATION:
        raise PtuningError(f"hf: datasets are read for sequence or token classification, not {str(family)!r}")
    texts = _column(split, columns["text_column"], dataset, split_name)
    pairs = _column(split, columns["pair_column"], dataset, split_name) if columns["pair_column"] else None
    labels = _column(split, columns["label_column"], dataset, split_name)
    names = _names(split.features[columns["label_column"]])

    def label_name(label: Any) -> str | None:
        if label is None or label == -1:  # unlabeled test splits (GLUE style)
            return None
        return names[label] if names else str(label)

    return [
        LabeledText(text, pairs[i] if pairs else None, label_name(labels[i]), f"{source} {i}")
        for i, text in enumerate(texts)
    ]
