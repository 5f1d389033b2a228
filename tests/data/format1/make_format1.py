"""Made with ptuning before checkpoint format 2 (commit 0c24274): format-1 checkpoints and their logits."""

import sys

sys.path.insert(0, "tests")
import torch
from conftest import random_batch, tiny_backbone
from safetensors.torch import save_file

from ptuning import PromptConfig, PromptedModel

out = sys.argv[1]
settings = {
    "ner": ("token-classification", ["B-PER", "I-PER", "O"], PromptConfig(length=4, dropout=0.0), None),
    "sent": (
        "sequence-classification",
        ["neg", "pos"],
        PromptConfig(length=6, layers=[0, 2], shift_positions=True, dropout=0.0),
        "mean",
    ),
    "probe": ("sequence-classification", ["a", "b", "c"], PromptConfig(method="linear-probe"), None),
}
input_ids, attention_mask = random_batch(batch_size=3, length=9)
logits = {}
for name, (task, labels, prompt, pooling) in settings.items():
    torch.manual_seed(3)
    model = PromptedModel.from_backbone(tiny_backbone("bert"), task, labels=labels, prompt=prompt, pooling=pooling)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    model.eval()
    with torch.no_grad():
        logits[name] = model(input_ids=input_ids, attention_mask=attention_mask).logits.contiguous()
    model.save_pretrained(f"{out}/{name}", extra={"task_name": task, "reader": {"format": "conll", "tag_column": -1}})
save_file(logits, f"{out}/logits.safetensors")
