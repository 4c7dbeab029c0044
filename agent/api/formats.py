"""How values look on the wire in the local API's replies: durations, timestamps, HTTP dates, ETags.

One place, so every route writes the forms all three clients read (sdk-compat.md §1, §4a):

* durations: ``PT0S`` for zero (azure-batch 14.2/msrest cannot read a bare ``P``, the form 15.x
  itself writes), ``P7D``, ``PT1H30M``, and ``P10675199DT2H48M5.4775807S`` (.NET
  ``TimeSpan.MaxValue``) for unlimited. ``agent.spec.durations.format_duration`` already writes
  these; it is re-exported here so routes import wire formats from one module.
* JSON timestamps: RFC 3339 with 7 fractional digits and ``Z`` (``2025-07-01T12:00:00.0000000Z``),
  as the service writes them (``agent.status.format_time``).
* header dates (``Last-Modified``, ``ocp-creation-time``): RFC 1123 in GMT (``parse_http_date``
  reads them back, for ``ocp-date`` and ``DateTime'...'`` filters), what 15.x parses with
  ``deserialize_rfc`` and 14.2 with msrest.
* ETags: ``0x`` and the upper-case hex of a .NET tick count (100 ns since 0001-01-01), the
  service's own form (``0x8D3D623CE295629``). Built from a modification time plus a version
  counter, so two changes in one tick still get different ETags.

Nothing here parses a request (that is ``agent.api.auth`` for ``ocp-date`` and ``agent.spec`` for
bodies) or touches state.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

from agent.spec.durations import UNLIMITED_TEXT, format_duration
from agent.status import format_time

__all__ = ["UNLIMITED_TEXT", "entity_headers", "format_duration", "format_time", "http_date", "make_etag",
           "parse_http_date"]

_TICKS_AT_EPOCH = 621_355_968_000_000_000  # .NET ticks at 1970-01-01T00:00:00Z
_MICROSECOND = timedelta(microseconds=1)


def http_date(value: datetime) -> str:
    """RFC 1123 (``Tue, 01 Jul 2025 12:00:00 GMT``); a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return format_datetime(value.astimezone(UTC).replace(microsecond=0), usegmt=True)


def make_etag(modified: datetime, version: int = 0) -> str:
    """A Batch-style ETag: ``0x`` + hex .NET ticks of ``modified`` + ``version`` (opaque to clients)."""
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    micros = (modified.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // _MICROSECOND
    return f"0x{_TICKS_AT_EPOCH + micros * 10 + version:X}"


def entity_headers(etag: str, modified: datetime) -> dict[str, str]:
    """``ETag`` and ``Last-Modified`` (header set E of batch-api-routes.md §1.4)."""
    return {"ETag": etag, "Last-Modified": http_date(modified)}


def parse_http_date(text: str) -> datetime | None:
    """RFC 1123 (and RFC 850 / asctime, which HTTP also allows) as an aware UTC datetime."""
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        value = None
    if value is None:
        for fmt in ("%A, %d-%b-%y %H:%M:%S GMT", "%a %b %d %H:%M:%S %Y"):
            try:
                return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC)
            except ValueError:
                continue
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
