"""Token classification (NER, POS, chunking): label on a word's first sub-token, scored over words."""

from __future__ import annotations

from typing import Any

import numpy as np
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from transformers import DataCollatorForTokenClassification

from ..data.readers import TaggedSentence
from ..errors import DataError
from .base import Encoded, Task

IGNORE = -100
SCHEME_PREFIXES = ("B-", "I-", "E-", "S-")


def is_chunk_scheme(labels: list[str]) -> bool:
    """Whether tags mark spans (IOB-style), so entity-level F1 is the meaningful score."""
    return any(label.startswith(SCHEME_PREFIXES) for label in labels) and all(
        label == "O" or label.startswith(SCHEME_PREFIXES) for label in labels
    )


class TokenClassificationTask(Task):
    name = "token-classification"
    per_token = True

    def __init__(self, tokenizer, labels, max_length):
        super().__init__(tokenizer, labels, max_length)
        self.spans = is_chunk_scheme(self.labels)
        self.primary_metric = "f1" if self.spans else "accuracy"
        self.outside = "O" if "O" in self.label_to_id else self.labels[0]

    @staticmethod
    def gold(example: TaggedSentence) -> list[str]:
        return example.tags

    def _tokenize(self, examples: list[TaggedSentence]):
        return self.tokenizer(
            [example.words for example in examples],
            is_split_into_words=True,
            truncation=True,
            max_length=self.max_length,
        )

    def _word_ids(self, batch, index: int) -> list[int | None]:
        """Per token, the index of the word it belongs to (None for tokens that are not tagged)."""
        return batch.word_ids(index)

    def encode(self, examples: list[TaggedSentence], with_labels: bool = True) -> Encoded:
        batch = self._tokenize(examples)
        encoded = Encoded(inputs=[])
        for index, example in enumerate(examples):
            word_ids = self._word_ids(batch, index)
            inputs = {key: batch[key][index] for key in batch}
            if with_labels:
                labels, previous = [], None
                for word in word_ids:
                    first = word is not None and word != previous
                    labels.append(self.label_to_id[example.tags[word]] if first else IGNORE)
                    previous = word
                inputs["labels"] = labels
            seen = [word for word in word_ids if word is not None]
            if len(example.words) and (not seen or seen[-1] < len(example.words) - 1):
                encoded.truncated += 1
            encoded.inputs.append(inputs)
            encoded.meta.append(word_ids)
        return self.warn_truncated(encoded)

    def collator(self):
        return DataCollatorForTokenClassification(self.tokenizer, label_pad_token_id=IGNORE)

    def decode(self, logits: list[np.ndarray], encoded: Encoded, examples: list[TaggedSentence]) -> list[list[str]]:
        """Word-level tags; words cut off by truncation are predicted outside any span."""
        predictions = []
        for token_logits, word_ids, example in zip(logits, encoded.meta, examples, strict=True):
            tags = [self.outside] * len(example.words)
            best = token_logits.argmax(-1)
            previous = None
            for position, word in enumerate(word_ids):
                if word is not None and word != previous:
                    tags[word] = self.labels[int(best[position])]
                previous = word
            predictions.append(tags)
        return predictions

    def score(self, examples: list[TaggedSentence], predictions: list[list[str]]) -> dict[str, float]:
        gold = [example.tags for example in examples]
        pairs = [(g, p) for gs, ps in zip(gold, predictions, strict=True) for g, p in zip(gs, ps, strict=True)]
        metrics = {"accuracy": 100.0 * sum(g == p for g, p in pairs) / max(len(pairs), 1)}
        if self.spans:
            metrics["precision"] = 100.0 * precision_score(gold, predictions, zero_division=0)
            metrics["recall"] = 100.0 * recall_score(gold, predictions, zero_division=0)
            metrics["f1"] = 100.0 * f1_score(gold, predictions, zero_division=0)
        return metrics

    def format_prediction(self, example: TaggedSentence, prediction: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = {"words": example.words, "tags": prediction}
        if self.spans:
            result["entities"] = [
                {"type": kind, "text": " ".join(example.words[start : end + 1]), "start": start, "end": end + 1}
                for kind, start, end in get_entities(prediction)
            ]
        return result

    def parse_input(self, line: str, record: dict[str, Any] | None, source: str) -> TaggedSentence:
        """Plain text is split on whitespace; JSON lines give ``{"words": [...]}`` or ``{"text": "..."}``."""
        if record is None:
            words = line.split()
        elif isinstance(record.get("words"), list):
            words = [str(word) for word in record["words"]]
        elif isinstance(record.get("text"), str):
            words = record["text"].split()
        else:
            raise DataError(f'{source}: expected {{"words": [...]}} or {{"text": "..."}}')
        return TaggedSentence(words, [self.outside] * len(words), source)
