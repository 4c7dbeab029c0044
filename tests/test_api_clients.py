"""The real clients against the local API's edge: azure-batch 15.1.0, azure-batch 14.2.0 (msrest)
and az 2.91.0 (azure-batch 15.0.0b1), each in its own venv (scripts/clients.sh), against a real
uvicorn server (tests/clients.py DemoServer). For each: a signed request passes auth and gets the
typed error / result it expects, a POST with a body verifies, a wrong key is a 403
AuthenticationFailed, and a list walks every page through odata.nextLink."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import ACCOUNT, CLIENTS_TIMEOUT_S, JOB_COUNT, KEY_B64, Clients, DemoServer, ensure_clients

# The first test here may install the clients (scripts/clients.sh: ~100 s cold, <1 s warm) inside
# its timeout. Once the install moves into conftest's pre-loop hook (as infra-up did), drop this.
pytestmark = pytest.mark.timeout(CLIENTS_TIMEOUT_S + 120)

WRONG_KEY = "d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nd3I="
ACTIVE = [f"job-{i:02d}" for i in range(JOB_COUNT) if i % 2 == 0]
ALL = [f"job-{i:02d}" for i in range(JOB_COUNT)]
CLIENT_TIMEOUT_S = 90

SDK15 = r'''
import json, sys
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.batch import BatchClient, models as m
url, account, key, wrong = sys.argv[1:5]
client = BatchClient(endpoint=url, credential=AzureNamedKeyCredential(account, key))
out = {}
def err(e):
    return {"type": type(e).__name__, "status": e.status_code, "code": e.error.code if e.error else None,
            "details": [[d.code, d.message] for d in (e.error.details if e.error else [])]}
try:
    client.get_job("nope")
except HttpResponseError as e:
    out["missing"] = err(e)
job = client.get_job("job-04")
out["job"] = {"id": job.id, "state": job.state == m.BatchJobState.ACTIVE,
              "unlimited": job.constraints.max_wall_clock_time.days, "tz": job.creation_time.utcoffset() is not None}
out["all"] = [j.id for j in client.list_jobs()]
out["active"] = [j.id for j in client.list_jobs(filter="state eq 'active'", max_results=4, select=["id", "state"])]
client.create_job(m.BatchJobCreateOptions(id="new-job", pool_info=m.BatchPoolInfo(pool_id="p")))
out["created"] = True
try:
    client.create_job(m.BatchJobCreateOptions({"id": "bad", "poolInfo": {}, "priority": "high"}))
except HttpResponseError as e:
    out["invalid"] = err(e)
try:
    BatchClient(endpoint=url, credential=AzureNamedKeyCredential(account, wrong)).get_job("job-04")
except HttpResponseError as e:
    out["wrong_key"] = err(e)
print(json.dumps(out))
'''

SDK14 = r'''
import json, sys
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials
from azure.batch.models import BatchErrorException, JobAddParameter, JobListOptions, PoolInformation
url, account, key, wrong = sys.argv[1:5]
client = BatchServiceClient(SharedKeyCredentials(account, key), batch_url=url)
out = {}
def err(e):
    return {"type": type(e).__name__, "status": e.response.status_code, "code": e.error.code,
            "details": [[d.key, d.value] for d in (e.error.values or [])]}
try:
    client.job.get("nope")
except BatchErrorException as e:
    out["missing"] = err(e)
job = client.job.get("job-04")
out["job"] = {"id": job.id, "state": job.state.value == "active",
              "unlimited": job.constraints.max_wall_clock_time.days, "tz": job.creation_time.utcoffset() is not None}
out["all"] = [j.id for j in client.job.list()]
out["active"] = [j.id for j in client.job.list(
    job_list_options=JobListOptions(filter="state eq 'active'", max_results=4, select="id,state"))]
client.job.add(JobAddParameter(id="new-job", pool_info=PoolInformation(pool_id="p")))
out["created"] = True
try:
    client.job.add(JobAddParameter(id="bad", pool_info=PoolInformation(pool_id="p"), priority=5000))
    out["invalid"] = "accepted"
except BatchErrorException as e:
    out["invalid"] = err(e)
try:
    BatchServiceClient(SharedKeyCredentials(account, wrong), batch_url=url).job.get("job-04")
except BatchErrorException as e:
    out["wrong_key"] = err(e)
print(json.dumps(out))
'''


@pytest.fixture(scope="session")
def clients() -> Clients:
    """The three client venvs (scripts/clients.sh, once per session; ~2 min cold, <1 s warm)."""
    return ensure_clients()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DemoServer]:
    srv = DemoServer.start(tmp_path / "server")
    yield srv
    srv.stop()


def run_script(python: Path, source: str, server: DemoServer, tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "client.py"
    script.write_text(source)
    proc = subprocess.run([str(python), str(script), server.url, ACCOUNT, KEY_B64, WRONG_KEY],
                          capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\nserver log:\n{server.log.read_text()}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def later_pages(server: DemoServer) -> int:
    """How many list requests carried a $skiptoken (pages after the first), from the server log."""
    events = [json.loads(line) for line in server.stop().splitlines() if line.startswith("{")]
    return sum(1 for e in events if e.get("event") == "demo list page" and e.get("after"))


def check_common(out: dict[str, Any], server: DemoServer) -> None:
    assert out["job"] == {"id": "job-04", "state": True, "unlimited": 10675199, "tz": True}
    assert out["all"] == ALL
    assert out["active"] == ACTIVE
    assert out["created"] is True
    assert out["wrong_key"]["status"] == 403 and out["wrong_key"]["code"] == "AuthenticationFailed"
    # 23 jobs in pages of 10 (the server's cap) -> 2 later pages; 12 active in pages of 4 -> 2 more
    assert later_pages(server) == 2 + 2


def test_sdk15(clients: Clients, server: DemoServer, tmp_path: Path) -> None:
    out = run_script(clients.sdk15, SDK15, server, tmp_path)
    assert out["missing"]["type"] == "ResourceNotFoundError"
    assert (out["missing"]["status"], out["missing"]["code"]) == (404, "JobNotFound")
    assert out["invalid"]["type"] == "HttpResponseError"
    assert (out["invalid"]["status"], out["invalid"]["code"]) == (400, "InvalidPropertyValue")
    assert ["PropertyName", "priority"] in out["invalid"]["details"]
    assert out["wrong_key"]["type"] == "HttpResponseError"
    check_common(out, server)


def test_sdk14(clients: Clients, server: DemoServer, tmp_path: Path) -> None:
    out = run_script(clients.sdk14, SDK14, server, tmp_path)
    assert out["missing"]["type"] == "BatchErrorException"
    assert (out["missing"]["status"], out["missing"]["code"]) == (404, "JobNotFound")
    assert (out["invalid"]["status"], out["invalid"]["code"]) == (400, "InvalidPropertyValue")
    assert ["PropertyName", "priority"] in out["invalid"]["details"]
    check_common(out, server)


def az(clients: Clients, server: DemoServer, tmp_path: Path, *args: str, key: str = KEY_B64
       ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AZURE_CONFIG_DIR": str(tmp_path / "azconfig"), "AZURE_CORE_COLLECT_TELEMETRY": "false",
           "AZURE_CORE_NO_COLOR": "true"}
    return subprocess.run([str(clients.az), "batch", *args, "--account-endpoint", server.url,
                           "--account-name", ACCOUNT, "--account-key", key],
                          capture_output=True, text=True, env=env, timeout=CLIENT_TIMEOUT_S, check=False)


def test_az_cli(clients: Clients, server: DemoServer, tmp_path: Path) -> None:
    missing = az(clients, server, tmp_path, "job", "show", "--job-id", "nope")
    assert missing.returncode == 3, missing.stderr
    assert missing.stderr.startswith("ERROR: (JobNotFound) The specified job does not exist.")

    shown = az(clients, server, tmp_path, "job", "show", "--job-id", "job-04")
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert (job["id"], job["state"]) == ("job-04", "active")
    assert job["constraints"]["maxWallClockTime"] == "P10675199DT2H48M5.4775807S"

    listed = az(clients, server, tmp_path, "job", "list", "--query", "[].id")
    assert listed.returncode == 0 and json.loads(listed.stdout) == ALL
    active = az(clients, server, tmp_path, "job", "list", "--filter", "state eq 'active'", "--query", "[].id")
    assert active.returncode == 0 and json.loads(active.stdout) == ACTIVE

    good = tmp_path / "job.json"
    good.write_text(json.dumps({"id": "new-job", "poolInfo": {"poolId": "p"}}))
    created = az(clients, server, tmp_path, "job", "create", "--json-file", str(good))
    assert created.returncode == 0, created.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "bad", "poolInfo": {"poolId": "p"}, "priority": "high"}))
    refused = az(clients, server, tmp_path, "job", "create", "--json-file", str(bad))
    assert refused.returncode == 1
    assert refused.stderr.startswith("ERROR: (InvalidPropertyValue) priority: must be a JSON integer")
    assert "PropertyName: priority" in refused.stderr

    wrong = az(clients, server, tmp_path, "job", "show", "--job-id", "job-04", key=WRONG_KEY)
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("ERROR: (AuthenticationFailed) Server failed to authenticate the request.")
    # 23 jobs in pages of 10 (the server's cap) -> 2 later pages; 12 active -> 1 more
    assert later_pages(server) == 2 + 1
