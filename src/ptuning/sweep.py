"""``ptuning sweep``: search recipe settings with Optuna, selecting on validation only, never on test.

Each trial trains the base recipe with the searched keys set by the trial, into ``OUTPUT/trials/NUMBER/``; its value
is the run's best-epoch validation score (the mean of the tasks' primary metrics), reported after every epoch so
that the pruner can stop a poor trial early. The study lives in ``--storage`` (SQLite in OUTPUT by default; any
SQLAlchemy URL lets workers on several machines share it) and records the recipe and searches that define it:
rerunning the same sweep with more ``--trials`` continues it, another sweep is refused (``--overwrite`` starts over),
and the trials of a killed sweep are failed by their missing heartbeat and run again.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import shutil
import statistics
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import yaml

from .errors import PtuningError
from .recipe import Recipe
from .training.run import train
from .training.run_metrics import task_metrics

logger = logging.getLogger("ptuning")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUN_CONTROL = Recipe.run_control_keys()  # set per trial, never searched or written
DEFINITION = "ptuning_sweep"  # the study's user attribute holding what defines it: the recipe and the searches
ChoiceValue = type(None) | bool | int | float | str  # what Optuna stores as a categorical choice


@dataclass(frozen=True)
class Search:
    """One searched recipe key: a range (``low``/``high``, on a log scale with ``log``) or ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def values(self) -> tuple[Any, ...]:
        """The values a trial may take that bound the others: every choice, or the two ends of the range."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def spec(self) -> str:
        """The search as ``--search`` writes it (``prompt_length=8,16``, ``lr=0.001:0.1:log``)."""
        if self.choices is not None:
            return f"{self.key}={','.join(_shown(choice) for choice in self.choices)}"
        return f"{self.key}={self.low}:{self.high}{':log' if self.log else ''}"

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


def _value(text: str) -> Any:
    """A value as a recipe holds it: 16 an int, 1e-2 a float, none nothing, anything else a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:  # "[1": a string, which the recipe's own check then names
        return text
    return None if value == "none" else value


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


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
        choices = tuple(_value(part) for part in spec.split(","))
        odd = [choice for choice in choices if not isinstance(choice, ChoiceValue)]
        if odd:
            raise PtuningError(f"--search {text!r}: a choice is a number, a word or none, not {odd[0]!r}")
        return Search(key, choices=choices)
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


NO_VALIDATION = "a sweep selects on validation: give --validation, or a dataset that has a validation split"


def validation_score(metrics: dict[str, Any]) -> float:
    """The run's best-epoch validation score: its primary metric, or the mean of its tasks'."""
    results = task_metrics(metrics)
    scores = [result["validation"].get(result["primary_metric"]) for result in results.values()]
    if any(score is None for score in scores):
        raise PtuningError(NO_VALIDATION)
    return statistics.mean(scores)


def recipe_keys(recipe: Recipe) -> dict[str, Any]:
    """Every key of the recipe but the run controls, flat, as a YAML recipe names them."""
    return {
        key: getattr(recipe, field) if inner is None else getattr(recipe.prompt, inner)
        for key, (field, inner) in Recipe.keys().items()
        if key not in RUN_CONTROL
    }


def flat_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe's keys as a YAML recipe writes them (flat), leaving out what equals the default."""
    default = recipe_keys(Recipe())
    return {key: value for key, value in recipe_keys(recipe).items() if value != default[key]}


def _base_values(base: Recipe) -> dict[str, Any]:
    """The base recipe as ``Recipe.from_dict`` takes it, without what each trial sets for itself."""
    return {key: value for key, value in base.to_dict().items() if key not in RUN_CONTROL}


def check_sweep(base: Recipe, searches: list[Search]) -> None:
    """Refuse, before any study or file is made, what would fail trials: a key searched twice, a value a trial may
    take that the recipe's own checks refuse, a task without validation, and run controls a sweep cannot honour."""
    keys = [search.key for search in searches]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise PtuningError(f"--search {twice[0]} is given twice")
    if base.resume and base.overwrite:
        raise PtuningError("--resume continues the study in --output and --overwrite starts it over: give one")
    if base.save_steps is not None:
        raise PtuningError("--save-steps: a sweep's trials do not resume (a killed trial runs again from its start)")
    values = _base_values(base)
    # each value alone, then with each other search's (the recipe's checks relate two keys at most: method, reparam)
    for size in (1, 2):
        for group in itertools.combinations(searches, size):
            for chosen in itertools.product(*(search.values() for search in group)):
                settings = {search.key: value for search, value in zip(group, chosen, strict=True)}
                where = "--search " + ", ".join(f"{key}={_shown(value)}" for key, value in settings.items())
                Recipe.from_dict({**values, **settings}, where)
    for name, part in base.parts():
        if not part.dataset and not part.validation:
            raise PtuningError(f"{NO_VALIDATION} (task {name!r} has none)")


