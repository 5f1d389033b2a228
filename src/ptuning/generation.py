"""Generation under prompts (Prefix-Tuning, Li and Liang; prompt tuning, Lester et al.): transformers' ``generate``
on the backbone, each row of a batch under the prompt of its own causal-lm task through prefill and every decoding
step.

:func:`prompted_inputs` puts each row's prompt in, as its method says, in one batch: a shallow prompt's vectors go
before the row's text embeddings (the row's padding moved in front of them: rows stay left-padded), a deep prompt is
gathered per layer (``PromptedBackbone.mixed_layer_prompts``: shorter prompts left-padded with masked columns) and
stays active for the whole ``generate`` call; the attention prepends it to the layer's keys and values at every step,
so the cache holds only the text's. A row of a task without a prompt (finetune, prompting) reads none of either. Rows
are left-padded (decoders continue from the last column); each row's position ids count its real columns (a shallow
prompt's first vector at 0), moved on by its deep prompt's shift (``shift_positions``), so every row is positioned as
it is alone, whatever the other rows' tasks. transformers moves them on by one each step.

``model`` is a PromptedModel, typed as its base class: model.py delegates here, so this module cannot import it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from . import architectures
from .errors import PtuningError
from .prompts.attention import LayerPrompts, active_prompts
from .prompts.backbone import PromptedBackbone
from .prompts.methods import method_of
from .templates import verbatim
from .vocabulary import HeadKind
from .writing import samples_at


def row_tasks(model: PromptedBackbone, task_ids: torch.Tensor | None, batch_size: int) -> list[str]:
    """The causal-lm task of each row of a PromptedModel's batch (``task_ids`` (batch,) indexes ``task_names``;
    without it, every row is the default task's)."""
    if task_ids is None:
        names = [model.default_task] * batch_size
    else:
        indices = task_ids.tolist()
        if task_ids.dim() != 1 or len(indices) != batch_size:
            raise PtuningError(f"task_ids must hold one task index per row ({batch_size}), got shape {task_ids.shape}")
        if any(index < 0 or index >= len(model.task_names) for index in indices):
            raise PtuningError(f"task_ids index the {len(model.task_names)} tasks {model.task_names}, got {indices}")
        names = [model.task_names[index] for index in indices]
    for name in dict.fromkeys(names):
        record = model.tasks[name]
        if record.kind != HeadKind.CAUSAL_LM:
            raise PtuningError(f"generation needs causal-lm tasks; task {name!r} is {record.kind.value}")
    return names


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """Refuse rows that are empty or not left-padded (their padding after a real token): decoders continue from
    the last column."""
    real = attention_mask.bool()  # (batch, T)
    if not bool(real[:, -1].all()) or not bool((real.long().diff(dim=1) >= 0).all()):
        raise PtuningError(
            "generation needs left-padded rows with at least one token each (tokenizer.padding_side = 'left')"
        )


def new_token_budget(backbone: Any, kwargs: dict[str, Any], length: int) -> int:
    """How many tokens ``generate`` may add to a batch of ``length`` columns under these keyword arguments."""
    config = kwargs.get("generation_config") or backbone.generation_config
    budget = kwargs.get("max_new_tokens", config.max_new_tokens)
    return budget if budget is not None else kwargs.get("max_length", config.max_length) - length


def check_room(model: PromptedBackbone, row_prompts: list[str], lengths: list[int], budget: int) -> None:
    """Refuse rows whose text and ``budget`` new tokens exceed the positions their prompt leaves."""
    longest: dict[str, int] = {}
    for prompt, length in zip(row_prompts, lengths, strict=True):
        longest[prompt] = max(longest.get(prompt, 0), length)
    for prompt, length in longest.items():
        room = model.text_room(prompt)
        if length + budget > room:
            raise PtuningError(
                f"{length} prompt tokens and {budget} new ones exceed the {room} positions this backbone allows under "
                f"prompt {prompt!r}; shorten the input or ask for fewer new tokens"
            )


