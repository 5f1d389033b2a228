"""The words every layer shares, each a type of its own and defined once, at the bottom of the stack.

"task" alone is ambiguous, so ptuning never says it without one of these:

- a **task name** (:class:`TaskName`): what a user calls one task of a model (``ner``, ``sentiment``); it keys the
  model's prompts and heads, a checkpoint's tasks, a serving route;
- a **head kind** (:class:`HeadKind`): what the model computes on top of the backbone (a label per text, a label per
  token, answer spans, choices, or the backbone's own language-modelling head);
- a **family** (:class:`Family`): how examples become features and predictions become answers and scores (SRL is a
  family of its own that trains a token-classification head);
- a **data format** (:class:`DataFormat`): how a file of examples is laid out (or a hub dataset's columns).

The registry below says, for each family, its head kind and how its files are read (the format, that format's
settings and the family's decoding options); for each ``--task`` value that names a file format instead of a family
(``squad_v2``, ``boolq``, ...), the family and format it means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import PtuningError


class HeadKind(StrEnum):
    """What the model computes on a task's rows; the heads layer gives each its width, loss and output."""

    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    QUESTION_ANSWERING = "question-answering"
    MULTIPLE_CHOICE = "multiple-choice"
    CAUSAL_LM = "causal-lm"  # prefix-tuning for generation: the backbone's own language-modelling head


class HeadType(StrEnum):
    """How a sequence-classification task turns hidden states into label scores."""

    LINEAR = "linear"  # a new linear layer on a pooled vector
    VERBALIZER = "verbalizer"  # the backbone's own language-modelling head, restricted to one word per label


class DataFormat(StrEnum):
    """How examples are laid out: in a local file, or in the columns of a hub dataset."""

    CONLL = "conll"  # one word per line, whitespace-separated columns, a blank line between sentences
    TABLE = "table"  # CSV/TSV with a header row, or JSON lines: a text (and pair) column and a label column
    SQUAD = "squad"  # SQuAD 1.1 / 2.0 JSON
    SUPERGLUE = "superglue"  # a SuperGLUE task's JSON lines as distributed
    SRL = "srl"  # WORD PREDICATE_FLAG TAG per line, a blank line between instances
    HUB = "hf"  # the named columns of a dataset through datasets.load_dataset (never a local file)
    GENERATION = "generation"  # JSON lines: {"input", "target"} or {"messages": [{"role", "content"}, ...]}


class Family(StrEnum):
    """How a task's examples are encoded, decoded and scored (the Task classes of ``ptuning.tasks``)."""

    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    QUESTION_ANSWERING = "question-answering"
    MULTIPLE_CHOICE = "multiple-choice"
    SRL = "srl"
    GENERATION = "generation"  # a text to write from an input: the backbone's own language-modelling head

    @property
    def head_kind(self) -> HeadKind:
        return FAMILIES[self].head_kind

    @property
    def data_format(self) -> DataFormat:
        """The format of this family's local files unless a ``--task`` alias says otherwise."""
        return FAMILIES[self].data_format


@dataclass(frozen=True)
class FamilyEntry:
    """A family's head kind, and how its own files are read: the format, that format's fixed settings (the others
    come from the recipe's column settings) and the family's decoding options."""

    head_kind: HeadKind
    data_format: DataFormat
    format_settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[Family, FamilyEntry] = {
    Family.SEQUENCE_CLASSIFICATION: FamilyEntry(HeadKind.SEQUENCE_CLASSIFICATION, DataFormat.TABLE),
    Family.TOKEN_CLASSIFICATION: FamilyEntry(HeadKind.TOKEN_CLASSIFICATION, DataFormat.CONLL),
    Family.QUESTION_ANSWERING: FamilyEntry(HeadKind.QUESTION_ANSWERING, DataFormat.SQUAD, options={"version_2": False}),
    Family.MULTIPLE_CHOICE: FamilyEntry(
        HeadKind.MULTIPLE_CHOICE, DataFormat.SUPERGLUE, format_settings={"task": "copa"}
    ),
    Family.SRL: FamilyEntry(HeadKind.TOKEN_CLASSIFICATION, DataFormat.SRL),
    Family.GENERATION: FamilyEntry(HeadKind.CAUSAL_LM, DataFormat.GENERATION),
}


@dataclass(frozen=True)
class FormatAlias:
    """A ``--task`` value that names a file format: the family it trains, the format of its files, that format's
    settings (a SuperGLUE task) and the family's decoding options (SQuAD 2.0 may answer nothing)."""

    family: Family
    data_format: DataFormat
    format_settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


