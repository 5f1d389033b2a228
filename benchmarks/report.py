"""Turn the study's JSON results into REPORT.md and PNG plots (also runnable alone on existing results).

python benchmarks/report.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

RESULTS = Path(__file__).resolve().parent / "results"
METHOD_ORDER = ("finetune", "linear-probe", "shallow", "ptuning-v1", "deep", "deep-mlp")


def finish(figure, axis, xlabel: str, ylabel: str, path: Path) -> None:
    """Label the (last) axes, add its legend and save the figure."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def plot_parity(parity: dict[str, Any], path: Path) -> None:
    tasks = list(dict.fromkeys(row["task"] for row in parity["rows"]))
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        rows = {row["method"]: row for row in parity["rows"] if row["task"] == task}
        methods = [m for m in METHOD_ORDER if m in rows]
        axis.bar(
            methods,
            [rows[m]["mean"] for m in methods],
            yerr=[rows[m]["std"] for m in methods],
            capsize=3,
            color=["#888" if m in ("finetune", "linear-probe") else "#3b7dd8" for m in methods],
        )
        axis.set_title(f"{task} (test {rows[methods[0]]['metric']})")
        axis.tick_params(axis="x", rotation=45)
        low = min(rows[m]["mean"] for m in methods)
        axis.set_ylim(max(0, low - 10), 100)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def backbone_rows(parity: dict[str, Any], backbone: str) -> dict[str, Any]:
    """parity.json restricted to one backbone's rows (rows from before the second scale are MiniLM's)."""
    return {**parity, "rows": [row for row in parity["rows"] if row.get("backbone", "minilm-l6") == backbone]}


