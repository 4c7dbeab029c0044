"""How ``batch-agent run`` and ``run-job`` report a result: Batch's Get Task / Get Job shapes as
JSON, a short readable summary (``run``) or a rich table of every task (``run-job``) as text, and
the process exit status.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from typing import Any

from agent.config import AgentConfig
from agent.status import ExecutionInfo, TaskResult, TaskState, format_time
from agent.store import JobRecord, TaskRecord
from agent.taskrunner import JobOutcome, TaskOutcome, special_task_info

EXIT_NOT_RUN = 125


def run_json(outcome: JobOutcome, *, with_job: bool) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if outcome.task is not None:
        data["task"] = outcome.task.status.to_json()
    else:
        data["task"] = {"id": "", "state": str(TaskState.ACTIVE)}
    if with_job:
        job: dict[str, Any] = {"id": outcome.job_id, "state": str(outcome.job_state)}
        if outcome.terminate_reason:
            job["executionInfo"] = {"terminateReason": outcome.terminate_reason}
        data["job"] = job
    if outcome.preparation is not None:
        data["jobPreparationTaskExecutionInfo"] = special_task_info(outcome.preparation, retries=True)
    if outcome.release is not None:
        data["jobReleaseTaskExecutionInfo"] = special_task_info(outcome.release, retries=False)
    if outcome.preparation_blocked:
        data["task"]["schedulingError"] = {
            "category": "usererror", "code": "JobPreparationTaskFailed",
            "message": "Task cannot run because the job preparation task failed on node"}
    return data


def exit_status(outcome: JobOutcome) -> int:
    task = outcome.task
    if task is None:
        return EXIT_NOT_RUN
    code = task.status.execution_info.exit_code
    if code is None:
        return EXIT_NOT_RUN
    if code < 0:
        return 128 + (-code)
    return code if code <= 255 else 255


def _task_lines(name: str, outcome: TaskOutcome) -> list[str]:
    info = outcome.status.execution_info
    result = str(info.result) if info.result else str(outcome.status.state)
    head = f"{name} {outcome.status.id}: {outcome.status.state} ({result})"
    if info.exit_code is not None:
        code = info.exit_code
        head += f", exit code {code}" + (f" ({signal.Signals(-code).name})" if code < 0 and
                                          -code in signal.valid_signals() else "")
    else:
        head += ", the command did not run"
    lines = [head]
    if info.start_time and info.end_time:
        secs = (info.end_time - info.start_time).total_seconds()
        lines.append(f"  ran {format_time(info.start_time)} .. {format_time(info.end_time)} ({secs:.2f}s)")
    if info.retry_count:
        lines.append(f"  retries: {info.retry_count}")
    if info.failure_info:
        f = info.failure_info
        lines.append(f"  failure: {f.category} {f.code}: {f.message}")
        lines += [f"    {d.name}: {d.value}" for d in f.details]
    if info.container_info and info.container_info.container_id:
        lines.append(f"  container: {info.container_info.container_id[:12]} ({info.container_info.state})")
    if outcome.status.decision:
        d = outcome.status.decision
        lines.append(f"  exit conditions: jobAction {d.job_action}, dependencyAction {d.dependency_action} "
                     f"({d.matched})")
    return lines


def render_run(outcome: JobOutcome, config: AgentConfig) -> str:
    lines: list[str] = []
    if outcome.preparation:
        lines += _task_lines("job preparation task", outcome.preparation)
    if outcome.task:
        lines += _task_lines("task", outcome.task)
        task_dir = config.node.root / (outcome.task.status.node_info.task_root_directory
                                       if outcome.task.status.node_info else "")
        lines.append(f"  output: {task_dir}/stdout.txt, {task_dir}/stderr.txt")
    elif outcome.preparation_blocked:
        lines.append("task: active, not run (JobPreparationTaskFailed: the job preparation task failed "
                     "and waitForSuccess is true)")
    if outcome.release:
        lines += _task_lines("job release task", outcome.release)
    lines.append(f"job {outcome.job_id}: {outcome.job_state}"
                 + (f" (terminateReason {outcome.terminate_reason})" if outcome.terminate_reason else ""))
    return "\n".join(lines)


class TransferProgress:
    """Transfer progress on a terminal: one rich bar on stderr for every byte a task moves
    (resource files in, output files out). ``add`` grows the total as files become known,
    ``advance`` moves the bar. rich serialises updates, so transfer threads may call both.
    Use as a context manager around the run; the bar disappears when it ends."""

    def __init__(self, stream: Any) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(TextColumn("transfers"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                             TimeRemainingColumn(), console=Console(file=stream), transient=True)
        self._id = self._bar.add_task("transfers", total=0)
        self._total = 0

    def __enter__(self) -> TransferProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def add(self, total_bytes: int) -> None:  # called on the event loop only
        self._total += total_bytes
        self._bar.update(self._id, total=self._total)

    def advance(self, n: int) -> None:
        self._bar.advance(self._id, n)


# --- run-job -------------------------------------------------------------------------------

def _duration(info: ExecutionInfo) -> float | None:
    if info.start_time is None or info.end_time is None:
        return None
    return round((info.end_time - info.start_time).total_seconds(), 3)


def run_job_status(tasks: Sequence[TaskRecord]) -> int:
    """0 when every task completed with success, 1 otherwise (a failure, or a task never run)."""
    ok = all(t.state == "completed" and t.execution_info.result == TaskResult.SUCCESS for t in tasks)
    return 0 if ok else 1


def run_job_json(job: JobRecord, tasks: Sequence[TaskRecord], preparation: Mapping[str, Any] | None,
                 release: Mapping[str, Any] | None) -> dict[str, Any]:
    """One object: the job's end, every task (Batch's field names), the exit status."""
    rows = []
    for t in tasks:
        info = t.execution_info
        row: dict[str, Any] = {"id": t.id, "state": t.state, **info.to_json()}
        row["result"] = str(info.result) if info.result else None
        row["durationSeconds"] = _duration(info)
        rows.append(row)
    data: dict[str, Any] = {"job": {"id": job.id, "state": job.state, "executionInfo": dict(job.execution_info)},
                            "tasks": rows}
    if preparation is not None:
        data["jobPreparationTaskExecutionInfo"] = dict(preparation)
    if release is not None:
        data["jobReleaseTaskExecutionInfo"] = dict(release)
    data["exitStatus"] = run_job_status(tasks)
    return data


def render_run_job(job: JobRecord, tasks: Sequence[TaskRecord], preparation: Mapping[str, Any] | None,
                   release: Mapping[str, Any] | None, *, width: int = 120) -> str:
    """A rich table of every task, then the job preparation / release and the job's end."""
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"job {job.id}", title_justify="left")
    for name, justify in (("task", "left"), ("state", "left"), ("exit code", "right"), ("result", "left"),
                          ("failure", "left"), ("retries", "right"), ("duration", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for t in tasks:
        info = t.execution_info
        seconds = _duration(info)
        table.add_row(t.id, t.state, "" if info.exit_code is None else str(info.exit_code),
                      str(info.result) if info.result else "",
                      info.failure_info.code if info.failure_info else "", str(info.retry_count),
                      "" if seconds is None else f"{seconds:.2f}s")
    out = io.StringIO()
    console = Console(file=out, width=width, no_color=True, highlight=False)
    console.print(table)
    for name, special in (("job preparation task", preparation), ("job release task", release)):
        if special:
            failure = (special.get("failureInfo") or {}).get("code")
            console.print(f"{name}: {special.get('state')}, exit code {special.get('exitCode')}"
                          + (f", failure {failure}" if failure else ""))
    reason = (job.execution_info or {}).get("terminateReason")
    succeeded = sum(1 for t in tasks if t.execution_info.result == TaskResult.SUCCESS)
    console.print(f"job {job.id}: {job.state}" + (f" (terminateReason {reason})" if reason else "")
                  + f"; {succeeded} of {len(tasks)} tasks succeeded")
    return out.getvalue().rstrip("\n")
