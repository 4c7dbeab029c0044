"""``TaskRunner``: one task's attempts, retries, journal and resume (see the package docstring)."""


from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.config import AgentConfig
from agent.environment import NodeIdentity, TaskEnvRequest, task_environment
from agent.exits import Outcome, decide, job_effect
from agent.layout import NodeLayout, TaskDirs
from agent.lifecycle import (
    START,
    TASK,
    AttemptRetrying,
    AttemptStarting,
    ExitedHook,
    Journal,
    Limits,
    PrestartHook,
    TaskContext,
    TaskFinished,
    TaskOutcome,
)
from agent.logs import get_logger
from agent.runner import ExitResult, RunHandle, Runner, RunRequest, TaskUser
from agent.spec import JobSpec, TaskBase, TaskSpec
from agent.status import (
    ExecutionInfo,
    ExitDecision,
    FailureInfo,
    NodeInfo,
    TaskState,
    TaskStatus,
    utcnow,
)
from agent.taskrunner.helpers import (
    KILL_USER,
    KILL_WALL_CLOCK,
    KillSink,
    StartedSink,
    ended_by_user,
    kill_sink,
    limits_for,
    loop_deadline,
    split_command,
    started_sink,
    unless_stopped,
)

UserResolver = Callable[[TaskBase, str, str], "TaskUser | FailureInfo"]
HandleSink = Callable[[str, str, RunHandle | None], None]
TokenSource = Callable[[str, str], str]        # (job id, task id) -> AZ_BATCH_AUTHENTICATION_TOKEN
LOST = "lost"
# Test-only fault hook: with this variable set to exactly TEST_KILL_CONFIRM, the agent SIGKILLs
# itself right after a command was spawned and before its handle is recorded (the window that
# ``sweep_task`` closes; tests/test_service_sweep.py). The name and the value both say what it
# does, so it cannot be set by accident; nothing else reads it.
TEST_KILL_AFTER_SPAWN = "BATCH_AGENT_TEST_ONLY_SIGKILL_AFTER_SPAWN"
TEST_KILL_CONFIRM = "kill-the-agent"


