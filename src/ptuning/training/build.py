"""The model a run trains: the backbone with one prompt and a head per task, or started from a saved run."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ..checkpoint import CheckpointConfig, read_config
from ..config import PromptConfig
from ..errors import PtuningError
from ..model import PromptedModel
from ..recipe import Recipe
from .data import TaskRun

logger = logging.getLogger("ptuning")


def build_model(recipe: Recipe, runs: list[TaskRun]) -> PromptedModel:
    """The backbone with one prompt and a head per task of ``runs`` (several tasks share the prompt of the first),
    or, with ``init_from``, that saved run's prompt (and its heads of tasks with the same name and labels)."""
    first = runs[0]
    prompt = recipe.prompt
    source = None
    if recipe.init_from is not None:
        source = read_config(recipe.init_from)
        prompt = _initial_prompt(recipe, source)
    model = PromptedModel.from_backbone(
        recipe.model,
        first.family.head_kind,
        labels=first.labels,
        prompt=prompt,
        pooling=recipe.pooling,
        name=first.name,
        verbalizer=first.verbalizer,
        lm_head=any(run.verbalizer is not None for run in runs),
    )
    for run in runs[1:]:
        model.add_task(
            run.name,
            run.family.head_kind,
            run.labels,
            pooling=recipe.pooling,
            shared_prompt=first.name,
            verbalizer=run.verbalizer,
        )
    if source is not None:
        try:
            model.check_backbone(Path(recipe.init_from), source, fingerprint="refuse")
        except PtuningError as error:
            raise PtuningError(f"--init-from: {error}; start from a run on --model {recipe.model}") from error
        _copy_from(model, recipe.init_from, runs)
    return model


def _initial_prompt(recipe: Recipe, source: CheckpointConfig) -> PromptConfig:
    """The prompt a run started from a saved one trains: the saved prompt's shape (flat, as saved), this recipe's
    training settings (dropout, backbone dropout)."""
    prompts = source.prompts
    if len(prompts) != 1:
        raise PtuningError(f"--init-from {recipe.init_from} holds {len(prompts)} prompts; start from a run with one")
    saved = next(iter(prompts.values()))
    if saved.method != "deep" or recipe.prompt.method != "deep":
        raise PtuningError(f"--init-from starts a deep prompt from a deep prompt; {recipe.init_from} is {saved.method}")
    started = dataclasses.replace(
        saved, reparam=None, dropout=recipe.prompt.dropout, backbone_dropout=recipe.prompt.backbone_dropout
    )
    asked = dataclasses.replace(recipe.prompt, reparam=None)
    differences = [
        f"{item.name} {getattr(started, item.name)!r} (the recipe says {getattr(asked, item.name)!r})"
        for item in dataclasses.fields(PromptConfig)
        if getattr(started, item.name) != getattr(asked, item.name)
    ]
    if differences:
        logger.warning("--init-from %s: the prompt keeps its saved shape: %s", recipe.init_from, ", ".join(differences))
    return started


def _copy_from(model: PromptedModel, source: str, runs: list[TaskRun]) -> None:
    """Load the saved prompt into the model's, and each task's head where the source has a task of that name with
    the same labels (its head then starts trained)."""
    saved = PromptedModel.from_pretrained(source)
    with torch.no_grad():
        model.prompts[runs[0].name].table.copy_(next(iter(saved.prompts.values())).folded_table())
        for run in runs:
            entry = saved.tasks.get(run.name)
            same_head = entry is not None and entry.head == model.tasks[run.name].head
            if same_head and entry.labels == run.labels and run.name in saved.heads:
                model.heads[run.name].load_state_dict(saved.heads[run.name].state_dict())
                logger.info("%s: head from %s", run.name, source)
    logger.info("prompt from %s", source)
