"""Scores of generated texts against their targets, in percent, for the generation task family.

Names (stable; the task reports them and keeps its best epoch by the one :func:`primary_metric` names):

- always: ``exact_match`` and ``f1`` (the official SQuAD definitions of :mod:`ptuning.metrics`) and ``rougeL``
  (Google's ``rouge-score``, F-measure, no stemming), each the best over an example's references, averaged;
  rouge-score keeps only ASCII letters and digits as tokens, so two empty or wholly non-Latin texts score 0 there;
- with a parser (``PARSERS``): ``{parser}_precision``, ``{parser}_recall``, ``{parser}_f1``, micro over the parsed items
  of all examples, e.g. ``entities_f1`` for generative NER;
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import cache

from absl import logging as absl_logging
from rouge_score import rouge_scorer
from seqeval.metrics.sequence_labeling import get_entities

from .errors import PtuningError
from .metrics import exact_match, token_f1

# rouge-score imports absl, whose (unused) log handler holds the sys.stderr of the moment and closes it whenever
# logging is reconfigured (uvicorn's start does) unless it is the process's own: a redirected stderr would be closed
absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__

NO_ENTITIES = "none"  # the target of a sentence without entities: a model must say so rather than stop at once
ENTITY_SEPARATOR = ";"
# "TEXT (TYPE)": the type is the last parenthesised word, so texts such as "Mladost ( L )" keep their own brackets
_ENTITY = re.compile(r"(?P<text>.*\S)\s*\(\s*(?P<type>[^\s();]+)\s*\)", re.DOTALL)

Entity = tuple[str, str]
ParsedEntities = Counter[tuple[str, str | None]]  # a malformed item has the type None


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _percent(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / max(len(values), 1)


def text_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """``exact_match``, token ``f1`` and ``rougeL`` in percent: best over each example's references, then averaged."""
    _check_lengths(predictions, references)
    exact, f1, rouge = [], [], []
    for number, (prediction, targets) in enumerate(zip(predictions, references, strict=True)):
        if isinstance(targets, str) or not targets:
            raise PtuningError(f"example {number}: expected a non-empty list of reference texts, got {targets!r}")
        exact.append(max(exact_match(target, prediction) for target in targets))
        f1.append(max(token_f1(target, prediction) for target in targets))
        rouge.append(_rouge().score_multi(list(targets), prediction)["rougeL"].fmeasure)
    return {"exact_match": _percent(exact), "f1": _percent(f1), "rougeL": _percent(rouge)}


def parse_entities(text: str, *, strict: bool = False, none_marker: str = NO_ENTITIES) -> ParsedEntities:
    """The (text, type) pairs of ``"Peter Blackburn (PER); Brussels (LOC)"``, counted (a repeated pair counts twice).

    Whitespace is collapsed; ``""`` or the none-marker (any case) means no entities; empty items are skipped. A
    malformed item becomes ``(item, None)``, which matches no gold pair: a wrong prediction. ``strict`` (for
    references) raises instead.
    """
    text = " ".join(text.split())
    if text.lower() in ("", none_marker.lower()):
        return Counter()
    found: ParsedEntities = Counter()
    for item in (part.strip() for part in text.split(ENTITY_SEPARATOR)):
        if not item:
            continue
        match = _ENTITY.fullmatch(item)
        if match:
            found[(match["text"], match["type"])] += 1
        elif strict:
            raise PtuningError(f"malformed entity {item!r} in {text!r}: expected 'TEXT (TYPE)' items joined by '; '")
        else:
            found[(item, None)] += 1
    return found


def format_entities(entities: Iterable[Entity], none_marker: str = NO_ENTITIES) -> str:
    """The inverse of :func:`parse_entities`: ``"Peter Blackburn (PER); Brussels (LOC)"``, or the none-marker."""
    items = []
    for text, kind in entities:
        text = " ".join(text.split())
        if not text or ENTITY_SEPARATOR in text or not re.fullmatch(r"[^\s();]+", kind):
            raise PtuningError(f"entity ({text!r}, {kind!r}) cannot be written as 'TEXT (TYPE)' without ambiguity")
        items.append(f"{text} ({kind})")
    return f"{ENTITY_SEPARATOR} ".join(items) or none_marker


def entities_from_tags(words: Sequence[str], tags: Sequence[str]) -> list[Entity]:
    """The entities seqeval scores on a tag sequence (IOB1 or IOB2), as (words joined by spaces, type) in order."""
    if len(words) != len(tags):
        raise PtuningError(f"{len(words)} words but {len(tags)} tags: {list(words)!r}")
    return [(" ".join(words[first : last + 1]), kind) for kind, first, last in get_entities(list(tags))]


Parser = Callable[..., Counter]
# what a generation task may declare as its `parser`: name -> parse(text, *, strict) returning counted items
PARSERS: dict[str, Parser] = {"entities": parse_entities}


def parsed_metrics(predicted: Sequence[str], references: Sequence[str], parse: Parser) -> dict[str, float]:
    """Micro ``precision``, ``recall`` and ``f1`` in percent over counted items (0 where nothing is predicted or gold,
    as seqeval's ``zero_division=0``)."""
    _check_lengths(predicted, references)
    matched = predicted_count = gold_count = 0
    for number, (prediction, reference) in enumerate(zip(predicted, references, strict=True)):
        try:
            gold = parse(reference, strict=True)
        except PtuningError as error:
            raise PtuningError(f"reference {number}: {error}") from None
        guessed = parse(prediction)
        matched += sum((gold & guessed).values())
        predicted_count += sum(guessed.values())
        gold_count += sum(gold.values())
    precision = matched / predicted_count if predicted_count else 0.0
    recall = matched / gold_count if gold_count else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100.0 * precision, "recall": 100.0 * recall, "f1": 100.0 * f1}


def entity_metrics(predicted: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Entity precision/recall/F1 over (text, type) pairs: seqeval's micro counts when each text names one span.

    A generated answer has no positions, so a pair matches by its text: a gold entity whose text also appears
    elsewhere in the sentence cannot be told from that other occurrence.
    """
    return parsed_metrics(predicted, references, parse_entities)


def primary_metric(parser: str | None) -> str:
    """The metric a generation task is judged on: ``{parser}_f1`` with a parser, else ``rougeL``."""
    return f"{_known(parser)}_f1" if parser else "rougeL"


def generation_metrics(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], parser: str | None = None
) -> dict[str, float]:
    """Text metrics, the parser's metrics (prefixed with its name) and ``primary``; see the module's names.

    A reference is a text or a list of texts; a parsed task needs exactly one per example.
    """
    lists = [[reference] if isinstance(reference, str) else list(reference) for reference in references]
    metrics = text_metrics(predictions, lists)
    if parser:
        parse = PARSERS[_known(parser)]
        for number, targets in enumerate(lists):
            if len(targets) != 1:
                raise PtuningError(f"example {number}: a parsed output has one reference, not {targets!r}")
        scores = parsed_metrics(predictions, [targets[0] for targets in lists], parse)
        metrics.update({f"{parser}_{name}": value for name, value in scores.items()})
    return metrics


def _known(parser: str | None) -> str:
    if parser not in PARSERS:
        raise PtuningError(f"unknown output parser {parser!r}; known: {', '.join(PARSERS)}")
    return parser


def _check_lengths(predictions: Sequence[str], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise PtuningError(f"{len(predictions)} predictions for {len(references)} references")
