"""Prompts that start from real tokens (``prompt_init`` vocab or text): a deep prompt holds the keys and values the
frozen backbone computes for those tokens in every layer (Li and Liang's initialization), a shallow one their
embeddings."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, assert_close, tiny_backbone
from test_relative_attention import VARIANTS

from ptuning import PromptConfig, PromptedModel
from ptuning.backbones import load_tokenizer
from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.prompts.methods import PROMPT_METHODS, start_token_ids

INIT_TEXT = "a good film with fine acting"


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_a_deep_prompt_started_from_a_text_is_that_text_run_before_the_input(tiny_decoder_folders, model_type):
    """On a left-to-right model the start is exact: with positions shifted past the prompt, the prompted input's
    states equal those of the init text and the input run as one text."""
    folder = str(tiny_decoder_folders[model_type])
    tokenizer = load_tokenizer(folder)
    prefix = torch.tensor([tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"]])  # (1, P)
    length = prefix.shape[1]
    prompt = PromptConfig(init="text", init_text=INIT_TEXT, length=length, shift_positions=True, dropout=0.0)
    model = PromptedModel.from_backbone(folder, "sequence-classification", num_labels=2, prompt=prompt).eval()
    text = torch.tensor([tokenizer("the plot never drags", add_special_tokens=False)["input_ids"]])  # (1, T)
    with torch.no_grad():
        prompted = model.encode(text, torch.ones_like(text))  # (1, T, hidden)
        whole = model.transformer(input_ids=torch.cat([prefix, text], 1)).last_hidden_state  # (1, P + T, hidden)
    assert_close(prompted, whole[:, length:])


def _key_value_projections(model_type: str, backbone: torch.nn.Module) -> list:
    """Each layer's own (key, value) projections, as its modeling file names them."""
    if model_type == "bert":
        return [(layer.attention.self.key, layer.attention.self.value) for layer in backbone.encoder.layer]
    if model_type == "mpnet":
        return [(layer.attention.attn.k, layer.attention.attn.v) for layer in backbone.encoder.layer]
    return [(layer.attention.self.key_proj, layer.attention.self.value_proj) for layer in backbone.encoder.layer]


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", ["bert", "mpnet", "deberta-v2"])
def test_a_deep_prompt_started_from_tokens_holds_each_layers_own_keys_and_values(model_type):
    """Through each route (the attention interface, the MPNet and DeBERTa adapters): the table's columns of layer i
    are that layer's key and value projections of its input states for the tokens, computed here from the model's
    own modules."""
    if model_type == "bert":
        backbone = tiny_backbone("bert")
    else:
        model_class, config = VARIANTS["mpnet" if model_type == "mpnet" else "deberta-v2-shared-key"]
        torch.manual_seed(0)
        backbone = model_class(config).eval()
    token_ids = torch.tensor([5, 17, 33, 8, 90, 17])  # (P,)
    config = PromptConfig(length=len(token_ids), dropout=0.0)
    model = PromptedModel(backbone, "sequence-classification", ["a", "b"], prompt=config).train()
    PROMPT_METHODS["deep"].start(model.prompts["default"], config, model.transformer, token_ids)
    assert model.transformer.training, "the start leaves the backbone's mode as it was"
    model.eval()  # the reference without dropout, as the start ran
    with torch.no_grad():
        states = model.transformer(input_ids=token_ids[None], output_hidden_states=True).hidden_states
        # layer i: key then value, each (P, kv_heads * head_dim)
        expected = [
            projection(states[i])[0]
            for i, pair in enumerate(_key_value_projections(model_type, model.transformer))
            for projection in pair
        ]
    assert_close(model.prompts["default"].table.detach(), torch.cat(expected, 1))


def test_a_shallow_prompt_started_from_a_text_holds_its_tokens_embeddings(minilm_tokenizer):
    backbone = tiny_backbone("bert", vocab_size=minilm_tokenizer.vocab_size)
    prompt = PromptConfig(method="shallow", init="text", init_text="good film", length=5)
    model = PromptedModel(backbone, "sequence-classification", ["a", "b"], prompt=prompt, tokenizer=minilm_tokenizer)
    ids = minilm_tokenizer("good film", add_special_tokens=False)["input_ids"]
    embeddings = backbone.get_input_embeddings().weight.detach()
    assert torch.equal(model.prompts["default"].table.detach(), embeddings[[*ids, *ids, ids[0]]])


def test_the_init_text_is_repeated_to_the_prompt_length_and_cut_there(minilm_tokenizer):
    ids = minilm_tokenizer("good film", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    config = PromptConfig(init="text", init_text="good film", length=5)
    assert start_token_ids(config, VOCAB, minilm_tokenizer).tolist() == [*ids, *ids, ids[0]]
    assert (
        start_token_ids(PromptConfig(init="text", init_text="good film", length=1), VOCAB, minilm_tokenizer).tolist()
        == ids[:1]
    )
    drawn = start_token_ids(PromptConfig(init="vocab", length=50), VOCAB, None)
    assert drawn.shape == (50,) and drawn.min() >= 0 and drawn.max() < VOCAB
    with pytest.raises(PtuningError, match="tokenizer"):
        start_token_ids(config, VOCAB, None)
    with pytest.raises(PtuningError, match="no tokens"):
        start_token_ids(PromptConfig(init="text", init_text=" ", length=3), VOCAB, minilm_tokenizer)


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(init="text"), "prompt_init text and prompt_init_text go together"),
        (dict(init_text="good film"), "prompt_init text and prompt_init_text go together"),
        (dict(method="ptuning-v1", init="vocab"), "starts a flat deep or shallow prompt, not 'ptuning-v1'"),
        (dict(reparam="mlp", init="vocab"), "not 'deep' with reparam 'mlp'"),
        (dict(method="finetune", init="vocab"), "not 'finetune'"),
    ],
)
def test_a_start_that_does_not_apply_is_refused(settings, message):
    with pytest.raises(PtuningError, match=message):
        PromptConfig(**settings)


def test_a_run_started_from_a_text_saves_and_reloads_its_trained_prompt(tmp_path, tiny_decoder_folders):
    """Through the command line on a decoder: the run trains from the started prompt, and its checkpoint loads
    as saved (the start is not run again on load)."""
    data = tmp_path / "sent.csv"
    data.write_text("text,label\na good film,pos\na bad film,neg\nfine acting,pos\na dull plot,neg\n")
    output = tmp_path / "run"
    flags = ["--prompt-init", "text", "--prompt-init-text", INIT_TEXT, "--shift-positions"]
    common = ["--max-steps", "2", "--batch-size", "2", "--lr", "0.1", "--prompt-length", "4"]
    model = str(tiny_decoder_folders["llama"])
    assert main(["train", "--model", model, "--train", str(data), "--output", str(output), *flags, *common]) == 0
    loaded = PromptedModel.from_pretrained(output)
    assert loaded.prompt_config.init == "text" and loaded.prompt_config.init_text == INIT_TEXT
    started = PromptedModel.from_backbone(
        model, "sequence-classification", labels=["neg", "pos"], prompt=loaded.prompt_config
    )
    assert not torch.equal(loaded.prompts["default"].table, started.prompts["default"].table), "it trained"
