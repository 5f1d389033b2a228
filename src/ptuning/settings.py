"""Settings declared once: a dataclass field carries its help, flag, choices and check, and these helpers derive the
type and range checks from it (the command line derives its flags from the same fields)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from .errors import PtuningError

Check = Callable[[Any], str | None]


def at_least(minimum: int) -> Check:
    return lambda value: None if value >= minimum else f"must be at least {minimum}"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def share(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def setting(
    default: Any,
    help: str,
    *,
    key: str | None = None,
    choices: tuple | None = None,
    check: Check | None = None,
    default_help: str | None = None,
    cli: bool = True,
    run_control: bool = False,
    per_task: bool = False,
    nullable: bool = False,
) -> Any:
    """A field with what its flag shows: help, choices, a check of its value, and ``key``, its name in recipes and
    flags when the field's own name is too short to say what it sets (``length`` -> ``prompt_length``). ``cli``:
    whether it is a flag too, or a recipe key only. ``run_control``: it says how a run is carried out, not what it
    trains (where it writes, whether it saves or continues), so a resumed run or a sweep's trial may set it apart.
    ``per_task``: each task of a multi-task recipe sets it for itself (its data). ``nullable``: None is a value of
    its own, not only "not given" (no reparameterization), so its flag takes ``none`` (or ``null``, or nothing)."""
    metadata = {
        "help": help,
        "key": key,
        "choices": choices,
        "check": check,
        "default_help": default_help,
        "cli": cli,
        "run_control": run_control,
        "per_task": per_task,
        "nullable": nullable,
    }
    return dataclasses.field(default=default, metadata=metadata)


def key_of(item: dataclasses.Field) -> str:
    """The field's name in recipes (YAML keys) and, with dashes, on the command line."""
    return item.metadata.get("key") or item.name


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def named(key: str) -> str:
    return f"{key} ({flag_name(key)})"


def declared_fields(instance_or_class: Any) -> list[dataclasses.Field]:
    """The fields that are settings (declared with :func:`setting`)."""
    return [item for item in dataclasses.fields(instance_or_class) if "help" in item.metadata]


def check_settings(instance: Any) -> None:
    """Coerce each setting to its declared type (ints for floats; YAML's 1e-2 string) and check its range and
    choices, naming the recipe key and flag on error."""
    hints = typing.get_type_hints(type(instance))
    for item in declared_fields(instance):
        key = key_of(item)
        value = typed(key, hints[item.name], getattr(instance, item.name))
        setattr(instance, item.name, value)
        if value is None:
            continue
        choices, check = item.metadata.get("choices"), item.metadata.get("check")
        if choices and value not in choices:
            raise PtuningError(f"{named(key)} is {value!r}; expected one of: {', '.join(map(str, choices))}")
        problem = check(value) if check else None
        if problem:
            raise PtuningError(f"{named(key)} {problem}, got {value!r}")


def value_type(hint: Any) -> Any:
    """The type a field holds, without ``| None``."""
    return next(arg for arg in (typing.get_args(hint) or (hint,)) if arg is not type(None))


def typed(key: str, hint: Any, value: Any) -> Any:
    """``value`` as the field's type (ints accepted for floats), or an error naming the key and the type."""
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise PtuningError(f"{named(key)} needs a value")
    wanted = value_type(hint)
    origin = typing.get_origin(wanted) or wanted
    if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if origin is float and isinstance(value, str):  # YAML reads 1e-2 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    item = (typing.get_args(wanted) or (Any,))[0]
    item_type = typing.get_origin(item) or item
    if origin is list and isinstance(value, list) and all(type(entry) is item_type for entry in value):
        return value
    if origin is not list and type(value) is origin:
        return value
    expected = (
        f"a list of {'integers' if item_type is int else 'mappings'}" if origin is list else f"a {origin.__name__}"
    )
    raise PtuningError(f"{named(key)} must be {expected}, got {value!r}")
