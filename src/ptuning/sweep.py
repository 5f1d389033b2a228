"""``ptuning sweep``: search recipe settings with Optuna, selecting on validation only, never on test.

Each trial trains the base recipe with the searched keys set by the trial, into ``OUTPUT/trials/NUMBER/``; its value
is the run's best-epoch validation score (the mean of the tasks' primary metrics), reported after every epoch so
that the pruner can stop a poor trial early. The study lives in ``--storage`` (SQLite in OUTPUT by default; any
SQLAlchemy URL lets workers on several machines share it): rerunning with more ``--trials`` continues it, and the
trials of a killed sweep are failed by their missing heartbeat and run again.
"""

from __future__ import annotations

import csv
import logging
import statistics
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from .errors import PtuningError
from .recipe import Recipe
from .train import train

logger = logging.getLogger("ptuning")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUN_CONTROL = {"output", "overwrite", "resume", "save_steps"}  # set per trial, never searched or written


@dataclass(frozen=True)
class Search:
    """One searched recipe key: a range (``low``/``high``, on a log scale with ``log``) or ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


def _value(text: str) -> Any:
    """A value as a recipe holds it: 16 an int, 1e-2 a float, none nothing, anything else a string."""
    value = yaml.safe_load(text)
    return None if value == "none" else value


def parse_search(text: str) -> Search:
    """``NAME=LOW:HIGH[:log]`` (a range) or ``NAME=a,b,c`` (choices), NAME any recipe key."""
    name, separator, spec = text.partition("=")
    key = name.strip().replace("-", "_")
    expected = "expected NAME=LOW:HIGH[:log] or NAME=a,b,c"
    if not separator or not key or not spec:
        raise PtuningError(f"--search {text!r}: {expected}")
    keys = Recipe.keys()
    if key not in keys or key in RUN_CONTROL:
        known = ", ".join(sorted(set(keys) - RUN_CONTROL))
        raise PtuningError(f"--search {text!r}: {name!r} is not a recipe key to search; known: {known}")
    if ":" not in spec:
        return Search(key, choices=tuple(_value(part) for part in spec.split(",")))
    parts = spec.split(":")
    bounds = [_value(part) for part in parts[:2]]
    if (
        len(parts) not in (2, 3)
        or (len(parts) == 3 and parts[2] != "log")
        or not all(isinstance(bound, int | float) and not isinstance(bound, bool) for bound in bounds)
    ):
        raise PtuningError(f"--search {text!r}: {expected}")
    low, high = bounds
    if low >= high or (len(parts) == 3 and low <= 0):
        raise PtuningError(f"--search {text!r}: needs LOW < HIGH (and LOW > 0 on a log scale)")
    return Search(key, low, high, log=len(parts) == 3)


def validation_score(metrics: dict[str, Any]) -> float:
    """The run's best-epoch validation score: its primary metric, or the mean of its tasks'."""
    results = metrics.get("tasks") or {"": metrics}
    scores = [result["validation"].get(result["primary_metric"]) for result in results.values()]
    if any(score is None for score in scores):
        raise PtuningError("a sweep selects on validation: give --validation, or a dataset that has a validation split")
    return statistics.mean(scores)


def flat_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe's keys as a YAML recipe writes them (flat), leaving out what equals the default."""
    default, values = Recipe(), {}
    for key, (field, inner) in Recipe.keys().items():
        value = getattr(recipe, field) if inner is None else getattr(recipe.prompt, inner)
        standard = getattr(default, field) if inner is None else getattr(default.prompt, inner)
        if key not in RUN_CONTROL and value != standard:
            values[key] = value
    return values


