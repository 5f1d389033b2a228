"""Recipe: every setting of a training run, declared once. YAML recipes and CLI flags fill it (flags win); the
``train`` command's flags, their help and defaults are derived from these fields, and every value is checked
here, before anything heavy is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import POOLINGS, PromptConfig
from .data.packaged import PACKAGED_DATASETS
from .data.readers import text_lines
from .data.spec import DataSpec
from .devices import DEVICE_HELP, DEVICES, PRECISIONS
from .errors import PtuningError
from .settings import at_least, check_settings, key_of, non_negative, positive, setting, share
from .templates import Verbalizer, parse_verbalizer, template_problem, verbalizer_problem
from .vocabulary import DEFAULT_TASK, TASK_CHOICES, Family, HeadType

# by learning-rate family (see lr_family): a deep prompt through the MLP collapses at the flat table's rate (the
# pilot is in benchmarks/results/READING.md)
MAX_NEW_TOKENS = 64  # a generation answer's default length, in tokens
DEFAULT_LEARNING_RATES = {"finetune": 5e-5, "linear-probe": 5e-3, "deep-mlp": 1e-3}
PROMPT_LEARNING_RATE = 1e-2
DATA_DEFAULTS = DataSpec()  # the column settings' defaults are the data layer's


def lr_family(method: str, reparam: str | None) -> str:
    """Which usual learning rate a configuration wants: recipes' lrs do not carry across families."""
    return "deep-mlp" if method == "deep" and reparam == "mlp" else method


def steps_or_unset(value: int) -> str | None:
    return None if value == -1 or value >= 1 else "must be at least 1 (or -1: train for --epochs)"


def dataset_name(value: str) -> str | None:
    unknown = [name for name in value.split(",") if not (name.startswith("hf:") or name in PACKAGED_DATASETS)]
    if not unknown:
        return None
    return f"names {unknown[0]!r}, neither a packaged dataset ({', '.join(PACKAGED_DATASETS)}) nor hf:NAME[:CONFIG]"


def names_list(value: str) -> str | None:
    return None if all(name.strip() for name in value.split(",")) else "must be comma-separated names, none empty"


def sampling(value: str) -> str | None:
    """proportional, uniform, or temperature:T with T > 0."""
    if value in ("proportional", "uniform"):
        return None
    kind, _, temperature = value.partition(":")
    try:
        if kind == "temperature" and float(temperature) > 0:
            return None
    except ValueError:
        pass
    return "must be proportional, uniform or temperature:T (T > 0)"


def task_weights(sampling: str, sizes: list[int]) -> list[float]:
    """How often each task's batches are drawn: by size, evenly, or by size ** (1 / T) (T = 1: by size)."""
    if sampling == "uniform":
        weights = [1.0] * len(sizes)
    else:
        power = 1.0 if sampling == "proportional" else 1.0 / float(sampling.partition(":")[2])
        weights = [size**power for size in sizes]
    return [weight / sum(weights) for weight in weights]


