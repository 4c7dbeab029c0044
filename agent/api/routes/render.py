"""A stored job or task as Batch's ``BatchJob`` / ``BatchTask`` JSON, and its entity headers.

The stored body is echoed (what the client sent: commandLine, resourceFiles, environment...)
under the fields the service owns: ``url``, ``eTag``, ``lastModified``, ``creationTime``,
``state``, ``stateTransitionTime``, ``previousState``, ``previousStateTransitionTime``,
``executionInfo``, ``nodeInfo``, ``requiredSlots`` and ``constraints`` with every default filled
in. Every duration (``maxWallClockTime``, ``retentionTime`` at any depth) is rewritten in the
forms all three clients read (``agent.api.formats``): a 15.x client may have sent a bare ``P``,
which 14.2 cannot read back.

Must not: hand out a body field the service keeps for itself (the job-manager marker), or
look anything up: it works on records only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from agent.api.formats import UNLIMITED_TEXT, entity_headers, format_duration, format_time
from agent.service.jobs import JM_MARK
from agent.spec.durations import DurationError, parse_duration
from agent.store import JobRecord, TaskRecord

DURATION_KEYS = frozenset({"maxWallClockTime", "retentionTime"})
JOB_OWNED = frozenset({"odata.metadata", "url", "eTag", "lastModified", "creationTime", "state",
                       "stateTransitionTime", "previousState", "previousStateTransitionTime", "executionInfo",
                       "stats"})
TASK_OWNED = JOB_OWNED | {"nodeInfo"}


def seg(value: str) -> str:
    return quote(value, safe="")


def job_url(base: str, job_id: str) -> str:
    return f"{base}/jobs/{seg(job_id)}"


def task_url(base: str, job_id: str, task_id: str) -> str:
    return f"{job_url(base, job_id)}/tasks/{seg(task_id)}"


def _duration(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return format_duration(parse_duration(value))
    except DurationError:
        return value


def readable(value: Any) -> Any:
    """A copy of ``value`` with every duration in a form every client parses."""
    if isinstance(value, Mapping):
        return {k: _duration(v) if k in DURATION_KEYS else readable(v) for k, v in value.items() if k != JM_MARK}
    if isinstance(value, list):
        return [readable(v) for v in value]
    return value


def _times(record: JobRecord | TaskRecord) -> dict[str, Any]:
    out = {"eTag": record.etag, "lastModified": format_time(record.last_modified),
           "creationTime": format_time(record.creation_time), "state": record.state,
           "stateTransitionTime": format_time(record.state_transition_time)}
    if record.previous_state is not None:
        out["previousState"] = record.previous_state
        out["previousStateTransitionTime"] = format_time(record.previous_state_transition_time)
    return out


def job_json(record: JobRecord, base: str) -> dict[str, Any]:
    body = readable({k: v for k, v in record.body.items() if k not in JOB_OWNED})
    constraints = {"maxWallClockTime": UNLIMITED_TEXT, "maxTaskRetryCount": 0, **body.get("constraints", {})}
    out: dict[str, Any] = {
        "odata.metadata": f"{base}/$metadata#jobs/@Element", "id": record.id, "url": job_url(base, record.id),
        **body, **_times(record),
        "priority": record.priority, "usesTaskDependencies": record.uses_task_dependencies,
        "onAllTasksComplete": record.on_all_tasks_complete, "onTaskFailure": record.on_task_failure,
        "constraints": constraints, "executionInfo": dict(record.execution_info),
    }
    return out


def task_json(record: TaskRecord, base: str) -> dict[str, Any]:
    body = readable({k: v for k, v in record.body.items() if k not in TASK_OWNED})
    constraints = {"maxWallClockTime": UNLIMITED_TEXT, "retentionTime": "P7D", "maxTaskRetryCount": 0,
                   **body.get("constraints", {})}
    out: dict[str, Any] = {
        "odata.metadata": f"{base}/$metadata#tasks/@Element", "id": record.id,
        "url": task_url(base, record.job_id, record.id), **body, **_times(record),
        "constraints": constraints, "requiredSlots": record.required_slots,
        "executionInfo": record.execution_info.to_json(),
    }
    if record.node_info is not None:
        out["nodeInfo"] = dict(record.node_info)
    return out


def job_headers(record: JobRecord, base: str) -> dict[str, str]:
    return {**entity_headers(record.etag, record.last_modified), "DataServiceId": job_url(base, record.id)}


def task_headers(record: TaskRecord, base: str) -> dict[str, str]:
    return {**entity_headers(record.etag, record.last_modified),
            "DataServiceId": task_url(base, record.job_id, record.id)}
