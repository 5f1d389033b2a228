"""PromptedModel: a frozen backbone + a prompt + a task head; saves and loads only the trainable part."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from . import architectures
from .backbones import load_backbone, load_tokenizer
from .config import PromptConfig
from .errors import CheckpointError, PtuningError, UnsupportedModelError
from .heads import make_head
from .prompts.attention import PROMPT_KWARG, LayerPrompts, prompted_implementation
from .prompts.encoder import DeepPromptEncoder

CONFIG_NAME = "ptuning_config.json"
WEIGHTS_NAME = "ptuning_model.safetensors"
FORMAT_VERSION = 1
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _backbone_shape(config) -> dict[str, Any]:
    return {key: getattr(config, key, None) for key in SHAPE_KEYS}


def _backbone_fingerprint(backbone: nn.Module) -> float:
    """A cheap checksum of the input embeddings: tells a same-shaped but different backbone apart."""
    weights = backbone.get_input_embeddings().weight[:256].detach().double()
    return round(float((weights * torch.arange(1, weights.shape[1] + 1, dtype=torch.float64)).sum()), 6)


class PromptedModel(nn.Module):
    """Frozen transformers encoder + deep prompt + task head.

    Only the prompt encoder and the head have ``requires_grad``; the backbone's weights never change.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        task: str,
        labels: list[str],
        prompt: PromptConfig | None = None,
        backbone_reference: str | None = None,
        pooling: str = "cls",
        folded: bool = False,
    ):
        super().__init__()
        backbone = getattr(backbone, "base_model", backbone)
        architectures.check_supported(backbone.config)
        if not type(backbone)._can_set_attn_implementation():
            raise UnsupportedModelError(
                f"{type(backbone).__name__} does not route attention through transformers' AttentionInterface"
            )
        backbone.set_attn_implementation(prompted_implementation(backbone.config._attn_implementation))
        backbone.requires_grad_(False)
        self.backbone = backbone
        self.task = task
        self.labels = [str(label) for label in labels]
        if len(set(self.labels)) != len(self.labels) or not self.labels:
            raise PtuningError(f"labels must be distinct and non-empty, got {self.labels}")
        self.prompt_config = prompt or PromptConfig()
        self.backbone_reference = backbone_reference
        self.pooling = pooling
        num_layers, kv_heads, head_dim = architectures.attention_geometry(backbone.config)
        self.prompt_encoder = DeepPromptEncoder(self.prompt_config, num_layers, kv_heads, head_dim, folded=folded)
        dropout = getattr(backbone.config, "hidden_dropout_prob", 0.1)
        self.head = make_head(task, backbone.config.hidden_size, len(self.labels), dropout, pooling)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.extra: dict[str, Any] = {}

    # construction -------------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        backbone: str | PreTrainedModel,
        task: str,
        num_labels: int | None = None,
        labels: list[str] | None = None,
        prompt: PromptConfig | None = None,
        pooling: str = "cls",
    ) -> PromptedModel:
        """Wrap ``backbone`` (alias, local path, hub name, or a built transformers model) for ``task``.

        Give ``labels`` (names) or ``num_labels`` (names become "0", "1", ...).
        """
        if labels is None:
            if num_labels is None:
                raise PtuningError("give labels or num_labels")
            labels = [str(index) for index in range(num_labels)]
        elif num_labels is not None and num_labels != len(labels):
            raise PtuningError(f"num_labels={num_labels} but {len(labels)} labels were given")
        reference = backbone if isinstance(backbone, str) else None
        model = load_backbone(backbone) if isinstance(backbone, str) else backbone
        return cls(model, task, labels, prompt, backbone_reference=reference, pooling=pooling)

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
        shift = self.prompt_config.length if self.prompt_config.shift_positions else 0
        return architectures.max_text_length(self.backbone, shift)

    def prompt_key_values(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer, the prompt's (key, value), each (batch, heads, length, head_dim); None for unprompted layers."""
        by_layer = self.prompt_encoder(batch_size)
        return [by_layer.get(layer) for layer in range(self.backbone.config.num_hidden_layers)]

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The backbone's last hidden state (batch, length, hidden) with the prompt in every prompted layer."""
        batch_size, length = input_ids.shape
        if length > self.max_text_length:
            raise PtuningError(
                f"input of {length} tokens is longer than this backbone's position table allows "
                f"({self.max_text_length} tokens with this prompt); truncate it"
            )
        prompts = LayerPrompts(self.prompt_encoder(batch_size))
        position_ids = None
        if self.prompt_config.shift_positions:
            position_ids = architectures.shifted_position_ids(self.backbone, input_ids, self.prompt_config.length)
        output = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            **{PROMPT_KWARG: prompts},
        )
        prompts.check_all_consumed(self.backbone.config.model_type)
        return output.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput | TokenClassifierOutput:
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        logits = self.head(hidden, attention_mask)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        output_class = SequenceClassifierOutput if self.task == "sequence-classification" else TokenClassifierOutput
        return output_class(loss=loss, logits=logits)

    # parameters ---------------------------------------------------------------------------------

    def trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)

    def total_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

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

        ``extra`` is stored under ``"extra"`` (the CLI keeps how its data was read there).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            tensors = {"prompt_encoder.table": self.prompt_encoder.folded_table().detach().contiguous()}
            tensors.update({f"head.{name}": t.detach().contiguous() for name, t in self.head.state_dict().items()})
        save_file(tensors, str(directory / WEIGHTS_NAME))
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
        path = Path(directory) / CONFIG_NAME
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
        """Restore a saved prompt and head onto ``backbone`` (default: the backbone named in the checkpoint)."""
        config = cls.read_config(directory)
        if backbone is None:
            if config["backbone"] is None:
                raise CheckpointError(
                    f"{directory} was trained on a backbone object, not a named one: pass backbone=..."
                )
            backbone = config["backbone"]
        reference = backbone if isinstance(backbone, str) else config["backbone"]
        model_backbone = load_backbone(backbone) if isinstance(backbone, str) else backbone
        model_backbone = getattr(model_backbone, "base_model", model_backbone)
        actual = _backbone_shape(model_backbone.config)
        expected = config["backbone_shape"]
        differences = [f"{key}: checkpoint {expected.get(key)}, backbone {actual[key]}" for key in SHAPE_KEYS
                       if expected.get(key) != actual[key]]
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
            pooling=config.get("pooling", "cls"),
            folded=True,
        )
        if config.get("backbone_fingerprint") not in (None, _backbone_fingerprint(model_backbone)):
            warnings.warn(
                f"checkpoint {directory} was trained on a backbone with other embedding weights than "
                f"{reference!r}; its predictions may be wrong",
                stacklevel=2,
            )
        weights_path = Path(directory) / WEIGHTS_NAME
        if not weights_path.is_file():
            raise CheckpointError(f"{directory} lacks {WEIGHTS_NAME}")
        state = load_file(str(weights_path))
        own = model.state_dict()
        expected_keys = {name for name, p in model.named_parameters() if p.requires_grad}
        problems = sorted(expected_keys ^ set(state))
        problems += [f"{name} {tuple(state[name].shape)} != {tuple(own[name].shape)}"
                     for name in expected_keys & set(state) if state[name].shape != own[name].shape]
        if problems:
            raise CheckpointError(f"{weights_path} does not match its config: {problems}")
        model.load_state_dict(state, strict=False)
        model.extra = config.get("extra", {})
        return model
