"""Semantic role labelling as token classification with a marked predicate (P-Tuning v2's CoNLL-2005/2012 setup).

The sentence is the first segment and the predicate word the second, so the model knows whose arguments to
tag; a role tag sits on the first sub-token of each sentence word, the predicate segment and special tokens
carry none. Decoding and scoring are token classification's: seqeval F1 over role spans of words, which counts
the predicate's own ``V`` span as the reference does (the official CoNLL script leaves it out).
"""

from __future__ import annotations

from typing import Any

from ..data.srl import SRLInstance
from ..errors import DataError
from .base import strings
from .token_classification import TokenClassificationTask


class SRLTask(TokenClassificationTask):
    """Tags one (sentence, predicate) instance; ``name`` stays "token-classification", the model task it trains."""

    def _tokenize(self, examples: list[SRLInstance]):
        """Features of ``[CLS] sentence [SEP] predicate [SEP]``; a long sentence is cut, never the predicate."""
        return self.tokenizer(
            [example.words for example in examples],
            [[example.words[example.predicate_index]] for example in examples],
            is_split_into_words=True,
            truncation="only_first",
            max_length=self.max_length,
        )

    def _word_ids(self, batch, index: int) -> list[int | None]:
        """Word ids restart at 0 in the predicate segment: only the sentence's words are tagged and decoded."""
        segments = batch.sequence_ids(index)
        return [word if segment == 0 else None for word, segment in zip(batch.word_ids(index), segments, strict=True)]

    def format_prediction(self, example: SRLInstance, prediction: list[str]) -> dict[str, Any]:
        result = {"predicate": example.predicate_index, **super().format_prediction(example, prediction)}
        result["arguments"] = result.pop("entities")  # role spans: the predicate's arguments
        return result

    def parse_input(self, line: str, record: dict[str, Any] | None, source: str) -> SRLInstance:
        """JSON lines ``{"words": [...], "predicate": index of the predicate word}``."""
        words = None if record is None else record.get("words")
        predicate = None if record is None else record.get("predicate")
        if (
            not isinstance(words, list)
            or not isinstance(predicate, int)
            or isinstance(predicate, bool)
            or not 0 <= predicate < len(words)
        ):
            raise DataError(f'{source}: expected {{"words": ["...", ...], "predicate": index of the predicate word}}')
        words = strings(words, "words", source)
        return SRLInstance(words, predicate, [self.outside] * len(words), source)
