"""Sequence classification (one label per text or text pair), scored by accuracy and macro-F1.

With a verbalizer (``templates.Verbalizer``) the text is written into its template first, and the features are what
the verbalizer head scores: the filled template (a causal LM's label words follow it; a masked LM's fill its mask),
or, when a causal LM's words have several tokens, one row per label: the filled template and that label's word.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from ..data.readers import LabeledText
from ..errors import DataError, PtuningError
from ..templates import Verbalizer, verbatim, word_token_ids
from .base import Encoded, MultipleChoiceCollator, Task, softmax


class SequenceClassificationTask(Task):
    name = "sequence-classification"
    primary_metric = "accuracy"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        labels: list[str],
        max_length: int,
        verbalizer: Verbalizer | None = None,
    ):
        super().__init__(tokenizer, labels, max_length)
        self.verbalizer = verbalizer
        if verbalizer is not None:
            self.plain = verbatim(tokenizer)  # the template and the words as written, no space put before them
            self.leading = self._leading_specials()
            self.word_ids = word_token_ids(tokenizer, verbalizer.words_of(self.labels))
            # a causal LM scores words of several tokens one row per label (the verbalizer head's ``expands``)
            self.choice_rows = not verbalizer.masked and any(len(ids) > 1 for ids in self.word_ids)

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
        if self.verbalizer is not None:
            return self._encode_templated(examples, with_labels)
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

    def _encode_templated(self, examples: list[LabeledText], with_labels: bool) -> Encoded:
        """Each example's filled template, cut to fit (its texts are cut, never the template: the score position
        stays); expanded to a row per label word when the words are scored one row each."""
        longest_word = max(len(ids) for ids in self.word_ids) if self.choice_rows else 0
        inputs, truncated = [], []
        for index, example in enumerate(examples):
            feature, cut = self._fit(example, self.max_length - longest_word)
            if cut:
                truncated.append(index)
            if self.choice_rows:
                rows = [feature["input_ids"] + ids for ids in self.word_ids]
                feature = {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]}
            if with_labels:
                feature["labels"] = self.label_to_id[example.label]
            inputs.append(feature)
        return self.warn_truncated(Encoded(inputs=inputs, truncated=truncated))

    def _fit(self, example: LabeledText, budget: int) -> tuple[dict[str, Any], bool]:
        """The features of ``example`` in at most ``budget`` tokens, and whether its texts were cut for that: the
        longer text loses the tokens the input has too many, until it fits (the template is kept whole)."""
        text, pair, cut = example.text, example.text_pair, False
        while True:
            feature = self._templated(text, pair, example.source)
            excess = len(feature["input_ids"]) - budget
            if excess <= 0:
                return feature, cut
            pieces = {"text": text, "pair": pair or ""}
            longer = max(pieces, key=lambda key: len(self.plain(pieces[key], add_special_tokens=False)["input_ids"]))
            ids = self.plain(pieces[longer], add_special_tokens=False)["input_ids"]
            if not ids:
                raise DataError(
                    f"{example.source}: the template alone takes {len(feature['input_ids'])} tokens, more than the "
                    f"{budget} this task allows"
                )
            shorter = self.plain.decode(ids[: max(0, len(ids) - excess)])
            if len(shorter) >= len(pieces[longer]):  # a decoding that does not shrink: drop a character
                shorter = pieces[longer][:-1]
            text, pair = (shorter, pair) if longer == "text" else (text, shorter)
            cut = True

    def _templated(self, text: str, pair: str | None, source: str) -> dict[str, Any]:
        """The filled template's features: a masked LM's with the tokenizer's special tokens around it; a causal
        LM's with those that lead an input (BOS), none after it (the next token is the label word); with the chat
        template, the template filled in as the user's message and the assistant's turn begun."""
        verbalizer = self.verbalizer
        try:
            filled = verbalizer.fill(self.tokenizer, text, pair)
        except PtuningError as error:
            raise DataError(f"{source}: {error}") from error
        if verbalizer.masked:
            feature = dict(self.plain(filled))
            if feature["input_ids"].count(self.tokenizer.mask_token_id) != 1:
                raise DataError(f"{source}: the filled template must hold the mask token once: {filled!r}")
            return feature
        if verbalizer.chat_template:
            if not getattr(self.tokenizer, "chat_template", None):
                raise PtuningError("--chat-template: this tokenizer has no chat template (an instruct model's has)")
            message = [{"role": "user", "content": filled}]
            rendered = self.tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
            ids = self.plain(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = self.leading + self.plain(filled, add_special_tokens=False)["input_ids"]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def _leading_specials(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (a BOS), found by encoding one."""
        with_specials = self.plain("a")["input_ids"]
        without = self.plain("a", add_special_tokens=False)["input_ids"]
        start = next((i for i in range(len(with_specials)) if with_specials[i : i + len(without)] == without), 0)
        return with_specials[:start]

    def collator(self):
        if self.choice_rows:
            return MultipleChoiceCollator(self.tokenizer)
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
