"""PromptedBackbone: a frozen transformers model that reads named prompts, each entering as its method says.

Given examples that each read a prompt, it returns the text's hidden states. Layer-level prompts (deep, or none)
share one forward, deep ones gathered per layer by example; an input-level prompt lengthens the input its own way,
so its examples run apart. It knows nothing of tasks and heads (``PromptedModel`` adds them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import architectures
from ..checkpoint import backbone_fingerprint
from ..config import PromptConfig
from ..errors import PtuningError
from .attention import LayerPrompts, active_prompts
from .methods import PromptMethod, layer_prompts, method_of, mixed_layer_prompts, start_token_ids

NEEDS_LM_HEAD = (
    "needs a model with its language-modelling head (AutoModelForCausalLM for a decoder, AutoModelForMaskedLM for an "
    "encoder)"
)


def stored_share(stored: int, trainable: int, total: int) -> float:
    """Stored parameters over the model that serves (frozen backbone + what is stored): the
    reparameterization's training-only weights count in neither."""
    return stored / (total - trainable + stored)


class PromptedBackbone(nn.Module):
    """A frozen transformers ``backbone`` and named ``prompts`` (their tables in an ``nn.ModuleDict``, their settings
    in ``prompt_configs``).

    ``backbone`` is the loaded model, with its language-modelling head when ``lm_head`` (prefix-tuning for
    generation, verbalizer heads); ``transformer`` is its body. Only the prompts train, unless a prompt's method
    trains the backbone.
    """

    def __init__(self, backbone: PreTrainedModel, lm_head: bool = False):
        super().__init__()
        if lm_head and backbone.base_model is backbone:
            raise PtuningError(
                f"this backbone ({type(backbone).__name__}) has no language-modelling head: a task "
                f"that reads it {NEEDS_LM_HEAD}"
            )
        self.backbone = backbone if lm_head else backbone.base_model
        self.architecture = architectures.architecture(self.transformer.config)
        self.prompts = nn.ModuleDict()  # prompt name -> its table (methods that have one)
        self.prompt_configs: dict[str, PromptConfig] = {}
        self._fingerprint_before_cast: float | None = None
        self.backbone.requires_grad_(False)

    @property
    def has_lm_head(self) -> bool:
        """Whether the backbone was kept with its language-modelling head."""
        return self.backbone is not self.transformer

    def lm_head(self) -> nn.Module:
        """The module that maps the body's last hidden states to vocabulary logits."""
        return architectures.language_model_head(self.backbone)

    @property
    def transformer(self) -> PreTrainedModel:
        """The backbone's body (without any language-modelling head)."""
        return self.backbone.base_model

    @property
    def default_prompt(self) -> str:
        """The prompt read when none is named: the only one."""
        if len(self.prompt_configs) != 1:
            raise PtuningError(f"name one of the prompts {', '.join(self.prompt_configs) or '(none)'}")
        return next(iter(self.prompt_configs))

    def backbone_fingerprint(self) -> float:
        """The checksum a checkpoint records of its backbone (of the full-precision weights, if since cast)."""
        return self._fingerprint_before_cast or backbone_fingerprint(self.transformer)

    @property
    def trains_backbone(self) -> bool:
        return any(method_of(config).trains_backbone for config in self.prompt_configs.values())

    def cast_backbone(self, dtype: torch.dtype) -> None:
        """Hold the frozen backbone in ``dtype`` (bf16/fp16 halve its memory); prompts and heads stay in fp32."""
        if self.trains_backbone:
            raise PtuningError(
                "fine-tuning trains the backbone, so a fine-tuned checkpoint's backbone stays fp32: --precision casts "
                "only a frozen backbone (training a fine-tuned one in bf16/fp16 still uses mixed precision)"
            )
        self._fingerprint_before_cast = self.backbone_fingerprint()
        self.backbone.to(dtype)

    def train(self, mode: bool = True) -> PromptedBackbone:
        """Training mode; the backbone stays in eval mode (no dropout) when a prompt sets ``backbone_dropout`` off."""
        super().train(mode)
        if mode and not all(config.backbone_dropout for config in self.prompt_configs.values()):
            self.backbone.eval()
        return self

    # prompts ------------------------------------------------------------------------------------

    def add_prompt(
        self,
        name: str,
        config: PromptConfig,
        folded: bool = False,
        causal: bool = False,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        """A prompt ``name`` (``folded``: in the flat form a checkpoint holds; ``causal``: it steers generation). Its
        method prepares the backbone for it; a backbone that trains serves one prompt only. A new prompt starts as
        ``config.init`` says (``tokenizer``: for an init text)."""
        method = method_of(config)
        if causal and not method.steers_generation:
            raise PtuningError(
                "task 'causal-lm' supports methods deep (prefix-tuning), shallow (prompt tuning), finetune and "
                f"prompting, not {config.method!r}"
            )
        if self.prompt_configs and (method.trains_backbone or self.trains_backbone):
            raise PtuningError(
                "a fine-tuned backbone serves its own task only: fine-tuning changes the weights every other task "
                f"relies on (prompts here: {', '.join(self.prompt_configs)})"
            )
        method.install(self.backbone)
        encoder = method.build(config, self.transformer, folded)
        if not folded and config.init != "random":
            vocab_size = self.transformer.get_input_embeddings().weight.shape[0]
            method.start(encoder, config, self.transformer, start_token_ids(config, vocab_size, tokenizer))
        self.prompt_configs[name] = config
        if encoder is not None:
            self.prompts[name] = encoder.to(self.transformer.device).train(self.training)

    def remove_prompt(self, name: str) -> None:
        self.prompt_configs.pop(name, None)
        if name in self.prompts:
            self.prompts.pop(name)

    def _method(self, prompt: str) -> PromptMethod:
        return method_of(self.prompt_configs[prompt])

    def text_room(self, prompt: str | None = None) -> int:
        """Longest input the position table allows under a prompt (it may take places: input-level prompts, shifted
        positions)."""
        config = self.prompt_configs[prompt or self.default_prompt]
        return architectures.max_text_length(self.transformer, method_of(config).positions(config))

    def _check_per_layer(self, prompt: str) -> None:
        if not self._method(prompt).per_layer:
            raise PtuningError(f"method {self.prompt_configs[prompt].method!r} has no per-layer prompt")
        if self.training and self.transformer.is_activation_checkpointing:
            # recomputation in backward runs outside the prompt's context: its gradients would be silently wrong
            raise PtuningError("deep prompts do not support activation (gradient) checkpointing of the backbone")

    def prompt_key_values(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer, the prompt's (key, value), each (batch, heads, length, head_dim); None for unprompted layers."""
        by_layer = self.layer_prompts(batch_size).key_values
        return [by_layer.get(layer) for layer in range(self.transformer.config.num_hidden_layers)]

    def layer_prompts(self, batch_size: int, prompt: str | None = None) -> LayerPrompts:
        """The deep prompt of one forward call, as the attention function receives it (one prompt for the batch)."""
        prompt = prompt or self.default_prompt
        self._check_per_layer(prompt)
        return layer_prompts(self.prompts[prompt], self.prompt_configs[prompt], self.transformer.config, batch_size)

    def mixed_layer_prompts(self, prompts: list[str], rows: torch.Tensor) -> LayerPrompts:
        """The deep prompts of a batch whose example ``i`` reads ``prompts[rows[i]]`` (``rows``: (batch,)), gathered
        per layer by index, shorter prompts left-padded with masked columns."""
        for prompt in prompts:
            self._check_per_layer(prompt)
        tables = [(self.prompts[prompt], self.prompt_configs[prompt]) for prompt in prompts]
        return mixed_layer_prompts(tables, rows, self.transformer.config)

    def mixed_prompt_vectors(self, prompts: list[str], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input-level prompts of a batch whose example ``i`` reads ``prompts[rows[i]]`` (none when ``rows[i]`` is
        ``len(prompts)``; ``rows``: (batch,)): their vectors (batch, longest, embedding), shorter ones left-padded
        with zeros, and which columns are real (batch, longest)."""
        width = self.transformer.get_input_embeddings().weight.shape[1]
        tables = [self.prompts[prompt]() for prompt in prompts]  # each (P_i, embedding)
        longest = max((table.shape[0] for table in tables), default=0)
        none = self.transformer.get_input_embeddings().weight.new_zeros(longest, width)  # (longest, embedding)
        padded = [nn.functional.pad(table, (0, 0, longest - table.shape[0], 0)) for table in tables]
        bank = torch.stack([*padded, none])  # (n + 1, longest, embedding)
        lengths = torch.tensor([table.shape[0] for table in tables] + [0], device=bank.device)  # (n + 1,)
        visible = torch.arange(longest, device=bank.device) >= longest - lengths[:, None]  # (n + 1, longest)
        # (batch, longest, embedding), (batch, longest)
        return bank.index_select(0, rows), visible.index_select(0, rows)

    # forward ------------------------------------------------------------------------------------

    def _backbone_call(
        self, input_ids: torch.Tensor, attention_mask, token_type_ids, row_prompts: list[str]
    ) -> tuple[dict[str, Any], LayerPrompts | None]:
        """The backbone's keyword arguments and deep prompts for examples under prompts that share one forward (one
        prompt, or several layer-level ones): ``input_ids`` (batch, T), example ``i`` under ``row_prompts[i]``."""
        prompts = list(dict.fromkeys(row_prompts))
        room = min(self.text_room(prompt) for prompt in prompts)
        if input_ids.shape[1] > room:
            raise PtuningError(
                f"input of {input_ids.shape[1]} tokens is longer than this backbone's position table allows "
                f"({room} tokens with this prompt); truncate it"
            )
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}  # each (batch, T)
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids  # (batch, T)
        shift = {prompt: self._method(prompt).position_shift(self.prompt_configs[prompt]) for prompt in prompts}
        if any(shift.values()):  # one shift for the batch, or one per example
            by_row = (
                shift[prompts[0]]
                if len(prompts) == 1
                else torch.tensor([[shift[p]] for p in row_prompts], device=input_ids.device)  # (batch, 1)
            )
            positions = architectures.shifted_position_ids(self.transformer, input_ids, by_row)  # (batch, T)
            inputs["position_ids"] = positions
        if len(prompts) == 1:
            method, prompt = self._method(prompts[0]), prompts[0]
            encoder = self.prompts[prompt] if prompt in self.prompts else None  # noqa: SIM401 - no ModuleDict.get()
            inputs = method.backbone_inputs(inputs, encoder, self.transformer)
            return inputs, self.layer_prompts(input_ids.shape[0], prompt) if method.per_layer else None
        deep = [prompt for prompt in prompts if self._method(prompt).per_layer]
        index = {prompt: position for position, prompt in enumerate(deep)}
        # a row without a deep prompt (linear probe) reads index len(deep): every column of every layer masked
        rows = torch.tensor([index.get(p, len(deep)) for p in row_prompts], device=input_ids.device)  # (batch,)
        return inputs, self.mixed_layer_prompts(deep, rows) if deep else None

    def run_backbone(self, input_ids, attention_mask, token_type_ids, row_prompts: list[str], **kwargs: Any) -> Any:
        """The backbone's forward (its body's without ``kwargs``) on examples under prompts that share one forward,
        the deep prompts (if any) active, proving every prompted layer took its."""
        inputs, prompts = self._backbone_call(input_ids, attention_mask, token_type_ids, row_prompts)
        model = self.backbone if kwargs else self.transformer
        if prompts is None:
            return model(**inputs, **kwargs)
        with active_prompts(prompts):
            output = model(**inputs, **kwargs)
        prompts.check_all_consumed(architectures.model_type_of(self.transformer.config))
        return output

    def encode_prompted(
        self, input_ids: torch.Tensor, attention_mask, token_type_ids, row_prompts: list[str]
    ) -> torch.Tensor:
        """The text's hidden states (batch, T, hidden), example ``i`` under prompt ``row_prompts[i]``: one forward for
        the layer-level prompts, one for each input-level prompt, scattered back in batch order."""
        prompts = list(dict.fromkeys(row_prompts))
        layer_level = [prompt for prompt in prompts if not self._method(prompt).input_level]
        groups = [layer_level] * bool(layer_level) + [[p] for p in prompts if self._method(p).input_level]
        if len(groups) == 1:
            return self._encode_group(input_ids, attention_mask, token_type_ids, row_prompts)
        hidden: torch.Tensor | None = None
        for group in groups:
            rows = torch.tensor([i for i, prompt in enumerate(row_prompts) if prompt in group], device=input_ids.device)
            ids, mask, types = (None if t is None else t[rows] for t in (input_ids, attention_mask, token_type_ids))
            part = self._encode_group(ids, mask, types, [row_prompts[i] for i in rows.tolist()])  # (rows, T, hidden)
            if hidden is None:
                hidden = part.new_zeros(*input_ids.shape[:2], part.shape[-1])  # (batch, T, hidden)
            hidden = hidden.index_copy(0, rows, part)  # (batch, T, hidden)
        return hidden

    def _encode_group(self, input_ids, attention_mask, token_type_ids, row_prompts: list[str]) -> torch.Tensor:
        """The text's hidden states (batch, T, hidden) of examples under prompts that share one forward."""
        hidden = self.run_backbone(input_ids, attention_mask, token_type_ids, row_prompts).last_hidden_state
        config = self.prompt_configs[row_prompts[0]]  # hidden: (batch, [P +] T, hidden)
        return method_of(config).text_states(hidden, config)  # (batch, T, hidden)

    # parameters ---------------------------------------------------------------------------------

    def trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)

    def total_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def stored_parameters(self) -> int:
        """Parameters a checkpoint holds: the folded prompt tables and whatever else is neither backbone nor prompt
        (the heads); the whole model for finetune."""
        if self.trains_backbone:
            return self.total_parameters()
        tables = sum(encoder.folded_table().numel() for encoder in self.prompts.values())
        others = (p for name, p in self.named_parameters() if not name.startswith(("backbone.", "prompts.")))
        return tables + sum(parameter.numel() for parameter in others)

    def stored_share(self) -> float:
        return stored_share(self.stored_parameters(), self.trainable_parameters(), self.total_parameters())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of every trainable tensor by parameter name, to restore the best epoch or a resume."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def restore_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put back a :meth:`trainable_state`; one of another model (other names) is refused, never half-applied."""
        own = {name: p for name, p in self.named_parameters() if p.requires_grad}
        if set(state) != set(own):
            unknown, missing = sorted(set(state) - set(own))[:3], sorted(set(own) - set(state))[:3]
            raise PtuningError(f"a saved training state of another model: unknown {unknown}, missing {missing}")
        with torch.no_grad():
            for name, parameter in own.items():
                parameter.copy_(state[name])
