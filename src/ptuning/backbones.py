"""Turn a backbone reference (alias, local path, hub name) into a model and tokenizer."""

from __future__ import annotations

import os
from collections.abc import Callable

from tokenizers import pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from . import architectures
from .aliases import ALIASES
from .errors import PtuningError


def resolve(reference: str) -> str:
    """The local folder or hub name that ``reference`` stands for."""
    backbone = ALIASES.get(reference)
    if backbone is None:
        return reference
    if not backbone.installed():
        raise PtuningError(backbone.missing(reference))
    return str(backbone.where())


def _load(loader: Callable, reference: str, what: str, **kwargs):
    location = resolve(reference)
    try:
        return loader(location, **kwargs)
    except (OSError, ValueError) as error:
        kind = "local folder" if os.path.isdir(location) else "hub name"
        raise PtuningError(
            f"could not load the {what} of backbone {reference!r} ({kind} {location!r}); "
            f"give a local folder, an alias ({', '.join(ALIASES)}) or a reachable hub model: {error}"
        ) from error


def load_backbone(reference: str, lm_head: bool = False) -> PreTrainedModel:
    """The base model, or with ``lm_head`` the model with its language-modelling head (``AutoModelForCausalLM``
    for a decoder, ``AutoModelForMaskedLM`` for an encoder: generation, verbalizer heads).

    ``untrained_keys`` on the result lists the weights the checkpoint lacked (randomly initialized on
    every load), so that a head relying on them (the pooler, a language-modelling head) can be refused.
    """
    auto = AutoModel
    if lm_head:
        decoder = architectures.architecture(_load(AutoConfig.from_pretrained, reference, "config")).decoder
        auto = AutoModelForCausalLM if decoder else AutoModelForMaskedLM
    loader = auto.from_pretrained
    model, info = _load(loader, reference, "model", output_loading_info=True)
    model.untrained_keys = list(info.get("missing_keys", ()))
    return model


def load_tokenizer(reference: str) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer, ready for batches of pre-split words: byte-level BPE tokenizers get a prefix space
    (a word alone then tokenizes as it does inside a sentence); one without a pad token pads with its end-of-text
    token, as is customary for decoders; padding goes on the right, where position ids and per-token outputs expect
    it."""
    tokenizer = _load(AutoTokenizer.from_pretrained, reference, "tokenizer")
    if hasattr(tokenizer, "add_prefix_space") and not tokenizer.add_prefix_space:
        tokenizer = _load(AutoTokenizer.from_pretrained, reference, "tokenizer", add_prefix_space=True)
    pre_tokenizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if isinstance(pre_tokenizer, pre_tokenizers.ByteLevel) and not pre_tokenizer.add_prefix_space:
        # a generic fast tokenizer keeps the flag but not its effect; GPT-2's own class sets it this way
        pre_tokenizer.add_prefix_space = True
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PtuningError(f"the tokenizer of backbone {reference!r} has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token  # padded places are masked, so the token's meaning never counts
    tokenizer.padding_side = "right"
    return tokenizer
