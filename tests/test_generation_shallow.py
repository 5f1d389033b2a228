"""Generation under shallow prompts (prompt tuning): the prompt's vectors before the text's embeddings, in prefill; a
shallow row shares a batch with deep rows, rows without a prompt and shallow rows of another length, each answer
that task's own alone, and that one the greedy answer computed by hand from the backbone's forward on [prompt
vectors; text embeddings]. The loss trains the prompt on the target's tokens only."""

from __future__ import annotations

import pytest
import torch
from conftest import DECODERS, END_OF_TEXT, PAD, VOCAB, tiny_bpe_tokenizer
from test_generation import left_pad, tiny_causal_lm
from transformers import PreTrainedTokenizerFast

from ptuning import PromptConfig, PromptedModel
from ptuning.errors import PtuningError
from ptuning.generation import generate_texts

NEW = 6
END = 3  # tiny_causal_lm's end of text
TASKS = {
    "soft": PromptConfig(method="shallow", length=4, dropout=0.0),
    "short": PromptConfig(method="shallow", length=2, dropout=0.0),
    "deep": PromptConfig(length=3, dropout=0.0, shift_positions=True),
    "plain": PromptConfig(method="prompting"),
}


def four_tasks(backbone) -> PromptedModel:
    """Two shallow tasks (prompts of 4 and 2 vectors), a deep one and one without a prompt, their prompts random."""
    torch.manual_seed(1)
    model = PromptedModel(backbone, None, lm_head=True)
    for name, prompt in TASKS.items():
        model.add_task(name, "causal-lm", [], prompt=prompt)
    return model.eval()


def until_end(tokens: list[int]) -> list[int]:
    """The tokens up to the end-of-text token, which ends a row (kept)."""
    return tokens[: tokens.index(END) + 1] if END in tokens else tokens


@torch.no_grad()
def greedy_by_hand(model: PromptedModel, ids: torch.Tensor, task: str, steps: int) -> list[int]:
    """Greedy decoding by full forwards of the backbone (no cache, no generate) on the shallow task's prompt vectors
    followed by the text's embeddings, positions counted from the prompt's first vector."""
    table = model.prompts[task]()  # (P, embedding)
    embed = model.transformer.get_input_embeddings()
    tokens = ids.tolist()
    for _ in range(steps):
        embeds = torch.cat([table, embed(torch.tensor(tokens))])[None]  # (1, P + T, embedding)
        logits = model.backbone(inputs_embeds=embeds).logits  # (1, P + T, vocab)
        tokens.append(int(logits[0, -1].argmax()))
    return until_end(tokens[len(ids) :])


@pytest.mark.numerics
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", DECODERS)
def test_shallow_rows_mixed_with_deep_and_unprompted_rows_answer_as_alone(arch, impl):
    model = four_tasks(tiny_causal_lm(arch, impl))
    generator = torch.Generator().manual_seed(2)
    lengths, tasks = [4, 7, 2, 5, 7, 4, 6, 1], [0, 1, 2, 3, 3, 2, 1, 0]
    rows = [torch.randint(4, VOCAB, (length,), generator=generator) for length in lengths]
    rows[4] = rows[1]  # one input under two tasks
    rows[5] = rows[0]
    input_ids, attention_mask = left_pad(rows)  # each (batch, T)
    settings = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    batch = model.generate(input_ids, attention_mask, task_ids=torch.tensor(tasks), **settings)  # (batch, T + NEW)
    assert batch.shape == (len(rows), input_ids.shape[1] + NEW)
    assert torch.equal(batch[:, : input_ids.shape[1]], input_ids)
    answers = {}
    for row, (ids, task) in enumerate(zip(rows, tasks, strict=True)):
        alone = model.generate(ids[None], task_ids=torch.tensor([task]), **settings)[0, len(ids) :].tolist()
        answers[row] = until_end(alone)
        assert until_end(batch[row, input_ids.shape[1] :].tolist()) == answers[row], f"row {row} (task {task})"
    for row, task in enumerate(tasks):  # a shallow answer alone is the greedy answer by hand
        name = model.task_names[task]
        if TASKS[name].method == "shallow":
            assert answers[row] == greedy_by_hand(model, rows[row], name, NEW), f"row {row} ({name})"
    # each row's own prompt counts: the same input under another prompt, or none, writes otherwise
    assert answers[0] != answers[5] or answers[1] != answers[4]
    unprompted = model.generate(input_ids, attention_mask, task_ids=torch.full((len(rows),), 3), **settings)
    assert not torch.equal(unprompted, batch)


