"""Typed dataclass configs from plain mappings (YAML, JSON, ``--set``): one coercion for all.

``from_mapping(cls, mapping, path)`` builds the dataclass ``cls`` from a mapping: an unknown key,
a value of the wrong type or a value its ``__post_init__`` refuses fails with a ``ValueError``
whose message starts with the full key path (``model.serpent.rates: expected ...``).
``check_fields(obj)`` applies the same coercion to an instance built directly in Python (a
dataclass calls it from ``__post_init__``), so a config is checked the same way however it was
made. ``to_mapping(obj)`` is the JSON-friendly inverse (tuples become lists).

Supported annotations: ``int``, ``float`` (ints accepted; YAML's ``1e-3`` string too),
``bool``, ``str``, ``X | None`` and other unions, ``tuple[X, Y]``, ``tuple[X, ...]``,
``dict[...]``, nested dataclasses, and ``Any``. A field may describe what it expects with
``field(metadata={"expected": "a list of rates in (0, 1]"})``; that text is used in the message
when the value has the wrong type.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

__all__ = ["check_fields", "check_minimums", "coerce", "from_mapping", "prefix_error", "to_mapping"]

_NAMES = {int: "an integer", float: "a float", bool: "a boolean", str: "a string", dict: "a mapping"}


def prefix_error(path: str, exc: ValueError) -> ValueError:
    """``exc`` with ``path.`` put before its message, unless the message already starts with it."""
    msg = str(exc)
    if not path or msg.startswith(path + ".") or msg.startswith(path + ":"):
        return exc
    return ValueError(f"{path}.{msg}")


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} numbers"
    if origin in (typing.Union, types.UnionType):
        parts = [_expected(a) for a in typing.get_args(tp) if a is not type(None)]
        none = " or null" if type(None) in typing.get_args(tp) else ""
        return " or ".join(parts) + none
    if origin is dict:
        return "a mapping"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce_scalar(value: Any, tp: Any, path: str) -> Any:
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{path}: expected a float, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{path}: expected a finite float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp in (bool, str) and not isinstance(value, tp):
        raise ValueError(f"{path}: expected {_NAMES[tp]}, got {value!r}")
    return value


def coerce(value: Any, tp: Any, path: str, expected: str | None = None) -> Any:
    """``value`` checked against the annotation ``tp`` and converted (list -> tuple, int -> float).

    Raises ValueError ``"{path}: expected {what}, got {value!r}"``; ``expected`` overrides
    ``what`` for the outermost type.
    """
    try:
        return _coerce(value, tp, path)
    except ValueError as exc:
        if expected is None or not str(exc).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: expected {expected}, got {value!r}") from None


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ValueError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ValueError(f"{path}: expected {_expected(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, list | tuple) or (not variadic and len(value) != len(args)):
            raise ValueError(f"{path}: expected {_expected(tp)}, got {value!r}")
        kinds = [args[0]] * len(value) if variadic else args
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, kinds, strict=True)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_mapping(tp, value, path)
    return _coerce_scalar(value, tp, path)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_mapping(cls: type, mapping: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``mapping``; every error names ``path.key``."""
    where = path or "config"
    if not isinstance(mapping, dict):
        raise ValueError(f"{where}: expected a mapping, got {mapping!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    dot = f"{path}." if path else ""
    if unknown:
        raise ValueError(f"{dot}{unknown[0]}: unknown key, expected one of {', '.join(sorted(fields))}")
    hints = _hints(cls)
    kwargs = {
        k: coerce(v, hints[k], f"{dot}{k}", fields[k].metadata.get("expected")) for k, v in mapping.items()
    }
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise prefix_error(path, exc) from None


def check_fields(obj: Any) -> None:
    """Coerce every field of the dataclass instance ``obj`` in place (errors name the field)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        object.__setattr__(obj, f.name, coerce(value, hints[f.name], f.name, f.metadata.get("expected")))


def to_mapping(obj: Any) -> Any:
    """A dataclass (or container of them) as plain JSON-friendly values; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_mapping(v) for v in obj]
    return obj


def check_minimums(obj: Any, prefix: str, minimums: dict[str, float]) -> None:
    """Each field ``name`` of ``obj`` is None or at least ``minimums[name]``; the error names
    ``{prefix}{name}`` (``"a positive integer"`` for integers that must be >= 1)."""
    for name, low in minimums.items():
        value = getattr(obj, name)
        if value is not None and value < low:
            what = "a positive integer" if low == 1 and isinstance(value, int) else f"a number >= {low}"
            raise ValueError(f"{prefix}{name}: expected {what}, got {value!r}")
