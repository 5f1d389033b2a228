"""The deep prompt: equivalence with transformers' cache route, padding, effect, freezing, reparam."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import PAD, assert_padding_invariant, prompt_effect, random_batch, tiny_backbone
from transformers import DynamicCache, FunnelConfig, FunnelModel, XLNetConfig, XLNetModel

from ptuning import PromptConfig, PromptedModel, UnsupportedModelError
from ptuning.errors import PtuningError
from ptuning.prompts.attention import active_prompts


def prompted(arch="bert", impl="sdpa", task="token-classification", **prompt_settings) -> PromptedModel:
    settings = {"length": 5, "dropout": 0.0, **prompt_settings}
    torch.manual_seed(0)
    return PromptedModel.from_backbone(
        tiny_backbone(arch, impl), task, num_labels=3, prompt=PromptConfig(**settings)
    ).eval()


def default_position_ids(backbone, input_ids):
    embeddings = getattr(backbone, "embeddings", None)
    if hasattr(embeddings, "create_position_ids_from_input_ids"):
        return embeddings.create_position_ids_from_input_ids(input_ids, embeddings.padding_idx, 0)
    return torch.arange(input_ids.shape[1]).expand_as(input_ids)


def cache_argument(backbone) -> str:
    """The forward argument that takes a cache: ``cache`` since transformers 5.24, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


@pytest.mark.numerics
@pytest.mark.parametrize("shift", [False, True], ids=["unshifted", "shifted"])
def test_encode_equals_dynamic_cache_route(cache_arch_impl, shift):
    arch, impl = cache_arch_impl
    model = prompted(arch, impl, shift_positions=shift)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        ours = model.encode(input_ids, attention_mask)
        cache = DynamicCache(config=model.backbone.config)
        for layer, (key, value) in enumerate(model.prompt_key_values(len(input_ids))):
            cache.update(key.clone(), value.clone(), layer)
        mask_with_prompt = torch.cat([torch.ones(len(input_ids), 5, dtype=torch.long), attention_mask], dim=1)
        # The cache route shifts positions by the cache length unless explicit (unshifted) ids are passed.
        position_ids = None if shift else default_position_ids(model.backbone, input_ids)
        reference = model.backbone(
            input_ids=input_ids,
            attention_mask=mask_with_prompt,
            position_ids=position_ids,
            **{cache_argument(model.backbone): cache},
        ).last_hidden_state
    real = attention_mask.bool()
    assert (ours - reference)[real].abs().max().item() <= 1e-5


def test_prompt_key_values_shapes():
    model = prompted(layers=[0, 2])
    pairs = model.prompt_key_values(batch_size=2)
    assert len(pairs) == 3 and pairs[1] is None
    for pair in (pairs[0], pairs[2]):
        assert all(tensor.shape == (2, 4, 5, 8) for tensor in pair)


def test_prompt_changes_output(arch_impl):
    model = prompted(*arch_impl)
    assert prompt_effect(model) > 1e-3


@pytest.mark.numerics
def test_padding_does_not_change_real_tokens(arch_impl):
    model = prompted(*arch_impl)
    assert_padding_invariant(model)


@pytest.mark.numerics
def test_only_selected_layers_are_prompted(arch_impl):
    """Also proves that call-order numbering (DistilBERT, ALBERT's shared module) gives each layer its own prompt."""
    model = prompted(*arch_impl, layers=[2])
    input_ids, attention_mask = random_batch()
    prompts = model.layer_prompts(len(input_ids))
    with torch.no_grad():
        plain = model.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        with active_prompts(prompts):
            ours = model.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    real = attention_mask.bool()
    # embeddings and the outputs of layers 0 and 1: untouched, bitwise, since a layer without a prompt runs
    # transformers' own attention on the same inputs
    for below in range(3):
        assert torch.equal(plain.hidden_states[below][real], ours.hidden_states[below][real])
    assert (plain.hidden_states[3] - ours.hidden_states[3])[real].abs().max() > 1e-3
    assert prompts.consumed == {2}


