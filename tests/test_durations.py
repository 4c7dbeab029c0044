"""agent.spec.durations: every duration spelling real clients send (sdk-compat.md), and the rest rejected."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spec.durations import UNLIMITED_TEXT, DurationError, format_duration, parse_duration

H, M, S, D = timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1), timedelta(days=1)
US = timedelta(microseconds=1)

ACCEPTED = [
    # (text, expected timedelta; None = unlimited)
    ("PT1H30M", H + 30 * M),                                # msrest / az CLI
    ("PT01H30M00S", H + 30 * M),                            # azure-batch 15.x, zero padded
    ("P7D", 7 * D),
    ("P1W", 7 * D),
    ("P2W3D", 17 * D),
    ("P1DT02H00M00S", D + 2 * H),                           # 15.x day + time
    ("P1DT2H", D + 2 * H),                                  # msrest day + time
    ("PT01M30.5S", 90 * S + timedelta(milliseconds=500)),   # 15.x fractional seconds
    ("PT1M30.5S", 90 * S + timedelta(milliseconds=500)),
    ("PT1.5S", timedelta(seconds=1.5)),
    ("PT1,5S", timedelta(seconds=1.5)),                     # ISO 8601 decimal comma
    ("PT00.000001S", US),                                   # 15.x: 1 microsecond
    ("PT1.1234567S", S + 123457 * US),                      # 7-digit (.NET tick) fraction, rounded
    ("PT05M00S", 5 * M),
    ("PT90S", 90 * S),
    ("PT36H", 36 * H),                                      # no carrying required
    ("P", timedelta(0)),                                    # 15.x writes a bare P for zero
    ("PT", timedelta(0)),
    ("P0D", timedelta(0)),                                  # msrest zero
    ("PT0S", timedelta(0)),
    ("pt1h", H),                                            # case-insensitive
    (" PT1H ", H),                                          # surrounding whitespace
    ("P10675198DT23H", 10675198 * D + 23 * H),              # long but finite
    (UNLIMITED_TEXT, None),                                 # .NET TimeSpan.MaxValue = unlimited
    ("P10675199DT2H48M5.4775807S", None),
    ("P10675200D", None),                                   # longer than MaxValue: unlimited too
    ("P99999999999D", None),
    ("PT" + "9" * 400 + "H", None),                         # no float overflow, just unlimited
    ("P" + "9" * 400 + "D", None),
    ("PT" + "9" * 400 + "S", None),
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED, ids=[t[:30] or "empty" for t, _ in ACCEPTED])
def test_accepted(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text) == expected


REJECTED = [
    "1h", "90", "P1Y", "P1M", "P1Y2M", "PT1.5H", "P1H", "T1H", "-PT1H", "P-1D", "PT1H1H", "PT1S1M",
    "", "   ", "garbage", "PT1HX", "P1D T1H", "1 day", "00:01:30", "PT1.S", "PT.5S",
]


@pytest.mark.parametrize("text", REJECTED, ids=[t or "empty" for t in REJECTED])
def test_rejected_with_message(text: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    assert "ISO 8601" in message and "PT1H30M" in message and UNLIMITED_TEXT in message


@pytest.mark.parametrize("value", [3600, 1.5, None, ["PT1H"], {"d": 1}, timedelta(hours=1), b"PT1H"],
                         ids=["int", "float", "none", "list", "dict", "timedelta", "bytes"])
def test_non_string_rejected(value: object) -> None:
    with pytest.raises(DurationError, match="ISO 8601"):
        parse_duration(value)  # type: ignore[arg-type]


def test_duration_error_is_a_value_error() -> None:
    # pydantic turns ValueErrors raised inside validators into field errors.
    assert issubclass(DurationError, ValueError)


FORMATTED = [
    (H + 30 * M, "PT1H30M"),
    (7 * D, "P7D"),
    (D + 2 * H, "P1DT2H"),
    (90 * S + timedelta(milliseconds=500), "PT1M30.5S"),
    (US, "PT0.000001S"),
    (timedelta(0), "PT0S"),
    (15 * M, "PT15M"),
    (D + S, "P1DT1S"),
    (None, UNLIMITED_TEXT),
]


@pytest.mark.parametrize(("value", "text"), FORMATTED, ids=[t for _, t in FORMATTED])
def test_format(value: timedelta | None, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


@pytest.mark.parametrize(("text", "expected"), ACCEPTED, ids=[t[:30] or "empty" for t, _ in ACCEPTED])
def test_format_of_parse_round_trips(text: str, expected: timedelta | None) -> None:
    assert parse_duration(format_duration(parse_duration(text))) == expected


@settings(max_examples=300, deadline=None)
@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10675198)))
def test_format_parse_round_trip_property(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_duration_error(text: str) -> None:
    try:
        result = parse_duration(text)
    except DurationError:
        return
    assert result is None or result >= timedelta(0)
