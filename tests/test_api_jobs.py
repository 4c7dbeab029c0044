"""Job routes over raw REST (httpx, Shared Key signed) against a real uvicorn + NodeService +
SqliteStore (tests/api_kit.py): statuses, headers, bodies and every error path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_kit import ApiServer, serving, sh

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with serving("api-jobs", tmp_path_factory.mktemp("api-jobs"), page_cap=3) as server:
        yield server


def job(job_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "poolInfo": {"poolId": "local"}, **extra}


def error(r: Any) -> tuple[int, str, dict[str, str]]:
    body = r.json()
    return r.status_code, body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


def test_add_get_headers_and_ids_regardless_of_case(api: ApiServer) -> None:
    r = api.call("POST", "/jobs", json_body=job("Case-Job", priority=5, metadata=[{"name": "a", "value": "b"}]),
                 headers={"client-request-id": "abc-123"})
    assert r.status_code == 201 and r.content == b""
    assert r.headers["DataServiceId"] == f"{api.url}/jobs/Case-Job"
    assert r.headers["ETag"].startswith("0x") and r.headers["Last-Modified"].endswith("GMT")
    assert r.headers["client-request-id"] == "abc-123" and r.headers["request-id"]
    dup = api.call("POST", "/jobs", json_body=job("case-JOB"))
    assert error(dup)[:2] == (409, "JobExists")
    got = api.call("GET", "/jobs/CASE-job")
    assert got.status_code == 200
    body = got.json()
    assert body["id"] == "Case-Job" and body["url"] == f"{api.url}/jobs/Case-Job"
    assert body["priority"] == 5 and body["metadata"] == [{"name": "a", "value": "b"}]
    assert body["state"] == "active" and body["constraints"]["maxWallClockTime"].startswith("P10675199D")
    assert got.headers["ETag"] == body["eTag"] and got.headers["DataServiceId"] == body["url"]
    assert api.call("GET", "/jobs/Case-Job", params={"$select": "id,state"}).json().keys() == {
        "odata.metadata", "id", "state"}
    assert api.call("GET", "/jobs/Case-Job", headers={"If-None-Match": body["eTag"]}).status_code == 304
    assert error(api.call("GET", "/jobs/Case-Job", headers={"If-Match": "0x1"}))[:2] == (412, "ConditionNotMet")


def test_bad_bodies_name_the_json_path(api: ApiServer) -> None:
    status, code, values = error(api.call("POST", "/jobs", json_body=job("bad", priority="high")))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "priority")
    status, code, values = error(api.call("POST", "/jobs", json_body={"poolInfo": {"poolId": "p"}}))
    assert (status, code, values["PropertyName"]) == (400, "MissingRequiredProperty", "id")
    assert error(api.call("POST", "/jobs", content=b"[1, 2]",
                          headers={"Content-Type": "application/json"}))[:2] == (400, "InvalidRequestBody")
    assert error(api.call("POST", "/jobs", content=b"{not json",
                          headers={"Content-Type": "application/json"}))[:2] == (400, "InvalidRequestBody")
    status, code, values = error(api.call("POST", "/jobs", json_body=job(
        "badprep", jobPreparationTask={"commandLine": "x", "constraints": {"maxTaskRetryCount": "x"}})))
    assert (status, code) == (400, "InvalidPropertyValue")
    assert values["PropertyName"] == "jobPreparationTask.constraints.maxTaskRetryCount"


def test_list_filter_select_and_paging(api: ApiServer) -> None:
    for i in range(7):
        assert api.call("POST", "/jobs", json_body=job(f"list-{i}", priority=i)).status_code == 201
    ids: list[str] = []
    url = api.url_of("/jobs", {"$filter": "startswith(id, 'LIST-')", "$select": "id,priority"})
    pages = 0
    while url:
        r = api.call("GET", "", url=url)
        assert r.status_code == 200, r.text
        body = r.json()
        assert all(item.keys() == {"id", "priority"} for item in body["value"])
        ids += [item["id"] for item in body["value"]]
        url = body.get("odata.nextLink")
        pages += 1
    assert ids == [f"list-{i}" for i in range(7)] and pages == 3      # the page cap is 3
    r = api.call("GET", "/jobs", params={"$filter": "startswith(id, 'list-') and priority eq 1"})
    assert error(r)[:2] == (400, "InvalidQueryParameterValue")
    r = api.call("GET", "/jobs", params={"$filter": "state eq 'active' and id ge 'list-5'", "maxresults": "1"})
    assert [j["id"] for j in r.json()["value"]] == ["list-5"] and "odata.nextLink" in r.json()
    assert error(api.call("GET", "/jobs", params={"maxresults": "0"}))[:2] == (400, "OutOfRangeQueryParameterValue")


def test_patch_put_if_match_disable_enable(api: ApiServer) -> None:
    api.call("POST", "/jobs", json_body=job("upd", priority=1, constraints={"maxTaskRetryCount": 2}))
    etag = api.call("GET", "/jobs/upd").headers["ETag"]
    r = api.call("PATCH", "/jobs/upd", json_body={"priority": 9}, headers={"If-Match": etag})
    assert r.status_code == 200 and r.headers["ETag"] != etag and r.headers["DataServiceId"].endswith("/jobs/upd")
    lost = api.call("PATCH", "/jobs/upd", json_body={"priority": 3}, headers={"If-Match": etag})
    assert error(lost)[:2] == (412, "ConditionNotMet")
    body = api.call("GET", "/jobs/upd").json()
    assert body["priority"] == 9 and body["constraints"]["maxTaskRetryCount"] == 2
    assert api.call("PUT", "/jobs/upd", json_body={"priority": 4, "poolInfo": {"poolId": "local"}}).status_code == 200
    body = api.call("GET", "/jobs/upd").json()
    assert body["priority"] == 4 and body["constraints"]["maxTaskRetryCount"] == 0     # PUT resets constraints
    status, code, values = error(api.call("PATCH", "/jobs/upd", json_body={"jobManagerTask": {}}))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "jobManagerTask")
    bad = api.call("POST", "/jobs/upd/disable", json_body={"disableTasks": "later"})
    assert error(bad)[:2] == (400, "InvalidPropertyValue")
    r = api.call("POST", "/jobs/upd/disable", json_body={"disableTasks": "wait"})
    assert r.status_code == 202 and r.headers["DataServiceId"].endswith("/jobs/upd")
    assert api.call("GET", "/jobs/upd").json()["state"] == "disabled"
    assert api.call("POST", "/jobs/upd/enable").status_code == 202
    body = api.call("GET", "/jobs/upd").json()
    assert body["state"] == "active" and body["previousState"] == "enabling"
    assert error(api.call("POST", "/jobs/upd/enable"))[:2] == (409, "OperationInvalidForCurrentState")
    assert error(api.call("PATCH", "/jobs/nope", json_body={"priority": 1}))[:2] == (404, "JobNotFound")


def test_counts_prep_release_terminate_delete(api: ApiServer) -> None:
    api.call("POST", "/jobs", json_body=job("plain"))
    assert error(api.call("GET", "/jobs/plain/jobpreparationandreleasetaskstatus"))[:2] == (
        409, "JobPreparationTaskNotSpecified")
    body = job("pr", jobPreparationTask={"commandLine": sh("echo prep")},
               jobReleaseTask={"commandLine": sh("echo release")})
    assert api.call("POST", "/jobs", json_body=body).status_code == 201
    assert api.call("GET", "/jobs/pr/jobpreparationandreleasetaskstatus").json()["value"] == []
    for i, code in enumerate((0, 0, 4)):
        api.call("POST", "/jobs/pr/tasks", json_body={"id": f"t{i}", "commandLine": sh(f"exit {code}"),
                                                      "requiredSlots": 2})
    for i in range(3):
        api.wait_task("pr", f"t{i}")
    counts = api.call("GET", "/jobs/pr/taskcounts").json()
    assert counts["taskCounts"] == {"active": 0, "running": 0, "completed": 3, "succeeded": 2, "failed": 1}
    assert counts["taskSlotCounts"] == {"active": 0, "running": 0, "completed": 6, "succeeded": 4, "failed": 2}
    status = api.call("GET", "/jobs/pr/jobpreparationandreleasetaskstatus").json()["value"]
    assert len(status) == 1 and status[0]["nodeId"] and status[0]["poolId"]
    prep = status[0]["jobPreparationTaskExecutionInfo"]
    assert prep["state"] == "completed" and prep["exitCode"] == 0 and prep["retryCount"] == 0
    r = api.call("POST", "/jobs/pr/terminate", json_body={"terminateReason": "enough"})
    assert r.status_code == 202 and r.headers["DataServiceId"].endswith("/jobs/pr")
    job_body = wait_job(api, "pr", "completed")
    assert job_body["executionInfo"]["terminateReason"] == "enough"
    release = api.call("GET", "/jobs/pr/jobpreparationandreleasetaskstatus").json()["value"][0]
    assert release["jobReleaseTaskExecutionInfo"]["exitCode"] == 0
    added = api.call("POST", "/jobs/pr/tasks", json_body={"id": "late", "commandLine": "/bin/true"})
    assert error(added)[:2] == (409, "JobCompleted")
    assert error(api.call("POST", "/jobs/pr/terminate"))[:2] == (409, "JobCompleted")
    assert api.call("DELETE", "/jobs/pr").status_code == 202
    wait_gone(api, "/jobs/pr")
    assert error(api.call("GET", "/jobs/pr/taskcounts"))[:2] == (404, "JobNotFound")
    assert error(api.call("DELETE", "/jobs/pr"))[:2] == (404, "JobNotFound")


def test_unknown_routes_verbs_and_unsupported(api: ApiServer) -> None:
    assert error(api.call("GET", "/nothing/here"))[:2] == (400, "InvalidUri")
    assert error(api.call("GET", "/pools"))[:2] == (501, "FeatureNotSupported")
    assert error(api.call("DELETE", "/jobs"))[:2] == (405, "UnsupportedHttpVerb")
    assert error(api.call("GET", "/jobs/x/tasks/y/files/z/../../etc"))[0] in (400, 404)
    unsigned = api.http.get(api.url_of("/jobs"))
    assert unsigned.status_code == 401


def wait_job(api: ApiServer, job_id: str, state: str) -> dict[str, Any]:
    import time

    end = time.monotonic() + 30
    while True:
        body: dict[str, Any] = api.call("GET", f"/jobs/{job_id}").json()
        if body.get("state") == state:
            return body
        assert time.monotonic() < end, f"job {job_id} never reached {state}: {body}"
        time.sleep(0.02)


def wait_gone(api: ApiServer, path: str) -> None:
    import time

    end = time.monotonic() + 30
    while api.call("GET", path).status_code != 404:
        assert time.monotonic() < end, f"{path} still there"
        time.sleep(0.02)
