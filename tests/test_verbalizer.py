"""Discrete prompting and verbalizer heads: the scores are the language model's own next-token (or mask)
log-probabilities, computed here independently; prompting runs end to end through the command line; verbalizer
heads train under deep prompts and fine-tuning, mix with linear heads, and bad inputs are refused by name."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_close
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PreTrainedTokenizerFast,
)

from ptuning import PromptConfig, PromptedModel
from ptuning.checkpoint import TaskRecord
from ptuning.data.readers import LabeledText
from ptuning.errors import PtuningError
from ptuning.predictor import Predictor, Request
from ptuning.recipe import Recipe
from ptuning.tasks import make_task
from ptuning.templates import Verbalizer, parse_verbalizer
from ptuning.vocabulary import HeadType

CORPUS = [
    "Review: a good film with a fine cast",
    "Review: a bad film, dull and long",
    "Sentiment (positive or negative): positive",
    "Sentiment (positive or negative): negative",
    "the plot is good and the music is fine",
    "the acting is bad and the story is thin",
]
REVIEWS = [
    ("a good film with a fine cast", "fresh"),
    ("a bad film, dull and long", "rotten"),
    ("the plot is good", "fresh"),
    ("the story is thin and bad", "rotten"),
    ("fine music, good acting", "fresh"),
    ("dull, long and bad", "rotten"),
    ("good", "fresh"),
    ("bad and thin", "rotten"),
]
TEMPLATE = "Review: {text}\nSentiment (positive or negative):"
WORDS = "fresh= positive,rotten= negative"
MULTI_WORDS = "fresh= fabulous,rotten= dreadful"  # not in the corpus: several byte tokens each
CHAT = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "it", "was", "good", "bad", "film", "a", "the", "plot"]
BERT_WORDS += [
    "is",
    "and",
    "dull",
    "long",
    "thin",
    "story",
    "fine",
    "music",
    "acting",
    "cast",
    "with",
    "##ly",
    ",",
    ".",
]


def byte_level_tokenizer(folder: Path) -> None:
    """A tiny byte-level BPE tokenizer, saved as a GPT-2 tokenizer (as SmolLM2's), that leads each input with <s>."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=340, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT
    fast.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}))


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    byte_level_tokenizer(folder)
    vocab = len(AutoTokenizer.from_pretrained(folder))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(BERT_WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    BertForMaskedLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reviews")
    files = {}
    for split, rows in (("train", REVIEWS), ("validation", REVIEWS[:6]), ("test", REVIEWS[2:])):
        files[split] = folder / f"{split}.csv"
        with files[split].open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return files


def examples(rows=REVIEWS) -> list[LabeledText]:
    return [LabeledText(text, None, label, f"row {index}") for index, (text, label) in enumerate(rows)]


def prompted(folder: Path, template: str, words: str, method: str = "prompting", chat: bool = False):
    verbalizer = Verbalizer(template, parse_verbalizer(words), chat)
    prompt = PromptConfig(method=method, length=3, dropout=0.0)
    model = PromptedModel.from_backbone(
        str(folder), "sequence-classification", labels=["fresh", "rotten"], prompt=prompt, verbalizer=verbalizer
    )
    return model.eval()


def scores(model: PromptedModel, items: list[LabeledText], padding_side: str = "right") -> torch.Tensor:
    """The model's (examples, labels) scores, the inputs encoded by the task and padded together."""
    record = model.tasks[model.default_task]
    task = make_task(record.family_name, model.tokenizer, record.labels, 100, **record.task_options())
    model.tokenizer.padding_side = padding_side
    batch = task.collator()([{key: value for key, value in f.items()} for f in task.encode(items, False).inputs])
    with torch.no_grad():
        return model(**batch).logits


def hand_log_probs(lm, ids: list[int]) -> torch.Tensor:
    """log_softmax of the language model's own logits (T, vocab) on one unpadded input."""
    with torch.no_grad():
        return torch.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)


# scores agree with an independent next-token computation ---------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_causal_single_token_words_are_the_next_token_log_probabilities(llama_folder, padding_side):
    model = prompted(llama_folder, TEMPLATE, WORDS)
    got = scores(model, examples(), padding_side)  # (8, 2)
    plain = AutoTokenizer.from_pretrained(llama_folder)  # no prefix space: the template as written
    lm = LlamaForCausalLM.from_pretrained(llama_folder).eval()
    words = [plain(word, add_special_tokens=False).input_ids for word in (" positive", " negative")]
    assert all(len(ids) == 1 for ids in words), words
    for row, item in enumerate(examples()):
        ids = plain(TEMPLATE.replace("{text}", item.text)).input_ids  # <s> and the filled template
        assert ids[0] == plain.bos_token_id
        expected = hand_log_probs(lm, ids)[-1][[ids[0] for ids in words]]
        assert_close(got[row], expected)


