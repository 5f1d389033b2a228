"""Continuous batching: rows of causal-lm tasks decoded one step at a time, new rows joining between steps and
finished rows leaving (the scheduling of vLLM and TGI, on transformers' ``DynamicCache``).

Rows that join together are prefilled in a cache of their own, each under its task's prompt as
:func:`generation.prompted_inputs` puts it in (a shallow prompt's vectors before the text; the deep prompts gathered per
row); that cache is then merged into the running batch's: each layer's keys and values left-padded to the longer
length and stacked, the attention mask covering the padding. Each row keeps its own next position id, and the rows'
deep prompts (gathered again whenever rows join or leave) are active at every step, so a row decodes as it would
alone. When rows leave, the columns that are padding in every remaining row go too.

Merging assumes every layer keeps all of its keys: a backbone whose sliding window is shorter than its positions
(``joins_rows`` False) is decoded whole instead (``generation.generate``).

``model`` is a PromptedModel, typed as its base class, as in generation.py.
"""

from __future__ import annotations

import torch
from torch.nn import functional
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from . import architectures
from .generation import left_padded, prompted_inputs, prompts_active, row_layer_prompts
from .prompts.attention import LayerPrompts
from .prompts.backbone import PromptedBackbone
from .writing import Writing, samples_at


def joins_rows(model: PromptedBackbone) -> bool:
    """Whether rows may join a running batch of this backbone: every layer keeps all the keys a row may have (no
    sliding window shorter than the positions, which would cut a merged row's keys by another row's length)."""
    config = model.transformer.config
    window = getattr(config, "sliding_window", None)
    return window is None or window >= config.max_position_embeddings


