"""Generation in mixed batches: each row under its own task's prefix through prefill and every cached decoding step,
left padding masked, each answer that task's own answer alone; sampling, stop strings, finish reasons and counts."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, DECODERS, END_OF_TEXT, PAD, VOCAB, tiny_bpe_tokenizer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from ptuning import PromptConfig, PromptedModel
from ptuning.errors import PtuningError
from ptuning.generation import generate_texts

NEW = 6
# three prefixes: of different lengths, one with shifted positions, one in the upper layers only
PROMPTS = {
    "plain": PromptConfig(length=2, dropout=0.0),
    "shifted": PromptConfig(length=5, dropout=0.0, shift_positions=True),
    "upper": PromptConfig(length=3, dropout=0.0, layers=[1, 2]),
}
TEXTS = ["a good film with fine acting", "Mary sings", "the plot never drags in Oslo", "Peter runs"]


def tiny_causal_lm(arch: str, impl: str = "sdpa", vocab_size: int = VOCAB, end_of_text: int = 3):
    """A tiny random decoder of ``arch`` with its language-modelling head, its weights spread wider than the default
    (0.02) so that its greedy answers vary from token to token instead of repeating one token."""
    config_class, _, settings = ARCHITECTURES[arch]
    special = dict(vocab_size=vocab_size, bos_token_id=end_of_text, eos_token_id=end_of_text, initializer_range=0.2)
    config = config_class(**{**settings, **special}, attn_implementation=impl)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def three_tasks(backbone) -> PromptedModel:
    """A model holding the three causal-lm tasks of ``PROMPTS``, each prefix random."""
    torch.manual_seed(1)
    model = PromptedModel(backbone, None, lm_head=True)
    for name, prompt in PROMPTS.items():
        model.add_task(name, "causal-lm", [], prompt=prompt)
    return model.eval()


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(row) for row in rows)
    input_ids = torch.stack([torch.cat([torch.full((length - len(row),), PAD), row]) for row in rows])  # (batch, T)
    attention_mask = torch.stack([torch.arange(length) >= length - len(row) for row in rows]).long()  # (batch, T)
    return input_ids, attention_mask


def greedy_by_forward(model: PromptedModel, prompt_ids: torch.Tensor, task: int, steps: int) -> torch.Tensor:
    """Greedy decoding by full forward calls (no cache, no generate) under one task's prefix: (1, T + steps)."""
    tokens = prompt_ids  # (1, T)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=tokens, task_ids=torch.tensor([task])).logits  # (1, T', vocab)
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


@pytest.mark.numerics
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", DECODERS)
def test_mixed_batch_answers_equal_each_task_alone(arch, impl):
    model = three_tasks(tiny_causal_lm(arch, impl))
    generator = torch.Generator().manual_seed(2)
    lengths, tasks = [4, 7, 2, 5, 7, 3, 6], [0, 1, 2, 1, 0, 2, 2]
    rows = [torch.randint(4, VOCAB, (length,), generator=generator) for length in lengths]
    rows[4] = rows[1]  # one input under two tasks
    input_ids, attention_mask = left_pad(rows)  # each (batch, T)
    settings = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    batch = model.generate(input_ids, attention_mask, task_ids=torch.tensor(tasks), **settings)  # (batch, T + NEW)
    assert batch.shape == (len(rows), input_ids.shape[1] + NEW)
    for row, (ids, task) in enumerate(zip(rows, tasks, strict=True)):
        alone = model.generate(ids[None], task_ids=torch.tensor([task]), **settings)[0, len(ids) :]
        alone = torch.cat([alone, torch.full((NEW - len(alone),), PAD)])  # a row that ended early pads to the end
        assert torch.equal(batch[row, input_ids.shape[1] :], alone), f"row {row} (task {model.task_names[task]})"
    under_one = model.generate(input_ids, attention_mask, task_ids=torch.zeros(len(rows), dtype=torch.long), **settings)
    assert not torch.equal(under_one, batch)  # each row's own prefix counts
    # each task's answer alone is its greedy answer by full forwards: shifted positions and prompted layers as trained
    for task, row in ((1, 1), (2, 2)):
        generated = model.generate(rows[row][None], task_ids=torch.tensor([task]), max_new_tokens=NEW, do_sample=False)
        assert torch.equal(generated, greedy_by_forward(model, rows[row][None], task, NEW))


