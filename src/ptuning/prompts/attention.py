"""The attention function that prepends prompt keys/values, registered with transformers' interface.

Models that route attention through ``transformers.AttentionInterface`` call our function with the
layer's own query/key/value; we prepend the prompt's keys and values for that layer and hand over to
the stock sdpa or eager implementation. The prompt of the current call is set with
:func:`active_prompts` (a context variable) rather than a forward keyword, because ``generate()``
rejects unknown keywords and the adapters for models that bypass the interface (DeBERTa, MPNet) have
no keyword path either: one route serves all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..errors import UnsupportedModelError

SDPA = "ptuning_sdpa"
EAGER = "ptuning_eager"


class PromptColumns(NamedTuple):
    """One layer's prompt for the attention: keys and values (batch, kv_heads, P, head_dim), and which of the P
    columns are real per example (batch, P), or None when all are."""

    key: torch.Tensor
    value: torch.Tensor
    visible: torch.Tensor | None


class LayerPrompts:
    """The prompt keys/values of one forward call, by layer index, and which layers consumed them.

    Keeping track of consumption lets the caller prove that no prompted layer was bypassed. Modules
    without ``layer_idx`` (DistilBERT; ALBERT, whose one module serves every layer) are numbered by
    the order of their calls within the forward.
    """

    def __init__(
        self,
        key_values: dict[int, tuple[torch.Tensor, torch.Tensor]],
        visible: dict[int, torch.Tensor | None] | None = None,
    ):
        self.key_values = key_values
        self.visible = visible or {}  # per layer (batch, P): which prompt columns are real (mixed-task batches)
        self.consumed: set[int] = set()
        self.calls = 0
        self.recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def recorder(cls) -> LayerPrompts:
        """No prompt; keeps every layer's own keys and values (``recorded``), to start a prompt from real tokens."""
        prompts = cls({})
        prompts.recorded = {}
        return prompts

    def take(self, module: nn.Module, key: torch.Tensor, value: torch.Tensor) -> PromptColumns | None:
        """This layer's prompt for the layer's own ``key`` and ``value`` (batch, kv_heads, T, head_dim), if any."""
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            layer = self.calls
            self.calls += 1
        if self.recorded is not None:
            self.recorded[layer] = (key.detach(), value.detach())
        batch_size = key.shape[0]
        pair = self.key_values.get(layer)
        if pair is None:
            return None
        self.consumed.add(layer)
        key, value = pair  # (batch, kv_heads, P, head_dim) each
        visible = self.visible.get(layer)  # (batch, P) or None: every column real
        prompt_batch = key.shape[0]
        if prompt_batch != batch_size:  # generate() with beams or several samples repeats each example
            if batch_size % prompt_batch:
                raise ValueError(f"prompt batch {prompt_batch} does not divide the attention batch {batch_size}")
            repeat = batch_size // prompt_batch
            key, value = (t.repeat_interleave(repeat, dim=0) for t in (key, value))  # (batch * repeat, kvh, P, hd)
            visible = None if visible is None else visible.repeat_interleave(repeat, dim=0)  # (batch * repeat, P)
        return PromptColumns(key, value, visible)

    def check_all_consumed(self, model_type: str) -> None:
        missing = sorted(set(self.key_values) - self.consumed)
        if missing:
            raise UnsupportedModelError(
                f"the {model_type!r} backbone did not route layers {missing} through the prompt-aware "
                "attention function, so their prompts would be silently ignored"
            )


_ACTIVE_PROMPTS: ContextVar[LayerPrompts | None] = ContextVar("ptuning_active_prompts", default=None)


def current_prompts() -> LayerPrompts | None:
    """The prompts of the forward call in progress, if any (for attention adapters)."""
    return _ACTIVE_PROMPTS.get()


@contextmanager
def active_prompts(prompts: LayerPrompts) -> Iterator[LayerPrompts]:
    """Hand prompts to the attention without a forward keyword (``generate()`` rejects unknown ones)."""
    token = _ACTIVE_PROMPTS.set(prompts)
    try:
        yield prompts
    finally:
        _ACTIVE_PROMPTS.reset(token)