def test_trainable_parameter_count_matches_formula():
    model = prompted(task="sequence-classification")
    length, layers, hidden, labels = 5, 3, 32, 3
    assert model.trainable_parameters() == length * layers * 2 * hidden + hidden * labels + labels
    assert prompted(layers=[2]).trainable_parameters() == length * 1 * 2 * hidden + hidden * labels + labels
    grouped = prompted("llama")  # grouped-query attention: 2 key/value heads of 8 dims
    assert grouped.trainable_parameters() == length * layers * 2 * (2 * 8) + hidden * labels + labels


def test_training_moves_only_prompt_and_head():
    model = prompted(arch="roberta", task="sequence-classification", dropout=0.1)
    frozen_before = {name: tensor.clone() for name, tensor in model.backbone.state_dict().items()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompts.default.table", "heads.default.classifier.weight", "heads.default.classifier.bias"}
    prompt_before = model.prompt_encoder.table.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    input_ids, attention_mask = random_batch()
    for _ in range(3):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([0, 1, 2])).loss
        loss.backward()
        assert model.prompt_encoder.table.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, frozen_before[name]), name
    assert not torch.equal(model.prompt_encoder.table, prompt_before)


def test_gradient_reaches_prompt_of_every_layer():
    model = prompted()
    input_ids, attention_mask = random_batch()
    hidden = model.encode(input_ids, attention_mask)
    projection = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(3))
    (hidden @ projection).sum().backward()
    grad = model.prompt_encoder.table.grad.view(5, 3, 2, 32)
    assert (grad.abs().sum(dim=(0, 2, 3)) > 0).all()


@pytest.mark.numerics
def test_mlp_reparam_folds_to_identical_outputs(tmp_path):
    model = prompted(reparam="mlp", reparam_hidden=16)
    assert not hasattr(model.prompt_encoder, "table")
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path)
    restored = PromptedModel.from_pretrained(tmp_path, backbone=model.backbone).eval()
    assert restored.prompt_encoder.table.shape == (5, 3 * 2 * 32)
    assert restored.trainable_parameters() == 5 * 3 * 2 * 32 + 32 * 3 + 3
    with torch.no_grad():
        after = restored(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (before - after).abs().max().item() <= 1e-6


@pytest.mark.numerics
def test_eager_and_sdpa_agree():
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        sdpa = prompted("bert", "sdpa").encode(input_ids, attention_mask)
        eager = prompted("bert", "eager").encode(input_ids, attention_mask)
    assert (sdpa - eager)[attention_mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "backbone",
    [
        XLNetModel(XLNetConfig(vocab_size=50, d_model=32, n_layer=1, n_head=4, d_inner=48)),
        FunnelModel(FunnelConfig(vocab_size=50, d_model=32, block_sizes=[1], n_head=4, d_head=8, d_inner=48)),
    ],
    ids=["xlnet", "funnel"],
)
def test_unsupported_architectures_are_refused_by_name(backbone):
    with pytest.raises(UnsupportedModelError) as error:
        PromptedModel.from_backbone(backbone, "sequence-classification", num_labels=2)
    message = str(error.value)
    assert backbone.config.model_type in message and "supported: bert, roberta" in message


def test_bypassed_attention_is_detected_not_ignored():
    model = prompted()
    model.backbone.set_attn_implementation("sdpa")  # stock attention would drop the prompt
    input_ids, attention_mask = random_batch()
    with pytest.raises(UnsupportedModelError, match="silently ignored"):
        model.encode(input_ids, attention_mask)


def test_input_longer_than_position_table_is_refused():
    model = prompted(shift_positions=True)
    assert model.max_text_length == 64 - 5
    too_long = torch.full((1, 60), 7)
    with pytest.raises(PtuningError, match="longer than this backbone's position table"):
        model.encode(too_long)
    roberta = prompted("roberta")
    assert roberta.max_text_length == 64 - (PAD + 1)


def test_prompt_layers_must_exist():
    with pytest.raises(PtuningError, match=r"layers \[7\] do not exist"):
        prompted(layers=[0, 7])


def test_activation_checkpointing_is_refused_for_deep_prompts():
    model = prompted()
    model.backbone.activation_checkpointing_enable()
    model.train()
    input_ids, attention_mask = random_batch()
    with pytest.raises(PtuningError, match="activation \\(gradient\\) checkpointing"):
        model.encode(input_ids, attention_mask)
