"""What every task shares: encoded features, the batched inference loop, and label checks."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from ..errors import DataError

logger = logging.getLogger("ptuning")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Encoded:
    """Model inputs (one dict per feature, ready for a collator) and what decoding needs besides them.

    ``meta`` holds one entry per feature for the task's decoder (token tasks: word ids; QA: the example a
    window belongs to and its character offsets). ``truncated`` lists the examples (by index) cut to fit.
    """

    inputs: list[dict[str, Any]]
    meta: list[Any] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)


class MultipleChoiceCollator:
    """Pads every choice of every example of a batch to one length: tensors (batch, choices, length).

    Works as a transformers ``Trainer`` data collator; ``labels`` (batch,) is passed on where present.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        choices = len(features[0]["input_ids"])
        keys = [key for key in features[0] if key != "labels"]
        flat = [{key: feature[key][choice] for key in keys} for feature in features for choice in range(choices)]
        result = {key: value.view(len(features), choices, -1) for key, value in self.pad(flat).items()}
        if "labels" in features[0]:
            result["labels"] = torch.tensor([feature["labels"] for feature in features], dtype=torch.long)
        return result


def strings(values: list[Any], name: str, source: str) -> list[str]:
    """``values`` of a JSON input, each a string: a number, null or object is refused naming the field, never made
    into text."""
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{source}: {name}[{index}]: expected a string, got {json.dumps(value)}")
    return values


class Task:
    """Base of the task families; subclasses turn examples into features and logits into predictions."""

    name = ""
    primary_metric = ""
    per_token = False  # whether the model's logits are per token (kept per feature up to its length)
    choice_rows = False  # whether a feature is several rows (choices, tokens) scored together (batched apart)
    log_truncation = True  # a Predictor encodes one input at a time and says it per answer instead
    generates = False  # answers are written token by token (generation), not decoded from one forward's logits

    def __init__(self, tokenizer: PreTrainedTokenizerBase, labels: list[str], max_length: int):
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.label_to_id = {label: index for index, label in enumerate(self.labels)}
        self.max_length = max_length

    def check_labels(self, examples: list[Any]) -> None:
        """Refuse gold labels the model has no output for, naming where they occur."""
        for example in examples:
            unknown = sorted(set(self.gold(example)) - set(self.label_to_id))
            if unknown:
                where = example.where(unknown[0]) if hasattr(example, "where") else example.source
                raise DataError(f"{where}: label(s) {unknown} unknown to the model; it knows {self.labels}")

    def warn_truncated(self, encoded: Encoded) -> Encoded:
        if encoded.truncated and self.log_truncation:
            logger.warning(
                "%d example(s) were longer than %d tokens and were truncated", len(encoded.truncated), self.max_length
            )
        return encoded

    @staticmethod
    def gold(example: Any) -> list[str]:
        """The example's gold label names that must be known to the model (none for span tasks)."""
        return []

    def calibrate(self, model: torch.nn.Module, validation: list[Any], batch_size: int = 64) -> dict[str, Any]:
        """Fit decoding settings on validation after training; returns them to keep in the checkpoint."""
        return {}

    def encode(self, examples: list[Any], with_labels: bool = True) -> Encoded:
        raise NotImplementedError

    def collator(self):
        raise NotImplementedError

    def decode(self, logits: list[np.ndarray], encoded: Encoded, examples: list[Any]) -> list[Any]:
        raise NotImplementedError

    def score(self, examples: list[Any], predictions: list[Any]) -> dict[str, float]:
        raise NotImplementedError

    def format_prediction(self, example: Any, prediction: Any) -> dict[str, Any]:
        raise NotImplementedError

    def parse_input(self, line: str, record: dict[str, Any] | None, source: str) -> Any:
        raise NotImplementedError

    def predict(
        self, model: torch.nn.Module, examples: list[Any], batch_size: int = 64, max_tokens: int | None = None
    ) -> list[Any]:
        """Predictions in input order; forwards of at most ``batch_size`` inputs (and ``max_tokens`` padded tokens)."""
        encoded = self.encode(examples, with_labels=False)
        logits = run_model(
            model, encoded.inputs, self.collator(), batch_size, per_token=self.per_token, max_tokens=max_tokens
        )
        return self.decode(logits, encoded, examples)

    def predict_and_score(
        self, model: torch.nn.Module, examples: list[Any], batch_size: int = 64, max_tokens: int | None = None
    ) -> tuple[list[Any], dict[str, float]]:
        self.check_labels(examples)
        predictions = self.predict(model, examples, batch_size, max_tokens)
        return predictions, self.score(examples, predictions)

    def evaluate(self, model: torch.nn.Module, examples: list[Any], batch_size: int = 64) -> dict[str, float]:
        return self.predict_and_score(model, examples, batch_size)[1]


def run_model(
    model: torch.nn.Module,
    inputs: list[dict[str, Any]],
    collator,
    batch_size: int,
    per_token: bool | list[bool],
    task_ids: list[int] | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Logits per feature, in input order; batches are formed by length so little padding is computed.

    A batch holds ``batch_size`` features at most, and (with ``max_tokens``) at most that many padded tokens (rows
    times the longest row; one feature longer than that runs alone). With ``task_ids`` (one per feature, indexing
    the model's tasks) a batch mixes tasks: one backbone forward, each task's head on its own rows; ``per_token``
    is then given per feature.
    """
    per_feature = per_token if isinstance(per_token, list) else [per_token] * len(inputs)
    lengths = [token_count(feature["input_ids"]) for feature in inputs]
    order = sorted(range(len(inputs)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    for index in order:  # ascending length: the newest feature is the batch's longest
        batch = batches[-1] if batches else []
        fits = (
            batch
            and len(batch) < batch_size
            and (max_tokens is None or (len(batch) + 1) * lengths[index] <= max_tokens)
        )
        if fits:
            batch.append(index)
        else:
            batches.append([index])
    results: list[np.ndarray] = [np.empty(0)] * len(inputs)
    was_training = model.training
    if was_training:  # a walk over every module: with a thousand loaded tasks it costs more than a batch
        model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for indices in tqdm(
            batches, desc="predict", unit="batch", leave=False, disable=not progress or len(batches) < 4
        ):
            batch = collator([{k: v for k, v in inputs[i].items() if k in MODEL_INPUTS} for i in indices])
            arguments = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
            if task_ids is not None:
                arguments["task_ids"] = torch.tensor([task_ids[i] for i in indices], device=device)
            output = model(**arguments)
            rows = output.per_example() if hasattr(output, "per_example") else output.logits
            for row, index in enumerate(indices):
                logits = rows[row].float().cpu().numpy()
                results[index] = logits[: len(inputs[index]["input_ids"])] if per_feature[index] else logits
    if was_training:
        model.train()
    return results


def token_count(input_ids: list) -> int:
    """Tokens in one feature: a sequence, or several (one per choice of a multiple-choice example)."""
    return sum(len(row) for row in input_ids) if input_ids and isinstance(input_ids[0], list) else len(input_ids)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
