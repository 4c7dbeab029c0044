"""Task results in Azure Batch's own shapes (``executionInfo``, ``failureInfo``, ...).

These are the values a task's life produces. They are frozen dataclasses; ``to_json`` renders
them exactly as the Batch REST API does (camelCase keys, lowercase enum values, RFC 3339 times),
so the official SDKs can read them back.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_TIME = re.compile(r"(?P<head>\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d)?)?)(?P<frac>\.\d+)?"
                   r"(?P<zone>[Zz]|[+-]\d\d:?\d\d)?")


class TaskState(enum.StrEnum):
    ACTIVE = "active"
    PREPARING = "preparing"
    RUNNING = "running"
    COMPLETED = "completed"


class ErrorCategory(enum.StrEnum):
    USER = "usererror"
    SERVER = "servererror"


class TaskResult(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class JobState(enum.StrEnum):
    ACTIVE = "active"
    DISABLING = "disabling"
    DISABLED = "disabled"
    TERMINATING = "terminating"
    COMPLETED = "completed"


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime | None) -> str | None:
    """RFC 3339 with 7 fractional digits and ``Z``, as the Batch service writes times."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}0Z"


def parse_time(value: str | None) -> datetime | None:
    """A Batch timestamp (7 fraction digits, ``Z``) or any ISO 8601 one, as an aware UTC datetime.

    Digits past the microsecond are dropped; an offset is honoured; no zone means UTC.
    Raises ``ValueError`` for text that is not a timestamp.
    """
    if not value:
        return None
    m = _TIME.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}")
    digits, zone = (m.group("frac") or ".")[1:7], m.group("zone") or "Z"
    fraction = f".{digits.ljust(6, '0')}" if digits else ""
    return datetime.fromisoformat(m.group("head") + fraction + zone.upper()).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class NameValue:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """Batch ``BatchTaskFailureInfo``: why a task failed."""

    category: ErrorCategory
    code: str
    message: str
    details: tuple[NameValue, ...] = ()

    @classmethod
    def user(cls, code: str, message: str, **details: str) -> FailureInfo:
        return cls(ErrorCategory.USER, code, message, _details(details))

    @classmethod
    def server(cls, code: str, message: str, **details: str) -> FailureInfo:
        return cls(ErrorCategory.SERVER, code, message, _details(details))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"category": str(self.category), "code": self.code, "message": self.message}
        if self.details:
            out["details"] = [{"name": d.name, "value": d.value} for d in self.details]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FailureInfo:
        return cls(ErrorCategory(data["category"]), data["code"], data["message"],
                   tuple(NameValue(d["name"], d["value"]) for d in data.get("details", ())))


def _details(details: Mapping[str, str]) -> tuple[NameValue, ...]:
    return tuple(NameValue(k, v) for k, v in details.items())


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """Batch ``BatchTaskContainerExecutionInfo``."""

    container_id: str | None = None
    state: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact({"containerId": self.container_id, "state": self.state, "error": self.error})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContainerInfo:
        return cls(data.get("containerId"), data.get("state"), data.get("error"))


@dataclass(frozen=True, slots=True)
class ExecutionInfo:
    """Batch ``BatchTaskExecutionInfo`` (also the prep / release task execution info)."""

    start_time: datetime | None = None
    end_time: datetime | None = None
    exit_code: int | None = None
    failure_info: FailureInfo | None = None
    container_info: ContainerInfo | None = None
    retry_count: int = 0
    requeue_count: int = 0
    last_retry_time: datetime | None = None
    last_requeue_time: datetime | None = None

    @property
    def result(self) -> TaskResult | None:
        if self.end_time is None:
            return None
        return TaskResult.FAILURE if self.failure_info else TaskResult.SUCCESS

    def to_json(self) -> dict[str, Any]:
        return _compact({
            "startTime": format_time(self.start_time),
            "endTime": format_time(self.end_time),
            "exitCode": self.exit_code,
            "containerInfo": self.container_info.to_json() if self.container_info else None,
            "failureInfo": self.failure_info.to_json() if self.failure_info else None,
            "retryCount": self.retry_count,
            "requeueCount": self.requeue_count,
            "lastRetryTime": format_time(self.last_retry_time),
            "lastRequeueTime": format_time(self.last_requeue_time),
            "result": str(self.result) if self.result else None,
        })

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExecutionInfo:
        return cls(
            start_time=parse_time(data.get("startTime")),
            end_time=parse_time(data.get("endTime")),
            exit_code=data.get("exitCode"),
            failure_info=FailureInfo.from_json(data["failureInfo"]) if data.get("failureInfo") else None,
            container_info=ContainerInfo.from_json(data["containerInfo"]) if data.get("containerInfo") else None,
            retry_count=data.get("retryCount", 0),
            requeue_count=data.get("requeueCount", 0),
            last_retry_time=parse_time(data.get("lastRetryTime")),
            last_requeue_time=parse_time(data.get("lastRequeueTime")),
        )


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Batch ``BatchNodeInfo``: where the task ran."""

    pool_id: str
    node_id: str
    task_root_directory: str
    node_url: str | None = None
    task_root_directory_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _compact({
            "affinityId": f"TVM:{self.node_id}",
            "nodeUrl": self.node_url,
            "poolId": self.pool_id,
            "nodeId": self.node_id,
            "taskRootDirectory": self.task_root_directory,
            "taskRootDirectoryUrl": self.task_root_directory_url,
        })


@dataclass(frozen=True, slots=True)
class ExitDecision:
    """What the exit conditions decided (§6): the job action and the dependency action."""

    job_action: str          # none | disable | terminate
    dependency_action: str   # satisfy | block
    matched: str             # which rule matched, for people: "exitCodes[0]", "default", ...


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A task as Batch's Get Task reports it (the parts a node knows)."""

    id: str
    state: TaskState
    execution_info: ExecutionInfo = field(default_factory=ExecutionInfo)
    node_info: NodeInfo | None = None
    decision: ExitDecision | None = None
    state_transition_time: datetime | None = None
    previous_state: TaskState | None = None

    def to_json(self) -> dict[str, Any]:
        out = _compact({
            "id": self.id,
            "state": str(self.state),
            "stateTransitionTime": format_time(self.state_transition_time),
            "previousState": str(self.previous_state) if self.previous_state else None,
            "executionInfo": self.execution_info.to_json() if self.state != TaskState.ACTIVE
            or self.execution_info.retry_count else None,
            "nodeInfo": self.node_info.to_json() if self.node_info else None,
        })
        if self.decision is not None:
            # Not a Batch field: what the service would do with the result (§6). Kept apart
            # under an agent-specific key so SDK deserialisation ignores it.
            out["exitDecision"] = {"jobAction": self.decision.job_action,
                                   "dependencyAction": self.decision.dependency_action,
                                   "matched": self.decision.matched}
        return out


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}
