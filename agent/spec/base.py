"""The base of every REST JSON model: camelCase aliases, strict unknown-field checks with a
"did you mean", case-insensitive enums, Batch durations.

Enum values are compared case-insensitively on input (``TaskSuccess``, ``taskSuccess`` and
``tasksuccess`` are one value: real clients send all three) and kept in the canonical spelling
the REST API uses, so a model written back out is what Batch itself would return.
"""

from __future__ import annotations

import difflib
from datetime import timedelta
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from agent.spec.durations import DurationError, format_duration, parse_duration


class BatchModel(BaseModel):
    """A Batch REST object. Unknown fields are rejected, naming the closest known field."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid",
        str_strip_whitespace=False, hide_input_in_errors=True,
    )
    # Keys that may appear but mean nothing here (read-only fields of a GET dump, ...).
    ignored_fields: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.ignored_fields and cls.ignored_fields & data.keys():
            return {k: v for k, v in data.items() if k not in cls.ignored_fields}
        return data

    @classmethod
    def known_fields(cls) -> list[str]:
        return sorted(f.alias or name for name, f in cls.model_fields.items())


def did_you_mean(key: str, known: list[str]) -> str:
    """A hint for an unknown field: the closest known name, else the list of known names."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        close = [k for k in known if k.lower() == key.lower()]
    return f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(known)


def _enum_validator(canonical: tuple[str, ...]) -> BeforeValidator:
    lookup = {value.casefold(): value for value in canonical}

    def check(value: Any) -> Any:
        if isinstance(value, str) and value.casefold() in lookup:
            return lookup[value.casefold()]
        raise PydanticCustomError(
            "enum_value", "{got} is not allowed; use one of: {allowed} (any casing)",
            {"got": repr(value), "allowed": ", ".join(canonical)},
        )

    return BeforeValidator(check)


def one_of(*canonical: str) -> BeforeValidator:
    """For ``Annotated[str, one_of(...)]``: a string enum matched case-insensitively and stored
    in its canonical spelling."""
    return _enum_validator(canonical)


def _duration(value: Any) -> Any:
    if isinstance(value, timedelta) or value is None:
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("duration", "must be an ISO 8601 duration string such as 'PT1H30M'")
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise PydanticCustomError("duration", str(exc)) from exc


# A duration; None means unlimited.
Duration = Annotated[
    timedelta | None,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
]
