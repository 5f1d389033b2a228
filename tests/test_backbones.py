"""Backbone aliases: the packaged MiniLM, and the backbones ``make backbones`` fetches (all-mpnet-base-v2, the study's
second scale, and SmolLM2-135M-Instruct, a decoder). The tests do not need them: their real-model checks run only
where they were fetched; the fetch script's bookkeeping and ``ptuning backbones`` run on fake folders."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from ptuning import PromptConfig, PromptedModel, PtuningError
from ptuning.aliases import ALIASES, MPNET_FOLDER, SMOLLM2_FOLDER, backbones_home
from ptuning.backbones import load_backbone, load_tokenizer, resolve
from ptuning.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_backbones.py"


@pytest.fixture(scope="module")
def fetch_script():
    spec = importlib.util.spec_from_file_location("fetch_backbones", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass reads its own module's names
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PTUNING_BACKBONES", str(tmp_path))
    return tmp_path


def fake_fetched(folder: Path, checksums: dict[str, str] | None = None) -> Path:
    """A folder that looks fetched: weights of 1000 bytes and, with ``checksums``, the fetch's marker."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    if checksums is not None:
        (folder / "fetched.json").write_text(json.dumps({"sha256": checksums}))
    return folder


@pytest.mark.parametrize(("alias", "folder"), [("mpnet-base", MPNET_FOLDER), ("smollm2-135m", SMOLLM2_FOLDER)])
def test_a_fetched_alias_says_how_to_fetch_it_when_missing(home, alias, folder):
    with pytest.raises(PtuningError, match=f"alias '{alias}' needs {folder} in {home / folder}: run make backbones"):
        resolve(alias)


def test_a_fetched_alias_names_its_folder_once_there(home):
    fake_fetched(home / SMOLLM2_FOLDER)
    assert resolve("smollm2-135m") == str(home / SMOLLM2_FOLDER)


