"""Declared, typed, validated options (for refiners and anything else with settings).

An options class is a dataclass whose fields are made with :func:`option`; values given as
strings (from ``lvm ... -o key=value``) are converted to the field's type and checked
against its bounds and choices.
"""

from __future__ import annotations

import dataclasses
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
) -> Any:
    """A dataclass field with a help text and validation rules."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "choices": choices,
            "minimum": minimum,
            "exclusive_minimum": exclusive_minimum,
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
        try:
            converted = kind(value)
        except (TypeError, ValueError):
            raise OptionError(f"option {name}: expected {kind.__name__}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != int(value):
            raise OptionError(f"option {name}: expected an integer, got {value!r}")
        if kind is float and converted != converted:
            raise OptionError(f"option {name}: NaN is not allowed")
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
            }
        )
    return rows
