"""CoNLL-2003 NER as extractive question answering (the machine-reading-comprehension formulation of NER).

Each sentence becomes one question per entity type; every mention of that type is a gold answer (SQuAD
semantics: finding any of them is correct), and a sentence without one makes an unanswerable question.
"""

from __future__ import annotations

from seqeval.metrics.sequence_labeling import get_entities

from .readers import TaggedSentence
from .squad import QAExample

ENTITY_QUESTIONS = {
    "PER": "Which persons are mentioned?",
    "ORG": "Which organizations are mentioned?",
    "LOC": "Which locations are mentioned?",
    "MISC": "Which other named entities (nationalities, events, works, ...) are mentioned?",
}


def build_conll2003_qa(sentences: list[TaggedSentence]) -> list[QAExample]:
    """Four questions per sentence (PER, ORG, LOC, MISC) over the words joined by single spaces."""
    examples = []
    for sentence in sentences:
        context = " ".join(sentence.words)
        starts, position = [], 0
        for word in sentence.words:
            starts.append(position)
            position += len(word) + 1
        mentions = get_entities(sentence.tags)
        for kind, question in ENTITY_QUESTIONS.items():
            answers = [
                (" ".join(sentence.words[first : last + 1]), starts[first])
                for found, first, last in mentions
                if found == kind
            ]
            examples.append(
                QAExample(
                    f"{sentence.source}:{kind}",
                    question,
                    context,
                    answers,
                    is_impossible=not answers,
                    source=f"{sentence.source} ({kind} question)",
                )
            )
    return examples
