"""How ``batch-agent run`` reports a result: Batch's Get Task / Get Job shapes as JSON, a short
readable summary as text, and the process exit status.
"""

from __future__ import annotations

import signal
from typing import Any

from agent.config import AgentConfig
from agent.status import TaskState, format_time
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
