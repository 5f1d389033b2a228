"""Tiny randomly initialized backbones of every supported architecture, and shared helpers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralModel,
    ModernBertConfig,
    ModernBertModel,
    Qwen2Config,
    Qwen2Model,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

VOCAB = 120
PAD = 1
HIDDEN, LAYERS, HEADS = 32, 3, 4
BERT_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=48,
    max_position_embeddings=64,
    pad_token_id=PAD,
)
LLAMA_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
    pad_token_id=PAD,
)
ARCHITECTURES = {
    "bert": (BertConfig, BertModel, BERT_LIKE),
    "roberta": (RobertaConfig, RobertaModel, BERT_LIKE),
    "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel, BERT_LIKE),
    "electra": (ElectraConfig, ElectraModel, {**BERT_LIKE, "embedding_size": 24}),
    "distilbert": (
        DistilBertConfig,
        DistilBertModel,
        dict(
            vocab_size=VOCAB,
            dim=HIDDEN,
            n_layers=LAYERS,
            n_heads=HEADS,
            hidden_dim=48,
            max_position_embeddings=64,
            pad_token_id=PAD,
        ),
    ),
    "albert": (AlbertConfig, AlbertModel, {**BERT_LIKE, "embedding_size": 16}),
    "modernbert": (
        ModernBertConfig,
        ModernBertModel,
        {
            **BERT_LIKE,
            "global_attn_every_n_layers": 2,
            "local_attention": 4,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "cls_token_id": 2,
            "sep_token_id": 3,
        },
    ),
    "gpt2": (
        GPT2Config,
        GPT2Model,
        dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64, pad_token_id=PAD),
    ),
    "llama": (LlamaConfig, LlamaModel, LLAMA_LIKE),
    "mistral": (MistralConfig, MistralModel, LLAMA_LIKE),
    "qwen2": (Qwen2Config, Qwen2Model, LLAMA_LIKE),
}
DECODERS = ("gpt2", "llama", "mistral", "qwen2")

# What the README promises across CPUs, batch shapes and forward budgets: decisions (labels, tags, spans) exactly,
# probabilities and logits to 1e-5, absolute or relative (the larger), since kernels sum in another order there.
TOLERANCE = 1e-5


def assert_close(actual: Any, expected: Any, message: str | None = None) -> None:
    """Tensors, arrays or numbers equal to ``TOLERANCE``, absolute or relative to ``expected``."""
    torch.testing.assert_close(actual, expected, rtol=TOLERANCE, atol=TOLERANCE, msg=message)


def assert_same_answer(got: Any, expected: Any, where: str = "answer") -> None:
    """Prediction records alike: every float to ``TOLERANCE`` (absolute or relative), everything else (labels, tags,
    words, offsets, keys) exactly, through nested dicts and lists."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            assert_same_answer(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for index, (item, wanted) in enumerate(zip(got, expected, strict=True)):
            assert_same_answer(item, wanted, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=TOLERANCE, abs_tol=TOLERANCE), f"{where}: {got} != {expected}"
    else:
        assert got == expected, where


def tiny_backbone(model_type: str = "bert", attn_implementation: str = "sdpa", **overrides):
    config_class, model_class, settings = ARCHITECTURES[model_type]
    torch.manual_seed(0)
    config = config_class(**{**settings, **overrides}, attn_implementation=attn_implementation)
    return model_class(config).eval()


def random_batch(batch_size: int = 3, length: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with ragged padding (row i loses i tokens at the end)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch_size):
        if row:
            input_ids[row, length - row :] = PAD
            attention_mask[row, length - row :] = 0
    return input_ids, attention_mask


# transformers' own DynamicCache route honours past_key_values for these; the others ignore or reject it.
CACHE_ROUTE = ("bert", "roberta", "xlm-roberta", "electra", "gpt2", "llama", "mistral", "qwen2")


def _pairs(architectures) -> list:
    return [pytest.param((arch, impl), id=f"{arch}-{impl}") for arch in architectures for impl in ("sdpa", "eager")]


def prompt_effect(model) -> float:
    """Largest change the prompt makes to any real token's final state."""
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        with_prompt = model.encode(input_ids, attention_mask)
        without = model.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return (with_prompt - without)[attention_mask.bool()].abs().max().item()


