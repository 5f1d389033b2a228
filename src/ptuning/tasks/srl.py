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
from .base import Encoded
from .token_classification import IGNORE, TokenClassificationTask


class SRLTask(TokenClassificationTask):
    """Tags one (sentence, predicate) instance; ``name`` stays "token-classification", the model task it trains."""

    def encode(self, examples: list[SRLInstance], with_labels: bool = True) -> Encoded:
        """Features of ``[CLS] sentence [SEP] predicate [SEP]``; a long sentence is cut, never the predicate."""
        batch = self.tokenizer(
            [example.words for example in examples],
            [[example.words[example.predicate_index]] for example in examples],
            is_split_into_words=True,
            truncation="only_first",
            max_length=self.max_length,
        )
        encoded = Encoded(inputs=[])
        for index, example in enumerate(examples):
            # word ids restart at 0 in the predicate segment: only the sentence's words are tagged and decoded
            segments = batch.sequence_ids(index)
            word_ids = [
                word if segment == 0 else None for word, segment in zip(batch.word_ids(index), segments, strict=True)
            ]
            inputs = {key: batch[key][index] for key in batch}
            if with_labels:
                labels, previous = [], None
                for word in word_ids:
                    first = word is not None and word != previous
                    labels.append(self.label_to_id[example.tags[word]] if first else IGNORE)
                    previous = word
                inputs["labels"] = labels
            seen = [word for word in word_ids if word is not None]
            if not seen or seen[-1] < len(example.words) - 1:
                encoded.truncated += 1
            encoded.inputs.append(inputs)
            encoded.meta.append(word_ids)
        return self.warn_truncated(encoded)

    def format_prediction(self, example: SRLInstance, prediction: list[str]) -> dict[str, Any]:
        result = {"predicate": example.predicate_index, **super().format_prediction(example, prediction)}
        if "entities" in result:  # role spans: the predicate's arguments
            result["arguments"] = result.pop("entities")
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
        words = [str(word) for word in words]
        return SRLInstance(words, predicate, [self.outside] * len(words), source)
