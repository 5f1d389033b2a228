"""Multiple choice (COPA, SWAG-style): every (context, choice) pair is scored, the scores compete by softmax.

The labels are the choice indices as strings ("0", "1", ...); they are ordered by number so a label's id is
its choice index. Probabilities, accuracy and macro-F1 are those of sequence classification over choices,
so this task reuses its decoding and scoring and only changes how examples become (choices, tokens) features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from ..data.readers import LabeledText
from ..data.superglue import ChoiceExample, copa_example
from ..errors import DataError, PtuningError
from .base import Encoded, MultipleChoiceCollator
from .sequence_classification import SequenceClassificationTask


class MultipleChoiceTask(SequenceClassificationTask):
    name = "multiple-choice"
    choice_rows = True

    def __init__(self, tokenizer: PreTrainedTokenizerBase, labels: list[str], max_length: int):
        indices = [str(index) for index in range(len(labels))]
        if sorted(labels) != sorted(indices):
            raise PtuningError(f"multiple-choice labels are the choice indices {indices}; got {list(labels)}")
        super().__init__(tokenizer, indices, max_length)

    def encode(self, examples: list[ChoiceExample], with_labels: bool = True) -> Encoded:
        """One feature per example: per choice the tokenized pair (context, choice), cut longest-first.

        ``truncated`` lists the examples one of whose (context, choice) pairs was cut.
        """
        width = len(examples[0].choices) if examples else 0
        for example in examples:
            if not example.choices or len(example.choices) != width:
                raise DataError(
                    f"{example.source}: {len(example.choices)} choices, but {examples[0].source} has {width}; "
                    "every example needs the same number of choices, at least one"
                )
            if with_labels and self.label_to_id[example.label] >= width:
                raise DataError(f"{example.source}: label {example.label!r} but only {width} choices")
        pairs = [LabeledText(example.context, choice, None) for example in examples for choice in example.choices]
        flat = super().encode(pairs, with_labels=False)
        inputs = []
        for index, example in enumerate(examples):
            rows = flat.inputs[index * width : (index + 1) * width]
            feature: dict[str, Any] = {key: [row[key] for row in rows] for key in rows[0]}
            if with_labels:
                feature["labels"] = self.label_to_id[example.label]
            inputs.append(feature)
        return Encoded(inputs=inputs, truncated=sorted({pair // width for pair in flat.truncated}))

    def collator(self) -> MultipleChoiceCollator:
        return MultipleChoiceCollator(self.tokenizer)

    def format_prediction(self, example: ChoiceExample, prediction: np.ndarray) -> dict[str, Any]:
        best = int(prediction.argmax())
        return {
            "id": example.source,
            "context": example.context,
            "choices": example.choices,
            "label": str(best),
            "choice": example.choices[best],
            "probability": float(prediction[best]),
            "probabilities": [float(p) for p in prediction],
        }

    def parse_input(self, line: str, record: dict[str, Any] | None, source: str) -> ChoiceExample:
        """JSON lines ``{"context" or "premise": "...", "choices": ["...", ...]}`` or COPA records."""
        if record is not None and "choice1" in record:
            return copa_example(record, source)
        context = None if record is None else record.get("context", record.get("premise"))
        choices = None if record is None else record.get("choices")
        if (
            not isinstance(context, str)
            or not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(choice, str) for choice in choices)
        ):
            raise DataError(
                f'{source}: expected {{"context": "...", "choices": ["...", "...", ...]}} '
                '(or a COPA record {"premise", "question", "choice1", "choice2"})'
            )
        return ChoiceExample(context, choices, None, source)