@pytest.mark.numerics
def test_beam_search_in_a_mixed_batch_repeats_each_rows_prefix():
    model = three_tasks(tiny_causal_lm("llama"))
    rows = [torch.tensor([5, 17, 42, 8, 9]), torch.tensor([11, 12])]
    input_ids, attention_mask = left_pad(rows)
    settings = dict(max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=PAD)
    batch = model.generate(input_ids, attention_mask, task_ids=torch.tensor([1, 2]), **settings)
    for row, task in enumerate([1, 2]):
        alone = model.generate(rows[row][None], task_ids=torch.tensor([task]), **settings)[0, len(rows[row]) :]
        assert torch.equal(batch[row, input_ids.shape[1] :][: len(alone)], alone)


@pytest.fixture(scope="module")
def text_model() -> tuple[PromptedModel, PreTrainedTokenizerFast]:
    tokenizer = tiny_bpe_tokenizer(PreTrainedTokenizerFast)
    end_of_text = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    backbone = tiny_causal_lm("llama", vocab_size=len(tokenizer), end_of_text=end_of_text)
    return three_tasks(backbone), tokenizer


MIXED = ["plain", "shifted", "upper", "shifted"]


def test_greedy_texts_equal_each_task_alone_with_their_counts(text_model):
    model, tokenizer = text_model
    answers = generate_texts(model, tokenizer, TEXTS, MIXED, max_new_tokens=8)
    for text, task, answer in zip(TEXTS, MIXED, answers, strict=True):
        assert answer == generate_texts(model, tokenizer, [text], [task], max_new_tokens=8)[0]
        assert answer["prompt_tokens"] == len(tokenizer(text)["input_ids"])
        assert (answer["finish_reason"], answer["completion_tokens"]) == ("length", 8)  # no end of text in 8
    model.use("upper")  # without task names, the default task
    assert generate_texts(model, tokenizer, TEXTS[2:3], max_new_tokens=8) == answers[2:3]
    model.active = None


def test_sampling_with_a_seed_is_reproducible_and_leaves_the_callers_random_state(text_model):
    model, tokenizer = text_model
    state = torch.random.get_rng_state()
    sample = dict(max_new_tokens=8, temperature=1.5, top_p=0.95)
    first = generate_texts(model, tokenizer, TEXTS, MIXED, seed=7, **sample)
    assert generate_texts(model, tokenizer, TEXTS, MIXED, seed=7, **sample) == first
    assert torch.equal(torch.random.get_rng_state(), state)
    others = [generate_texts(model, tokenizer, TEXTS, MIXED, seed=seed, **sample) for seed in (8, 9)]
    assert any(other != first for other in others)
    greedy = generate_texts(model, tokenizer, TEXTS, MIXED, max_new_tokens=8)
    assert first != greedy


def stop_string_of(text: str) -> str:
    """A two-character printable ASCII piece of ``text`` after its start, to stop at."""
    for start in range(2, len(text) - 1):
        piece = text[start : start + 2]
        if piece.isascii() and piece.isprintable() and piece.strip():
            return piece
    raise AssertionError(f"no stop string in {text!r}")


