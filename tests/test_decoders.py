"""Decoders: prefix-tuning for generation, last-token pooling, grouped-query attention."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, PAD, VOCAB, assert_close, random_batch, tiny_backbone
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from ptuning import PromptConfig, PromptedModel
from ptuning.errors import PtuningError
from ptuning.heads import pool

LM_CLASSES = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}


def tiny_lm(arch: str, attn_implementation: str = "sdpa"):
    config_class, _, settings = ARCHITECTURES[arch]
    torch.manual_seed(0)
    config = config_class(**settings, attn_implementation=attn_implementation, bos_token_id=2, eos_token_id=3)
    return LM_CLASSES[arch](config).eval()


def prefix_lm(arch: str, attn_implementation: str = "sdpa") -> PromptedModel:
    torch.manual_seed(1)
    prompt = PromptConfig(length=3, dropout=0.0)
    return PromptedModel.from_backbone(tiny_lm(arch, attn_implementation), "causal-lm", prompt=prompt).eval()


@pytest.mark.numerics
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_generate_uses_the_prefix_at_every_step(arch, impl):
    model = prefix_lm(arch, impl)
    prompt_ids = torch.tensor([[5, 17, 42, 8]])
    generated = model.generate(
        prompt_ids, torch.ones_like(prompt_ids), max_new_tokens=6, do_sample=False, pad_token_id=PAD
    )
    plain = model.backbone.generate(
        prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=6, do_sample=False, pad_token_id=PAD
    )
    assert not torch.equal(generated, plain)
    # Greedy decoding by repeated full forward calls (no cache) under the same prefix.
    tokens = prompt_ids
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)  # token ids are decisions (argmax): exactly, cache or not


def test_causal_lm_loss_trains_only_the_prefix():
    model = prefix_lm("gpt2")
    assert model.head is None and model.trainable_parameters() == 3 * 3 * 2 * 32
    input_ids = torch.randint(4, VOCAB, (2, 8))
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    assert model.prompt_encoder.table.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())  # the body and the language-modelling head


@pytest.mark.numerics
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_loss_on_the_target_tokens_equals_the_language_models_own(arch):
    """Logits only where a label is (the target), the loss as transformers' own causal-LM loss on the same labels:
    under the prefix, with padding, within 1e-5."""
    model = prefix_lm(arch)
    input_ids = torch.randint(4, VOCAB, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 7:] = 0  # a padded row
    labels = input_ids.masked_fill(torch.arange(9) < 5, -100).masked_fill(attention_mask == 0, -100)  # (3, 9)
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        full = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (3, 9, vocab), under the prefix
    reference = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]), labels[:, 1:].reshape(-1))
    assert ours.logits.shape == (int((labels[:, 1:] != -100).sum()), full.shape[-1])
    assert_close(ours.loss, reference)


@pytest.mark.numerics
def test_prefix_is_causal_for_text_but_visible_to_all():
    """Changing a later token must not change earlier tokens' logits, with the prefix present."""
    model = prefix_lm("llama")
    first = torch.tensor([[5, 6, 7, 8, 9]])
    second = first.clone()
    second[0, 4] = 50
    with torch.no_grad():
        a, b = model(input_ids=first).logits, model(input_ids=second).logits
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6) and not torch.allclose(a[0, 4], b[0, 4])


def left_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows with their padding moved to the left."""
    shifts = (attention_mask == 0).sum(1).tolist()  # (batch,) pads per row
    ids, mask = ([row.roll(shift) for row, shift in zip(t, shifts, strict=True)] for t in (input_ids, attention_mask))
    return torch.stack(ids), torch.stack(mask)  # each (batch, T)


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_pooling_picks_the_last_real_token_on_either_padding_side(side):
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 4)  # (batch, T, hidden)
    attention_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5])  # (batch, T)
    last = [5, 3, 0]
    if side == "left":
        attention_mask, last = attention_mask.flip(1), [5, 5, 5]
    pooled = pool(hidden, attention_mask, "last", backbone=None)  # (batch, hidden)
    assert torch.equal(pooled, hidden[torch.arange(3), torch.tensor(last)])


@pytest.mark.numerics
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_sequence_classification_pools_the_last_real_token(arch, side):
    torch.manual_seed(0)
    model = PromptedModel.from_backbone(
        tiny_backbone(arch), "sequence-classification", num_labels=2, prompt=PromptConfig(length=3, dropout=0.0)
    ).eval()
    assert model.tasks["default"].pooling == "last"
    input_ids, attention_mask = random_batch()
    if side == "left":
        input_ids, attention_mask = left_padded(input_ids, attention_mask)
    with torch.no_grad():
        hidden = model.encode(input_ids, attention_mask)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    last = attention_mask.sum(1) - 1 if side == "right" else torch.full((3,), input_ids.shape[1] - 1)
    assert attention_mask[torch.arange(3), last].all()
    expected = model.head.classifier(hidden[torch.arange(3), last])
    assert torch.allclose(logits, expected, atol=1e-6)


def test_causal_lm_needs_a_language_model_head_and_a_method_that_writes():
    with pytest.raises(PtuningError, match="needs a model with its language-modelling head"):
        PromptedModel.from_backbone(tiny_backbone("gpt2"), "causal-lm")
    with pytest.raises(
        PtuningError,
        match="supports methods deep \\(prefix-tuning\\), shallow \\(prompt tuning\\), finetune and prompting, "
        "not 'ptuning-v1'",
    ):
        PromptedModel.from_backbone(tiny_lm("gpt2"), "causal-lm", prompt=PromptConfig(method="ptuning-v1"))
