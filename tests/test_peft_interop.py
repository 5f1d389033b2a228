"""Export to and import from PEFT prefix-tuning adapters: PEFT itself loads and runs what we write."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import BERT_LIKE, random_batch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from ptuning import CheckpointError, PromptConfig, PromptedModel, PtuningError
from ptuning.checkpoint import CheckpointConfig, TaskRecord, read_config, read_task
from ptuning.cli import main
from ptuning.peft_interop import check_exportable, copy_into_peft, export_peft, import_peft, peft_prefix_problem

peft = pytest.importorskip("peft")
# Where PEFT itself cannot do prefix tuning (transformers 5.24 with peft 0.21.2) the tests that run PEFT are
# skipped with PEFT's reason, and the refusal tests below still run.
PROBLEM = peft_prefix_problem()
needs_peft = pytest.mark.skipif(PROBLEM is not None, reason=f"PEFT prefix tuning cannot run here: {PROBLEM}")

TASK = "sequence-classification"
LABELS = ["neg", "neu", "pos"]
SETTINGS = {**BERT_LIKE, "num_hidden_layers": 2, "id2label": dict(enumerate(LABELS))}
TOLERANCE = 1e-4  # PEFT computes the logits its own way (cache route, its heads); the export's own check, EXACT


def save_backbone(folder, model_type="bert", pooler=True, **overrides):
    """A tiny random backbone saved the way a user has it: BERT with its classifier, RoBERTa as a base model."""
    torch.manual_seed(0)
    settings = {**SETTINGS, **overrides}
    if model_type == "bert" and pooler:
        model = BertForSequenceClassification(BertConfig(**settings))
    elif model_type == "bert":
        model = BertModel(BertConfig(**settings), add_pooling_layer=False)
    elif model_type == "roberta":
        model = RobertaModel(RobertaConfig(**settings), add_pooling_layer=pooler)
    else:
        model = XLMRobertaModel(XLMRobertaConfig(**settings), add_pooling_layer=pooler)
    model.save_pretrained(folder)
    return folder


def save_checkpoint(folder, backbone, shift_positions=True, pooling="pooler", labels=LABELS, **prompt):
    """A 'trained' deep-prompt checkpoint: random prompt table and head on the saved backbone."""
    torch.manual_seed(1)
    settings = {"length": 4, "dropout": 0.0, "shift_positions": shift_positions, **prompt}
    model = PromptedModel.from_backbone(
        str(backbone), TASK, labels=labels, prompt=PromptConfig(**settings), pooling=pooling
    )
    with torch.no_grad():
        if model.prompt_encoder is not None:
            model.prompt_encoder.table.normal_()
        model.head.classifier.weight.normal_()
        model.head.classifier.bias.normal_()
    model.save_pretrained(folder)
    return folder


def ptuning_logits(checkpoint, input_ids, attention_mask):
    model = PromptedModel.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits


def peft_logits(backbone, adapter, input_ids, attention_mask, **base_kwargs):
    base = AutoModelForSequenceClassification.from_pretrained(backbone, **base_kwargs)
    model = peft.PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits


@pytest.mark.numerics
@needs_peft
@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta"])
def test_export_loads_in_peft_with_the_same_logits(tmp_path, model_type):
    backbone = save_backbone(tmp_path / "backbone", model_type)
    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone)
    adapter = export_peft(checkpoint, tmp_path / "adapter")

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["task_type"] == "SEQ_CLS"
    assert config["num_virtual_tokens"] == 4 and config["prefix_projection"] is False
    assert (config["num_layers"], config["num_attention_heads"], config["token_dim"]) == (2, 4, 32)
    assert config["base_model_name_or_path"] == str(backbone.resolve())
    assert config["modules_to_save"] == ["classifier", "score"]
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert torch.equal(  # the table copied, not computed
        weights["prompt_embeddings"], load_file(str(checkpoint / "ptuning_model.safetensors"))["prompts.default.table"]
    )

    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    ours = ptuning_logits(checkpoint, input_ids, attention_mask)
    theirs = peft_logits(backbone, adapter, input_ids, attention_mask)
    assert (ours - theirs).abs().max() <= TOLERANCE


@pytest.mark.numerics
@needs_peft
@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_export_then_import_gives_the_original_logits(tmp_path, model_type):
    backbone = save_backbone(tmp_path / "backbone", model_type)
    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone)
    adapter = export_peft(checkpoint, tmp_path / "adapter")
    imported = import_peft(adapter, tmp_path / "imported")

    config = read_config(imported)
    record = config.task(None, imported)
    assert record.labels == LABELS and record.pooling == "pooler" and config.backbone == str(backbone.resolve())
    assert config.prompts[record.prompt].shift_positions is True and config.prompts[record.prompt].length == 4
    assert config.imported_from["peft_adapter"] == str(adapter.resolve())
    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    original = ptuning_logits(checkpoint, input_ids, attention_mask)
    assert (ptuning_logits(imported, input_ids, attention_mask) - original).abs().max() <= TOLERANCE


@pytest.mark.numerics
@needs_peft
def test_import_of_an_adapter_trained_by_peft(tmp_path):
    """An adapter PEFT made itself, with prefix_projection (PEFT saves the projected table) and default labels."""
    backbone = save_backbone(tmp_path / "backbone", id2label=None, num_labels=2)
    base = AutoModelForSequenceClassification.from_pretrained(backbone)
    config = peft.PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=16
    )
    model = peft.get_peft_model(base, config)
    torch.manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_()
    model.eval().save_pretrained(tmp_path / "adapter")
    imported = import_peft(tmp_path / "adapter", tmp_path / "imported")

    assert read_task(imported).labels == ["0", "1"]
    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    with torch.no_grad():
        theirs = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (ptuning_logits(imported, input_ids, attention_mask) - theirs).abs().max() <= TOLERANCE


@pytest.mark.numerics
@needs_peft
def test_unshifted_positions_export_with_a_warning_and_differ(tmp_path):
    backbone = save_backbone(tmp_path / "backbone")
    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone, shift_positions=False)
    with pytest.warns(UserWarning, match="shift_positions=False.*positions from the prefix length"):
        adapter = export_peft(checkpoint, tmp_path / "adapter")
    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    ours = ptuning_logits(checkpoint, input_ids, attention_mask)
    theirs = peft_logits(backbone, adapter, input_ids, attention_mask)
    assert (ours - theirs).abs().max() > TOLERANCE  # the documented difference, not a silent match


@pytest.mark.numerics
@needs_peft
def test_other_label_count_warns_and_loads_with_num_labels(tmp_path):
    backbone = save_backbone(tmp_path / "backbone", id2label=None, num_labels=2)
    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone, labels=["a", "b", "c", "d"])
    with pytest.warns(UserWarning, match="num_labels=4"):
        adapter = export_peft(checkpoint, tmp_path / "adapter")
    input_ids, attention_mask = random_batch()
    ours = ptuning_logits(checkpoint, input_ids, attention_mask)
    assert (
        ours - peft_logits(backbone, adapter, input_ids, attention_mask, num_labels=4, ignore_mismatched_sizes=True)
    ).abs().max() <= TOLERANCE


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_pooling_other_than_pooler_is_refused(tmp_path, model_type):
    backbone = save_backbone(tmp_path / "backbone", model_type)
    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone, pooling="cls")
    with pytest.raises(CheckpointError, match="--pooling pooler"):
        export_peft(checkpoint, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_methods_other_than_deep_are_refused(tmp_path):
    backbone = save_backbone(tmp_path / "backbone")
    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone, method="shallow")
    with pytest.raises(CheckpointError, match="method 'shallow' has no PEFT prefix-tuning equivalent"):
        export_peft(checkpoint, tmp_path / "adapter")


def test_backbone_without_trained_pooler_is_refused(tmp_path):
    backbone = save_backbone(tmp_path / "backbone", pooler=False)
    with pytest.raises(PtuningError, match="no trained pooler weights"):
        save_checkpoint(tmp_path / "checkpoint", backbone)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "token-classification"}, "task 'token-classification'"),
        ({"backbone_shape": {"model_type": "electra", "num_hidden_layers": 2}}, "model type 'electra'"),
        ({"prompt": PromptConfig(layers=[1])}, r"layers \[1\] of 2"),
        ({"prompt": PromptConfig(method="finetune")}, "method 'finetune'"),
        ({"head": "verbalizer"}, "a verbalizer head"),
    ],
)
def test_unsupported_checkpoints_are_refused(change, message):
    def check(kind=TASK, prompt=None, backbone_shape=None, head="linear") -> None:
        config = CheckpointConfig(
            backbone_shape=backbone_shape or {"model_type": "bert", "num_hidden_layers": 2},
            prompts={"p": prompt or PromptConfig()},
        )
        check_exportable(config, TaskRecord(kind, "p", ["a", "b"], "pooler", head=head))

    check()
    check(prompt=PromptConfig(layers=[1, 0]))  # all layers, listed
    with pytest.raises(CheckpointError, match=message):
        check(**change)


@needs_peft
def test_non_prefix_adapters_are_refused(tmp_path):
    backbone = save_backbone(tmp_path / "backbone")
    base = AutoModelForSequenceClassification.from_pretrained(backbone)
    peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", target_modules=["query"])).save_pretrained(
        tmp_path / "lora"
    )
    with pytest.raises(CheckpointError, match="'LORA' adapter; only PREFIX_TUNING"):
        import_peft(tmp_path / "lora", tmp_path / "imported")

    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone)
    adapter = export_peft(checkpoint, tmp_path / "adapter")
    config_path = adapter / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "task_type": "CAUSAL_LM"}))
    with pytest.raises(CheckpointError, match="task_type is 'CAUSAL_LM'"):
        import_peft(adapter, tmp_path / "imported")
    with pytest.raises(CheckpointError, match="adapter_config.json is missing"):
        import_peft(checkpoint, tmp_path / "imported")


@needs_peft
def test_roberta_adapter_with_a_trained_dense_layer_is_refused(tmp_path):
    backbone = save_backbone(tmp_path / "backbone", "roberta")
    adapter = export_peft(save_checkpoint(tmp_path / "checkpoint", backbone), tmp_path / "adapter")
    weights_path = adapter / "adapter_model.safetensors"
    weights = load_file(str(weights_path))
    weights["base_model.classifier.dense.bias"] = weights["base_model.classifier.dense.bias"] + 0.1
    save_file(weights, str(weights_path))
    with pytest.raises(CheckpointError, match="differs from the backbone's pooler"):
        import_peft(adapter, tmp_path / "imported")


@needs_peft
@pytest.mark.parametrize("direction", ["export", "import"])
def test_peft_logits_are_checked_before_writing(tmp_path, monkeypatch, direction):
    backbone = save_backbone(tmp_path / "backbone")
    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone)
    if direction == "import":
        checkpoint = export_peft(checkpoint, tmp_path / "adapter")
    write = export_peft if direction == "export" else import_peft
    monkeypatch.setattr("ptuning.peft_interop.EXACT", -1.0)  # no difference passes: the check must refuse
    with pytest.raises(PtuningError, match="differ from ptuning's by 0 .*not written"):
        write(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.numerics
@needs_peft
def test_cli_export_and_import_round_trip(tmp_path, capsys):
    backbone = save_backbone(tmp_path / "backbone", "bert")
    checkpoint = save_checkpoint(tmp_path / "run" / "checkpoint", backbone)
    assert main(["export-peft", str(tmp_path / "run"), str(tmp_path / "adapter")]) == 0
    assert main(["import-peft", str(tmp_path / "adapter"), str(tmp_path / "imported")]) == 0
    assert "wrote ptuning checkpoint" in capsys.readouterr().out
    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    original = ptuning_logits(checkpoint, input_ids, attention_mask)
    assert (ptuning_logits(tmp_path / "imported", input_ids, attention_mask) - original).abs().max() <= TOLERANCE
    code = main(["import-peft", str(tmp_path / "nothing"), str(tmp_path / "x")])
    assert code == 2 and "adapter_config.json" in capsys.readouterr().err


@needs_peft
def test_label_names_survive_export_and_import(tmp_path, capsys):
    """The base config names no labels: the names travel beside the adapter, or are given on import."""
    backbone = save_backbone(tmp_path / "backbone", id2label=None, num_labels=2)
    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone, labels=["fresh", "rotten"])
    adapter = export_peft(checkpoint, tmp_path / "adapter")
    assert read_task(import_peft(adapter, tmp_path / "a")).labels == ["fresh", "rotten"]
    assert main(["import-peft", str(adapter), str(tmp_path / "b"), "--labels", "bad,good"]) == 0
    assert read_task(tmp_path / "b").labels == ["bad", "good"]
    code = main(["import-peft", str(adapter), str(tmp_path / "c"), "--labels", "one,two,three"])
    err = capsys.readouterr().err
    assert code == 2 and "classifier has 2 outputs" in err and not (tmp_path / "c").exists()


@needs_peft
def test_interop_never_writes_into_a_folder_that_holds_files(tmp_path, capsys):
    backbone = save_backbone(tmp_path / "backbone")
    checkpoint = save_checkpoint(tmp_path / "checkpoint", backbone)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    for argv in (["export-peft", str(checkpoint), str(occupied)], ["import-peft", str(tmp_path), str(occupied)]):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("already exists and is not an empty folder") == 1  # import stops earlier: not an adapter
    assert [path.name for path in occupied.iterdir()] == ["notes.txt"]


def simulate_transformers_5_24(monkeypatch) -> None:
    """transformers 5.24's rename, made here: BertModel.forward takes ``cache`` instead of ``past_key_values``,
    and PEFT's prefix tuning refuses the model exactly as it does on that release."""
    original = BertModel.forward

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        cache=None,
        **kwargs,
    ):
        return original(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)

    monkeypatch.setattr(BertModel, "forward", forward)
    peft_prefix_problem.cache_clear()


