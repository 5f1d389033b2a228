"""Trainable parameters and share of each method on common checkpoint sizes, computed by building the models.

The architectures' published hyper-parameters are written here (no hub access); models are built on
PyTorch's meta device, so nothing is allocated. Prints a Markdown table and saves it as JSON.

    python benchmarks/trainable_share.py [--length 16] [--labels 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import (
    AlbertConfig,
    AutoConfig,
    AutoModel,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    RobertaConfig,
)

from ptuning import PromptConfig, PromptedModel
from ptuning.architectures import ARCHITECTURES
from ptuning.backbones import resolve

CHECKPOINTS = {
    "all-MiniLM-L6-v2 (packaged)": lambda: AutoConfig.from_pretrained(resolve("minilm-l6")),
    "bert-base-uncased": lambda: BertConfig(),
    "bert-large-uncased": lambda: BertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    "roberta-large": lambda: RobertaConfig(
        vocab_size=50265,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=514,
        type_vocab_size=1,
    ),
    "distilbert-base-uncased": lambda: DistilBertConfig(),
    "albert-base-v2": lambda: AlbertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "deberta-v3-base": lambda: DebertaV2Config(
        vocab_size=128100,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        max_position_embeddings=512,
        type_vocab_size=0,
    ),
    "gpt2": lambda: GPT2Config(),
    "Llama-2-7b": lambda: LlamaConfig(),
}
METHODS = {
    "deep": PromptConfig(method="deep"),
    "shallow": PromptConfig(method="shallow"),
    "linear-probe": PromptConfig(method="linear-probe"),
    "finetune": PromptConfig(method="finetune"),
}


def shares(length: int, labels: int) -> list[dict]:
    rows = []
    for name, make_config in CHECKPOINTS.items():
        config = make_config()
        if config.model_type not in ARCHITECTURES:
            continue  # an adapter for it is not installed in this version
        with torch.device("meta"):
            backbone = AutoModel.from_config(config)
            row = {
                "checkpoint": name,
                "model_type": config.model_type,
                "total_backbone": sum(p.numel() for p in backbone.parameters()),
            }
            for method, prompt in METHODS.items():
                prompt = PromptConfig(**{**prompt.to_dict(), "length": length})
                model = PromptedModel(backbone, "sequence-classification", [str(i) for i in range(labels)], prompt)
                row[method] = {
                    "trainable": model.trainable_parameters(),
                    "share": model.trainable_parameters() / model.total_parameters(),
                }
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--labels", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/trainable_share.json")
    args = parser.parse_args()
    rows = shares(args.length, args.labels)
    print(f"| checkpoint | backbone parameters | deep (P={args.length}) | shallow (P={args.length}) | linear-probe |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        cells = [f"{row[m]['trainable']:,} ({100 * row[m]['share']:.3f}%)" for m in ("deep", "shallow", "linear-probe")]
        print(f"| {row['checkpoint']} | {row['total_backbone'] / 1e6:.1f}M | " + " | ".join(cells) + " |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"length": args.length, "labels": args.labels, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