def extend_mask(
    mask: torch.Tensor | None, prompt_length: int, visible: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Add ``prompt_length`` key columns in front of a boolean (True: attend) or additive mask (batch, *, q, k):
    open, or per example where ``visible`` (batch, P) says so. Give a mask whenever ``visible`` is given."""
    if mask is None:
        return None
    if visible is None:
        fill = torch.ones if mask.dtype == torch.bool else torch.zeros
        prefix = fill(*mask.shape[:-1], prompt_length, dtype=mask.dtype, device=mask.device)  # (batch, *, q, P)
        return torch.cat([prefix, mask], dim=-1)  # (batch, *, q, P + k)
    mask = mask.expand(visible.shape[0], *mask.shape[1:])  # a mask shared by the batch becomes per example
    opened = visible.view(visible.shape[0], *[1] * (mask.dim() - 2), prompt_length)  # (batch, 1.., 1, P)
    opened = opened.expand(*mask.shape[:-1], prompt_length)  # (batch, *, q, P)
    if mask.dtype == torch.bool:
        return torch.cat([opened, mask], dim=-1)  # (batch, *, q, P + k)
    prefix = torch.zeros(opened.shape, dtype=mask.dtype, device=mask.device).masked_fill(
        ~opened, torch.finfo(mask.dtype).min
    )  # (batch, *, q, P)
    return torch.cat([prefix, mask], dim=-1)  # (batch, *, q, P + k)


def open_mask(query: torch.Tensor, key_length: int, additive: bool) -> torch.Tensor:
    """An all-open mask (1, 1, q, k) for when the model passed none but the prompt columns need one."""
    if additive:
        return torch.zeros(1, 1, query.shape[2], key_length, dtype=query.dtype, device=query.device)
    return torch.ones(1, 1, query.shape[2], key_length, dtype=torch.bool, device=query.device)


def _causal_mask(query: torch.Tensor, key_length: int, additive: bool) -> torch.Tensor:
    """The causal mask sdpa would have applied by itself (it cannot once prompt keys lengthen the keys)."""
    query_length = query.shape[2]
    rows = torch.arange(query_length, device=query.device).unsqueeze(1) + (key_length - query_length)  # (q, 1)
    allowed = torch.arange(key_length, device=query.device).unsqueeze(0) <= rows  # (q, k)
    allowed = allowed[None, None]  # (1, 1, q, k)
    if not additive:
        return allowed
    return torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~allowed, torch.finfo(query.dtype).min
    )  # (1, 1, q, k)


def _model_eager_attention(module: nn.Module) -> Callable:
    """The eager attention function of the module's own modeling file, so eager numerics stay the model's."""
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise UnsupportedModelError(f"{type(module).__name__} has no eager attention function to prompt")
    return function


def _prompted(base: Callable[[nn.Module], Callable], additive_mask: bool) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        # query (batch, heads, q, head_dim); key, value (batch, kv_heads, k, head_dim); mask (batch, 1, q, k) or None
        prompts = _ACTIVE_PROMPTS.get()
        prompt = prompts.take(module, key, value) if prompts is not None else None
        if prompt is not None:
            if attention_mask is None and getattr(module, "is_causal", False) and query.shape[2] > 1:
                attention_mask = _causal_mask(query, key.shape[2], additive_mask)  # (1, 1, q, k)
            elif attention_mask is None and prompt.visible is not None:
                attention_mask = open_mask(query, key.shape[2], additive_mask)  # (1, 1, q, k)
            key = torch.cat([prompt.key.to(key.dtype), key], dim=2)  # (batch, kv_heads, P + k, head_dim)
            value = torch.cat([prompt.value.to(value.dtype), value], dim=2)  # (batch, kv_heads, P + k, head_dim)
            attention_mask = extend_mask(attention_mask, prompt.key.shape[2], prompt.visible)  # (batch, 1, q, P + k)
        return base(module)(module, query, key, value, attention_mask, **kwargs)

    return attention


def register() -> None:
    """Register the prompt-aware attention and mask functions under our names (idempotent)."""
    AttentionInterface.register(SDPA, _prompted(lambda module: ALL_ATTENTION_FUNCTIONS["sdpa"], additive_mask=False))
    AttentionInterface.register(EAGER, _prompted(_model_eager_attention, additive_mask=True))
    AttentionMaskInterface.register(SDPA, sdpa_mask)
    AttentionMaskInterface.register(EAGER, eager_mask)


def prompted_implementation(current: str | None) -> str:
    """Our attention name matching the backbone's current implementation (eager stays eager)."""
    return EAGER if current in ("eager", EAGER) else SDPA


register()
