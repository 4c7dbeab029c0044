"""azure-batch 15.1.0 (its own venv, tests/clients.py) drives the node's API end to end: a job with
preparation and release tasks, create_task, create_task_collection and the create_tasks helper
(120 tasks: two requests, into a disabled job), the disable / enable pollers, get_task until
completed with its real exit code, list_tasks with a filter, terminate, delete, file properties
(HEAD), a ranged download, task counts, the prep / release status, and the terminate / delete
pollers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_kit import ApiServer, run_client, serving
from clients import CLIENTS_TIMEOUT_S, Clients, ensure_clients

pytestmark = pytest.mark.timeout(CLIENTS_TIMEOUT_S + 120)

SCRIPT = r'''
import json, sys, time
from datetime import timedelta
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.batch import BatchClient, models as m
url, account, key = sys.argv[1:4]
c = BatchClient(endpoint=url, credential=AzureNamedKeyCredential(account, key))
out = {}
def wait(job, task, state="completed"):
    end = time.monotonic() + 60
    while True:
        t = c.get_task(job, task)
        if t.state == state:
            return t
        assert time.monotonic() < end, (task, t.state)
        time.sleep(0.05)
c.create_job(m.BatchJobCreateOptions(
    id="sdk15", pool_info=m.BatchPoolInfo(pool_id="p"),
    job_preparation_task=m.BatchJobPreparationTask(command_line="/bin/sh -c 'echo prep'"),
    job_release_task=m.BatchJobReleaseTask(command_line="/bin/sh -c 'echo release'")))
c.create_task("sdk15", m.BatchTaskCreateOptions(
    id="One", command_line="/bin/sh -c 'echo hello-from-15; exit 7'",
    constraints=m.BatchTaskConstraints(max_wall_clock_time=timedelta(hours=1))))
c.create_task("sdk15", m.BatchTaskCreateOptions(id="zero", command_line="/bin/true",
                                                constraints=m.BatchTaskConstraints(retention_time=timedelta(0))))
try:
    c.create_task("sdk15", m.BatchTaskCreateOptions(id="ONE", command_line="/bin/true"))
except ResourceExistsError as e:
    out["dup"] = e.error.code
res = c.create_task_collection("sdk15", m.BatchTaskGroup(task_values=[
    m.BatchTaskCreateOptions(id=f"c{i}", command_line="/bin/true") for i in range(3)]))
out["collection"] = sorted([r.task_id, r.status] for r in res.result_values)
# a disabled job holds the 120 tasks create_tasks sends in two requests (they need not run)
c.create_job(m.BatchJobCreateOptions(id="bulk", pool_info=m.BatchPoolInfo(pool_id="p")))
c.begin_disable_job("bulk", m.BatchJobDisableOptions(disable_tasks="wait"), polling_interval=0).result()
out["disabled"] = c.get_job("bulk").state
many = c.create_tasks("bulk", [m.BatchTaskCreateOptions(id=f"m{i:03d}", command_line="/bin/true")
                               for i in range(120)])
out["many"] = sorted({r.status for r in many.result_values}) + [len(many.result_values)]
out["bulk"] = len(list(c.list_tasks("bulk", select=["id"])))
c.begin_enable_job("bulk", polling_interval=0).result()
out["enabled"] = c.get_job("bulk").state
c.begin_terminate_job("bulk", m._models.BatchJobTerminateOptions(termination_reason="bulk"),
                      polling_interval=0).result()
t = wait("sdk15", "one")
out["one"] = {"id": t.id, "exit": t.execution_info.exit_code, "result": t.execution_info.result,
              "retention": wait("sdk15", "zero").constraints.retention_time.total_seconds(),
              "wall": t.constraints.max_wall_clock_time.total_seconds(), "tz": t.creation_time.utcoffset() is not None,
              "node": t.node_info.node_id is not None}
props = c.get_task_file_properties("sdk15", "One", "stdout.txt")
out["props"] = {"length": props.content_length, "dir": props.is_directory, "mode": props.file_mode,
                "url": props.url.endswith("/files/stdout.txt"), "modified": props.last_modified is not None}
out["range"] = b"".join(c.download_task_file("sdk15", "One", "stdout.txt", ocp_range="bytes=0-4")).decode()
for i in range(3):
    wait("sdk15", f"c{i}")
out["listed"] = sorted(t.id for t in c.list_tasks("sdk15", filter="state eq 'completed' and startswith(id, 'c')",
                                                   select=["id", "state"]))
out["all"] = len(list(c.list_tasks("sdk15")))
c.create_task("sdk15", m.BatchTaskCreateOptions(id="long", command_line="/bin/sh -c 'sleep 60'"))
wait("sdk15", "long", "running")
c.terminate_task("sdk15", "long")
out["terminated"] = wait("sdk15", "long").execution_info.result
c.delete_task("sdk15", "long")
try:
    c.get_task("sdk15", "long")
except ResourceNotFoundError as e:
    out["deleted"] = e.error.code
counts = c.get_job_task_counts("sdk15")
out["counts"] = [counts.task_counts.completed, counts.task_counts.failed, counts.task_counts.succeeded,
                 counts.task_slot_counts.completed]
status = list(c.list_job_preparation_and_release_task_status("sdk15"))
out["prep"] = [s.job_preparation_task_execution_info.exit_code for s in status]
# 15.1 cannot send the optional body empty (its serializer raises) and keeps its model private
reason = m._models.BatchJobTerminateOptions(termination_reason="sdk-done")
c.begin_terminate_job("sdk15", reason, polling_interval=0).result()
job = c.get_job("sdk15")
out["job"] = [job.state, job.execution_info.termination_reason]
c.begin_delete_job("sdk15", polling_interval=0).result()
try:
    c.get_job("sdk15")
except ResourceNotFoundError as e:
    out["job_deleted"] = e.error.code
print(json.dumps(out, default=str))
'''


@pytest.fixture(scope="module")
def clients() -> Clients:
    return ensure_clients()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with serving("api-sdk15", tmp_path_factory.mktemp("api-sdk15"), page_cap=50) as server:
        yield server


def test_sdk15_end_to_end(clients: Clients, api: ApiServer, tmp_path: Path) -> None:
    out = run_client(clients.sdk15, SCRIPT, api, tmp_path)
    assert out["dup"] == "TaskExists"
    assert out["collection"] == [[f"c{i}", "success"] for i in range(3)]
    assert out["many"] == ["success", 120]
    assert out["one"] == {"id": "One", "exit": 7, "result": "failure", "retention": 0.0, "wall": 3600.0,
                          "tz": True, "node": True}
    assert out["props"] == {"length": 14, "dir": False, "mode": "100640", "url": True, "modified": True}
    assert out["range"] == "hello"
    assert out["listed"] == ["c0", "c1", "c2"]
    assert out["bulk"] == 120                    # walked over pages of 50
    assert (out["disabled"], out["enabled"]) == ("disabled", "active")
    assert out["all"] == 5
    assert out["terminated"] == "failure" and out["deleted"] == "TaskNotFound"
    assert out["counts"] == [5, 1, 4, 5]
    assert out["prep"] == [0]
    assert out["job"] == ["completed", "sdk-done"]
    assert out["job_deleted"] == "JobNotFound"
