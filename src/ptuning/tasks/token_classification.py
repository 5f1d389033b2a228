"""Token classification (NER, POS, chunking): label on a word's first sub-token, scored over words."""

from __future__ import annotations

from typing import Any

import numpy as np
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from transformers import DataCollatorForTokenClassification

from ..data.readers import TaggedSentence
from ..errors import DataError
from .base import Encoded, Task, softmax, strings

IGNORE = -100


class WordTags(list):
    """A sentence's predicted tags (a list, as seqeval scores them) with each tag's probability in ``scores``
    (None for words cut off by truncation, which are tagged outside any span)."""

    def __init__(self, tags: list[str], scores: list[float | None]):
        super().__init__(tags)
        self.scores = scores


def word_offsets(words: list[str], text: str | None) -> list[tuple[int, int]]:
    """Each word's (start, end) character offsets in ``text`` (the words joined by spaces when there is none)."""
    text = " ".join(words) if text is None else text
    offsets, position = [], 0
    for word in words:
        start = text.find(word, position)
        if start < 0:  # the words are not in the text as given: offsets into the words joined by spaces
            return word_offsets(words, None)
        offsets.append((start, start + len(word)))
        position = start + len(word)
    return offsets


SCHEME_PREFIXES = ("B-", "I-", "E-", "S-")
OUTSIDE = "O"


def runs(tags: list[str]) -> list[tuple[str, int, int]]:
    """(tag, first word, last word) of each run of one tag other than "O": the groups of tags that mark no span
    (POS, chunk labels without B-/I-), as transformers' token-classification pipeline groups them."""
    found: list[tuple[str, int, int]] = []
    for index, tag in enumerate(tags):
        if found and found[-1][0] == tag and found[-1][2] == index - 1:
            found[-1] = (tag, found[-1][1], index)
        elif tag != OUTSIDE:
            found.append((tag, index, index))
    return found


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
            if self._cut(example.words, word_ids, len(inputs["input_ids"])):
                encoded.truncated.append(index)
            encoded.inputs.append(inputs)
            encoded.meta.append(word_ids)
        return self.warn_truncated(encoded)

    def _cut(self, words: list[str], word_ids: list[int | None], length: int) -> bool:
        """Whether truncation dropped words: the input fills ``max_length`` and a word after the last one kept has
        tokens (a word of no tokens, like a zero-width space, is never cut)."""
        if length < self.max_length:
            return False
        kept = max((word for word in word_ids if word is not None), default=-1)
        return any(self.tokenizer.tokenize(word) for word in words[kept + 1 :])

    def collator(self):
        return DataCollatorForTokenClassification(self.tokenizer, label_pad_token_id=IGNORE)

    def decode(self, logits: list[np.ndarray], encoded: Encoded, examples: list[TaggedSentence]) -> list[WordTags]:
        """Word-level tags (read on each word's first sub-token) and their probabilities; words cut off by
        truncation are predicted outside any span."""
        predictions = []
        for token_logits, word_ids, example in zip(logits, encoded.meta, examples, strict=True):
            tags: list[str] = [self.outside] * len(example.words)
            scores: list[float | None] = [None] * len(example.words)
            probabilities = softmax(token_logits)  # (tokens, labels)
            best = probabilities.argmax(-1)
            previous = None
            for position, word in enumerate(word_ids):
                if word is not None and word != previous:
                    tags[word] = self.labels[int(best[position])]
                    scores[word] = float(probabilities[position, best[position]])
                previous = word
            predictions.append(WordTags(tags, scores))
        return predictions

    def score(self, examples: list[TaggedSentence], predictions: list[list[str]]) -> dict[str, float]:
        gold = [list(example.tags) for example in examples]
        predictions = [list(tags) for tags in predictions]  # seqeval accepts plain lists only
        pairs = [(g, p) for gs, ps in zip(gold, predictions, strict=True) for g, p in zip(gs, ps, strict=True)]
        metrics = {"accuracy": 100.0 * sum(g == p for g, p in pairs) / max(len(pairs), 1)}
        if self.spans:
            metrics["precision"] = 100.0 * precision_score(gold, predictions, zero_division=0)
            metrics["recall"] = 100.0 * recall_score(gold, predictions, zero_division=0)
            metrics["f1"] = 100.0 * f1_score(gold, predictions, zero_division=0)
        return metrics

    def format_prediction(self, example: TaggedSentence, prediction: list[str]) -> dict[str, Any]:
        """Words and tags, and the spans in the Hugging Face token-classification shape (tags of no span scheme: each
        run of one tag but "O"): ``entity_group``, ``score`` (the mean probability of the span's tags), ``word`` (the
        span's text), ``start``/``end`` (character offsets in the input text; the words joined by spaces when they
        were given as words), plus ``word_start``/``word_end`` (word indices, end exclusive)."""
        text = getattr(example, "text", None) or " ".join(example.words)
        offsets = word_offsets(example.words, text)
        scores = getattr(prediction, "scores", None)
        entities = []
        for kind, start, end in get_entities(list(prediction)) if self.spans else runs(list(prediction)):
            span = [scores[i] for i in range(start, end + 1) if scores[i] is not None] if scores else []
            first, last = offsets[start][0], offsets[end][1]
            entities.append(
                {
                    "entity_group": kind,
                    "score": sum(span) / len(span) if span else None,
                    "word": text[first:last],
                    "start": first,
                    "end": last,
                    "word_start": start,
                    "word_end": end + 1,
                }
            )
        return {"words": example.words, "tags": list(prediction), "entities": entities}

    def parse_input(self, line: str, record: dict[str, Any] | None, source: str) -> TaggedSentence:
        """Plain text is split on whitespace; JSON lines give ``{"words": [...]}`` or ``{"text": "..."}``."""
        text = None
        if record is None:
            text = line
        elif isinstance(record.get("words"), list):
            words = strings(record["words"], "words", source)
        elif isinstance(record.get("text"), str):
            text = record["text"]
        else:
            raise DataError(f'{source}: expected {{"words": [...]}} or {{"text": "..."}}')
        if text is not None:
            words = text.split()
        return TaggedSentence(words, [self.outside] * len(words), source, text=text)
