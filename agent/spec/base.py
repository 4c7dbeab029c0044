"""The base of every REST JSON model: camelCase aliases, strict unknown-field checks with a
"did you mean", strict JSON types, case-insensitive enums, Batch durations.

Types are strict (pydantic strict mode): the service wants JSON booleans, integers and strings,
so ``"true"``, ``"2"``, ``1.0`` or ``5`` for a string are errors, not coerced. Integers are
int32, as on the REST page.

Enum values are compared case-insensitively on input (``TaskSuccess``, ``taskSuccess`` and
``tasksuccess`` are one value: real clients send all three) and kept in the canonical spelling
the REST API uses, so a model written back out is what Batch itself would return.

An explicit ``null`` for an optional field means the field is not set (the SDKs send nulls for
unset fields), so the field's service default applies: ``retentionTime: null`` is 7 days, not
unlimited. Only the unlimited duration text means unlimited.
"""

from __future__ import annotations

import difflib
import functools
from datetime import timedelta
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from agent.spec.durations import DurationError, format_duration, parse_duration


class BatchModel(BaseModel):
    """A Batch REST object. Unknown fields are rejected, naming the closest known field.

    ``defer_build``: a model's validator is built on its first use, so a run of one task does not
    pay for the job, job manager and collection models (a fifth of the CLI's start-up).
    """

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=False, validate_by_alias=True, frozen=True, extra="forbid",
        strict=True, str_strip_whitespace=False, hide_input_in_errors=True, defer_build=True,
    )
    # Keys that may appear but mean nothing here (read-only fields of a GET dump, ...).
    ignored_fields: ClassVar[frozenset[str]] = frozenset()
    # Keys that are not fields here but are elsewhere: the hint replaces the "did you mean".
    field_hints: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored_and_nulls(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        optional = _optional_keys(cls)
        if cls.ignored_fields & data.keys() or any(v is None and k in optional for k, v in data.items()):
            return {k: v for k, v in data.items()
                    if k not in cls.ignored_fields and not (v is None and k in optional)}
        return data

    @classmethod
    def known_fields(cls) -> list[str]:
        return sorted(f.alias or name for name, f in cls.model_fields.items())


@functools.cache
def _optional_keys(model: type[BatchModel]) -> frozenset[str]:
    """The JSON keys (aliases and names) of the fields that have a default."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        if not field.is_required():
            keys.update({name, field.alias or name})
    return frozenset(keys)


# A REST ``integer (int32)``.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]


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


# A duration; None means unlimited. JSON null never reaches it: a null is "not set" (the default).
Duration = Annotated[
    timedelta | None,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
]
