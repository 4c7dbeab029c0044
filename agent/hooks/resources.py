"""``resourceFiles`` in (§4): a prestart hook that downloads them into the working directory.

The transfer code lives in ``agent.staging``; this hook only wires a task attempt to it. It
imports ``agent.staging`` (and through it httpx) when a task has resource files, so tasks without
storage import nothing heavy. The attempt's transport (``agent.staging.task_transport``) is
built from ``[storage]``; it stays open for the output files hook when the task has
``outputFiles`` and the downloads succeeded, else it is closed here. A failure comes back as a
value: the command does not run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.lifecycle import TaskContext
from agent.status import FailureInfo

if TYPE_CHECKING:
    from agent.staging import Progress  # noqa: F401 - the protocol ctx.progress must satisfy


class ResourceFilesHook:
    name = "resources"
    handles: frozenset[str] = frozenset({"resourceFiles"})

    async def prestart(self, ctx: TaskContext) -> FailureInfo | None:
        files = ctx.spec.resource_files or []
        if not files:
            return None
        from agent.staging import release_task_transport, stage_resource_files, task_transport

        key = (ctx.job_id, ctx.task_id, ctx.attempt)
        keep = False
        try:
            result = await stage_resource_files(files, ctx.dirs.wd, user=ctx.user,
                                                transport=task_transport(key, ctx.config.storage),
                                                storage=ctx.config.storage, progress=ctx.progress)
            keep = not isinstance(result, FailureInfo) and bool(getattr(ctx.spec, "output_files", None))
        finally:
            if not keep:
                await release_task_transport(key)
        if isinstance(result, FailureInfo):
            ctx.log.info("resource files failed", code=result.code)
            return result
        ctx.notes["resource_files"] = {"files": result.files, "bytes": result.bytes,
                                       "seconds": round(result.seconds, 3)}
        ctx.log.info("resource files downloaded", files=result.files, bytes=result.bytes,
                     seconds=round(result.seconds, 3))
        return None
