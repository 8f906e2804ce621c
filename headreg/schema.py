"""A small declarative schema for JSON read from files (bundle manifests, saved-model configs).

A check is a callable ``check(value, path)`` that raises :class:`Invalid` naming the field's dotted path.
Schemas are plain data built from these constructors, so a new field or format version is one entry::

    SCHEMA = obj({"name": string(), "max_length": integer(1, None), "labels": mapping(index_key(), string())},
                 required=("name",), extra=True)
    SCHEMA(json.loads(text), "")       # raises Invalid("max_length", "must be an integer >= 1, got -5")

Torch- and numpy-free.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable

Check = Callable[[Any, str], None]


class Invalid(ValueError):
    """A field that does not fit its schema; ``field`` is its dotted path, ``message`` says what was expected."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field or "(top level)", problem
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"field {self.field!r} {self.problem}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None) -> Check:
    def check(value: Any, path: str) -> None:
        if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join(b for b in (f">= {low}" if low is not None else "", f"<= {high}" if high is not None else "") if b)
            raise Invalid(path, f"must be an integer{' ' + bounds if bounds else ''}, got {_shown(value)}")

    return check


def number(low: float | None = None, high: float | None = None) -> Check:
    def check(value: Any, path: str) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (low is not None and value < low) or (high is not None and value > high):
            bounds = f" in [{low}, {high}]" if low is not None and high is not None else (f" >= {low}" if low is not None else "")
            raise Invalid(path, f"must be a finite number{bounds}, got {_shown(value)}")

    return check


def boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise Invalid(path, f"must be true or false, got {_shown(value)}")


def null(value: Any, path: str) -> None:
    if value is not None:
        raise Invalid(path, f"must be null, got {_shown(value)}")


def string(max_len: int = 1 << 16) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise Invalid(path, f"must be a string, got {type(value).__name__} {_shown(value)}")
        if len(value) > max_len:
            raise Invalid(path, f"must be at most {max_len} characters, got {len(value)}")

    return check


def matches(pattern: str, description: str) -> Check:
    compiled = re.compile(pattern)

    def check(value: Any, path: str) -> None:
        if not isinstance(value, str) or not compiled.match(value):
            raise Invalid(path, f"must be {description}, got {_shown(value)}")

    return check


def one_of(*choices: Any) -> Check:
    def check(value: Any, path: str) -> None:
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            raise Invalid(path, f"must be one of {', '.join(map(repr, choices))}, got {_shown(value)}")

    return check


def optional(inner: Check) -> Check:
    def check(value: Any, path: str) -> None:
        if value is not None:
            inner(value, path)

    return check


def any_of(*checks: Check) -> Check:
    def check(value: Any, path: str) -> None:
        problems = []
        for candidate in checks:
            try:
                candidate(value, path)
                return
            except Invalid as exc:
                problems.append(exc.problem)
        raise Invalid(path, " or ".join(problems))

    return check


def index_key(limit: int) -> Check:
    """A JSON object key that is a non-negative decimal integer below ``limit`` ("0", "1", ...)."""

    def check(value: Any, path: str) -> None:
        if not isinstance(value, str) or not re.fullmatch(r"0|[1-9][0-9]{0,8}", value) or int(value) >= limit:
            raise Invalid(path, f"keys must be label ids 0, 1, 2, ..., got {_shown(value)}")

    return check


def relative_path_problem(value: Any) -> str | None:
    """Why ``value`` is not a plain relative path inside a directory, or None."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {_shown(value)}"
    if "\x00" in value or "\\" in value or len(value) > 1024:
        return "must be a plain relative path"
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        return "must be a path relative to the bundle, not an absolute path"
    if any(part == ".." for part in value.split("/")):
        return "must not contain '..'"
    return None


def relative_path(value: Any, path: str) -> None:
    problem = relative_path_problem(value)
    if problem:
        raise Invalid(path, problem)


def sequence(item: Check, *, min_items: int = 0, max_items: int = 1 << 20) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise Invalid(path, f"must be a list, got {type(value).__name__} {_shown(value)}")
        if not min_items <= len(value) <= max_items:
            raise Invalid(path, f"must have {min_items} to {max_items} items, got {len(value)}")
        for index, element in enumerate(value):
            item(element, _join(path, index))

    return check


def unique_list(item: Check, *, min_items: int = 0, max_items: int = 1 << 20) -> Check:
    inner = sequence(item, min_items=min_items, max_items=max_items)

    def check(value: Any, path: str) -> None:
        inner(value, path)
        if len(set(value)) != len(value):
            raise Invalid(path, f"must not repeat items, got {_shown(value)}")

    return check


def mapping(key: Check, value: Check, *, min_items: int = 0, max_items: int = 1 << 20) -> Check:
    def check(data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise Invalid(path, f"must be an object, got {type(data).__name__} {_shown(data)}")
        if not min_items <= len(data) <= max_items:
            raise Invalid(path, f"must have {min_items} to {max_items} entries, got {len(data)}")
        for name, element in data.items():
            key(name, _join(path, name))
            value(element, _join(path, name))

    return check


def obj(fields: dict[str, Check], *, required: Iterable[str] = (), extra: bool = False) -> Check:
    """An object whose listed fields must fit their checks; ``extra`` allows fields the schema does not list."""
    required = tuple(required)

    def check(data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise Invalid(path, f"must be an object, got {type(data).__name__} {_shown(data)}")
        for name in required:
            if name not in data:
                raise Invalid(_join(path, name), "is missing")
        if not extra:
            unknown = sorted(set(data) - set(fields))
            if unknown:
                raise Invalid(_join(path, unknown[0]), f"is not a known field (known: {', '.join(sorted(fields))})")
        for name, field_check in fields.items():
            if name in data:
                field_check(data[name], _join(path, name))

    return check
