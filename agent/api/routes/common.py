"""What every Batch route shares: its context, the error mapping and conditional headers.

``Context`` is the service and the store a route works on, kept on the app's state by
``agent.api.service_app.build_app``. ``endpoint`` wraps a route so that the service's refusals
(``agent.errors.ServiceError``: its ``code`` is the Batch code, its ``path`` the JSON path), a
body ``agent.spec`` refused (``SpecError``) and the store's not-found answers become Batch's
error bodies; nothing else is caught here (the edge turns the rest into 500 without a trace).

Conditional headers (batch-api-routes.md §1.3): ``If-Match`` / ``If-None-Match`` (eTags),
``If-Modified-Since`` / ``If-Unmodified-Since`` (RFC 1123). A read whose condition fails is 304
(If-None-Match, If-Modified-Since) or 412; a write 412 ``ConditionNotMet``. More than one
condition, other than the two pairs the service allows, is 400.

Must not: log a body, a header or a reason that quotes a property value.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from agent.api.app import empty_response
from agent.api.bodies import read_json
from agent.api.errors import CODES, BatchApiError, from_spec_error, query_error
from agent.api.formats import parse_http_date
from agent.api.odata import BoolOp, Compare, Expr, ListQuery, project
from agent.api.odata import Page as OdataPage
from agent.errors import ServiceError, SpecError
from agent.service import NodeService
from agent.store import BadToken, JobNotFound, JobRecord, Page, Store, StoreThread, TaskNotFound, TaskRecord

T = TypeVar("T")
R = TypeVar("R", JobRecord, TaskRecord)
Fetch = Callable[[Store, int, "str | None", "Callable[[R], bool] | None", "frozenset[str] | None"], Page[R]]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Context:
    service: NodeService
    store: StoreThread


def context(request: Request) -> Context:
    ctx = request.app.state.batch
    assert isinstance(ctx, Context)
    return ctx


def service_error(exc: ServiceError) -> BatchApiError:
    code = exc.code if exc.code in CODES else "OperationInvalidForCurrentState"
    values = ((("PropertyName", exc.path),) if exc.path else ()) + (("Reason", exc.reason),)
    return BatchApiError(code, values=values)


def endpoint(fn: Endpoint) -> Endpoint:
    """Map the service's and the spec's refusals to Batch errors."""
    @functools.wraps(fn)
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except ServiceError as exc:
            raise service_error(exc) from None
        except SpecError as exc:
            raise from_spec_error(exc) from None
    return wrapped


# --- reads on the store -----------------------------------------------------------------------

async def get_job(request: Request, job_id: str) -> JobRecord:
    try:
        return await context(request).store.run(lambda s: s.get_job(job_id))
    except JobNotFound:
        raise BatchApiError("JobNotFound", values=(("Reason", f"no job {job_id!r} on this node"),)) from None


async def get_task(request: Request, job_id: str, task_id: str) -> TaskRecord:
    try:
        return await context(request).store.run(lambda s: s.get_task(job_id, task_id))
    except JobNotFound:
        raise BatchApiError("JobNotFound", values=(("Reason", f"no job {job_id!r} on this node"),)) from None
    except TaskNotFound:
        raise BatchApiError("TaskNotFound", values=(("Reason", f"no task {task_id!r} in job {job_id!r}"),)) from None


async def store_call(request: Request, call: Callable[[Store], T], job_id: str) -> T:
    try:
        return await context(request).store.run(call)
    except JobNotFound:
        raise BatchApiError("JobNotFound", values=(("Reason", f"no job {job_id!r} on this node"),)) from None


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object (``{}`` for an optional body that is empty)."""
    if optional and request.headers.get("content-length", "0") in ("", "0") \
            and "transfer-encoding" not in request.headers:
        return {}
    data = await read_json(request)
    if not isinstance(data, dict):
        raise BatchApiError("InvalidRequestBody", values=(("Reason", "the body must be a JSON object"),))
    return data


# --- conditional headers ----------------------------------------------------------------------

def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or etag in tags


def check_conditions(request: Request, etag: str, modified: datetime, *, read: bool) -> Response | None:
    """None when the request may go on; a 304 response for a read whose copy is current.

    Raises 412 ``ConditionNotMet`` / 400 ``MultipleConditionHeadersNotSupported``."""
    h = request.headers
    given = {name for name in ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since") if h.get(name)}
    if len(given) > 1 and given not in ({"if-none-match", "if-modified-since"}, {"if-match", "if-unmodified-since"}):
        raise BatchApiError("MultipleConditionHeadersNotSupported")
    failed = BatchApiError("ConditionNotMet", values=(("Reason", "the resource's eTag or time does not satisfy "
                                                                 "the request's condition header"),))
    modified = modified.replace(microsecond=0)
    if "if-match" in given:
        if not _etag_matches(h["if-match"], etag):
            raise failed
    elif "if-unmodified-since" in given:
        since = parse_http_date(h["if-unmodified-since"])
        if since is not None and modified > since:
            raise failed
    if "if-none-match" in given:
        if _etag_matches(h["if-none-match"], etag):
            if read:
                return empty_response(304)
            raise failed
    elif "if-modified-since" in given:
        since = parse_http_date(h["if-modified-since"])
        if since is not None and modified <= since:
            if read:
                return empty_response(304)
            raise failed
    return None


def if_match(request: Request) -> str | None:
    """The eTag an ``If-Match`` names (for the service's compare-and-swap), if one exact tag."""
    value = request.headers.get("if-match", "").strip()
    if not value or value == "*" or "," in value:
        return None
    return value.removeprefix("W/").strip('"')


async def paged(request: Request, query: ListQuery, fetch: Fetch[R], render: Callable[[R], dict[str, Any]],
                job_id: str = "") -> OdataPage:
    """One page from the store, in creation order: the filter runs in the store's walk (on the
    rendered item, before ``maxresults`` counts), ``$skiptoken`` carries the store's own
    continuation token, and each item is projected by ``$select`` (no per-item odata.metadata).

    ``fetch(store, size, token, match, states)`` is the store call (``list_jobs`` / ``list_tasks``);
    ``states`` narrows the walk to the state a ``state eq '...'`` term requires (the store's index)."""
    size = max(1, min(query.maxresults, request.state.api_settings.page_cap))
    expr = query.filter
    match = None if expr is None else _matcher(expr, render)
    after = query.after
    states = required_states(expr)

    def call(s: Store) -> Page[R]:
        return fetch(s, size, after, match, states)
    try:
        page = await store_call(request, call, job_id)
    except BadToken:
        raise query_error("$skiptoken", after or "", "not a token this server issued") from None
    items = []
    for record in page.items:
        item = render(record)
        item.pop("odata.metadata", None)
        items.append(project(item, query.select))
    return OdataPage(items, query.next_link(page.next_token) if page.next_token else None)


def required_states(expr: Expr | None) -> frozenset[str] | None:
    """The state a filter requires (``state eq 'x'``, alone or and-ed), else None."""
    if isinstance(expr, Compare) and expr.path == "state" and expr.op == "eq" and isinstance(expr.value, str):
        return frozenset({expr.value.casefold()})
    if isinstance(expr, BoolOp) and expr.op == "and":
        left, right = required_states(expr.left), required_states(expr.right)
        if left is not None and right is not None:
            return left & right
        return left if left is not None else right
    return None


def _matcher(expr: Expr, render: Callable[[R], dict[str, Any]]) -> Callable[[R], bool]:
    def match(record: R) -> bool:
        return expr.matches(render(record))
    return match
