"""Task routes over raw REST against a real server (tests/api_kit.py): add, add collection (per-task
results, 101 tasks, ids in another case), get, list, constraints, terminate, reactivate, delete,
subtasks, and a task's own Bearer token (its job only, only while it runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_kit import ApiServer, serving, sh

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with serving("api-tasks", tmp_path_factory.mktemp("api-tasks"), page_cap=4) as server:
        for job_id in ("tj", "other"):
            made = server.call("POST", "/jobs", json_body={"id": job_id, "poolInfo": {"poolId": "p"}})
            assert made.status_code == 201
        yield server


def error(r: Any) -> tuple[int, str, dict[str, str]]:
    body = r.json()
    return r.status_code, body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


def test_add_get_ids_and_errors(api: ApiServer) -> None:
    r = api.call("POST", "/jobs/TJ/tasks", json_body={"id": "First-Task", "commandLine": sh("echo out; exit 0"),
                                                      "constraints": {"retentionTime": "P", "maxWallClockTime": "PT1H"},
                                                      "environmentSettings": [{"name": "A", "value": "1"}]})
    assert r.status_code == 201 and r.content == b""
    assert r.headers["DataServiceId"] == f"{api.url}/jobs/tj/tasks/First-Task" and r.headers["ETag"]
    assert error(api.call("POST", "/jobs/tj/tasks", json_body={"id": "first-TASK", "commandLine": "x"}))[:2] == (
        409, "TaskExists")
    assert error(api.call("POST", "/jobs/nope/tasks", json_body={"id": "a", "commandLine": "x"}))[:2] == (
        404, "JobNotFound")
    status, code, values = error(api.call("POST", "/jobs/tj/tasks", json_body={
        "id": "bad", "commandLine": "x", "constraints": {"maxWallClockTime": "soon"}}))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "constraints.maxWallClockTime")
    status, code, values = error(api.call("POST", "/jobs/tj/tasks", json_body={"id": "nocmd"}))
    assert (status, code, values["PropertyName"]) == (400, "MissingRequiredProperty", "commandLine")
    status, code, _ = error(api.call("POST", "/jobs/tj/tasks", json_body={
        "id": "dep", "commandLine": "x", "dependsOn": {"taskIds": ["a"]}}))
    assert (status, code) == (400, "TaskDependenciesNotSpecifiedOnJob")
    body = api.wait_task("tj", "FIRST-task")
    assert body["id"] == "First-Task" and body["executionInfo"]["exitCode"] == 0
    assert body["executionInfo"]["result"] == "success" and body["nodeInfo"]["taskRootDirectory"]
    assert body["constraints"] == {"maxWallClockTime": "PT1H", "retentionTime": "PT0S", "maxTaskRetryCount": 0}
    assert body["environmentSettings"] == [{"name": "A", "value": "1"}] and body["requiredSlots"] == 1
    assert error(api.call("GET", "/jobs/tj/tasks/none"))[:2] == (404, "TaskNotFound")
    assert error(api.call("GET", "/jobs/none/tasks/First-Task"))[:2] == (404, "JobNotFound")
    assert api.call("GET", "/jobs/tj/tasks/first-task/subtasksinfo").json()["value"] == []


def test_add_collection_results_limits_and_list(api: ApiServer) -> None:
    tasks = [{"id": f"c{i}", "commandLine": sh(f"exit {i % 2}")} for i in range(5)]
    assert api.call("POST", "/jobs/tj/tasks", json_body={"id": "pre", "commandLine": "/bin/true"}).status_code == 201
    tasks.append({"id": "PRE", "commandLine": "/bin/true"})                        # taken, another case
    tasks.append({"id": "d1", "commandLine": "/bin/true", "dependsOn": {"taskIds": ["c0"]}})
    r = api.call("POST", "/jobs/tj/addtaskcollection", json_body={"value": tasks})
    assert r.status_code == 200, r.text
    value = r.json()["value"]
    assert [(v["taskId"], v["status"]) for v in value] == [
        *[(f"c{i}", "success") for i in range(5)], ("PRE", "clienterror"), ("d1", "clienterror")]
    assert value[0]["location"] == f"{api.url}/jobs/tj/tasks/c0" and value[0]["eTag"] and value[0]["lastModified"]
    assert value[5]["error"]["code"] == "TaskExists" and value[5]["error"]["message"]["value"]
    assert value[6]["error"]["code"] == "TaskDependenciesNotSpecifiedOnJob"
    status, code, values = error(api.call("POST", "/jobs/tj/addtaskcollection", json_body={"value": [
        {"id": "x1", "commandLine": "x"}, {"id": "X1", "commandLine": "x"}]}))     # validate refuses it too
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "value")
    too_many = api.call("POST", "/jobs/tj/addtaskcollection",
                        json_body={"value": [{"id": f"m{i}", "commandLine": "x"} for i in range(101)]})
    status, code, values = error(too_many)
    assert status == 400 and values["PropertyName"] == "value"
    status, code, values = error(api.call("POST", "/jobs/tj/addtaskcollection", json_body={"value": [
        {"id": "ok", "commandLine": "x"}, {"id": "bad", "commandLine": "x", "requiredSlots": "two"}]}))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "value[1].requiredSlots")
    assert error(api.call("POST", "/jobs/tj/addtaskcollection", json_body={"tasks": []}))[:2] == (
        400, "MissingRequiredProperty")
    for i in range(5):
        api.wait_task("tj", f"c{i}")
    r = api.call("GET", "/jobs/tj/tasks", params={"$filter": "startswith(id, 'c') and executionInfo/exitCode eq 1",
                                                   "$select": "id,executionInfo"})
    assert [t["id"] for t in r.json()["value"]] == ["c1", "c3"]
    ids, url = [], api.url_of("/jobs/tj/tasks", {"$filter": "state eq 'completed'", "$select": "id"})
    while url:
        page = api.call("GET", "", url=url).json()
        assert len(page["value"]) <= 4
        ids += [t["id"] for t in page["value"]]
        url = page.get("odata.nextLink")
    assert {f"c{i}" for i in range(5)} <= set(ids)
    assert error(api.call("GET", "/jobs/tj/tasks", params={"$filter": "state eq completed"}))[:2] == (
        400, "InvalidQueryParameterValue")


def test_constraints_terminate_reactivate_delete(api: ApiServer) -> None:
    api.call("POST", "/jobs/tj/tasks", json_body={"id": "long", "commandLine": sh("echo started; sleep 60")})
    api.wait_file("tj", "long", "stdout.txt", "started")
    r = api.call("PUT", "/jobs/tj/tasks/long", json_body={"constraints": {"maxTaskRetryCount": 3}})
    assert r.status_code == 200 and r.headers["DataServiceId"].endswith("/jobs/tj/tasks/long")
    assert api.call("GET", "/jobs/tj/tasks/long").json()["constraints"]["maxTaskRetryCount"] == 3
    assert error(api.call("POST", "/jobs/tj/tasks/long/reactivate"))[:2] == (409, "TaskNotCompleted")
    stale = api.call("POST", "/jobs/tj/tasks/long/terminate", headers={"If-Match": "0x12"})
    assert error(stale)[:2] == (412, "ConditionNotMet")
    r = api.call("POST", "/jobs/tj/tasks/long/terminate")
    assert r.status_code == 204 and r.headers["ETag"]
    body = api.wait_task("tj", "long")
    assert body["executionInfo"]["result"] == "failure"
    assert error(api.call("POST", "/jobs/tj/tasks/long/terminate"))[:2] == (409, "TaskCompleted")
    assert error(api.call("PUT", "/jobs/tj/tasks/long", json_body={"constraints": {}}))[:2] == (409, "TaskCompleted")
    r = api.call("POST", "/jobs/tj/tasks/long/reactivate")
    assert r.status_code == 204
    api.wait_file("tj", "long", "stdout.txt", "started")
    api.call("POST", "/jobs/tj/tasks/long/terminate")
    api.wait_task("tj", "long")
    api.call("POST", "/jobs/tj/tasks", json_body={"id": "fine", "commandLine": "/bin/true"})
    api.wait_task("tj", "fine")
    assert error(api.call("POST", "/jobs/tj/tasks/fine/reactivate"))[:2] == (409, "TaskSucceeded")
    assert api.call("DELETE", "/jobs/tj/tasks/fine").status_code == 200
    assert error(api.call("GET", "/jobs/tj/tasks/fine"))[:2] == (404, "TaskNotFound")
    assert error(api.call("DELETE", "/jobs/tj/tasks/fine"))[:2] == (404, "TaskNotFound")


TOKEN_SCRIPT = r'''
import json, os, urllib.request, urllib.error
api, token = os.environ["API"], os.environ["AZ_BATCH_AUTHENTICATION_TOKEN"]
open("token.txt", "w").write(token)
def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api + path + "?api-version=2025-06-01", data=data, method=method,
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code
print(json.dumps({"add_own": call("POST", "/jobs/" + os.environ["AZ_BATCH_JOB_ID"] + "/tasks",
                                  {"id": "child", "commandLine": "/bin/true"}),
                  "list_jobs": call("GET", "/jobs"), "other_job": call("GET", "/jobs/other"),
                  "add_other": call("POST", "/jobs/other/tasks", {"id": "x", "commandLine": "/bin/true"})}))
'''


def test_task_token_scope_and_liveness(api: ApiServer) -> None:
    r = api.call("POST", "/jobs/tj/tasks", json_body={
        "id": "tok", "commandLine": "python3 -c " + json.dumps(TOKEN_SCRIPT).replace("\\n", "\n"),
        "authenticationTokenSettings": {"access": ["job"]},
        "environmentSettings": [{"name": "API", "value": api.url}]})
    assert r.status_code == 201, r.text
    body = api.wait_task("tj", "tok")
    out = api.call("GET", "/jobs/tj/tasks/tok/files/stdout.txt").text
    assert body["executionInfo"]["exitCode"] == 0, out + api.call("GET", "/jobs/tj/tasks/tok/files/stderr.txt").text
    assert json.loads(out) == {"add_own": 201, "list_jobs": 403, "other_job": 403, "add_other": 403}
    api.wait_task("tj", "child")
    token = api.call("GET", "/jobs/tj/tasks/tok/files/wd/token.txt").text
    ended = api.call("GET", "/jobs/tj/tasks/child", token=token)
    assert error(ended)[:2] == (403, "AuthenticationFailed")


def test_paging_tokens_and_body_limit(api: ApiServer) -> None:
    api.call("POST", "/jobs", json_body={"id": "pg", "poolInfo": {"poolId": "p"}})
    api.call("POST", "/jobs/pg/disable", json_body={"disableTasks": "wait"})      # nothing runs
    api.call("POST", "/jobs/pg/addtaskcollection",
             json_body={"value": [{"id": f"p{i}", "commandLine": "x"} for i in range(6)]})
    first = api.call("GET", "/jobs/pg/tasks", params={"$select": "id"}).json()
    assert [t["id"] for t in first["value"]] == ["p0", "p1", "p2", "p3"]
    api.call("POST", "/jobs/pg/tasks", json_body={"id": "added-later", "commandLine": "x"})
    rest = api.call("GET", "", url=first["odata.nextLink"]).json()
    assert [t["id"] for t in rest["value"]] == ["p4", "p5", "added-later"] and "odata.nextLink" not in rest
    either = api.call("GET", "/jobs/pg/tasks", params={"$filter": "state eq 'completed' or startswith(id, 'P1')"})
    assert [t["id"] for t in either.json()["value"]] == ["p1"]            # an 'or' is not narrowed to one state
    active = api.call("GET", "/jobs/pg/tasks", params={"$filter": "State eq 'active'"})
    assert error(active)[:2] == (400, "InvalidQueryParameterValue")       # property names are case-sensitive
    upper = api.call("GET", "/jobs/pg/tasks", params={"$filter": "state eq 'ACTIVE' and id eq 'p5'"})
    assert [t["id"] for t in upper.json()["value"]] == ["p5"]             # values are not
    bad = api.call("GET", "/jobs/pg/tasks", params={"$skiptoken": "bm90LWEtdG9rZW4"})
    assert error(bad)[:2] == (400, "InvalidQueryParameterValue") and error(bad)[2]["QueryParameterName"] == "$skiptoken"
    big = {"value": [{"id": f"b{i}", "commandLine": "x" * 20_000} for i in range(60)]}      # ~1.2 MB
    assert error(api.call("POST", "/jobs/pg/addtaskcollection", json_body=big))[:2] == (413, "RequestBodyTooLarge")
