"""``resourceFiles`` in (§4): a prestart hook that downloads them into the working directory.

The transfer code lives in ``agent.staging``; this hook only wires a task attempt to it. It
imports ``agent.staging`` (and through it httpx) when a task has resource files, so tasks without
storage import nothing heavy. The attempt's transport (``agent.staging.attempt_transport``) is
built from ``[storage]`` and shared with the output files hook; the attempt's clean-up closes
it. A failure comes back as a value: the command does not run.
"""

from __future__ import annotations

from agent.lifecycle import TaskContext
from agent.status import FailureInfo


class ResourceFilesHook:
    name = "resources"
    handles: frozenset[str] = frozenset({"resourceFiles"})

    async def prestart(self, ctx: TaskContext) -> FailureInfo | None:
        files = ctx.spec.resource_files or []
        if not files:
            return None
        from agent.staging import attempt_transport, stage_resource_files

        result = await stage_resource_files(files, ctx.dirs.wd, user=ctx.user, transport=attempt_transport(ctx),
                                            storage=ctx.config.storage, progress=ctx.progress,
                                            deadline=ctx.config.storage.download_deadline)
        if isinstance(result, FailureInfo):
            ctx.log.info("resource files failed", code=result.code)
            return result
        ctx.notes["resource_files"] = {"files": result.files, "bytes": result.bytes,
                                       "seconds": round(result.seconds, 3)}
        ctx.log.info("resource files downloaded", files=result.files, bytes=result.bytes,
                     seconds=round(result.seconds, 3))
        return None
