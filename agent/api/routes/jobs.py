"""Job routes (batch-api-routes.md §2): add, get, list, replace / patch, terminate, delete,
disable, enable, task counts, and the job preparation / release status of this node.

Statuses as the service answers and the clients check them: 201 add, 200 get / list / PUT /
PATCH / counts / prep-release status, 202 delete / disable / enable / terminate. Commands go to
``NodeService`` (the lifecycle rules are its); reads go to the store. Must not: log a body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent.api.app import base_url, empty_response, json_response, metadata_url, request_url
from agent.api.errors import BatchApiError
from agent.api.odata import filterable, parse_list_query
from agent.api.routes.common import (
    check_conditions,
    context,
    endpoint,
    get_job,
    if_match,
    json_object,
    paged,
    store_call,
)
from agent.api.routes.render import JOB_OWNED, job_headers, job_json
from agent.store import JobRecord, Page, StateCounts, Store

_TIME = filterable("datetime")
_STRING = filterable("string", "eq", "ne", "gt", "ge", "lt", "le", "startswith")
JOB_FILTERS = {"id": _STRING, "state": filterable("string", "eq", "ne"), "stateTransitionTime": _TIME,
               "creationTime": _TIME, "lastModified": _TIME, "executionInfo/startTime": _TIME,
               "executionInfo/endTime": _TIME, "executionInfo/poolId": _STRING}
PREP_FILTERS = {"poolId": filterable("string", "eq", "ne"), "nodeId": filterable("string", "eq", "ne"),
                **{f"{info}/{name}": spec for info in ("jobPreparationTaskExecutionInfo", "jobReleaseTaskExecutionInfo")
                   for name, spec in (("state", filterable("string", "eq", "ne")),
                                      ("result", filterable("string", "eq", "ne")),
                                      ("startTime", _TIME), ("endTime", _TIME), ("exitCode", filterable("int")))}}


def _jobs_page(s: Store, size: int, token: str | None, match: Callable[[JobRecord], bool] | None,
               states: frozenset[str] | None) -> Page[JobRecord]:
    return s.list_jobs(max_results=size, token=token, match=match, states=states)


async def _reply_job(request: Request, job_id: str, status: int) -> Response:
    """An empty answer with the job's entity headers (header set D)."""
    job = await get_job(request, job_id)
    return empty_response(status, job_headers(job, base_url(request)))


@endpoint
async def add_job(request: Request) -> Response:
    body = await json_object(request)
    job = await context(request).service.add_job(body)
    headers = job_headers(job, base_url(request))
    return empty_response(201, {**headers, "Location": headers["DataServiceId"]})


@endpoint
async def list_jobs(request: Request) -> Response:
    query = parse_list_query(request_url(request), request.query_params, filters=JOB_FILTERS)
    base = base_url(request)
    out = await paged(request, query, _jobs_page, lambda r: job_json(r, base))
    return json_response(out.body(metadata_url(request, "jobs")))


@endpoint
async def get_job_route(request: Request) -> Response:
    job = await get_job(request, request.path_params["jobId"])
    base = base_url(request)
    early = check_conditions(request, job.etag, job.last_modified, read=True)
    if early is not None:
        return early
    select = request.query_params.get("$select")
    body = job_json(job, base)
    if select:
        keep = {n.strip() for n in select.split(",")} | {"odata.metadata"}
        body = {k: v for k, v in body.items() if k in keep}
    return json_response(body, headers=job_headers(job, base))


async def _update(request: Request, *, replace_all: bool) -> Response:
    job_id = request.path_params["jobId"]
    job = await get_job(request, job_id)
    check_conditions(request, job.etag, job.last_modified, read=False)
    body = await json_object(request)
    changes = {k: v for k, v in body.items() if k not in JOB_OWNED and k != "id"}
    updated = await context(request).service.update_job(job.id, changes, replace_all=replace_all,
                                                         if_match=if_match(request) or job.etag)
    return empty_response(200, job_headers(updated, base_url(request)))


@endpoint
async def patch_job(request: Request) -> Response:
    return await _update(request, replace_all=False)


@endpoint
async def put_job(request: Request) -> Response:
    return await _update(request, replace_all=True)


async def _checked(request: Request) -> JobRecord:
    job = await get_job(request, request.path_params["jobId"])
    check_conditions(request, job.etag, job.last_modified, read=False)
    return job


