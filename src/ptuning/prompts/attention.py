"""The attention function that prepends prompt keys/values, registered with transformers' interface.

Models that route attention through ``transformers.AttentionInterface`` call our function with the
layer's own query/key/value; we prepend the prompt's keys and values for that layer and hand over to
the stock sdpa or eager implementation. The prompt travels as a keyword argument of the model's
forward, which transformers passes down to the attention function unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..errors import UnsupportedModelError

PROMPT_KWARG = "ptuning_prompt"
SDPA = "ptuning_sdpa"
EAGER = "ptuning_eager"


class LayerPrompts:
    """The prompt keys/values of one forward call, by layer index, and which layers consumed them.

    Keeping track of consumption lets the caller prove that no prompted layer was bypassed.
    """

    def __init__(self, key_values: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.key_values = key_values
        self.consumed: set[int] = set()

    def take(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise UnsupportedModelError(
                f"{type(module).__name__} has no layer_idx, so its prompt cannot be chosen"
            )
        pair = self.key_values.get(layer)
        if pair is not None:
            self.consumed.add(layer)
        return pair

    def check_all_consumed(self, model_type: str) -> None:
        missing = sorted(set(self.key_values) - self.consumed)
        if missing:
            raise UnsupportedModelError(
                f"the {model_type!r} backbone did not route layers {missing} through the prompt-aware "
                "attention function, so their prompts would be silently ignored"
            )


def _extend_mask(mask: torch.Tensor | None, prompt_length: int) -> torch.Tensor | None:
    """Add ``prompt_length`` always-visible key columns in front of a boolean or additive mask."""
    if mask is None:
        return None
    visible = torch.ones if mask.dtype == torch.bool else torch.zeros
    prefix = visible(*mask.shape[:-1], prompt_length, dtype=mask.dtype, device=mask.device)
    return torch.cat([prefix, mask], dim=-1)


def _model_eager_attention(module: nn.Module) -> Callable:
    """The eager attention function of the module's own modeling file, so eager numerics stay the model's."""
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise UnsupportedModelError(f"{type(module).__name__} has no eager attention function to prompt")
    return function


def _prompted(base: Callable[[nn.Module], Callable]) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        prompts: LayerPrompts | None = kwargs.pop(PROMPT_KWARG, None)
        if prompts is not None:
            pair = prompts.take(module)
            if pair is not None:
                prompt_key, prompt_value = pair
                key = torch.cat([prompt_key.to(key.dtype), key], dim=2)
                value = torch.cat([prompt_value.to(value.dtype), value], dim=2)
                attention_mask = _extend_mask(attention_mask, prompt_key.shape[2])
        return base(module)(module, query, key, value, attention_mask, **kwargs)

    return attention


def register() -> None:
    """Register the prompt-aware attention and mask functions under our names (idempotent)."""
    AttentionInterface.register(SDPA, _prompted(lambda module: ALL_ATTENTION_FUNCTIONS["sdpa"]))
    AttentionInterface.register(EAGER, _prompted(_model_eager_attention))
    AttentionMaskInterface.register(SDPA, sdpa_mask)
    AttentionMaskInterface.register(EAGER, eager_mask)


def prompted_implementation(current: str | None) -> str:
    """Our attention name matching the backbone's current implementation (eager stays eager)."""
    return EAGER if current in ("eager", EAGER) else SDPA


register()