def scale_pairs(parity: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (task, backbone) with both fine-tuning and deep rows: the backbone's size and deep's test gap."""
    cells = {(row.get("backbone", "minilm-l6"), row["task"], row["method"]): row for row in parity["rows"]}
    pairs = []
    for backbone, task, method in cells:
        if method != "deep" or (backbone, task, "finetune") not in cells:
            continue
        deep, finetune = cells[(backbone, task, "deep")], cells[(backbone, task, "finetune")]
        pairs.append(
            {
                "backbone": backbone,
                "task": task,
                "metric": deep["metric"],
                "parameters": finetune["trainable_parameters"],  # fine-tuning trains every weight (and the head)
                "finetune": finetune,
                "deep": deep,
                "gap": deep["mean"] - finetune["mean"],
                "gap_std": (deep["std"] ** 2 + finetune["std"] ** 2) ** 0.5,
                "validation_gap": deep["validation"] - finetune["validation"],
            }
        )
    return sorted(pairs, key=lambda pair: (pair["task"], pair["parameters"]))


def scale_table(pairs: list[dict[str, Any]]) -> str:
    lines = [
        "| task | backbone | parameters | finetune (test, mean ± std) | deep (test, mean ± std) | gap (test) | "
        "gap (validation) | finetune / deep per seed (test) | finetune lr | deep lr, length | "
        "train s finetune / deep |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pair in pairs:
        finetune, deep = pair["finetune"], pair["deep"]
        seeds = " / ".join(", ".join(f"{score:.1f}" for score in row["scores"]) for row in (finetune, deep))
        lines.append(
            f"| {pair['task']} ({pair['metric']}) | {pair['backbone']} | {pair['parameters'] / 1e6:.1f}M | "
            f"{finetune['mean']:.2f} ± {finetune['std']:.2f} | {deep['mean']:.2f} ± {deep['std']:.2f} | "
            f"{pair['gap']:+.2f} ± {pair['gap_std']:.2f} | {pair['validation_gap']:+.2f} | {seeds} | "
            f"{finetune['lr']:g} | "
            f"{deep['lr']:g}, {deep['prompt_length']} | {finetune['train_seconds']:.0f} / {deep['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def seed_gaps(pair: dict[str, Any]) -> tuple[float, float, float]:
    """Deep minus fine-tuning: worst deep seed against best fine-tuning seed, medians, best against worst."""
    deep, finetune = pair["deep"]["scores"], pair["finetune"]["scores"]
    return min(deep) - max(finetune), statistics.median(deep) - statistics.median(finetune), max(deep) - min(finetune)


def plot_scale(pairs: list[dict[str, Any]], path: Path) -> None:
    """Deep minus fine-tuning against backbone size, one line per task measured on several backbones: the gap of the
    seeds' medians (one collapsed run of three moves a mean by tens of points, a median not), bars from the gap of
    the worst to that of the best seeds."""
    figure, axis = plt.subplots(figsize=(6, 4.8))
    size = {}  # millions of parameters per backbone (the heads' few differ per task)
    for pair in pairs:
        size.setdefault(pair["backbone"], pair["parameters"] / 1e6)
    for task in dict.fromkeys(pair["task"] for pair in pairs):
        points = [pair for pair in pairs if pair["task"] == task]
        if len(points) < 2:  # a task measured on one backbone has no trend to show
            continue
        spans = [seed_gaps(pair) for pair in points]
        axis.errorbar(
            [size[pair["backbone"]] for pair in points],
            [middle for _, middle, _ in spans],
            yerr=[[middle - low for low, middle, _ in spans], [high - middle for _, middle, high in spans]],
            marker="o",
            capsize=3,
            label=task,
        )
    axis.axhline(0, color="#888", linewidth=0.8)
    axis.set_xscale("log")
    # backbones of close sizes (110M, 135M) would print their names over each other: slanted
    axis.set_xticks(
        list(size.values()), [f"{name} {millions:.0f}M" for name, millions in size.items()], rotation=25, ha="right"
    )
    axis.minorticks_off()
    axis.set_ylim(max(axis.get_ylim()[0], -25), min(axis.get_ylim()[1], 25))
    finish(figure, axis, "backbone", "deep - finetune, median of seeds (test points)", path)


def scale_section(parity: dict[str, Any], results: Path) -> list[str]:
    """The parity comparison on every backbone that has both methods: the gap against size."""
    if len({row.get("backbone", "minilm-l6") for row in parity["rows"]}) < 2:
        return []
    pairs = scale_pairs(parity)
    backbones = list(dict.fromkeys(pair["backbone"] for pair in pairs))
    plot_scale(pairs, results / "scale.png")
    setups = parity.get("setups", {})
    commands = [
        "python benchmarks/study.py --parts parity" + ("" if name == "minilm-l6" else f" --backbone {name} --resume")
        for name in backbones
    ]
    return [
        "## Gap against backbone size\n",
        "Fine-tuning against deep at the same parity budget on each backbone (same training subsamples, epochs, "
        "batch, validation and test examples); each method's learning rate (and deep's prompt length) searched on "
        "validation with the first seed, then 3 seeds. Grids: "
        + "; ".join(
            f"{name}: {setups[name]['scale']['learning_rates'].get('finetune')} finetune, "
            f"{setups[name]['scale']['learning_rates'].get('deep')} deep, lengths "
            f"{setups[name]['scale']['prompt_lengths']} ({setups[name]['date']})"
            for name in backbones
            if name in setups
        )
        + ". Commands: "
        + ", ".join(f"`{command}`" for command in commands)
        + ".\n",
        scale_table(pairs),
        "",
        "The plot: deep minus fine-tuning between the seeds' medians (a collapsed run moves a mean of three by tens of "
        "points), bars from the worst deep seed against the best fine-tuning seed to the reverse.\n",
        "![gap against size](scale.png)\n",
    ]


def generation_section(generation: dict[str, Any]) -> list[str]:
    """Prefix-Tuning for generation on SmolLM2 against fine-tuning and zero-shot prompting (generation.py)."""
    budget = generation["budget"]
    lines = [
        "## Generation on a decoder: prefix against fine-tuning and prompting\n",
        f"`{generation['command']}` on SmolLM2-135M-Instruct: training sets subsampled to {budget['train_examples']} "
        f"examples, validation and test to {budget['eval_examples']}, {budget['epochs']:g} epoch(s), batch "
        f"{budget['batch_size']}, prefix length {budget['prompt_length']}, seeds {budget['seeds']} (prompting: one "
        f"run, it draws nothing); {generation['shrunk']}. Answers written greedily. Each input is the user's message "
        "in the chat template, under the task's instruction, for every method.\n",
        "| task | method | runs | test (mean ± std) | validation (mean) | test ROUGE-L | trainable | checkpoint |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in generation["summary"]:
        size = "" if row["checkpoint_bytes"] is None else f"{row['checkpoint_bytes'] / 1e6:.2f} MB"
        lines.append(
            f"| {row['task']} ({row['metric']}) | {row['method']} | {row['runs']} | {row['test_mean']:.1f} ± "
            f"{row['test_std']:.1f} | {row['validation_mean']:.1f} | {row['test_rougeL_mean']:.1f} | "
            f"{100 * row['trainable_share']:.3f}% | {size} |"
        )
    instructions = "; ".join(f"{task['name']}: `{task['instruction']!r}`" for task in generation["tasks"])
    return [*lines, "", f"Instructions: {instructions}.\n"]


REFERENCES = {"peft": "PEFT", "transformers": "transformers"}


def faithfulness_section(faithfulness: dict[str, Any], plot: str = "faithfulness.png") -> list[str]:
    """One of ptuning's methods against a reference implementation trained alike: deep prompts against PEFT's
    prefix tuning, or fine-tuning against transformers' own model."""
    setup = faithfulness["setup"]
    reference = REFERENCES[setup.get("reference", "peft")]
    if setup.get("method", "deep") == "deep":
        title = "ptuning against PEFT prefix tuning"
        recipe = (
            "each task's deep learning rate and prompt length from the parity search, flat prompt, positions shifted "
            "as PEFT does, prompt and backbone dropout off"
        )
        parts = "prompt and head"
    else:
        title = f"ptuning's fine-tuning baseline against the {reference} library's own model class"
        recipe = "each task's fine-tuning learning rate from the parity search on this backbone, backbone dropout off"
        parts = "head"
    lines = [
        f"## Faithfulness: {title} ({setup['date']})\n",
        f"`{setup['command']}`: both implementations through one training loop on {setup['backbone']} (the parity "
        f"budget, {recipe}, head dropout 0.1, the same Trainer arguments, best epoch on validation). Start `own`: "
        f"each implementation initializes its {parts} from the seed (independent runs: their gap carries seed "
        f"noise); `ptuning's`: {reference} starts from ptuning's initial {parts} (paired runs: their gap is the "
        "implementations' training alone). Trainable parameters: those the loss reaches.\n",
        "| task | implementation | start | test (mean ± std) | validation (mean ± std) | test per seed | "
        "final train loss | trainable parameters | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in faithfulness["rows"]:
        start = "ptuning's" if row.get("start") == "shared" else "own"
        lines.append(
            f"| {row['task']} | {row['implementation']} | {start} | "
            f"{row['metric']} {row['mean']:.2f} ± {row['std']:.2f} | "
            f"{row['validation']['mean']:.2f} ± {row['validation']['std']:.2f} | "
            f"{', '.join(f'{score:.2f}' for score in row['scores'])} | {row['final_train_loss']:.3f} | "
            f"{row['trainable_parameters']:,} | {row['train_seconds']:.0f} |"
        )
    lines.append("")
    for task, check in faithfulness["checks"].items():
        lines.append(
            f"- {task}: ptuning - {reference} **{check['test_gap']:+.2f}** test, {check['validation_gap']:+.2f} "
            f"validation (independent); from the same start **{check['paired_test_gap']:+.2f}** test, "
            f"{check['paired_validation_gap']:+.2f} validation, at most {check['paired_largest_seed_difference']:.2f} "
            "on any seed; "
            f"same batches in the same order: {'yes' if check['same_batches'] else 'NO'}; same trainable parameters: "
            f"{'yes' if check['same_trainable_parameters'] else 'NO'}; given ptuning's weights, the logits of "
            f"{reference} differ by at most {check['max_logit_difference_same_weights']:.1e}."
        )
    return [*lines, "", f"![training loss]({plot})\n"]


MULTITASK_SETTINGS = ("single", "multi", "multi-then-single", "single-as-many-steps")


def plot_multitask(multitask: dict[str, Any], path: Path) -> None:
    """Test score per task of the three settings, mean and std over the seeds."""
    tasks = multitask["tasks"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        rows = {row["setting"]: row for row in multitask["rows"] if row["task"] == task}
        settings = [setting for setting in MULTITASK_SETTINGS if setting in rows]
        means = [rows[setting]["mean"] for setting in settings]
        axis.bar(settings, means, yerr=[rows[s]["std"] for s in settings], capsize=3, color="#3b7dd8")
        axis.set_title(f"{task} (test {rows[settings[0]]['metric']})")
        axis.tick_params(axis="x", rotation=20)
        axis.set_ylim(max(0, min(means) - 8), min(100, max(means) + 4))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def multitask_table(multitask: dict[str, Any]) -> str:
    """Task x setting: test mean +- std (validation mean), and the training time."""
    lines = [
        "| task (test metric) | " + " | ".join(MULTITASK_SETTINGS) + " |",
        "| --- |" + " --- |" * len(MULTITASK_SETTINGS),
    ]
    for task in multitask["tasks"]:
        rows = {row["setting"]: row for row in multitask["rows"] if row["task"] == task}
        cells = [
            f"{rows[s]['mean']:.2f} ± {rows[s]['std']:.2f} (val {rows[s]['validation']:.2f})" if s in rows else "-"
            for s in MULTITASK_SETTINGS
        ]
        lines.append(f"| {task} ({rows['single']['metric']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_lengths(ablations: dict[str, Any], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(5, 3.6))
    for task in dict.fromkeys(row["task"] for row in ablations["prompt_length"]):
        rows = [row for row in ablations["prompt_length"] if row["task"] == task]
        axis.plot(
            [r["prompt_length"] for r in rows],
            [r["test"] for r in rows],
            marker="o",
            label=f"{task} ({rows[0]['metric']})",
        )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("prompt length")
    axis.set_ylabel("test score")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_depth(ablations: dict[str, Any], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(5, 3.6))
    rows = ablations["depth"]
    axis.bar([r["layers"] for r in rows], [r["test"] for r in rows], color="#3b7dd8")
    axis.set_ylabel("CoNLL-2003 NER test F1")
    axis.set_title("prompted layers")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def times(value: float | None) -> str:
    """A ratio as printed: 0.72x, or why it is missing."""
    return "not measured" if value is None else f"{value:.2f}x"


def plot_cost(cost: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    kinds = list(cost["step_seconds_median"])
    axes[0].bar(kinds, [cost["step_seconds_median"][k] * 1000 for k in kinds], color="#3b7dd8")
    axes[0].set_title("training step (ms, median)")
    axes[1].bar(kinds, [cost["training_memory_mb"][k] for k in kinds], color="#3b7dd8")
    axes[1].set_title("training memory beyond weights (MB)")
    speeds = cost["examples_per_second"]
    axes[2].bar(["dynamic + grouped", "padded to 128"], list(speeds.values()), color="#3b7dd8")
    axes[2].set_title("examples / s (deep)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_longer(longer: dict[str, Any], path: Path) -> None:
    """Validation score per epoch (mean over seeds) of finetune and deep in the longer runs, one panel a task."""
    tasks = list(dict.fromkeys(row["task"] for row in longer["rows"]))
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for row in (r for r in longer["rows"] if r["task"] == task):
            curve = row.get("validation_curve", [])
            axis.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", label=row["method"])
        axis.set_title(f"{task} (validation)")
        axis.set_xlabel(f"epoch (batch {longer.get('batch_size', '?')})")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def reparam_rows(parity_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat table against the MLP reparameterization per task, from the parity rows (test and validation)."""
    by_key = {(row["task"], row["method"]): row for row in parity_rows}
    return [
        {
            "task": task,
            "flat": by_key[(task, "deep")]["mean"],
            "mlp": by_key[(task, "deep-mlp")]["mean"],
            "flat_validation": by_key[(task, "deep")]["validation"],
            "mlp_validation": by_key[(task, "deep-mlp")]["validation"],
            "metric": by_key[(task, "deep")]["metric"],
        }
        for task in dict.fromkeys(row["task"] for row in parity_rows)
        if (task, "deep") in by_key and (task, "deep-mlp") in by_key
    ]


def _percent(share: float | None) -> str:
    """A share in percent; results from before stored shares were recorded show a dash."""
    return "-" if share is None else f"{100 * share:.3f}%"


def parity_table(parity: dict[str, Any]) -> str:
    lines = [
        "| task | method | test metric (mean ± std) | seeds | lr | prompt length | backbone dropout | trained share | "
        "stored share | train s | peak RSS MB | checkpoint |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in parity["rows"]:
        lines.append(
            f"| {row['task']} | {row['method']} | {row['metric']} {row['mean']:.2f} ± {row['std']:.2f} | "
            f"{len(row['seeds'])} | {row['lr']:g} | {row['prompt_length'] or '-'} | "
            f"{'off' if row.get('backbone_dropout') is False else 'on'} | {100 * row['trainable_share']:.3f}% | "
            f"{_percent(row.get('stored_share'))} | {row['train_seconds']:.0f} | {row['peak_rss_mb']:.0f} | "
            f"{row['checkpoint_bytes'] / 1024:.0f} KB |"
        )
    return "\n".join(lines)


def matrix(parity: dict[str, Any]) -> str:
    """Task x method test scores (mean ± std over the seeds): the table the README shows."""
    tasks = list(dict.fromkeys(row["task"] for row in parity["rows"]))
    cells = {(row["task"], row["method"]): row for row in parity["rows"]}
    lines = [
        "| task (test metric) | " + " | ".join(METHOD_ORDER) + " |",
        "| --- |" + " --- |" * len(METHOD_ORDER),
    ]
    for task in tasks:
        metric = next(row["metric"] for row in parity["rows"] if row["task"] == task)
        scores = [
            f"{cells[(task, m)]['mean']:.1f} ± {cells[(task, m)]['std']:.1f}" if (task, m) in cells else "-"
            for m in METHOD_ORDER
        ]
        lines.append(f"| {task} ({metric}) | " + " | ".join(scores) + " |")
    return "\n".join(lines)


def gaps(parity: dict[str, Any]) -> str:
    """The bar: the deep variant with the better validation score against finetune, per task (parity rows, or
    the longer runs' rows)."""
    lines = [
        "| task | finetune | deep variant chosen on validation | gap (points) | deep stored share |",
        "| --- | --- | --- | --- | --- |",
    ]
    for task in dict.fromkeys(row["task"] for row in parity["rows"]):
        rows = {row["method"]: row for row in parity["rows"] if row["task"] == task}
        best = max((rows[m] for m in ("deep", "deep-mlp") if m in rows), key=lambda row: row["validation"])
        finetune = rows["finetune"]["mean"]
        lines.append(
            f"| {task} | {finetune:.2f} | {best['method']} {best['mean']:.2f} | "
            f"{best['mean'] - finetune:+.2f} | {_percent(best.get('stored_share'))} |"
        )
    return "\n".join(lines)


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _where_trailing(margin: float | None) -> str:
    if margin is None:  # quick mode: the parts run whatever the gap, to exercise them
        return "On the task(s) with the largest validation gap, whatever its size (quick mode)"
    return f"Where the deep variant chosen on validation trailed fine-tuning by more than {margin:g} point(s)"


def rerun_section(result: dict[str, Any], title: str, change: str) -> list[str]:
    """Markdown for a part that trained fine-tuning and deep again where deep trailed (longer, data,
    data-longer)."""
    return [
        f"## {title}\n",
        f"{_where_trailing(result.get('margin', 1.0))}, {change} (best epoch on validation kept), with their "
        "searched learning rate and prompt length and every seed, the largest gaps first. Already within it: "
        f"{', '.join(result['within_a_point_already']) or 'none'}; behind but not rerun (time): "
        f"{', '.join(result.get('behind_not_rerun', [])) or 'none'}. Train loss: the last logged window of "
        "training, mean over seeds (high: underfitting).\n",
        "| task | method | train examples | steps | test metric (mean ± std) | validation | train loss | lr | "
        "prompt length | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {r['task']} | {r['method']} | {r.get('train_examples', '-')} | {r.get('steps', '-')} | "
            f"{r['metric']} {r['mean']:.2f} ± {r['std']:.2f} | {r['validation']:.2f} | {_loss(r.get('train_loss'))} | "
            f"{r['lr']:g} | {r['prompt_length'] or '-'} | {r['train_seconds']:.0f} |"
            for r in result["rows"]
        ],
        "",
        gaps(result),
        "",
    ]


def prompt_start(row: dict[str, Any]) -> str:
    """Where a row's prompt started: rows from before the start was an option started at random; methods without a
    trained prompt (prompting, finetune) have none."""
    return "" if row["method"] in ("prompting", "finetune") else row.get("start") or "random"


def decoder_section(decoder: dict[str, Any], cost: dict[str, Any] | None, title: str) -> list[str]:
    """P-Tuning v2 on the decoder SmolLM2-135M against discrete prompting, a verbalizer head, fine-tuning and
    shallow prompts (benchmarks/decoder.py), and its training cost (benchmarks/cost.py --backbone)."""
    budget = decoder["budget"]
    lines = [
        f"## {title}\n",
        f"`{decoder['command']}` on SmolLM2-135M-Instruct (a 30-layer Llama decoder, 135M parameters, fetched by "
        f"`make backbones`): training sets subsampled to {budget['train_examples']} examples, validation and test "
        f"to {budget['eval_examples']}, {budget['epochs']:g} epoch(s), batch {budget['batch_size']}, prompt length "
        f"{budget['prompt_length']}, seeds {budget['seeds']}; {decoder['shrunk']}."
        + (
            " Discrete prompting trains nothing: the template chosen on validation is reported (every template "
            "below).\n"
            if any(row["method"] == "prompting" for row in decoder["rows"])
            else "\n"
        ),
        "| task | method | head | prompt start | runs | test (mean ± std) | validation (mean) | trainable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {row['task']} | {row['method']} | {row['head']} | {prompt_start(row)} | {row['runs']} | "
            f"{row['test_mean']:.1f} ± "
            f"{row['test_std']:.1f} | {row['validation_mean']:.1f} | {100 * row['trainable_share']:.3f}% |"
            for row in decoder["summary"]
        ],
        "",
    ]
    if any(row["method"] == "prompting" for row in decoder["rows"]):
        lines += [
            "Discrete prompting, every template (rotten-tomatoes accuracy):\n",
            "| template | label words | chat template | validation | test | chosen |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
    templates = {template["name"]: template for template in decoder["templates"]}
    for row in decoder["rows"]:
        if row["method"] == "prompting":
            template = templates[row["template"]]
            text = template["template"].replace("\n", "\\n")
            lines.append(
                f"| `{text}` | `{template['verbalizer']}` | {template['chat_template']} | {row['validation']:.1f} | "
                f"{row['test']:.1f} | {'yes' if row['chosen'] else ''} |"
            )
    lines.append("")
    if cost:
        steps, memory = cost["step_seconds_median"], cost["training_memory_mb"]
        lines += [
            "Cost on the decoder (`python benchmarks/cost.py --backbone smollm2-135m --kinds deep,finetune --quick "
            f"--epoch-sentences 128`): "
            f"batch {cost['batch_size']} of CoNLL-2003 sentences ({cost['batch_tokens'][1]} tokens), "
            f"{cost['repeats']} alternated repeats, medians: deep {steps['deep'] * 1000:.0f} ms a step and "
            f"{memory['deep']:.0f} MB of training memory beyond the weights, finetune {steps['finetune'] * 1000:.0f} "
            f"ms and {memory['finetune']:.0f} MB: deep / finetune step time "
            f"**{times(cost['step_time_ratio_vs_finetune'])}**, "
            f"memory **{times(cost['peak_mem_ratio_vs_finetune'])}**.\n",
        ]
    return lines


def write(results: Path = RESULTS) -> Path:
    names = ("parity", "ablations", "longer", "data", "data_longer", "multitask", "cost", "faithfulness")
    loaded = (_load(results, f"{name}.json") for name in names)
    parity_all, ablations, longer, data, data_longer, multitask, cost, faithfulness = loaded
    finetune_faithfulness = _load(results, "faithfulness-finetune.json")
    parity = backbone_rows(parity_all, "minilm-l6") if parity_all else None
    sections = [
        "# Study: P-Tuning v2 at CPU scale\n",
        "Produced by `python benchmarks/study.py` (the `--quick` mode runs every part reduced). "
        "Backbone: the packaged all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M parameters).\n",
    ]
    if parity:
        setup = parity["setup"]
        scale = setup["scale"]
        plot_parity(parity, results / "parity.png")
        sections += [
            f"## Parity ({setup['mode']} run, {setup['date']})\n",
            f"Training sets subsampled to {scale['train_examples']} examples (a new draw per seed), validation and "
            f"test to {scale['eval_examples']} (one fixed draw for every run); {scale['epochs']} epoch(s) with the "
            f"best epoch on validation kept; batch {scale['batch_size']}; seeds {scale['seeds']}; prompt dropout "
            f"{setup.get('prompt_dropout', 0.1)}. Learning-rate grid per method {scale['learning_rates']}; prompt "
            f"lengths {scale['prompt_lengths']} searched for deep (the other prompt methods use the first). "
            "The best setting on validation (first seed) is rerun with the other seeds; test is never "
            f"used for selection. {setup.get('jobs', 1)} training(s) ran at once, sharing the 2 cores: train "
            "seconds include that sharing and compare only with each other.\n",
            "Trained share counts what the optimizer updates (reparameterization MLP and LSTM included); stored "
            "share what the checkpoint keeps (the folded prompt table and the head).\n",
            matrix(parity),
            "",
            "![parity](parity.png)\n",
            "Every row in full (the selected setting, the shares, time, memory, checkpoint size):\n",
            parity_table(parity),
            "",
            "### Best deep variant against fine-tuning\n",
            gaps(parity),
            "",
        ]
    if faithfulness:
        sections += faithfulness_section(faithfulness)
    if parity_all:
        sections += scale_section(parity_all, results)
    if finetune_faithfulness:
        sections += faithfulness_section(finetune_faithfulness, "faithfulness-finetune.png")
    if ablations:
        plot_lengths(ablations, results / "prompt_length.png")
        plot_depth(ablations, results / "depth.png")
        sections += [
            "## Ablations\n",
            "### Prompt length (deep, first seed, each task's deep learning rate from the parity search)\n",
            "| task | prompt length | test | validation | trainable share |",
            "| --- | --- | --- | --- | --- |",
        ]
        sections += [
            f"| {r['task']} | {r['prompt_length']} | {r['test']:.2f} | {r['validation']:.2f} | "
            f"{100 * r['trainable_share']:.3f}% |"
            for r in ablations["prompt_length"]
        ]
        sections += [
            "",
            "![prompt length](prompt_length.png)\n",
            "### Depth (CoNLL-2003 NER, first seed, the parity search's deep prompt length and learning rate)\n",
            "| prompted layers | test F1 | validation F1 | train s |",
            "| --- | --- | --- | --- |",
        ]
        sections += [
            f"| {r['layers']} | {r['test']:.2f} | {r['validation']:.2f} | {r['train_seconds']:.0f} |"
            for r in ablations["depth"]
        ]
        sections += [
            "",
            "![depth](depth.png)\n",
            "### Reparameterization (from the parity runs)\n",
            "| task | flat (test) | MLP (test) | flat (validation) | MLP (validation) |",
            "| --- | --- | --- | --- | --- |",
        ]
        sections += [
            f"| {r['task']} ({r['metric']}) | {r['flat']:.2f} | {r['mlp']:.2f} | "
            f"{r.get('flat_validation', float('nan')):.2f} | {r.get('mlp_validation', float('nan')):.2f} |"
            for r in (reparam_rows(parity["rows"]) if parity else ablations["reparam"])
        ]
        sections.append("")
    if longer:
        batch = longer.get("batch_size", parity["setup"]["scale"]["batch_size"] if parity else "?")
        if longer["rows"]:
            plot_longer(longer, results / "longer.png")
        sections += rerun_section(
            longer,
            f"More optimizer steps ({longer['epochs']} epochs of batch {batch})",
            f"both were trained again for {longer['epochs']} epochs of batch {batch}",
        )
        sections.append("![validation per epoch](longer.png)\n" if longer["rows"] else "")
    if data:
        examples = data["changes"]["max_train_samples"]
        sections += rerun_section(
            data,
            f"More training data ({examples} examples)",
            f"both were trained again on {examples} training examples with the parity epochs and batch",
        )
    if data_longer:
        examples, epochs = data_longer["changes"]["max_train_samples"], data_longer["changes"]["epochs"]
        batch = parity["setup"]["scale"]["batch_size"] if parity else "the parity"
        sections += rerun_section(
            data_longer,
            f"More data and more epochs ({examples} examples, {epochs} epochs)",
            f"after the more-data part (judged on its runs' validation scores), both were trained again "
            f"on {examples} training examples for {epochs} epochs of batch {batch}",
        )
    if multitask:
        plot_multitask(multitask, results / "multitask.png")
        joint = multitask["joint"]
        scale = multitask["setup"]["scale"]
        sections += [
            f"## Multi-task ({multitask['setup']['mode']} run, {multitask['setup']['date']})\n",
            f"Tasks {', '.join(multitask['tasks'])}; each training set subsampled to {scale['train_examples']} "
            f"examples, validation and test to {scale['eval_examples']}, {scale['epochs']} epoch(s) of batch "
            f"{scale['batch_size']}, seeds {', '.join(map(str, scale['seeds']))}. `single`: deep alone, lr and "
            "prompt length searched on the first seed's validation; `multi`: one prompt for all the tasks with a head "
            f"each, every batch from one task drawn {multitask['sampling']}ly to size, searched on the mean "
            f"validation score (chosen: lr {joint['lr']:g}, length {joint['prompt_length']}); `multi-then-single`: "
            "each task trained alone again from the joint prompt and its head, at its single-setting lr; "
            "`single-as-many-steps` (the control, where run): each task alone from a fresh prompt of the joint "
            "prompt's length, at its single-setting lr, for as many steps as its prompt had in the joint run and "
            "the second stage together.\n",
            multitask_table(multitask),
            "",
            "Training time (seconds, mean over seeds): the joint run "
            + f"{next(r['train_seconds'] for r in multitask['rows'] if r['setting'] == 'multi'):.0f} for all the "
            + "tasks; alone and from the joint prompt: "
            + ", ".join(
                f"{row['task']} {row['setting']} {row['train_seconds']:.0f}"
                for row in multitask["rows"]
                if row["setting"] != "multi"
            )
            + ".\n",
            "![multitask](multitask.png)\n",
        ]
    if cost:
        plot_cost(cost, results / "cost.png")
        steps = cost["step_seconds_median"]
        sections += [
            "## Cost\n",
            f"MiniLM-L6, batch {cost['batch_size']} of real CoNLL-2003 sentences ({cost['batch_tokens'][1]} tokens "
            f"after padding), prompt length {cost['prompt_length']}, {cost['repeats']} alternated repeats, medians.\n",
            "| configuration | step (ms) | training memory beyond weights (MB) |",
            "| --- | --- | --- |",
            *[f"| {k} | {steps[k] * 1000:.0f} | {cost['training_memory_mb'][k]:.1f} |" for k in steps],
            "",
            *(
                [f"- PEFT prefix tuning was not measured: {cost['peft_prefix_not_measured']}"]
                if cost.get("peft_prefix_not_measured")
                else []
            ),
            f"- deep / finetune step time: **{times(cost['step_time_ratio_vs_finetune'])}**; deep / PEFT prefix "
            f"tuning: **{times(cost['step_time_ratio_vs_peft'])}**; deep / finetune training memory: "
            f"**{cost['peak_mem_ratio_vs_finetune']:.2f}x** (all with the backbone's dropout active).",
            *(
                [
                    "- deep as the study trains it, backbone dropout off: "
                    f"**{times(cost['no_backbone_dropout_step_time_ratio_vs_finetune'])}** finetune, "
                    f"**{times(cost['no_backbone_dropout_step_time_ratio_vs_peft'])}** PEFT prefix tuning."
                ]
                if "no_backbone_dropout_step_time_ratio_vs_peft" in cost
                else []
            ),
            f"- {cost['epoch_sentences']} CoNLL-2003 training sentences: "
            f"{cost['examples_per_second']['dynamic_padding_length_grouped']:.1f} examples/s with dynamic padding "
            f"and length grouping vs {cost['examples_per_second']['padded_to_128']:.1f} padded to 128 tokens: "
            f"**{cost['epoch_speedup_vs_pad128']:.2f}x**.\n",
            "![cost](cost.png)\n",
        ]
    decoder_parts = {
        "decoder.json": "On a decoder: SmolLM2-135M-Instruct",
        "decoder-longer.json": "On a decoder: deep prompts with more steps",
    }
    for name, title in decoder_parts.items():
        decoder = _load(results, name)
        if decoder:
            cost_of_decoder = _load(results, "cost-smollm2-135m.json") if name == "decoder.json" else None
            sections += decoder_section(decoder, cost_of_decoder, title)
    generation = _load(results, "generation.json")
    if generation:
        sections += generation_section(generation)
    notes = results / "READING.md"
    if notes.is_file():
        sections += ["## Reading\n", notes.read_text()]
    path = results / "REPORT.md"
    path.write_text("\n".join(sections) + "\n")
    return path


if __name__ == "__main__":
    print(write())
