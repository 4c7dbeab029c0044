"""The node's whole local API: every Batch route over a ``NodeService``, behind the shared edge.

``build_app(service, store, settings)`` is the one thing ``batch-agent serve`` needs from the
API: a Starlette app (run it under uvicorn) whose routes are ``agent.api.routes`` (jobs, tasks,
task files) and whose every answer goes through ``agent.api.app.BatchEdge`` (request ids,
Shared Key / task-token authentication and scope, body limit, 500 without a trace), with 501
for pools, nodes and schedules. ``settings.authenticator`` should check Bearer tokens with
``service.tokens`` (it refuses the token of a task that has ended).

Must not: start or stop the service (the daemon owns its life), or keep state beyond the
context the routes read.
"""

from __future__ import annotations

from starlette.applications import Starlette

from agent.api.app import ApiSettings, create_app
from agent.api.routes import files, jobs, tasks
from agent.api.routes.common import Context
from agent.service import NodeService
from agent.store import StoreThread


def build_app(service: NodeService, store: StoreThread, settings: ApiSettings) -> Starlette:
    app = create_app(settings, [*jobs.routes(), *tasks.routes(), *files.routes()])
    app.state.batch = Context(service, store)
    return app
