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
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from agent.api.app import empty_response
from agent.api.bodies import read_json
from agent.api.errors import CODES, BatchApiError, from_spec_error
from agent.api.formats import parse_http_date
from agent.api.odata import ListQuery
from agent.api.odata import Page as OdataPage
from agent.errors import ServiceError, SpecError
from agent.service import NodeService
from agent.store import JobNotFound, JobRecord, Store, StoreThread, TaskNotFound, TaskRecord

T = TypeVar("T")
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


def paged(request: Request, query: ListQuery, records: Iterable[JobRecord | TaskRecord],
          render: Callable[[Any], dict[str, Any]]) -> OdataPage:
    """One page of ``records`` (rendered, filtered, projected) in creation order, with its nextLink.

    Each item's ``odata.metadata`` is dropped (a list carries one for the whole page)."""
    def items() -> Iterator[dict[str, Any]]:
        for record in sorted(records, key=lambda r: r.seq):
            item = render(record)
            item.pop("odata.metadata", None)
            item[_SEQ] = f"{record.seq:016d}"
            yield item
    page = query.page(items(), key=lambda i: str(i[_SEQ]), cap=request.state.api_settings.page_cap)
    for item in page.items:
        item.pop(_SEQ, None)
    return page


_SEQ = "\x00seq"
