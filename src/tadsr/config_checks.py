"""Type and range checks of config values, for the frozen config dataclasses and the files that fill them.

Every value that comes from a file (a model file's metadata, a YAML config, a checkpoint) or a ``key=value``
override is checked against its field's type (``check_type``, called by ``tadsr.config.from_dict``) and range
(``check_ranges``, called by each config's ``__post_init__``), before anything is built from it; a bad one is a
``ConfigError`` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import json
import math
import types
import typing
from typing import Any

from tadsr.errors import ConfigError

Bounds = dict[str, tuple[float | None, float | None]]


def is_int(value: Any) -> bool:
    """An integer as JSON gives one (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An integer or a float as JSON gives one (``true`` is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def shown(value: Any) -> str:
    """A value from a file as a short JSON text for a message (at most 60 characters)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_allowed(args[0])}s"
        return f"a list of {len(args)}: " + ", ".join(_allowed(a) for a in args)
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _number(value: Any, kind: type) -> Any:
    """A number written as a string (YAML reads ``5e-5`` as one) as that number; anything else unchanged."""
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            return value
    return value


def check_type(key: str, hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` asks (lists become tuples, integers are accepted for floats); ConfigError
    naming ``key`` otherwise. Handles int, float, bool, str, Literal, tuple[X, ...] and tuple[X, Y]."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    ok = True
    if origin is typing.Literal:
        ok = value in args and type(value) is type(next(a for a in args if a == value))
    elif origin is tuple:
        if not isinstance(value, list | tuple):
            ok = False
        else:
            kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
            if len(kinds) != len(value):
                ok = False
            else:
                return tuple(check_type(f"{key}[{i}]", k, v) for i, (k, v) in enumerate(zip(kinds, value,
                                                                                            strict=True)))
    elif origin in (typing.Union, types.UnionType):
        return value  # nested config unions are resolved by the caller
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        value = _number(value, int)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        value = _number(value, float)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key} = {value!r}: needs {_allowed(hint)}")
    return value


def check_ranges(config: Any, section: str, bounds: Bounds) -> None:
    """ConfigError unless every ``bounds`` field of ``config`` (a number, or each number of a tuple) lies in
    [low, high]; ``None`` leaves a side open."""
    for name, (low, high) in bounds.items():
        value = getattr(config, name)
        for item in value if isinstance(value, tuple) else (value,):
            if (low is not None and item < low) or (high is not None and item > high):
                allowed = (f">= {low}" if high is None else f"<= {high}" if low is None else
                           f"between {low} and {high}")
                raise ConfigError(f"{section}.{name} = {value!r}: needs {allowed}")
