"""Deep prompts in DeBERTa, DeBERTa-v2/v3 and MPNet, whose attention bypasses transformers' AttentionInterface.

The reference below recomputes every layer by hand from the modules' own weights: the prompt joins the
content scores only, the relative-position terms (from the models' own helpers) are zero in the prompt
columns, the prompt columns are always visible and the prompt values join the weighted sum.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import HIDDEN, LAYERS, PAD, VOCAB, assert_padding_invariant, prompt_effect, random_batch
from transformers import DebertaConfig, DebertaModel, DebertaV2Config, DebertaV2Model, MPNetConfig, MPNetModel

from ptuning import PromptConfig, PromptedModel
from ptuning.architectures import first_text_position, max_text_length, shifted_position_ids
from ptuning.prompts import deberta, mpnet
from ptuning.prompts.attention import LayerPrompts, active_prompts

LENGTH = 5
# A larger initializer than the models' 0.02 so that the relative-position terms weigh in the scores.
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    pad_token_id=PAD,
    initializer_range=0.3,
)
VARIANTS = {
    "deberta": (DebertaModel, DebertaConfig(**COMMON, relative_attention=True, pos_att_type=["c2p", "p2c"])),
    "deberta-talking-head": (
        DebertaModel,
        DebertaConfig(**COMMON, relative_attention=True, pos_att_type=["p2c", "c2p"], talking_head=True),
    ),
    "deberta-v2-shared-key": (  # DeBERTa-v3 style: shared key, log buckets, no absolute positions
        DebertaV2Model,
        DebertaV2Config(
            **COMMON,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            share_att_key=True,
            position_buckets=8,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            type_vocab_size=0,
        ),
    ),
    "deberta-v2-own-keys": (  # DeBERTa-v2 xlarge style: separate position projections, convolution
        DebertaV2Model,
        DebertaV2Config(
            **COMMON,
            relative_attention=True,
            pos_att_type=["c2p", "p2c"],
            share_att_key=False,
            max_relative_positions=16,
            conv_kernel_size=3,
        ),
    ),
    "mpnet": (MPNetModel, MPNetConfig(**COMMON)),
}


def tiny(variant: str):
    model_class, config = VARIANTS[variant]
    torch.manual_seed(0)
    return model_class(copy.deepcopy(config)).eval()


def prompted(variant: str, task: str = "token-classification", **settings) -> PromptedModel:
    torch.manual_seed(0)
    prompt = PromptConfig(**{"length": LENGTH, "dropout": 0.0, **settings})
    return PromptedModel.from_backbone(tiny(variant), task, num_labels=3, prompt=prompt).eval()


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    return request.param


# the independent reference -----------------------------------------------------------------------


def prompted_softmax_sum(scores, prompt_scores, prompt_value, value, key_padding, mix_logits=None, mix_probs=None):
    """Prompt columns in front (no relative bias), always visible; softmax; weighted sum of the values."""
    scores = torch.cat([prompt_scores, scores], dim=-1)
    if mix_logits is not None:  # DeBERTa's talking heads mix the heads before and after the softmax
        scores = torch.einsum("gh,bhqk->bgqk", mix_logits, scores)
    visible = torch.cat([torch.ones(len(key_padding), prompt_value.shape[2], dtype=torch.bool), key_padding.bool()], 1)
    probs = scores.masked_fill(~visible[:, None, None, :], float("-inf")).softmax(dim=-1)
    if mix_probs is not None:
        probs = torch.einsum("gh,bhqk->bgqk", mix_probs, probs)
    context = probs @ torch.cat([prompt_value, value], dim=2)
    return context.transpose(1, 2).reshape(context.shape[0], context.shape[2], -1)


def deberta_attention(attention, hidden, key_padding, prompt, relative_pos, rel_embeddings, with_relative=True):
    batch, length, _ = hidden.shape
    heads = attention.num_attention_heads

    def split(states):
        return states.view(batch, length, heads, -1).transpose(1, 2)

    if hasattr(attention, "in_proj"):  # DeBERTa: q, k, v interleaved per head; separate q and v biases
        query, key, value = split(hidden @ attention.in_proj.weight.T).chunk(3, dim=-1)
        query = query + attention.q_bias.view(heads, 1, -1)
        value = value + attention.v_bias.view(heads, 1, -1)
    else:
        query, key, value = (split(p(hidden)) for p in (attention.query_proj, attention.key_proj, attention.value_proj))
    head_dim = query.shape[-1]
    scale_factor = 1 + len(attention.pos_att_type)
    scale = math.sqrt(head_dim * scale_factor)
    if hasattr(attention, "in_proj"):  # the models' own c2p/p2c helpers, for the text only
        relative = attention.disentangled_att_bias(query / scale, key, relative_pos, rel_embeddings, scale_factor)
    else:
        flat_query, flat_key = (t.reshape(batch * heads, length, head_dim) for t in (query, key))
        relative = attention.disentangled_attention_bias(
            flat_query, flat_key, relative_pos, rel_embeddings, scale_factor
        )
        relative = relative.view(batch, heads, length, length)
    prompt_key, prompt_value = prompt
    scores = query @ key.transpose(-1, -2) / scale + (relative if with_relative else 0)
    prompt_scores = query @ prompt_key.transpose(-1, -2) / scale
    mixing = [getattr(attention, name, None) for name in ("head_logits_proj", "head_weights_proj")]
    mixing = [m.weight if m is not None else None for m in mixing]
    return prompted_softmax_sum(scores, prompt_scores, prompt_value, value, key_padding, *mixing)


def deberta_reference(backbone, input_ids, attention_mask, pairs, relative=True):
    encoder = backbone.encoder
    embedded = backbone.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids), mask=attention_mask)
    relative_pos = encoder.get_rel_pos(embedded)
    rel_embeddings = encoder.get_rel_embedding()
    hidden = embedded
    for index, (layer, pair) in enumerate(zip(encoder.layer, pairs, strict=True)):
        context = deberta_attention(
            layer.attention.self, hidden, attention_mask, pair, relative_pos, rel_embeddings, relative
        )
        attended = layer.attention.output(context, hidden)
        output = layer.output(layer.intermediate(attended), attended)
        if index == 0 and getattr(encoder, "conv", None) is not None:
            output = encoder.conv(embedded, output, attention_mask)
        hidden = output
    return hidden


def mpnet_reference(backbone, input_ids, attention_mask, pairs, relative=True):
    hidden = backbone.embeddings(input_ids=input_ids)
    position_bias = backbone.encoder.compute_position_bias(hidden)  # the model's own relative bias, text only
    batch, length, _ = hidden.shape
    for layer, (prompt_key, prompt_value) in zip(backbone.encoder.layer, pairs, strict=True):
        attention = layer.attention.attn

        def split(states, heads=attention.num_attention_heads):
            return states.view(batch, length, heads, -1).transpose(1, 2)

        query, key, value = split(attention.q(hidden)), split(attention.k(hidden)), split(attention.v(hidden))
        scale = math.sqrt(query.shape[-1])
        scores = query @ key.transpose(-1, -2) / scale + (position_bias if relative else 0)
        prompt_scores = query @ prompt_key.transpose(-1, -2) / scale
        context = prompted_softmax_sum(scores, prompt_scores, prompt_value, value, attention_mask)
        attended = layer.attention.LayerNorm(attention.o(context) + hidden)
        hidden = layer.output(layer.intermediate(attended), attended)
    return hidden


def reference(backbone, input_ids, attention_mask, pairs, relative=True):
    """The last hidden state under the prompt ``pairs``; ``relative=False`` leaves out the relative terms."""
    build = mpnet_reference if backbone.config.model_type == "mpnet" else deberta_reference
    return build(backbone, input_ids, attention_mask, pairs, relative)


def no_prompt(backbone, batch_size):
    heads = backbone.config.num_attention_heads
    empty = torch.zeros(batch_size, heads, 0, backbone.config.hidden_size // heads)
    return [(empty, empty)] * backbone.config.num_hidden_layers


# tests -------------------------------------------------------------------------------------------


@pytest.mark.numerics
def test_matches_hand_written_reference(variant):
    model = prompted(variant)
    backbone = model.backbone
    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    real = attention_mask.bool()
    with torch.no_grad():
        # the reference itself is right: without a prefix it is the unmodified model
        plain = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        unprompted = reference(backbone, input_ids, attention_mask, no_prompt(backbone, len(input_ids)))
        assert (plain - unprompted)[real].abs().max().item() <= 1e-5
        ours = model.encode(input_ids, attention_mask)
        expected = reference(backbone, input_ids, attention_mask, model.prompt_key_values(len(input_ids)))
    difference = (ours - expected)[real].abs().max().item()
    print(f"{variant}: max |adapter - reference| = {difference:.2e}")
    assert difference <= 1e-5
    assert (ours - plain)[real].abs().max().item() > 1e-2


def test_relative_terms_weigh_in_the_reference(variant):
    """Guards the reference test's power: the relative terms are large enough for a mistake in them to show."""
    model = prompted(variant)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        ours = model.encode(input_ids, attention_mask)
        pairs = model.prompt_key_values(len(input_ids))
        without_relative = reference(model.backbone, input_ids, attention_mask, pairs, relative=False)
    assert (ours - without_relative)[attention_mask.bool()].abs().max().item() > 1e-2


