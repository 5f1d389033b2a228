"""The prompt methods as objects: each says what it adds to a backbone, what trains, what a checkpoint stores, how
many positions it takes from the text and how it changes the backbone's inputs. The model asks its prompt's method
(:func:`method_of`) and never branches on a method's name.

- ``deep`` (P-Tuning v2): per-layer keys/values handed to the attention (:class:`LayerPrompts`);
- ``shallow`` (prompt tuning) and ``ptuning-v1``: embeddings prepended to the text's;
- ``linear-probe``: no prompt, only the head trains;
- ``finetune``: no prompt, every backbone weight trains and the checkpoint carries the backbone;
- ``prompting``: no prompt and nothing trains: a template and label words, scored by the backbone's own
  language-modelling head (the verbalizer head).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from .. import architectures
from ..config import PromptConfig
from ..errors import PtuningError, UnsupportedModelError
from ..vocabulary import HeadType
from . import deberta, mpnet
from .attention import LayerPrompts, active_prompts, prompted_implementation
from .encoder import PromptEncoder, gather_key_values, split_key_values

# the attention adapters of backbones whose attention bypasses transformers' interface (architectures.py routes)
ADAPTERS = {"deberta": deberta.install, "mpnet": mpnet.install}


class PromptMethod:
    """No prompt: the text enters the frozen backbone as it is and only the head trains (the linear probe). Every
    method is this one with what it changes."""

    per_layer = False  # hands per-layer keys/values to the attention
    input_level = False  # prepends embeddings: the input lengthens, so it cannot share a forward with other prompts
    trains_backbone = False  # every backbone weight trains; the checkpoint stores the backbone
    steers_generation = False  # can prompt a language-modelling head (task causal-lm)
    # the heads a sequence-classification task may score with: a linear probe with the (frozen) verbalizer head
    # would train nothing
    head_types: tuple[HeadType, ...] = (HeadType.LINEAR,)

    def install(self, backbone: PreTrainedModel) -> None:
        """Prepare ``backbone`` (the loaded model, with its language-modelling head for causal-lm) for the prompt."""

    def build(self, config: PromptConfig, transformer: PreTrainedModel, folded: bool) -> PromptEncoder | None:
        """The prompt's trainable table for the backbone body ``transformer``, or None: this method has none."""
        return None

    def start(
        self, encoder: PromptEncoder, config: PromptConfig, transformer: PreTrainedModel, token_ids: torch.Tensor
    ) -> None:
        """Set the flat prompt table of ``encoder`` from real tokens ``token_ids`` (P,) (``prompt_init`` vocab or
        text)."""
        raise PtuningError(f"{type(self).__name__} has no prompt to start from tokens")

    def positions(self, config: PromptConfig) -> int:
        """Places of the position table the prompt takes from the text."""
        return 0

    def position_shift(self, config: PromptConfig) -> int:
        """How far the text's position ids move on."""
        return 0

    def backbone_inputs(
        self, inputs: dict[str, Any], encoder: PromptEncoder | None, transformer: PreTrainedModel
    ) -> dict[str, Any]:
        """The backbone's keyword arguments with the prompt put in, from the text's ``inputs``."""
        return inputs

    def text_states(self, hidden: torch.Tensor, config: PromptConfig) -> torch.Tensor:
        """The hidden states (batch, T, hidden) of the text tokens, from the backbone's output."""
        return hidden


class Finetune(PromptMethod):
    """No prompt: every backbone weight trains, so the backbone is part of the result."""

    trains_backbone = True
    steers_generation = True  # the tuned backbone writes by itself
    head_types = (HeadType.LINEAR, HeadType.VERBALIZER)

    def install(self, backbone: PreTrainedModel) -> None:
        backbone.requires_grad_(True)


