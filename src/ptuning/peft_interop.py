"""Exchange deep-prompt checkpoints with PEFT prefix-tuning adapters (sequence classification).

``export_peft`` writes a ptuning checkpoint (method ``deep``, every layer prompted, task
``sequence-classification``, a BERT, RoBERTa or XLM-RoBERTa backbone, pooling ``pooler``) as an adapter that
``peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(backbone), adapter)``
loads; ``import_peft`` reads such an adapter back into a ptuning checkpoint. The prompt table maps one to one:
PEFT's ``prompt_embeddings`` is ``(num_virtual_tokens, num_layers * 2 * hidden)`` with columns ordered layer,
key/value, head, head dim, exactly like ``prompt_encoder.table``. The heads map exactly as follows. BERT's
``BertForSequenceClassification`` is pooler -> dropout -> ``classifier``, i.e. our ``pooler`` pooling with
``head.classifier``. RoBERTa's ``classifier`` is dense -> tanh -> ``out_proj`` on the first token, which equals
our ``pooler`` pooling (the backbone's frozen pooler is dense -> tanh on the first token) when ``classifier.dense``
holds the pooler's weights, so only such heads convert (other poolings, or a PEFT head whose trained
``classifier.dense`` differs from the pooler, are refused).

Position semantics: PEFT hands the prefix to the model as ``past_key_values``, so transformers numbers the
text's positions from the prefix length on, which ptuning reproduces only with ``shift_positions=True``. A
checkpoint trained with ``shift_positions=False`` (our default) is exported anyway with a warning, because
under PEFT its text gets other position embeddings and its logits differ; imported adapters always get
``shift_positions=True``.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, PreTrainedModel

from .backbones import _load, load_backbone, resolve
from .checkpoint import CheckpointConfig, TaskRecord, checkpoint_folder, read_config
from .config import PromptConfig
from .errors import CheckpointError, PtuningError
from .model import PromptedModel
from .vocabulary import HeadKind, HeadType

MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
TASK = HeadKind.SEQUENCE_CLASSIFICATION
PEFT_TASK = "SEQ_CLS"
PEFT_TYPE = "PREFIX_TUNING"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"
TABLE_KEY = "prompt_embeddings"
ROBERTA_HEAD = ("roberta", "xlm-roberta")  # classifier = dense -> tanh -> out_proj
EXPORT_INFO = "ptuning_export.json"  # beside PEFT's files: what PEFT's adapter format cannot hold (label names)
EXACT = 1e-4  # largest logit difference the export's self-check accepts
# the versions PEFT's prefix tuning was last seen to work with here (the lock, and the range tested)
WORKS_WITH = (
    "transformers 5.x before 5.24 with peft 0.21.2 (the locked pair, transformers 5.23.0 + peft 0.21.2, is tested); "
    "transformers 5.24 renamed the forward argument past_key_values that PEFT prefix tuning needs"
)


def _supported(what: str) -> str:
    return (
        f"{what}; PEFT export/import supports method 'deep' on every layer, task {TASK!r}, pooling 'pooler', "
        f"backbones {', '.join(MODEL_TYPES)}"
    )


def check_exportable(config: CheckpointConfig, record: TaskRecord) -> None:
    """Raise ``CheckpointError`` unless a checkpoint's task maps exactly onto a PEFT prefix-tuning SEQ_CLS adapter."""
    prompt = config.prompts[record.prompt]
    if prompt.method != "deep":
        raise CheckpointError(_supported(f"checkpoint method {prompt.method!r} has no PEFT prefix-tuning equivalent"))
    if record.kind != TASK:
        raise CheckpointError(_supported(f"checkpoint task {str(record.kind)!r} is not exported"))
    if record.head != HeadType.LINEAR:
        raise CheckpointError(_supported(f"a {record.head} head (the language-modelling head) is not exported"))
    shape = config.backbone_shape
    model_type = shape.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(_supported(f"backbone model type {model_type!r} is not exported"))
    layers = prompt.layers
    num_layers = shape.get("num_hidden_layers")
    if layers is not None and sorted(layers) != list(range(num_layers or 0)):
        raise CheckpointError(
            _supported(f"the prompt covers layers {layers} of {num_layers}; PEFT prefix tuning prompts every layer")
        )
    pooling = record.pooling
    if pooling != "pooler":
        head = (
            "BertForSequenceClassification classifies the pooler output"
            if model_type == "bert"
            else "RobertaForSequenceClassification's head (dense -> tanh -> out_proj on the first token) equals "
            "the backbone's pooler followed by a linear layer, nothing else"
        )
        raise CheckpointError(
            f"checkpoint pooling is {pooling!r}, but {head}: only a checkpoint trained with --pooling pooler "
            "(PromptedModel(..., pooling='pooler')) exports exactly"
        )