def test_backbones_lists_every_alias_with_its_state_folder_and_size(home, capsys):
    fake_fetched(home / SMOLLM2_FOLDER)
    assert main(["backbones", "--json"]) == 0
    rows = {row["alias"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == list(ALIASES)
    assert rows["smollm2-135m"] == {
        "alias": "smollm2-135m",
        "about": ALIASES["smollm2-135m"].about,
        "origin": "fetched",
        "install": "make backbones",
        "installed": True,
        "folder": str(home / SMOLLM2_FOLDER),
        "bytes": 1000,
    }
    assert rows["mpnet-base"]["installed"] is False and rows["mpnet-base"]["bytes"] is None
    assert rows["mpnet-base"]["folder"] == str(home / MPNET_FOLDER)
    assert rows["minilm-l6"]["origin"] == "packaged" and rows["minilm-l6"]["installed"] is True

    assert main(["backbones"]) == 0
    text = capsys.readouterr().out
    assert f"0 MB in {home / SMOLLM2_FOLDER}" in text
    assert f"not installed: make backbones (into {home / MPNET_FOLDER})" in text
    assert all(alias in text for alias in ALIASES)


def test_a_fetch_is_recognised_by_its_marker(tmp_path, fetch_script):
    checksums = fetch_script.FETCHABLE["smollm2-135m"].checksums
    assert fetch_script.made_from(fake_fetched(tmp_path / "same", checksums), checksums)
    assert not fetch_script.made_from(fake_fetched(tmp_path / "other", {"x.gguf": "0" * 64}), checksums)
    assert not fetch_script.made_from(fake_fetched(tmp_path / "unmarked"), checksums)  # converted: nothing to hash
    assert not fetch_script.made_from(tmp_path / "absent", checksums)


def test_a_folder_fetched_before_markers_is_recognised_by_its_published_weights(tmp_path, fetch_script):
    weights = b"\0" * 1000
    checksums = {"model.safetensors": fetch_script.hashlib.sha256(weights).hexdigest()}
    folder = fake_fetched(tmp_path / "old")
    assert fetch_script.made_from(folder, checksums)
    assert json.loads((folder / "fetched.json").read_text()) == {"sha256": checksums}  # known from now on
    (folder / "fetched.json").unlink()
    (folder / "model.safetensors").write_bytes(b"\1" * 1000)
    assert not fetch_script.made_from(folder, checksums)


def test_a_fetched_backbone_is_not_fetched_again(home, fetch_script, monkeypatch, capsys):
    fake_fetched(home / SMOLLM2_FOLDER, fetch_script.FETCHABLE["smollm2-135m"].checksums)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded a backbone that is there")

    monkeypatch.setattr(fetch_script.subprocess, "run", no_download)
    fetch_script.main(["smollm2-135m"])
    assert "already there" in capsys.readouterr().out


def test_the_fetch_script_refuses_an_unknown_name(fetch_script, capsys):
    with pytest.raises(SystemExit) as stop:
        fetch_script.main(["gpt-5"])
    assert stop.value.code == 2 and "no backbone named gpt-5" in capsys.readouterr().err


@pytest.mark.skipif(
    not (backbones_home() / MPNET_FOLDER / "model.safetensors").is_file(), reason="make backbones has not run here"
)
def test_mpnet_base_takes_a_deep_prompt_in_every_layer():
    torch.manual_seed(0)
    model = PromptedModel.from_backbone("mpnet-base", "token-classification", num_labels=3,
                                        prompt=PromptConfig(length=4, dropout=0.0)).eval()  # fmt: skip
    assert model.backbone.config.num_hidden_layers == 12 and model.total_parameters() > 100_000_000
    batch = model.tokenizer(["Peter visited Oslo"], return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
        model.prompts["default"].table.mul_(3.0)
        after = model(**batch).logits
    assert (before - after).abs().max().item() > 1e-4  # the prompt reaches the output


smollm2_fetched = pytest.mark.skipif(
    not (backbones_home() / SMOLLM2_FOLDER / "model.safetensors").is_file(),
    reason="SmolLM2 is not fetched here (make backbones BACKBONES=smollm2-135m); CI does not fetch it",
)


@smollm2_fetched
def test_smollm2_is_the_135m_llama_with_its_chat_tokenizer():
    from transformers import AutoTokenizer

    model = load_backbone("smollm2-135m", lm_head=True)
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert not model.untrained_keys and not hasattr(config, "quantization_config")
    assert sum(weight.numel() for weight in model.parameters()) == 134_515_008
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    # a leading space is part of a word's token: " positive" is one token, "positive" another
    assert tokenizer(" positive", add_special_tokens=False)["input_ids"] == [2731]
    assert tokenizer(" positive", add_special_tokens=False)["input_ids"] != tokenizer("positive")["input_ids"]
    assert tokenizer.decode([2731]) == " positive"


@smollm2_fetched
def test_smollm2_answers_a_chat(fetch_script):
    answer = fetch_script.greedy_chat_answer(Path(resolve("smollm2-135m")), fetch_script.CAPITAL_QUESTION, 12)
    assert "Paris" in answer


@smollm2_fetched
@pytest.mark.numerics
def test_a_deep_prompt_of_a_real_prefix_gives_smollm2_the_logits_of_that_prefix_as_text():
    """The route on the real 30-layer grouped-query Llama: a deep prompt holding the model's own keys and values of a
    prefix (positions shifted past it) equals running the prefix as text."""
    tokenizer = load_tokenizer("smollm2-135m")
    prefix = tokenizer("Review: a warm and funny film.", return_tensors="pt")["input_ids"]
    text = tokenizer(" Sentiment (positive or negative): positive", return_tensors="pt")["input_ids"]
    length = prefix.shape[1]
    prompt = PromptConfig(length=length, dropout=0.0, shift_positions=True)
    model = PromptedModel.from_backbone("smollm2-135m", "causal-lm", prompt=prompt).eval()
    with torch.no_grad():
        whole = model.backbone(input_ids=torch.cat([prefix, text], 1)).logits[:, length:]  # (1, T, vocab)
        cache = model.backbone(input_ids=prefix, use_cache=True).past_key_values
        keys = torch.stack([layer.keys[0] for layer in cache.layers])  # (layers, kv_heads, P, head_dim)
        values = torch.stack([layer.values[0] for layer in cache.layers])  # (layers, kv_heads, P, head_dim)
        # the table's columns: layer, then key/value, then head, then head dim
        table = torch.stack([keys, values], 1).permute(3, 0, 1, 2, 4).reshape(length, -1)  # (P, layers * 2 * kvh * hd)
        model.prompts["default"].table.copy_(table)
        prompted = model(input_ids=text).logits  # (1, T, vocab)
    # logits of magnitude ~30 through 30 layers, attention summed in another order: within 1e-3 absolute, 1e-4
    # relative (measured: 5.5e-5 at most)
    torch.testing.assert_close(prompted, whole, rtol=1e-4, atol=1e-3)
    assert torch.equal(prompted.argmax(-1), whole.argmax(-1))