@pytest.mark.numerics
def test_beams_and_max_length_count_the_text_not_the_prompt():
    model = four_tasks(tiny_causal_lm("llama"))
    rows = [torch.tensor([5, 17, 42, 8, 9]), torch.tensor([11, 12])]
    input_ids, attention_mask = left_pad(rows)
    settings = dict(max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=PAD)
    batch = model.generate(input_ids, attention_mask, task_ids=torch.tensor([0, 2]), **settings)
    for row, task in enumerate([0, 2]):
        alone = model.generate(rows[row][None], task_ids=torch.tensor([task]), **settings)[0, len(rows[row]) :]
        assert torch.equal(batch[row, input_ids.shape[1] :][: len(alone)], alone)
    # max_length counts the caller's columns, as transformers does: the shallow prompt's vectors are not among them
    by_length = model.generate(input_ids, attention_mask, task_ids=torch.tensor([0, 2]), max_length=9, pad_token_id=PAD)
    assert by_length.shape == (2, 9)


@pytest.fixture(scope="module")
def text_model() -> tuple[PromptedModel, PreTrainedTokenizerFast]:
    tokenizer = tiny_bpe_tokenizer(PreTrainedTokenizerFast)
    end_of_text = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    return four_tasks(tiny_causal_lm("llama", vocab_size=len(tokenizer), end_of_text=end_of_text)), tokenizer


def test_texts_of_shallow_tasks_equal_each_alone_with_their_counts(text_model):
    model, tokenizer = text_model
    texts = ["a good film with fine acting", "Mary sings", "the plot never drags in Oslo", "Peter runs", "Oslo"]
    tasks = ["soft", "deep", "short", "plain", "soft"]
    answers = generate_texts(model, tokenizer, texts, tasks, max_new_tokens=[8, 5, 8, 3, 8])
    for text, task, answer, budget in zip(texts, tasks, answers, [8, 5, 8, 3, 8], strict=True):
        assert answer == generate_texts(model, tokenizer, [text], [task], max_new_tokens=budget)[0]
        assert answer["prompt_tokens"] == len(tokenizer(text)["input_ids"])  # the prompt's vectors are no tokens
    with pytest.raises(PtuningError, match="exceed the 60 positions"):  # 64 positions, 4 of them the prompt's
        generate_texts(model, tokenizer, texts[:1], ["soft"], max_new_tokens=120)


def test_the_loss_trains_the_shallow_prompt_on_the_target_tokens_only():
    model = four_tasks(tiny_causal_lm("gpt2"))
    model.use("soft")  # in eval mode: no dropout draws apart the two forwards
    input_ids = torch.tensor([[5, 17, 42, 8, 9, 10], [11, 12, 13, 14, PAD, PAD]])  # right-padded, as training pads
    attention_mask = (input_ids != PAD).long()  # (2, 6)
    labels = torch.tensor([[-100, -100, -100, 8, 9, 10], [-100, -100, 13, 14, -100, -100]])
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    table = model.prompts["soft"]()  # (P, embedding)
    embeds = torch.cat([table.expand(2, -1, -1), model.transformer.get_input_embeddings()(input_ids)], 1)
    mask = torch.cat([torch.ones(2, 4, dtype=torch.long), attention_mask], 1)  # (2, P + 6)
    logits = model.backbone(inputs_embeds=embeds, attention_mask=mask).logits[:, 4:]  # (2, 6, vocab)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    assert torch.allclose(output.loss, expected, atol=1e-6)
    output.loss.backward()
    trained = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert trained == {"prompts.soft.table"}
    assert model(input_ids=input_ids).logits.shape == (2, 6, VOCAB)  # the text's logits, not the prompt's