@dataclass
class Recipe:
    """Everything a training run needs."""

    dataset: str | None = setting(
        None,
        f"packaged dataset ({', '.join(PACKAGED_DATASETS)}) or hf:NAME[:CONFIG] through datasets.load_dataset",
        check=dataset_name,
        per_task=True,
    )
    train: str | None = setting(
        None, "training file: CoNLL columns, CSV/TSV/JSONL, SQuAD JSON, SuperGLUE JSONL", per_task=True
    )
    validation: str | None = setting(None, "validation file (the best epoch is chosen on it)", per_task=True)
    test: str | None = setting(None, "test file (scored once with the best checkpoint)", per_task=True)
    task: str | None = setting(
        None,
        "a task, or a file format that implies one: squad, squad_v2 (SQuAD JSON), boolq, cb, rte, wic, wsc, copa "
        "(SuperGLUE JSONL), srl (default: from the dataset, or the training file's extension)",
        choices=TASK_CHOICES,
        per_task=True,
    )
    labels: str | None = setting(
        None,
        "the label set: a file with one label per line, or a comma-separated list (default: the training data's "
        "labels); declare it when validation or test hold labels the training data lacks",
        per_task=True,
    )
    tag_column: int = setting(
        DATA_DEFAULTS.tag_column, "CoNLL column holding the tag (0-based; -1 is the last)", per_task=True
    )
    text_column: str = setting(
        DATA_DEFAULTS.text_column, "CSV/TSV/JSONL and hf: column holding the text", per_task=True
    )
    pair_column: str | None = setting(
        DATA_DEFAULTS.pair_column, "CSV/TSV/JSONL and hf: column holding the second text of a pair", per_task=True
    )
    label_column: str = setting(
        DATA_DEFAULTS.label_column, "CSV/TSV/JSONL and hf: column holding the label", per_task=True
    )
    tokens_column: str = setting(
        DATA_DEFAULTS.tokens_column, "hf: datasets, token classification: the words column", per_task=True
    )
    tags_column: str = setting(
        DATA_DEFAULTS.tags_column, "hf: datasets, token classification: the tags column", per_task=True
    )
    model: str = setting("minilm-l6", "backbone: alias (minilm-l6), local folder, or hub name")
    prompt: PromptConfig = field(default_factory=PromptConfig)  # its fields are flags and recipe keys too
    pooling: str | None = setting(
        None,
        "sequence classification: how a text becomes one vector",
        choices=POOLINGS,
        default_help="cls for encoders, last for decoders",
    )
    head: str | None = setting(
        None,
        "sequence classification: a new linear head, or verbalizer: the backbone's language-modelling head scoring "
        "a word per label (--template, --verbalizer)",
        choices=tuple(HeadType),
        default_help="linear; verbalizer for --method prompting",
        per_task=True,
    )
    template: str | None = setting(
        None,
        "verbalizer head: the text written into this template, verbatim ({text}, {text_pair}; a masked LM's "
        "{mask} where the word goes, a causal LM's word follows it); generation: the input written into it ({text})",
        check=template_problem,
        per_task=True,
    )
    verbalizer: str | None = setting(
        None,
        'verbalizer head: a word per label, verbatim, LABEL=WORD,... ("fresh= positive,rotten= negative": a BPE '
        "tokenizer's word after a space holds the space; \\, is a comma in a word)",
        check=verbalizer_problem,
        per_task=True,
    )
    chat_template: bool = setting(
        False,
        "verbalizer head on an instruct model: the filled template is the user's message in the tokenizer's chat "
        "template, the words scored as the assistant's reply; generation: each input is the user's message, the "
        "target the assistant's reply",
        per_task=True,
    )
    parser: str | None = setting(
        None,
        'generation: read the generated text with this parser and add its scores (entities: "Peter Blackburn (PER); '
        'Oslo (LOC)", scored by entity F1)',
        per_task=True,
    )
    max_new_tokens: int = setting(
        MAX_NEW_TOKENS, "generation: tokens written at most per answer", check=at_least(1), per_task=True
    )
    lr: float | None = setting(
        None,
        "learning rate",
        check=positive,
        default_help="1e-2 for prompts, 1e-3 for deep with --reparam mlp, 5e-3 linear-probe, 5e-5 finetune",
    )
    head_lr: float | None = setting(
        None,
        "learning rate of the task heads, apart from the prompt's (a decoder's large final states want a smaller one "
        "than its prompt)",
        check=positive,
        default_help="--lr",
    )
    weight_decay: float = setting(0.0, "AdamW weight decay", check=non_negative)
    warmup_ratio: float | None = setting(
        None, "share of the steps spent warming up the learning rate", check=share, default_help="0; 0.1 deep-mlp"
    )
    epochs: float = setting(3.0, "training epochs", check=positive)
    max_steps: int = setting(-1, "optimizer steps; overrides --epochs", check=steps_or_unset)
    batch_size: int = setting(32, "training batch size", check=at_least(1))
    eval_batch_size: int = setting(64, "evaluation batch size", check=at_least(1))
    seed: int = setting(42, "random seed of the prompt, head and data order", check=at_least(0))
    device: str = setting("auto", DEVICE_HELP, choices=DEVICES)
    precision: str = setting(
        "fp32",
        "bf16/fp16: mixed precision, the frozen backbone held in that type, the prompt and heads in fp32",
        choices=PRECISIONS,
    )
    max_length: int | None = setting(
        None,
        "truncate inputs to this many tokens (with a warning)",
        check=at_least(8),
        default_help="the position table; 256 for QA windows",
    )
    max_train_samples: int | None = setting(None, "train on a random subsample of this size", check=at_least(1))
    max_eval_samples: int | None = setting(
        None, "score a fixed subsample of validation and test of this size", check=at_least(1)
    )
    task_names: str | None = setting(
        None,
        "names of the tasks of a multi-task run, comma-separated",
        check=names_list,
        default_help="the dataset names",
    )
    task_sampling: str = setting(
        "proportional",
        "multi-task: which task each batch comes from: proportional (to its size), uniform, or temperature:T "
        "(size ** 1/T)",
        check=sampling,
    )
    tasks: list[dict[str, Any]] | None = setting(
        None, "multi-task: one mapping per task of its data keys (name, dataset or train, ...)", cli=False
    )
    init_from: str | None = setting(
        None, "start from a run's prompt (and its head for the task, when it has one): multi-task, then single"
    )
    output: str = setting(
        "runs/ptuning", "run folder: checkpoint/, metrics.json, train.log, log.json", run_control=True
    )
    overwrite: bool = setting(
        False,
        "replace a non-empty --output folder (the old run stays until the new one has succeeded; a sweep deletes its "
        "study and the folder's files, then starts over)",
        run_control=True,
    )
    save_steps: int | None = setting(
        None,
        "every N optimizer steps, keep the latest resumable state in OUTPUT/resume/ (what trains, optimizer, "
        "scheduler, RNG, data position, best-so-far validation; not the frozen backbone)",
        check=at_least(1),
        run_control=True,
    )
    resume: bool = setting(
        False,
        "continue the interrupted run in --output from OUTPUT/resume/ (the same recipe); a sweep: continue its study, "
        "which must be there (a rerun of the same sweep continues it anyway)",
        run_control=True,
    )

    def __post_init__(self) -> None:
        check_settings(self)
        # how many tasks, and their names, are checked with the other values: before anything loads
        parts = self.parts()
        if len(parts) == 1 and parts[0][1] is self:  # a task's own recipe (a multi-task one checks in its parts)
            self.verbalizer_spec()

    def head_type(self) -> HeadType:
        """The head a sequence-classification task scores with: the given one, else a verbalizer for prompting."""
        if self.head is not None:
            return HeadType(self.head)
        return HeadType.VERBALIZER if self.prompt.method == "prompting" else HeadType.LINEAR

    def verbalizer_spec(self) -> Verbalizer | None:
        """This (one-task) recipe's template and words when it scores with a verbalizer, checked: both given, a
        method that works with it, a task that is sequence classification."""
        if self.data_spec().family() == Family.GENERATION:
            if self.verbalizer or self.head is not None or self.prompt.method == "linear-probe":
                raise PtuningError(
                    "generation writes with the backbone's own language-modelling head: leave out --verbalizer, --head "
                    "and method linear-probe (a --template may wrap the input)"
                )
            return None
        if self.parser is not None or self.max_new_tokens != MAX_NEW_TOKENS:
            raise PtuningError("--parser and --max-new-tokens set how a generation task writes: give --task generation")
        head = self.head_type()
        if self.prompt.method == "prompting" and head != HeadType.VERBALIZER:
            raise PtuningError("method prompting scores with the verbalizer head: leave out --head linear")
        if self.prompt.method == "prompting" and (self.save_steps or self.resume):
            raise PtuningError(
                "method prompting trains nothing, so it has no state to save or resume: leave out "
                "--save-steps and --resume"
            )
        if head != HeadType.VERBALIZER:
            given = [
                flag for flag, value in (("--template", self.template), ("--verbalizer", self.verbalizer)) if value
            ]
            if given or self.chat_template:
                raise PtuningError(
                    f"{', '.join(given) or '--chat-template'} sets a verbalizer head's prompt: give --head verbalizer "
                    "(or --method prompting)"
                )
            return None
        why = "--method prompting" if self.prompt.method == "prompting" else "--head verbalizer"
        missing = [
            flag for flag, value in (("--template", self.template), ("--verbalizer", self.verbalizer)) if not value
        ]
        if missing:
            raise PtuningError(
                f"{why} needs {' and '.join(missing)}: a template holding {{text}} and a word per label, e.g. "
                '--template "Review: {text}\nSentiment:" --verbalizer "fresh= positive,rotten= negative"'
            )
        if self.prompt.method == "linear-probe":
            raise PtuningError(
                "method linear-probe trains only a head, and the verbalizer head is the backbone's own (frozen): "
                "nothing would train; use --method prompting to score the template as it is"
            )
        chosen = self.data_spec().family()
        if chosen is not None and chosen != Family.SEQUENCE_CLASSIFICATION:
            raise PtuningError(f"{why}: a verbalizer scores the labels of sequence classification, not {chosen}")
        return Verbalizer(self.template, parse_verbalizer(self.verbalizer), self.chat_template)

    @classmethod
    def run_control_keys(cls) -> frozenset[str]:
        """The keys that say how a run is carried out, not what it trains (see ``setting``)."""
        return frozenset(key_of(item) for item in fields(cls) if item.metadata.get("run_control"))

    @classmethod
    def per_task_keys(cls) -> tuple[str, ...]:
        """What each task of a multi-task recipe sets for itself (the ``tasks:`` entries): its ``name``, and the
        keys declared ``per_task`` (see ``setting``), in declaration order."""
        return ("name", *(key_of(item) for item in fields(cls) if item.metadata.get("per_task")))

    @classmethod
    def keys(cls) -> dict[str, tuple[str, str | None]]:
        """Every recipe key: (field, prompt field or None); the prompt's settings are keys of the recipe too."""
        own = {key_of(item): (item.name, None) for item in fields(cls) if item.name != "prompt"}
        return {**own, **{key_of(item): ("prompt", item.name) for item in fields(PromptConfig)}}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "recipe") -> Recipe:
        """A recipe from flat keys (``prompt_length: 16``, as YAML recipes and flags give them), or with the prompt
        nested as ``to_dict`` writes it (``prompt: {length: 16}``)."""
        values = {key.replace("-", "_"): value for key, value in values.items()}
        keys = cls.keys()
        unknown = sorted(set(values) - set(keys) - {"prompt"})
        if unknown:
            raise PtuningError(f"{source}: unknown keys {unknown}; known: {sorted(keys)}")
        nested = values.pop("prompt", None) or {}
        if not isinstance(nested, dict):
            raise PtuningError(f"{source}: prompt must be a mapping of prompt settings, got {nested!r}")
        own = {keys[key][0]: value for key, value in values.items() if keys[key][1] is None}
        prompt = {**nested, **{keys[key][1]: value for key, value in values.items() if keys[key][1] is not None}}
        try:
            return cls(**own, prompt=PromptConfig.from_dict(prompt))
        except PtuningError as error:
            raise PtuningError(f"{source}: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def learning_rate(self) -> float:
        """The given lr, else the method's usual one: prompts want ~1e-2 (1e-3 through the deep MLP), full
        fine-tuning ~5e-5."""
        if self.lr is not None:
            return self.lr
        return DEFAULT_LEARNING_RATES.get(lr_family(self.prompt.method, self.prompt.reparam), PROMPT_LEARNING_RATE)

    def warmup(self) -> float:
        """The given warmup share, else 10% for the deep MLP (without, it collapsed to one class on some
        seeds: measured on rotten-tomatoes) and none for the rest, as in the reference code."""
        if self.warmup_ratio is not None:
            return self.warmup_ratio
        return 0.1 if lr_family(self.prompt.method, self.prompt.reparam) == "deep-mlp" else 0.0

    def parts(self) -> list[tuple[str, Recipe]]:
        """(task name, recipe of that task alone) for every task: several for ``--dataset a,b,c``, ``--train
        a.conll,b.conll`` (with as many --validation/--test files, or none) or a ``tasks:`` list; one otherwise."""
        names = self.task_names.split(",") if self.task_names else []
        if self.tasks is not None:
            if not self.tasks:
                raise PtuningError("tasks is an empty list: give one mapping per task, or leave tasks out")
            entries = [dict(entry) for entry in self.tasks]
        else:
            lists = {key: getattr(self, key).split(",") for key in ("dataset", "train") if getattr(self, key)}
            if not lists or all(len(values) == 1 for values in lists.values()):
                if len(names) > 1:
                    raise PtuningError(f"1 task but {len(names)} task names ({self.task_names})")
                return [(self.task_names or (self.dataset or DEFAULT_TASK).replace(".", "-"), self)]
            if len(lists) > 1:
                raise PtuningError("several tasks come from --dataset a,b or from --train a,b, not from both")
            key, values = next(iter(lists.items()))
            entries = [{key: value} for value in values]
            for split in ("validation", "test"):
                files = getattr(self, split).split(",") if getattr(self, split) else []
                if files and len(files) != len(entries):
                    raise PtuningError(f"{len(entries)} training sets but {len(files)} {split} files; give one each")
                for entry, file in zip(entries, files, strict=False):
                    entry[split] = file
        if names and len(names) != len(entries):
            raise PtuningError(f"{len(entries)} tasks but {len(names)} task names ({self.task_names})")
        per_task_keys = self.per_task_keys()
        parts = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) - set(per_task_keys):
                raise PtuningError(f"tasks[{index}]: a task sets only {', '.join(per_task_keys)}; got {entry!r}")
            name = names[index] if names else entry.pop("name", None)
            entry.pop("name", None)
            if not entry.get("dataset") and not entry.get("train"):
                raise PtuningError(f"tasks[{index}]: give dataset or train")
            data = {"dataset": None, "train": None, "validation": None, "test": None, **entry}
            name = name or (data["dataset"] or Path(data["train"]).stem).replace(".", "-")
            parts.append((name, dataclasses.replace(self, tasks=None, task_names=None, **data)))
        taken = sorted({name for name, _ in parts if [n for n, _ in parts].count(name) > 1})
        if taken:
            raise PtuningError(f"two tasks are named {taken[0]!r}: give --task-names (or name: in the recipe)")
        return parts

    def data_spec(self) -> DataSpec:
        """Where this (one-task) recipe's examples come from and how they are read."""
        return DataSpec(**{item.name: getattr(self, item.name) for item in dataclasses.fields(DataSpec)})

    def declared_labels(self) -> list[str] | None:
        """The label set of ``labels``: read from a file (one per line) or split at commas; None if not given."""
        if self.labels is None:
            return None
        path = Path(self.labels)
        if path.is_dir():
            raise PtuningError(f"labels (--labels) {path} is a folder: give a file, one label a line, or a,b,c")
        names = text_lines(path) if path.is_file() else self.labels.split(",")
        labels = [name.strip() for name in names if name.strip()]
        where = f"{path}" if path.is_file() else "labels (--labels)"
        if not labels:
            raise PtuningError(f"{where}: no labels given")
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise PtuningError(f"{where}: labels {repeated} are listed more than once")
        return labels
