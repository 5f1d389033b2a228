"""Every method through the same model, heads and checkpoints: what trains, how much, and the round trip."""

from __future__ import annotations

import pytest
import torch
from conftest import HIDDEN, LAYERS, random_batch, tiny_backbone

from ptuning import PromptConfig, PromptedModel
from ptuning.config import METHODS
from ptuning.errors import PtuningError
from ptuning.prompts.methods import PROMPT_METHODS

LENGTH, LABELS = 4, 3
HEAD = HIDDEN * LABELS + LABELS


def build(method: str, arch: str = "bert", **settings) -> PromptedModel:
    torch.manual_seed(0)
    prompt = PromptConfig(method=method, length=LENGTH, dropout=0.0, **settings)
    return PromptedModel.from_backbone(tiny_backbone(arch), "sequence-classification", num_labels=LABELS, prompt=prompt)


def lstm_parameters(embedding: int, hidden: int) -> int:
    """Bidirectional 2-layer LSTM with hidden//2 units per direction."""
    units = hidden // 2
    first = 2 * 4 * units * (embedding + units + 2)
    second = 2 * 4 * units * (2 * units + units + 2)
    return first + second


# method -> (settings, documented trainable count for the tiny BERT: hidden 32, 3 layers, embedding 32)
FORMULAS = {
    "deep": ({}, LENGTH * LAYERS * 2 * HIDDEN + HEAD),
    "deep-mlp": (
        {"reparam": "mlp", "reparam_hidden": 16},
        LENGTH * HIDDEN + (HIDDEN * 16 + 16) + (16 * LAYERS * 2 * HIDDEN + LAYERS * 2 * HIDDEN) + HEAD,
    ),
    "shallow": ({}, LENGTH * HIDDEN + HEAD),
    "ptuning-v1": (
        {"reparam_hidden": 16},
        LENGTH * HIDDEN + lstm_parameters(HIDDEN, 16) + (16 * 16 + 16) + (16 * HIDDEN + HIDDEN) + HEAD,
    ),
    "ptuning-v1-mlp": (
        {"reparam": "mlp", "reparam_hidden": 16},
        LENGTH * HIDDEN + (HIDDEN * 16 + 16) + (16 * HIDDEN + HIDDEN) + HEAD,
    ),
    "linear-probe": ({}, HEAD),
}


@pytest.mark.parametrize("variant", list(FORMULAS) + ["finetune"])
def test_each_method_trains_and_counts_as_documented(variant):
    method = variant.removesuffix("-mlp")
    settings, expected = FORMULAS.get(variant, ({}, None))
    model = build(method, **settings)
    backbone_total = sum(p.numel() for p in model.backbone.parameters())
    if method == "finetune":
        expected = backbone_total + HEAD
    assert model.trainable_parameters() == expected
    frozen = {n: t.clone() for n, t in model.backbone.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    input_ids, attention_mask = random_batch()
    labels = torch.tensor([0, 1, 2])
    model.train()
    losses = []
    for _ in range(8):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    backbone_changed = any(not torch.equal(t, frozen[n]) for n, t in model.backbone.state_dict().items())
    assert backbone_changed == (method == "finetune")


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["shallow", "ptuning-v1"])
def test_input_prompts_change_text_states_and_respect_padding(method):
    model = build(method).eval()
    input_ids, attention_mask = random_batch()
    real = attention_mask.bool()
    with torch.no_grad():
        prompted_states = model.encode(input_ids, attention_mask)
        plain = model.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        alone = model.encode(input_ids[2:3, :7], attention_mask[2:3, :7])
    assert prompted_states.shape == plain.shape  # prompt positions are stripped
    assert (prompted_states - plain)[real].abs().max() > 1e-3
    assert (prompted_states[2, :7] - alone[0]).abs().max() <= 1e-5
    # The reference computation: the prompt embeddings in front of the text's, positions 0.. for the prompt.
    with torch.no_grad():
        text = model.backbone.get_input_embeddings()(input_ids)
        prompt = model.prompt_encoder.folded_table().unsqueeze(0).expand(3, -1, -1)
        mask = torch.cat([torch.ones(3, LENGTH, dtype=torch.long), attention_mask], 1)
        reference = model.backbone(inputs_embeds=torch.cat([prompt, text], 1), attention_mask=mask).last_hidden_state
    assert (prompted_states - reference[:, LENGTH:])[real].abs().max() <= 1e-6
    assert model.max_text_length == 64 - LENGTH


