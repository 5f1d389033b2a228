"""Command line: ``ptuning train | eval | predict | export-peft | import-peft``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .config import METHODS
from .errors import DataError, PtuningError
from .heads import POOLINGS
from .model import CONFIG_NAME, PromptedModel
from .tasks import TASK_CLASSES
from .train import FORMAT_TASKS, Recipe, load_dataset, lr_family, read_examples, train

DEFAULT_RECIPE = "conll2003-ner-minilm"


def recipe_file(name_or_path: str) -> Path:
    """A recipe by path, or by name among the packaged ones."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = resources.files("ptuning") / "recipes" / f"{name_or_path}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    names = sorted(p.name.removesuffix(".yaml") for p in (resources.files("ptuning") / "recipes").iterdir())
    raise PtuningError(f"recipe {name_or_path!r} is neither a file nor a packaged recipe ({', '.join(names)})")


def load_recipe_values(name_or_path: str) -> dict[str, Any]:
    path = recipe_file(name_or_path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise PtuningError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise PtuningError(f"{path}: a recipe is a mapping of settings, found {type(values).__name__}")
    return values


def _layers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _none_or_str(text: str) -> str | None:
    return None if text.lower() in ("none", "null", "") else text


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    suppress = argparse.SUPPRESS
    add = parser.add_argument
    add("--config", default=suppress, help="YAML recipe (path or packaged name); flags override its keys")
    add(
        "--dataset",
        default=suppress,
        help="packaged dataset (conll2003-ner, conll2003-pos, conll2003-chunk, rotten-tomatoes) "
        "or hf:NAME[:CONFIG] through datasets.load_dataset",
    )
    add("--train", default=suppress, help="training file: CoNLL columns, or CSV/TSV/JSONL")
    add("--validation", default=suppress, help="validation file (model selection each epoch)")
    add("--test", default=suppress, help="test file (scored once with the best checkpoint)")
    add(
        "--task",
        default=suppress,
        choices=[*TASK_CLASSES, *FORMAT_TASKS],
        help="a task, or a file format that "
        "implies one: squad, squad_v2 (SQuAD JSON), boolq, cb, rte, wic, wsc, copa (SuperGLUE JSONL), srl",
    )
    add("--tag-column", type=int, default=suppress, help="CoNLL column holding the tag (default: last)")
    add("--text-column", default=suppress)
    add("--pair-column", default=suppress)
    add("--label-column", default=suppress)
    add("--tokens-column", default=suppress, help="hf: datasets, token classification (default tokens)")
    add("--tags-column", default=suppress, help="hf: datasets, token classification (default ner_tags)")
    add("--model", default=suppress, help="backbone: alias (minilm-l6), local folder, or hub name")
    add(
        "--method",
        default=suppress,
        choices=list(METHODS),
        help="deep (P-Tuning v2, default), shallow, ptuning-v1, finetune, linear-probe",
    )
    add("--prompt-length", type=int, default=suppress)
    add("--prompt-layers", type=_layers, default=suppress, help="comma-separated layer indices (default: all)")
    add("--reparam", type=_none_or_str, default=suppress, help="deep: none or mlp; ptuning-v1: lstm or mlp")
    add("--reparam-hidden", type=int, default=suppress)
    add("--prompt-init", default=suppress, choices=["random", "vocab"], help="shallow: initial prompt embeddings")
    add("--prompt-dropout", type=float, default=suppress)
    add(
        "--shift-positions",
        action="store_true",
        default=suppress,
        help="shift text positions by the prompt length, as the reference code and PEFT do",
    )
    add(
        "--no-backbone-dropout",
        dest="backbone_dropout",
        action="store_false",
        default=suppress,
        help="train with the backbone's dropout off (the head keeps its own)",
    )
    add(
        "--pooling",
        default=suppress,
        choices=list(POOLINGS),
        help="sequence classification: cls (encoders' default), mean, last (decoders' default), pooler",
    )
    add("--lr", type=float, default=suppress)
    add("--weight-decay", type=float, default=suppress)
    add("--warmup-ratio", type=float, default=suppress)
    add("--epochs", type=float, default=suppress)
    add("--max-steps", type=int, default=suppress)
    add("--batch-size", type=int, default=suppress)
    add("--eval-batch-size", type=int, default=suppress)
    add("--seed", type=int, default=suppress)
    add("--max-length", type=int, default=suppress, help="truncate inputs to this many tokens (with a warning)")
    add("--max-train-samples", type=int, default=suppress)
    add("--max-eval-samples", type=int, default=suppress)
    add("--output", default=suppress, help="run folder: checkpoint/, metrics.json, train.log, log.json")


def build_recipe(flags: dict[str, Any]) -> Recipe:
    """Recipe from --config (or the default recipe when no data is named), then flags on top."""
    config = flags.pop("config", None)
    if config is not None:
        values = load_recipe_values(config)
    elif "dataset" in flags or "train" in flags:
        values = {}
    else:
        values = load_recipe_values(DEFAULT_RECIPE)
    if "train" in flags:
        values.pop("dataset", None)
    recipe_family = lr_family(values.get("method", "deep"), values.get("reparam"))
    chosen_family = lr_family(
        flags.get("method", values.get("method", "deep")), flags.get("reparam", values.get("reparam"))
    )
    if "lr" not in flags and chosen_family != recipe_family:
        # the recipe's lr was chosen for its own method (prompts ~1e-2 would wreck fine-tuning)
        dropped = values.pop("lr", None)
        if dropped is not None:
            logging.getLogger("ptuning").info(
                "%s replaces the recipe's %s: its lr %s is dropped for the new default",
                chosen_family,
                recipe_family,
                dropped,
            )
    values.update(flags)
    return Recipe.from_dict(values, source=str(config or "flags"))


def checkpoint_folder(path: str) -> Path:
    """Accept a checkpoint folder or a run folder holding checkpoint/."""
    folder = Path(path)
    if not (folder / CONFIG_NAME).is_file() and (folder / "checkpoint" / CONFIG_NAME).is_file():
        return folder / "checkpoint"
    return folder


def _load_for_inference(path: str):
    from .tasks import make_task

    model = PromptedModel.from_pretrained(checkpoint_folder(path))
    max_length = min(model.extra.get("max_length") or model.max_text_length, model.max_text_length)
    task_name = model.extra.get("task_name", model.task)
    return model, make_task(task_name, model.tokenizer, model.labels, max_length, **model.extra.get("task_options", {}))


def command_train(args: argparse.Namespace) -> None:
    flags = {key: value for key, value in vars(args).items() if key not in ("command", "handler")}
    metrics = train(build_recipe(flags))
    primary = metrics["primary_metric"]
    whole = ", the whole fine-tuned backbone included" if metrics["recipe"]["method"] == "finetune" else ""
    scores = ", ".join(
        f"{split} {primary} {metrics[split][primary]:.2f}" for split in ("validation", "test") if metrics[split]
    )
    print(
        f"\n{metrics['task']} on {metrics['dataset']}: {scores}\n"
        f"trainable {metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} parameters "
        f"({100 * metrics['trainable_share']:.3f}%), trained in {metrics['train_seconds'] / 60:.1f} min, "
        f"{metrics['steps']} steps\n"
        f"checkpoint ({metrics['checkpoint_bytes'] / 1024:.0f} KB{whole}): {metrics['checkpoint']}; "
        f"metrics: {Path(metrics['checkpoint']).parent / 'metrics.json'}"
    )


def command_eval(args: argparse.Namespace) -> None:
    model, task = _load_for_inference(args.checkpoint)
    if args.test:
        examples = read_examples(args.test, model.extra.get("reader") or {})
    else:
        dataset = args.dataset or model.extra.get("dataset")
        if not dataset:
            raise PtuningError("give --test FILE (or --dataset NAME for a packaged dataset)")
        examples = getattr(load_dataset(dataset, model.task, model.extra.get("reader") or {}), args.split)
    predictions, metrics = task.predict_and_score(model, examples, args.batch_size)
    if args.predictions:
        with Path(args.predictions).open("w", encoding="utf-8") as handle:
            for example, prediction in zip(examples, predictions, strict=True):
                record = {"id": getattr(example, "id", None) or example.source}
                record.update(task.format_prediction(example, prediction))
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    if args.output_metrics:
        Path(args.output_metrics).write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


def _read_inputs(task, stream, name: str) -> list[Any]:
    examples = []
    for number, line in enumerate(stream, start=1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        record = None
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{name}:{number}: not a JSON object ({error.msg})") from error
        examples.append(task.parse_input(line, record, f"{name}:{number}"))
    return examples


def command_predict(args: argparse.Namespace) -> None:
    model, task = _load_for_inference(args.checkpoint)
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        with path.open(encoding="utf-8") as handle:
            examples = _read_inputs(task, handle, str(path))
    else:
        examples = _read_inputs(task, sys.stdin, "<stdin>")
    predictions = task.predict(model, examples, args.batch_size)
    for example, prediction in zip(examples, predictions, strict=True):
        print(json.dumps(task.format_prediction(example, prediction), ensure_ascii=False))


def command_export_peft(args: argparse.Namespace) -> None:
    from .peft_interop import export_peft

    out = export_peft(checkpoint_folder(args.checkpoint), args.out, backbone=args.backbone)
    print(f"wrote PEFT prefix-tuning adapter to {out}")


def command_import_peft(args: argparse.Namespace) -> None:
    from .peft_interop import import_peft

    out = import_peft(args.adapter, args.out, backbone=args.backbone)
    print(f"wrote ptuning checkpoint to {out}")


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="ptuning", description="P-Tuning v2: deep prompt tuning")
    commands = main_parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser("train", help="train a prompt (no arguments: the default NER recipe)")
    add_train_arguments(train_parser)
    train_parser.set_defaults(handler=command_train)

    eval_parser = commands.add_parser("eval", help="score a checkpoint on labelled data; prints JSON")
    eval_parser.add_argument("checkpoint", help="checkpoint folder (or the run folder holding checkpoint/)")
    eval_parser.add_argument("--test", help="file in the format the checkpoint was trained on")
    eval_parser.add_argument("--dataset", help="packaged or hf: dataset to score instead of a file")
    eval_parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    eval_parser.add_argument("--batch-size", type=int, default=64)
    eval_parser.add_argument("--predictions", help="write one JSON line per example (id and prediction) here")
    eval_parser.add_argument("--output-metrics", help="write the metrics as JSON here too")
    eval_parser.set_defaults(handler=command_eval)

    predict_parser = commands.add_parser("predict", help="predict text lines or JSON lines; writes JSON lines")
    predict_parser.add_argument("checkpoint", help="checkpoint folder (or the run folder holding checkpoint/)")
    predict_parser.add_argument("--input", help="input file (default: standard input)")
    predict_parser.add_argument("--batch-size", type=int, default=64)
    predict_parser.set_defaults(handler=command_predict)

    export_parser = commands.add_parser("export-peft", help="write a deep-prompt checkpoint as a PEFT prefix adapter")
    export_parser.add_argument("checkpoint", help="checkpoint folder (or the run folder holding checkpoint/)")
    export_parser.add_argument("out", help="adapter folder to write")
    export_parser.add_argument("--backbone", help="backbone folder or name, if the checkpoint names none")
    export_parser.set_defaults(handler=command_export_peft)

    import_parser = commands.add_parser("import-peft", help="read a PEFT prefix-tuning adapter into a checkpoint")
    import_parser.add_argument("adapter", help="PEFT adapter folder (adapter_config.json + weights)")
    import_parser.add_argument("out", help="ptuning checkpoint folder to write")
    import_parser.add_argument("--backbone", help="backbone folder or name (default: the adapter's base model)")
    import_parser.set_defaults(handler=command_import_peft)
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("ptuning: %(message)s"))
    logging.getLogger("ptuning").addHandler(console)
    logging.getLogger("ptuning").setLevel(logging.INFO)
    try:
        args.handler(args)
    except PtuningError as error:
        print(f"ptuning: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