def assert_padding_invariant(model) -> None:
    """Each padded row of a batch encodes exactly like the same example alone, unpadded."""
    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    with torch.no_grad():
        batched = model.encode(input_ids, attention_mask)
        for row in range(3):
            real = int(attention_mask[row].sum())
            alone = model.encode(input_ids[row : row + 1, :real], attention_mask[row : row + 1, :real])
            assert (batched[row, :real] - alone[0]).abs().max().item() <= TOLERANCE


@pytest.fixture(params=_pairs(ARCHITECTURES))
def arch_impl(request) -> tuple[str, str]:
    return request.param


@pytest.fixture(params=_pairs(CACHE_ROUTE))
def cache_arch_impl(request) -> tuple[str, str]:
    return request.param


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from ptuning.backbones import load_tokenizer

    return load_tokenizer("minilm-l6")


@pytest.fixture(scope="session")
def tiny_backbone_folder(tmp_path_factory, minilm_tokenizer):
    """A tiny random BERT saved with the packaged MiniLM's tokenizer: a named backbone that trains in milliseconds."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_backbone("bert", vocab_size=minilm_tokenizer.vocab_size).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_backbone_folder):
    """Two runs of ``ptuning train`` on one tiny backbone: NER (prompt length 2, every layer) and sentiment (length 5,
    layers 1-2), in ``ner/`` and ``sent/`` of the returned folder."""
    from ptuning.cli import main

    folder = tmp_path_factory.mktemp("runs")
    (folder / "ner.conll").write_text(
        "Peter B-PER\nBlackburn I-PER\nruns O\n\nOslo B-LOC\ncalls O\n\nMary B-PER\nsings O\n"
    )
    (folder / "sent.csv").write_text("text,label\ngood film,pos\nbad film,neg\nfine acting,pos\ndull plot,neg\n")
    common = ["--model", str(tiny_backbone_folder), "--max-steps", "3", "--batch-size", "2", "--lr", "0.1"]
    ner = ["train", "--train", str(folder / "ner.conll"), "--prompt-length", "2", "--output", str(folder / "ner")]
    sent = ["train", "--train", str(folder / "sent.csv"), "--prompt-length", "5", "--prompt-layers", "1,2"]
    assert main([*ner, *common]) == 0
    assert main([*sent, "--output", str(folder / "sent"), *common]) == 0
    return folder


DECODER_TEXT = [
    "Peter Blackburn runs in Oslo",
    "Mary sings in Oslo today",
    "a good film with fine acting",
    "a bad film and a dull plot",
    "the plot never drags",
]
END_OF_TEXT = "<|endoftext|>"


def tiny_bpe_tokenizer(tokenizer_class):
    """A byte-level BPE tokenizer trained on a few sentences, with end-of-text as its bos, eos and unk and no pad
    token, as SmolLM2's and GPT-2's are."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend.train_from_iterator(
        DECODER_TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=[END_OF_TEXT], initial_alphabet=alphabet)
    )
    special = dict(bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT)
    return tokenizer_class(tokenizer_object=backend, **special)


def tiny_decoder(model_type: str, vocab_size: int, end_of_text: int):
    """A tiny random decoder: ``llama`` has SmolLM2's shape in miniature (4 heads sharing 2 key/value heads, tied
    embeddings), ``gpt2`` GPT-2's."""
    torch.manual_seed(0)
    special = dict(vocab_size=vocab_size, bos_token_id=end_of_text, eos_token_id=end_of_text)
    if model_type == "gpt2":
        return GPT2Model(GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_positions=128, **special))
    config = LlamaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        **special,
    )
    return LlamaModel(config)


@pytest.fixture(scope="session")
def tiny_decoder_folders(tmp_path_factory) -> dict:
    """Tiny random decoders saved as named backbones, each with a byte-level BPE tokenizer that has no pad token:
    ``llama`` with a generic fast tokenizer, ``gpt2`` with GPT-2's own tokenizer class (which SmolLM2's names too)."""
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

    folders = {}
    for model_type, tokenizer_class in (("llama", PreTrainedTokenizerFast), ("gpt2", GPT2TokenizerFast)):
        tokenizer = tiny_bpe_tokenizer(tokenizer_class)
        folders[model_type] = tmp_path_factory.mktemp(f"tiny-{model_type}")
        end_of_text = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
        tiny_decoder(model_type, len(tokenizer), end_of_text).save_pretrained(folders[model_type])
        tokenizer.save_pretrained(folders[model_type])
    return folders