def test_stop_strings_cut_the_text_and_end_the_row(text_model):
    model, tokenizer = text_model
    full = generate_texts(model, tokenizer, TEXTS, MIXED, max_new_tokens=12)
    stops = [stop_string_of(full[1]["generated_text"]), stop_string_of(full[2]["generated_text"]), "never-seen"]
    answers = generate_texts(model, tokenizer, TEXTS, MIXED, max_new_tokens=12, stop=stops)
    assert sum(answer["finish_reason"] == "stop" for answer in answers) >= 2
    for row, (answer, whole) in enumerate(zip(answers, full, strict=True)):
        text = whole["generated_text"]
        if not any(stop in text for stop in stops):
            assert answer == whole
            continue
        cut = min(text.find(stop) for stop in stops if stop in text)
        assert answer["generated_text"] == text[:cut] and answer["finish_reason"] == "stop"
        # the token that completed the stop string is the last one counted
        ids = model.generate(
            tokenizer(TEXTS[row], return_tensors="pt")["input_ids"],
            task_ids=torch.tensor([model.task_names.index(MIXED[row])]),
            max_new_tokens=12,
            do_sample=False,
        )[0, answer["prompt_tokens"] :].tolist()
        texts = [tokenizer.decode(ids[:count], skip_special_tokens=True) for count in range(1, 13)]
        ended = next(count for count, text in enumerate(texts, 1) if any(stop in text for stop in stops))
        assert answer["completion_tokens"] == ended


def test_end_of_text_ends_a_row_with_reason_stop(text_model):
    model, tokenizer = text_model
    full = generate_texts(model, tokenizer, TEXTS[:1], MIXED[:1], max_new_tokens=8)[0]
    prompt_ids = tokenizer(TEXTS[:1], return_tensors="pt")["input_ids"]
    ids = model.generate(prompt_ids, task_ids=torch.tensor([0]), max_new_tokens=8, do_sample=False)
    ids = ids[0, full["prompt_tokens"] :].tolist()
    configured = model.backbone.generation_config.eos_token_id
    model.backbone.generation_config.eos_token_id = ids[3]  # the backbone's own end of text, as a chat model's
    try:
        answer = generate_texts(model, tokenizer, TEXTS[:1], MIXED[:1], max_new_tokens=8)[0]
    finally:
        model.backbone.generation_config.eos_token_id = configured
    end = ids.index(ids[3])
    assert answer["finish_reason"] == "stop" and answer["completion_tokens"] == end + 1
    assert answer["generated_text"] == tokenizer.decode(ids[:end], skip_special_tokens=True)


def test_refusals_name_the_problem(text_model):
    model, tokenizer = text_model
    with pytest.raises(PtuningError, match="no task named 'nope'"):
        generate_texts(model, tokenizer, TEXTS[:2], ["plain", "nope"])
    with pytest.raises(PtuningError, match="choose one with model.use"):
        generate_texts(model, tokenizer, TEXTS[:2])
    with pytest.raises(PtuningError, match="one task per prompt"):
        generate_texts(model, tokenizer, TEXTS[:2], ["plain"])
    with pytest.raises(PtuningError, match="top_p in"):
        generate_texts(model, tokenizer, TEXTS[:1], ["plain"], temperature=1.0, top_p=0.0)
    with pytest.raises(PtuningError, match="have no tokens"):
        generate_texts(model, tokenizer, ["", "x"], ["plain", "plain"])
    with pytest.raises(PtuningError, match="exceed the 59 positions"):  # 64 positions, 5 of them the prefix's
        generate_texts(model, tokenizer, TEXTS[:1], ["shifted"], max_new_tokens=120)
    right_padded = torch.tensor([[5, 6, PAD], [7, 8, 9]])
    with pytest.raises(PtuningError, match="left-padded rows"):
        model.generate(right_padded, (right_padded != PAD).long(), task_ids=torch.tensor([0, 0]))
    with pytest.raises(PtuningError, match="task_ids index the 3 tasks"):
        model.generate(right_padded[1:], task_ids=torch.tensor([3]))


def test_a_batch_with_a_task_that_does_not_generate_is_refused():
    model = three_tasks(tiny_causal_lm("gpt2"))
    model.add_task("sentiment", "sequence-classification", ["neg", "pos"], prompt=PromptConfig(length=2))
    input_ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with pytest.raises(PtuningError, match="generation needs causal-lm tasks; task 'sentiment' is sequence-class"):
        model.generate(input_ids, task_ids=torch.tensor([0, 3]), max_new_tokens=2)
