"""The az CLI 2.91.0 (azure-batch 15.0.0b1 inside, its own venv) drives the node's API: job create
from a JSON file, task create from a LIST (sent as one add-collection, in reverse file order) and
from an OBJECT (add, then a GET it prints), task show / list --query / stop, task file download,
job delete --yes. Each task completes with its own exit code. The CLI costs 1-2 s a call, so a
few calls check many things; waiting is done over raw REST."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_kit import ApiServer, serving, sh
from clients import ACCOUNT, CLIENTS_TIMEOUT_S, KEY_B64, Clients, ensure_clients

pytestmark = pytest.mark.timeout(CLIENTS_TIMEOUT_S + 180)


@pytest.fixture(scope="module")
def clients() -> Clients:
    return ensure_clients()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with serving("api-az", tmp_path_factory.mktemp("api-az")) as server:
        yield server


def az(clients: Clients, api: ApiServer, tmp: Path, *args: str) -> Any:
    env = {**os.environ, "AZURE_CONFIG_DIR": str(tmp / "azconfig"), "AZURE_CORE_COLLECT_TELEMETRY": "false",
           "AZURE_CORE_NO_COLOR": "true"}
    proc = subprocess.run([str(clients.az), "batch", *args, "--account-endpoint", api.url,
                           "--account-name", ACCOUNT, "--account-key", KEY_B64],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, f"az {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def test_az_end_to_end(clients: Clients, api: ApiServer, tmp_path: Path) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"id": "azjob", "poolInfo": {"poolId": "p"},
                                    "jobPreparationTask": {"commandLine": sh("echo prep")}}))
    az(clients, api, tmp_path, "job", "create", "--json-file", str(job_file))
    listed = tmp_path / "tasks.json"
    listed.write_text(json.dumps([{"id": "t1", "commandLine": sh("echo az-one")},
                                  {"id": "t2", "commandLine": sh("echo two; exit 4")},
                                  {"id": "t3", "commandLine": "/bin/true", "constraints": {"maxTaskRetryCount": 1}}]))
    az(clients, api, tmp_path, "task", "create", "--job-id", "azjob", "--json-file", str(listed))
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"id": "long", "commandLine": sh("echo started; sleep 60")}))
    shown = az(clients, api, tmp_path, "task", "create", "--job-id", "azjob", "--json-file", str(one))
    assert shown["id"] == "long" and shown["commandLine"].startswith("/bin/sh")
    # az sends a LIST as one add-collection in reverse file order: creation order shows it
    order = [t["id"] for t in api.call("GET", "/jobs/azjob/tasks", params={"$select": "id"}).json()["value"]]
    assert order == ["t3", "t2", "t1", "long"]
    for task_id in ("t1", "t2", "t3"):
        api.wait_task("azjob", task_id)
    api.wait_file("azjob", "long", "stdout.txt", "started")
    az(clients, api, tmp_path, "task", "stop", "--job-id", "azjob", "--task-id", "long")
    api.wait_task("azjob", "long")
    t2 = az(clients, api, tmp_path, "task", "show", "--job-id", "azjob", "--task-id", "T2")
    assert (t2["id"], t2["state"], t2["executionInfo"]["exitCode"]) == ("t2", "completed", 4)
    assert t2["constraints"]["retentionTime"] == "P7D"
    results = az(clients, api, tmp_path, "task", "list", "--job-id", "azjob", "--query",
                 "[].{id:id, state:state, exit:executionInfo.exitCode, result:executionInfo.result}")
    assert sorted((r["id"], r["state"], r["exit"], r["result"]) for r in results) == [
        ("long", "completed", -15, "failure"), ("t1", "completed", 0, "success"),
        ("t2", "completed", 4, "failure"), ("t3", "completed", 0, "success")]
    target = tmp_path / "out.txt"
    az(clients, api, tmp_path, "task", "file", "download", "--job-id", "azjob", "--task-id", "t1",
       "--file-path", "stdout.txt", "--destination", str(target))
    assert target.read_text() == "az-one\n"
    az(clients, api, tmp_path, "job", "delete", "--job-id", "azjob", "--yes")
    import time

    end = time.monotonic() + 30
    while api.call("GET", "/jobs/azjob").status_code != 404:
        assert time.monotonic() < end, "the job was never deleted"
        time.sleep(0.02)
