"""Discrete prompts: a template a text is written into, and one label word per label (a verbalizer), both taken
verbatim, spaces included. The recipe parses them, the sequence-classification Task fills the template, the
verbalizer head scores the words (``heads.VerbalizerHead``); the tokenization rules they share are here.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from .errors import PtuningError

TEXT, TEXT_PAIR, MASK = "{text}", "{text_pair}", "{mask}"
PLACEHOLDERS = re.compile(r"\{(text|text_pair|mask)\}")
# a verbalizer's items are separated by commas; a comma inside a word is written \,
ITEM_SEPARATOR = re.compile(r"(?<!\\),")


def parse_verbalizer(text: str) -> dict[str, str]:
    """``LABEL=WORD[,LABEL=WORD...]`` as {label: word}: each item split at its first ``=`` (a word may hold more),
    the word kept verbatim (spaces included), ``\\,`` for a comma in a word; labels distinct, none empty."""
    words: dict[str, str] = {}
    for item in ITEM_SEPARATOR.split(text):
        label, separator, word = item.replace("\\,", ",").partition("=")
        if not separator or not label.strip() or not word:
            raise PtuningError(
                f"item {item!r} is not LABEL=WORD: expected LABEL=WORD pairs separated by commas, each word verbatim "
                '(--verbalizer "fresh= positive,rotten= negative"; a comma in a word is written \\,)'
            )
        label = label.strip()
        if label in words:
            raise PtuningError(f"label {label!r} is given twice")
        words[label] = word
    return words


def verbalizer_problem(text: str) -> str | None:
    """The setting check of ``--verbalizer``: why it does not parse, or None."""
    try:
        parse_verbalizer(text)
    except PtuningError as error:
        return str(error)
    return None


def template_problem(text: str) -> str | None:
    """The setting check of ``--template``: it must say where the text goes."""
    return None if TEXT in text else f"must contain {TEXT} (where the text goes; {TEXT_PAIR} and {MASK} may follow)"


@dataclass(frozen=True)
class Verbalizer:
    """A task's discrete prompt: the ``template`` (``{text}``, ``{text_pair}``, ``{mask}``), each label's word, and
    whether an instruct model's chat template wraps the filled template (``chat_template``)."""

    template: str
    words: dict[str, str]
    chat_template: bool = False

    def __post_init__(self) -> None:
        problem = template_problem(self.template)
        if problem:
            raise PtuningError(f"template {self.template!r} {problem}")

    @property
    def masked(self) -> bool:
        """Scored at the template's mask (a masked LM), not after the template (a causal LM)."""
        return MASK in self.template or "[MASK]" in self.template

    def words_of(self, labels: list[str]) -> list[str]:
        """The words in the order of ``labels``, which must be the verbalizer's labels."""
        if sorted(labels) != sorted(self.words):
            raise PtuningError(
                f"the verbalizer's labels {sorted(self.words)} differ from the task's labels {sorted(labels)}: give "
                "one word for each label of the data"
            )
        return [self.words[label] for label in labels]

    def fill(self, tokenizer: Any, text: str, text_pair: str | None) -> str:
        """The template with the texts and the tokenizer's mask token written in (in one pass: a text that holds
        ``{mask}`` stays as it is)."""
        if text_pair is not None and TEXT_PAIR not in self.template:
            raise PtuningError(f"the example has a second text, but the template {self.template!r} has no {TEXT_PAIR}")
        if text_pair is None and TEXT_PAIR in self.template:
            raise PtuningError(f"the template {self.template!r} has {TEXT_PAIR}, but the example has no second text")
        if self.masked and tokenizer.mask_token is None:
            raise PtuningError(f"the template {self.template!r} holds a mask, but the tokenizer has no mask token")
        values = {"text": text, "text_pair": text_pair or "", "mask": tokenizer.mask_token}
        return PLACEHOLDERS.sub(lambda match: values[match.group(1)], self.template)


def verbatim(tokenizer: Any) -> Any:
    """``tokenizer``, or a copy of it that puts no space before a text: a byte-level BPE tokenizer loaded with
    ``add_prefix_space`` (for pre-split words) would read the template's "Review:" as " Review:" and a word
    "positive" as " positive"."""
    if not getattr(tokenizer, "add_prefix_space", False) or not hasattr(tokenizer, "backend_tokenizer"):
        return tokenizer
    from tokenizers import pre_tokenizers

    plain = copy.deepcopy(tokenizer)
    pre_tokenizer = plain.backend_tokenizer.pre_tokenizer
    parts = _sequence(pre_tokenizer) if isinstance(pre_tokenizer, pre_tokenizers.Sequence) else [pre_tokenizer]
    for part in parts:
        if hasattr(part, "add_prefix_space"):
            part.add_prefix_space = False
    plain.add_prefix_space = False
    return plain


def _sequence(pre_tokenizer: Any) -> list[Any]:
    """The parts of a tokenizers ``Sequence`` (it indexes, but has no length)."""
    parts, index = [], 0
    while True:
        try:
            parts.append(pre_tokenizer[index])
        except IndexError:
            return parts
        index += 1


def word_token_ids(tokenizer: Any, words: list[str]) -> list[list[int]]:
    """Each word's token ids as the (verbatim) tokenizer reads it alone, without special tokens."""
    plain = verbatim(tokenizer)
    ids = [plain(word, add_special_tokens=False)["input_ids"] for word in words]
    empty = [word for word, tokens in zip(words, ids, strict=True) if not tokens]
    if empty:
        raise PtuningError(f"the label word {empty[0]!r} is no token at all: give each label a word")
    return ids
