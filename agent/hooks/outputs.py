"""``outputFiles`` out (§7): an exited hook that uploads them after the process ends.

The upload code lives in ``agent.upload``; this hook only wires a finished attempt to it. A task
without ``outputFiles`` is a no-op: nothing imported, no upload logs written. The task stays
``running`` while this runs (the task runner completes it afterwards); a failure comes back as a
``FileUpload*`` value, which the task runner maps to the ``fileUploadError`` exit option.
"""

from __future__ import annotations

from agent.lifecycle import TaskContext
from agent.runner import ExitResult
from agent.status import FailureInfo


class OutputFilesHook:
    name = "outputs"
    handles: frozenset[str] = frozenset({"outputFiles"})

    async def exited(self, ctx: TaskContext, result: ExitResult) -> FailureInfo | None:
        outputs = getattr(ctx.spec, "output_files", None) or []
        if not outputs:
            return None
        from agent.blob import BlobTransport
        from agent.staging import transport_config
        from agent.upload import upload_outputs

        storage = ctx.config.storage
        async with BlobTransport(transport_config(storage)) as transport:
            done = await upload_outputs(outputs, exit_code=result.exit_code, wd=ctx.dirs.wd,
                                        task_dir=ctx.dirs.task_dir, env=ctx.env, user=ctx.user,
                                        transport=transport, concurrency=storage.concurrency,
                                        progress=ctx.progress)
        if isinstance(done, FailureInfo):
            ctx.log.info("output files failed", code=done.code)
            return done
        seconds = round(done.seconds, 3)
        ctx.notes["output_files"] = {"files": done.files, "bytes": done.bytes, "seconds": seconds}
        ctx.log.info("output files uploaded", files=done.files, bytes=done.bytes, seconds=seconds)
        return None
