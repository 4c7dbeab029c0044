"""The edge every local-API route shares: a Starlette application factory and its one middleware.

``create_app(settings, routes)`` returns a Starlette app (served by uvicorn) whose every answer
goes through ``BatchEdge``, a plain ASGI middleware that, in this order:

1. gives the request a ``request-id`` (uuid4), and adds to every response ``request-id``,
   ``DataServiceVersion: 3.0`` and the caller's ``client-request-id`` (echoed always, not only
   with ``return-client-request-id: true``: no client needs the difference, and the service
   documents the echo; only a short printable value is echoed);
2. authenticates (``agent.api.auth``: Shared Key or a task token; 401 unsigned, 403 wrong) and
   applies the task-token scope check, before any route runs or any body is read;
3. refuses a body over ``max_body`` bytes (413 ``RequestBodyTooLarge``) by its Content-Length;
4. turns an unexpected exception into 500 ``InternalError`` with no traceback in the body, logged
   once with the request id (and swallowed, so uvicorn does not log it a second time).

Routes answer with ``json_response`` / ``empty_response`` and raise ``BatchApiError`` for Batch
errors. A Batch route a node cannot serve (pools, nodes, schedules, certificates, applications)
answers 501 ``FeatureNotSupported``; any other unknown path 400 ``InvalidUri``; a known path with
another verb 405 ``UnsupportedHttpVerb``.

What the app must not do: log a header, a body, a key or a token; build routes of its own (the
service passes them in); know anything about jobs or tasks beyond the unsupported prefixes.
"""

from __future__ import annotations

import json
import re
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.api.auth import Authenticator, Principal, SignedRequest, authorization_schemes, check_scope
from agent.api.errors import JSON_CONTENT_TYPE, BatchApiError
from agent.logs import get_logger
from agent.redact import redact_url

DEFAULT_MAX_BODY = 1024 * 1024 + 64 * 1024  # Batch: an add-collection body must be under 1 MB
_CLIENT_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_log = get_logger(component="api")


@dataclass(frozen=True, slots=True)
class ApiSettings:
    authenticator: Authenticator
    max_body: int = DEFAULT_MAX_BODY
    page_cap: int = 1000               # the most items one list page holds, whatever maxresults says
    public_url: str | None = None      # base of odata links; default: the request's scheme and Host


# --- what routes use --------------------------------------------------------------------------

def base_url(request: Request | Scope) -> str:
    """``http://host:port[/root]`` as the client addressed this node (or the configured public URL)."""
    scope = request.scope if isinstance(request, Request) else request
    settings: ApiSettings | None = scope.get("state", {}).get("api_settings")
    if settings is not None and settings.public_url:
        return settings.public_url.rstrip("/")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
    server = scope.get("server") or ("127.0.0.1", 80)
    host = headers.get("host") or f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"


def request_url(request: Request) -> str:
    """The absolute URL of this request (query included), on ``base_url``."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    path = bytes(raw).decode("latin-1").split("?", 1)[0]
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return f"{base_url(request)}{path}" + (f"?{query}" if query else "")


def metadata_url(request: Request, fragment: str) -> str:
    """``<base>/$metadata#<fragment>``, e.g. ``tasks/@Element`` or ``jobs``."""
    return f"{base_url(request)}/$metadata#{fragment}"


def principal(request: Request) -> Principal:
    """Who sent the request (set by ``BatchEdge`` before any route runs)."""
    value = request.scope.get("state", {}).get("principal")
    if not isinstance(value, Principal):
        raise RuntimeError("principal() called outside BatchEdge")
    return value


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def json_response(body: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")).encode(), status_code=status,
                    headers=dict(headers or {}), media_type=JSON_CONTENT_TYPE)


def empty_response(status: int, headers: Mapping[str, str] | None = None) -> Response:
    """201/202/204 without a body (``Content-Length: 0``; none at all on 204)."""
    return Response(b"", status_code=status, headers=dict(headers or {}))


# --- the middleware ---------------------------------------------------------------------------

