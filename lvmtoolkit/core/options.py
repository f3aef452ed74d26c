"""Declared, typed, validated options (for refiners and anything else with settings).

An options class is a dataclass whose fields are made with `option`; values given as
strings (from ``lvm ... -o key=value``) are converted to the field's type and checked
against its bounds and choices.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from typing import Any

from lvmtoolkit.errors import OptionError


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
) -> Any:
    """A dataclass field with a help text and validation rules.

    Args:
        default: The default value.
        help: One line for ``lvm refiners show``.
        choices: The allowed values, if only some are.
        minimum: Smallest allowed value (numbers).
        exclusive_minimum: ``minimum`` itself is not allowed.
        maximum: Largest allowed value (numbers), e.g. to bound what a value can make
            the tool allocate.
    """
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "choices": choices,
            "minimum": minimum,
            "exclusive_minimum": exclusive_minimum,
            "maximum": maximum,
        },
    )


def _convert(name: str, value: Any, kind: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise OptionError(f"option {name}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise OptionError(f"option {name}: expected {kind.__name__}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"option {name}: expected a finite number, got {value!r}")
        try:
            converted = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise OptionError(f"option {name}: expected {kind.__name__}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != int(value):
            raise OptionError(f"option {name}: expected an integer, got {value!r}")
        # float("inf"), float("nan") and float("1e400") all parse; none is a usable setting.
        if kind is float and not math.isfinite(converted):
            raise OptionError(f"option {name}: expected a finite number, got {value!r}")
        return converted
    if kind is str:
        return str(value)
    return value


def parse_options(options_class: type, values: dict[str, Any]) -> Any:
    """Build ``options_class`` from ``values`` (strings or typed), validating each.

    Raises:
        OptionError: Unknown name, wrong type, value out of range or not among the choices.
    """
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    hints = typing.get_type_hints(options_class)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise OptionError(
            f"unknown option {', '.join(unknown)}; options: {', '.join(sorted(fields))}"
        )
    parsed = {}
    for name, value in values.items():
        field = fields[name]
        value = _convert(name, value, hints[name])
        rules = field.metadata
        choices = rules.get("choices")
        if choices and value not in choices:
            raise OptionError(
                f"option {name}: {value!r} is not one of {', '.join(map(str, choices))}"
            )
        minimum = rules.get("minimum")
        if minimum is not None:
            too_small = value <= minimum if rules.get("exclusive_minimum") else value < minimum
            if too_small:
                relation = ">" if rules.get("exclusive_minimum") else ">="
                raise OptionError(f"option {name}: must be {relation} {minimum}, got {value}")
        maximum = rules.get("maximum")
        if maximum is not None and value > maximum:
            raise OptionError(f"option {name}: must be <= {maximum}, got {value}")
        parsed[name] = value
    return options_class(**parsed)


def describe_options(options_class: type) -> list[dict[str, Any]]:
    """One dict per option: name, type, default, help, choices, minimum."""
    hints = typing.get_type_hints(options_class)
    rows = []
    for field in dataclasses.fields(options_class):
        rows.append(
            {
                "name": field.name,
                "type": getattr(hints[field.name], "__name__", str(hints[field.name])),
                "default": field.default,
                "help": field.metadata.get("help", ""),
                "choices": list(field.metadata["choices"])
                if field.metadata.get("choices")
                else None,
                "minimum": field.metadata.get("minimum"),
                "exclusive_minimum": bool(field.metadata.get("exclusive_minimum")),
                "maximum": field.metadata.get("maximum"),
            }
        )
    return rows


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 6, 40, 40


def _short(value: Any) -> str:
    """A repr bounded in length and depth (configs may be hostile)."""
    return _REPR.repr(value)


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` (as read from JSON) is not of the annotated type ``hint``, or None.

    Understands what configs use: ``int`` (not bool, not 10.5), ``float`` (finite),
    ``bool``, ``str``, ``None``, unions, ``Literal``, ``tuple[T, ...]`` / ``list[T]``
    (a JSON list), fixed-length tuples and ``dict[str, T]``. Other annotations pass.

    Args:
        value: The value.
        hint: A type annotation (resolved, not a string).

    Returns:
        A short description of the mismatch, or None if ``value`` fits.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        problems = [type_problem(value, arm) for arm in args]
        return None if any(p is None for p in problems) else f"{_short(value)} is not {hint}"
    if origin is typing.Literal:
        allowed = ", ".join(map(repr, args))
        return None if value in args else f"{_short(value)} is not one of {allowed}"
    if hint is type(None) or hint is None:
        return None if value is None else f"{_short(value)} is not null"
    if hint is bool:
        return None if isinstance(value, bool) else f"{_short(value)} is not true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{_short(value)} is not an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok and math.isfinite(value) else f"{_short(value)} is not a finite number"
    if hint is str:
        return None if isinstance(value, str) else f"{_short(value)} is not a string"
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return f"{_short(value)} is not a list"
        if not args:
            return None
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return f"{_short(value)} does not have {len(args)} entries"
            items = list(zip(value, args, strict=True))
        else:
            items = [(item, args[0]) for item in value]
        for item, arm in items:
            problem = type_problem(item, arm)
            if problem is not None:
                return problem
        return None
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return f"{_short(value)} is not an object"
        for item in value.values():
            problem = type_problem(item, args[1]) if len(args) == 2 else None
            if problem is not None:
                return problem
        return None
    return None
