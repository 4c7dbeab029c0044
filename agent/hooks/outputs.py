"""``outputFiles`` out (§7): an exited hook that uploads them after the process ends.

The upload code lives in ``agent.upload``; this hook only wires a finished attempt to it. A task
without ``outputFiles`` is a no-op: nothing imported, no upload logs written. The task stays
``running`` while this runs (the task runner completes it afterwards); a failure comes back as a
``FileUpload*`` value, which the task runner maps to the ``fileUploadError`` exit option. It uses
the attempt's transport (``agent.staging.attempt_transport``), the one the resource files hook
downloaded with when there was one; the attempt's clean-up closes it.
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
        from agent.staging import attempt_transport
        from agent.upload import upload_outputs

        done = await upload_outputs(outputs, exit_code=result.exit_code, wd=ctx.dirs.wd, task_dir=ctx.dirs.task_dir,
                                    env=ctx.env, user=ctx.user, transport=attempt_transport(ctx),
                                    concurrency=ctx.config.storage.concurrency, progress=ctx.progress)
        if isinstance(done, FailureInfo):
            ctx.log.info("output files failed", code=done.code)
            return done
        seconds = round(done.seconds, 3)
        ctx.notes["output_files"] = {"files": done.files, "bytes": done.bytes, "seconds": seconds}
        ctx.log.info("output files uploaded", files=done.files, bytes=done.bytes, seconds=seconds)
        return None