class BatchEdge:
    """Request ids, Batch headers, authentication, body-size guard, last-resort errors."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = str(uuid.uuid4())
        state = scope.setdefault("state", {})
        state.update(request_id=rid, api_settings=self.settings)
        req = SignedRequest.from_asgi(scope)
        extra = [(b"request-id", rid.encode()), (b"dataserviceversion", b"3.0")]
        client_rid = req.headers.get("client-request-id", "")
        if _CLIENT_REQUEST_ID.fullmatch(client_rid):
            extra.append((b"client-request-id", client_rid.encode()))
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in names)]
            await send(message)

        try:
            try:
                who = self.settings.authenticator.authenticate(req)
                check_scope(who, req.raw_path, prefix=scope.get("root_path", ""))
                state["principal"] = who
                self._check_length(req)
            except BatchApiError as exc:
                if exc.status == 401:
                    schemes = ", ".join(authorization_schemes(self.settings.authenticator))
                    exc.headers.setdefault("WWW-Authenticate", schemes)
                await error_response(exc, scope)(scope, receive, send_with_headers)
                return
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            # the trace goes to the log as a field (the JSON renderer does not format exc_info)
            _log.error("api request failed", request_id=rid, method=req.method, path=redact_url(req.raw_path),
                       error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            if not started:
                await error_response(BatchApiError("InternalError"), scope)(scope, receive, send_with_headers)

    def _check_length(self, req: SignedRequest) -> None:
        length = req.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_body:
            raise BatchApiError("RequestBodyTooLarge", values=(
                ("Reason", f"the body is {length} bytes; the limit is {self.settings.max_body}"),))


def error_response(exc: BatchApiError, scope: Scope) -> Response:
    rid = str(scope.get("state", {}).get("request_id", ""))
    return Response(exc.render(base_url=base_url(scope), request_id=rid), status_code=exc.status,
                    headers=exc.headers, media_type=JSON_CONTENT_TYPE)


async def _on_batch_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchApiError)
    return error_response(exc, request.scope)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        err = BatchApiError("UnsupportedHttpVerb", headers=dict(exc.headers or {}))
    elif exc.status_code == 404:
        err = BatchApiError("InvalidUri")
    else:  # pragma: no cover - Starlette raises only 404/405 for routing
        err = BatchApiError("InvalidRequestBody" if exc.status_code == 400 else "InternalError")
    return error_response(err, request.scope)


# --- what a node does not serve ---------------------------------------------------------------

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
UNSUPPORTED: tuple[tuple[str, str], ...] = (
    ("/pools", "pools"), ("/pools/{rest:path}", "pools and their nodes"),
    ("/jobschedules", "job schedules"), ("/jobschedules/{rest:path}", "job schedules"),
    ("/certificates{rest:path}", "certificates"), ("/applications", "applications"),
    ("/applications/{rest:path}", "applications"), ("/poolusagemetrics", "pool usage metrics"),
    ("/supportedimages", "supported images"), ("/nodecounts", "node counts"),
    ("/lifetimejobstats", "account statistics"), ("/lifetimepoolstats", "account statistics"),
)


def unsupported_routes() -> list[BaseRoute]:
    """501 ``FeatureNotSupported`` for each Batch route a single node cannot serve."""
    def endpoint(what: str) -> Any:
        async def answer(request: Request) -> Response:
            raise BatchApiError("FeatureNotSupported", values=(
                ("Reason", f"a batch-agent node serves jobs, tasks and task files; {what} are not managed here"),))
        return answer
    return [Route(path, endpoint(what), methods=_ALL_METHODS) for path, what in UNSUPPORTED]


def create_app(settings: ApiSettings, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The local API: ``routes`` (the service's) plus the unsupported ones, behind ``BatchEdge``."""
    return Starlette(
        routes=[*routes, *unsupported_routes()],
        middleware=[Middleware(BatchEdge, settings=settings)],
        exception_handlers={BatchApiError: _on_batch_error, HTTPException: _on_http_error},
    )
