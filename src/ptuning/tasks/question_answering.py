"""Extractive question answering (SQuAD 1.1 / 2.0): windows over long contexts, answers decoded as context spans.

A context longer than ``max_length`` is cut into overlapping windows (``doc_stride`` tokens shared), one
feature each; the answer of an example is the best-scoring valid span over all of its windows, so that
the predicted text is always a substring of the context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase
from transformers.data.data_collator import pad_without_fast_tokenizer_warning

from ..data.squad import QAExample
from ..errors import DataError, PtuningError
from ..metrics import best_f1, squad_metrics
from .base import MODEL_INPUTS, Encoded, Task, softmax

NO_ANSWER = (0, 0)  # both labels on the first token ([CLS]): "the answer is not in this window"


@dataclass
class Window:
    """Where one feature comes from: its example, and per token the character span in the context (None elsewhere)."""

    example: int
    offsets: list[tuple[int, int] | None]


@dataclass
class QACollator:
    """Pads the token inputs with the tokenizer and stacks the (start, end) labels into a (batch, 2) tensor."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = [{key: value for key, value in feature.items() if key != "labels"} for feature in features]
        batch = dict(pad_without_fast_tokenizer_warning(self.tokenizer, inputs, padding=True, return_tensors="pt"))
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([feature["labels"] for feature in features], dtype=torch.long)
        return batch


