"""One backbone, many tasks: a batch mixing tasks equals each example run alone under its own task."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, assert_close, random_batch, tiny_backbone
from test_relative_attention import VARIANTS, tiny

from ptuning import PromptConfig, PromptedModel, PtuningError
from ptuning.prompts.attention import extend_mask
from ptuning.prompts.encoder import gather_key_values

# name: (head, labels, prompt); different lengths (4, 16), layer sets, position conventions, a task without prompt
TASKS = {
    "ner": ("token-classification", ["B-PER", "I-PER", "O"], PromptConfig(length=4, dropout=0.0)),
    "sent": ("sequence-classification", ["neg", "pos"], PromptConfig(length=16, layers=[1, 2], dropout=0.0)),
    "shifted": ("token-classification", ["A", "B"], PromptConfig(length=6, layers=[0], shift_positions=True)),
    "probe": ("sequence-classification", ["x", "y", "z"], PromptConfig(method="linear-probe")),
    "shallow": ("sequence-classification", ["p", "q"], PromptConfig(method="shallow", length=3, dropout=0.0)),
}


def many_tasks(backbone, names=tuple(TASKS)) -> PromptedModel:
    torch.manual_seed(0)
    model = PromptedModel(backbone, None)
    for name in names:
        task, labels, prompt = TASKS[name]
        model.add_task(name, task, labels, prompt=prompt)
    with torch.no_grad():
        for parameter in model.prompts.parameters():
            parameter.normal_()
    return model.eval()


def assert_mixed_equals_alone(model: PromptedModel, task_ids: list[int]) -> None:
    """Each row of one mixed forward equals that example alone (unpadded) under its own task, to 1e-5."""
    input_ids, attention_mask = random_batch(batch_size=len(task_ids), length=len(task_ids) + 3)
    with torch.no_grad():
        mixed = model(input_ids=input_ids, attention_mask=attention_mask, task_ids=torch.tensor(task_ids))
        per_example = mixed.per_example()
        for row, index in enumerate(task_ids):
            real = int(attention_mask[row].sum())
            name = model.task_names[index]
            alone = model.use(name)(input_ids=input_ids[row : row + 1, :real]).logits[0]
            got = per_example[row][:real] if model.tasks[name].kind == "token-classification" else per_example[row]
            assert_close(got, alone, f"{name}, row {row}")
    model.active = None


@pytest.mark.numerics
def test_mixed_batch_equals_each_example_alone(arch_impl):
    arch, impl = arch_impl
    names = list(TASKS)
    model = many_tasks(tiny_backbone(arch, impl), names)
    # every task twice, interleaved; padding differs row by row
    assert_mixed_equals_alone(model, [*range(len(names)), *reversed(range(len(names)))])


@pytest.mark.numerics
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mixed_batch_equals_alone_on_deberta_and_mpnet(variant):
    model = many_tasks(tiny(variant), ("ner", "sent", "probe"))
    assert_mixed_equals_alone(model, [0, 1, 2, 1, 0])


@pytest.mark.numerics
def test_mixed_batch_of_one_task_is_the_single_task_path():
    model = many_tasks(tiny_backbone("bert"), ("ner", "sent"))
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        mixed = model(input_ids=input_ids, attention_mask=attention_mask, task_ids=torch.tensor([1, 1, 1])).logits
        alone = model.use("sent")(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(mixed, alone)  # one task takes the single-task path: the same kernels on the same shapes


def test_padding_columns_are_masked_not_zero_keys():
    """The shorter prompt's padding columns are closed in the mask; an open zero key would change the output."""
    tables = [(torch.randn(2, 1 * 2 * 1 * 4), [0]), (torch.randn(5, 1 * 2 * 1 * 4), [0])]
    key_values, visible = gather_key_values(tables, torch.tensor([0, 1, 2]), kv_heads=1, head_dim=4)
    assert visible[0].tolist() == [[False] * 3 + [True] * 2, [True] * 5, [False] * 5]
    key, _ = key_values[0]  # (batch, kv_heads, 5, head_dim)
    assert torch.equal(key[0, 0, :3], torch.zeros(3, 4)) and torch.equal(
        key[0, 0, 3:], tables[0][0].view(2, 2, 4)[:, 0]
    )
    boolean = extend_mask(torch.ones(3, 1, 1, 2, dtype=torch.bool), 5, visible[0])
    assert boolean[0, 0, 0].tolist() == [False, False, False, True, True, True, True]
    additive = extend_mask(torch.zeros(3, 1, 1, 2), 5, visible[0])
    assert additive[2, 0, 0, :5].eq(torch.finfo(torch.float32).min).all() and additive[1].eq(0).all()

    model = many_tasks(tiny_backbone("bert"), ("ner", "sent"))
    input_ids, attention_mask = random_batch()
    task_ids = torch.tensor([0, 1, 0])
    prompts = model.mixed_layer_prompts(["ner", "sent"], torch.tensor([0, 1, 0]))
    prompts.visible = {}  # what a zero-padding implementation would do: every column open
    from ptuning.prompts.attention import active_prompts

    with torch.no_grad():
        right = model.encode(input_ids, attention_mask, task_ids=task_ids)
        with active_prompts(prompts):
            wrong = model.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert (right[0] - wrong[0])[attention_mask[0].bool()].abs().max() > 1e-3


def test_gathering_indexes_the_stacked_prompts_without_a_python_loop_over_examples():
    model = many_tasks(tiny_backbone("bert"), ("ner", "sent"))
    rows = torch.tensor([0, 1, 1, 0, 1])
    prompts = model.mixed_layer_prompts(["ner", "sent"], rows)
    key, value = prompts.key_values[1]
    assert key.shape == (5, 4, 16, 8) and value.shape == (5, 4, 16, 8)
    # layer 0: only ner (4 columns) reaches it, so it holds 4 columns, not sent's 16; sent's rows see none
    assert prompts.key_values[0][0].shape == (5, 4, 4, 8)
    assert prompts.visible[0].sum(dim=1).tolist() == [4, 0, 0, 4, 0]
    assert prompts.visible[1][:, :12].sum(dim=1).tolist() == [0, 12, 12, 0, 12]  # ner left-padded in layer 1