@dataclass(slots=True)
class TaskRunner:
    """Runs tasks of one node. Concrete runners and hooks are injected."""

    config: AgentConfig
    node: NodeIdentity
    runners: Mapping[str, Runner]
    prestart: Sequence[PrestartHook]
    exited: Sequence[ExitedHook]
    resolve_user: UserResolver
    on_handle: HandleSink | None = None
    issue_token: TokenSource | None = None     # authenticationTokenSettings (the service's issuer)
    progress: Any = None
    interrupts: int = 0             # stop requests of the whole run so far (``interrupt``)
    _terminate: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    @property
    def layout(self) -> NodeLayout:
        return NodeLayout(self.config.node.root)

    def terminate(self, job_id: str, task_id: str) -> None:
        """Ask a running task to end (user terminate): it completes with TaskEnded/UserError."""
        self._terminate.setdefault((job_id, task_id), asyncio.Event()).set()

    def clear_stop(self, job_id: str, task_id: str) -> None:
        """Forget a stop asked of an earlier run of this task (one that came as it ended), so a
        new run (requeue, reactivate) does not end at once. The service calls it at admission."""
        self._terminate.pop((job_id, task_id), None)

    async def sweep_task(self, job_id: str, task_id: str) -> int:
        """Kill whatever any runner still runs of this task with no handle recorded (the agent
        died between a spawn and its handle's write); recovery calls it before it requeues such
        a task. Runners without ``sweep_task`` have nothing of the kind. Returns how many."""
        found = 0
        for runner in {id(r): r for r in self.runners.values()}.values():
            sweep = getattr(runner, "sweep_task", None)
            if sweep is not None:
                found += await sweep(job_id, task_id)
        return found

    def interrupt(self) -> None:
        """A stop asked of the whole run (the CLI's Ctrl-C, SIGTERM, SIGHUP): every task running
        now ends; ``run_job_task`` counts these to decide what still runs (module docstring)."""
        self.interrupts += 1
        for event in self._terminate.values():
            event.set()

    def node_info(self, dirs: TaskDirs) -> NodeInfo:
        url = self.node.account_url.rstrip("/")
        return NodeInfo(self.node.pool_id, self.node.node_id, dirs.relative,
                        node_url=f"{url}/pools/{self.node.pool_id}/nodes/{self.node.node_id}",
                        task_root_directory_url=f"{url}/pools/{self.node.pool_id}/nodes/"
                                                f"{self.node.node_id}/files/{dirs.relative}")

    def dirs_for(self, kind: str, job_id: str, task_id: str) -> TaskDirs:
        return self.layout.startup_task() if kind == START else self.layout.task(job_id, task_id)

    async def run(self, spec: TaskBase, *, job_id: str, job: JobSpec | None = None,
                  kind: str = TASK, task_id: str | None = None, journal: Journal | None = None,
                  info: ExecutionInfo | None = None) -> TaskOutcome:
        """Run a task to completion, retries included. ``info``: the counts so far (a requeued
        task keeps its retryCount / requeueCount); ``journal``: where each phase is recorded."""
        outcome = await self._drive(spec, job_id, job, kind, task_id, journal, info or ExecutionInfo(), None)
        assert outcome is not None, "an attempt is lost only under a supervised runner: use run_durable"
        return outcome

    async def run_durable(self, spec: TaskBase, *, job_id: str, journal: Journal, job: JobSpec | None = None,
                          kind: str = TASK, task_id: str | None = None,
                          info: ExecutionInfo | None = None) -> TaskOutcome | None:
        """``run`` for the service: None when the runner lost the attempt (``ExitResult.lost``: its
        supervisor died while the command ran; the tree was killed): requeue, not a retry."""
        return await self._drive(spec, job_id, job, kind, task_id, journal, info or ExecutionInfo(), None)

    async def resume(self, spec: TaskBase, *, job_id: str, handle: RunHandle, info: ExecutionInfo,
                     job: JobSpec | None = None, kind: str = TASK, task_id: str | None = None,
                     journal: Journal | None = None, killed: str | None = None) -> TaskOutcome | None:
        """Continue the attempt whose command ``handle`` started before an agent restart.

        ``killed``: the agent had recorded that it was killing the attempt (``KILL_USER`` /
        ``KILL_WALL_CLOCK``, see ``kill_sink``): the kill is finished and the attempt ends as
        killed by the agent, whatever its command's exit.

        ``runner.recover(handle)`` says whether ``wait`` will give the real exit result; if so the
        attempt goes on as if never interrupted: wait under what is left of the wall clock (from
        ``info.start_time``), exited hooks (uploads overwrite), decision, retry or finish. None:
        the command is lost (nothing of it is left running: a runner without ``recover`` kills
        it), and the caller requeues the task."""
        return await self._drive(spec, job_id, job, kind, task_id, journal, info, handle, killed)

    async def _drive(self, spec: TaskBase, job_id: str, job: JobSpec | None, kind: str, task_id: str | None,
                     journal: Journal | None, info: ExecutionInfo, resume: RunHandle | None,
                     killed: str | None = None) -> TaskOutcome | None:
        task_id = task_id or getattr(spec, "id", None) or kind
        dirs = self.dirs_for(kind, job_id, task_id)
        limits = limits_for(spec, job)
        log = get_logger(job_id=job_id, task_id=task_id)
        stop = self._terminate.setdefault((job_id, task_id), asyncio.Event())
        ran = resume is not None
        attempt = info.retry_count
        result: ExitResult | None = None
        record_kill = kill_sink(journal, kind, job_id, task_id)
        try:
            while True:
                if resume is not None:
                    resumed = await self._resume_attempt(spec, job, kind, job_id, task_id, attempt, dirs, limits,
                                                         log.bind(attempt=attempt), stop, resume, info,
                                                         record_kill, killed)
                    resume = None
                    if resumed == LOST:
                        return None
                    assert not isinstance(resumed, str)
                    result, failure = resumed
                else:
                    info = replace(info, start_time=utcnow(), end_time=None, exit_code=None, failure_info=None,
                                   container_info=None)
                    if journal is not None:
                        await journal.starting(AttemptStarting(kind, job_id, task_id, attempt, info))
                    started = started_sink(journal, kind, job_id, task_id, attempt, info)
                    result, failure = await self._attempt(spec, job, kind, job_id, task_id, attempt, dirs, limits,
                                                          log.bind(attempt=attempt), stop, started, record_kill)
                if result is not None and result.lost:
                    log.info("attempt lost by the runner")
                    return None
                ran = ran or result is not None
                info = replace(info, exit_code=result.exit_code if result else None,
                               container_info=result.container_info if result else None)
                if (failure is None and result is not None and result.exit_code != 0
                        and (limits.max_retries < 0 or attempt < limits.max_retries)
                        and not result.killed_by_agent):
                    attempt += 1
                    info = replace(info, retry_count=attempt, last_retry_time=utcnow())
                    log.info("retrying task", retry_count=attempt, exit_code=result.exit_code)
                    if journal is not None:
                        await journal.retrying(AttemptRetrying(kind, job_id, task_id, attempt - 1, info))
                    continue
                if failure is None and result is not None and result.exit_code != 0:
                    failure = FailureInfo.user("FailureExitCode",
                                               "The task exited with an exit code representing a failure",
                                               Message=f"The task process exited with exit code "
                                                       f"{result.exit_code}")
                info = replace(info, end_time=utcnow(), failure_info=failure)
                break
        finally:
            self._terminate.pop((job_id, task_id), None)
        status = TaskStatus(task_id, TaskState.COMPLETED, info, self.node_info(dirs),
                            state_transition_time=info.end_time, previous_state=TaskState.RUNNING)
        outcome = TaskOutcome(status, ran=ran, limits=limits)
        if isinstance(spec, TaskSpec) or kind == TASK:
            decision = self._decide(spec, info, result_ran=ran)
            outcome.status = replace(status, decision=decision)
            effect = job_effect(job.task_failure_mode if job else "noaction", decision,
                                info.failure_info is not None)
            outcome.job_state, outcome.terminate_reason = effect.state, effect.terminate_reason
        log.info("task completed", exit_code=info.exit_code,
                 failure=info.failure_info.code if info.failure_info else None)
        if journal is not None:
            await journal.finished(TaskFinished(kind, job_id, task_id, attempt, outcome))
        return outcome

    def _decide(self, spec: TaskBase, info: ExecutionInfo, *, result_ran: bool) -> ExitDecision:
        conditions = getattr(spec, "exit_conditions", None)
        failure = info.failure_info
        if info.exit_code is None:
            return decide(conditions, Outcome.pre_processing())
        if failure is not None and failure.code.startswith("FileUpload"):
            return decide(conditions, Outcome.upload_error(info.exit_code))
        return decide(conditions, Outcome.exited(info.exit_code))

    def _context(self, spec: TaskBase, job: JobSpec | None, kind: str, job_id: str, task_id: str,
                 attempt: int, dirs: TaskDirs, log: Any) -> TaskContext | FailureInfo:
        user = self.resolve_user(spec, kind, f"{job_id}/{task_id}")
        if isinstance(user, FailureInfo):
            return user
        try:
            argv = split_command(spec.command_line)
        except ValueError as exc:
            return FailureInfo.user("CommandLaunchFailed", "The command line could not be parsed",
                                    Message=f"commandLine: {exc}")
        return TaskContext(kind=kind, job_id=job_id, task_id=task_id, attempt=attempt, spec=spec, job=job,
                           layout=self.layout, dirs=dirs, user=user,
                           env=self._environment(spec, job, kind, job_id, task_id, dirs, user),
                           argv=argv, config=self.config, log=log, progress=self.progress)

    def _wall_clock_failure(self, limits: Limits) -> FailureInfo:
        return FailureInfo.server(self.config.tasks.wall_clock_failure_code,
                                  "The task ran longer than its maxWallClockTime and was terminated",
                                  Message=f"maxWallClockTime {limits.wall_clock} expired")

    async def _attempt(self, spec: TaskBase, job: JobSpec | None, kind: str, job_id: str, task_id: str,
                       attempt: int, dirs: TaskDirs, limits: Limits, log: Any,
                       stop: asyncio.Event, started: StartedSink | None = None, record_kill: KillSink | None = None,
                       ) -> tuple[ExitResult | None, FailureInfo | None]:
        started_at = time.monotonic()
        deadline = started_at + limits.wall_clock.total_seconds() if limits.wall_clock else None
        if stop.is_set():
            return None, ended_by_user()    # stopped before it began: nothing is set up
        ctx = self._context(spec, job, kind, job_id, task_id, attempt, dirs, log)
        if isinstance(ctx, FailureInfo):
            return None, ctx
        async with ctx.cleanup:
            return await self._run_attempt(ctx, deadline, stop, log, self._wall_clock_failure(limits), started,
                                           record_kill)

    async def _resume_attempt(self, spec: TaskBase, job: JobSpec | None, kind: str, job_id: str, task_id: str,
                              attempt: int, dirs: TaskDirs, limits: Limits, log: Any, stop: asyncio.Event,
                              handle: RunHandle, info: ExecutionInfo, record_kill: KillSink | None = None,
                              killed: str | None = None) -> tuple[ExitResult | None, FailureInfo | None] | str:
        runner = self.runners.get(handle.kind)
        if runner is None:
            return LOST
        recover = getattr(runner, "recover", None)
        alive = bool(await recover(handle)) if recover is not None else False
        if not alive:
            if recover is None:         # no way to learn its real exit: leave nothing running
                await runner.kill(handle, self.config.tasks.kill_grace)
            with contextlib.suppress(Exception):
                await runner.cleanup(handle)
            log.info("attempt lost across the restart", runner=handle.kind)
            return LOST
        deadline: float | None = None
        if limits.wall_clock is not None and info.start_time is not None:
            left = (info.start_time + limits.wall_clock - utcnow()).total_seconds()
            deadline = time.monotonic() + max(0.0, left)
        ctx = self._context(spec, job, kind, job_id, task_id, attempt, dirs, log)
        if isinstance(ctx, FailureInfo):        # the account went away: end the command, no result
            await runner.kill(handle, self.config.tasks.kill_grace)
            await runner.cleanup(handle)
            return None, ctx
        log.info("re-attached to the running attempt", runner=handle.kind)
        async with ctx.cleanup:
            return await self._finish_attempt(ctx, runner, handle, deadline, stop, log,
                                              self._wall_clock_failure(limits), record_kill, killed)

    async def _run_attempt(self, ctx: TaskContext, deadline: float | None, stop: asyncio.Event, log: Any,
                           wall_clock_failure: FailureInfo, started_sink: StartedSink | None = None,
                           record_kill: KillSink | None = None) -> tuple[ExitResult | None, FailureInfo | None]:
        job_id, task_id, attempt, dirs, user = ctx.job_id, ctx.task_id, ctx.attempt, ctx.dirs, ctx.user
        try:
            async with asyncio.timeout_at(loop_deadline(deadline)):
                stopped, failure = await unless_stopped(self._prestart(ctx), stop)
        except TimeoutError:
            return None, wall_clock_failure
        if stopped or stop.is_set():
            log.info("task ended during pre-processing")
            return None, ended_by_user()
        if failure is not None:
            return None, failure
        if not ctx.argv and ctx.container is None:
            return None, FailureInfo.user("CommandLaunchFailed", "The command line is empty",
                                          Message="commandLine: give the program to run")

        runner = self.runners["container" if ctx.container is not None else "process"]
        request = RunRequest(job_id=job_id, task_id=task_id, attempt=attempt, argv=ctx.argv, env=ctx.env,
                             cwd=dirs.wd, stdout=dirs.stdout, stderr=dirs.stderr, user=user,
                             container=ctx.container)
        started = await runner.start(request)
        if isinstance(started, FailureInfo):
            return None, started
        if os.environ.get(TEST_KILL_AFTER_SPAWN) == TEST_KILL_CONFIRM:
            os.kill(os.getpid(), signal.SIGKILL)        # test-only fault (see TEST_KILL_AFTER_SPAWN)
        if started_sink is not None:
            await asyncio.shield(started_sink(started))     # durable before anything waits on it
        if self.on_handle:
            self.on_handle(job_id, task_id, started)
        return await self._finish_attempt(ctx, runner, started, deadline, stop, log, wall_clock_failure, record_kill)

    async def _finish_attempt(self, ctx: TaskContext, runner: Runner, started: RunHandle, deadline: float | None,
                              stop: asyncio.Event, log: Any, wall_clock_failure: FailureInfo,
                              record_kill: KillSink | None = None, killed: str | None = None,
                              ) -> tuple[ExitResult | None, FailureInfo | None]:
        ended_by: FailureInfo | None = None
        stopping_agent = False
        try:
            result = None if killed is not None else await self._wait(runner, started, deadline, stop)
            if result is None:
                why = killed or (KILL_USER if stop.is_set() else KILL_WALL_CLOCK)
                ended_by = ended_by_user() if why == KILL_USER else wall_clock_failure
                stop.clear()        # that stop is served by the kill; a new one cancels the upload
                if record_kill is not None and killed is None:
                    # Durable before the first signal: a restart mid-kill finishes this kill.
                    await asyncio.shield(record_kill(why))
                await runner.kill(started, self.config.tasks.kill_grace)
                result = replace(await runner.wait(started), killed_by_agent=True)
        except asyncio.CancelledError:
            # The agent is stopping (the service's stop / SIGTERM): the command runs on and its
            # runner keeps what a restarted agent needs to re-attach, so nothing is cleaned up.
            stopping_agent = True
            raise
        finally:
            if not stopping_agent:
                await runner.cleanup(started)
            if self.on_handle:
                self.on_handle(ctx.job_id, ctx.task_id, None)
        stopped, upload_failure = await unless_stopped(self._exited(ctx, result), stop)
        if stopped:
            log.info("task ended during output upload")
            return result, ended_by or ended_by_user()
        return result, ended_by or upload_failure

    async def _prestart(self, ctx: TaskContext) -> FailureInfo | None:
        for hook in self.prestart:
            failure = await hook.prestart(ctx)
            if failure is not None:
                ctx.log.info("pre-processing failed", hook=hook.name, code=failure.code)
                return failure
        return None

    async def _exited(self, ctx: TaskContext, result: ExitResult) -> FailureInfo | None:
        upload_failure: FailureInfo | None = None
        for exited_hook in self.exited:
            failure = await exited_hook.exited(ctx, result)
            upload_failure = upload_failure or failure
        return upload_failure

    async def _wait(self, runner: Runner, handle: RunHandle, deadline: float | None,
                    stop: asyncio.Event) -> ExitResult | None:
        """The exit result, or None when the wall clock expired or a terminate was asked."""
        async with asyncio.TaskGroup() as group:
            waiter = group.create_task(runner.wait(handle))
            stopper = group.create_task(stop.wait())
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait({waiter, stopper}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                stopper.cancel()
                return waiter.result()
            waiter.cancel()
            stopper.cancel()
        return None

    def _token(self, spec: TaskBase, kind: str, job_id: str, task_id: str) -> str | None:
        settings = getattr(spec, "authentication_token_settings", None)
        if self.issue_token is None or kind == START or settings is None or "job" not in (settings.access or ()):
            return None
        return self.issue_token(job_id, task_id)

    def _environment(self, spec: TaskBase, job: JobSpec | None, kind: str, job_id: str, task_id: str,
                     dirs: TaskDirs, user: TaskUser) -> dict[str, str]:
        prep = job.job_preparation_task if job else None
        request = TaskEnvRequest(
            kind=kind, job_id=job_id, task_id=task_id, dirs=dirs, user=user,
            prep_dirs=self.layout.task(job_id, prep.id) if prep else None,
            common=tuple(job.common_environment_settings or ()) if job else (),
            settings=tuple(spec.environment_settings or ()),
            auth_token=self._token(spec, kind, job_id, task_id),
        )
        return task_environment(self.node, self.layout, request)
