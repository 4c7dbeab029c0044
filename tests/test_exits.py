"""agent.exits: the §6 exit-condition table, the job effect, and the plan's decision table."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.exits import JobEffect, Outcome, OutcomeKind, decide, decision_table, job_effect
from agent.spec import ExitConditions
from agent.status import ExitDecision, JobState


def conditions(data: dict[str, Any] | None) -> ExitConditions | None:
    return None if data is None else ExitConditions.model_validate(data)


def opts(job: str | None = None, dep: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if job is not None:
        out["jobAction"] = job
    if dep is not None:
        out["dependencyAction"] = dep
    return out


FULL: dict[str, Any] = {
    "exitCodes": [{"code": 3, "exitOptions": opts("disable", "satisfy")},
                  {"code": 0, "exitOptions": opts(dep="block")},
                  {"code": 3, "exitOptions": opts("none")}],                 # duplicate: first wins
    "exitCodeRanges": [{"start": 1, "end": 5, "exitOptions": opts("none", "satisfy")},   # 3 listed above
                       {"start": 4, "end": 10, "exitOptions": opts("terminate", "satisfy")},
                       {"start": -20, "end": -1, "exitOptions": opts(dep="satisfy")}],
    "preProcessingError": opts("disable"),
    "fileUploadError": opts(dep="satisfy"),
    "default": opts("none", "block"),
}
ONLY_DEFAULT: dict[str, Any] = {"default": opts("disable", "satisfy")}
EMPTY_DEFAULT: dict[str, Any] = {"default": {}}

CASES: list[tuple[str, dict[str, Any] | None, Outcome, ExitDecision]] = [
    # --- no exit conditions at all: the built-in behaviour
    ("none-exit-0", None, Outcome.exited(0), ExitDecision("none", "satisfy", "built-in success")),
    ("none-exit-1", None, Outcome.exited(1), ExitDecision("terminate", "block", "built-in failure")),
    ("none-exit-negative", None, Outcome.exited(-9), ExitDecision("terminate", "block", "built-in failure")),
    ("none-preprocessing", None, Outcome.pre_processing(),
     ExitDecision("terminate", "block", "built-in failure")),
    ("none-upload-after-0", None, Outcome.upload_error(0),
     ExitDecision("terminate", "block", "built-in failure")),
    ("none-upload-after-1", None, Outcome.upload_error(1),
     ExitDecision("terminate", "block", "built-in failure")),
    ("empty-object-exit-0", {}, Outcome.exited(0), ExitDecision("none", "satisfy", "built-in success")),
    ("empty-object-exit-2", {}, Outcome.exited(2), ExitDecision("terminate", "block", "built-in failure")),
    # --- exitCodes match; first entry wins among duplicates
    ("exitCodes-match", FULL, Outcome.exited(3), ExitDecision("disable", "satisfy", "exitCodes[0]")),
    # --- 0 listed explicitly: its options, with the exit-code-0 defaults for unset fields
    ("exitCodes-0-listed", FULL, Outcome.exited(0), ExitDecision("none", "block", "exitCodes[1]")),
    # --- ranges: inclusive bounds, first range wins, exitCodes before ranges
    ("range-start", FULL, Outcome.exited(1), ExitDecision("none", "satisfy", "exitCodeRanges[0]")),
    ("range-overlap-first-wins", FULL, Outcome.exited(4),
     ExitDecision("none", "satisfy", "exitCodeRanges[0]")),
    ("range-second", FULL, Outcome.exited(6), ExitDecision("terminate", "satisfy", "exitCodeRanges[1]")),
    ("range-end-inclusive", FULL, Outcome.exited(10),
     ExitDecision("terminate", "satisfy", "exitCodeRanges[1]")),
    ("range-negative-defaults", FULL, Outcome.exited(-9),
     ExitDecision("terminate", "satisfy", "exitCodeRanges[2]")),
    # --- a range holding 0: 0 takes the exit-code-0 defaults for unset fields, the others the failure ones
    ("range-with-0-exit-0", {"exitCodeRanges": [{"start": -5, "end": 5, "exitOptions": {}}]}, Outcome.exited(0),
     ExitDecision("none", "satisfy", "exitCodeRanges[0]")),
    ("range-with-0-exit-3", {"exitCodeRanges": [{"start": -5, "end": 5, "exitOptions": {}}]}, Outcome.exited(3),
     ExitDecision("terminate", "block", "exitCodeRanges[0]")),
    ("range-with-0-partly-set", {"exitCodeRanges": [{"start": 0, "end": 9, "exitOptions": opts("disable")}]},
     Outcome.exited(0), ExitDecision("disable", "satisfy", "exitCodeRanges[0]")),
    ("range-with-0-not-default", {"exitCodeRanges": [{"start": 0, "end": 9, "exitOptions": {}}],
                                  "default": opts("disable", "satisfy")}, Outcome.exited(0),
     ExitDecision("none", "satisfy", "exitCodeRanges[0]")),
    # --- default for a non-zero code no rule lists
    ("default-non-zero", FULL, Outcome.exited(11), ExitDecision("none", "block", "default")),
    ("default-huge", FULL, Outcome.exited(2**31 - 1), ExitDecision("none", "block", "default")),
    ("only-default-non-zero", ONLY_DEFAULT, Outcome.exited(1), ExitDecision("disable", "satisfy", "default")),
    ("empty-default-fills-failure-defaults", EMPTY_DEFAULT, Outcome.exited(1),
     ExitDecision("terminate", "block", "default")),
    # --- default is NOT applied to exit code 0
    ("default-not-for-0", ONLY_DEFAULT, Outcome.exited(0),
     ExitDecision("none", "satisfy", "built-in success")),
    ("empty-default-not-for-0", EMPTY_DEFAULT, Outcome.exited(0),
     ExitDecision("none", "satisfy", "built-in success")),
    # --- pre-processing error: preProcessingError, else default, else built-in
    ("preprocessing-own", FULL, Outcome.pre_processing(),
     ExitDecision("disable", "block", "preProcessingError")),
    ("preprocessing-default", ONLY_DEFAULT, Outcome.pre_processing(),
     ExitDecision("disable", "satisfy", "default")),
    ("preprocessing-builtin", {"exitCodes": [{"code": 1, "exitOptions": opts("none")}]},
     Outcome.pre_processing(),
     ExitDecision("terminate", "block", "built-in failure")),
    ("preprocessing-only-fileupload", {"fileUploadError": opts("none")}, Outcome.pre_processing(),
     ExitDecision("terminate", "block", "built-in failure")),
    # --- upload error: matched exit code wins, else fileUploadError, else default, else built-in
    ("upload-matched-code-wins", FULL, Outcome.upload_error(3),
     ExitDecision("disable", "satisfy", "exitCodes[0]")),
    ("upload-matched-range-wins", FULL, Outcome.upload_error(7),
     ExitDecision("terminate", "satisfy", "exitCodeRanges[1]")),
    ("upload-matched-0", FULL, Outcome.upload_error(0), ExitDecision("none", "block", "exitCodes[1]")),
    ("upload-own", FULL, Outcome.upload_error(42), ExitDecision("terminate", "satisfy", "fileUploadError")),
    ("upload-after-unlisted-0", {"fileUploadError": opts("disable")}, Outcome.upload_error(0),
     ExitDecision("disable", "block", "fileUploadError")),
    ("upload-default", ONLY_DEFAULT, Outcome.upload_error(0), ExitDecision("disable", "satisfy", "default")),
    ("upload-builtin", {"preProcessingError": opts("none")}, Outcome.upload_error(0),
     ExitDecision("terminate", "block", "built-in failure")),
    # --- an exit without a code (never happens in practice) is a failure
    ("exit-without-code", None, Outcome(OutcomeKind.EXIT, None),
     ExitDecision("terminate", "block", "built-in failure")),
]


@pytest.mark.parametrize(("data", "outcome", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(data: dict[str, Any] | None, outcome: Outcome, expected: ExitDecision) -> None:
    assert decide(conditions(data), outcome) == expected


@pytest.mark.parametrize(("data", "outcome", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_values_are_canonical(data: dict[str, Any] | None, outcome: Outcome,
                                     expected: ExitDecision) -> None:
    del expected
    d = decide(conditions(data), outcome)
    assert d.job_action in {"none", "disable", "terminate"} and d.dependency_action in {"satisfy", "block"}


def test_decide_with_any_casing_input() -> None:
    ec = conditions({"exitCodes": [{"code": 2,
                                    "exitOptions": {"jobAction": "DISABLE", "dependencyAction": "Satisfy"}}]})
    assert decide(ec, Outcome.exited(2)) == ExitDecision("disable", "satisfy", "exitCodes[0]")


def test_outcome_constructors() -> None:
    assert Outcome.exited(3) == Outcome(OutcomeKind.EXIT, 3)
    assert Outcome.pre_processing() == Outcome(OutcomeKind.PRE_PROCESSING, None)
    assert Outcome.upload_error(0) == Outcome(OutcomeKind.UPLOAD, 0)


TERMINATE = ExitDecision("terminate", "block", "default")
DISABLE = ExitDecision("disable", "block", "default")
NONE = ExitDecision("none", "block", "default")

EFFECTS: list[tuple[str, str, ExitDecision, bool, JobEffect]] = [
    ("noaction-terminate", "noaction", TERMINATE, True, JobEffect(JobState.ACTIVE)),
    ("noaction-disable", "noaction", DISABLE, True, JobEffect(JobState.ACTIVE)),
    ("perform-terminate", "performexitoptionsjobaction", TERMINATE, True,
     JobEffect(JobState.COMPLETED, "TaskFailed")),
    ("perform-disable", "performexitoptionsjobaction", DISABLE, True, JobEffect(JobState.DISABLED)),
    ("perform-none", "performexitoptionsjobaction", NONE, True, JobEffect(JobState.ACTIVE)),
    ("perform-not-failed", "performexitoptionsjobaction", TERMINATE, False, JobEffect(JobState.ACTIVE)),
    ("perform-disable-not-failed", "performexitoptionsjobaction", DISABLE, False, JobEffect(JobState.ACTIVE)),
]


@pytest.mark.parametrize(("mode", "decision", "failed", "expected"), [e[1:] for e in EFFECTS],
                         ids=[e[0] for e in EFFECTS])
def test_job_effect(mode: str, decision: ExitDecision, failed: bool, expected: JobEffect) -> None:
    assert job_effect(mode, decision, failed) == expected


def test_perform_exit_options_without_conditions_terminates_on_first_failure() -> None:
    # §6 "Consequence": performExitOptionsJobAction and no exit conditions -> a failed task ends the job.
    assert job_effect("performexitoptionsjobaction", decide(None, Outcome.exited(1)), True) == JobEffect(
        JobState.COMPLETED, "TaskFailed")
    assert job_effect("performexitoptionsjobaction", decide(None, Outcome.pre_processing()),
                      True) == JobEffect(
        JobState.COMPLETED, "TaskFailed")


def test_job_effect_uses_the_job_models_canonical_mode() -> None:
    from agent.spec import JobSpec
    j = JobSpec.model_validate({"id": "j", "poolInfo": {}, "onTaskFailure": "PerformExitOptionsJobAction"})
    assert job_effect(j.task_failure_mode, TERMINATE, True) == JobEffect(JobState.COMPLETED, "TaskFailed")


TABLES: list[tuple[str, dict[str, Any] | None, list[tuple[str, ExitDecision]]]] = [
    ("no-conditions", None, [
        ("exit code 0 (otherwise)", ExitDecision("none", "satisfy", "built-in success")),
        ("other non-zero exit code", ExitDecision("terminate", "block", "built-in failure")),
        ("pre-processing error", ExitDecision("terminate", "block", "built-in failure")),
        ("upload error (exit code not listed)", ExitDecision("terminate", "block", "built-in failure")),
    ]),
    ("full", FULL, [
        ("exit code 3", ExitDecision("disable", "satisfy", "exitCodes[0]")),
        ("exit code 0", ExitDecision("none", "block", "exitCodes[1]")),
        ("exit code 3", ExitDecision("none", "block", "exitCodes[2]")),
        ("exit code 1..5", ExitDecision("none", "satisfy", "exitCodeRanges[0]")),
        ("exit code 4..10", ExitDecision("terminate", "satisfy", "exitCodeRanges[1]")),
        ("exit code -20..-1", ExitDecision("terminate", "satisfy", "exitCodeRanges[2]")),
        ("exit code 0 (otherwise)", ExitDecision("none", "block", "exitCodes[1]")),
        ("other non-zero exit code", ExitDecision("none", "block", "default")),
        ("pre-processing error", ExitDecision("disable", "block", "preProcessingError")),
        ("upload error (exit code not listed)", ExitDecision("terminate", "satisfy", "fileUploadError")),
    ]),
    ("only-default", ONLY_DEFAULT, [
        ("exit code 0 (otherwise)", ExitDecision("none", "satisfy", "built-in success")),
        ("other non-zero exit code", ExitDecision("disable", "satisfy", "default")),
        ("pre-processing error", ExitDecision("disable", "satisfy", "default")),
        ("upload error (exit code not listed)", ExitDecision("disable", "satisfy", "default")),
    ]),
    ("zero-range", {"exitCodeRanges": [{"start": 0, "end": 0, "exitOptions": {}}]}, [
        ("exit code 0..0", ExitDecision("none", "satisfy", "exitCodeRanges[0]")),
        ("exit code 0 (otherwise)", ExitDecision("none", "satisfy", "exitCodeRanges[0]")),
        ("other non-zero exit code", ExitDecision("terminate", "block", "built-in failure")),
        ("pre-processing error", ExitDecision("terminate", "block", "built-in failure")),
        ("upload error (exit code not listed)", ExitDecision("terminate", "block", "built-in failure")),
    ]),
]


TAIL = [("other non-zero exit code", ExitDecision("terminate", "block", "built-in failure")),
        ("pre-processing error", ExitDecision("terminate", "block", "built-in failure")),
        ("upload error (exit code not listed)", ExitDecision("terminate", "block", "built-in failure"))]


def _range(start: int, end: int, options: dict[str, Any]) -> dict[str, Any]:
    return {"start": start, "end": end, "exitOptions": options}


# Ranges holding 0 (§6): exit code 0 in a range gets none/satisfy for unset fields, the range's other
# codes terminate/block, so such a range is two rows unless its options set both fields.
TABLES += [
    ("range-holding-0", {"exitCodeRanges": [_range(-5, 5, {})]}, [
        ("exit code 0 (in -5..5)", ExitDecision("none", "satisfy", "exitCodeRanges[0]")),
        ("exit code -5..5 except 0", ExitDecision("terminate", "block", "exitCodeRanges[0]")),
        ("exit code 0 (otherwise)", ExitDecision("none", "satisfy", "exitCodeRanges[0]")),
        *TAIL]),
    ("range-from-0-half-set", {"exitCodeRanges": [_range(0, 3, opts(dep="block"))]}, [
        ("exit code 0 (in 0..3)", ExitDecision("none", "block", "exitCodeRanges[0]")),
        ("exit code 0..3 except 0", ExitDecision("terminate", "block", "exitCodeRanges[0]")),
        ("exit code 0 (otherwise)", ExitDecision("none", "block", "exitCodeRanges[0]")),
        *TAIL]),
    ("range-holding-0-fully-set", {"exitCodeRanges": [_range(-1, 1, opts("disable", "satisfy"))]}, [
        ("exit code -1..1", ExitDecision("disable", "satisfy", "exitCodeRanges[0]")),
        ("exit code 0 (otherwise)", ExitDecision("disable", "satisfy", "exitCodeRanges[0]")),
        *TAIL]),
    ("range-holding-0-after-exitCodes-0", {"exitCodes": [{"code": 0, "exitOptions": {}}],
                                           "exitCodeRanges": [_range(-5, 5, {})]}, [
        ("exit code 0", ExitDecision("none", "satisfy", "exitCodes[0]")),
        ("exit code -5..5 except 0", ExitDecision("terminate", "block", "exitCodeRanges[0]")),
        ("exit code 0 (otherwise)", ExitDecision("none", "satisfy", "exitCodes[0]")),
        *TAIL]),
    ("two-ranges-holding-0", {"exitCodeRanges": [_range(-1, 1, opts("disable")), _range(-9, 9, {})]}, [
        ("exit code 0 (in -1..1)", ExitDecision("disable", "satisfy", "exitCodeRanges[0]")),
        ("exit code -1..1 except 0", ExitDecision("disable", "block", "exitCodeRanges[0]")),
        ("exit code -9..9 except 0", ExitDecision("terminate", "block", "exitCodeRanges[1]")),
        ("exit code 0 (otherwise)", ExitDecision("disable", "satisfy", "exitCodeRanges[0]")),
        *TAIL]),
]


@pytest.mark.parametrize(("data", "rows"), [t[1:] for t in TABLES], ids=[t[0] for t in TABLES])
def test_decision_table(data: dict[str, Any] | None, rows: list[tuple[str, ExitDecision]]) -> None:
    assert decision_table(conditions(data)) == rows


def _covers(label: str, code: int) -> bool:
    """Whether a rule row of the table names ``code`` (the fallback rows name none)."""
    if re.fullmatch(r"exit code 0 \(in -?\d+\.\.-?\d+\)", label):
        return code == 0
    match = re.fullmatch(r"exit code (-?\d+)(?:\.\.(-?\d+))?( except 0)?", label)
    if match is None:
        return False
    start = int(match[1])
    end = int(match[2]) if match[2] else start
    return start <= code <= end and not (match[3] and code == 0)


def _check_table_agrees_with_decide(ec: ExitConditions | None, codes: range = range(-12, 13)) -> None:
    for label, row in decision_table(ec):
        for code in codes:
            got = decide(ec, Outcome.exited(code))
            if _covers(label, code) and got.matched == row.matched:  # the code reaches this rule
                assert got == row, (label, code)


@pytest.mark.parametrize(("data", "rows"), [t[1:] for t in TABLES], ids=[t[0] for t in TABLES])
def test_decision_table_agrees_with_decide(data: dict[str, Any] | None,
                                           rows: list[tuple[str, ExitDecision]]) -> None:
    del rows
    _check_table_agrees_with_decide(conditions(data))
    # The exit-code-0 row is decide's answer for 0.
    ec = conditions(data)
    zero = dict(decision_table(ec))["exit code 0 (otherwise)"]
    assert zero == decide(ec, Outcome.exited(0))


_options = st.fixed_dictionaries({}, optional={"jobAction": st.sampled_from(["none", "disable", "terminate"]),
                                               "dependencyAction": st.sampled_from(["satisfy", "block"])})
_bounds = st.tuples(st.integers(-4, 4), st.integers(-4, 4)).map(sorted)


@settings(max_examples=300, deadline=None)
@given(codes=st.lists(st.fixed_dictionaries({"code": st.integers(-4, 4), "exitOptions": _options}), max_size=3),
       ranges=st.lists(st.builds(lambda b, o: _range(b[0], b[1], o), _bounds, _options), max_size=3),
       default=st.none() | _options)
def test_decision_table_agrees_with_decide_for_any_rules(codes: list[dict[str, Any]],
                                                         ranges: list[dict[str, Any]],
                                                         default: dict[str, Any] | None) -> None:
    data: dict[str, Any] = {"exitCodes": codes, "exitCodeRanges": ranges}
    if default is not None:
        data["default"] = default
    ec = conditions(data)
    _check_table_agrees_with_decide(ec)
    for code in range(-5, 6):  # every code is covered by some row that gives decide's answer
        want = decide(ec, Outcome.exited(code))
        rows = decision_table(ec)
        assert any(row == want and (_covers(label, code) or label.startswith(("exit code 0 (o", "other non-zero")))
                   for label, row in rows), (code, want, rows)