def definition(base: Recipe, searches: list[Search]) -> dict[str, Any]:
    """What defines a study, as JSON: the recipe's keys but the searched ones (each trial sets those) and the
    searches."""
    searched = {search.key for search in searches}
    recipe = {key: value for key, value in recipe_keys(base).items() if key not in searched}
    return json.loads(json.dumps({"recipe": recipe, "search": sorted(search.spec() for search in searches)}))


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """How a study's recorded definition and this sweep's differ (recipe keys searched by one are in the search)."""
    then, now = recorded["recipe"], current["recipe"]
    changed = [
        f"{key}: {then[key]!r} then, {now[key]!r} now" for key in sorted(set(then) & set(now)) if then[key] != now[key]
    ]
    if recorded["search"] != current["search"]:
        changed.append(f"--search: {' '.join(recorded['search'])} then, {' '.join(current['search'])} now")
    return changed


def _storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage whose running trials beat: a killed worker's trials are failed after the grace period and
    run again."""
    with warnings.catch_warnings():  # Optuna calls heartbeats experimental; they are what resumes a killed sweep
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=30, grace_period=120, heartbeat_stale_trial_callback=retry
            )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError) as error:  # said without the URL: it may hold a password
            reason = str(getattr(error, "orig", None) or error).splitlines()[0]
            raise PtuningError(f"the study storage cannot be opened: {reason}") from error


def open_study(
    base: Recipe, searches: list[Search], storage: str | None, name: str, pruning: bool
) -> tuple[optuna.Study, str]:
    """The study of this sweep and its storage URL: the stored one when it records the same recipe and searches (a
    continuation), else a new one in an ``--output`` that holds nothing else. ``--overwrite`` deletes the stored
    study and empties the folder first; ``--resume`` requires a study to continue."""
    output = Path(base.output)
    database = output / "sweep.db"
    url = storage or f"sqlite:///{database.resolve()}"
    where = "--storage" if storage else str(database)  # a storage URL may hold a password
    sampler = optuna.samplers.TPESampler(seed=base.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if pruning else optuna.pruners.NopPruner()
    current = definition(base, searches)
    stored = None
    if storage or database.is_file():  # opening SQLite storage makes its file: a missing one holds no study
        with contextlib.suppress(KeyError):  # no study of that name
            stored = optuna.load_study(study_name=name, storage=_storage(url), sampler=sampler, pruner=pruner)
    if stored is not None and not base.overwrite:
        _check_definition(stored, current, where)
        return stored, url
    if base.resume:
        raise PtuningError(f"--resume: {where} holds no study {name!r} to continue")
    if base.overwrite:
        if stored is not None:
            optuna.delete_study(study_name=name, storage=url)
        for path in output.iterdir() if output.is_dir() else ():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    elif output.is_dir() and any(output.iterdir()):
        raise PtuningError(
            f"--output {output} is not empty and {where} holds no study {name!r} (files of another sweep or run?); "
            "give --overwrite to start a sweep there, or another --output"
        )
    output.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name,
        storage=_storage(url),
        direction="maximize",
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    _check_definition(study, current, where)  # a worker on another machine may have made it meanwhile
    return study, url


def _check_definition(study: optuna.Study, current: dict[str, Any], where: str) -> None:
    """Record the definition in a new study; refuse a stored one that records another (or none, being older)."""
    recorded = study.user_attrs.get(DEFINITION)
    if recorded is None and not study.trials:
        study.set_user_attr(DEFINITION, current)
        return
    differences = (
        _differences(recorded, current) if recorded is not None else ["it records no recipe (an older ptuning made it)"]
    )
    if differences:
        raise PtuningError(
            f"study {study.study_name!r} in {where} is another sweep's ({'; '.join(differences)}): rerun that sweep "
            "to continue it, give --overwrite to start over, or another --output"
        )


class _UserErrorsPlain(logging.Filter):
    """Optuna logs a failed trial with its traceback; an error in the user's input is said once, plainly, by the
    command line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PtuningError):
            record.exc_info = None
        return True


USER_ERRORS_PLAIN = _UserErrorsPlain()


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
    check_sweep(base, searches)
    study, url = open_study(base, searches, storage, study_name, pruning)
    output = Path(base.output)
    base_values = _base_values(base)

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
        for handler in logging.getLogger("optuna").handlers:
            handler.addFilter(USER_ERRORS_PLAIN)
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
    recipe = Recipe.from_dict({**_base_values(base), **best.params}, "best trial")
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