def _storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage whose running trials beat: a killed worker's trials are failed after the grace period and
    run again."""
    with warnings.catch_warnings():  # Optuna calls heartbeats experimental; they are what resumes a killed sweep
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=30, grace_period=120, heartbeat_stale_trial_callback=retry
        )


def sweep(
    base: Recipe,
    searches: list[Search],
    trials: int,
    storage: str | None = None,
    study_name: str = "ptuning",
    pruning: bool = True,
    jobs: int = 1,
    worker: list[str] | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``trials`` finished ones (completed or pruned), in this process and
    ``jobs - 1`` more running the ``worker`` command on the same study; write the results."""
    if jobs > 1 and worker is None:
        raise PtuningError("more than one job needs the command its worker processes run")
    output = Path(base.output)
    output.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(output / 'sweep.db').resolve()}"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if pruning else optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=study_name,
        storage=_storage(url),
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=pruner,
    )
    base_values = {key: value for key, value in base.to_dict().items() if key not in RUN_CONTROL}

    def objective(trial: optuna.Trial) -> float:
        values = {search.key: search.suggest(trial) for search in searches}
        folder = output / "trials" / str(trial.number)
        settings = {**base_values, **values, "output": str(folder), "overwrite": True}
        recipe = Recipe.from_dict(settings, f"trial {trial.number}")
        trial.set_user_attr("run", str(folder))

        def report(step: int, score: float) -> None:
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {score:.2f} at step {step}")

        return validation_score(train(recipe, on_validation=report))

    finished = sum(trial.state in FINISHED for trial in study.trials)
    if finished < trials:
        logger.info("study %r holds %d finished trials; running %d more", study_name, finished, trials - finished)
        storage_flags = ["--storage", url, "--study-name", study_name]
        workers = [subprocess.Popen([*worker, *storage_flags]) for _ in range(jobs - 1)] if worker else []
        # every process stops once the study holds enough finished trials (running ones still finish)
        enough = optuna.study.MaxTrialsCallback(trials, states=FINISHED)
        study.optimize(objective, callbacks=[enough])
        failed = [process.args for process in workers if process.wait() != 0]
        if failed:
            raise PtuningError(f"{len(failed)} of the sweep's worker processes failed (their errors are above)")
    write_results(study, searches, base, output)
    return study


def write_results(study: optuna.Study, searches: list[Search], base: Recipe, output: Path) -> None:
    """``trials.csv`` (one row a trial), ``best.yaml`` (the best trial's recipe, for ``ptuning train --config``)
    and ``sweep.png`` (the validation score against each searched key)."""
    keys = [search.key for search in searches]
    with (output / "trials.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", "validation", *keys, "seconds", "run"])
        for trial in study.trials:
            ended = trial.datetime_complete
            seconds = (ended - trial.datetime_start).total_seconds() if ended else ""
            searched = [trial.params.get(key, "") for key in keys]
            run = trial.user_attrs.get("run", "")
            writer.writerow([trial.number, trial.state.name, trial.value, *searched, seconds, run])
    completed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        return
    best = study.best_trial
    values = {key: value for key, value in base.to_dict().items() if key not in RUN_CONTROL}
    recipe = Recipe.from_dict({**values, **best.params}, "best trial")
    header = f"# best of study {study.study_name!r}: trial {best.number}, validation {best.value:.2f} (never test)\n"
    settings = {**flat_recipe(recipe), "output": str(output / "best")}
    (output / "best.yaml").write_text(header + yaml.safe_dump(settings, sort_keys=False))
    _plot(completed, searches, output / "sweep.png")


def _plot(completed: list[optuna.trial.FrozenTrial], searches: list[Search], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(searches), figsize=(4 * len(searches), 3.2), squeeze=False)
    for axis, search in zip(axes[0], searches, strict=True):
        points = [(trial.params[search.key], trial.value) for trial in completed if search.key in trial.params]
        labels = [str(value) for value, _ in points] if search.choices is not None else None
        axis.scatter(labels or [value for value, _ in points], [score for _, score in points])
        if search.log:
            axis.set_xscale("log")
        axis.set_xlabel(search.key)
        axis.set_ylabel("validation")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summary(study: optuna.Study, output: Path) -> str:
    states = [trial.state for trial in study.trials]
    counts = ", ".join(f"{states.count(state)} {state.name.lower()}" for state in dict.fromkeys(states))
    lines = [f"study {study.study_name!r}: {len(states)} trials ({counts})"]
    if any(state == optuna.trial.TrialState.COMPLETE for state in states):
        best = study.best_trial
        lines.append(f"best: trial {best.number}, validation {best.value:.2f}, {best.params}")
        lines.append(f"recipe: {output / 'best.yaml'} (ptuning train --config); table: {output / 'trials.csv'}")
    return "\n".join(lines)
