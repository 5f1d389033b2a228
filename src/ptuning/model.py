"""PromptedModel: one frozen backbone and named tasks, each a prompt and a head; saves only the trainable part.

A task reads one prompt (several tasks may share a prompt: multi-task training) and has its own head and labels.
Prompts and heads are kept by name in ``nn.ModuleDict``s, so one copy of the backbone serves every task loaded onto
it, and one forward may mix examples of different tasks (``task_ids``). The backbone and its named prompts are a
``PromptedBackbone`` (``prompts/backbone.py``), each prompt entering as its method says (``prompts/methods.py``); a
batch of several tasks is ``mixing.py``'s; what a checkpoint holds is ``checkpoint.py``'s.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutput, ModelOutput

from . import checkpoint, generation, mixing
from .backbones import load_backbone, load_tokenizer
from .checkpoint import CheckpointConfig, TaskRecord
from .config import PromptConfig
from .errors import PtuningError
from .heads import HEAD_KINDS, LinearHead, VerbalizerHead, check_pooling, label_names, pool, target_token_loss
from .prompts.backbone import NEEDS_LM_HEAD, PromptedBackbone
from .prompts.encoder import PromptEncoder
from .prompts.methods import method_of
from .task_heads import new_head
from .templates import Verbalizer
from .vocabulary import DEFAULT_TASK, HeadKind, HeadType, TaskName, head_kind


class PromptedModel(PromptedBackbone):
    """A frozen transformers ``backbone`` with named ``prompts`` (a :class:`PromptedBackbone`) and named ``heads``,
    composed: any method x any supported backbone x any head. ``tasks`` names what reads them: each task a head
    (none for ``causal-lm``, which uses the backbone's language-modelling head; a verbalizer, which scores label
    words with it) and a prompt it may share. The backbone keeps its language-modelling head (``lm_head``) when a
    task reads it.

    Only the prompts and heads train, unless a method trains the backbone (``finetune``). The single-task attributes
    (``kind``, ``labels``, ``head``, ...) refer to the only task, or to the one chosen with :meth:`use`.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        kind: str | None,
        labels: list[str] | None = None,
        prompt: PromptConfig | None = None,
        backbone_reference: str | None = None,
        pooling: str | None = None,
        folded: bool = False,
        name: str = DEFAULT_TASK,
        lm_head: bool = False,
        verbalizer: Verbalizer | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        super().__init__(backbone, lm_head=lm_head or kind == HeadKind.CAUSAL_LM or verbalizer is not None)
        self.backbone_reference = backbone_reference
        self.heads = nn.ModuleDict()  # task name -> its head (every kind but causal-lm)
        self.tasks: dict[str, TaskRecord] = {}
        self.active: str | None = None
        self._tokenizer = tokenizer
        if kind is not None:
            self.add_task(
                name,
                kind,
                labels or [],
                prompt=prompt or PromptConfig(),
                pooling=pooling,
                folded=folded,
                verbalizer=verbalizer,
            )

    # tasks and prompts --------------------------------------------------------------------------

    def add_task(
        self,
        name: str,
        kind: str,
        labels: list[str],
        prompt: PromptConfig | None = None,
        pooling: str | None = None,
        shared_prompt: str | None = None,
        folded: bool = False,
        verbalizer: Verbalizer | None = None,
    ) -> None:
        """A new task ``name`` with a fresh head of ``kind``, and a fresh ``prompt`` or the prompt of the
        task ``shared_prompt`` (multi-task training: one prompt, a head per task). With a ``verbalizer`` (sequence
        classification), the head is the backbone's language-modelling head restricted to the label words."""
        if name in self.tasks:
            raise PtuningError(f"a task named {name!r} is loaded already (tasks: {', '.join(self.tasks)})")
        TaskName(name)
        kind = head_kind(kind)
        labels = label_names(kind, labels, None)
        if kind == HeadKind.CAUSAL_LM and not (self.has_lm_head and self.architecture.decoder):
            raise PtuningError(f"task 'causal-lm' {NEEDS_LM_HEAD}")
        pooling = pooling or ("last" if self.architecture.decoder else "cls")
        if kind != HeadKind.CAUSAL_LM and verbalizer is None:
            check_pooling(pooling, self.transformer)
        if shared_prompt is None:
            prompt = prompt or PromptConfig()
            tokenizer = self.tokenizer if prompt.init == "text" and not folded else None
            self.add_prompt(name, prompt, folded, causal=kind == HeadKind.CAUSAL_LM, tokenizer=tokenizer)
        elif shared_prompt not in self.prompt_configs:
            raise PtuningError(
                f"no prompt named {shared_prompt!r} to share (prompts: {', '.join(self.prompt_configs)})"
            )
        config = self.prompt_configs[shared_prompt or name]
        try:
            head = new_head(self, name, kind, labels, config, verbalizer)
        except Exception:
            if shared_prompt is None:
                self.remove_prompt(name)
            raise
        if head is not None:
            self.heads[name] = head
            # the model's device and mode: a task loaded into a serving (eval) model must not drop out
            self.heads[name].to(self.transformer.device).train(self.training)
        record = TaskRecord(kind, shared_prompt or name, labels, pooling)
        if verbalizer is not None:
            record.head, record.template = HeadType.VERBALIZER, verbalizer.template
            record.verbalizer, record.chat_template = dict(verbalizer.words), verbalizer.chat_template
        self.tasks[name] = record

    def remove_task(self, name: str) -> None:
        """Drop a task: its head, and its prompt when no other task reads it."""
        record = self._record(name)
        del self.tasks[name]
        if name in self.heads:
            self.heads.pop(name)
        if all(other.prompt != record.prompt for other in self.tasks.values()):
            self.remove_prompt(record.prompt)
        if self.active == name:
            self.active = None

    def use(self, name: str) -> PromptedModel:
        """Make ``name`` the task that calls without ``task_ids`` (and the single-task attributes) refer to."""
        self._record(name)
        self.active = name
        return self

    @property
    def task_names(self) -> list[str]:
        """The loaded tasks, in the order ``task_ids`` index them."""
        return list(self.tasks)

    @property
    def default_task(self) -> str:
        if self.active is None and len(self.tasks) != 1:
            raise PtuningError(
                f"this model holds several tasks ({', '.join(self.tasks)}): choose one with model.use(name) or pass "
                "task_ids"
            )
        return self.active if self.active is not None else next(iter(self.tasks))

    def _record(self, name: str | None = None) -> TaskRecord:
        name = self.default_task if name is None else name
        if name not in self.tasks:
            raise PtuningError(f"no task named {name!r}; loaded: {', '.join(self.tasks) or 'none'}")
        return self.tasks[name]

    # the single-task view (the only task, or the one chosen with use()) --------------------------

    @property
    def kind(self) -> HeadKind:
        return self._record().kind

    @property
    def labels(self) -> list[str]:
        return self._record().labels

    @property
    def prompt_config(self) -> PromptConfig:
        return self.prompt_configs[self.default_prompt]

    @property
    def prompt_encoder(self) -> PromptEncoder | None:
        name = self.default_prompt
        return self.prompts[name] if name in self.prompts else None  # noqa: SIM401 - ModuleDict has no get()

    @property
    def head(self) -> LinearHead | VerbalizerHead | None:
        name = self.default_task
        return self.heads[name] if name in self.heads else None  # noqa: SIM401 - ModuleDict has no get()

    @property
    def max_text_length(self) -> int:
        """Longest input the position table allows under the task's prompt."""
        return self.text_room()

    # construction -------------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        backbone: str | PreTrainedModel,
        kind: str,
        num_labels: int | None = None,
        labels: list[str] | None = None,
        prompt: PromptConfig | None = None,
        pooling: str | None = None,
        name: str = DEFAULT_TASK,
        verbalizer: Verbalizer | None = None,
        lm_head: bool = False,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> PromptedModel:
        """Wrap ``backbone`` (alias, local path, hub name, or a built transformers model) for a head of ``kind``: give
        ``labels`` (names) or ``num_labels`` (names "0", "1", ...); none for a head of fixed width or causal-lm.
        ``verbalizer``: score the labels with the backbone's language-modelling head (a built backbone then needs
        its ``tokenizer``); ``lm_head``: keep that head for tasks added later."""
        labels = label_names(head_kind(kind), labels, num_labels)
        reference = backbone if isinstance(backbone, str) else None
        lm_head = lm_head or kind == HeadKind.CAUSAL_LM or verbalizer is not None
        if isinstance(backbone, str):
            backbone = load_backbone(backbone, lm_head=lm_head)
        return cls(
            backbone,
            kind,
            labels,
            prompt,
            backbone_reference=reference,
            pooling=pooling,
            name=name,
            lm_head=lm_head,
            verbalizer=verbalizer,
            tokenizer=tokenizer,
        )

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
    def default_prompt(self) -> str:
        """The prompt of the default task."""
        return self._record().prompt

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
            row_prompts = [self.default_prompt] * input_ids.shape[0]
        else:
            prompt_of = [record.prompt for record in self.tasks.values()]  # by task index
            row_prompts = [prompt_of[index] for index in task_ids.tolist()]
        return self.encode_prompted(input_ids, attention_mask, token_type_ids, row_prompts)  # (batch, T, hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """One task's head output (``task_ids`` absent, or naming one task), or for a batch mixing tasks a
        :class:`~ptuning.mixing.MixedTaskOutput` (each task's head on its own rows, one backbone forward for all)."""
        name = self.default_task if task_ids is None else None
        if task_ids is not None:
            present = sorted(set(task_ids.tolist()))
            if present[0] < 0 or present[-1] >= len(self.tasks):
                raise PtuningError(f"task_ids index the {len(self.tasks)} tasks {self.task_names}, got {present}")
            if len(present) > 1 and labels is not None:
                raise PtuningError("a batch that mixes tasks takes no labels: train one task per batch")
            if len(present) > 1:
                return mixing.mixed_forward(self, input_ids, attention_mask, token_type_ids, task_ids)
            name = self.task_names[present[0]]
        record = self.tasks[name]
        rows = [record.prompt] * input_ids.shape[0]
        if record.kind == HeadKind.CAUSAL_LM and labels is None:  # the backbone's own head: the text's logits
            output = self.run_backbone(input_ids, attention_mask, token_type_ids, rows, use_cache=False)
            config = self.prompt_configs[record.prompt]
            output.logits = method_of(config).text_states(output.logits, config)  # (batch, T, vocab)
            return output
        if record.kind == HeadKind.CAUSAL_LM:  # its loss on the labelled tokens, their logits only
            hidden = self.encode_prompted(input_ids, attention_mask, token_type_ids, rows)  # (batch, T, hidden)
            loss, logits = target_token_loss(hidden, labels, self.lm_head())  # logits (targets, vocab)
            return CausalLMOutput(loss=loss, logits=logits)
        kind = HEAD_KINDS[record.kind]
        shape = input_ids.shape  # (batch, [choices,] T)
        # several rows an example, scored together: multiple choice's choices, a verbalizer's row per label word
        choices = input_ids.dim() == 3
        if choices:  # each row is encoded alone; the rows' scores compete
            input_ids, attention_mask, token_type_ids = (
                None if tensor is None else tensor.reshape(-1, shape[-1])  # (batch * choices, T)
                for tensor in (input_ids, attention_mask, token_type_ids)
            )
            rows = [record.prompt] * input_ids.shape[0]
        hidden = self.encode_prompted(input_ids, attention_mask, token_type_ids, rows)  # (batch, T, hidden)
        logits = self.head_logits(name, hidden, attention_mask, input_ids)  # (batch, labels) or (batch, T, width)
        if choices:
            logits = logits.view(shape[0], shape[1])  # (batch, choices)
        loss = None if labels is None else kind.loss(logits, labels)
        return kind.output(loss=loss, logits=logits)

    def head_logits(
        self, name: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None, input_ids: torch.Tensor
    ) -> torch.Tensor:
        """Task ``name``'s head on its rows' hidden states (rows, T, hidden) of ``input_ids`` (rows, T): (rows,
        labels) pooled or from a verbalizer (an expanded verbalizer's rows: (rows, 1)), or (rows, T, width) per
        token."""
        record = self.tasks[name]
        if record.head == HeadType.VERBALIZER:
            return self.heads[name](hidden, attention_mask, input_ids, self.lm_head())  # (rows, labels) or (rows, 1)
        pooled = HEAD_KINDS[record.kind].pooled
        features = pool(hidden, attention_mask, record.pooling, self.transformer) if pooled else hidden
        return self.heads[name](features)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``transformers`` generation, each left-padded row under the prefix of its causal-lm task (``task_ids``;
        without it, the default task's) in every layer at every step: :func:`ptuning.generation.generate`."""
        return generation.generate(self, input_ids, attention_mask, task_ids, **kwargs)

    # parameters ---------------------------------------------------------------------------------

    # save / load (the format: checkpoint.py) ----------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the trainable part (each prompt folded into a flat table, each head) and the checkpoint config.
        ``finetune`` checkpoints also hold the whole tuned backbone (with its tokenizer) in ``backbone/``."""
        return checkpoint.save(self, directory)

    def check_backbone(self, directory: Path, config: CheckpointConfig, fingerprint: str) -> None:
        """Refuse a checkpoint made for another backbone shape; for other weights refuse or warn (``fingerprint``)."""
        shape = checkpoint.backbone_shape(self.transformer.config)
        own = self.backbone_fingerprint()
        checkpoint.check_backbone(config, directory, shape, own, self.backbone_reference, fingerprint)

    def load_task(self, directory: str | Path, name: str | None = None, fingerprint: str = "refuse") -> list[str]:
        """Add the tasks of a saved checkpoint (or run) folder onto this model's backbone; returns their names.

        ``name`` renames the task of a single-task checkpoint (a multi-task one's tasks become ``NAME:TASK``). A
        checkpoint of another backbone shape is refused naming both; one of the same shape but other weights too
        (``fingerprint="warn"`` only warns). A load that fails leaves the model as it was.
        """
        return checkpoint.load_tasks(self, directory, name, fingerprint)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path | dict[str, str | Path],
        backbone: str | PreTrainedModel | None = None,
        lm_head: bool = False,
    ) -> PromptedModel:
        """Restore saved prompts and heads onto ``backbone`` (default: the backbone named in the checkpoint).

        ``directory`` is a checkpoint folder or the run folder of ``ptuning train`` holding ``checkpoint/``; or a
        mapping ``{name: folder}`` to load several single-task checkpoints onto one backbone under those names.
        The backbone keeps its language-modelling head when a task reads it, or with ``lm_head`` (for tasks loaded
        later).
        """
        sources = directory if isinstance(directory, dict) else {None: directory}
        first = checkpoint.checkpoint_folder(next(iter(sources.values())))
        config = checkpoint.read_config(first)
        backbone, reference = config.backbone_to_load(first, backbone)
        configs = [checkpoint.read_config(checkpoint.checkpoint_folder(source)) for source in sources.values()]
        lm_head = lm_head or any(record.uses_lm_head for each in configs for record in each.tasks.values())
        model_backbone = load_backbone(backbone, lm_head=lm_head) if isinstance(backbone, str) else backbone
        model = cls(model_backbone, None, backbone_reference=reference, lm_head=lm_head)
        for name, source in sources.items():
            # a backbone passed on purpose (a copy, another precision) may differ in its weights: warn only
            model.load_task(source, name, fingerprint="refuse" if isinstance(directory, dict) else "warn")
        return model