def test_shallow_vocab_initialization_copies_vocabulary_embeddings():
    model = build("shallow", init="vocab")
    table = model.prompt_encoder.table.detach()
    vocabulary = model.backbone.get_input_embeddings().weight.detach()
    assert all(((vocabulary - row).abs().sum(1) == 0).any() for row in table)


@pytest.mark.numerics
@pytest.mark.parametrize("method,settings", [("ptuning-v1", {}), ("deep", {"reparam": "mlp"}), ("finetune", {})])
def test_checkpoints_of_every_method_round_trip(tmp_path, method, settings):
    model = build(method, **settings).eval()
    with torch.no_grad():
        model.head.classifier.bias.add_(0.5)
        if method == "finetune":
            model.backbone.encoder.layer[0].attention.self.query.weight.mul_(1.1)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path)
    backbone = None if method == "finetune" else tiny_backbone("bert")
    restored = PromptedModel.from_pretrained(tmp_path, backbone=backbone).eval()
    with torch.no_grad():
        after = restored(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (before - after).abs().max() <= 1e-5
    assert (tmp_path / "backbone").is_dir() == (method == "finetune")


@pytest.mark.parametrize("method", ["deep", "finetune"])
def test_backbone_dropout_off_keeps_the_backbone_deterministic_in_training(method):
    input_ids, attention_mask = random_batch()
    for backbone_dropout in (True, False):
        model = build(method, backbone_dropout=backbone_dropout).train()
        assert model.head.training and model.backbone.training == backbone_dropout
        torch.manual_seed(1)
        first = model.encode(input_ids, attention_mask)
        second = model.encode(input_ids, attention_mask)
        # the tiny BERT has hidden dropout 0.1; without it two forwards run the same kernels on the same shapes
        assert torch.equal(first, second) != backbone_dropout
        if not backbone_dropout:  # and it is the eval-mode computation, with gradients still flowing
            first.sum().backward()
            below_head = [
                p
                for name, p in model.named_parameters()
                if p.requires_grad and not name.startswith("heads.") and "pooler" not in name
            ]
            assert below_head and all(p.grad is not None for p in below_head)
            with torch.no_grad():
                assert torch.allclose(first, model.eval().encode(input_ids, attention_mask))


def test_method_settings_are_validated():
    with pytest.raises(PtuningError, match="reparam 'lstm' does not apply to method 'deep'"):
        PromptConfig(method="deep", reparam="lstm")
    with pytest.raises(PtuningError, match=r"method \(--method\) is 'prefix'; expected one of: deep, shallow"):
        PromptConfig(method="prefix")
    assert PromptConfig(method="ptuning-v1").reparam == "lstm"


def test_lower_layers_keep_no_graph_when_only_top_layers_are_prompted():
    model = build("deep", layers=[2])
    input_ids, attention_mask = random_batch()
    states = {}
    hooks = [
        layer.register_forward_hook(lambda module, args, output, i=i: states.__setitem__(i, output))
        for i, layer in enumerate(model.backbone.encoder.layer)
    ]
    model.train()
    model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([0, 1, 2])).loss.backward()
    for hook in hooks:
        hook.remove()

    def requires_grad(output) -> bool:
        return (output[0] if isinstance(output, tuple) else output).requires_grad

    assert not requires_grad(states[0]) and not requires_grad(states[1])  # nothing below layer 2 is recorded
    assert requires_grad(states[2])