class Deep(PromptMethod):
    """P-Tuning v2: trainable keys/values prepended in the self-attention of the prompted layers."""

    per_layer = True
    steers_generation = True
    head_types = (HeadType.LINEAR, HeadType.VERBALIZER)

    def install(self, backbone: PreTrainedModel) -> None:
        transformer = backbone.base_model
        route = architectures.architecture(transformer.config).route
        if route != "interface":
            ADAPTERS[route](transformer)
            return
        if not type(transformer)._can_set_attn_implementation():
            raise UnsupportedModelError(
                f"{type(transformer).__name__} does not route attention through transformers' AttentionInterface"
            )
        backbone.set_attn_implementation(prompted_implementation(transformer.config._attn_implementation))

    def build(self, config: PromptConfig, transformer: PreTrainedModel, folded: bool) -> PromptEncoder:
        _, kv_heads, head_dim = architectures.attention_geometry(transformer.config)
        width = len(prompted_layers(config, transformer.config)) * 2 * kv_heads * head_dim
        return PromptEncoder(config, width, kv_heads * head_dim, folded=folded, activation=nn.Tanh)

    def start(
        self, encoder: PromptEncoder, config: PromptConfig, transformer: PreTrainedModel, token_ids: torch.Tensor
    ) -> None:
        """Each layer's prompt keys/values become the ones the frozen body computes for ``token_ids`` run as a text
        (its positions 0..P-1, so the start is exact with ``shift_positions``)."""
        layers = prompted_layers(config, transformer.config)
        recorder = LayerPrompts.recorder()
        was_training = transformer.training
        transformer.eval()  # the backbone's dropout must not reach the start
        try:
            with torch.no_grad(), active_prompts(recorder):
                transformer(input_ids=token_ids.unsqueeze(0).to(transformer.device))  # (1, P)
        finally:
            transformer.train(was_training)
        missing = [layer for layer in layers if layer not in recorder.recorded]
        if missing:
            raise UnsupportedModelError(f"layers {missing} did not pass their keys/values through the prompt route")
        # each recorded key/value (1, kv_heads, P, head_dim) -> (P, kv_heads * head_dim), in the table's column order
        columns = [tensor[0].transpose(0, 1).flatten(1) for layer in layers for tensor in recorder.recorded[layer]]
        encoder.table.data.copy_(torch.cat(columns, dim=1))  # (P, layers * 2 * kv_heads * head_dim)

    def positions(self, config: PromptConfig) -> int:
        return config.length if config.shift_positions else 0

    def position_shift(self, config: PromptConfig) -> int:
        return self.positions(config)


class InputLevel(PromptMethod):
    """Trainable embeddings prepended to the text's: prompt tuning (``shallow``, its table initialized from the
    vocabulary's embeddings) and P-tuning v1 (produced by an LSTM or MLP prompt encoder)."""

    input_level = True
    head_types = (HeadType.LINEAR, HeadType.VERBALIZER)

    def __init__(self, initialized_from_embeddings: bool, steers_generation: bool):
        self.initialized_from_embeddings = initialized_from_embeddings
        self.steers_generation = steers_generation

    def build(self, config: PromptConfig, transformer: PreTrainedModel, folded: bool) -> PromptEncoder:
        embeddings = transformer.get_input_embeddings().weight  # (vocab, embedding)
        initial = None
        if self.initialized_from_embeddings:
            initial = torch.randn(config.length, embeddings.shape[1]) * embeddings.detach().std()  # (P, embedding)
        width = embeddings.shape[1]
        return PromptEncoder(config, width, width, initial=initial, folded=folded, activation=nn.ReLU)

    def start(
        self, encoder: PromptEncoder, config: PromptConfig, transformer: PreTrainedModel, token_ids: torch.Tensor
    ) -> None:
        """The prompt vectors become the embeddings of ``token_ids`` (P,)."""
        embeddings = transformer.get_input_embeddings().weight  # (vocab, embedding)
        encoder.table.data.copy_(embeddings.detach()[token_ids.to(embeddings.device)])  # (P, embedding)

    def positions(self, config: PromptConfig) -> int:
        return config.length

    def backbone_inputs(
        self, inputs: dict[str, Any], encoder: PromptEncoder | None, transformer: PreTrainedModel
    ) -> dict[str, Any]:
        input_ids = inputs.pop("input_ids")  # (batch, T)
        batch_size = input_ids.shape[0]
        prompt_vectors = encoder()  # (P, embedding)
        length = prompt_vectors.shape[0]
        text = transformer.get_input_embeddings()(input_ids)  # (batch, T, embedding)
        prompt_vectors = prompt_vectors.unsqueeze(0).expand(batch_size, -1, -1)  # (batch, P, embedding)
        inputs["inputs_embeds"] = torch.cat([prompt_vectors.to(text.dtype), text], dim=1)  # (batch, P + T, embedding)
        attention_mask = inputs["attention_mask"]
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)  # (batch, T)
        inputs["attention_mask"] = torch.cat([attention_mask.new_ones(batch_size, length), attention_mask], 1)
        if inputs.get("token_type_ids") is not None:  # (batch, T) -> (batch, P + T)
            inputs["token_type_ids"] = torch.cat(
                [inputs["token_type_ids"].new_zeros(batch_size, length), inputs["token_type_ids"]], 1
            )
        return inputs  # attention_mask (batch, P + T)

    def text_states(self, hidden: torch.Tensor, config: PromptConfig) -> torch.Tensor:
        return hidden[:, config.length :]  # (batch, P + T, hidden) -> (batch, T, hidden)


