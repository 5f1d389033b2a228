"""Command line: ``ptuning train | sweep | eval | predict | serve | export-peft | import-peft | backbones``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .aliases import catalog, catalog_text
from .data.readers import decode_lines, json_object, text_lines
from .devices import (
    DEVICE_HELP,
    DEVICES,
    FORWARD_TOKENS,
    FORWARD_TOKENS_HELP,
    INFERENCE_PRECISION_HELP,
    PRECISIONS,
)
from .errors import PtuningError
from .recipe import Recipe, lr_family

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
        values = yaml.safe_load("\n".join(text_lines(path))) or {}
    except yaml.YAMLError as error:
        raise PtuningError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise PtuningError(f"{path}: a recipe is a mapping of settings, found {type(values).__name__}")
    return values


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 0,1,2, got {text!r}") from None


def _nullable(kind: type) -> typing.Callable[[str], Any]:
    """A flag type that reads none, null or nothing as None, anything else as ``kind``."""

    def convert(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its errors
    return convert


def add_setting_arguments(parser: argparse.ArgumentParser, owners: list[tuple[type, dataclasses.Field]]) -> None:
    """One flag per declared setting (``settings.setting``), with its help and default; absent flags stay absent."""
    from .settings import flag_name, key_of, value_type

    for owner, item in owners:
        meta, key = item.metadata, key_of(item)
        if not meta.get("cli", True):
            continue
        hint = typing.get_type_hints(owner)[item.name]
        default = meta.get("default_help") or ("none" if item.default is None else item.default)
        help_text = meta["help"] if hint is bool else f"{meta['help']} (default: {default})"
        options: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}
        if hint is bool:
            flag = flag_name(key) if not item.default else flag_name(f"no_{key}")
            parser.add_argument(flag, action="store_false" if item.default else "store_true", **options)
            continue
        wanted = value_type(hint)
        if typing.get_origin(wanted) is list:
            options["type"], options["metavar"] = _layers, "I,J,..."
        elif meta.get("nullable"):
            options["type"] = _nullable(wanted)
        else:
            options["type"] = wanted
        if meta.get("choices"):
            options["choices"] = meta["choices"]
        parser.add_argument(flag_name(key), **options)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per recipe key (the Recipe's fields, its prompt's among them)."""
    from .config import PromptConfig
    from .settings import declared_fields

    parser.add_argument(
        "--config", default=argparse.SUPPRESS, help="YAML recipe (path or packaged name); flags override its keys"
    )
    owners = []
    for item in dataclasses.fields(Recipe):
        if item.name == "prompt":
            owners += [(PromptConfig, inner) for inner in declared_fields(PromptConfig)]
        else:
            owners.append((Recipe, item))
    add_setting_arguments(parser, owners)


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


def _add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help=INFERENCE_PRECISION_HELP)


def _add_forward_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="examples per forward pass")
    parser.add_argument("--forward-tokens", type=_positive_int, default=FORWARD_TOKENS, help=FORWARD_TOKENS_HELP)


def _load_for_inference(path: str, task: str | None, device: str, precision: str):
    """The model of a checkpoint (or run) folder on ``device`` in ``precision``, and the Task of the task it answers
    (``task``: which one, when the checkpoint holds several)."""
    from .devices import inference_device, place
    from .model import PromptedModel
    from .predictor import task_for

    where = inference_device(device, precision)
    model = place(PromptedModel.from_pretrained(path), where, precision)
    if task is None and len(model.task_names) > 1:
        raise PtuningError(f"{path} holds several tasks ({', '.join(model.task_names)}): choose one with --task NAME")
    model.use(task or model.task_names[0])
    return model, task_for(model, model.default_task)


def command_sweep(args: argparse.Namespace) -> None:
    base = build_recipe(setting_flags(args, "search", "trials", "storage", "study_name", "jobs", "no_pruning"))
    output_path(base.output, "--output", folder=True)
    from .sweep import parse_search, summary, sweep

    searches = [parse_search(text) for text in args.search]  # every spec checked before the first trial
    # more jobs: more processes of this same command on the same study (a trial seeds and logs process-wide);
    # they continue the study this process opens, never start it over (flags are not abbreviated in a sweep)
    worker = [sys.executable, "-m", "ptuning", *[arg for arg in args.argv if arg != "--overwrite"], "--jobs", "1"]
    study = sweep(base, searches, args.trials, args.storage, args.study_name, not args.no_pruning, args.jobs, worker)
    print("\n" + summary(study, Path(base.output)))


