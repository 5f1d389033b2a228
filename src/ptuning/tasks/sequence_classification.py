"""Sequence classification (one label per text or text pair), scored by accuracy and macro-F1."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from transformers import DataCollatorWithPadding

from ..data.readers import LabeledText
from ..errors import DataError
from .base import Encoded, Task, softmax


class SequenceClassificationTask(Task):
    name = "sequence-classification"
    primary_metric = "accuracy"

    @staticmethod
    def gold(example: LabeledText) -> list[str]:
        return [] if example.label is None else [example.label]

    def _tokenize(self, examples: list[LabeledText], truncation: bool) -> list[dict[str, Any]]:
        """Features per example: a pair only where the example has one, so batch-mates never change an encoding."""
        features: list[dict[str, Any]] = [{}] * len(examples)
        for paired in (False, True):
            rows = [index for index, example in enumerate(examples) if (example.text_pair is not None) == paired]
            if not rows:
                continue
            batch = self.tokenizer(
                [examples[index].text for index in rows],
                [examples[index].text_pair for index in rows] if paired else None,
                truncation=truncation,
                max_length=self.max_length if truncation else None,
            )
            for position, index in enumerate(rows):
                features[index] = {key: batch[key][position] for key in batch}
        return features

    def encode(self, examples: list[LabeledText], with_labels: bool = True) -> Encoded:
        inputs = self._tokenize(examples, truncation=False)
        too_long = [index for index, item in enumerate(inputs) if len(item["input_ids"]) > self.max_length]
        if too_long:
            shortened = self._tokenize([examples[index] for index in too_long], truncation=True)
            for row, index in enumerate(too_long):
                inputs[index] = shortened[row]
        if with_labels:
            for item, example in zip(inputs, examples, strict=True):
                item["labels"] = self.label_to_id[example.label]
        return self.warn_truncated(Encoded(inputs=inputs, truncated=too_long))

    def collator(self):
        return DataCollatorWithPadding(self.tokenizer)

    def decode(self, logits: list[np.ndarray], encoded: Encoded, examples: list[LabeledText]) -> list[np.ndarray]:
        """Class probabilities per example."""
        return [softmax(row) for row in logits]

    def score(self, examples: list[LabeledText], predictions: list[np.ndarray]) -> dict[str, float]:
        gold = [self.label_to_id[example.label] for example in examples]
        predicted = [int(probabilities.argmax()) for probabilities in predictions]
        return {
            "accuracy": 100.0 * accuracy_score(gold, predicted),
            "f1": 100.0 * f1_score(gold, predicted, average="macro", labels=list(range(len(self.labels)))),
        }

    def format_prediction(self, example: LabeledText, prediction: np.ndarray) -> dict[str, Any]:
        best = int(prediction.argmax())
        result: dict[str, Any] = {"text": example.text}
        if example.text_pair is not None:
            result["text_pair"] = example.text_pair
        result.update(
            label=self.labels[best],
            probability=float(prediction[best]),
            probabilities={label: float(p) for label, p in zip(self.labels, prediction, strict=True)},
        )
        return result

    def parse_input(self, line: str, record: dict[str, Any] | None, source: str) -> LabeledText:
        """Plain text is one text; JSON lines give ``{"text": ..., "text_pair": ...}``."""
        if record is None:
            return LabeledText(line, None, None, source)
        if not isinstance(record.get("text"), str):
            raise DataError(f'{source}: expected {{"text": "...", "text_pair": "..." (optional)}}')
        pair = record.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise DataError(f"{source}: text_pair: expected a string, got {json.dumps(pair)}")
        return LabeledText(record["text"], pair, None, source)