def choose(logits: torch.Tensor, writings: list[Writing]) -> torch.Tensor:
    """Each row's next token (batch,) from its logits (batch, vocab) as its ``writings`` entry says: greedy at
    temperature 0, else sampled as transformers' ``generate`` samples (its temperature and top-p warpers, top-k off),
    rows of one temperature and top_p together (the seed is the caller's: it seeds the random state)."""
    tokens = logits.argmax(-1)  # (batch,)
    settings = [(writing.temperature, writing.top_p) for writing in writings]
    for temperature, top_p in dict.fromkeys(setting for setting in settings if samples_at(setting[0])):
        rows = [row for row, setting in enumerate(settings) if setting == (temperature, top_p)]
        rows = torch.tensor(rows, device=logits.device)  # (rows,)
        warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)])
        scores = warpers(None, logits.index_select(0, rows))  # (rows, vocab)
        drawn = torch.multinomial(functional.softmax(scores, dim=-1), 1).squeeze(1)  # (rows,)
        tokens = tokens.index_copy(0, rows, drawn)
    return tokens


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``tensor`` with zero columns before its own along ``dim`` (counted from the end) up to ``width``."""
    pad = [0, 0] * (-dim - 1) + [width - tensor.shape[dim], 0]
    return functional.pad(tensor, pad)


class RunningBatch:
    """Rows being decoded together, each under its own causal-lm task's prompt; rows join (:meth:`join`) and leave
    (:meth:`keep`) between steps (:meth:`step`). Row order is the order of joining, kept as rows leave. ``logits``
    (batch, vocab) holds each row's next-token logits, from its prefill or the last step::

        batch.join(token_rows, tasks)
        while len(batch):
            tokens = choose(batch.logits, writings)  # (batch,)
            batch.keep(unfinished)  # rows that ended leave
            batch.step(tokens[unfinished])  # and others may join here
    """

    def __init__(self, model: PromptedBackbone, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self._clear()

    def _clear(self) -> None:
        self.tasks: list[str] = []
        self.cache: DynamicCache | None = None  # the rows' text only: deep prompts join in the attention
        self.attention_mask: torch.Tensor | None = None  # (batch, L): real columns per row
        self.next_positions: torch.Tensor | None = None  # (batch,): the position id of each row's next token
        self.layer_prompts: LayerPrompts | None = None
        self.logits: torch.Tensor | None = None  # (batch, vocab): each row's next-token logits

    def __len__(self) -> int:
        return len(self.tasks)

    def _forward(self, cache: DynamicCache, layer_prompts: LayerPrompts | None, **inputs: torch.Tensor) -> torch.Tensor:
        """The backbone's forward on ``cache``, the rows' deep prompts active: the last column's logits (batch,
        vocab), in float32 as ``generate`` takes them."""
        with prompts_active(layer_prompts):
            output = self.model.backbone(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        if layer_prompts is not None:
            layer_prompts.check_all_consumed(architectures.model_type_of(self.model.transformer.config))
        return output.logits[:, -1].float()  # (batch, vocab)

    @torch.no_grad()
    def join(self, token_rows: list[list[int]], tasks: list[str]) -> None:
        """Prefill rows of token ids, row ``i`` under task ``tasks[i]``'s prompt, and add them after the running rows
        (their next-token logits after the others')."""
        device = self.model.transformer.device
        input_ids, attention_mask = left_padded(token_rows, self.pad_id)  # each (new, T)
        inputs = prompted_inputs(self.model, input_ids.to(device), attention_mask.to(device), tasks)
        cache = DynamicCache()
        logits = self._forward(
            cache,
            inputs.layer_prompts,
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
        )  # (new, vocab)
        self._merge(cache, inputs.attention_mask, inputs.position_ids[:, -1] + 1, tasks)
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])  # (batch, vocab)

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, next_positions: torch.Tensor, tasks: list[str]) -> None:
        """Add the prefilled rows of ``cache`` (their mask (new, L'), next positions (new,)) after the running rows."""
        if self.cache is None:
            self.cache, self.attention_mask, self.next_positions = cache, mask, next_positions
        else:
            width = max(self.attention_mask.shape[1], mask.shape[1])
            layers = []
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                keys = torch.cat([_left_pad(old.keys, width, -2), _left_pad(new.keys, width, -2)])
                values = torch.cat([_left_pad(old.values, width, -2), _left_pad(new.values, width, -2)])
                layers.append((keys, values))  # each (batch + new, kv_heads, width, head_dim)
            self.cache = DynamicCache(ddp_cache_data=layers)
            self.attention_mask = torch.cat([_left_pad(self.attention_mask, width, -1), _left_pad(mask, width, -1)])
            self.next_positions = torch.cat([self.next_positions, next_positions])  # (batch + new,)
        self.tasks = [*self.tasks, *tasks]
        self.layer_prompts = row_layer_prompts(self.model, self.tasks, self.attention_mask.device)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> None:
        """Feed each row its chosen token (batch,): ``logits`` become the next ones."""
        ones = self.attention_mask.new_ones(len(self), 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)  # (batch, L + 1)
        self.logits = self._forward(
            self.cache,
            self.layer_prompts,
            input_ids=tokens[:, None].to(self.attention_mask.device),  # (batch, 1)
            attention_mask=self.attention_mask,
            position_ids=self.next_positions[:, None],  # (batch, 1)
        )
        self.next_positions = self.next_positions + 1

    def keep(self, rows: list[int]) -> None:
        """Only the rows ``rows`` (indices into the batch, in the order they stay) go on decoding."""
        if not rows:
            self._clear()
            return
        if rows == list(range(len(self))):
            return
        index = torch.tensor(rows, device=self.attention_mask.device)
        mask = self.attention_mask.index_select(0, index)  # (kept, L)
        first = int(mask.any(0).long().argmax())  # columns before it are padding in every kept row
        self.attention_mask = mask[:, first:]
        layers = [(layer.keys[index, :, first:], layer.values[index, :, first:]) for layer in self.cache.layers]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.next_positions = self.next_positions.index_select(0, index)
        self.logits = self.logits.index_select(0, index)
        self.tasks = [self.tasks[row] for row in rows]
        self.layer_prompts = row_layer_prompts(self.model, self.tasks, index.device)