def setting_flags(args: argparse.Namespace, *others: str) -> dict[str, Any]:
    """The flags that are settings of a dataclass (the command's own, ``others``, left out)."""
    return {key: value for key, value in vars(args).items() if key not in ("command", "handler", "argv", *others)}


def command_train(args: argparse.Namespace) -> None:
    flags = setting_flags(args)
    recipe = build_recipe(flags)
    from .training.distributed import is_main_process
    from .training.run import train
    from .training.run_folder import prepare_output
    from .training.run_metrics import run_summary

    if is_main_process():  # the process that writes the run; others of a data-parallel launch only train
        output_path(recipe.output, "--output", folder=True)
        prepare_output(Path(recipe.output), recipe.overwrite, recipe.resume)  # before minutes of loading
    metrics = train(recipe)
    if not metrics:
        return
    print("\n" + run_summary(metrics, recipe.prompt.method))


def output_path(value: str, flag: str, folder: bool = False, inputs: tuple[str | None, ...] = ()) -> Path:
    """Where the command writes once its work is done, checked before the work: a file (a folder with ``folder``),
    not one of its ``inputs``, in a place that may be written; missing folders above it are made when it is."""
    path = Path(value)
    if folder and path.exists() and not path.is_dir():
        raise PtuningError(f"{flag} {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise PtuningError(f"{flag} {path} is a folder; give the path of a file to write")
    if any(given and Path(given).resolve() == path.resolve() for given in inputs):
        raise PtuningError(f"{flag} {path} is an input of this command; writing it would replace it")
    above = next(parent for parent in path.absolute().parents if parent.exists())
    if not above.is_dir():
        raise PtuningError(f"{flag} {path}: {above} is a file, so no folder can be made there")
    if not os.access(above, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PtuningError(f"{flag} {path} cannot be written (no permission)")
    return path


def write_output(path: Path, text: str) -> None:
    """Write a file that ``output_path`` checked, making the folders it lacks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def command_eval(args: argparse.Namespace) -> None:
    from .data.formats import read_examples
    from .data.spec import load_dataset
    from .vocabulary import family

    # both checked before minutes of scoring, whose results they would lose
    inputs = (args.test, args.checkpoint)
    predictions_file = output_path(args.predictions, "--predictions", inputs=inputs) if args.predictions else None
    metrics_file = output_path(args.output_metrics, "--output-metrics", inputs=inputs) if args.output_metrics else None
    if predictions_file and metrics_file and predictions_file.resolve() == metrics_file.resolve():
        raise PtuningError(f"--predictions and --output-metrics both name {predictions_file}")
    model, task = _load_for_inference(args.checkpoint, args.task, args.device, args.precision)
    record = model.tasks[model.default_task]
    if args.test:
        examples = read_examples(args.test, record.data)
    else:
        dataset = args.dataset or record.dataset
        if not dataset:
            raise PtuningError("give --test FILE (or --dataset NAME for a packaged dataset)")
        splits = load_dataset(dataset, family(record.family_name), record.data)
        if splits.family.head_kind != model.kind:
            raise PtuningError(f"--dataset {dataset} holds {splits.family} data; this checkpoint does {model.kind}")
        examples = getattr(splits, args.split)
    predictions, metrics = task.predict_and_score(model, examples, args.batch_size, args.forward_tokens)
    if predictions_file:
        records = [
            {"id": getattr(example, "id", None) or example.source, **task.format_prediction(example, prediction)}
            for example, prediction in zip(examples, predictions, strict=True)
        ]
        write_output(predictions_file, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    if metrics_file:
        write_output(metrics_file, json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


def _read_input_records(path: str | None) -> list[tuple[str, Any, str]]:
    """(line, its JSON object or None for plain text, "file:line") for every non-blank line of the input file or
    standard input, read as UTF-8 like training files are (never with the locale's encoding)."""
    if path is None or path == "-":
        name, lines = "<stdin>", decode_lines(sys.stdin.buffer.read(), "<stdin>")
    else:
        name, lines = path, text_lines(path)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = json_object(line, f"{name}:{number}") if line.lstrip().startswith("{") else None
        records.append((line, record, f"{name}:{number}"))
    return records


def command_predict(args: argparse.Namespace) -> None:
    from .devices import inference_device, place
    from .predictor import Predictor, parse_sources
    from .writing import Writing

    writing = Writing(
        **{item.name: getattr(args, item.name) for item in dataclasses.fields(Writing) if item.name in args}
    )
    sources = parse_sources(args.checkpoints)
    if sources is not None:  # several tasks on one backbone: each input names its task
        if args.task:
            raise PtuningError("--task picks a task of one checkpoint; with NAME=DIR each input names its task")
        where = inference_device(args.device, args.precision)
        predictor = Predictor.from_checkpoints(
            sources, batch_size=args.batch_size, max_tokens=args.forward_tokens, writing=writing
        )
        place(predictor.model, where, args.precision)
        requests = [predictor.parse(record, source) for _, record, source in _read_input_records(args.input)]
        answers = predictor.predict(requests)
    else:  # one checkpoint: plain text lines too; the same Predictor formats the answers
        from .predictor import Request

        model, task = _load_for_inference(args.checkpoints[0], args.task, args.device, args.precision)
        predictor = Predictor(model, args.batch_size, max_tokens=args.forward_tokens, writing=writing)
        name = model.default_task
        requests = [Request(name, task.parse_input(*item)) for item in _read_input_records(args.input)]
        answers = predictor.predict(requests)
    for answer in answers:
        print(json.dumps(answer, ensure_ascii=False))


def command_serve(args: argparse.Namespace) -> None:
    from .predictor import parse_sources
    from .serving import ServeConfig, serve
    from .serving.config import ADMIN_TOKEN_FLAG_REFUSED

    if args.refused_admin_token is not None:
        raise PtuningError(ADMIN_TOKEN_FLAG_REFUSED)
    config = ServeConfig(**setting_flags(args, "checkpoints", "refused_admin_token"))  # checked before the model loads
    from .devices import inference_device

    inference_device(config.device, config.precision)
    sources = parse_sources(args.checkpoints) or args.checkpoints[0]
    serve(sources, config)


def command_export_peft(args: argparse.Namespace) -> None:
    from .peft_interop import export_peft

    out = export_peft(args.checkpoint, args.out, backbone=args.backbone, task=args.task)
    print(f"wrote PEFT prefix-tuning adapter to {out}")


def command_import_peft(args: argparse.Namespace) -> None:
    from .peft_interop import import_peft

    labels = [name.strip() for name in args.labels.split(",")] if args.labels else None
    out = import_peft(args.adapter, args.out, backbone=args.backbone, labels=labels)
    print(f"wrote ptuning checkpoint to {out}")


def command_backbones(args: argparse.Namespace) -> None:
    print(json.dumps(catalog(), indent=2) if args.json else catalog_text())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none (None, False) or its help states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        return f"{text} (default: %(default)s)".strip() if shown and "(default:" not in text else text


def parser() -> argparse.ArgumentParser:
    formatter = DefaultsFormatter
    main_parser = argparse.ArgumentParser(prog="ptuning", description="P-Tuning v2: deep prompt tuning")
    main_parser.add_argument("--version", action="version", version=f"ptuning {__version__}")
    commands = main_parser.add_subparsers(dest="command", required=True)
    checkpoint_help = "checkpoint folder (or the run folder holding checkpoint/)"

    train_parser = commands.add_parser(
        "train", help="train a prompt (no arguments: the default NER recipe)", formatter_class=formatter
    )
    add_train_arguments(train_parser)
    train_parser.set_defaults(handler=command_train)

    sweep_parser = commands.add_parser(
        "sweep",
        help="search recipe keys with Optuna (the train flags, plus --search); selects on validation only",
        formatter_class=formatter,
        allow_abbrev=False,
    )
    add_train_arguments(sweep_parser)
    sweep_parser.add_argument(
        "--search",
        action="append",
        required=True,
        metavar="NAME=LOW:HIGH[:log]|NAME=a,b,c",
        help="a recipe key to search, over a range or among choices (repeat for several)",
    )
    sweep_parser.add_argument("--trials", type=_positive_int, default=10, help="finished trials the study should hold")
    sweep_parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUTPUT/sweep.db)")
    sweep_parser.add_argument("--study-name", default="ptuning", help="the study in the storage (continued if there)")
    sweep_parser.add_argument("--jobs", type=_positive_int, default=1, help="trials run at once (one process each)")
    sweep_parser.add_argument("--no-pruning", action="store_true", help="never stop a trial early")
    sweep_parser.set_defaults(handler=command_sweep)

    eval_parser = commands.add_parser(
        "eval", help="score a checkpoint on labelled data; prints JSON", formatter_class=formatter
    )
    eval_parser.add_argument("checkpoint", help=checkpoint_help)
    eval_parser.add_argument("--task", help="the task to score, when the checkpoint holds several")
    eval_parser.add_argument("--test", help="file in the format the checkpoint was trained on")
    eval_parser.add_argument("--dataset", help="packaged or hf: dataset to score instead of a file")
    eval_parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="with --dataset")
    _add_forward_flags(eval_parser)
    _add_device_flags(eval_parser)
    eval_parser.add_argument("--predictions", help="write one JSON line per example (id and prediction) here")
    eval_parser.add_argument("--output-metrics", help="write the metrics as JSON here too")
    eval_parser.set_defaults(handler=command_eval)

    predict_parser = commands.add_parser(
        "predict",
        help="predict text lines or JSON lines; writes JSON lines (several tasks: predict ner=DIR1 sent=DIR2)",
        formatter_class=formatter,
    )
    predict_parser.add_argument(
        "checkpoints",
        nargs="+",
        metavar="[NAME=]DIR",
        help=f"{checkpoint_help}; or several as NAME=DIR on one backbone, each input a JSON line naming its task "
        '({"task": NAME, ...})',
    )
    predict_parser.add_argument("--task", help="the task to use, when the checkpoint holds several")
    predict_parser.add_argument("--input", help="input file, - for standard input (default: standard input)")
    _add_forward_flags(predict_parser)
    _add_device_flags(predict_parser)
    from .writing import Writing

    add_setting_arguments(predict_parser, [(Writing, item) for item in dataclasses.fields(Writing)])
    predict_parser.set_defaults(handler=command_predict)

    serve_parser = commands.add_parser(
        "serve",
        help="serve checkpoints on one backbone over HTTP (serve ner=DIR1 sent=DIR2), batching across tasks",
        formatter_class=formatter,
    )
    serve_parser.add_argument(
        "checkpoints", nargs="+", metavar="[NAME=]DIR", help=f"{checkpoint_help}; several as NAME=DIR"
    )
    from .serving import ServeConfig

    add_setting_arguments(serve_parser, [(ServeConfig, item) for item in dataclasses.fields(ServeConfig)])
    # taken only to say where the token goes instead (else it would be read as --admin-token-file, abbreviated)
    serve_parser.add_argument("--admin-token", dest="refused_admin_token", help=argparse.SUPPRESS)
    serve_parser.set_defaults(handler=command_serve)

    export_parser = commands.add_parser(
        "export-peft", help="write a deep-prompt checkpoint as a PEFT prefix adapter", formatter_class=formatter
    )
    export_parser.add_argument("checkpoint", help=checkpoint_help)
    export_parser.add_argument("out", help="adapter folder to write (new or empty)")
    export_parser.add_argument("--backbone", help="backbone folder or name, if the checkpoint names none")
    export_parser.add_argument("--task", help="the task to export, when the checkpoint holds several")
    export_parser.set_defaults(handler=command_export_peft)

    import_parser = commands.add_parser(
        "import-peft", help="read a PEFT prefix-tuning adapter into a checkpoint", formatter_class=formatter
    )
    import_parser.add_argument("adapter", help="PEFT adapter folder (adapter_config.json + weights)")
    import_parser.add_argument("out", help="ptuning checkpoint folder to write (new or empty)")
    import_parser.add_argument("--backbone", help="backbone folder or name (default: the adapter's base model)")
    import_parser.add_argument(
        "--labels", help="label names in the classifier's order, comma-separated (default: what the adapter names)"
    )
    import_parser.set_defaults(handler=command_import_peft)
    backbones_parser = commands.add_parser("backbones", help="list the backbone aliases: installed or not, where")
    backbones_parser.add_argument("--json", action="store_true", help="print them as a JSON list")
    backbones_parser.set_defaults(handler=command_backbones)
    return main_parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.argv = argv  # a sweep's worker processes repeat the command
    logger = logging.getLogger("ptuning")
    for handler in [handler for handler in logger.handlers if getattr(handler, "ptuning_console", False)]:
        logger.removeHandler(handler)  # one console handler, on the current stderr, however often main runs
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("ptuning: %(message)s"))
    console.ptuning_console = True
    logger.addHandler(console)
    logger.setLevel(logging.INFO)
    try:
        args.handler(args)
    except PtuningError as error:
        print(f"ptuning: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
