"""Exit conditions (§6): from a task's outcome to the job action and dependency action. Pure.

Selection, evaluated once when the task completes:
1. pre-processing error -> ``preProcessingError``, else ``default``;
2. exit code C: ``exitCodes`` entry for C, else the first ``exitCodeRanges`` entry holding C
   (exitCodes before ranges, first match wins: UNCONFIRMED in Batch, documented in the README),
   else ``default`` when C != 0, else the built-in success behaviour (``default`` is never
   applied to 0);
3. upload error after exit code C: a C matched in (2) by exitCodes/ranges wins; otherwise
   ``fileUploadError``, else ``default``.
Unset fields of the chosen options take Batch's defaults: for exit code 0 ``none``/``satisfy``,
for every other condition ``terminate``/``block``. The job acts on ``jobAction`` only when its
``onTaskFailure`` is ``performExitOptionsJobAction``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.spec import ExitConditions, ExitOptions
from agent.status import ExitDecision, JobState


class OutcomeKind(enum.Enum):
    EXIT = "exit"
    PRE_PROCESSING = "preProcessingError"
    UPLOAD = "fileUploadError"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    exit_code: int | None = None

    @classmethod
    def exited(cls, code: int) -> Outcome:
        return cls(OutcomeKind.EXIT, code)

    @classmethod
    def pre_processing(cls) -> Outcome:
        return cls(OutcomeKind.PRE_PROCESSING)

    @classmethod
    def upload_error(cls, code: int) -> Outcome:
        return cls(OutcomeKind.UPLOAD, code)


def _apply(options: ExitOptions | None, matched: str, *, success: bool) -> ExitDecision:
    job = options.job_action if options and options.job_action else ("none" if success else "terminate")
    dep = options.dependency_action if options and options.dependency_action else \
        ("satisfy" if success else "block")
    return ExitDecision(job, dep, matched)


def _match_code(conditions: ExitConditions, code: int) -> tuple[ExitOptions, str] | None:
    for i, mapping in enumerate(conditions.exit_codes or ()):
        if mapping.code == code:
            return mapping.exit_options, f"exitCodes[{i}]"
    for i, rng in enumerate(conditions.exit_code_ranges or ()):
        if rng.start <= code <= rng.end:
            return rng.exit_options, f"exitCodeRanges[{i}]"
    return None


def decide(conditions: ExitConditions | None, outcome: Outcome) -> ExitDecision:
    ec = conditions or ExitConditions()
    if outcome.kind is OutcomeKind.PRE_PROCESSING:
        if ec.pre_processing_error is not None:
            return _apply(ec.pre_processing_error, "preProcessingError", success=False)
        return _apply(ec.default, "default" if ec.default else "built-in failure", success=False)
    code = outcome.exit_code if outcome.exit_code is not None else -1
    matched = _match_code(ec, code)
    if matched is not None:
        return _apply(matched[0], matched[1], success=code == 0)
    if outcome.kind is OutcomeKind.UPLOAD:
        if ec.file_upload_error is not None:
            return _apply(ec.file_upload_error, "fileUploadError", success=False)
        return _apply(ec.default, "default" if ec.default else "built-in failure", success=False)
    if code == 0:
        return _apply(None, "built-in success", success=True)
    return _apply(ec.default, "default" if ec.default else "built-in failure", success=False)


@dataclass(frozen=True, slots=True)
class JobEffect:
    state: JobState
    terminate_reason: str | None = None


def job_effect(task_failure_mode: str, decision: ExitDecision, task_failed: bool) -> JobEffect:
    """What the service does to the job after a task completes (§6)."""
    if task_failure_mode != "performexitoptionsjobaction" or not task_failed:
        return JobEffect(JobState.ACTIVE)
    if decision.job_action == "terminate":
        return JobEffect(JobState.COMPLETED, "TaskFailed")
    if decision.job_action == "disable":
        return JobEffect(JobState.DISABLED)
    return JobEffect(JobState.ACTIVE)


def decision_table(conditions: ExitConditions | None) -> list[tuple[str, ExitDecision]]:
    """Every rule with its decision, in evaluation order, for ``plan``. Each row is what
    ``decide`` gives for the codes it names: a range that holds 0 and other codes is two rows
    when its unset fields default differently for 0 (§6 defaults)."""
    ec = conditions or ExitConditions()
    rows: list[tuple[str, ExitDecision]] = []
    for i, m in enumerate(ec.exit_codes or ()):
        rows.append((f"exit code {m.code}", _apply(m.exit_options, f"exitCodes[{i}]", success=m.code == 0)))
    zero_rule = _match_code(ec, 0)
    for i, r in enumerate(ec.exit_code_ranges or ()):
        where, span = f"exitCodeRanges[{i}]", f"{r.start}..{r.end}"
        if not r.start <= 0 <= r.end or r.start == r.end:
            rows.append((f"exit code {span}", _apply(r.exit_options, where, success=r.start == 0)))
            continue
        # A range holding 0 and other codes: unset fields default per code (none/satisfy for 0,
        # terminate/block for the rest), as in decide. 0 is this range's only if no rule before took it.
        failure = _apply(r.exit_options, where, success=False)
        if zero_rule is None or zero_rule[1] != where:
            rows.append((f"exit code {span} except 0", failure))
            continue
        success = _apply(r.exit_options, where, success=True)
        if success == failure:
            rows.append((f"exit code {span}", failure))
        else:
            rows.append((f"exit code 0 (in {span})", success))
            rows.append((f"exit code {span} except 0", failure))
    rows.append(("exit code 0 (otherwise)", decide(ec, Outcome.exited(0))))
    rows.append(("other non-zero exit code", decide(ec, Outcome(OutcomeKind.EXIT, -(2**31)))))
    rows.append(("pre-processing error", decide(ec, Outcome.pre_processing())))
    rows.append(("upload error (exit code not listed)", decide(ec, Outcome(OutcomeKind.UPLOAD, -(2**31)))))
    return rows