class PromptedInputs(NamedTuple):
    """A left-padded batch as the backbone's forward takes it, each row under its own task's prompt."""

    inputs_embeds: torch.Tensor  # (batch, L, embedding): [padding; shallow prompt; text]
    attention_mask: torch.Tensor  # (batch, L)
    position_ids: torch.Tensor  # (batch, L)
    layer_prompts: LayerPrompts | None  # the rows' deep prompts, to keep active through every step


def _rows_of(
    model: PromptedBackbone, row_prompts: list[str], kind: str, device: torch.device
) -> tuple[list[str], torch.Tensor]:
    """The rows' prompts whose method has ``kind`` (``per_layer`` or ``input_level``), and each row's index into them
    (batch,): a row without one reads the index past them, none."""
    group = [prompt for prompt in dict.fromkeys(row_prompts) if getattr(method_of(model.prompt_configs[prompt]), kind)]
    return group, torch.tensor([group.index(p) if p in group else len(group) for p in row_prompts], device=device)


def row_layer_prompts(model: PromptedBackbone, names: list[str], device: torch.device) -> LayerPrompts | None:
    """The deep prompts of rows of the causal-lm tasks ``names``, gathered per row (None: no row has one)."""
    row_prompts = [model.tasks[name].prompt for name in names]
    deep, rows = _rows_of(model, row_prompts, "per_layer", device)
    if not deep:
        return None
    if len(set(row_prompts)) == 1:
        return model.layer_prompts(len(names), deep[0])
    return model.mixed_layer_prompts(deep, rows)


def prompted_inputs(
    model: PromptedBackbone, input_ids: torch.Tensor, attention_mask: torch.Tensor, names: list[str]
) -> PromptedInputs:
    """Row ``i`` of the left-padded ``input_ids`` (batch, T) under the prompt of causal-lm task ``names[i]``."""
    check_left_padded(attention_mask)
    row_prompts = [model.tasks[name].prompt for name in names]
    device = input_ids.device
    deep, deep_rows = _rows_of(model, row_prompts, "per_layer", device)
    shallow, shallow_rows = _rows_of(model, row_prompts, "input_level", device)
    text = model.transformer.get_input_embeddings()(input_ids)  # (batch, T, embedding)
    vectors, visible = model.mixed_prompt_vectors(shallow, shallow_rows)  # (batch, P, embedding), (batch, P)
    embeds = torch.cat([vectors.to(text.dtype), text], dim=1)  # (batch, P + T, embedding)
    mask = torch.cat([visible.long(), attention_mask.long()], dim=1)  # (batch, P + T)
    # a stable sort moves each row's masked columns in front, its prompt and text keeping their order
    order = mask.sort(dim=1, stable=True).indices  # (batch, P + T)
    width = int(mask.sum(1).max())  # the longest row; columns before it are padding in every row
    order = order[:, order.shape[1] - width :]  # (batch, L)
    embeds = embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))  # (batch, L, embedding)
    mask = mask.gather(1, order)  # (batch, L)
    configs = [model.prompt_configs[prompt] for prompt in deep]
    shift = torch.tensor([method_of(config).position_shift(config) for config in configs] + [0], device=device)
    # as transformers counts them from the mask (left padding: 0 on the first real column), moved on per prompt
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0) + shift[deep_rows][:, None]  # (batch, L)
    return PromptedInputs(embeds, mask, position_ids, row_layer_prompts(model, names, device))


def prompts_active(layer_prompts: LayerPrompts | None):
    """The context in which the backbone reads the rows' deep prompts (none to set when no row has one)."""
    return nullcontext() if layer_prompts is None else active_prompts(layer_prompts)


