"""PromptedModel: one frozen backbone and named tasks, each a prompt and a head; saves only the trainable part.

A task reads one prompt (several tasks may share a prompt: multi-task training) and has its own head and labels.
Prompts and heads are kept by name in ``nn.ModuleDict``s, so one copy of the backbone serves every task loaded onto
it, and one forward may mix examples of different tasks (``task_ids``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast, ModelOutput

from . import architectures
from .backbones import load_backbone, load_tokenizer
from .config import DEFAULT_TASK, PromptConfig
from .errors import CheckpointError, PtuningError, UnsupportedModelError
from .heads import CAUSAL_LM, HEAD_KINDS, TASKS, LinearHead, check_pooling, pool
from .prompts import deberta, mpnet
from .prompts.attention import LayerPrompts, active_prompts, prompted_implementation
from .prompts.encoder import PromptEncoder, gather_key_values, split_key_values

CONFIG_NAME = "ptuning_config.json"
WEIGHTS_NAME = "ptuning_model.safetensors"
FINETUNED_BACKBONE = "backbone"
FORMAT_VERSION = 2  # 1: one task (keys "task", "labels", "prompt"); 2: named "prompts" and "tasks"
# the attention adapters of backbones whose attention bypasses transformers' interface (architectures.py routes)
ADAPTERS = {"deberta": deberta.install, "mpnet": mpnet.install}
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _backbone_shape(config) -> dict[str, Any]:
    return {key: getattr(config, key, None) for key in SHAPE_KEYS}


def _backbone_fingerprint(backbone: nn.Module) -> float:
    """A cheap checksum of the input embeddings: tells a same-shaped but different backbone apart."""
    weights = backbone.get_input_embeddings().weight[:256].detach().double()
    return round(float((weights * torch.arange(1, weights.shape[1] + 1, dtype=torch.float64)).sum()), 6)


def check_task_name(name: str) -> None:
    """Refuse a task name that cannot key the model's ``nn.ModuleDict``s of prompts and heads."""
    if not isinstance(name, str) or not name or "." in name or hasattr(nn.ModuleDict(), name):
        raise PtuningError(
            "task names key the model's prompts and heads (torch nn.ModuleDict), so a name is any non-empty text "
            f"without '.' and not a torch Module attribute, got {name!r}"
        )


def checkpoint_folder(path: str | Path) -> Path:
    """A checkpoint folder, or the run folder of ``ptuning train`` that holds one in ``checkpoint/``."""
    folder = Path(path)
    if not (folder / CONFIG_NAME).is_file() and (folder / "checkpoint" / CONFIG_NAME).is_file():
        return folder / "checkpoint"
    return folder


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or a CheckpointError saying it is unreadable (truncated, corrupted)."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent} lacks {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({error}); it may be truncated or corrupted: "
            "copy it again from where it was trained"
        ) from error


def stored_share(stored: int, trainable: int, total: int) -> float:
    """Stored parameters over the model that serves (frozen backbone + what is stored): the
    reparameterization's training-only weights count in neither."""
    return stored / (total - trainable + stored)


@dataclass
class TaskEntry:
    """A named task: its head kind (or ``causal-lm``), the prompt it reads, labels, pooling, and what the command
    line keeps with it (``extra``: how its data is read, decoding options)."""

    kind: str
    prompt: str
    labels: list[str]
    pooling: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MixedTaskOutput:
    """The outputs of a batch whose examples belong to several tasks: each task's head output on its rows.

    ``outputs[name].logits`` holds the rows ``rows[name]`` of the batch, in batch order; :meth:`per_example` lists
    every example's logits in input order.
    """

    outputs: dict[str, ModelOutput]
    rows: dict[str, torch.Tensor]

    def per_example(self) -> list[torch.Tensor]:
        count = sum(len(rows) for rows in self.rows.values())
        logits: list[torch.Tensor] = [torch.empty(0)] * count
        for name, rows in self.rows.items():
            for position, row in enumerate(rows.tolist()):
                logits[row] = self.outputs[name].logits[position]
        return logits