def test_prompt_changes_output(variant):
    model = prompted(variant)
    assert prompt_effect(model) > 1e-2


@pytest.mark.numerics
def test_padding_does_not_change_real_tokens(variant):
    model = prompted(variant)
    assert_padding_invariant(model)


def test_gradients_reach_every_layer_prompt(variant):
    model = prompted(variant)
    input_ids, attention_mask = random_batch()
    hidden = model.encode(input_ids, attention_mask)
    projection = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(3))
    (hidden * projection)[attention_mask.bool()].sum().backward()
    heads = model.backbone.config.num_attention_heads
    grad = model.prompt_encoder.table.grad.view(LENGTH, LAYERS, 2, heads, -1)
    assert (grad.abs().sum(dim=(0, 3, 4)) > 0).all()  # every layer, key and value


@pytest.mark.numerics
def test_only_selected_layers_are_prompted(variant):
    """Call-order numbering (these modules have no layer_idx) gives each layer its own prompt."""
    model = prompted(variant, layers=[2])
    input_ids, attention_mask = random_batch()
    prompts = model.layer_prompts(len(input_ids))
    with torch.no_grad():
        plain = model.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        with active_prompts(prompts):
            ours = model.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    real = attention_mask.bool()
    for below in range(3):  # bitwise: a layer without a prompt runs the model's own attention forward
        assert torch.equal(plain.hidden_states[below][real], ours.hidden_states[below][real])
    assert (plain.hidden_states[3] - ours.hidden_states[3])[real].abs().max() > 1e-3
    assert prompts.consumed == {2} and prompts.calls == LAYERS


