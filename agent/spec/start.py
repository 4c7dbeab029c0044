"""The pool start task (``BatchStartTask``), as a node reads it from its config's JSON file.

Fields: ``commandLine``, ``containerSettings``, ``resourceFiles``, ``environmentSettings``,
``userIdentity`` (shared with every task, ``TaskBase``), ``maxTaskRetryCount`` (default 0, -1
unlimited) and ``waitForSuccess`` (default true: no task starts on the node before the start
task succeeded). It has no wall clock and no retention (Batch: none). Must not: run anything.
"""

from __future__ import annotations

from pydantic import Field

from agent.spec.base import Int32
from agent.spec.task import TaskBase


class StartTask(TaskBase):
    max_task_retry_count: Int32 | None = Field(default=None, ge=-1)
    wait_for_success: bool = True


def load_start_task(data: object, *, source: str = "start task") -> StartTask:
    """A ``StartTask`` from parsed JSON (the config's start task file); bad input is a
    ``SpecError`` naming each JSON path, as ``batch-agent validate`` words it."""
    from pydantic import ValidationError

    from agent.errors import Issue, SpecError
    from agent.spec.load import issues_from

    if not isinstance(data, dict):
        raise SpecError([Issue("", f"a start task must be a JSON object, not {type(data).__name__}")],
                        source=source)
    try:
        return StartTask.model_validate(data)
    except ValidationError as exc:
        raise SpecError(issues_from(exc, StartTask), source=source) from None
