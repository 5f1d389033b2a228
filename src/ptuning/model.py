"""PromptedModel: a frozen backbone + a prompt + a task head; saves and loads only the trainable part."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import (
    CausalLMOutputWithPast,
    MultipleChoiceModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from . import architectures
from .backbones import load_backbone, load_tokenizer
from .config import PromptConfig
from .errors import CheckpointError, PtuningError, UnsupportedModelError
from .heads import HEAD_WIDTH, TASKS, LinearHead, check_pooling, pool
from .prompts.attention import LayerPrompts, active_prompts, prompted_implementation
from .prompts.encoder import PromptEncoder, split_key_values

CONFIG_NAME = "ptuning_config.json"
WEIGHTS_NAME = "ptuning_model.safetensors"
FINETUNED_BACKBONE = "backbone"
LABELLED_TASKS = ("sequence-classification", "token-classification")
FORMAT_VERSION = 1
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _backbone_shape(config) -> dict[str, Any]:
    return {key: getattr(config, key, None) for key in SHAPE_KEYS}


def _backbone_fingerprint(backbone: nn.Module) -> float:
    """A cheap checksum of the input embeddings: tells a same-shaped but different backbone apart."""
    weights = backbone.get_input_embeddings().weight[:256].detach().double()
    return round(float((weights * torch.arange(1, weights.shape[1] + 1, dtype=torch.float64)).sum()), 6)


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


class PromptedModel(nn.Module):
    """Transformers backbone + prompt + task head, composed: any method x any supported backbone x any head.

    For every method but ``finetune`` the backbone is frozen and only ``prompt_encoder`` and ``head``
    have ``requires_grad``. For ``task="causal-lm"`` the backbone keeps its language-modelling head
    (frozen) and there is no task head: that is prefix-tuning for generation.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        task: str,
        labels: list[str],
        prompt: PromptConfig | None = None,
        backbone_reference: str | None = None,
        pooling: str | None = None,
        folded: bool = False,
    ):
        super().__init__()
        if task not in TASKS:
            raise PtuningError(f"unknown task {task!r}; supported: {', '.join(TASKS)}")
        self.task = task
        self.prompt_config = prompt or PromptConfig()
        method = self.prompt_config.method
        if task == "causal-lm":
            if not hasattr(backbone, "generate") or backbone.base_model is backbone:
                raise PtuningError(
                    "task 'causal-lm' needs a model with its language-modelling head (AutoModelForCausalLM)"
                )
            if method != "deep":
                raise PtuningError(f"task 'causal-lm' supports method 'deep' (prefix-tuning), not {method!r}")
        else:
            backbone = backbone.base_model
        self.transformer = backbone
        self.spec = architectures.architecture(self.backbone.config)
        if method == "deep" and self.spec.route != "interface":
            importlib.import_module(f".prompts.{self.spec.route}", __package__).install(self.backbone)
        elif method == "deep":
            if not type(self.backbone)._can_set_attn_implementation():
                raise UnsupportedModelError(
                    f"{type(self.backbone).__name__} does not route attention through transformers' AttentionInterface"
                )
            self.transformer.set_attn_implementation(prompted_implementation(self.backbone.config._attn_implementation))
        self.transformer.requires_grad_(method == "finetune")
        self.labels = [str(label) for label in labels]
        if len(set(self.labels)) != len(self.labels) or (task in LABELLED_TASKS and not self.labels):
            raise PtuningError(f"labels must be distinct and non-empty, got {self.labels}")
        self.backbone_reference = backbone_reference
        self.pooling = pooling or ("last" if self.spec.decoder else "cls")
        self.prompt_encoder = self._build_prompt_encoder(folded) if self.prompt_config.has_prompt else None
        self.head = None
        if task != "causal-lm":
            check_pooling(self.pooling, self.backbone)
            dropout = getattr(self.backbone.config, "hidden_dropout_prob", 0.1)
            width = HEAD_WIDTH.get(task, len(self.labels))
            self.head = LinearHead(self.backbone.config.hidden_size, width, dropout)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.extra: dict[str, Any] = {}

    def _build_prompt_encoder(self, folded: bool) -> PromptEncoder:
        config = self.prompt_config
        if config.method == "deep":
            num_layers, kv_heads, head_dim = architectures.attention_geometry(self.backbone.config)
            self.prompted_layers = config.prompted_layers(num_layers)
            width = len(self.prompted_layers) * 2 * kv_heads * head_dim
            return PromptEncoder(config, width, kv_heads * head_dim, folded=folded)
        embeddings = self.backbone.get_input_embeddings().weight
        initial = None
        if config.method == "shallow":
            if config.init == "vocab":
                initial = embeddings[torch.randint(embeddings.shape[0], (config.length,))].detach()
            else:
                initial = torch.randn(config.length, embeddings.shape[1]) * embeddings.detach().std()
        return PromptEncoder(config, embeddings.shape[1], embeddings.shape[1], initial=initial, folded=folded)

    @property
    def backbone(self) -> PreTrainedModel:
        """The transformer body (without any language-modelling head)."""
        return self.transformer.base_model

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
    ) -> PromptedModel:
        """Wrap ``backbone`` (alias, local path, hub name, or a built transformers model) for ``task``.

        Give ``labels`` (names) or ``num_labels`` (names become "0", "1", ...); none for ``causal-lm``,
        ``question-answering`` and ``multiple-choice``.
        """
        if labels is None:
            if num_labels is None and task in LABELLED_TASKS:
                raise PtuningError("give labels or num_labels")
            labels = [str(index) for index in range(num_labels or 0)]
        elif num_labels is not None and num_labels != len(labels):
            raise PtuningError(f"num_labels={num_labels} but {len(labels)} labels were given")
        reference = backbone if isinstance(backbone, str) else None
        if isinstance(backbone, str):
            backbone = load_backbone(backbone, causal_lm=task == "causal-lm")
        return cls(backbone, task, labels, prompt, backbone_reference=reference, pooling=pooling)

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

    @property
    def max_text_length(self) -> int:
        """Longest input the position table allows: input-level prompts and shifted positions take places."""
        config = self.prompt_config
        taken = config.length if config.input_level or (config.method == "deep" and config.shift_positions) else 0
        return architectures.max_text_length(self.backbone, taken)

    def train(self, mode: bool = True) -> PromptedModel:
        """Training mode; the backbone stays in eval mode (no dropout) when ``backbone_dropout`` is off."""
        super().train(mode)
        if mode and not self.prompt_config.backbone_dropout:
            self.transformer.eval()
        return self

    def prompt_key_values(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer, the prompt's (key, value), each (batch, heads, length, head_dim); None for unprompted layers."""
        by_layer = self.layer_prompts(batch_size).key_values
        return [by_layer.get(layer) for layer in range(self.backbone.config.num_hidden_layers)]

    def layer_prompts(self, batch_size: int) -> LayerPrompts:
        """The deep prompt of one forward call, as the attention function receives it."""
        if self.prompt_config.method != "deep":
            raise PtuningError(f"method {self.prompt_config.method!r} has no per-layer prompt")
        if self.training and self.backbone.is_activation_checkpointing:
            # recomputation in backward runs outside the prompt's context: its gradients would be silently wrong
            raise PtuningError("deep prompts do not support activation (gradient) checkpointing of the backbone")
        _, kv_heads, head_dim = architectures.attention_geometry(self.backbone.config)
        table = self.prompt_encoder()
        return LayerPrompts(split_key_values(table, self.prompted_layers, kv_heads, head_dim, batch_size))

    def _check_length(self, length: int) -> None:
        if length > self.max_text_length:
            raise PtuningError(
                f"input of {length} tokens is longer than this backbone's position table allows "
                f"({self.max_text_length} tokens with this prompt); truncate it"
            )

    def _backbone_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> dict[str, Any]:
        """Keyword arguments for the transformer: the text, and the prompt as the method puts it in."""
        self._check_length(input_ids.shape[1])
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        config = self.prompt_config
        if config.method == "deep" and config.shift_positions:
            inputs["position_ids"] = architectures.shifted_position_ids(self.backbone, input_ids, config.length)
        if config.input_level:
            batch_size = input_ids.shape[0]
            prompt = self.prompt_encoder().unsqueeze(0).expand(batch_size, -1, -1)
            text = self.backbone.get_input_embeddings()(inputs.pop("input_ids"))
            inputs["inputs_embeds"] = torch.cat([prompt.to(text.dtype), text], dim=1)
            if attention_mask is None:
                attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
            inputs["attention_mask"] = torch.cat(
                [attention_mask.new_ones(batch_size, config.length), attention_mask], 1
            )
            if token_type_ids is not None:
                inputs["token_type_ids"] = torch.cat(
                    [token_type_ids.new_zeros(batch_size, config.length), token_type_ids], 1
                )
        return inputs

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The backbone's last hidden state (batch, length, hidden) of the text tokens under the prompt."""
        inputs = self._backbone_inputs(input_ids, attention_mask, token_type_ids)
        if self.prompt_config.method != "deep":
            hidden = self.backbone(**inputs).last_hidden_state
            return hidden[:, self.prompt_config.length :] if self.prompt_config.input_level else hidden
        with active_prompts(self.layer_prompts(input_ids.shape[0])) as prompts:
            hidden = self.backbone(**inputs).last_hidden_state
        prompts.check_all_consumed(architectures.model_type_of(self.backbone.config))
        return hidden

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput | TokenClassifierOutput | CausalLMOutputWithPast:
        if self.task == "causal-lm":
            inputs = self._backbone_inputs(input_ids, attention_mask, token_type_ids)
            with active_prompts(self.layer_prompts(input_ids.shape[0])) as prompts:
                output = self.transformer(**inputs, labels=labels, use_cache=False)
            prompts.check_all_consumed(architectures.model_type_of(self.backbone.config))
            return output
        if self.task == "multiple-choice":
            return self._multiple_choice(input_ids, attention_mask, token_type_ids, labels)
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        if self.task == "sequence-classification":
            logits = self.head(pool(hidden, attention_mask, self.pooling, self.backbone))
            output_class = SequenceClassifierOutput
        else:
            logits = self.head(hidden)
            output_class = TokenClassifierOutput
        loss = None
        if labels is not None and self.task == "question-answering":
            # labels (batch, 2): start and end token of the answer (0, the first token, when there is none)
            loss = (
                nn.functional.cross_entropy(logits[..., 0], labels[:, 0])
                + nn.functional.cross_entropy(logits[..., 1], labels[:, 1])
            ) / 2
        elif labels is not None:
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
            )
        return output_class(loss=loss, logits=logits)

    def _multiple_choice(self, input_ids, attention_mask, token_type_ids, labels) -> MultipleChoiceModelOutput:
        """Inputs (batch, choices, length): each (context, choice) pair is scored, the scores compete."""
        batch_size, choices, length = input_ids.shape

        def flat(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.reshape(batch_size * choices, length)

        hidden = self.encode(flat(input_ids), flat(attention_mask), flat(token_type_ids))
        logits = self.head(pool(hidden, flat(attention_mask), self.pooling, self.backbone)).view(batch_size, choices)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return MultipleChoiceModelOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """``transformers`` generation with the prefix in every layer at every step (task ``causal-lm``)."""
        if self.task != "causal-lm":
            raise PtuningError("generate() needs task 'causal-lm'")
        with active_prompts(self.layer_prompts(input_ids.shape[0])):
            return self.transformer.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # parameters ---------------------------------------------------------------------------------

    def trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)

    def total_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def stored_parameters(self) -> int:
        """Parameters a checkpoint holds: the folded prompt table and the head (the whole model for finetune)."""
        if self.prompt_config.method == "finetune":
            return self.total_parameters()
        table = 0 if self.prompt_encoder is None else self.prompt_encoder.folded_table().numel()
        return table + (0 if self.head is None else sum(p.numel() for p in self.head.parameters()))

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
        """Write the trainable part (the prompt folded into a flat table, and the head) and a JSON config.

        ``finetune`` checkpoints also hold the whole tuned backbone (with its tokenizer) in ``backbone/``.
        ``extra`` is stored under ``"extra"`` (the CLI keeps how its data was read there).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        with torch.no_grad():
            if self.prompt_encoder is not None:
                tensors["prompt_encoder.table"] = self.prompt_encoder.folded_table().detach().contiguous()
            if self.head is not None:
                tensors.update({f"head.{name}": t.detach().contiguous() for name, t in self.head.state_dict().items()})
        save_file(tensors, str(directory / WEIGHTS_NAME))
        if self.prompt_config.method == "finetune":  # the tuned backbone is part of the result
            self.backbone.save_pretrained(directory / FINETUNED_BACKBONE)
            if self._tokenizer is not None or self.backbone_reference is not None:
                self.tokenizer.save_pretrained(directory / FINETUNED_BACKBONE)
        config = {
            "ptuning_format": FORMAT_VERSION,
            "backbone": self.backbone_reference,
            "backbone_shape": _backbone_shape(self.backbone.config),
            "backbone_fingerprint": _backbone_fingerprint(self.backbone),
            "task": self.task,
            "labels": self.labels,
            "pooling": self.pooling,
            "prompt": self.prompt_config.to_dict(),
            "extra": extra or {},
        }
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @staticmethod
    def read_config(directory: str | Path) -> dict[str, Any]:
        """The JSON config of a checkpoint (or run) folder."""
        path = checkpoint_folder(directory) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory} is not a ptuning checkpoint: {CONFIG_NAME} is missing")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path} is not valid JSON: {error}") from error
        missing = [key for key in ("backbone", "backbone_shape", "task", "labels", "prompt") if key not in config]
        if missing:
            raise CheckpointError(f"{path} lacks {missing}")
        return config

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone: str | PreTrainedModel | None = None) -> PromptedModel:
        """Restore a saved prompt and head onto ``backbone`` (default: the backbone named in the checkpoint).

        ``directory`` is a checkpoint folder or the run folder of ``ptuning train`` holding ``checkpoint/``.
        """
        directory = checkpoint_folder(directory)
        config = cls.read_config(directory)
        finetuned = Path(directory) / FINETUNED_BACKBONE
        if backbone is None and finetuned.is_dir():
            backbone = str(finetuned)
        if backbone is None:
            if config["backbone"] is None:
                raise CheckpointError(
                    f"{directory} was trained on a backbone object, not a named one: pass backbone=..."
                )
            backbone = config["backbone"]
        reference = backbone if isinstance(backbone, str) else config["backbone"]
        causal_lm = config["task"] == "causal-lm"
        model_backbone = load_backbone(backbone, causal_lm=causal_lm) if isinstance(backbone, str) else backbone
        actual = _backbone_shape(model_backbone.config)
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
        model = cls(
            model_backbone,
            config["task"],
            config["labels"],
            PromptConfig.from_dict(config["prompt"]),
            backbone_reference=reference,
            pooling=config.get("pooling"),
            folded=True,
        )
        if config.get("backbone_fingerprint") not in (None, _backbone_fingerprint(model.backbone)):
            warnings.warn(
                f"checkpoint {directory} was trained on a backbone with other embedding weights than "
                f"{reference!r}; its predictions may be wrong",
                stacklevel=2,
            )
        weights_path = directory / WEIGHTS_NAME
        state = read_weights(weights_path)
        own = model.state_dict()
        expected_keys = {name for name in own if name.startswith(("prompt_encoder.", "head."))}
        problems = sorted(expected_keys ^ set(state))
        problems += [
            f"{name} {tuple(state[name].shape)} != {tuple(own[name].shape)}"
            for name in expected_keys & set(state)
            if state[name].shape != own[name].shape
        ]
        if problems:
            raise CheckpointError(f"{weights_path} does not match its config: {problems}")
        model.load_state_dict(state, strict=False)
        model.extra = config.get("extra", {})
        return model
