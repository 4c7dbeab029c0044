"""Reading a request body into an ``agent.spec`` document, with Batch's answers for bad ones.

``read_document(request, kind)`` streams the body under the size limit (413
``RequestBodyTooLarge`` past it, also when no Content-Length was sent), parses it with
``agent.spec`` and maps a ``SpecError`` to the 400 ``batch-agent validate`` would explain the same
way (``agent.api.errors.from_spec_error``). Routes never call ``json.loads`` themselves.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from agent.api.errors import BatchApiError, from_spec_error
from agent.errors import SpecError
from agent.spec.load import Document, Kind, load_data, parse_json


async def read_body(request: Request, *, limit: int | None = None) -> bytes:
    settings = request.scope.get("state", {}).get("api_settings")
    cap = limit if limit is not None else (settings.max_body if settings is not None else 1024 * 1024)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BatchApiError("RequestBodyTooLarge", values=(("Reason", f"the body exceeds {cap} bytes"),))
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, *, limit: int | None = None) -> Any:
    raw = await read_body(request, limit=limit)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BatchApiError("InvalidRequestBody", values=(("Reason", "the body is not UTF-8 text"),)) from None
    if not text.strip():
        raise BatchApiError("InvalidRequestBody", values=(("Reason", "the body is empty; send a JSON object"),))
    try:
        return parse_json(text, "request body")
    except SpecError as exc:
        raise from_spec_error(exc) from None


async def read_document(request: Request, kind: Kind, *, limit: int | None = None) -> Document:
    """The body as a validated task, job or task collection (``kind`` is what the route expects)."""
    data = await read_json(request, limit=limit)
    try:
        return load_data(data, kind=kind, source="request body")
    except SpecError as exc:
        raise from_spec_error(exc) from None
