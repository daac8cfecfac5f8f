"""JSON Schemas (draft 2020-12) of the files mlipdoe writes, shipped as package data.

- ``design-record.schema.json``: the design record ``design.json`` (see :mod:`mlipdoe.design`)
- ``report.schema.json``: the assessment report ``report.json`` (see :mod:`mlipdoe.assess`)

:func:`check` validates a document and turns the first violation into one line naming
the offending field.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files

from ..exceptions import InputError

SCHEMAS = {"design-record": "design-record.schema.json", "report": "report.schema.json"}


def load(name: str) -> dict:
    """The schema ``name`` (a key of :data:`SCHEMAS`) as a dict (a fresh copy)."""
    return json.loads(json.dumps(_load(name)))


@cache
def _load(name: str) -> dict:
    if name not in SCHEMAS:
        raise KeyError(f"unknown schema {name!r} (available: {', '.join(SCHEMAS)})")
    return json.loads(files(__name__).joinpath(SCHEMAS[name]).read_text(encoding="utf-8"))


@cache
def validator(name: str):
    """A ``jsonschema.Draft202012Validator`` for the schema ``name`` (the schema itself checked)."""
    from jsonschema import Draft202012Validator

    schema = _load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def check(instance, name: str, what: str) -> None:
    """Raise :class:`InputError` with one line ``"<what>: <problem>"`` if ``instance``
    violates the schema ``name``; return None otherwise."""
    from jsonschema.exceptions import best_match

    error = best_match(validator(name).iter_errors(instance))
    if error is not None:
        raise InputError(f"{what}: {describe(error)}")


def describe(error) -> str:
    """One line naming the field of a ``jsonschema.ValidationError`` and what is wrong with it."""
    where = field_path(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        names = ", ".join(repr(_join(where, k)) for k in missing)
        return f"missing required field{'s' if len(missing) > 1 else ''} {names}"
    label = f"field {where!r}" if where else "the document"
    if error.validator == "type":
        allowed = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{label} must be of type {' or '.join(allowed)}, got {json_type(error.instance)}"
    if error.validator == "const":
        return f"{label} must be {json.dumps(error.validator_value)}, got {_short(error.instance)}"
    if error.validator == "enum":
        return (f"{label} must be one of {', '.join(json.dumps(v) for v in error.validator_value)}, "
                f"got {_short(error.instance)}")
    message = " ".join(error.message.split())
    return f"{label}: {message if len(message) <= 160 else message[:157] + '...'}"


def field_path(path) -> str:
    """``budget.kind``, ``selected[2]``; the empty string for the document itself."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def json_type(value) -> str:
    """The JSON type name of a Python value parsed from JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value, limit: int = 60) -> str:
    text = " ".join(json.dumps(value, default=str).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["SCHEMAS", "check", "describe", "field_path", "json_type", "load", "validator"]