def test_causal_multi_token_words_sum_each_tokens_log_probability(llama_folder):
    model = prompted(llama_folder, TEMPLATE, MULTI_WORDS)
    assert model.head.expands
    got = scores(model, examples())  # (8, 2)
    plain = AutoTokenizer.from_pretrained(llama_folder)
    lm = LlamaForCausalLM.from_pretrained(llama_folder).eval()
    words = [plain(word, add_special_tokens=False).input_ids for word in (" fabulous", " dreadful")]
    assert all(len(ids) > 1 for ids in words)
    for row, item in enumerate(examples()):
        prefix = plain(TEMPLATE.replace("{text}", item.text)).input_ids
        for label, word in enumerate(words):
            log_probs = hand_log_probs(lm, prefix + word)
            expected = sum(log_probs[len(prefix) - 1 + k, token] for k, token in enumerate(word))
            assert_close(got[row, label], expected)


def test_masked_lm_words_are_scored_at_the_mask(bert_folder):
    model = prompted(bert_folder, "{text} it was {mask} .", "fresh=good,rotten=bad")
    got = scores(model, examples())
    tokenizer = AutoTokenizer.from_pretrained(bert_folder)
    lm = BertForMaskedLM.from_pretrained(bert_folder).eval()
    words = [tokenizer.convert_tokens_to_ids(word) for word in ("good", "bad")]
    for row, item in enumerate(examples()):
        ids = tokenizer(f"{item.text} it was [MASK] .").input_ids
        expected = hand_log_probs(lm, ids)[ids.index(tokenizer.mask_token_id)][words]
        assert_close(got[row], expected)


