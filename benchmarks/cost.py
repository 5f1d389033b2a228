"""Training cost of P-Tuning v2 against full fine-tuning and PEFT's prefix tuning, and of padding.

All on the packaged MiniLM-L6 and real CoNLL-2003 sentences (token classification), same batch (32)
and prompt length (16), in one process with the configurations alternated and medians taken, so
machine noise hits all alike:

* step time (forward + backward + AdamW step) of ``deep`` vs ``finetune`` vs PEFT prefix tuning, all with
  the backbone's dropout active (like for like), and of ``deep`` as the study trains it (backbone dropout off);
* training memory beyond the weights, counted exactly: bytes autograd saves for backward + gradients +
  AdamW's two moments (process RSS on CPU is dominated by allocator caching and data, so it is not used);
* training examples per second over CoNLL-2003 sentences with dynamic padding and the Trainer's length
  grouping vs padding every batch to 128 tokens (as the reference code does).

    python benchmarks/cost.py [--quick] [--backbone smollm2-135m --kinds deep,finetune]

``--quick``: 5 repeats and 512 sentences for the padding comparison; full: 9 repeats and 2,048
sentences (a throughput needs no whole epoch: 2,048 padded to 128 already take ~10 minutes on 2 cores).
Writes benchmarks/results/cost.json (``cost-BACKBONE.json`` for another ``--backbone``, e.g. the decoder
SmolLM2-135M fetched by ``make backbones``; ``--kinds`` picks the configurations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from report import times  # benchmarks/ is the script's folder, on sys.path
from transformers import DataCollatorForTokenClassification
from transformers.trainer_pt_utils import LengthGroupedSampler

from ptuning import PromptConfig, PromptedModel, PtuningError
from ptuning.backbones import load_tokenizer, resolve
from ptuning.data.packaged import load_packaged
from ptuning.tasks import make_task

PROMPT_LENGTH = 16
BATCH_SIZE = 32
KINDS = ("deep", "finetune", "peft-prefix", "deep-no-backbone-dropout")
BACKBONE = "minilm-l6"


def peft_unavailable() -> str | None:
    """Why PEFT's prefix tuning cannot be measured with the installed versions (None when it can)."""
    from ptuning.peft_interop import peft_prefix_problem

    try:
        problem = peft_prefix_problem()
    except PtuningError as error:  # peft is not installed
        return str(error)
    if problem is None:
        return None
    import peft
    import transformers

    return f"peft {peft.__version__} with transformers {transformers.__version__}: {problem}"


def ratio(median: dict[str, float], numerator: str, denominator: str) -> float | None:
    """A step-time ratio, None when one side was not measured."""
    return median[numerator] / median[denominator] if numerator in median and denominator in median else None


def conll_task_and_sentences(backbone: str):
    sentences = load_packaged("conll2003-ner").train
    labels = sorted({tag for sentence in sentences for tag in sentence.tags})
    return make_task("token-classification", load_tokenizer(backbone), labels, 128), sentences


def build(kind: str, labels: list[str], backbone: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """A model whose forward takes a collated batch and returns .loss, and its trainable parameters."""
    torch.manual_seed(0)
    if kind == "peft-prefix":
        import peft
        from transformers import AutoModelForTokenClassification

        base = AutoModelForTokenClassification.from_pretrained(resolve(backbone), num_labels=len(labels))
        config = peft.PrefixTuningConfig(task_type=peft.TaskType.TOKEN_CLS, num_virtual_tokens=PROMPT_LENGTH)
        model = peft.get_peft_model(base, config)
    else:
        method = "deep" if kind.startswith("deep") else kind
        backbone_dropout = kind != "deep-no-backbone-dropout"
        prompt = PromptConfig(method=method, length=PROMPT_LENGTH, dropout=0.0, backbone_dropout=backbone_dropout)
        model = PromptedModel.from_backbone(backbone, "token-classification", labels=labels, prompt=prompt)
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad]


def make_batches(task, sentences, pad_to: int | None, seed: int = 0) -> list[dict]:
    """Dynamic padding with the Trainer's length grouping, or every batch padded to ``pad_to`` tokens."""
    features = task.encode(sentences).inputs
    generator = torch.Generator().manual_seed(seed)
    if pad_to is None:
        collator = task.collator()
        lengths = [len(feature["input_ids"]) for feature in features]
        order = list(LengthGroupedSampler(BATCH_SIZE, lengths=lengths, generator=generator))
    else:
        collator = DataCollatorForTokenClassification(task.tokenizer, padding="max_length", max_length=pad_to)
        order = torch.randperm(len(features), generator=generator).tolist()
    return [
        collator([features[i] for i in order[start : start + BATCH_SIZE]]) for start in range(0, len(order), BATCH_SIZE)
    ]


def saved_for_backward(model, batch) -> int:
    """Bytes of the tensors autograd keeps for backward in one training step (exact, via saved-tensor hooks)."""
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return saved


def training_memory(model, parameters, batch) -> int:
    """Bytes saved for backward + gradients + AdamW's two moments: what training adds to the weights."""
    return saved_for_backward(model, batch) + 3 * sum(p.numel() * p.element_size() for p in parameters)


def timed_step(model, optimizer, batch) -> float:
    started = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def examples_per_second(model, parameters, batches: list[dict]) -> float:
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    examples = sum(len(batch["input_ids"]) for batch in batches)
    started = time.perf_counter()
    for batch in batches:
        timed_step(model, optimizer, batch)
    return examples / (time.perf_counter() - started)


