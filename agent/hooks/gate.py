"""Fail, as a pre-processing error naming the field, a task that uses what no part of this
agent implements. Nothing is silently ignored: a task either runs as Batch would run it, or
says which field stops it.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.lifecycle import TaskContext
from agent.spec import TaskSpec
from agent.status import FailureInfo

# Field -> why it cannot run here (when no hook handles it).
_REASONS = {
    "resourceFiles": "resource files need the storage support of batch-agent",
    "outputFiles": "output files need the storage support of batch-agent",
    "containerSettings": "container tasks need the Docker support of batch-agent",
    "multiInstanceSettings": "multi-instance (MPI) tasks need several nodes; batch-agent runs one node",
    "applicationPackageReferences": "application packages are deployed by the Batch service from the "
                                    "account's application registry, which a local node cannot reach",
    "authenticationTokenSettings": "the Batch authentication token is issued by the Batch service",
    "dependsOn": "task dependencies are resolved by the scheduler (the agent service); "
                 "`batch-agent run` runs one task",
}


def used_fields(spec: object) -> list[str]:
    """The optional task fields that change how the task runs, in REST spelling."""
    used: list[str] = []
    for attr, name in (("resource_files", "resourceFiles"), ("output_files", "outputFiles"),
                       ("container_settings", "containerSettings"),
                       ("multi_instance_settings", "multiInstanceSettings"),
                       ("application_package_references", "applicationPackageReferences"),
                       ("authentication_token_settings", "authenticationTokenSettings"),
                       ("depends_on", "dependsOn")):
        value = getattr(spec, attr, None)
        if value:
            used.append(name)
    return used


class GateHook:
    name = "gate"
    handles: frozenset[str] = frozenset()

    def __init__(self, supported: Iterable[str]) -> None:
        self.supported = frozenset(supported)

    def unsupported(self, spec: object) -> list[str]:
        return [f for f in used_fields(spec) if f not in self.supported]

    async def prestart(self, ctx: TaskContext) -> FailureInfo | None:
        missing = self.unsupported(ctx.spec)
        if not missing:
            return None
        field = missing[0]
        return FailureInfo.user(
            "TaskFeatureNotSupported",
            f"The task uses {field}, which batch-agent cannot run here: {_REASONS[field]}.",
            FieldName=field,
        )


def is_regular(spec: object) -> bool:
    return isinstance(spec, TaskSpec)