@torch.no_grad()
def generate(
    model: PromptedBackbone,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    task_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """transformers' ``generate`` on a PromptedModel's backbone (its ``kwargs``: ``max_new_tokens``, ``do_sample``,
    ``generation_config``, ...), row ``i`` of the left-padded ``input_ids`` (batch, T) under the prompt of the
    causal-lm task ``task_ids[i]`` (an index of ``model.task_names``; without ``task_ids``, the default task's). Each
    row decodes as it would alone. The backbone reads the rows as embeddings (a shallow prompt's vectors before the
    text's), so stopping criteria see the generated tokens only. Returns what ``generate`` returns, its sequences
    those of ``input_ids`` with the new tokens after them (batch, T + new)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)  # (batch, T)
    check_left_padded(attention_mask)
    names = row_tasks(model, task_ids, input_ids.shape[0])
    budget = new_token_budget(model.backbone, kwargs, input_ids.shape[1])
    check_room(model, [model.tasks[name].prompt for name in names], attention_mask.sum(1).tolist(), budget)
    inputs = prompted_inputs(model, input_ids, attention_mask, names)
    # counted over the new tokens: a row's length includes its shallow prompt, which the caller's max_length does not
    settings = {key: value for key, value in kwargs.items() if key != "max_length"} | {"max_new_tokens": budget}
    with prompts_active(inputs.layer_prompts):
        output = model.backbone.generate(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            **settings,
        )
    if inputs.layer_prompts is not None:
        inputs.layer_prompts.check_all_consumed(architectures.model_type_of(model.transformer.config))
    new = output if isinstance(output, torch.Tensor) else output.sequences  # (batch * returned, new)
    sequences = torch.cat([input_ids.repeat_interleave(new.shape[0] // input_ids.shape[0], 0), new], dim=1)
    if isinstance(output, torch.Tensor):
        return sequences  # (batch * returned, T + new)
    output.sequences = sequences
    return output


class StopTexts(StoppingCriteria):
    """Stops a row once the text it generated (:func:`generate` hands criteria the generated tokens only) holds one
    of the ``stops``, decoded as the answer is; ``ended[i]`` records how many tokens row ``i`` had generated then."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: list[str], batch_size: int):
        self.tokenizer, self.stops = tokenizer, stops
        self.ended: list[int | None] = [None] * batch_size

    def __call__(self, generated: torch.Tensor, scores: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        # generated: (batch, new so far)
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        for row, hit in enumerate(done):
            if hit and self.ended[row] is None:
                self.ended[row] = generated.shape[1]
        return torch.tensor(done, dtype=torch.bool, device=generated.device)  # (batch,)


def _answer(
    tokenizer: PreTrainedTokenizerBase, new: list[int], ended: int | None, end_ids: set[int], stops: list[str]
) -> tuple[str, str, int]:
    """One row's text, finish reason and completion tokens, from its ``new`` token ids (finished rows are padded)
    and where a stop string ``ended`` it: the text ends before the stop string or the end-of-text token, which
    count as completion tokens."""
    if ended is not None:
        text = tokenizer.decode(new[:ended], skip_special_tokens=True)
        return text[: min(text.find(stop) for stop in stops if stop in text)], "stop", ended
    end = next((position for position, token in enumerate(new) if token in end_ids), None)
    if end is not None:
        return tokenizer.decode(new[:end], skip_special_tokens=True), "stop", end + 1
    return tokenizer.decode(new, skip_special_tokens=True), "length", len(new)


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows of different lengths as a left-padded batch: ids and attention mask, each (batch, T)."""
    length = max(len(row) for row in rows)
    input_ids = torch.tensor([[pad_id] * (length - len(row)) + row for row in rows])  # (batch, T)
    attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])  # (batch, T)
    return input_ids, attention_mask


def end_ids_of(model: PromptedBackbone, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end a text: the tokenizer's end-of-text and those the backbone's generation config names."""
    configured = model.backbone.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    own = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return list(dict.fromkeys(own + configured))


def pad_id_of(model: PromptedBackbone, tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that pads rows (masked, never read): the tokenizer's padding token, else the end of text."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (end_ids_of(model, tokenizer) or [0])[0]


def generate_texts(
    model: PromptedBackbone,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    tasks: list[str] | None = None,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Continue each of ``prompts`` (tokenized as written: no space put before them) under the prefix of its task
    (``tasks[i]``, a causal-lm task of the PromptedModel ``model``; without ``tasks``, the default task), all in one
    batch; ``settings`` as :func:`generate_from_ids`."""
    if not prompts:
        raise PtuningError("no prompts to generate from")
    token_rows = verbatim(tokenizer)(prompts)["input_ids"]
    return generate_from_ids(model, tokenizer, token_rows, tasks, **settings)


def generate_from_ids(
    model: PromptedBackbone,
    tokenizer: PreTrainedTokenizerBase,
    token_rows: list[list[int]],
    tasks: list[str] | None = None,
    max_new_tokens: int | list[int] = 16,
    stop: str | list[str] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    watchers: list[StoppingCriteria] | None = None,
) -> list[dict[str, Any]]:
    """Continue each row of token ids under the prefix of its task, all in one batch.

    Greedy when ``temperature`` is 0 (or too small to divide by: ``writing.samples_at``), else sampled at that
    temperature from the ``top_p`` nucleus, reproducibly under ``seed`` (the caller's random state is left as it
    was). A row ends at the end-of-text token, at the first of the ``stop`` strings in its generated text (cut
    before it), or after ``max_new_tokens`` (one for all, or one per row: each row is cut at its own, which is what
    it would have written with that budget). Returns per row ``{"generated_text", "finish_reason": "stop" |
    "length", "prompt_tokens", "completion_tokens"}``, the counts as OpenAI's usage (the token that ended the text
    counts as a completion token). ``watchers``: more stopping criteria, called after every step with the ids so far
    (a server streams each row's new text from one and ends each row at its own end).
    """
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(token_rows)
    if not token_rows:
        raise PtuningError("no prompts to generate from")
    if tasks is not None and len(tasks) != len(token_rows):
        raise PtuningError(f"{len(tasks)} task names for {len(token_rows)} prompts: give one task per prompt")
    if min(budgets) < 1 or temperature < 0 or not 0 < top_p <= 1 or any(not text for text in stops):
        raise PtuningError(
            f"max_new_tokens must be at least 1, temperature at least 0, top_p in (0, 1] and stop strings non-empty; "
            f"got {max_new_tokens}, {temperature}, {top_p}, {stops}"
        )
    task_ids = None
    if tasks is not None:
        unknown = sorted(set(tasks) - set(model.task_names))
        if unknown:
            raise PtuningError(f"no task named {', '.join(map(repr, unknown))}; loaded: {', '.join(model.task_names)}")
        task_ids = torch.tensor([model.task_names.index(name) for name in tasks])  # (batch,)
    empty = [position for position, row in enumerate(token_rows) if not row]
    if empty:
        raise PtuningError(f"prompts {empty} have no tokens to continue from")
    end_ids = end_ids_of(model, tokenizer)
    pad_id = pad_id_of(model, tokenizer)
    input_ids, attention_mask = left_padded(token_rows, pad_id)  # each (batch, T)
    device = model.transformer.device
    sampled = samples_at(temperature)
    config = GenerationConfig(
        max_new_tokens=max(budgets),
        do_sample=sampled,
        temperature=temperature if sampled else None,
        top_p=top_p if sampled else None,
        top_k=0 if sampled else None,  # OpenAI's sampling has no top-k cut
        eos_token_id=end_ids or None,
        pad_token_id=pad_id,
    )
    criteria = StopTexts(tokenizer, stops, len(token_rows)) if stops else None
    stopping = ([criteria] if criteria else []) + (watchers or [])
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed % 2**64)  # any integer: torch itself takes [-2^63, 2^64), modulo 2^64
        sequences = generate(
            model,
            input_ids.to(device),
            attention_mask.to(device),
            None if task_ids is None else task_ids.to(device),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList(stopping) if stopping else None,
        )  # (batch, T + new)
    answers = []
    for row, tokens in enumerate(token_rows):
        new = sequences[row, input_ids.shape[1] : input_ids.shape[1] + budgets[row]].tolist()
        ended = criteria.ended[row] if criteria else None
        ended = ended if ended is not None and ended <= budgets[row] else None
        text, reason, count = _answer(tokenizer, new, ended, set(end_ids), stops)
        answers.append(
            {"generated_text": text, "finish_reason": reason, "prompt_tokens": len(tokens), "completion_tokens": count}
        )
    return answers