@pytest.fixture
def forget_peft_probe():
    yield
    peft_prefix_problem.cache_clear()  # later tests probe the real stack again


def test_where_peft_cannot_prefix_tune_export_and_import_refuse_and_write_nothing(
    tmp_path, capsys, monkeypatch, forget_peft_probe
):
    backbone = save_backbone(tmp_path / "backbone")
    save_checkpoint(tmp_path / "run" / "checkpoint", backbone)
    adapter = tmp_path / "adapter"  # made by PEFT itself; saving needs no forward
    base = AutoModelForSequenceClassification.from_pretrained(backbone)
    peft.get_peft_model(base, peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)).save_pretrained(
        adapter
    )
    simulate_transformers_5_24(monkeypatch)
    capsys.readouterr()
    assert "Model does not support past key values" in peft_prefix_problem()

    for command, source in (("export-peft", tmp_path / "run"), ("import-peft", adapter)):
        out = tmp_path / f"{command}-out"
        code = main([command, str(source), str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"ptuning: error: {command} needs PEFT's prefix tuning"), err
        assert f"peft {peft.__version__} and transformers {transformers.__version__}" in err
        assert "before 5.24" in err and "Nothing was written" in err and "Traceback" not in err
        assert not out.exists()


@pytest.mark.numerics
@needs_peft
def test_export_one_task_of_a_multi_task_checkpoint(tmp_path, capsys):
    backbone = save_backbone(tmp_path / "backbone")
    torch.manual_seed(1)
    model = PromptedModel.from_backbone(
        str(backbone),
        TASK,
        labels=LABELS,
        pooling="pooler",
        name="sent",
        prompt=PromptConfig(length=4, dropout=0.0, shift_positions=True),
    )
    model.add_task("topic", TASK, ["a", "b"], pooling="pooler", shared_prompt="sent")
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_()
    model.save_pretrained(tmp_path / "multi")
    code = main(["export-peft", str(tmp_path / "multi"), str(tmp_path / "x")])
    assert code == 2 and "holds the tasks sent, topic: name one (--task NAME)" in capsys.readouterr().err
    assert main(["export-peft", str(tmp_path / "multi"), str(tmp_path / "adapter"), "--task", "topic"]) == 0
    input_ids, attention_mask = random_batch(batch_size=3, length=9)
    with torch.no_grad():
        ours = model.eval().use("topic")(input_ids=input_ids, attention_mask=attention_mask).logits
    theirs = peft_logits(
        backbone, tmp_path / "adapter", input_ids, attention_mask, num_labels=2, ignore_mismatched_sizes=True
    )
    assert (ours - theirs).abs().max() <= TOLERANCE


@pytest.mark.numerics
@needs_peft
@pytest.mark.parametrize("shift_positions", [True, False])
def test_token_classification_copied_into_peft_gives_the_same_logits(tmp_path, shift_positions):
    """The faithfulness benchmark's NER arm: PEFT TOKEN_CLS given our prompt and head computes our logits, exactly
    when positions are shifted as PEFT shifts them, and not otherwise (so the check can fail)."""
    backbone = save_backbone(tmp_path / "backbone")
    torch.manual_seed(2)
    ours = PromptedModel.from_backbone(
        str(backbone),
        "token-classification",
        labels=["O", "B-X", "I-X"],
        prompt=PromptConfig(length=4, dropout=0.0, shift_positions=shift_positions),
    ).eval()
    base = AutoModelForTokenClassification.from_pretrained(backbone, num_labels=3)
    config = base.config
    theirs = peft.get_peft_model(
        base,
        peft.PrefixTuningConfig(
            task_type="TOKEN_CLS",
            num_virtual_tokens=4,
            token_dim=config.hidden_size,
            num_attention_heads=config.num_attention_heads,
            num_layers=config.num_hidden_layers,
            prefix_projection=False,
        ),
    ).eval()
    copy_into_peft(ours, theirs)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        expected = ours(input_ids=input_ids, attention_mask=attention_mask).logits
        got = theirs(input_ids=input_ids, attention_mask=attention_mask).logits
    assert got.shape == expected.shape == (*input_ids.shape, 3)
    difference = float((got - expected).abs().max())
    assert difference <= TOLERANCE if shift_positions else difference > 1e-3