def test_chat_template_wraps_the_filled_template_as_the_users_message(llama_folder):
    model = prompted(llama_folder, TEMPLATE, WORDS, chat=True)
    record = model.tasks[model.default_task]
    task = make_task(record.family_name, model.tokenizer, record.labels, 100, **record.task_options())
    plain = AutoTokenizer.from_pretrained(llama_folder)
    filled = TEMPLATE.replace("{text}", "good")
    rendered = plain.apply_chat_template(
        [{"role": "user", "content": filled}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<s>assistant:")
    feature = task.encode(examples([("good", "fresh")]), False).inputs[0]
    assert feature["input_ids"] == plain(rendered, add_special_tokens=False).input_ids


def test_truncation_cuts_the_text_never_the_template(llama_folder):
    model = prompted(llama_folder, TEMPLATE, WORDS)
    record = model.tasks[model.default_task]
    task = make_task(record.family_name, model.tokenizer, record.labels, 30, **record.task_options())
    long_text = " ".join(["the plot is good and the music is fine"] * 10)
    encoded = task.encode(examples([(long_text, "fresh")]), False)
    ids = encoded.inputs[0]["input_ids"]
    tail = AutoTokenizer.from_pretrained(llama_folder)("\nSentiment (positive or negative):", add_special_tokens=False)
    assert encoded.truncated == [0] and len(ids) <= 30 and ids[-len(tail.input_ids) :] == tail.input_ids


# the command line: a prompting run, then eval, predict and serving reproduce it ------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptuning", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("backbone", "template", "words"),
    [
        ("llama", TEMPLATE, WORDS),
        ("llama", TEMPLATE, MULTI_WORDS),
        ("bert", "{text} it was {mask} .", "fresh=good,rotten=bad"),
    ],
)
def test_prompting_run_end_to_end(request, tmp_path, reviews, backbone, template, words):
    folder = request.getfixturevalue(f"{backbone}_folder")
    run = tmp_path / "run"
    data = [
        "--train",
        str(reviews["train"]),
        "--validation",
        str(reviews["validation"]),
        "--test",
        str(reviews["test"]),
    ]
    result = run_cli(
        "train", "--method", "prompting", "--model", str(folder), *data, "--template", template, "--verbalizer", words,
        "--output", str(run), "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trained nothing" in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == 0 and metrics["steps"] == 0 and metrics["stored_parameters"] == 0
    (task_metrics,) = metrics["tasks"].values()
    config = json.loads((run / "checkpoint" / "ptuning_config.json").read_text())
    (saved,) = config["tasks"].values()
    assert saved["head"] == "verbalizer" and saved["template"] == template
    assert saved["verbalizer"] == parse_verbalizer(words)
    evaluated = run_cli("eval", str(run), "--test", str(reviews["test"]), "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout) == pytest.approx(task_metrics["test"])
    # predict and serving answer with the same scores as the model alone
    predictor = Predictor.from_checkpoints({"sentiment": str(run)})
    items = examples(REVIEWS[2:])
    answers = predictor.predict([Request("sentiment", item) for item in items])
    expected = torch.softmax(scores(PromptedModel.from_pretrained(run).eval(), items), -1)
    for answer, probabilities in zip(answers, expected, strict=True):
        assert_close(torch.tensor([answer["probabilities"][label] for label in ("fresh", "rotten")]), probabilities)
    accuracy = 100 * sum(answer["label"] == item.label for answer, item in zip(answers, items, strict=True)) / 6
    assert accuracy == pytest.approx(task_metrics["test"]["accuracy"])


def test_a_server_answers_a_prompting_task_beside_a_linear_one(tmp_path, reviews, llama_folder):
    """One backbone with its language-modelling head serves both; each answer equals the model's own."""
    from test_serve import start, stop

    runs = tmp_path / "runs"
    result = run_cli(
        "train", "--method", "prompting", "--model", str(llama_folder), "--train", str(reviews["train"]),
        "--template", TEMPLATE, "--verbalizer", WORDS, "--output", str(runs / "sent"), "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    linear = PromptedModel.from_backbone(str(llama_folder), "sequence-classification", labels=["fresh", "rotten"])
    linear.save_pretrained(runs / "lin")
    expected = Predictor.from_checkpoints({"sent": str(runs / "sent"), "lin": str(runs / "lin")})
    items = examples(REVIEWS[:4])
    wanted = expected.predict([Request(name, item) for item in items for name in ("sent", "lin")])
    process, client = start(runs, tasks=("sent", "lin"))
    try:
        inputs = [{"task": name, "text": item.text} for item in items for name in ("sent", "lin")]
        status, _, body = client.call("POST", "/v1/predict", {"inputs": inputs})
    finally:
        stop(process)
    assert status == 200, body
    for answer, want in zip(body["outputs"], wanted, strict=True):
        assert answer["label"] == want["label"]
        assert_close(
            torch.tensor(list(answer["probabilities"].values())), torch.tensor(list(want["probabilities"].values()))
        )


# verbalizer heads of trained methods ------------------------------------------------------------


def train_steps(model: PromptedModel, steps: int = 6, lr: float = 0.05) -> list[float]:
    record = model.tasks[model.default_task]
    task = make_task(record.family_name, model.tokenizer, record.labels, 100, **record.task_options())
    batch = task.collator()(task.encode(examples()).inputs)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses


@pytest.mark.parametrize("method", ["deep", "shallow", "ptuning-v1"])
def test_prompts_train_under_a_frozen_verbalizer_head(llama_folder, method):
    torch.manual_seed(0)
    model = prompted(llama_folder, TEMPLATE, WORDS, method=method)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("prompts.") for name in trainable)
    losses = train_steps(model)
    assert losses[-1] < losses[0]


def test_finetune_trains_the_language_modelling_head_and_saves_it(llama_folder, tmp_path):
    torch.manual_seed(0)
    model = prompted(llama_folder, TEMPLATE, WORDS, method="finetune")
    lm_head = model.lm_head().weight
    assert lm_head.requires_grad and lm_head is model.transformer.get_input_embeddings().weight  # tied
    before = lm_head.detach().clone()
    losses = train_steps(model, steps=3, lr=1e-2)
    assert losses[-1] < losses[0] and not torch.equal(before, lm_head.detach())
    model.save_pretrained(tmp_path / "checkpoint")
    items = examples()
    restored = PromptedModel.from_pretrained(tmp_path / "checkpoint").eval()
    assert_close(scores(restored, items), scores(model.eval(), items))


def test_prompt_checkpoint_stores_no_language_modelling_head(llama_folder, tmp_path):
    model = prompted(llama_folder, TEMPLATE, WORDS, method="deep")
    model.save_pretrained(tmp_path / "checkpoint")
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "checkpoint" / "ptuning_model.safetensors"))) == {"prompts.default.table"}
    restored = PromptedModel.from_pretrained(tmp_path / "checkpoint").eval()
    assert_close(scores(restored, examples()), scores(model, examples()))


