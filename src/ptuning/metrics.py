"""The official SQuAD v1.1/v2.0 answer metrics, so that scores compare with published numbers."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data.squad import QAExample

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (the official order)."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    """Harmonic mean of token precision and recall; 1 when both are empty (an agreed "no answer"), else 0 if one is."""
    gold_tokens = normalize_answer(gold).split()
    predicted_tokens = normalize_answer(prediction).split()
    if not gold_tokens or not predicted_tokens:
        return float(gold_tokens == predicted_tokens)
    same = sum((Counter(gold_tokens) & Counter(predicted_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(predicted_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_texts(example: QAExample) -> list[str]:
    """The texts a prediction is compared with; an unanswerable question has the single gold answer ""."""
    texts = [text for text, _ in example.answers if normalize_answer(text)]
    return texts or [""]


def best_exact(example: QAExample, prediction: str) -> float:
    return max(exact_match(gold, prediction) for gold in gold_texts(example))


def best_f1(example: QAExample, prediction: str) -> float:
    return max(token_f1(gold, prediction) for gold in gold_texts(example))


def squad_metrics(examples: list[QAExample], predictions: Mapping[str, str]) -> dict[str, float]:
    """Exact match and F1 in percent, max over each question's gold answers; a missing prediction scores 0.

    With answerable and unanswerable questions both present, their separate scores are added
    (``HasAns_*``, ``NoAns_*``) as the official v2.0 script reports them.
    """
    exact: dict[bool, list[float]] = {True: [], False: []}
    f1: dict[bool, list[float]] = {True: [], False: []}
    for example in examples:
        answerable = not example.is_impossible
        prediction = predictions.get(example.id)
        exact[answerable].append(0.0 if prediction is None else best_exact(example, prediction))
        f1[answerable].append(0.0 if prediction is None else best_f1(example, prediction))

    def percent(values: list[float]) -> float:
        return 100.0 * sum(values) / max(len(values), 1)

    metrics = {"exact": percent(exact[True] + exact[False]), "f1": percent(f1[True] + f1[False])}
    if exact[True] and exact[False]:
        metrics.update(
            HasAns_exact=percent(exact[True]),
            HasAns_f1=percent(f1[True]),
            NoAns_exact=percent(exact[False]),
            NoAns_f1=percent(f1[False]),
        )
    return metrics