class PromptedModel(nn.Module):
    """A frozen transformers backbone + named tasks, composed: any method x any supported backbone x any head.

    For every method but ``finetune`` the backbone is frozen and only the prompts and heads have
    ``requires_grad``. For ``task="causal-lm"`` the backbone keeps its language-modelling head (frozen) and there is
    no task head: that is prefix-tuning for generation. Built with one task (named ``name``); :meth:`add_task` and
    :meth:`load_task` add more on the same backbone. The single-task attributes (``task``, ``labels``, ``head``,
    ``prompt_encoder``, ``prompt_config``, ...) refer to the only task, or to the one chosen with :meth:`use`.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        task: str | None,
        labels: list[str] | None = None,
        prompt: PromptConfig | None = None,
        backbone_reference: str | None = None,
        pooling: str | None = None,
        folded: bool = False,
        name: str = DEFAULT_TASK,
        causal_lm: bool = False,
    ):
        super().__init__()
        causal_lm = causal_lm or task == CAUSAL_LM
        if causal_lm and (not hasattr(backbone, "generate") or backbone.base_model is backbone):
            raise PtuningError("task 'causal-lm' needs a model with its language-modelling head (AutoModelForCausalLM)")
        self.transformer = backbone if causal_lm else backbone.base_model
        self.spec = architectures.architecture(self.backbone.config)
        self.backbone_reference = backbone_reference
        self.prompts = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.prompt_configs: dict[str, PromptConfig] = {}
        self.prompted_layers_of: dict[str, list[int]] = {}
        self.tasks: dict[str, TaskEntry] = {}
        self.active: str | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._fingerprint_before_cast: float | None = None
        self.transformer.requires_grad_(False)
        if task is not None:
            self.add_task(name, task, labels or [], prompt=prompt or PromptConfig(), pooling=pooling, folded=folded)

    @property
    def backbone(self) -> PreTrainedModel:
        """The transformer body (without any language-modelling head)."""
        return self.transformer.base_model

    def backbone_fingerprint(self) -> float:
        """The checksum a checkpoint records of its backbone (of the full-precision weights, if since cast)."""
        return self._fingerprint_before_cast or _backbone_fingerprint(self.backbone)

    def cast_backbone(self, dtype: torch.dtype) -> None:
        """Hold the frozen backbone in ``dtype`` (bf16/fp16 halve its memory); prompts and heads stay in fp32."""
        if any(config.method == "finetune" for config in self.prompt_configs.values()):
            raise PtuningError(
                "fine-tuning trains the backbone, so a fine-tuned checkpoint's backbone stays fp32: --precision casts "
                "only a frozen backbone (training a fine-tuned one in bf16/fp16 still uses mixed precision)"
            )
        self._fingerprint_before_cast = self.backbone_fingerprint()
        self.transformer.to(dtype)

    # tasks --------------------------------------------------------------------------------------

    def add_task(
        self,
        name: str,
        task: str,
        labels: list[str],
        prompt: PromptConfig | None = None,
        pooling: str | None = None,
        shared_prompt: str | None = None,
        folded: bool = False,
    ) -> None:
        """A new task ``name`` (head kind ``task``) with a fresh head, and a fresh ``prompt`` or the prompt of the
        task ``shared_prompt`` (multi-task training: one prompt, a head per task)."""
        if name in self.tasks:
            raise PtuningError(f"a task named {name!r} is loaded already (tasks: {', '.join(self.tasks)})")
        check_task_name(name)
        if task not in TASKS:
            raise PtuningError(f"unknown task {task!r}; supported: {', '.join(TASKS)}")
        labels = [str(label) for label in labels]
        labelled = task in HEAD_KINDS and HEAD_KINDS[task].labelled
        if len(set(labels)) != len(labels) or (labelled and not labels):
            raise PtuningError(f"labels must be distinct and non-empty, got {labels}")
        if task == CAUSAL_LM and self.transformer is self.backbone:
            raise PtuningError("task 'causal-lm' needs a model with its language-modelling head (AutoModelForCausalLM)")
        prompt_name = shared_prompt or name
        if shared_prompt is None:
            self._add_prompt(prompt_name, prompt or PromptConfig(), folded, causal=task == CAUSAL_LM)
        elif shared_prompt not in self.prompt_configs:
            raise PtuningError(
                f"no prompt named {shared_prompt!r} to share (prompts: {', '.join(self.prompt_configs)})"
            )
        pooling = pooling or ("last" if self.spec.decoder else "cls")
        if task != CAUSAL_LM:
            check_pooling(pooling, self.backbone)
            width = HEAD_KINDS[task].width or len(labels)
            dropout = getattr(self.backbone.config, "hidden_dropout_prob", 0.1)
            self.heads[name] = LinearHead(self.backbone.config.hidden_size, width, dropout)
        self.tasks[name] = TaskEntry(task, prompt_name, labels, pooling)
        # new modules take the model's device and mode: a task loaded into a serving (eval) model must not drop out
        for modules, key in ((self.heads, name), (self.prompts, prompt_name)):
            if key in modules:
                modules[key].to(self.backbone.device).train(self.training)

    def _add_prompt(self, name: str, config: PromptConfig, folded: bool, causal: bool) -> None:
        method = config.method
        if causal and method != "deep":
            raise PtuningError(f"task 'causal-lm' supports method 'deep' (prefix-tuning), not {method!r}")
        finetuned = [other for other, known in self.prompt_configs.items() if known.method == "finetune"]
        if self.prompt_configs and (method == "finetune" or finetuned):
            raise PtuningError(
                "a fine-tuned backbone serves its own task only: fine-tuning changes the weights every other task "
                f"relies on (tasks here: {', '.join(self.tasks)})"
            )
        if method == "deep" and self.spec.route != "interface":
            ADAPTERS[self.spec.route](self.backbone)
        elif method == "deep":
            if not type(self.backbone)._can_set_attn_implementation():
                raise UnsupportedModelError(
                    f"{type(self.backbone).__name__} does not route attention through transformers' AttentionInterface"
                )
            self.transformer.set_attn_implementation(prompted_implementation(self.backbone.config._attn_implementation))
        if method == "finetune":
            self.transformer.requires_grad_(True)
        self.prompt_configs[name] = config
        if config.has_prompt:
            self.prompts[name] = self._build_prompt_encoder(name, config, folded)

    def _build_prompt_encoder(self, name: str, config: PromptConfig, folded: bool) -> PromptEncoder:
        if config.method == "deep":
            num_layers, kv_heads, head_dim = architectures.attention_geometry(self.backbone.config)
            self.prompted_layers_of[name] = config.prompted_layers(num_layers)
            width = len(self.prompted_layers_of[name]) * 2 * kv_heads * head_dim
            return PromptEncoder(config, width, kv_heads * head_dim, folded=folded)
        embeddings = self.backbone.get_input_embeddings().weight
        initial = None
        if config.method == "shallow":
            if config.init == "vocab":
                initial = embeddings[torch.randint(embeddings.shape[0], (config.length,))].detach()
            else:
                initial = torch.randn(config.length, embeddings.shape[1]) * embeddings.detach().std()
        return PromptEncoder(config, embeddings.shape[1], embeddings.shape[1], initial=initial, folded=folded)

    def remove_task(self, name: str) -> None:
        """Drop a task: its head, and its prompt when no other task reads it."""
        entry = self._entry(name)
        del self.tasks[name]
        if name in self.heads:
            self.heads.pop(name)
        if all(other.prompt != entry.prompt for other in self.tasks.values()):
            self.prompt_configs.pop(entry.prompt)
            self.prompted_layers_of.pop(entry.prompt, None)
            if entry.prompt in self.prompts:
                self.prompts.pop(entry.prompt)
        if self.active == name:
            self.active = None

    def use(self, name: str) -> PromptedModel:
        """Make ``name`` the task that calls without ``task_ids`` (and the single-task attributes) refer to."""
        self._entry(name)
        self.active = name
        return self

    @property
    def task_names(self) -> list[str]:
        """The loaded tasks, in the order ``task_ids`` index them."""
        return list(self.tasks)

    @property
    def default_task(self) -> str:
        if self.active is not None:
            return self.active
        if len(self.tasks) == 1:
            return next(iter(self.tasks))
        raise PtuningError(
            f"this model holds several tasks ({', '.join(self.tasks)}): choose one with model.use(name) or pass "
            "task_ids"
        )

    def _entry(self, name: str | None = None) -> TaskEntry:
        name = self.default_task if name is None else name
        if name not in self.tasks:
            raise PtuningError(f"no task named {name!r}; loaded: {', '.join(self.tasks) or 'none'}")
        return self.tasks[name]

    # the single-task view (the only task, or the one chosen with use()) --------------------------

    @property
    def task(self) -> str:
        return self._entry().kind

    @property
    def labels(self) -> list[str]:
        return self._entry().labels

    @property
    def pooling(self) -> str:
        return self._entry().pooling

    @property
    def extra(self) -> dict[str, Any]:
        return self._entry().extra

    @extra.setter
    def extra(self, value: dict[str, Any]) -> None:
        self._entry().extra = value

    @property
    def prompt_config(self) -> PromptConfig:
        return self.prompt_configs[self._entry().prompt]

    @property
    def prompt_encoder(self) -> PromptEncoder | None:
        name = self._entry().prompt
        return self.prompts[name] if name in self.prompts else None  # noqa: SIM401 - ModuleDict has no get()

    @property
    def head(self) -> LinearHead | None:
        name = self.default_task
        return self.heads[name] if name in self.heads else None  # noqa: SIM401 - ModuleDict has no get()

    @property
    def prompted_layers(self) -> list[int]:
        return self.prompted_layers_of[self._entry().prompt]

    # construction -------------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        backbone: str | PreTrainedModel,
        task: str,
        num_labels: int | None = None,
        labels: list[str] | None = None,
        prompt: PromptConfig | None = None,
        pooling: str | None = None,
        name: str = DEFAULT_TASK,
    ) -> PromptedModel:
        """Wrap ``backbone`` (alias, local path, hub name, or a built transformers model) for ``task``.

        Give ``labels`` (names) or ``num_labels`` (names become "0", "1", ...); none for ``causal-lm``,
        ``question-answering`` and ``multiple-choice``.
        """
        if labels is None:
            if num_labels is None and task in HEAD_KINDS and HEAD_KINDS[task].labelled:
                raise PtuningError("give labels or num_labels")
            labels = [str(index) for index in range(num_labels or 0)]
        elif num_labels is not None and num_labels != len(labels):
            raise PtuningError(f"num_labels={num_labels} but {len(labels)} labels were given")
        reference = backbone if isinstance(backbone, str) else None
        if isinstance(backbone, str):
            backbone = load_backbone(backbone, causal_lm=task == CAUSAL_LM)
        return cls(backbone, task, labels, prompt, backbone_reference=reference, pooling=pooling, name=name)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            if self.backbone_reference is None:
                raise PtuningError("this model was built from a backbone object: set model.tokenizer yourself")
            self._tokenizer = load_tokenizer(self.backbone_reference)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer

    # forward ------------------------------------------------------------------------------------

    def text_room(self, prompt: str | None = None) -> int:
        """Longest input the position table allows under a prompt: input-level prompts and shifted positions take
        places."""
        config = self.prompt_configs[prompt or self._entry().prompt]
        taken = config.length if config.input_level or (config.method == "deep" and config.shift_positions) else 0
        return architectures.max_text_length(self.backbone, taken)

    @property
    def max_text_length(self) -> int:
        """Longest input the position table allows under the task's prompt."""
        return self.text_room()

    def train(self, mode: bool = True) -> PromptedModel:
        """Training mode; the backbone stays in eval mode (no dropout) when a prompt sets ``backbone_dropout`` off."""
        super().train(mode)
        if mode and not all(config.backbone_dropout for config in self.prompt_configs.values()):
            self.transformer.eval()
        return self

    def prompt_key_values(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer, the prompt's (key, value), each (batch, heads, length, head_dim); None for unprompted layers."""
        by_layer = self.layer_prompts(batch_size).key_values
        return [by_layer.get(layer) for layer in range(self.backbone.config.num_hidden_layers)]

    def _check_deep(self, prompt: str) -> None:
        if self.prompt_configs[prompt].method != "deep":
            raise PtuningError(f"method {self.prompt_configs[prompt].method!r} has no per-layer prompt")
        if self.training and self.backbone.is_activation_checkpointing:
            # recomputation in backward runs outside the prompt's context: its gradients would be silently wrong
            raise PtuningError("deep prompts do not support activation (gradient) checkpointing of the backbone")

    def layer_prompts(self, batch_size: int, prompt: str | None = None) -> LayerPrompts:
        """The deep prompt of one forward call, as the attention function receives it (one prompt for the batch)."""
        prompt = prompt or self._entry().prompt
        self._check_deep(prompt)
        _, kv_heads, head_dim = architectures.attention_geometry(self.backbone.config)
        table = self.prompts[prompt]()  # (length, layers * 2 * kv_heads * head_dim)
        return LayerPrompts(split_key_values(table, self.prompted_layers_of[prompt], kv_heads, head_dim, batch_size))

    def mixed_layer_prompts(self, prompts: list[str], rows: torch.Tensor) -> LayerPrompts:
        """The deep prompts of a batch whose example ``i`` reads ``prompts[rows[i]]``: gathered per layer by index,
        shorter prompts left-padded with masked columns."""
        for prompt in prompts:
            self._check_deep(prompt)
        _, kv_heads, head_dim = architectures.attention_geometry(self.backbone.config)
        tables = [(self.prompts[prompt](), self.prompted_layers_of[prompt]) for prompt in prompts]
        key_values, visible = gather_key_values(tables, rows, kv_heads, head_dim)
        return LayerPrompts(key_values, visible)

    def _check_length(self, length: int, prompts: list[str]) -> None:
        room = min(self.text_room(prompt) for prompt in prompts)
        if length > room:
            raise PtuningError(
                f"input of {length} tokens is longer than this backbone's position table allows "
                f"({room} tokens with this prompt); truncate it"
            )

    def _position_shift(self, prompt: str) -> int:
        config = self.prompt_configs[prompt]
        return config.length if config.method == "deep" and config.shift_positions else 0

    def _backbone_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        prompt: str,
        shift: torch.Tensor | int = 0,
    ) -> dict[str, Any]:
        """Keyword arguments for the transformer: the text, and an input-level prompt as its method puts it in."""
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if torch.is_tensor(shift) or shift:
            inputs["position_ids"] = architectures.shifted_position_ids(self.backbone, input_ids, shift)
        config = self.prompt_configs[prompt]
        if config.input_level:
            batch_size = input_ids.shape[0]
            prompt_vectors = self.prompts[prompt]().unsqueeze(0).expand(batch_size, -1, -1)  # (batch, P, embedding)
            text = self.backbone.get_input_embeddings()(inputs.pop("input_ids"))  # (batch, T, embedding)
            inputs["inputs_embeds"] = torch.cat([prompt_vectors.to(text.dtype), text], dim=1)  # (batch, P + T, emb)
            if attention_mask is None:
                attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
            inputs["attention_mask"] = torch.cat(
                [attention_mask.new_ones(batch_size, config.length), attention_mask], 1
            )  # (batch, P + T)
            if token_type_ids is not None:
                inputs["token_type_ids"] = torch.cat(
                    [token_type_ids.new_zeros(batch_size, config.length), token_type_ids], 1
                )
        return inputs

    def _run_backbone(self, inputs: dict[str, Any], prompts: LayerPrompts | None, **kwargs: Any) -> Any:
        """The transformer's forward with the deep prompts (if any) active, proving every prompted layer took its."""
        if prompts is None:
            return self.transformer(**inputs, **kwargs) if kwargs else self.backbone(**inputs)
        with active_prompts(prompts):
            output = self.transformer(**inputs, **kwargs) if kwargs else self.backbone(**inputs)
        prompts.check_all_consumed(architectures.model_type_of(self.backbone.config))
        return output

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The backbone's last hidden state (batch, length, hidden) of the text tokens, each example under its task's
        prompt (``task_ids`` indexes :attr:`task_names`; without it, every example is the default task's)."""
        if task_ids is None:
            return self._encode_one(input_ids, attention_mask, token_type_ids, self._entry().prompt)
        prompt_of = [entry.prompt for entry in self.tasks.values()]  # by task index
        row_prompts = [prompt_of[index] for index in task_ids.tolist()]
        prompts = list(dict.fromkeys(row_prompts))
        if len(prompts) == 1:
            return self._encode_one(input_ids, attention_mask, token_type_ids, prompts[0])
        # layer-level prompts (deep, or none) share one forward; an input-level prompt lengthens the input its own way
        layer_level = [prompt for prompt in prompts if not self.prompt_configs[prompt].input_level]
        groups = [layer_level] * bool(layer_level) + [[p] for p in prompts if self.prompt_configs[p].input_level]
        if len(groups) == 1:
            return self._encode_mixed(input_ids, attention_mask, token_type_ids, row_prompts)
        hidden: torch.Tensor | None = None
        for group in groups:
            rows = torch.tensor([i for i, prompt in enumerate(row_prompts) if prompt in group], device=input_ids.device)
            ids, mask, types = (None if t is None else t[rows] for t in (input_ids, attention_mask, token_type_ids))
            if len(group) == 1:
                part = self._encode_one(ids, mask, types, group[0])  # (rows, T, hidden)
            else:
                part = self._encode_mixed(ids, mask, types, [row_prompts[i] for i in rows.tolist()])
            if hidden is None:
                hidden = part.new_zeros(*input_ids.shape[:2], part.shape[-1])  # (batch, T, hidden)
            hidden = hidden.index_copy(0, rows, part)
        return hidden

    def _encode_one(self, input_ids, attention_mask, token_type_ids, prompt: str) -> torch.Tensor:
        """Every example under one prompt: (batch, T, hidden)."""
        self._check_length(input_ids.shape[1], [prompt])
        config = self.prompt_configs[prompt]
        inputs = self._backbone_inputs(input_ids, attention_mask, token_type_ids, prompt, self._position_shift(prompt))
        deep = self.layer_prompts(input_ids.shape[0], prompt) if config.method == "deep" else None
        hidden = self._run_backbone(inputs, deep).last_hidden_state  # (batch, [P +] T, hidden)
        return hidden[:, config.length :] if config.input_level else hidden

    def _encode_mixed(self, input_ids, attention_mask, token_type_ids, row_prompts: list[str]) -> torch.Tensor:
        """Examples under different layer-level prompts (deep, or none) in one backbone forward: (batch, T, hidden)."""
        prompts = list(dict.fromkeys(row_prompts))
        self._check_length(input_ids.shape[1], prompts)
        deep = [prompt for prompt in prompts if self.prompt_configs[prompt].method == "deep"]
        index = {prompt: position for position, prompt in enumerate(deep)}
        # a row without a deep prompt (linear probe) reads index len(deep): every column of every layer masked
        rows = torch.tensor([index.get(p, len(deep)) for p in row_prompts], device=input_ids.device)  # (batch,)
        shifts = torch.tensor([[self._position_shift(p)] for p in row_prompts], device=input_ids.device)  # (batch, 1)
        inputs = self._backbone_inputs(
            input_ids, attention_mask, token_type_ids, prompts[0], shifts if bool(shifts.any()) else 0
        )
        layer_prompts = self.mixed_layer_prompts(deep, rows) if deep else None
        return self._run_backbone(inputs, layer_prompts).last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """One task's head output (``task_ids`` absent, or naming one task), or for a batch mixing tasks a
        :class:`MixedTaskOutput` (each task's head on its own rows, one backbone forward for all)."""
        if task_ids is not None:
            present = sorted(set(task_ids.tolist()))
            if present[0] < 0 or present[-1] >= len(self.tasks):
                raise PtuningError(f"task_ids index the {len(self.tasks)} tasks {self.task_names}, got {present}")
            if len(present) > 1:
                if labels is not None:
                    raise PtuningError("a batch that mixes tasks takes no labels: train one task per batch")
                return self._mixed_forward(input_ids, attention_mask, token_type_ids, task_ids, present)
            name = self.task_names[present[0]]
        else:
            name = self.default_task
        entry = self.tasks[name]
        if entry.kind == CAUSAL_LM:
            inputs = self._backbone_inputs(
                input_ids, attention_mask, token_type_ids, entry.prompt, self._position_shift(entry.prompt)
            )
            self._check_length(input_ids.shape[1], [entry.prompt])
            prompts = self.layer_prompts(input_ids.shape[0], entry.prompt)
            output: CausalLMOutputWithPast = self._run_backbone(inputs, prompts, labels=labels, use_cache=False)
            return output
        kind = HEAD_KINDS[entry.kind]
        shape = input_ids.shape  # (batch, [choices,] T)
        if kind.choices:  # each (context, choice) pair is encoded alone; the choices' scores compete
            input_ids, attention_mask, token_type_ids = (
                None if tensor is None else tensor.reshape(-1, shape[-1])
                for tensor in (input_ids, attention_mask, token_type_ids)
            )
        hidden = self._encode_one(input_ids, attention_mask, token_type_ids, entry.prompt)  # (batch, T, hidden)
        logits = self._head(name, hidden, attention_mask)
        if kind.choices:
            logits = logits.view(shape[0], shape[1])  # (batch, choices)
        loss = None if labels is None else kind.loss(logits, labels)
        return kind.output(loss=loss, logits=logits)

    def _head(self, name: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The task's head on its rows' hidden states: (rows, labels) pooled, or (rows, T, width) per token."""
        entry = self.tasks[name]
        features = (
            pool(hidden, attention_mask, entry.pooling, self.backbone) if HEAD_KINDS[entry.kind].pooled else hidden
        )
        return self.heads[name](features)

    def _mixed_forward(self, input_ids, attention_mask, token_type_ids, task_ids, present: list[int]):
        names = self.task_names
        kinds = {self.tasks[names[index]].kind for index in present}
        if any(kind not in HEAD_KINDS or HEAD_KINDS[kind].choices for kind in kinds):
            raise PtuningError("multiple-choice and causal-lm tasks run one task per batch, not mixed with others")
        hidden = self.encode(input_ids, attention_mask, token_type_ids, task_ids=task_ids)  # (batch, T, hidden)
        outputs, rows = {}, {}
        for index in present:  # each head on its own rows (a sub-batch), in batch order
            name = names[index]
            rows[name] = (task_ids == index).nonzero().squeeze(1)
            mask = None if attention_mask is None else attention_mask[rows[name]]
            logits = self._head(name, hidden[rows[name]], mask)
            outputs[name] = HEAD_KINDS[self.tasks[name].kind].output(logits=logits)
        return MixedTaskOutput(outputs=outputs, rows=rows)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """``transformers`` generation with the prefix in every layer at every step (task ``causal-lm``)."""
        if self.task != CAUSAL_LM:
            raise PtuningError("generate() needs task 'causal-lm'")
        with active_prompts(self.layer_prompts(input_ids.shape[0])):
            return self.transformer.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # parameters ---------------------------------------------------------------------------------

    def trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)

    def total_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def stored_parameters(self) -> int:
        """Parameters a checkpoint holds: the folded prompt tables and the heads (the whole model for finetune)."""
        if any(config.method == "finetune" for config in self.prompt_configs.values()):
            return self.total_parameters()
        tables = sum(encoder.folded_table().numel() for encoder in self.prompts.values())
        return tables + sum(parameter.numel() for parameter in self.heads.parameters())

    def stored_share(self) -> float:
        return stored_share(self.stored_parameters(), self.trainable_parameters(), self.total_parameters())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of every trainable tensor, to restore the best epoch later."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def restore_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name in state:
                    parameter.copy_(state[name])

    # save / load --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the trainable part (each prompt folded into a flat table, each head) and a JSON config.

        ``finetune`` checkpoints also hold the whole tuned backbone (with its tokenizer) in ``backbone/``.
        ``extra`` replaces the default task's ``extra`` (the CLI keeps how its data was read there).
        """
        if extra is not None:
            self.extra = extra
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        with torch.no_grad():
            for name, encoder in self.prompts.items():
                tensors[f"prompts.{name}.table"] = encoder.folded_table().detach().contiguous()
            for name, head in self.heads.items():
                tensors.update({f"heads.{name}.{key}": t.detach().contiguous() for key, t in head.state_dict().items()})
        save_file(tensors, str(directory / WEIGHTS_NAME))
        if any(config.method == "finetune" for config in self.prompt_configs.values()):  # part of the result
            self.backbone.save_pretrained(directory / FINETUNED_BACKBONE)
            if self._tokenizer is not None or self.backbone_reference is not None:
                self.tokenizer.save_pretrained(directory / FINETUNED_BACKBONE)
        config = {
            "ptuning_format": FORMAT_VERSION,
            "backbone": self.backbone_reference,
            "backbone_shape": _backbone_shape(self.backbone.config),
            "backbone_fingerprint": self.backbone_fingerprint(),
            "prompts": {name: config.to_dict() for name, config in self.prompt_configs.items()},
            "tasks": {name: asdict(entry) for name, entry in self.tasks.items()},
        }
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @staticmethod
    def read_config(directory: str | Path) -> dict[str, Any]:
        """The JSON config of a checkpoint (or run) folder, in format 2 (a format-1 config is converted)."""
        path = checkpoint_folder(directory) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory} is not a ptuning checkpoint: {CONFIG_NAME} is missing")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(config, dict):
            raise CheckpointError(f"{path} is not a ptuning checkpoint config (a JSON object)")
        version = config.get("ptuning_format", 1)
        if version == 1:
            missing = [key for key in ("backbone", "backbone_shape", "task", "labels", "prompt") if key not in config]
            if missing:
                raise CheckpointError(f"{path} lacks {missing}")
            task = {
                "kind": config["task"],
                "prompt": DEFAULT_TASK,
                "labels": config["labels"],
                "pooling": config.get("pooling"),
                "extra": config.get("extra", {}),
            }
            return {**config, "prompts": {DEFAULT_TASK: config["prompt"]}, "tasks": {DEFAULT_TASK: task}}
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{path} is checkpoint format {version!r}; this ptuning reads formats 1 and {FORMAT_VERSION}: "
                "upgrade ptuning to load it"
            )
        missing = [key for key in ("backbone", "backbone_shape", "prompts", "tasks") if key not in config]
        if missing:
            raise CheckpointError(f"{path} lacks {missing}")
        return config

    @classmethod
    def read_task(cls, directory: str | Path, name: str | None = None) -> dict[str, Any]:
        """One task of a checkpoint as a flat dict: its ``task`` (head kind), ``labels``, ``pooling``, ``prompt``
        (settings), ``extra``, and the checkpoint's ``backbone`` and ``backbone_shape``. ``name`` may be omitted
        when the checkpoint holds one task."""
        config = cls.read_config(directory)
        tasks = config["tasks"]
        if name is None and len(tasks) != 1:
            raise PtuningError(f"{directory} holds the tasks {', '.join(tasks)}: name one (--task NAME)")
        if name is not None and name not in tasks:
            raise PtuningError(f"{directory} holds no task {name!r}; it holds {', '.join(tasks)}")
        entry = tasks[name] if name is not None else next(iter(tasks.values()))
        return {
            "task": entry["kind"],
            "labels": entry["labels"],
            "pooling": entry.get("pooling"),
            "prompt": config["prompts"][entry["prompt"]],
            "extra": entry.get("extra", {}),
            "backbone": config["backbone"],
            "backbone_shape": config["backbone_shape"],
        }

    @staticmethod
    def _read_state(directory: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors under format-2 names (format 1 stored one ``prompt_encoder`` and one ``head``)."""
        state = read_weights(directory / WEIGHTS_NAME)
        if config.get("ptuning_format", 1) == 1:
            prefixes = {"prompt_encoder.": f"prompts.{DEFAULT_TASK}.", "head.": f"heads.{DEFAULT_TASK}."}
            state = {
                next((new + key[len(old) :] for old, new in prefixes.items() if key.startswith(old)), key): tensor
                for key, tensor in state.items()
            }
        return state

    def check_backbone(self, directory: Path, config: dict[str, Any], fingerprint: str) -> None:
        """Refuse a checkpoint made for another backbone shape; for other weights refuse or warn (``fingerprint``)."""
        actual = _backbone_shape(self.backbone.config)
        expected = config["backbone_shape"]
        differences = [
            f"{key}: checkpoint {expected.get(key)}, backbone {actual[key]}"
            for key in SHAPE_KEYS
            if expected.get(key) != actual[key]
        ]
        if differences:
            raise CheckpointError(
                f"checkpoint {directory} was trained for another backbone shape ({'; '.join(differences)})"
            )
        if config.get("backbone_fingerprint") not in (None, self.backbone_fingerprint()):
            own = directory / FINETUNED_BACKBONE
            message = (
                # the backbone a fine-tuned checkpoint names is only where its training started
                f"checkpoint {directory} is fine-tuned: it carries its own backbone ({own}), whose weights are not "
                f"those of the loaded backbone {self.backbone_reference!r}"
                if own.is_dir()
                else f"checkpoint {directory} was trained on backbone {config.get('backbone')!r}, whose embedding "
                f"weights differ from those of the loaded backbone {self.backbone_reference!r}"
            )
            if fingerprint == "refuse":
                raise CheckpointError(f"{message}: it cannot share this backbone")
            warnings.warn(f"{message}; its predictions may be wrong", stacklevel=3)

    def load_task(self, directory: str | Path, name: str | None = None, fingerprint: str = "refuse") -> list[str]:
        """Add the tasks of a saved checkpoint (or run folder) onto this model's backbone; returns their names.

        ``name`` renames the task of a single-task checkpoint. A checkpoint of another backbone shape is refused
        naming both; one of the same shape but other weights too (``fingerprint="warn"`` only warns).
        """
        directory = checkpoint_folder(directory)
        config = self.read_config(directory)
        self.check_backbone(directory, config, fingerprint)
        tasks: dict[str, dict[str, Any]] = config["tasks"]
        if name is not None and len(tasks) != 1:
            raise PtuningError(f"{directory} holds tasks {', '.join(tasks)}: it cannot be loaded under one name")
        renamed = {old: (name if name is not None else old) for old in tasks}
        # prompts are keyed by the task that owns them; a shared prompt keeps its first task's key
        prompt_key = {prompt: renamed.get(prompt, prompt) for prompt in config["prompts"]}
        for key in [*renamed.values(), *prompt_key.values()]:
            check_task_name(key)
        taken = sorted(set(renamed.values()) & set(self.tasks))
        if taken:
            raise PtuningError(f"{directory}: a task named {taken[0]!r} is loaded already; give it another name")
        clash = sorted(key for key in prompt_key.values() if key in self.prompt_configs)
        if clash:
            raise PtuningError(
                f"{directory}: a prompt named {clash[0]!r} is loaded already; load it under another name"
            )
        state = self._read_state(directory, config)
        try:
            for prompt, values in config["prompts"].items():
                self._add_prompt(prompt_key[prompt], PromptConfig.from_dict(values), folded=True, causal=False)
            for old, values in tasks.items():
                new = renamed[old]
                self.add_task(
                    new,
                    values["kind"],
                    values["labels"],
                    pooling=values.get("pooling"),
                    shared_prompt=prompt_key[values["prompt"]],
                )
                self.tasks[new].extra = values.get("extra", {})
            expected = {
                f"prompts.{p}.table": f"prompts.{key}.table" for p, key in prompt_key.items() if key in self.prompts
            }
            for old, new in renamed.items():
                if new in self.heads:
                    head_state = self.heads[new].state_dict()
                    expected.update({f"heads.{old}.{key}": f"heads.{new}.{key}" for key in head_state})
            problems = sorted(set(expected) ^ set(state))
            own = self.state_dict()
            problems += [
                f"{saved} {tuple(state[saved].shape)} != {tuple(own[mine].shape)}"
                for saved, mine in expected.items()
                if saved in state and state[saved].shape != own[mine].shape
            ]
            if problems:
                raise CheckpointError(f"{directory / WEIGHTS_NAME} does not match its config: {problems}")
            self.load_state_dict({mine: state[saved] for saved, mine in expected.items()}, strict=False)
        except Exception:  # whatever failed, leave the model as it was: a half-added task would block its name
            for new in renamed.values():
                self.tasks.pop(new, None)
                if new in self.heads:
                    self.heads.pop(new)
            for key in prompt_key.values():
                self.prompt_configs.pop(key, None)
                self.prompted_layers_of.pop(key, None)
                if key in self.prompts:
                    self.prompts.pop(key)
            raise
        return list(renamed.values())

    @classmethod
    def from_pretrained(
        cls, directory: str | Path | dict[str, str | Path], backbone: str | PreTrainedModel | None = None
    ) -> PromptedModel:
        """Restore saved prompts and heads onto ``backbone`` (default: the backbone named in the checkpoint).

        ``directory`` is a checkpoint folder or the run folder of ``ptuning train`` holding ``checkpoint/``; or a
        mapping ``{name: folder}`` to load several single-task checkpoints onto one backbone under those names.
        """
        sources = directory if isinstance(directory, dict) else {None: directory}
        first = checkpoint_folder(next(iter(sources.values())))
        config = cls.read_config(first)
        finetuned = first / FINETUNED_BACKBONE
        if backbone is None and finetuned.is_dir():
            backbone = str(finetuned)
        if backbone is None:
            if config["backbone"] is None:
                raise CheckpointError(f"{first} was trained on a backbone object, not a named one: pass backbone=...")
            backbone = config["backbone"]
        reference = backbone if isinstance(backbone, str) else config["backbone"]
        causal_lm = any(task["kind"] == CAUSAL_LM for task in config["tasks"].values())
        model_backbone = load_backbone(backbone, causal_lm=causal_lm) if isinstance(backbone, str) else backbone
        model = cls(model_backbone, None, backbone_reference=reference, causal_lm=causal_lm)
        for name, source in sources.items():
            # a backbone passed on purpose (a copy, another precision) may differ in its weights: warn only
            model.load_task(source, name, fingerprint="refuse" if isinstance(directory, dict) else "warn")
        return model