def measure(
    repeats: int, epoch_sentences: int | None, backbone: str = BACKBONE, kinds: tuple[str, ...] = KINDS
) -> dict:
    """All cost figures; ``epoch_sentences`` bounds the padding comparison (None: the whole training set)."""
    task, sentences = conll_task_and_sentences(backbone)
    peft_problem = peft_unavailable() if "peft-prefix" in kinds else "not asked for (--kinds)"
    kinds = tuple(kind for kind in kinds if not (kind == "peft-prefix" and peft_problem))
    if peft_problem:
        print(f"PEFT prefix tuning is not measured: {peft_problem}", flush=True)
    models = {kind: build(kind, task.labels, backbone) for kind in kinds}
    optimizers = {kind: torch.optim.AdamW(params, lr=1e-4) for kind, (_, params) in models.items()}
    step_batches = make_batches(task, sentences[: BATCH_SIZE * 64], pad_to=None)
    batch = step_batches[len(step_batches) // 2]  # a typical, mid-length batch of real sentences
    memory = {kind: training_memory(model, params, batch) for kind, (model, params) in models.items()}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for kind, (model, _) in models.items():  # warm-up
        timed_step(model, optimizers[kind], batch)
    for _ in range(repeats):
        for kind, (model, _) in models.items():
            times[kind].append(timed_step(model, optimizers[kind], batch))
    median = {kind: statistics.median(values) for kind, values in times.items()}

    epoch = sentences[:epoch_sentences] if epoch_sentences else sentences
    deep_model, deep_parameters = models["deep"]
    dynamic = examples_per_second(deep_model, deep_parameters, make_batches(task, epoch, pad_to=None))
    padded = examples_per_second(deep_model, deep_parameters, make_batches(task, epoch, pad_to=128))
    return {
        "backbone": "all-MiniLM-L6-v2 (packaged)" if backbone == BACKBONE else backbone,
        "batch_size": BATCH_SIZE,
        "prompt_length": PROMPT_LENGTH,
        "batch_tokens": list(batch["input_ids"].shape),
        "repeats": repeats,
        "step_seconds_median": median,
        "training_memory_mb": {kind: value / 2**20 for kind, value in memory.items()},
        "peft_prefix_not_measured": peft_problem,
        "step_time_ratio_vs_finetune": ratio(median, "deep", "finetune"),
        "step_time_ratio_vs_peft": ratio(median, "deep", "peft-prefix"),
        "peak_mem_ratio_vs_finetune": memory["deep"] / memory["finetune"] if "finetune" in memory else None,
        "no_backbone_dropout_step_time_ratio_vs_finetune": ratio(median, "deep-no-backbone-dropout", "finetune"),
        "no_backbone_dropout_step_time_ratio_vs_peft": ratio(median, "deep-no-backbone-dropout", "peft-prefix"),
        "epoch_sentences": len(epoch),
        "examples_per_second": {"dynamic_padding_length_grouped": dynamic, "padded_to_128": padded},
        "epoch_speedup_vs_pad128": dynamic / padded,
    }


def summary(result: dict) -> str:
    lines = [
        f"{kind:>12}: step {step * 1000:6.0f} ms, training memory {result['training_memory_mb'][kind]:7.1f} MB"
        for kind, step in result["step_seconds_median"].items()
    ]
    if result.get("peft_prefix_not_measured"):
        lines.append(f"PEFT prefix tuning not measured: {result['peft_prefix_not_measured']}")
    lines.append(
        f"deep / finetune step time {times(result['step_time_ratio_vs_finetune'])}, deep / PEFT prefix "
        f"{times(result['step_time_ratio_vs_peft'])}, deep / finetune training memory "
        f"{times(result['peak_mem_ratio_vs_finetune'])}; without backbone dropout deep / finetune "
        f"{times(result['no_backbone_dropout_step_time_ratio_vs_finetune'])}, deep / PEFT prefix "
        f"{times(result['no_backbone_dropout_step_time_ratio_vs_peft'])}"
    )
    speeds = result["examples_per_second"]
    lines.append(
        f"{result['epoch_sentences']} CoNLL-2003 sentences: {speeds['dynamic_padding_length_grouped']:.1f} examples/s "
        f"with dynamic padding and length grouping, {speeds['padded_to_128']:.1f} padded to 128: "
        f"{result['epoch_speedup_vs_pad128']:.2f}x"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--epoch-sentences", type=int, default=None)
    parser.add_argument("--backbone", default=BACKBONE, help="an alias or folder (default: the packaged MiniLM)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--output", help="default benchmarks/results/cost.json (cost-BACKBONE.json for another)")
    args = parser.parse_args()
    kinds = tuple(args.kinds.split(","))
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or "deep" not in kinds:
        parser.error(f"--kinds takes {', '.join(KINDS)} and needs deep; got {args.kinds}")
    repeats, sentences = args.repeats or (5 if args.quick else 9), args.epoch_sentences or (512 if args.quick else 2048)
    result = measure(repeats, sentences, args.backbone, kinds)
    print(summary(result))
    name = "cost.json" if args.backbone == BACKBONE else f"cost-{Path(args.backbone).name}.json"
    output = Path(args.output or f"benchmarks/results/{name}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
