"""``POST /batch-agent/drain``: ask the running service to drain (a non-Batch route).

Draining stops admitting tasks and waits for the running ones to end; the service then exits
(``agent.daemon``). The route is behind ``BatchEdge`` like every other one: an account-signed
request only (a task token is refused by the scope check, since the path is not under its job).
Answers 202 with ``{"draining": true, "runningTasks": N}``. Must not: drain by itself (the
daemon passes ``on_drain``), or take a body.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agent.api.app import json_response

DRAIN_PATH = "/batch-agent/drain"


def drain_routes(on_drain: Callable[[], int]) -> list[BaseRoute]:
    """The drain route; ``on_drain()`` starts draining (idempotent) and returns the running count."""

    async def drain(request: Request) -> Response:
        return json_response({"draining": True, "runningTasks": on_drain()}, status=202)

    return [Route(DRAIN_PATH, drain, methods=["POST"])]
