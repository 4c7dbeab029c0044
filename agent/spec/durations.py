"""ISO 8601 durations as the Batch service and its SDKs write them.

Accepted: ``PT1H30M`` (msrest / az CLI), ``PT01H30M00S`` (azure-batch 15.x), ``P7D``, ``P1W``,
fractional seconds up to 7 digits, and ``P`` / ``PT`` / ``P0D`` as zero (15.x writes a bare ``P``
for zero). ``P10675199DT2H48M5.4775807S`` (.NET ``TimeSpan.MaxValue``) and anything at least that
long means *unlimited*, returned as ``None``. Years and months are rejected: Batch durations
never use them and their length is ambiguous.
"""

from __future__ import annotations

import re
from datetime import timedelta

UNLIMITED_TEXT = "P10675199DT2H48M5.4775807S"
_UNLIMITED_DAYS = 10675199
_PATTERN = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:[.,]\d+)?)S)?)?$"
)


class DurationError(ValueError):
    """The text is not an ISO 8601 duration Batch accepts."""


def parse_duration(text: str) -> timedelta | None:
    """Parse ``text``; ``None`` means unlimited."""
    match = _PATTERN.match(text.strip().upper()) if isinstance(text, str) else None
    if match is None:
        raise DurationError(
            f"{text!r} is not an ISO 8601 duration; write e.g. 'PT1H30M', 'PT90S', 'P7D' "
            f"(or '{UNLIMITED_TEXT}' for unlimited)"
        )
    parts = match.groupdict()
    weeks, days, hours, minutes = (int(parts[k] or 0) for k in ("w", "d", "h", "m"))
    seconds = float((parts["s"] or "0").replace(",", "."))
    # Whole seconds in int arithmetic first: a huge field must mean unlimited, not overflow a float.
    whole = ((weeks * 7 + days) * 24 + hours) * 3600 + minutes * 60
    if whole >= _UNLIMITED_DAYS * 86400 or whole + seconds >= _UNLIMITED_DAYS * 86400:
        return None
    try:
        return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError as exc:  # pragma: no cover - guarded by the unlimited check above
        raise DurationError(f"{text!r} is too long") from exc


def format_duration(value: timedelta | None) -> str:
    """The shortest ISO 8601 form (``PT1H30M``, ``P7D``, ``PT0S``); ``None`` is unlimited."""
    if value is None:
        return UNLIMITED_TEXT
    total_us = value // timedelta(microseconds=1)  # exact; total_seconds() is a float and drops µs
    days, rest_us = divmod(total_us, 86_400_000_000)
    hours, rest_us = divmod(rest_us, 3_600_000_000)
    minutes, rest_us = divmod(rest_us, 60_000_000)
    seconds, micros = divmod(rest_us, 1_000_000)
    out = "P" + (f"{days}D" if days else "")
    time = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if micros:
        time += f"{seconds}.{micros:06d}".rstrip("0") + "S"
    elif seconds:
        time += f"{seconds}S"
    if time:
        out += "T" + time
    return out if out != "P" else "PT0S"