@pytest.mark.numerics
def test_without_prompt_the_model_is_unchanged(variant):
    untouched = tiny(variant)
    installed = tiny(variant)
    (deberta if variant.startswith("deberta") else mpnet).install(installed)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        expected = untouched(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
        plain = installed(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
        with active_prompts(LayerPrompts({})):
            empty = installed(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    for output in (plain, empty):  # bitwise: without a prompt the adapter calls the model's own attention forward
        assert torch.equal(output.last_hidden_state, expected.last_hidden_state)
        assert all(torch.equal(a, b) for a, b in zip(output.attentions, expected.attentions, strict=True))


@pytest.mark.numerics
def test_install_twice_does_not_double_wrap(variant):
    adapter = deberta if variant.startswith("deberta") else mpnet
    model = prompted(variant)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        once = model.encode(input_ids, attention_mask)
        adapter.install(model.backbone)
        prompts = model.layer_prompts(len(input_ids))
        with active_prompts(prompts):
            twice = model.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert torch.equal(once, twice)  # one process, one wrapper, the same kernels on the same shapes
    assert prompts.calls == LAYERS and prompts.consumed == set(range(LAYERS))
    wrapped = [m for m in model.backbone.modules() if getattr(m.forward, "__func__", None) is adapter._forward]
    assert len(wrapped) == LAYERS
    # a deep copy's attention runs on the copy's own weights
    clone = copy.deepcopy(model.backbone)
    copied = [m for m in clone.modules() if getattr(m.forward, "__func__", None) is adapter._forward]
    assert len(copied) == LAYERS and all(m.forward.__self__ is m for m in copied)


def test_sequence_classification_end_to_end(variant):
    torch.manual_seed(0)
    model = PromptedModel.from_backbone(
        tiny(variant), "sequence-classification", num_labels=2, prompt=PromptConfig(length=4, dropout=0.0)
    )
    model.train()
    input_ids, attention_mask = random_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = model.prompt_encoder.table.detach().clone()
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([0, 1, 0]))
    output.loss.backward()
    assert output.logits.shape == (3, 2) and torch.isfinite(output.loss)
    assert model.prompt_encoder.table.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    optimizer.step()
    assert not torch.equal(model.prompt_encoder.table, before)


def test_position_ids_of_the_text():
    input_ids, _ = random_batch(batch_size=2, length=4)  # row 1 ends in one pad
    mpnet_model = tiny("mpnet")
    assert first_text_position(mpnet_model) == PAD + 1
    assert max_text_length(mpnet_model, LENGTH) == 64 - (PAD + 1) - LENGTH
    shifted = shifted_position_ids(mpnet_model, input_ids, LENGTH)
    assert shifted.tolist() == [[p + LENGTH for p in (2, 3, 4, 5)], [2 + LENGTH, 3 + LENGTH, 4 + LENGTH, PAD]]
    unshifted = shifted_position_ids(mpnet_model, input_ids, 0)
    assert torch.equal(
        mpnet_model.embeddings(input_ids=input_ids), mpnet_model.embeddings(position_ids=unshifted, input_ids=input_ids)
    )
    deberta_model = tiny("deberta")
    assert first_text_position(deberta_model) == 0
    assert shifted_position_ids(deberta_model, input_ids, LENGTH).tolist() == [list(range(LENGTH, LENGTH + 4))] * 2


@pytest.mark.numerics
def test_shifted_positions_move_only_absolute_embeddings(variant):
    model = prompted(variant, shift_positions=True)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        shifted = model.encode(input_ids, attention_mask)
        unshifted = prompted(variant).encode(input_ids, attention_mask)
    absolute = getattr(model.backbone.embeddings, "position_embeddings", None) is not None
    moved = (shifted - unshifted)[attention_mask.bool()].abs().max().item()
    # without absolute position embeddings the position ids reach no computation: bitwise the same
    assert (moved > 1e-4) if absolute else (moved == 0)