def test_a_mixed_batch_of_verbalizer_and_linear_tasks_equals_each_alone(llama_folder, tmp_path):
    torch.manual_seed(0)
    model = prompted(llama_folder, TEMPLATE, WORDS, method="deep")
    model.add_task("linear", "sequence-classification", ["fresh", "rotten"], prompt=PromptConfig(length=2))
    model.eval().save_pretrained(tmp_path / "both")
    predictor = Predictor(model)
    items = examples()
    requests = [Request(["default", "linear"][i % 2], item) for i, item in enumerate(items)]
    mixed = predictor.predict(requests)
    alone = [predictor.predict([request])[0] for request in requests]
    for got, expected in zip(mixed, alone, strict=True):
        assert got["label"] == expected["label"]
        assert_close(
            torch.tensor(list(got["probabilities"].values())), torch.tensor(list(expected["probabilities"].values()))
        )


def test_a_linear_checkpoint_loads_onto_a_backbone_with_its_language_modelling_head(llama_folder, tmp_path):
    linear = PromptedModel.from_backbone(str(llama_folder), "sequence-classification", labels=["fresh", "rotten"])
    linear.save_pretrained(tmp_path / "linear")
    prompted(llama_folder, TEMPLATE, WORDS).save_pretrained(tmp_path / "verbalizer")
    # the verbalizer task, named second, still makes the backbone keep its language-modelling head
    predictor = Predictor.from_checkpoints({"linear": tmp_path / "linear", "words": tmp_path / "verbalizer"})
    assert predictor.model.has_lm_head and predictor.model.tasks["linear"].head == HeadType.LINEAR


def test_old_records_load_as_linear_heads():
    record = TaskRecord.from_dict({"kind": "sequence-classification", "prompt": "default", "labels": ["a", "b"]})
    assert record.head == HeadType.LINEAR and record.scorer is None and record.task_options() == {}


# bad inputs, each refused naming what was expected ----------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"verbalizer": "fresh"}, "item 'fresh' is not LABEL=WORD"),
        ({"verbalizer": "fresh=a,fresh=b"}, "label 'fresh' is given twice"),
        ({"template": "Review:"}, r"must contain \{text\}"),
        ({"template": None}, "needs --template"),
        ({"verbalizer": None}, "needs --verbalizer"),
        ({"task": "token-classification"}, "sequence classification, not token-classification"),
        ({"method": "linear-probe", "head": "verbalizer"}, "nothing would train"),
        ({"head": "linear"}, "method prompting scores with the verbalizer head"),
        ({"save_steps": 5}, "no state to save or resume"),
    ],
)
def test_bad_verbalizer_settings_are_refused_before_loading(settings, message):
    values = {"train": "x.csv", "method": "prompting", "template": TEMPLATE, "verbalizer": WORDS, **settings}
    with pytest.raises(PtuningError, match=message):
        Recipe.from_dict({key: value for key, value in values.items() if value is not None})


def test_a_comma_in_a_word_is_written_escaped():
    assert parse_verbalizer("a= x\\, y,b=p=q") == {"a": " x, y", "b": "p=q"}


def test_verbalizer_labels_must_be_the_datas(tmp_path, reviews, llama_folder):
    result = run_cli(
        "train", "--method", "prompting", "--model", str(llama_folder), "--train", str(reviews["train"]),
        "--template", TEMPLATE, "--verbalizer", "good= positive,bad= negative", "--output", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "the verbalizer's labels ['bad', 'good'] must be the data's labels ['fresh', 'rotten']" in result.stderr


def test_a_masked_lm_takes_single_token_words(bert_folder):
    with pytest.raises(PtuningError, match="a masked LM scores one token at the mask"):
        prompted(bert_folder, "{text} it was {mask} .", "fresh=goodly,rotten=bad")
    with pytest.raises(PtuningError, match=r"at the template's \{mask\}"):
        prompted(bert_folder, "{text} it was", "fresh=good,rotten=bad")


def test_a_verbalizer_checkpoint_needs_a_language_modelling_head(llama_folder, tmp_path):
    prompted(llama_folder, TEMPLATE, WORDS).save_pretrained(tmp_path / "verbalizer")
    with pytest.raises(PtuningError, match="needs a model with its language-modelling head"):
        PromptedModel.from_pretrained(tmp_path / "verbalizer", backbone=LlamaModel.from_pretrained(llama_folder))
