"""The checkpoint format: the dataclass that is ``ptuning_config.json`` (as PEFT's config is), the tensors next to it,
and the checks that a checkpoint fits a backbone.

Format 3 is written. Every older format is migrated on read by :func:`migrate`, one version at a time:

1. one task: ``task``, ``labels``, ``pooling``, ``prompt`` and an untyped ``extra``; tensors ``prompt_encoder.*``,
   ``head.*``;
2. named ``prompts`` and ``tasks``, each task ``{kind, prompt, labels, pooling, extra}``; tensors
   ``prompts.NAME.table``, ``heads.NAME.*`` (as in 3);
3. each task a :class:`TaskRecord`: what the model needs (kind, prompt, labels, pooling; head, template,
   verbalizer and chat_template, optional: a linear head without them) and how the command line reads and decodes
   its data (family, data, dataset, max_length, options).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .config import PromptConfig
from .data.formats import ExampleFormat, data_format_from_dict
from .errors import CheckpointError, PtuningError
from .templates import Verbalizer
from .vocabulary import DEFAULT_TASK, Family, HeadKind, HeadType, TaskName, family, head_kind

CONFIG_NAME = "ptuning_config.json"
WEIGHTS_NAME = "ptuning_model.safetensors"
FINETUNED_BACKBONE = "backbone"  # the folder of a fine-tuned checkpoint's own backbone (and tokenizer)
FORMAT_VERSION = 3
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
FORMAT_1_TENSORS = {"prompt_encoder.": f"prompts.{DEFAULT_TASK}.", "head.": f"heads.{DEFAULT_TASK}."}


def _known(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` if each names a field of ``cls``: a key this ptuning does not know would be silently lost."""
    unknown = sorted(set(values) - {item.name for item in fields(cls)})
    if unknown:
        raise CheckpointError(f"unknown {what} keys {unknown}: upgrade ptuning to load this checkpoint")
    return values


@dataclass
class TaskRecord:
    """A named task of a model or checkpoint.

    What the model needs: its head ``kind``, the ``prompt`` it reads (by name; tasks may share one), its ``labels``
    and ``pooling``. What the command line keeps so that ``eval`` and ``predict`` read and decode as training did:
    the ``family`` that encodes and decodes it (None: the family named like its head kind), how its local files are
    read (``data``, a data format, saved as e.g. ``{"format": "conll", "tag_column": 3}``), the packaged or
    hub ``dataset`` it trained on, its ``max_length`` and the family's decoding ``options``.

    How a sequence-classification task scores its labels: ``head`` ``linear`` (a linear layer, stored), or
    ``verbalizer``: the backbone's language-modelling head restricted to the ``verbalizer``'s word per label
    (nothing stored), the text written into the ``template`` first (wrapped in the tokenizer's chat template with
    ``chat_template``).
    """

    kind: HeadKind
    prompt: str
    labels: list[str]
    pooling: str | None = None
    family: Family | None = None
    data: ExampleFormat | None = None
    dataset: str | None = None
    max_length: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    head: HeadType = HeadType.LINEAR
    template: str | None = None
    verbalizer: dict[str, str] | None = None
    chat_template: bool = False

    @property
    def family_name(self) -> str:
        """The family that encodes and decodes this task: its own, else the one named like its head kind."""
        return self.family or self.kind

    @property
    def scorer(self) -> Verbalizer | None:
        """The task's template and label words, when its head is a verbalizer."""
        if self.head != HeadType.VERBALIZER:
            return None
        return Verbalizer(self.template or "", dict(self.verbalizer or {}), self.chat_template)

    @property
    def uses_lm_head(self) -> bool:
        """Whether the task reads the backbone's language-modelling head (generation, or a verbalizer)."""
        return self.kind == HeadKind.CAUSAL_LM or self.head == HeadType.VERBALIZER

    def task_options(self) -> dict[str, Any]:
        """The options its family's Task is made with: the decoding options, and a verbalizer's template."""
        scorer = self.scorer
        return {**self.options, **({} if scorer is None else {"verbalizer": scorer})}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(replace(self, data=None)), "data": None if self.data is None else self.data.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TaskRecord:
        record = cls(**_known(cls, values, "task"))
        record.kind = head_kind(record.kind)
        record.family = None if record.family is None else family(record.family)
        record.data = None if record.data is None else data_format_from_dict(record.data)
        record.head = HeadType(record.head)
        return record