def _base_reference(reference: str) -> str:
    """What PEFT's ``base_model_name_or_path`` gets: an absolute local folder or a hub name (aliases resolved)."""
    location = resolve(reference)
    return str(Path(location).resolve()) if os.path.isdir(location) else location


def _peft_classes():
    try:
        import peft
    except ImportError as error:
        raise PtuningError("PEFT export needs the peft package: pip install 'ptuning[peft]'") from error
    return peft


@functools.cache
def peft_prefix_problem() -> str | None:
    """Why PEFT's prefix tuning cannot run on the installed peft and transformers (None when it can).

    PEFT refuses prefix tuning when the model's forward lacks the argument it hands the prefix over in (as with
    transformers 5.24); the only sure test is to run it, on a model of a few hundred parameters.
    """
    peft = _peft_classes()
    torch_state = torch.random.get_rng_state()
    tiny = BertConfig(
        vocab_size=16,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=16,
    )
    try:
        model = peft.get_peft_model(
            BertForSequenceClassification(tiny), peft.PrefixTuningConfig(task_type=PEFT_TASK, num_virtual_tokens=2)
        )
        with torch.no_grad():
            model(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 3, dtype=torch.long))
    except Exception as error:  # a capability probe: whatever PEFT or transformers raise means "cannot"
        return f"{type(error).__name__}: {error}"
    finally:
        torch.random.set_rng_state(torch_state)
    return None


def require_peft_prefix_tuning(action: str) -> None:
    """Refuse ``action`` with the installed versions and the ones that work, when PEFT cannot do prefix tuning."""
    problem = peft_prefix_problem()
    if problem is not None:
        raise PtuningError(
            f"{action} needs PEFT's prefix tuning, which does not run with the installed peft "
            f"{_peft_classes().__version__} and transformers {transformers.__version__} (PEFT: {problem}). It works "
            f"with {WORKS_WITH}: install the locked versions (make setup) or pip install 'transformers<5.24'. "
            "Nothing was written."
        )