@endpoint
async def delete_job(request: Request) -> Response:
    job = await _checked(request)
    await context(request).service.delete_job(job.id)
    return empty_response(202)


@endpoint
async def terminate_job(request: Request) -> Response:
    job = await _checked(request)
    body = await json_object(request, optional=True)
    reason = body.get("terminateReason")
    if reason is not None and not isinstance(reason, str):
        raise BatchApiError("InvalidPropertyValue", values=(("PropertyName", "terminateReason"),
                                                            ("Reason", "terminateReason must be a string")))
    await context(request).service.terminate_job(job.id, reason)
    return await _reply_job(request, job.id, 202)


@endpoint
async def disable_job(request: Request) -> Response:
    job = await _checked(request)
    body = await json_object(request)
    how = body.get("disableTasks")
    if not isinstance(how, str):
        raise BatchApiError("MissingRequiredProperty" if how is None else "InvalidPropertyValue", values=(
            ("PropertyName", "disableTasks"), ("Reason", "disableTasks: use requeue, terminate or wait")))
    await context(request).service.disable_job(job.id, how)
    return await _reply_job(request, job.id, 202)


@endpoint
async def enable_job(request: Request) -> Response:
    job = await _checked(request)
    await context(request).service.enable_job(job.id)
    return await _reply_job(request, job.id, 202)


def _counts(c: StateCounts) -> dict[str, int]:
    return {"active": c.active, "running": c.running, "completed": c.completed, "succeeded": c.succeeded,
            "failed": c.failed}


@endpoint
async def task_counts(request: Request) -> Response:
    job_id = request.path_params["jobId"]
    counts = await store_call(request, lambda s: s.task_counts(job_id), job_id)
    body = {"odata.metadata": metadata_url(request, "Microsoft.Azure.Batch.Protocol.Entities.TaskCountsResult"),
            "taskCounts": _counts(counts.tasks), "taskSlotCounts": _counts(counts.slots)}
    return json_response(body)


@endpoint
async def prep_release_status(request: Request) -> Response:
    job = await get_job(request, request.path_params["jobId"])
    if "jobPreparationTask" not in job.body and "jobReleaseTask" not in job.body:
        raise BatchApiError("JobPreparationTaskNotSpecified", values=(
            ("Reason", f"job {job.id!r} has no jobPreparationTask or jobReleaseTask"),))
    query = parse_list_query(request_url(request), request.query_params, filters=PREP_FILTERS)
    prep, release = await context(request).service.prep_release_status(job.id)
    items: list[dict[str, Any]] = []
    if prep is not None or release is not None:
        node = context(request).service.core.runner.node
        item: dict[str, Any] = {"poolId": node.pool_id, "nodeId": node.node_id,
                                "nodeUrl": f"{node.account_url.rstrip('/')}/pools/{node.pool_id}/nodes/{node.node_id}"}
        if prep is not None:
            item["jobPreparationTaskExecutionInfo"] = dict(prep)
        if release is not None:
            item["jobReleaseTaskExecutionInfo"] = dict(release)
        items.append(item)
    page = query.page(items, key=lambda i: str(i["nodeId"]), cap=request.state.api_settings.page_cap)
    return json_response(page.body(metadata_url(request, "jobpreparationandreleasetaskstatuslist")))


def routes() -> list[BaseRoute]:
    return [
        Route("/jobs", add_job, methods=["POST"]),
        Route("/jobs", list_jobs, methods=["GET"]),
        Route("/jobs/{jobId}", get_job_route, methods=["GET"]),
        Route("/jobs/{jobId}", patch_job, methods=["PATCH"]),
        Route("/jobs/{jobId}", put_job, methods=["PUT"]),
        Route("/jobs/{jobId}", delete_job, methods=["DELETE"]),
        Route("/jobs/{jobId}/terminate", terminate_job, methods=["POST"]),
        Route("/jobs/{jobId}/disable", disable_job, methods=["POST"]),
        Route("/jobs/{jobId}/enable", enable_job, methods=["POST"]),
        Route("/jobs/{jobId}/taskcounts", task_counts, methods=["GET"]),
        Route("/jobs/{jobId}/jobpreparationandreleasetaskstatus", prep_release_status, methods=["GET"]),
    ]
