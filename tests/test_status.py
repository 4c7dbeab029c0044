"""agent.status: task results in the Batch REST shapes the official SDKs read back."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.status import (
    ContainerInfo,
    ErrorCategory,
    ExecutionInfo,
    ExitDecision,
    FailureInfo,
    NameValue,
    NodeInfo,
    TaskResult,
    TaskState,
    TaskStatus,
    format_time,
    parse_time,
)

T0 = datetime(2025, 7, 1, 12, 0, 1, 123456, tzinfo=UTC)
T1 = datetime(2025, 7, 1, 12, 0, 5, tzinfo=UTC)
S0, S1 = "2025-07-01T12:00:01.1234560Z", "2025-07-01T12:00:05.0000000Z"  # T0, T1 as Batch writes them
BATCH_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z$")


@pytest.mark.parametrize(("value", "text"), [
    (T0, "2025-07-01T12:00:01.1234560Z"),
    (T1, "2025-07-01T12:00:05.0000000Z"),
    (datetime(2025, 7, 1, 14, 0, 5, tzinfo=timezone(timedelta(hours=2))), "2025-07-01T12:00:05.0000000Z"),
    (None, None),
], ids=["micro", "whole", "offset-to-utc", "none"])
def test_format_time(value: datetime | None, text: str | None) -> None:
    assert format_time(value) == text
    if text is not None:
        assert BATCH_TIME.match(text)


@pytest.mark.parametrize(("text", "value"), [
    ("2025-07-01T12:00:01.1234560Z", T0),
    ("2025-07-01T12:00:01.1234567Z", T0),             # 7th digit (tick) dropped
    ("2025-07-01T12:00:05Z", T1),
    ("2025-07-01T12:00:05.123Z", T1.replace(microsecond=123000)),
    ("2025-07-01T12:00:05.0000000Z", T1),
    ("2025-07-01T14:00:05+02:00", T1),
    ("2025-07-01T07:00:05.123-05:00", T1.replace(microsecond=123000)),
    ("2025-07-01T12:00:05+0000", T1),
    ("2025-07-01T12:00:05", T1),                      # no zone: UTC
    ("2025-07-01 12:00:05z", T1),
    (None, None),
    ("", None),
], ids=["7-digits", "tick", "no-fraction", "millis", "zero-fraction", "plus-2", "minus-5", "plus-0000", "naive",
        "space-lower-z", "none", "empty"])
def test_parse_time(text: str | None, value: datetime | None) -> None:
    parsed = parse_time(text)
    assert parsed == value
    if parsed is not None:
        assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "2025-07-01T12:00:05Q", "12:00:05", "2025-13-01T00:00:00Z"])
def test_parse_time_refuses_what_is_not_a_timestamp(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_failure_info_json() -> None:
    info = FailureInfo.user("CommandProgramNotFound", "The specified command program is not found",
                            Message="prog", Path="/x")
    assert info.to_json() == {"category": "usererror", "code": "CommandProgramNotFound",
                              "message": "The specified command program is not found",
                              "details": [{"name": "Message", "value": "prog"},
                                          {"name": "Path", "value": "/x"}]}
    assert FailureInfo.from_json(info.to_json()) == info
    server = FailureInfo.server("TaskEnded", "wall clock")
    assert server.to_json() == {"category": "servererror", "code": "TaskEnded", "message": "wall clock"}
    assert "details" not in server.to_json() and FailureInfo.from_json(server.to_json()) == server
    assert server.details == () and info.details[0] == NameValue("Message", "prog")


EXECUTIONS: list[tuple[str, ExecutionInfo, dict[str, object]]] = [
    ("not-started", ExecutionInfo(), {"retryCount": 0, "requeueCount": 0}),
    ("running", ExecutionInfo(start_time=T0), {"startTime": S0, "retryCount": 0, "requeueCount": 0}),
    ("success", ExecutionInfo(start_time=T0, end_time=T1, exit_code=0), {
        "startTime": S0, "endTime": S1, "exitCode": 0, "retryCount": 0, "requeueCount": 0,
        "result": "success"}),
    ("failure", ExecutionInfo(start_time=T0, end_time=T1, exit_code=3, retry_count=2, last_retry_time=T1,
                              failure_info=FailureInfo.user("FailureExitCode", "exit code 3")), {
        "startTime": S0, "endTime": S1, "exitCode": 3, "retryCount": 2, "requeueCount": 0,
        "lastRetryTime": S1, "result": "failure",
        "failureInfo": {"category": "usererror", "code": "FailureExitCode", "message": "exit code 3"}}),
    ("pre-processing", ExecutionInfo(start_time=T0, end_time=T1,
                                     failure_info=FailureInfo.user("ResourceContainerAccessDenied", "m")), {
        "startTime": S0, "endTime": S1, "retryCount": 0, "requeueCount": 0, "result": "failure",
        "failureInfo": {"category": "usererror", "code": "ResourceContainerAccessDenied", "message": "m"}}),
    ("container", ExecutionInfo(start_time=T0, end_time=T1, exit_code=-9, requeue_count=1,
                                last_requeue_time=T0,
                                container_info=ContainerInfo("abc123", "exited"),
                                failure_info=FailureInfo.server("TaskEnded", "m")), {
        "startTime": S0, "endTime": S1, "exitCode": -9,
        "retryCount": 0, "requeueCount": 1, "lastRequeueTime": S0,
        "result": "failure", "containerInfo": {"containerId": "abc123", "state": "exited"},
        "failureInfo": {"category": "servererror", "code": "TaskEnded", "message": "m"}}),
]


@pytest.mark.parametrize(("info", "expected"), [e[1:] for e in EXECUTIONS], ids=[e[0] for e in EXECUTIONS])
def test_execution_info_json(info: ExecutionInfo, expected: dict[str, object]) -> None:
    out = info.to_json()
    assert out == expected
    assert all(re.fullmatch(r"[a-z][A-Za-z]*", k) for k in out)  # camelCase keys
    assert all(BATCH_TIME.match(str(v)) for k, v in out.items() if k.endswith("Time"))
    assert "exitCode" in out or info.exit_code is None
    assert ExecutionInfo.from_json(out) == info
    assert ExecutionInfo.from_json(out).to_json() == out


def test_result_follows_failure_info() -> None:
    assert ExecutionInfo(start_time=T0).result is None
    assert ExecutionInfo(end_time=T1, exit_code=0).result is TaskResult.SUCCESS
    assert ExecutionInfo(end_time=T1, exit_code=0,
                         failure_info=FailureInfo.user("FileUploadFailed", "m")).result \
        is TaskResult.FAILURE


def test_execution_info_from_sdk_shaped_json() -> None:
    data = {"startTime": "2025-07-01T12:00:01Z", "endTime": "2025-07-01T12:00:05Z", "exitCode": 0,
            "result": "success", "retryCount": 0, "requeueCount": 0}
    info = ExecutionInfo.from_json(data)
    assert (info.start_time, info.end_time, info.exit_code, info.result) == (T0.replace(microsecond=0), T1, 0,
                                                                            TaskResult.SUCCESS)


def test_container_info_json() -> None:
    assert ContainerInfo().to_json() == {}
    info = ContainerInfo("id1", "running", "oops")
    assert info.to_json() == {"containerId": "id1", "state": "running", "error": "oops"}
    assert ContainerInfo.from_json(info.to_json()) == info


def test_node_info_json() -> None:
    info = NodeInfo("local", "local-node", "workitems/j/job-1/t")
    assert info.to_json() == {"affinityId": "TVM:local-node", "poolId": "local", "nodeId": "local-node",
                              "taskRootDirectory": "workitems/j/job-1/t"}
    full = NodeInfo("p", "n", "workitems/j/job-1/t", node_url="https://a/pools/p/nodes/n",
                    task_root_directory_url="https://a/pools/p/nodes/n/files/workitems/j/job-1/t")
    assert full.to_json()["nodeUrl"] == "https://a/pools/p/nodes/n"
    assert full.to_json()["taskRootDirectoryUrl"].endswith("/files/workitems/j/job-1/t")


STATUSES: list[tuple[str, TaskStatus, dict[str, object]]] = [
    ("active", TaskStatus("t1", TaskState.ACTIVE), {"id": "t1", "state": "active"}),
    ("active-after-retry", TaskStatus("t1", TaskState.ACTIVE, ExecutionInfo(retry_count=1),
                                      previous_state=TaskState.RUNNING, state_transition_time=T1),
     {"id": "t1", "state": "active", "previousState": "running", "stateTransitionTime": S1,
      "executionInfo": {"retryCount": 1, "requeueCount": 0}}),
    ("completed", TaskStatus("t1", TaskState.COMPLETED,
                             ExecutionInfo(start_time=T0, end_time=T1, exit_code=0),
                             NodeInfo("p", "n", "workitems/j/job-1/t1"),
                             ExitDecision("none", "satisfy", "built-in success"), T1, TaskState.RUNNING),
     {"id": "t1", "state": "completed", "stateTransitionTime": S1, "previousState": "running",
      "executionInfo": {"startTime": S0, "endTime": S1, "exitCode": 0, "retryCount": 0, "requeueCount": 0,
                        "result": "success"},
      "nodeInfo": {"affinityId": "TVM:n", "poolId": "p", "nodeId": "n",
                   "taskRootDirectory": "workitems/j/job-1/t1"},
      "exitDecision": {"jobAction": "none", "dependencyAction": "satisfy", "matched": "built-in success"}}),
    ("running", TaskStatus("t1", TaskState.RUNNING, ExecutionInfo(start_time=T0)),
     {"id": "t1", "state": "running",
      "executionInfo": {"startTime": S0, "retryCount": 0, "requeueCount": 0}}),
]


@pytest.mark.parametrize(("status", "expected"), [s[1:] for s in STATUSES], ids=[s[0] for s in STATUSES])
def test_task_status_json(status: TaskStatus, expected: dict[str, object]) -> None:
    assert status.to_json() == expected


@pytest.mark.parametrize(("enum", "values"), [
    (TaskState, ["active", "preparing", "running", "completed"]),
    (ErrorCategory, ["usererror", "servererror"]),
    (TaskResult, ["success", "failure"]),
], ids=["state", "category", "result"])
def test_enum_values_are_the_sdk_lowercase_spellings(enum: type, values: list[str]) -> None:
    assert [str(v) for v in enum] == values
