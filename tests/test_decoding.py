"""Continuous batching in the library: rows of shallow, deep and unprompted tasks join a running batch between
decoding steps and leave at their own ends; each row's tokens equal ``generate``'s greedy answer for it alone."""

from __future__ import annotations

import pytest
import torch
from conftest import DECODERS, PAD, VOCAB
from test_generation import tiny_causal_lm
from test_generation_shallow import END, four_tasks, until_end

from ptuning.decoding import RunningBatch, choose, joins_rows
from ptuning.writing import Writing

# a row joins at its tick and writes at most its budget: rows join while others decode, and leave at their own ends
PLAN = [  # (task, input length, tick it joins, budget)
    (0, 4, 0, 9),
    (2, 7, 0, 3),
    (3, 2, 0, 6),
    (1, 5, 2, 8),
    (2, 3, 2, 5),
    (0, 6, 5, 4),
    (3, 1, 5, 7),
    (1, 2, 11, 3),
]


def decode(model, rows: list[torch.Tensor], plan=PLAN) -> dict[int, list[int]]:
    """Each planned row's greedy tokens, its row joining the running batch at its tick."""
    batch, running, written = RunningBatch(model, PAD), [], {index: [] for index in range(len(plan))}
    merged = 0
    for tick in range(40):
        joining = [index for index, (_, _, start, _) in enumerate(plan) if start == tick]
        if joining:
            merged += bool(running)
            batch.join([rows[index].tolist() for index in joining], [model.task_names[plan[i][0]] for i in joining])
            running += joining
        if not running:
            continue
        tokens = choose(batch.logits, [Writing()] * len(batch))  # (batch,)
        kept = []
        for position, (index, token) in enumerate(zip(running, tokens.tolist(), strict=True)):
            written[index].append(token)
            if token != END and len(written[index]) < plan[index][3]:
                kept.append(position)
        batch.keep(kept)
        running = [running[position] for position in kept]
        if running:
            batch.step(tokens[kept])
    assert not running and len(batch) == 0
    assert merged >= 2, "rows joined a running batch"
    return written


@pytest.mark.numerics
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", DECODERS)
def test_rows_joining_and_leaving_a_running_batch_answer_as_alone(arch, impl):
    model = four_tasks(tiny_causal_lm(arch, impl))
    assert joins_rows(model)
    generator = torch.Generator().manual_seed(3)
    rows = [torch.randint(4, VOCAB, (length,), generator=generator) for _, length, _, _ in PLAN]
    written = decode(model, rows)
    for index, (task, _, _, budget) in enumerate(PLAN):
        settings = dict(max_new_tokens=budget, do_sample=False, pad_token_id=PAD)
        alone = model.generate(rows[index][None], task_ids=torch.tensor([task]), **settings)[0, len(rows[index]) :]
        assert written[index] == until_end(alone.tolist()), f"row {index} ({model.task_names[task]})"


def test_a_sampled_row_draws_as_generate_does():
    """One sampled row under a seed draws what ``generate`` draws under it: the same warpers, the same draws."""
    model = four_tasks(tiny_causal_lm("llama"))
    ids = torch.tensor([5, 17, 42, 8])
    settings = dict(do_sample=True, temperature=1.3, top_p=0.9, top_k=0, max_new_tokens=6, pad_token_id=PAD)
    torch.manual_seed(4)
    expected = model.generate(ids[None], task_ids=torch.tensor([0]), **settings)[0, len(ids) :].tolist()
    torch.manual_seed(4)
    batch, written = RunningBatch(model, PAD), []
    batch.join([ids.tolist()], ["soft"])
    while len(written) < 6:
        token = choose(batch.logits, [Writing(temperature=1.3, top_p=0.9)])
        written.append(int(token))
        if written[-1] == END:
            break
        batch.step(token)
    assert written == until_end(expected)
    mixed = choose(torch.randn(3, VOCAB), [Writing(), Writing(temperature=1.0, top_p=0.5), Writing()])
    assert mixed.shape == (3,)


def test_a_sliding_window_shorter_than_the_positions_decodes_whole():
    assert joins_rows(four_tasks(tiny_causal_lm("mistral")))  # its window, 4096, never cuts 64 positions
    short = tiny_causal_lm("mistral")
    short.config.sliding_window = 16
    assert not joins_rows(four_tasks(short))