def test_span_head_scores_start_and_end_of_every_token():
    torch.manual_seed(0)
    model = PromptedModel.from_backbone(tiny_backbone("bert"), "question-answering", prompt=PromptConfig(length=4))
    input_ids, attention_mask = random_batch()
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([[2, 3], [0, 0], [1, 4]]))
    assert output.logits.shape == (3, 9, 2)
    expected = (
        torch.nn.functional.cross_entropy(output.logits[..., 0], torch.tensor([2, 0, 1]))
        + torch.nn.functional.cross_entropy(output.logits[..., 1], torch.tensor([3, 0, 4]))
    ) / 2
    assert torch.allclose(output.loss, expected)
    assert model.trainable_parameters() == LENGTH * LAYERS * 2 * HIDDEN + HIDDEN * 2 + 2


@pytest.mark.numerics
def test_multiple_choice_scores_each_pair_like_a_single_text():
    torch.manual_seed(0)
    model = PromptedModel.from_backbone(
        tiny_backbone("roberta"), "multiple-choice", prompt=PromptConfig(length=4, dropout=0.0)
    ).eval()
    input_ids, attention_mask = random_batch(batch_size=4, length=9)
    choices_ids, choices_mask = input_ids.view(2, 2, 9), attention_mask.view(2, 2, 9)
    with torch.no_grad():
        output = model(input_ids=choices_ids, attention_mask=choices_mask, labels=torch.tensor([1, 0]))
        single = model.head(model.encode(input_ids[3:4, :6], attention_mask[3:4, :6])[:, 0])
    assert output.logits.shape == (2, 2)
    assert torch.allclose(output.logits[1, 1], single[0, 0], atol=1e-5)
    assert torch.allclose(output.loss, torch.nn.functional.cross_entropy(output.logits, torch.tensor([1, 0])))


@pytest.mark.parametrize(
    "method,settings,expected",
    [
        ("deep", {"reparam": "mlp", "reparam_hidden": 16}, LENGTH * LAYERS * 2 * HIDDEN + HEAD),
        ("ptuning-v1", {"reparam_hidden": 16}, LENGTH * HIDDEN + HEAD),
        ("linear-probe", {}, HEAD),
    ],
)
def test_stored_parameters_are_the_folded_table_and_head(method, settings, expected):
    model = build(method, **settings)
    assert model.stored_parameters() == expected
    assert model.stored_parameters() <= model.trainable_parameters()  # the reparameterization is folded away
    frozen = model.total_parameters() - model.trainable_parameters()
    assert model.stored_share() == pytest.approx(expected / (frozen + expected))
    finetuned = build("finetune")
    assert finetuned.stored_parameters() == finetuned.total_parameters() and finetuned.stored_share() == 1.0


def test_every_method_is_an_object_the_model_asks():
    assert set(PROMPT_METHODS) == set(METHODS)
    assert [name for name, method in PROMPT_METHODS.items() if method.trains_backbone] == ["finetune"]
    assert [name for name, method in PROMPT_METHODS.items() if method.per_layer] == ["deep"]
    assert {name for name, method in PROMPT_METHODS.items() if method.input_level} == {"shallow", "ptuning-v1"}
    shifted = PromptConfig(length=5, shift_positions=True)
    assert PROMPT_METHODS["deep"].positions(shifted) == 5 and PROMPT_METHODS["deep"].positions(PromptConfig()) == 0
    assert PROMPT_METHODS["shallow"].positions(PromptConfig(method="shallow", length=7)) == 7


def test_a_training_state_restores_onto_its_own_model_only():
    """A resume restores the trainable tensors by parameter name (for finetune, the backbone's too, under
    ``backbone.``); a state of another model is refused rather than half applied."""
    model = build("finetune")
    state = model.trainable_state()
    assert any(name.startswith("backbone.") for name in state) and "heads.default.classifier.bias" in state
    with torch.no_grad():
        model.backbone.embeddings.word_embeddings.weight.add_(1.0)
    model.restore_trainable_state(state)
    assert torch.equal(
        model.backbone.embeddings.word_embeddings.weight, state["backbone.embeddings.word_embeddings.weight"]
    )
    renamed = {name.replace("backbone.", "transformer.", 1): tensor for name, tensor in state.items()}
    with pytest.raises(PtuningError, match="a saved training state of another model: unknown .'transformer"):
        model.restore_trainable_state(renamed)