SUPERGLUE_TASKS: dict[str, Family] = {
    "boolq": Family.SEQUENCE_CLASSIFICATION,
    "cb": Family.SEQUENCE_CLASSIFICATION,
    "rte": Family.SEQUENCE_CLASSIFICATION,
    "wic": Family.SEQUENCE_CLASSIFICATION,
    "wsc": Family.SEQUENCE_CLASSIFICATION,
    "copa": Family.MULTIPLE_CHOICE,
}
FORMAT_ALIASES: dict[str, FormatAlias] = {
    "squad": FormatAlias(Family.QUESTION_ANSWERING, DataFormat.SQUAD, options={"version_2": False}),
    "squad_v2": FormatAlias(Family.QUESTION_ANSWERING, DataFormat.SQUAD, options={"version_2": True}),
    **{
        name: FormatAlias(family, DataFormat.SUPERGLUE, format_settings={"task": name})
        for name, family in SUPERGLUE_TASKS.items()
    },
}
# every value --task takes: a family, or a file format that implies one
TASK_CHOICES = (*(str(family) for family in Family), *FORMAT_ALIASES)


def family(value: str) -> Family:
    """The family named ``value``, or an error listing them."""
    try:
        return Family(value)
    except ValueError:
        raise PtuningError(f"unknown task {value!r}; supported: {', '.join(Family)}") from None


def head_kind(value: str) -> HeadKind:
    """The head kind named ``value``, or an error listing them."""
    try:
        return HeadKind(value)
    except ValueError:
        raise PtuningError(f"unknown task {value!r}; supported: {', '.join(HeadKind)}") from None


# the attributes of a torch nn.ModuleDict (a test holds this list to the installed torch): a task named like one
# could not key the model's prompts and heads
_TORCH_MODULE_DICT_ATTRIBUTES = frozenset(
    {
        "T_destination", "__annotations__", "__call__", "__class__", "__contains__", "__delattr__",
        "__delitem__", "__dict__", "__dir__", "__doc__", "__eq__", "__format__", "__ge__", "__getattr__",
        "__getattribute__", "__getitem__", "__getstate__", "__gt__", "__hash__", "__init__",
        "__init_subclass__", "__iter__", "__le__", "__len__", "__lt__", "__module__", "__ne__", "__new__",
        "__reduce__", "__reduce_ex__", "__repr__", "__setattr__", "__setitem__", "__setstate__", "__sizeof__",
        "__str__", "__subclasshook__", "__weakref__", "_apply", "_backward_hooks", "_backward_pre_hooks",
        "_buffers", "_call_impl", "_compiled_call_impl", "_forward_hooks", "_forward_hooks_always_called",
        "_forward_hooks_with_kwargs", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
        "_get_backward_hooks", "_get_backward_pre_hooks", "_get_name", "_is_full_backward_hook",
        "_load_from_state_dict", "_load_state_dict_post_hooks", "_load_state_dict_pre_hooks",
        "_maybe_warn_non_full_backward_hook", "_modules", "_named_members", "_non_persistent_buffers_set",
        "_parameters", "_register_load_state_dict_pre_hook", "_register_state_dict_hook",
        "_replicate_for_data_parallel", "_save_to_state_dict", "_slow_forward", "_state_dict_hooks",
        "_state_dict_pre_hooks", "_version", "_wrapped_call_impl", "add_module", "apply", "bfloat16", "buffers",
        "call_super_init", "children", "clear", "compile", "cpu", "cuda", "double", "dump_patches", "eval",
        "extra_repr", "float", "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule",
        "half", "ipu", "items", "keys", "load_state_dict", "modules", "mtia", "named_buffers", "named_children",
        "named_modules", "named_parameters", "parameters", "pop", "register_backward_hook", "register_buffer",
        "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
        "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
        "register_load_state_dict_pre_hook", "register_module", "register_parameter",
        "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_", "set_extra_state",
        "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "update",
        "values", "xpu", "zero_grad",
    }
)  # fmt: skip
# transformers sets this on every torch Module once it initializes a model's weights
_TRANSFORMERS_MODULE_ATTRIBUTES = frozenset({"smart_apply"})
_MODULE_DICT_ATTRIBUTES = _TORCH_MODULE_DICT_ATTRIBUTES | _TRANSFORMERS_MODULE_ATTRIBUTES


class TaskName(str):
    """A user's name for one task: any non-empty text without ``.`` that is not an attribute of a torch
    ``nn.ModuleDict`` (names key the model's prompts and heads). ``TaskName(value)`` checks it."""

    def __new__(cls, value: str) -> TaskName:
        if not isinstance(value, str) or not value or "." in value or value in _MODULE_DICT_ATTRIBUTES:
            raise PtuningError(
                "task names key the model's prompts and heads (torch nn.ModuleDict), so a name is any non-empty text "
                f"without '.' and not a torch Module attribute, got {value!r}"
            )
        return super().__new__(cls, value)


DEFAULT_TASK = TaskName("default")  # the name of the task of a model built with one, and of a one-task run on files