class QuestionAnsweringTask(Task):
    name = "question-answering"
    primary_metric = "f1"
    per_token = True

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        labels: list[str],
        max_length: int,
        doc_stride: int = 128,
        max_answer_length: int = 30,
        n_best: int = 20,
        version_2: bool = False,
        null_threshold: float = 0.0,
    ):
        """``version_2``: questions may be unanswerable; "" is predicted when the no-answer score beats the best
        span's by more than ``null_threshold`` (see ``choose_null_threshold``)."""
        super().__init__(tokenizer, labels, max_length)
        if not getattr(tokenizer, "is_fast", False):
            raise PtuningError("question answering needs a fast tokenizer: answers are located by character offsets")
        if doc_stride < 0 or max_answer_length < 1 or n_best < 1:
            raise PtuningError(
                f"need doc_stride >= 0, max_answer_length >= 1 and n_best >= 1; "
                f"got {doc_stride}, {max_answer_length}, {n_best}"
            )
        self.doc_stride = doc_stride
        self.max_answer_length = max_answer_length
        self.n_best = n_best
        self.version_2 = version_2
        self.null_threshold = null_threshold

    # features -----------------------------------------------------------------------------------

    def _strides(self, examples: list[QAExample], questions: list[str]) -> list[int]:
        """Per example, the window overlap: ``doc_stride``, at most half of the room the question leaves."""
        lengths = [len(ids) for ids in self.tokenizer(questions, add_special_tokens=False)["input_ids"]]
        specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        strides = []
        for example, length in zip(examples, lengths, strict=True):
            room = self.max_length - specials - length
            if room < 1:
                raise DataError(
                    f"{example.source}: the question alone takes {length} tokens, which leaves no room for the "
                    f"context within max_length {self.max_length} ({specials} special tokens); shorten it"
                )
            strides.append(min(self.doc_stride, room // 2))
        return strides

    def encode(self, examples: list[QAExample], with_labels: bool = True) -> Encoded:
        """One feature per window, in example order; nothing is truncated away, so nothing is counted as truncated."""
        questions = [example.question.lstrip() for example in examples]  # leading blanks only take room
        strides = self._strides(examples, questions)
        features: list[list[tuple[dict[str, Any], Window]]] = [[] for _ in examples]
        for stride in sorted(set(strides)):  # the tokenizer takes one stride per call
            indices = [index for index, value in enumerate(strides) if value == stride]
            batch = self.tokenizer(
                [questions[index] for index in indices],
                [examples[index].context for index in indices],
                truncation="only_second",
                max_length=self.max_length,
                stride=stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            for feature, position in enumerate(batch["overflow_to_sample_mapping"]):
                index = indices[position]
                spans = zip(batch["offset_mapping"][feature], batch.sequence_ids(feature), strict=True)
                window = Window(index, [tuple(span) if sequence == 1 else None for span, sequence in spans])
                inputs = {key: batch[key][feature] for key in MODEL_INPUTS if key in batch}
                if with_labels:
                    inputs["labels"] = list(self._label(examples[index], window.offsets))
                features[index].append((inputs, window))
        pairs = [pair for windows in features for pair in windows]
        return Encoded(inputs=[inputs for inputs, _ in pairs], meta=[window for _, window in pairs])

    @staticmethod
    def _label(example: QAExample, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
        """Start and end token of the first gold answer if the window holds all of it, else ``NO_ANSWER``."""
        context = [position for position, span in enumerate(offsets) if span is not None]
        if example.is_impossible or not example.answers or not context:
            return NO_ANSWER
        text, start_char = example.answers[0]
        end_char = start_char + len(text.rstrip())
        start_char += len(text) - len(text.lstrip())
        if offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
            return NO_ANSWER
        start = max(position for position in context if offsets[position][0] <= start_char)
        end = min(position for position in context if offsets[position][1] >= end_char)
        return start, end

    def collator(self) -> QACollator:
        return QACollator(self.tokenizer)

    # predictions --------------------------------------------------------------------------------

    def _best_span(self, logits: np.ndarray, offsets: list[tuple[int, int] | None]) -> tuple[float, int, int] | None:
        """(score, start, end) of the window's best valid span among its ``n_best`` starts x ``n_best`` ends.

        Only context tokens compete; one-token spans at the candidate starts are always candidates too, so
        every window with context yields a span.
        """
        in_context = np.array([span is not None for span in offsets])
        if not in_context.any():
            return None

        def top(values: np.ndarray) -> np.ndarray:
            order = np.argsort(-np.where(in_context, values, -np.inf), kind="stable")[: self.n_best]
            return order[in_context[order]]

        starts = top(logits[:, 0])
        ends = np.union1d(top(logits[:, 1]), starts)
        length = ends[None, :] - starts[:, None] + 1
        scores = logits[starts, 0][:, None] + logits[ends, 1][None, :]
        scores = np.where((length >= 1) & (length <= self.max_answer_length), scores, -np.inf)
        row, column = np.unravel_index(int(scores.argmax()), scores.shape)
        return float(scores[row, column]), int(starts[row]), int(ends[column])

    def calibrate(self, model, validation: list[QAExample], batch_size: int = 64) -> dict[str, Any]:
        """SQuAD 2.0: the no-answer threshold that maximizes F1 on validation (never chosen on test)."""
        if not self.version_2 or not validation:
            return {}
        self.null_threshold = choose_null_threshold(validation, self.predict(model, validation, batch_size))
        return {"null_threshold": self.null_threshold}

    @staticmethod
    def _probabilities(logits: np.ndarray, offsets: list[tuple[int, int] | None]) -> np.ndarray:
        """(2, tokens): the window's start and end probabilities over its first token (no answer) and its context
        tokens, normalized as transformers' question-answering pipeline does."""
        kept = np.array([span is not None for span in offsets])
        kept[0] = True
        return softmax(np.where(kept, logits.T, -np.inf))  # (2, tokens)

    def decode(self, logits: list[np.ndarray], encoded: Encoded, examples: list[QAExample]) -> list[dict[str, Any]]:
        """Per example: ``text`` (the answer, "" for none), its character ``start``/``end`` (-1 for none), the
        best span's ``score`` (start + end logit), ``probability`` (start x end probability in its window) and
        text ``span_text``, and ``null_score`` and ``null_probability`` (the lowest first-token start + end logit,
        and start x end probability, over the example's windows)."""
        best: list[tuple[float, int, int, float] | None] = [None] * len(examples)
        null = [math.inf] * len(examples)
        null_probability = [1.0] * len(examples)
        for window_logits, window in zip(logits, encoded.meta, strict=True):
            index = window.example
            null[index] = min(null[index], float(window_logits[0, 0] + window_logits[0, 1]))
            probabilities = self._probabilities(window_logits, window.offsets)
            null_probability[index] = min(null_probability[index], float(probabilities[0, 0] * probabilities[1, 0]))
            span = self._best_span(window_logits, window.offsets)
            if span is not None and (best[index] is None or span[0] > best[index][0]):
                chance = float(probabilities[0, span[1]] * probabilities[1, span[2]])
                best[index] = (span[0], window.offsets[span[1]][0], window.offsets[span[2]][1], chance)
        predictions = []
        for example, span, null_score, no_answer in zip(examples, best, null, null_probability, strict=True):
            score, start, end, probability = span if span is not None else (-math.inf, -1, -1, 0.0)
            span_text = example.context[start:end] if span is not None else ""
            if span is None or (self.version_2 and null_score - score > self.null_threshold):
                text, start, end = "", -1, -1
            else:
                text = span_text
            predictions.append(
                {
                    "text": text,
                    "start": start,
                    "end": end,
                    "score": score,
                    "probability": probability,
                    "null_score": null_score,
                    "null_probability": no_answer,
                    "span_text": span_text,
                }
            )
        return predictions

    def score(self, examples: list[QAExample], predictions: list[dict[str, Any]]) -> dict[str, float]:
        return squad_metrics(examples, {ex.id: p["text"] for ex, p in zip(examples, predictions, strict=True)})

    def format_prediction(self, example: QAExample, prediction: dict[str, Any]) -> dict[str, Any]:
        """The answer, its offsets, its ``score`` (start + end logit) and ``probability`` (of no answer when the
        answer is "")."""
        answered = prediction["start"] >= 0
        return {
            "id": example.id,
            "prediction_text": prediction["text"],
            "start": prediction["start"],
            "end": prediction["end"],
            "score": prediction["score"],
            "probability": prediction["probability"] if answered else prediction["null_probability"],
        }

    def parse_input(self, line: str, record: dict[str, Any] | None, source: str) -> QAExample:
        """JSON lines ``{"question": ..., "context": ..., "id": ...}``; the id defaults to the line's place."""
        expected = '{"question": "...", "context": "...", "id": "..." (optional)}'
        if record is None:
            raise DataError(f"{source}: question answering reads JSON lines {expected}, not plain text")
        question, context = record.get("question"), record.get("context")
        if not all(isinstance(text, str) and text.strip() for text in (question, context)):
            raise DataError(f"{source}: expected {expected} with a non-empty question and context")
        return QAExample(str(record.get("id", source)), question, context, source=source)


def choose_null_threshold(examples: list[QAExample], decoded: list[dict[str, Any]]) -> float:
    """The ``null_threshold`` that maximizes F1 on these (validation) examples, as the official SQuAD 2.0
    script's best_f1_thresh finds it: questions are answered in order of increasing ``null_score - score``
    and the cut with the highest total F1 wins (the lowest such cut on a tie). ``decoded`` comes from
    ``decode`` under any threshold: its ``span_text`` is the answer a question gets when it is answered.
    """
    gains = sorted(
        (
            prediction["null_score"] - prediction["score"],
            best_f1(example, prediction["span_text"]) - best_f1(example, ""),
        )
        for example, prediction in zip(examples, decoded, strict=True)
        if math.isfinite(prediction["score"])  # no span at all: "" whatever the threshold
    )
    if not gains:
        return 0.0
    threshold, best_total, total = gains[0][0] - 1.0, 0.0, 0.0  # below every difference: answer nothing
    for position, (difference, gain) in enumerate(gains):
        total += gain
        tie_ends = position + 1 == len(gains) or gains[position + 1][0] != difference
        if tie_ends and total > best_total:
            threshold, best_total = difference, total
    return threshold
