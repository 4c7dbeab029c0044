"""azure-batch 14.2.0 (msrest, its own venv) drives the node's API end to end with its own names:
job.add with preparation / release, task.add, task.add_collection, task.get until completed with
its real exit code, task.list with a filter, task.terminate / delete, file.get_properties_from_task
(HEAD: one Content-Length), file.get_from_task with a range, file.list_from_task,
job.get_task_counts, job.list_preparation_and_release_task_status, job.terminate / delete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_kit import ApiServer, run_client, serving
from clients import CLIENTS_TIMEOUT_S, Clients, ensure_clients

pytestmark = pytest.mark.timeout(CLIENTS_TIMEOUT_S + 120)

SCRIPT = r'''
import json, sys, time
import datetime
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials
import azure.batch.models as m
url, account, key = sys.argv[1:4]
c = BatchServiceClient(SharedKeyCredentials(account, key), batch_url=url)
out = {}
def wait(job, task, state="completed"):
    end = time.monotonic() + 60
    while True:
        t = c.task.get(job, task)
        if t.state.value == state:
            return t
        assert time.monotonic() < end, (task, t.state)
        time.sleep(0.05)
c.job.add(m.JobAddParameter(id="sdk14", pool_info=m.PoolInformation(pool_id="p"),
                            job_preparation_task=m.JobPreparationTask(command_line="/bin/sh -c 'echo prep'"),
                            job_release_task=m.JobReleaseTask(command_line="/bin/sh -c 'echo release'")))
c.task.add("sdk14", m.TaskAddParameter(id="One", command_line="/bin/sh -c 'echo hello-from-14; exit 5'",
                                       constraints=m.TaskConstraints(max_wall_clock_time=datetime.timedelta(minutes=5))))
try:
    c.task.add("sdk14", m.TaskAddParameter(id="one", command_line="/bin/true"))
except m.BatchErrorException as e:
    out["dup"] = [e.response.status_code, e.error.code]
res = c.task.add_collection("sdk14", [m.TaskAddParameter(id=f"c{i}", command_line="/bin/true") for i in range(3)])
out["collection"] = sorted([r.task_id, r.status.value] for r in res.value)
t = wait("sdk14", "ONE")
out["one"] = {"id": t.id, "exit": t.execution_info.exit_code, "result": t.execution_info.result.value,
              "wall": t.constraints.max_wall_clock_time.total_seconds(),
              "retention": t.constraints.retention_time.days, "tz": t.creation_time.utcoffset() is not None}
raw = c.file.get_properties_from_task("sdk14", "One", "stdout.txt", raw=True)
h = raw.headers
out["props"] = {"length": h["Content-Length"], "dir": h["ocp-batch-file-isdirectory"],
                "mode": h["ocp-batch-file-mode"], "url": h["ocp-batch-file-url"].endswith("/files/stdout.txt"),
                "created": h["ocp-creation-time"] is not None}
opts = m.FileGetFromTaskOptions(ocp_range="bytes=6-9")
out["range"] = b"".join(c.file.get_from_task("sdk14", "One", "stdout.txt", file_get_from_task_options=opts)).decode()
out["files"] = sorted(f.name for f in c.file.list_from_task("sdk14", "One", recursive=False))
for i in range(3):
    wait("sdk14", f"c{i}")
out["listed"] = sorted(t.id for t in c.task.list("sdk14", task_list_options=m.TaskListOptions(
    filter="state eq 'completed' and startswith(id, 'c')", select="id,state")))
c.task.add("sdk14", m.TaskAddParameter(id="long", command_line="/bin/sh -c 'sleep 60'"))
wait("sdk14", "long", "running")
c.task.terminate("sdk14", "long")
out["terminated"] = wait("sdk14", "long").execution_info.result.value
c.task.delete("sdk14", "long")
try:
    c.task.get("sdk14", "long")
except m.BatchErrorException as e:
    out["deleted"] = e.error.code
counts = c.job.get_task_counts("sdk14")
out["counts"] = [counts.task_counts.completed, counts.task_counts.failed, counts.task_slot_counts.completed]
out["prep"] = [s.job_preparation_task_execution_info.exit_code
               for s in c.job.list_preparation_and_release_task_status("sdk14")]
c.job.terminate("sdk14", terminate_reason="fourteen")
end = time.monotonic() + 60
while c.job.get("sdk14").state.value != "completed":
    assert time.monotonic() < end
    time.sleep(0.05)
job = c.job.get("sdk14")
out["job"] = [job.state.value, job.execution_info.terminate_reason, job.constraints.max_wall_clock_time.days]
c.job.delete("sdk14")
end = time.monotonic() + 60
while True:
    try:
        c.job.get("sdk14")
    except m.BatchErrorException as e:
        out["job_deleted"] = e.error.code
        break
    assert time.monotonic() < end
    time.sleep(0.05)
print(json.dumps(out, default=str))
'''


@pytest.fixture(scope="module")
def clients() -> Clients:
    return ensure_clients()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with serving("api-sdk14", tmp_path_factory.mktemp("api-sdk14")) as server:
        yield server


def test_sdk14_end_to_end(clients: Clients, api: ApiServer, tmp_path: Path) -> None:
    out = run_client(clients.sdk14, SCRIPT, api, tmp_path)
    assert out["dup"] == [409, "TaskExists"]
    assert out["collection"] == [[f"c{i}", "success"] for i in range(3)]
    assert out["one"] == {"id": "One", "exit": 5, "result": "failure", "wall": 300.0, "retention": 7, "tz": True}
    assert out["props"] == {"length": 14, "dir": False, "mode": "100640", "url": True, "created": True}
    assert out["range"] == "from"
    assert {"stdout.txt", "stderr.txt", "wd"} <= set(out["files"])
    assert out["listed"] == ["c0", "c1", "c2"]
    assert out["terminated"] == "failure" and out["deleted"] == "TaskNotFound"
    assert out["counts"] == [4, 1, 4]
    assert out["prep"] == [0]
    assert out["job"] == ["completed", "fourteen", 10675199]
    assert out["job_deleted"] == "JobNotFound"
