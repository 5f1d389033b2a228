"""Generation (Prefix-Tuning's task): write a target text from an input with the backbone's own language-modelling
head, the loss on the target's tokens only; predictions are generated greedily and scored by exact match, token F1
and ROUGE-L, and by a declared parser's metrics (entities)."""

from __future__ import annotations

import json
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from ..data.generation import GenerationExample, generation_example
from ..errors import DataError, PtuningError
from ..templates import PLACEHOLDERS, verbatim
from .base import Encoded, Task

IGNORED = -100  # a label the loss skips: the input's tokens and the padding


class GenerationTask(Task):
    name = "generation"
    per_token = True
    generates = True

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        labels: list[str],
        max_length: int,
        parser: str | None = None,
        max_new_tokens: int = 64,
        chat_template: bool = False,
        template: str | None = None,
    ):
        from .. import generation_metrics

        super().__init__(tokenizer, labels, max_length)
        if max_new_tokens >= max_length:
            raise PtuningError(
                f"max_new_tokens {max_new_tokens} leaves no room for the input within the {max_length} tokens this "
                "task takes"
            )
        if parser is not None and parser not in generation_metrics.PARSERS:
            raise PtuningError(f"unknown output parser {parser!r}; known: {', '.join(generation_metrics.PARSERS)}")
        self.parser = parser
        self.max_new_tokens = max_new_tokens
        self.chat_template = chat_template
        self.template = template
        self.primary_metric = generation_metrics.primary_metric(parser)
        self.plain = verbatim(tokenizer)  # inputs and targets as written, no space put before them
        with_specials, without = self.plain("a")["input_ids"], self.plain("a", add_special_tokens=False)["input_ids"]
        self.leading = (
            with_specials[: len(with_specials) - len(without)] if with_specials[-len(without) :] == without else []
        )

    def _text(self, example: GenerationExample) -> str:
        """The input written into the template, if the task has one (``{text}``, in one pass)."""
        if self.template is None:
            return example.text
        return PLACEHOLDERS.sub(
            lambda match: example.text if match.group(1) == "text" else match.group(0), self.template
        )

    def _chat(self, example: GenerationExample) -> list[dict[str, str]] | None:
        if example.messages is not None:
            return example.messages
        return [{"role": "user", "content": self._text(example)}] if self.chat_template else None

    def prompt_ids(self, example: GenerationExample) -> list[int]:
        """The tokens the model continues: the input (in its template) after the tokenizer's leading specials (a
        BOS), or the chat rendered up to the assistant's turn."""
        messages = self._chat(example)
        if messages is None:
            return self.leading + self.plain(self._text(example), add_special_tokens=False)["input_ids"]
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(f"{example.source}: chat messages need a tokenizer with a chat template")
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.plain(rendered, add_special_tokens=False)["input_ids"]

    def target_ids(self, example: GenerationExample, prompt: list[int]) -> list[int]:
        """The first target's tokens and the end the model must learn to write: the end of the assistant's turn
        (chat), else the tokenizer's end-of-sequence token."""
        messages = self._chat(example)
        target = example.targets[0]
        if messages is None:
            return self.plain(target, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        conversation = [*messages, {"role": "assistant", "content": target}]
        rendered = self.tokenizer.apply_chat_template(conversation, tokenize=False)
        whole = self.plain(rendered, add_special_tokens=False)["input_ids"]
        if whole[: len(prompt)] != prompt:
            raise DataError(f"{example.source}: the chat template does not extend the prompt with the answer")
        return whole[len(prompt) :]

    def encode(self, examples: list[GenerationExample], with_labels: bool = True) -> Encoded:
        """Prompt (and, with labels, target) tokens within ``max_length`` (unlabeled: leaving room for the answer's
        new tokens); too long, the prompt loses its first tokens (the text just before the answer matters most), down
        to half the room, then the target its last."""
        inputs, truncated = [], []
        room = self.max_length - (0 if with_labels else self.max_new_tokens)
        for index, example in enumerate(examples):
            prompt = self.prompt_ids(example)
            target = self.target_ids(example, prompt) if with_labels else []
            if len(prompt) + len(target) > room:
                truncated.append(index)
                target = target[: room - min(len(prompt), room // 2)]
                prompt = prompt[len(prompt) - (room - len(target)) :]
            ids = prompt + target
            feature: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids)}
            if with_labels:
                feature["labels"] = [IGNORED] * len(prompt) + target
            inputs.append(feature)
        return self.warn_truncated(Encoded(inputs=inputs, truncated=truncated))

    def collator(self):
        return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=IGNORED)

    def predict(
        self,
        model: torch.nn.Module,
        examples: list[GenerationExample],
        batch_size: int = 64,
        max_tokens: int | None = None,
    ) -> list[str]:
        """Greedy answers in input order, from batches of inputs of similar length."""
        return [answer["generated_text"] for answer in self.generate(model, examples, batch_size)]

    def generate(
        self, model: torch.nn.Module, examples: list[GenerationExample], batch_size: int = 64, **settings: Any
    ) -> list[dict[str, Any]]:
        """Each example's answer (``generation.generate_from_ids``'s record), batches of inputs of similar length
        each generated at once; ``settings``: sampling, stop strings, another answer length."""
        from ..generation import generate_from_ids

        prompts = [feature["input_ids"] for feature in self.encode(examples, with_labels=False).inputs]
        order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
        answers: list[dict[str, Any]] = [{}] * len(prompts)
        was_training = model.training
        model.eval()
        settings = {"max_new_tokens": self.max_new_tokens, **settings}
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = generate_from_ids(model, self.tokenizer, [prompts[index] for index in rows], **settings)
            for index, answer in zip(rows, batch, strict=True):
                answers[index] = answer
        model.train(was_training)
        return answers

    def score(self, examples: list[GenerationExample], predictions: list[str]) -> dict[str, float]:
        from ..generation_metrics import generation_metrics

        return generation_metrics(predictions, [example.targets for example in examples], self.parser)

    def format_prediction(self, example: GenerationExample, prediction: str) -> dict[str, Any]:
        given = {"messages": example.messages} if example.messages is not None else {"input": example.text}
        return {**given, "generated_text": prediction}

    def parse_input(self, line: str, record: dict[str, Any] | None, source: str) -> GenerationExample:
        """Plain text is one input; JSON lines give ``{"input": ...}`` or ``{"messages": [...]}``."""
        if record is None:
            return GenerationExample(line, source=source)
        try:
            return generation_example(record, source, labeled=False)
        except DataError as error:
            raise DataError(f"{error} (expected {json.dumps({'input': '...'})} or {{'messages': [...]}})") from error
