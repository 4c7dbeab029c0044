"""One task's life on this node, from ``running`` to ``completed`` (§3, §5, §6, §9, §10).

    attempt:  prestart hooks -> runner.start -> runner.wait (wall clock) -> exited hooks
    then:     retry (non-zero exit, retries left) or complete -> exit conditions -> job effect

The wall clock starts with the running phase, downloads included, and applies per attempt
(UNCONFIRMED in Batch; the semantics doc's recommendation). On expiry the whole tree is killed
(SIGTERM, grace, SIGKILL, sweep) and the task completes with ``TaskEnded`` / ServerError and the
exit code ``-signal``; it is not retried. Pre-processing and upload errors are not retried either.
Output files are uploaded after every attempt whose process ran.

A stop request (``terminate``; ``interrupt`` for the CLI's Ctrl-C / SIGTERM / SIGHUP) ends the
phase the attempt is in: downloads and the container pull are cancelled and the command is
never started; a running command is killed like on the wall clock, and its output files are
still uploaded (as after a Batch terminate); an upload is cancelled. The task completes with
``TaskEnded`` / UserError "Task was ended by user request." and is not retried. Under
``run_job_task`` a first stop during the job preparation task ends it, and the task is never
started (it completes with ``TaskEnded`` and no exit code); the job release task still runs, as
Batch runs it when a job ends. A second stop ends the release task too.

Durability (the service): ``run(..., journal=...)`` records every phase through an
``agent.lifecycle.Journal`` (attempt starting, the run handle right after start and before any
wait, retry, finished), and ``resume`` continues an attempt from a persisted handle after an
agent restart (``Runner.recover``; what is left of the wall clock; exited hooks; decision; retry
or finish), or reports it lost. ``run_durable`` is ``run`` for the service: a lost attempt is None.
Cancelling a run (the agent stopping) kills nothing and cleans nothing up.

This package knows the ``Runner`` and hook protocols only; ``agent.cli`` (or the service) builds
the concrete runners and hooks and hands them in. Units: ``runner`` (``TaskRunner``), ``helpers``
(limits, command splitting, stop races), ``jobrun`` (``run --job``: prep, task, release).
"""

from agent.lifecycle import Limits, TaskOutcome
from agent.taskrunner.helpers import KILL_USER, KILL_WALL_CLOCK, ended_by_user, limits_for, split_command
from agent.taskrunner.jobrun import JobOutcome, run_job_task, special_task_info
from agent.taskrunner.runner import LOST, HandleSink, TaskRunner, TokenSource, UserResolver

__all__ = ["KILL_USER", "KILL_WALL_CLOCK",
           "LOST", "HandleSink", "JobOutcome", "Limits", "TaskOutcome", "TaskRunner", "TokenSource", "UserResolver",
           "ended_by_user", "limits_for", "run_job_task", "special_task_info", "split_command"]