def prompted_layers(config: PromptConfig, backbone_config: PretrainedConfig) -> list[int]:
    return config.prompted_layers(backbone_config.num_hidden_layers)


def start_token_ids(config: PromptConfig, vocab_size: int, tokenizer: PreTrainedTokenizerBase | None) -> torch.Tensor:
    """The real tokens a prompt starts from (P,): drawn from the vocabulary, or the init text's repeated to the
    prompt length and cut there (as PEFT's text initialization of prompt tuning)."""
    if config.init == "vocab":
        return torch.randint(vocab_size, (config.length,))
    if tokenizer is None:
        raise PtuningError("prompt_init text needs the backbone's tokenizer")
    ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PtuningError(f"prompt_init_text {config.init_text!r} has no tokens")
    return torch.tensor((ids * (config.length // len(ids) + 1))[: config.length])


def layer_prompts(
    encoder: PromptEncoder, config: PromptConfig, backbone_config: PretrainedConfig, batch_size: int
) -> LayerPrompts:
    """A deep prompt for a batch of ``batch_size``, as the attention function receives it."""
    _, kv_heads, head_dim = architectures.attention_geometry(backbone_config)
    table = encoder()  # (P, layers * 2 * kv_heads * head_dim)
    key_values = split_key_values(table, prompted_layers(config, backbone_config), kv_heads, head_dim, batch_size)
    return LayerPrompts(key_values)  # each layer's key and value (batch, kv_heads, P, head_dim)


def mixed_layer_prompts(
    prompts: list[tuple[PromptEncoder, PromptConfig]], rows: torch.Tensor, backbone_config: PretrainedConfig
) -> LayerPrompts:
    """Deep prompts for a batch whose example ``i`` reads ``prompts[rows[i]]`` (none when ``rows[i]`` is
    ``len(prompts)``; ``rows``: (batch,)): gathered per layer, shorter prompts left-padded with masked columns."""
    _, kv_heads, head_dim = architectures.attention_geometry(backbone_config)
    # each table (P_i, layers_i * 2 * kv_heads * head_dim), with its layers
    tables = [(encoder(), prompted_layers(config, backbone_config)) for encoder, config in prompts]
    # each layer's key and value (batch, kv_heads, longest, head_dim), its visible columns (batch, longest)
    key_values, visible = gather_key_values(tables, rows, kv_heads, head_dim)
    return LayerPrompts(key_values, visible)


class Prompting(PromptMethod):
    """Discrete prompting: no prompt table and nothing trains; the task's template and label words, scored by the
    backbone's language-modelling head, are the whole method."""

    steers_generation = True  # generation: the frozen backbone writes after the task's template
    head_types = (HeadType.VERBALIZER,)


# every value of PromptConfig.method
PROMPT_METHODS: dict[str, PromptMethod] = {
    "deep": Deep(),
    # generation reads a shallow prompt's vectors before the text's; P-tuning v1 is not offered (nor tested) there
    "shallow": InputLevel(initialized_from_embeddings=True, steers_generation=True),
    "ptuning-v1": InputLevel(initialized_from_embeddings=False, steers_generation=False),
    "finetune": Finetune(),
    "linear-probe": PromptMethod(),
    "prompting": Prompting(),
}


def method_of(config: PromptConfig) -> PromptMethod:
    return PROMPT_METHODS[config.method]
