"""Task routes (batch-api-routes.md §3): add, add collection, get, list, replace constraints,
delete, terminate, reactivate, subtasks.

Statuses the clients check: 201 add (header set D, no body), 200 add-collection with one result
per task (``success`` with eTag / lastModified / location, or ``clienterror`` with Batch's error
body; a collection over 100 tasks or a bad task is a 400 for the whole request, as the service
answers), 200 get / list / PUT / DELETE, 204 terminate / reactivate, 200 subtasks (always empty:
a node runs no multi-instance subtasks). Must not: log a body (it carries SAS URLs, secrets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent.api.app import base_url, empty_response, json_response, metadata_url, request_id, request_url
from agent.api.errors import BatchApiError
from agent.api.formats import format_time
from agent.api.odata import filterable, parse_list_query
from agent.api.routes.common import (
    check_conditions,
    context,
    endpoint,
    get_task,
    json_object,
    paged,
    service_error,
)
from agent.api.routes.render import task_headers, task_json, task_url
from agent.store import Page, Store, TaskRecord

_TIME = filterable("datetime")
TASK_FILTERS = {
    "id": filterable("string", "eq", "ne", "gt", "ge", "lt", "le", "startswith"),
    "state": filterable("string", "eq", "ne"), "stateTransitionTime": _TIME, "creationTime": _TIME,
    "lastModified": _TIME, "lastModifiedTime": _TIME, "executionInfo/startTime": _TIME,
    "executionInfo/endTime": _TIME, "executionInfo/exitCode": filterable("int"),
    "executionInfo/result": filterable("string", "eq", "ne"),
}


@endpoint
async def add_task(request: Request) -> Response:
    job_id = request.path_params["jobId"]
    body = await json_object(request)
    task = await context(request).service.add_task(job_id, body)
    headers = task_headers(task, base_url(request))
    return empty_response(201, {**headers, "Location": headers["DataServiceId"]})


@endpoint
async def add_collection(request: Request) -> Response:
    job_id = request.path_params["jobId"]
    body = await json_object(request)
    if not isinstance(body.get("value"), list):
        raise BatchApiError("MissingRequiredProperty" if "value" not in body else "InvalidPropertyValue", values=(
            ("PropertyName", "value"), ("Reason", "send {\"value\": [task, ...]} with 1 to 100 tasks")))
    results = await context(request).service.add_tasks(job_id, body)
    base = base_url(request)
    rid = request_id(request)
    value: list[dict[str, Any]] = []
    for result in results:
        if result.record is not None:
            rec = result.record
            value.append({"status": "success", "taskId": rec.id, "eTag": rec.etag,
                          "lastModified": format_time(rec.last_modified), "location": task_url(base, job_id, rec.id)})
        else:
            assert result.error is not None
            err = service_error(result.error)
            value.append({"status": "clienterror", "taskId": result.id,
                          "error": {k: v for k, v in err.body(base_url=base, request_id=rid).items()
                                    if k != "odata.metadata"}})
    return json_response({"odata.metadata": metadata_url(request, "taskaddresult"), "value": value})


@endpoint
async def list_tasks(request: Request) -> Response:
    job_id = request.path_params["jobId"]
    query = parse_list_query(request_url(request), request.query_params, filters=TASK_FILTERS)
    base = base_url(request)

    def render(r: TaskRecord) -> dict[str, Any]:
        item = task_json(r, base)
        if query.filter is not None:          # the name the filter docs use for lastModified
            item["lastModifiedTime"] = item["lastModified"]
        return item

    def fetch(s: Store, size: int, token: str | None, match: Callable[[TaskRecord], bool] | None,
              states: frozenset[str] | None) -> Page[TaskRecord]:
        return s.list_tasks(job_id, max_results=size, token=token, match=match, states=states)
    out = await paged(request, query, fetch, render, job_id)
    if query.filter is not None and (query.select is None or "lastModifiedTime" not in query.select):
        for item in out.items:
            item.pop("lastModifiedTime", None)
    return json_response(out.body(metadata_url(request, "tasks")))


@endpoint
async def get_task_route(request: Request) -> Response:
    task = await get_task(request, request.path_params["jobId"], request.path_params["taskId"])
    early = check_conditions(request, task.etag, task.last_modified, read=True)
    if early is not None:
        return early
    base = base_url(request)
    body = task_json(task, base)
    select = request.query_params.get("$select")
    if select:
        keep = {n.strip() for n in select.split(",")} | {"odata.metadata"}
        body = {k: v for k, v in body.items() if k in keep}
    return json_response(body, headers=task_headers(task, base))


async def _checked(request: Request) -> TaskRecord:
    task = await get_task(request, request.path_params["jobId"], request.path_params["taskId"])
    check_conditions(request, task.etag, task.last_modified, read=False)
    return task


@endpoint
async def put_task(request: Request) -> Response:
    task = await _checked(request)
    body = await json_object(request)
    constraints = body.get("constraints")
    if constraints is not None and not isinstance(constraints, dict):
        raise BatchApiError("InvalidPropertyValue", values=(("PropertyName", "constraints"),
                                                            ("Reason", "constraints must be a JSON object")))
    updated = await context(request).service.update_task(task.job_id, task.id, constraints)
    return empty_response(200, task_headers(updated, base_url(request)))


@endpoint
async def delete_task(request: Request) -> Response:
    task = await _checked(request)
    await context(request).service.delete_task(task.job_id, task.id)
    return empty_response(200)


@endpoint
async def terminate_task(request: Request) -> Response:
    task = await _checked(request)
    await context(request).service.terminate_task(task.job_id, task.id)
    after = await get_task(request, task.job_id, task.id)
    return empty_response(204, task_headers(after, base_url(request)))


@endpoint
async def reactivate_task(request: Request) -> Response:
    task = await _checked(request)
    after = await context(request).service.reactivate_task(task.job_id, task.id)
    return empty_response(204, task_headers(after, base_url(request)))


@endpoint
async def subtasks(request: Request) -> Response:
    await get_task(request, request.path_params["jobId"], request.path_params["taskId"])
    return json_response({"odata.metadata": metadata_url(request, "subtaskinformations"), "value": []})


def routes() -> list[BaseRoute]:
    one = "/jobs/{jobId}/tasks/{taskId}"
    return [
        Route("/jobs/{jobId}/tasks", add_task, methods=["POST"]),
        Route("/jobs/{jobId}/tasks", list_tasks, methods=["GET"]),
        Route("/jobs/{jobId}/addtaskcollection", add_collection, methods=["POST"]),
        Route(one, get_task_route, methods=["GET"]),
        Route(one, put_task, methods=["PUT"]),
        Route(one, delete_task, methods=["DELETE"]),
        Route(f"{one}/terminate", terminate_task, methods=["POST"]),
        Route(f"{one}/reactivate", reactivate_task, methods=["POST"]),
        Route(f"{one}/subtasksinfo", subtasks, methods=["GET"]),
    ]
