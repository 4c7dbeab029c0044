"""The node service core: scheduling, the job lifecycle and restart safety, as a library.

``serve`` (the daemon), the API routes and ``run-job`` all drive one ``NodeService``; nothing
here talks HTTP or parses flags. Public surface (import from here)::

    svc = NodeService(store, task_runner, slots=N, start_task=StartTask | None,
                      state_dir=Path | None, tokens=TaskTokens | None, user_policy=UserPolicy | None)
    await svc.start() -> int            recovery (resume or requeue; returns the requeue count),
                                        retention schedule, the start task
    await svc.serve()                   schedule until cancelled; cancelling never kills a task
    await svc.run_until_idle()          burst: until nothing can make progress (tests, run-job)
    await svc.drain()                   stop admitting, return when running tasks have ended
    await svc.stop() / svc.aclose()     stop the coroutines (tasks keep running) / and the store

    jobs:  add_job(body) -> JobRecord; update_job(id, body, replace_all=, if_match=) -> JobRecord;
           terminate_job(id, reason=None); delete_job(id); disable_job(id, "requeue"|"terminate"|"wait");
           enable_job(id); get_job(id); prep_release_status(id) -> (prep info, release info)
    tasks: add_task(job, body) -> TaskRecord; add_tasks(job, {"value": [...]}) -> [AddResult];
           get_task(job, task); update_task(job, task, constraints); terminate_task(job, task);
           delete_task(job, task); reactivate_task(job, task) -> TaskRecord
    node:  start_task_info() -> startTaskInfo | None; token_is_live(claims); svc.tokens (the
           liveness-checking ``TaskTokens`` the API's Bearer check should use)

Bodies are validated with ``agent.spec`` (a ``SpecError`` is the API's 400); refusals are
``agent.errors.ServiceError`` subclasses whose ``code`` is the Batch error code. Reads that the
store answers alone (get / list / counts) the API may do on the store directly.

Units: ``core`` (shared state), ``jobs`` (pure lifecycle rules), ``journal`` (the task runner's
journal on the store), ``scheduler`` (admission, job reactions), ``prep_release``, ``retention``,
``start_task``, ``recovery``, ``node`` (this facade). Must not: import ``agent.api`` or
``agent.cli``; log task bodies or tokens.
"""

from agent.service.node import AddResult, NodeService

__all__ = ["AddResult", "NodeService"]