@dataclass
class CheckpointConfig:
    """``ptuning_config.json``: the backbone a checkpoint was trained on (its name, shape and an embedding checksum),
    its prompts' settings and its tasks, by name; ``imported_from`` says where an imported checkpoint came from."""

    ptuning_format: int = FORMAT_VERSION
    backbone: str | None = None
    backbone_shape: dict[str, Any] = field(default_factory=dict)
    backbone_fingerprint: float | None = None
    prompts: dict[str, PromptConfig] = field(default_factory=dict)
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    imported_from: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **{item.name: getattr(self, item.name) for item in fields(self)},
            "prompts": {name: prompt.to_dict() for name, prompt in self.prompts.items()},
            "tasks": {name: record.to_dict() for name, record in self.tasks.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CheckpointConfig:
        """A config of the current format (see :func:`migrate` for older ones)."""
        config = cls(**_known(cls, values, "checkpoint config"))
        config.prompts = {name: PromptConfig.from_dict(prompt) for name, prompt in values["prompts"].items()}
        config.tasks = {name: TaskRecord.from_dict(record) for name, record in values["tasks"].items()}
        return config

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, directory: str | Path) -> CheckpointConfig:
        """The config of a checkpoint (or run) folder, migrated from whatever format it was written in."""
        path = checkpoint_folder(directory) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory} is not a ptuning checkpoint: {CONFIG_NAME} is missing")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path} is not a ptuning checkpoint config (a JSON object)")
        return cls.from_dict(migrate(raw, path))

    def task(self, name: str | None, source: str | Path) -> TaskRecord:
        """The task ``name``, which may be omitted when the checkpoint (read from ``source``) holds one task."""
        if name is None and len(self.tasks) != 1:
            raise PtuningError(f"{source} holds the tasks {', '.join(self.tasks)}: name one (--task NAME)")
        if name is not None and name not in self.tasks:
            raise PtuningError(f"{source} holds no task {name!r}; it holds {', '.join(self.tasks)}")
        return self.tasks[name] if name is not None else next(iter(self.tasks.values()))

    def backbone_to_load(self, folder: Path, backbone: str | PreTrainedModel | None) -> tuple[Any, str | None]:
        """What to load the checkpoint in ``folder`` onto (``backbone`` if given, else its own fine-tuned backbone,
        else the one it names), and the name to keep of it."""
        if backbone is None and (folder / FINETUNED_BACKBONE).is_dir():
            backbone = str(folder / FINETUNED_BACKBONE)
        if backbone is None:
            if self.backbone is None:
                raise CheckpointError(f"{folder} was trained on a backbone object, not a named one: pass backbone=...")
            backbone = self.backbone
        return backbone, backbone if isinstance(backbone, str) else self.backbone


def read_config(directory: str | Path) -> CheckpointConfig:
    return CheckpointConfig.read(directory)


def read_task(directory: str | Path, name: str | None = None) -> TaskRecord:
    """One task of a checkpoint (or run) folder; ``name`` may be omitted when it holds one."""
    return read_config(directory).task(name, directory)


def _lacking(raw: dict[str, Any], keys: tuple[str, ...], source: str | Path) -> None:
    missing = [key for key in keys if key not in raw]
    if missing:
        raise CheckpointError(f"{source} lacks {missing}")