def test_gradients_reach_only_the_prompts_of_the_tasks_in_the_batch():
    model = many_tasks(tiny_backbone("bert"), ("ner", "sent", "shifted")).train()
    input_ids, attention_mask = random_batch()
    hidden = model.encode(input_ids, attention_mask, task_ids=torch.tensor([0, 1, 0]))
    (hidden * torch.randn_like(hidden)).sum().backward()
    assert model.prompts["ner"].table.grad.abs().sum() > 0 and model.prompts["sent"].table.grad.abs().sum() > 0
    assert model.prompts["shifted"].table.grad is None


def test_heads_run_on_their_own_rows_in_input_order():
    model = many_tasks(tiny_backbone("bert"), ("ner", "sent"))
    input_ids, attention_mask = random_batch(batch_size=4)
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, task_ids=torch.tensor([1, 0, 1, 0]))
    assert output.rows["sent"].tolist() == [0, 2] and output.rows["ner"].tolist() == [1, 3]
    assert output.outputs["sent"].logits.shape == (2, 2) and output.outputs["ner"].logits.shape == (2, 9, 3)
    assert [tuple(logits.shape) for logits in output.per_example()] == [(2,), (9, 3), (2,), (9, 3)]


def test_mixed_batches_take_no_labels_and_no_choices():
    model = many_tasks(tiny_backbone("bert"), ("ner", "sent"))
    model.add_task("copa", "multiple-choice", [], prompt=PromptConfig(length=2))
    input_ids, attention_mask = random_batch()
    with pytest.raises(PtuningError, match="takes no labels"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids, task_ids=torch.tensor([0, 1, 0]))
    with pytest.raises(PtuningError, match="multiple-choice and causal-lm tasks run one task per batch"):
        model(input_ids=input_ids, attention_mask=attention_mask, task_ids=torch.tensor([0, 2, 0]))


def test_tasks_share_a_prompt_with_a_head_each():
    model = PromptedModel(tiny_backbone("bert"), None)
    model.add_task("ner", "token-classification", ["B", "I", "O"], prompt=PromptConfig(length=4))
    model.add_task("pos", "token-classification", ["N", "V"], shared_prompt="ner")
    assert list(model.prompts) == ["ner"] and list(model.heads) == ["ner", "pos"]
    assert model.tasks["pos"].prompt == "ner"
    with pytest.raises(PtuningError, match="no prompt named 'chunk' to share"):
        model.add_task("x", "token-classification", ["A"], shared_prompt="chunk")
    with pytest.raises(PtuningError, match="not a torch Module attribute, got 'train'"):
        model.add_task("train", "token-classification", ["A"], prompt=PromptConfig(length=2))
    with pytest.raises(PtuningError, match="a fine-tuned backbone serves its own task only"):
        model.add_task("full", "token-classification", ["A"], prompt=PromptConfig(method="finetune"))


def test_architectures_cover_the_supported_list():
    """The equivalence above runs on every architecture the model accepts (besides DeBERTa and MPNet)."""
    from ptuning.architectures import ARCHITECTURES as SUPPORTED

    assert set(SUPPORTED) == set(ARCHITECTURES) | {"deberta", "deberta-v2", "mpnet"}


@pytest.mark.numerics
def test_run_model_keeps_each_forward_under_the_token_budget_and_answers_the_same():
    """Features sorted by length fill forwards of at most ``max_tokens`` padded tokens (one longer feature runs
    alone); each feature's logits equal those of one big batch to 1e-5, in input order."""
    from transformers import DataCollatorWithPadding

    from ptuning.tasks.base import run_model

    model = many_tasks(tiny_backbone("bert"), ("ner", "sent"))
    generator = torch.Generator().manual_seed(3)
    lengths = [5, 30, 12, 7, 30, 3, 18, 9, 45]
    features = [{"input_ids": torch.randint(3, 90, (n,), generator=generator).tolist()} for n in lengths]
    task_ids = [index % 2 for index in range(len(features))]
    per_token = [task == 0 for task in task_ids]
    shapes: list[tuple[int, int]] = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    collator = DataCollatorWithPadding(_PadOnly())
    whole = run_model(model, features, collator, 64, per_token, task_ids)
    assert shapes == [(9, 45)]
    shapes.clear()
    budgeted = run_model(model, features, collator, 64, per_token, task_ids, max_tokens=40, progress=False)
    assert all(rows * longest <= 40 or rows == 1 for rows, longest in shapes) and sum(r for r, _ in shapes) == 9
    assert shapes == [(4, 9), (2, 18), (1, 30), (1, 30), (1, 45)]  # lengths 3 5 7 9 | 12 18 | 30 | 30 | 45
    for got, expected, length, is_tagger in zip(budgeted, whole, lengths, per_token, strict=True):
        assert got.shape == expected.shape and (got.shape[0] == length) == is_tagger
        assert_close(got, expected)


class _PadOnly:
    """The least a collator needs of a tokenizer: pad ``input_ids`` with 0 and build the attention mask."""

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    def pad(self, features, **kwargs):
        longest = max(len(feature["input_ids"]) for feature in features)
        ids = [feature["input_ids"] + [0] * (longest - len(feature["input_ids"])) for feature in features]
        mask = [[1] * len(feature["input_ids"]) + [0] * (longest - len(feature["input_ids"])) for feature in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