def _new_folder(out_dir: str | Path) -> Path:
    """``out_dir`` if it is absent or empty: the interop commands never write over a user's files."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PtuningError(f"{out_dir} already exists and is not an empty folder; choose a new output folder")
    return out_dir


def _probe_batch(model: PromptedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Two texts, the second padded, short enough for the position table."""
    config = model.transformer.config
    length = max(2, min(8, model.max_text_length))
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(min(3, config.vocab_size - 1), config.vocab_size, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, length // 2 :] = pad
    attention_mask[1, length // 2 :] = 0
    return input_ids, attention_mask


def check_same_logits(model: PromptedModel, peft_model: torch.nn.Module, subject: str) -> None:
    """PEFT's logits on a probe batch must equal ours within ``EXACT``, or nothing is written."""
    input_ids, attention_mask = _probe_batch(model)
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask).logits
        theirs = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    difference = float((ours - theirs).abs().max())
    if not difference <= EXACT:
        raise PtuningError(
            f"PEFT's logits for {subject} differ from ptuning's by {difference:.3g} (> {EXACT}) with peft "
            f"{_peft_classes().__version__} and transformers {transformers.__version__}; not written"
        )


def copy_into_peft(model: PromptedModel, peft_model: torch.nn.Module) -> None:
    """Give a PEFT prefix-tuning model (sequence or token classification) the active task's prompt table and head."""
    head = peft_model.base_model.classifier.modules_to_save["default"]
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(model.prompt_encoder.folded_table())
        if model.transformer.config.model_type in ROBERTA_HEAD and hasattr(head, "out_proj"):
            head.dense.load_state_dict(model.transformer.pooler.dense.state_dict())
            head.out_proj.load_state_dict(model.head.classifier.state_dict())
        else:
            head.load_state_dict(model.head.classifier.state_dict())


def export_peft(
    checkpoint_dir: str | Path, out_dir: str | Path, backbone: str | None = None, task: str | None = None
) -> Path:
    """Write the ptuning checkpoint ``checkpoint_dir`` as a PEFT prefix-tuning SEQ_CLS adapter in ``out_dir``.

    ``task`` names the task to export when the checkpoint holds several (a PEFT adapter holds one prompt and one
    head). ``backbone`` overrides the backbone named in the checkpoint (needed when it was trained on a model object).
    The adapter is written by PEFT itself (``get_peft_model`` + ``save_pretrained``) and checked: with
    ``shift_positions=True`` its logits must equal the checkpoint's within 1e-4 on a probe batch, or nothing is
    kept. Warns when positions differ (``shift_positions=False``) and when the base model must be loaded with
    another ``num_labels`` than its config has.
    """
    checkpoint_dir = checkpoint_folder(checkpoint_dir)
    config = read_config(checkpoint_dir)
    check_exportable(config, config.task(task, checkpoint_dir))
    out_dir = _new_folder(out_dir)
    reference = backbone or config.backbone
    if reference is None:
        raise CheckpointError(f"{checkpoint_dir} was trained on a backbone object, not a named one: pass backbone=...")
    require_peft_prefix_tuning("export-peft")
    peft = _peft_classes()
    model = PromptedModel.from_pretrained(checkpoint_dir, backbone=load_backbone(reference)).eval()
    model.use(task or model.task_names[0])
    prompt = model.prompt_config
    if not prompt.shift_positions:
        warnings.warn(
            f"{checkpoint_dir} was trained with shift_positions=False (text positions start at the model's first "
            f"position), but PEFT prefix tuning numbers the text's positions from the prefix length "
            f"({prompt.length}) on: the exported adapter gives other logits than this checkpoint. Train with "
            "--shift-positions for an exact export.",
            UserWarning,
            stacklevel=2,
        )
    backbone_config = model.transformer.config
    labels = model.labels
    if backbone_config.num_labels != len(labels):
        warnings.warn(
            f"the backbone's config has num_labels={backbone_config.num_labels} but this checkpoint has "
            f"{len(labels)} labels {labels}: load the base model with "
            f"AutoModelForSequenceClassification.from_pretrained(..., num_labels={len(labels)}) (with "
            "ignore_mismatched_sizes=True if its folder holds a classifier) before PeftModel.from_pretrained",
            UserWarning,
            stacklevel=2,
        )
    classifier_model = _load(
        AutoModelForSequenceClassification.from_pretrained,
        reference,
        "model",
        ignore_mismatched_sizes=True,  # a saved classifier of another label count: PEFT's copy replaces it
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    ).eval()
    peft_config = peft.PrefixTuningConfig(
        task_type=PEFT_TASK,
        num_virtual_tokens=prompt.length,
        token_dim=backbone_config.hidden_size,
        num_attention_heads=backbone_config.num_attention_heads,
        num_layers=backbone_config.num_hidden_layers,
        prefix_projection=False,
    )
    peft_model = peft.get_peft_model(classifier_model, peft_config)
    adapter_config = peft_model.peft_config["default"]
    adapter_config.base_model_name_or_path = _base_reference(reference)
    # PEFT's SEQ_CLS adds ["classifier", "score"] in get_peft_model and again in the model: keep one copy.
    adapter_config.modules_to_save = list(dict.fromkeys(adapter_config.modules_to_save or []))
    copy_into_peft(model, peft_model)
    peft_model.eval()
    if prompt.shift_positions:
        check_same_logits(model, peft_model, f"the adapter of {checkpoint_dir}")
    peft_model.save_pretrained(str(out_dir))
    info = {"labels": labels, "exported_from": str(Path(checkpoint_dir).resolve()), "prompt": prompt.to_dict()}
    (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


# import -------------------------------------------------------------------------------------------------------


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter's config (JSON) and weights (safetensors, else PEFT's older ``adapter_model.bin``)."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{adapter_dir} is not a PEFT adapter: {ADAPTER_CONFIG} is missing")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    if (adapter_dir / ADAPTER_WEIGHTS).is_file():
        weights = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    elif (adapter_dir / ADAPTER_WEIGHTS_BIN).is_file():
        weights = torch.load(adapter_dir / ADAPTER_WEIGHTS_BIN, map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{adapter_dir} lacks {ADAPTER_WEIGHTS}")
    return config, weights


def check_importable(config: dict[str, Any]) -> None:
    """Raise ``CheckpointError`` unless an adapter config is a PEFT prefix-tuning SEQ_CLS adapter we can read."""
    peft_type = config.get("peft_type")
    if peft_type != PEFT_TYPE:
        raise CheckpointError(
            f"the adapter is a {peft_type!r} adapter; only {PEFT_TYPE} adapters (PEFT prefix tuning) map onto "
            "ptuning's deep prompts"
        )
    if config.get("task_type") != PEFT_TASK:
        raise CheckpointError(
            f"the adapter's task_type is {config.get('task_type')!r}; only {PEFT_TASK} (sequence classification) "
            "adapters are imported"
        )
    if (config.get("num_transformer_submodules") or 1) != 1:
        raise CheckpointError("the adapter prompts an encoder-decoder (num_transformer_submodules=2); not imported")


def _classifier(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The saved head (PEFT's ``modules_to_save`` copy of ``classifier``) by its name inside the classifier."""
    head = {}
    for key, tensor in weights.items():
        prefix, found, name = key.partition("classifier.")
        if found and prefix in ("", "base_model.", "base_model.model."):
            head[name] = tensor
    return head


def _labels(backbone: PreTrainedModel, count: int) -> list[str]:
    """Label names from the base config's ``id2label`` when it names ``count`` labels, else "0".."n-1"."""
    id2label = getattr(backbone.config, "id2label", None) or {}
    names = [str(id2label.get(index, id2label.get(str(index), ""))) for index in range(count)]
    generic = all(name == f"LABEL_{index}" for index, name in enumerate(names))
    if len(id2label) == count and all(names) and not generic and len(set(names)) == count:
        return names
    return [str(index) for index in range(count)]


def import_peft(
    adapter_dir: str | Path,
    out_dir: str | Path,
    backbone: str | PreTrainedModel | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Read a PEFT prefix-tuning SEQ_CLS adapter into a ptuning checkpoint in ``out_dir``.

    ``backbone`` (a reference or a model object) defaults to the adapter's ``base_model_name_or_path``. The
    result has pooling ``pooler``, ``shift_positions=True`` and prompt dropout 0 (PEFT has none). Label names:
    ``labels``, else those ``export_peft`` kept beside the adapter, else the base config's ``id2label`` when it
    names as many labels as the classifier has, else "0".."n-1". ``prefix_projection`` adapters are accepted: PEFT
    saves their projected (folded) table. With a named backbone, PEFT itself runs the adapter on a probe batch
    and its logits must equal the imported checkpoint's, or nothing is written.
    """
    config, weights = read_adapter(adapter_dir)
    check_importable(config)
    out_dir = _new_folder(out_dir)
    require_peft_prefix_tuning("import-peft")
    reference = backbone if backbone is not None else config.get("base_model_name_or_path")
    if reference is None:
        raise CheckpointError(f"{adapter_dir} names no base model (base_model_name_or_path): pass backbone=...")
    model_backbone = load_backbone(reference) if isinstance(reference, str) else reference.base_model.eval()
    backbone_config = model_backbone.config
    model_type = backbone_config.model_type
    if model_type not in MODEL_TYPES:
        raise CheckpointError(_supported(f"backbone model type {model_type!r} is not imported"))
    expected = {
        "num_layers": backbone_config.num_hidden_layers,
        "num_attention_heads": backbone_config.num_attention_heads,
        "token_dim": backbone_config.hidden_size,
    }
    differences = [
        f"{key}: adapter {config.get(key)}, backbone {value}"
        for key, value in expected.items()
        if config.get(key) not in (None, value)
    ]
    if differences:
        raise CheckpointError(f"adapter {adapter_dir} was made for another backbone shape ({'; '.join(differences)})")
    if TABLE_KEY not in weights:
        raise CheckpointError(f"{adapter_dir} holds no {TABLE_KEY!r}; keys: {sorted(weights)}")
    table = weights[TABLE_KEY].float()
    length = config.get("num_virtual_tokens") or table.shape[0]
    width = backbone_config.num_hidden_layers * 2 * backbone_config.hidden_size
    if tuple(table.shape) != (length, width):
        projection = " (a prefix_projection adapter saved without its projected table)" * bool(
            config.get("prefix_projection")
        )
        raise CheckpointError(
            f"{TABLE_KEY} has shape {tuple(table.shape)}, expected ({length}, {width}) = "
            f"(num_virtual_tokens, num_layers * 2 * hidden){projection}"
        )
    head = _classifier(weights)
    if model_type in ROBERTA_HEAD:
        needed = ("dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias")
    else:
        needed = ("weight", "bias")
    if any(name not in head for name in needed):
        raise CheckpointError(
            f"{adapter_dir} does not hold the {model_type} classification head (classifier."
            f"{', classifier.'.join(needed)} in modules_to_save); found {sorted(head)}"
        )
    if model_type in ROBERTA_HEAD:
        pooler = model_backbone.pooler.dense
        same = torch.allclose(head["dense.weight"].float(), pooler.weight, rtol=0, atol=1e-6) and torch.allclose(
            head["dense.bias"].float(), pooler.bias, rtol=0, atol=1e-6
        )
        if not same:
            raise CheckpointError(
                f"the adapter trained {model_type}'s classifier.dense, which differs from the backbone's pooler: "
                "ptuning's head is the frozen pooler (dense -> tanh) + one linear layer, so only adapters whose "
                "classifier.dense equals the pooler (as export_peft writes them) import exactly"
            )
        linear = {"weight": head["out_proj.weight"], "bias": head["out_proj.bias"]}
    else:
        linear = {"weight": head["weight"], "bias": head["bias"]}
    labels = _import_labels(adapter_dir, model_backbone, linear["weight"].shape[0], labels)
    model = PromptedModel(
        model_backbone,
        TASK,
        labels,
        PromptConfig(method="deep", length=length, dropout=0.0, shift_positions=True),
        backbone_reference=reference if isinstance(reference, str) else None,
        pooling="pooler",
        folded=True,
    )
    with torch.no_grad():
        model.prompt_encoder.table.copy_(table)
        model.head.classifier.load_state_dict({name: tensor.float() for name, tensor in linear.items()})
    if isinstance(reference, str):
        _check_against_peft(model.eval(), reference, adapter_dir)
    out_dir = model.save_pretrained(out_dir)
    saved = read_config(out_dir)
    saved.imported_from = {"peft_adapter": str(Path(adapter_dir).resolve()), "peft_version": config.get("peft_version")}
    saved.save(out_dir)
    return out_dir


def _check_against_peft(model: PromptedModel, reference: str, adapter_dir: str | Path) -> None:
    """PEFT's logits for the adapter on a probe batch must equal the imported model's."""
    peft = _peft_classes()
    count = len(model.labels)
    base = _load(
        AutoModelForSequenceClassification.from_pretrained,
        reference,
        "model",
        num_labels=count,
        ignore_mismatched_sizes=True,  # the adapter's saved classifier replaces whatever the folder holds
    )
    check_same_logits(model, peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval(), str(adapter_dir))


def _import_labels(
    adapter_dir: str | Path, backbone: PreTrainedModel, count: int, given: list[str] | None
) -> list[str]:
    """Label names for a classifier of ``count`` rows: given, kept by export_peft, or from the base config."""
    info_path = Path(adapter_dir) / EXPORT_INFO
    if given is None and info_path.is_file():
        try:
            given = json.loads(info_path.read_text()).get("labels")
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{info_path} is not valid JSON: {error}") from error
    if given is None:
        return _labels(backbone, count)
    if len(given) != count or len(set(given)) != count:
        raise CheckpointError(
            f"the adapter's classifier has {count} outputs, but the label names {given} are not {count} distinct names"
        )
    return [str(label) for label in given]