def _from_format_1(raw: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """One task becomes the task (and prompt) named ``default``."""
    _lacking(raw, ("backbone", "backbone_shape", "task", "labels", "prompt"), source)
    task = {
        "kind": raw["task"],
        "prompt": DEFAULT_TASK,
        "labels": raw["labels"],
        "pooling": raw.get("pooling"),
        "extra": raw.get("extra", {}),
    }
    return {
        "ptuning_format": 2,
        **{key: raw.get(key) for key in ("backbone", "backbone_shape", "backbone_fingerprint")},
        "prompts": {DEFAULT_TASK: raw["prompt"]},
        "tasks": {DEFAULT_TASK: task},
    }


def _from_format_2(raw: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """Each task's untyped ``extra`` becomes typed fields: its reader (less the decoding options it carried) the data
    format, ``task_name`` the family, ``task_options`` (over the reader's options) the options."""
    _lacking(raw, ("backbone", "backbone_shape", "prompts", "tasks"), source)
    tasks, imported_from = {}, None
    for name, task in raw["tasks"].items():
        extra = task.get("extra") or {}
        data = dict(extra.get("reader") or {})
        reader_options = data.pop("options", None) or {}
        tasks[name] = {
            **{key: task.get(key) for key in ("kind", "prompt", "labels", "pooling")},
            "family": extra.get("task_name"),
            "data": data or None,
            "dataset": extra.get("dataset"),
            "max_length": extra.get("max_length"),
            "options": {**reader_options, **(extra.get("task_options") or {})},
        }
        imported_from = imported_from or extra.get("imported_from")
    return {
        **{key: raw.get(key) for key in ("backbone", "backbone_shape", "backbone_fingerprint", "prompts")},
        "ptuning_format": 3,
        "tasks": tasks,
        "imported_from": imported_from,
    }


# format N -> format N + 1
MIGRATIONS: dict[int, Callable[[dict[str, Any], str | Path], dict[str, Any]]] = {1: _from_format_1, 2: _from_format_2}


def migrate(raw: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """A checkpoint config (JSON object, read from ``source``) of any format this ptuning reads, in the current one."""
    version = raw.get("ptuning_format", 1)
    if version not in MIGRATIONS and version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source} is checkpoint format {version!r}; this ptuning reads formats 1 to {FORMAT_VERSION}: "
            "upgrade ptuning to load it"
        )
    while version != FORMAT_VERSION:
        raw = MIGRATIONS[version](raw, source)
        version = raw["ptuning_format"]
    _lacking(raw, ("backbone", "backbone_shape", "prompts", "tasks"), source)
    return raw


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


def read_state(directory: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under the current names (format 1 stored one ``prompt_encoder`` and one ``head``)."""
    return {
        next((new + key[len(old) :] for old, new in FORMAT_1_TENSORS.items() if key.startswith(old)), key): tensor
        for key, tensor in read_weights(directory / WEIGHTS_NAME).items()
    }


def matched_state(
    directory: Path, state: dict[str, torch.Tensor], names: dict[str, str], own: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The saved tensors under the model's names (``names``: saved -> own), refused unless every expected tensor is
    there, in its shape, and nothing else."""
    problems = sorted(set(names) ^ set(state))
    problems += [
        f"{saved} {tuple(state[saved].shape)} != {tuple(own[mine].shape)}"
        for saved, mine in names.items()
        if saved in state and state[saved].shape != own[mine].shape
    ]
    if problems:
        raise CheckpointError(f"{directory / WEIGHTS_NAME} does not match its config: {problems}")
    return {mine: state[saved] for saved, mine in names.items()}


def names_on_load(
    config: CheckpointConfig, directory: Path, name: str | None, tasks: dict[str, Any], prompts: dict[str, Any]
) -> tuple[dict[str, str], dict[str, str]]:
    """The names a checkpoint's tasks and prompts take in a model that holds ``tasks`` and ``prompts`` already
    (``name`` renames the task of a single-task checkpoint, and names each task of a multi-task one ``NAME:TASK``,
    its prompts likewise): ``{saved: new}`` for each; clashes are refused."""
    if name is None:
        renamed = {old: old for old in config.tasks}
    elif len(config.tasks) == 1:
        renamed = {old: name for old in config.tasks}
    else:  # one name for several tasks: each keeps its own under it (and no clash with another checkpoint's)
        renamed = {old: f"{name}:{old}" for old in config.tasks}
    # prompts are keyed by the task that owns them; a shared prompt keeps its first task's key
    prefix = "" if name is None or len(config.tasks) == 1 else f"{name}:"
    prompt_key = {prompt: renamed.get(prompt, prefix + prompt) for prompt in config.prompts}
    for key in [*renamed.values(), *prompt_key.values()]:
        TaskName(key)
    taken = sorted(set(renamed.values()) & set(tasks))
    if taken:
        raise PtuningError(f"{directory}: a task named {taken[0]!r} is loaded already; give it another name")
    clash = sorted(key for key in prompt_key.values() if key in prompts)
    if clash:
        raise PtuningError(f"{directory}: a prompt named {clash[0]!r} is loaded already; load it under another name")
    return renamed, prompt_key


def backbone_shape(config: PretrainedConfig) -> dict[str, Any]:
    return {key: getattr(config, key, None) for key in SHAPE_KEYS}


def backbone_fingerprint(transformer: nn.Module) -> float:
    """A cheap checksum of the input embeddings: tells a same-shaped but different backbone apart."""
    weights = transformer.get_input_embeddings().weight[:256].detach().double()  # (up to 256, embedding)
    return round(float((weights * torch.arange(1, weights.shape[1] + 1, dtype=torch.float64)).sum()), 6)


def check_backbone(
    config: CheckpointConfig,
    directory: Path,
    shape: dict[str, Any],
    fingerprint: float,
    reference: str | None,
    policy: str,
) -> None:
    """Refuse a checkpoint made for another backbone ``shape``; for other weights (another ``fingerprint``) refuse,
    or only warn (``policy="warn"``)."""
    expected = config.backbone_shape
    differences = [
        f"{key}: checkpoint {expected.get(key)}, backbone {shape[key]}"
        for key in SHAPE_KEYS
        if expected.get(key) != shape[key]
    ]
    if differences:
        raise CheckpointError(
            f"checkpoint {directory} was trained for another backbone shape ({'; '.join(differences)})"
        )
    if config.backbone_fingerprint not in (None, fingerprint):
        own = directory / FINETUNED_BACKBONE
        message = (
            # the backbone a fine-tuned checkpoint names is only where its training started
            f"checkpoint {directory} is fine-tuned: it carries its own backbone ({own}), whose weights are not "
            f"those of the loaded backbone {reference!r}"
            if own.is_dir()
            else f"checkpoint {directory} was trained on backbone {config.backbone!r}, whose embedding "
            f"weights differ from those of the loaded backbone {reference!r}"
        )
        if policy == "refuse":
            raise CheckpointError(f"{message}: it cannot share this backbone")
        warnings.warn(f"{message}; its predictions may be wrong", stacklevel=4)


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write a PromptedModel's trainable part (each prompt folded into a flat table, each head) and its config; a
    model that trains its backbone (``finetune``) also writes the tuned backbone (and tokenizer) to ``backbone/``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        tensors = {f"prompts.{name}.table": encoder.folded_table() for name, encoder in model.prompts.items()}
        tensors.update({f"heads.{name}": tensor for name, tensor in model.heads.state_dict().items()})
    save_file({name: tensor.detach().contiguous() for name, tensor in tensors.items()}, str(directory / WEIGHTS_NAME))
    if model.trains_backbone:  # part of the result (with its language-modelling head, when a task reads it)
        model.backbone.save_pretrained(directory / FINETUNED_BACKBONE)
        try:
            tokenizer = model.tokenizer
        except PtuningError:  # built from a backbone object without a tokenizer set: the backbone alone
            tokenizer = None
        if tokenizer is not None:
            tokenizer.save_pretrained(directory / FINETUNED_BACKBONE)
    config = CheckpointConfig(
        backbone=model.backbone_reference,
        backbone_shape=backbone_shape(model.transformer.config),
        backbone_fingerprint=model.backbone_fingerprint(),
        prompts=dict(model.prompt_configs),
        tasks=dict(model.tasks),
    )
    config.save(directory)
    return directory


def load_tasks(model: nn.Module, directory: str | Path, name: str | None, fingerprint: str) -> list[str]:
    """Add the tasks of a checkpoint (or run) folder onto a PromptedModel; see ``PromptedModel.load_task``."""
    directory = checkpoint_folder(directory)
    config = read_config(directory)
    model.check_backbone(directory, config, fingerprint)
    renamed, prompt_key = names_on_load(config, directory, name, model.tasks, model.prompt_configs)
    state = read_state(directory)
    try:
        for prompt, settings in config.prompts.items():
            model.add_prompt(prompt_key[prompt], settings, folded=True)
        for old, record in config.tasks.items():
            new, prompt = renamed[old], prompt_key[record.prompt]
            model.add_task(
                new, record.kind, record.labels, pooling=record.pooling, shared_prompt=prompt, verbalizer=record.scorer
            )
            added = model.tasks[new]  # the saved record under the model's names
            model.tasks[new] = replace(record, prompt=prompt, labels=added.labels, pooling=added.pooling)
        names = {f"prompts.{p}.table": f"prompts.{key}.table" for p, key in prompt_key.items() if key in model.prompts}
        for old, new in renamed.items():
            if new in model.heads:
                names.update({f"heads.{old}.{key}": f"heads.{new}.{key}" for key in model.heads[new].state_dict()})
        # the new prompts and heads only: a model serving thousands of tasks would otherwise walk them all per load
        added = nn.ModuleDict(
            {
                "prompts": nn.ModuleDict(
                    {key: model.prompts[key] for key in prompt_key.values() if key in model.prompts}
                ),
                "heads": nn.ModuleDict({new: model.heads[new] for new in renamed.values() if new in model.heads}),
            }
        )
        added.load_state_dict(matched_state(directory, state, names, added.state_dict()), strict=False)
    except Exception:  # whatever failed, leave the model as it was: a half-added task would block its name
        for new in renamed.values():
            if new in model.tasks:
                model.remove_task(new)
        for key in prompt_key.values():  # a prompt added before its task failed
            model.remove_prompt(key)
        raise
    return list(renamed.values())
