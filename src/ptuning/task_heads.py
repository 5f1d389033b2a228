"""The head a new task of a model gets: none for causal-lm, a fresh linear head, or a verbalizer head (the
backbone's own language-modelling head restricted to the label words), each checked against the backbone and the
prompt's method."""

from __future__ import annotations

from torch import nn

from .config import PromptConfig
from .errors import PtuningError
from .heads import HEAD_KINDS, LinearHead, VerbalizerHead
from .prompts.backbone import NEEDS_LM_HEAD
from .prompts.methods import method_of
from .templates import Verbalizer, word_token_ids
from .vocabulary import HeadKind, HeadType


def new_head(
    model: nn.Module,
    name: str,
    kind: HeadKind,
    labels: list[str],
    config: PromptConfig,
    verbalizer: Verbalizer | None,
) -> nn.Module | None:
    """The head of a new task of ``model`` (a PromptedModel): none for causal-lm, a verbalizer head (the
    backbone's language-modelling head restricted to the label words, checked usable), or a fresh linear head."""
    head_type = HeadType.LINEAR if verbalizer is None else HeadType.VERBALIZER
    if kind != HeadKind.CAUSAL_LM and head_type not in method_of(config).head_types:
        allowed = ", ".join(method_of(config).head_types)
        raise PtuningError(f"method {config.method!r} scores with a {allowed} head, not a {head_type} head")
    if kind == HeadKind.CAUSAL_LM:
        return None
    if verbalizer is None:
        width = HEAD_KINDS[kind].width or len(labels)
        dropout = getattr(model.transformer.config, "hidden_dropout_prob", 0.1)
        return LinearHead(model.transformer.config.hidden_size, width, dropout)
    if kind != HeadKind.SEQUENCE_CLASSIFICATION:
        raise PtuningError(f"a verbalizer scores the labels of sequence classification, not of {kind}")
    if not model.has_lm_head:
        raise PtuningError(f"task {name!r} scores with a verbalizer: it {NEEDS_LM_HEAD}")
    lm_head = model.lm_head()  # refuses a backbone whose language-modelling head is not supported
    prefix = next(path for path, module in model.backbone.named_modules() if module is lm_head) + "."
    untrained = sorted(key for key in getattr(model.backbone, "untrained_keys", ()) if key.startswith(prefix))
    if untrained:
        raise PtuningError(
            f"the backbone has no trained language-modelling head ({', '.join(untrained[:3])} missing): a "
            "verbalizer would score with random weights"
        )
    if verbalizer.masked == model.architecture.decoder:
        where = (
            "after the template (a causal LM): leave {mask} out of it"
            if model.architecture.decoder
            else "at the template's {mask} (a masked LM): put {mask} where the label word goes"
        )
        raise PtuningError(f"template {verbalizer.template!r}: this backbone scores the label words {where}")
    mask_token_id = model.tokenizer.mask_token_id if verbalizer.masked else None
    return VerbalizerHead(word_token_ids(model.tokenizer, verbalizer.words_of(labels)), mask_token_id)
