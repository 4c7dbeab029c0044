"""The ``batch-agent`` command: ``run``, ``plan`` and ``validate`` one Batch task (or job),
``serve`` the node service, ``run-job`` a whole job.

It parses and prints; ``agent.compose`` builds the runners, hooks, store and service,
``agent.daemon`` runs ``serve``, ``agent.runjob`` runs ``run-job``. Exit status: ``validate``
and ``plan`` 0 when the input is valid; ``run`` the task's exit code when its command ran (a
signal death N gives 128+N, and so does a run stopped by signal N after its command succeeded),
125 when it never ran (pre-processing error, job preparation failure, agent fault); ``run-job``
0 when every task succeeded, 1 when any failed or never ran, 125 for an agent fault; ``serve``
0 after a stop or drain, 2 for a configuration it cannot start with, 125 for an agent fault.
Invalid input is 2, always with a message naming the field and no traceback. ``run`` and
``run-job`` refuse a node root a running service holds.

Signals during ``run``: SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed terminal) all ask the run
to stop (``TaskRunner.interrupt``); the agent never dies on them with the task left behind. A
download or upload in progress is cancelled, a running command is killed (TERM, grace, KILL),
a command not yet started never starts, and the result is printed (``TaskEnded``, "Task was
ended by user request."). With ``--job``: a first signal during the job preparation task ends
it and the task never starts; the job release task still runs, and a second signal ends it.
Heavy libraries (Docker, Azure Storage) are imported only when a task needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import AgentError, InputError, SpecError

if TYPE_CHECKING:  # the models load after the arguments parse: --help and --version stay instant
    from agent.config import AgentConfig
    from agent.spec import Document, JobSpec, TaskBase, TaskSpec

EXIT_INVALID = 2
EXIT_NOT_RUN = 125


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch-agent",
        description="Run Azure Batch task JSON (REST api-version 2025-06-01) on this machine, "
                    "as the Batch node agent would.")
    parser.add_argument("--version", action="version", version=f"batch-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, job: bool = True) -> None:
        p.add_argument("--config", type=Path, metavar="FILE",
                       help="agent config (TOML); default $BATCH_AGENT_CONFIG or /etc/batch-agent/agent.toml")
        p.add_argument("--root", type=Path, metavar="DIR",
                       help="node root directory (AZ_BATCH_NODE_ROOT_DIR); overrides $BATCH_AGENT_ROOT "
                            "and the config (default /mnt/batch/tasks)")
        p.add_argument("--output", choices=("text", "json"), default="text", help="result format")
        p.add_argument("--log-level", default=os.environ.get("BATCH_AGENT_LOG_LEVEL", "warning"),
                       choices=("debug", "info", "warning", "error"), help="agent log level (stderr)")
        if job:
            group = p.add_mutually_exclusive_group()
            group.add_argument("--job", type=Path, metavar="JOB.json",
                               help="the job (Create Job body): its preparation and release tasks, common "
                                    "environment, constraints and onTaskFailure apply")
            group.add_argument("--job-id", metavar="ID", help="run under this job id, without a job body")
            p.add_argument("--task-id", metavar="ID", help="pick one task of a task collection file")

    run = sub.add_parser("run", help="run one task and wait for it")
    run.add_argument("task", type=Path, metavar="TASK.json")
    common(run)
    plan = sub.add_parser("plan", help="dry run: show what run would do, changing nothing")
    plan.add_argument("task", type=Path, metavar="TASK.json", help="a task, task collection or job file")
    plan.add_argument("--check", action="store_true",
                      help="also check storage: inputs exist, output containers accept writes, SAS expiry")
    common(plan)
    validate = sub.add_parser("validate", help="validate a task, task collection or job file")
    validate.add_argument("file", type=Path, metavar="FILE")
    validate.add_argument("--output", choices=("text", "json"), default="text")

    def node(p: argparse.ArgumentParser, level: str) -> None:
        p.add_argument("--config", type=Path, metavar="FILE",
                       help="agent config (TOML); default $BATCH_AGENT_CONFIG or /etc/batch-agent/agent.toml")
        p.add_argument("--root", type=Path, metavar="DIR", help="node root directory (overrides the config)")
        p.add_argument("--slots", type=int, metavar="N",
                       help="task slots of this node (overrides [node] task_slots_per_node; 1-256)")
        p.add_argument("--log-level", default=os.environ.get("BATCH_AGENT_LOG_LEVEL", level),
                       choices=("debug", "info", "warning", "error"), help="agent log level (stderr)")

    serve = sub.add_parser("serve", help="run the node service: the Batch API, the scheduler, restart safety")
    node(serve, "info")
    serve.add_argument("--listen", metavar="HOST:PORT", help="API address (overrides [api] listen; "
                                                             "default 127.0.0.1:8080)")
    serve.add_argument("--account-name", metavar="NAME", help="account name clients sign with")
    serve.add_argument("--account-key", metavar="BASE64",
                       help="account key (visible in ps: prefer --account-key-file)")
    serve.add_argument("--account-key-file", type=Path, metavar="FILE",
                       help="file holding the base64 account key (mode 0600 or 0400, owned by the agent)")
    run_job = sub.add_parser("run-job", help="run a whole job on this machine through the node's scheduler, "
                                             "then print every task's result")
    run_job.add_argument("job", type=Path, metavar="JOB.json", help="the job (Create Job body)")
    run_job.add_argument("tasks", type=Path, metavar="TASKS.json",
                         help="its tasks: a task collection ({\"value\": [...]}), a list, or one task")
    node(run_job, "warning")
    run_job.add_argument("--output", choices=("text", "json"), default="text", help="result format")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args)
        from agent import logs
        from agent.config import load_config
        under_systemd = bool(os.environ.get("INVOCATION_ID"))
        logs.configure(json=not sys.stderr.isatty() and (under_systemd or args.command == "serve"),
                       level=args.log_level)
        config = load_config(args.config, root=args.root)
        if args.command == "serve":
            return _serve(args, config)
        if args.command == "run-job":
            return _run_job(args, config)
        if args.command == "plan":
            return _plan(args, config)
        return _run(args, config)
    except InputError as exc:
        print(f"batch-agent: {exc.render()}", file=sys.stderr)
        return EXIT_INVALID
    except AgentError as exc:
        print(f"batch-agent: agent error: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    except KeyboardInterrupt:
        return 130


def _emit(data: Any, text: str, output: str) -> None:
    if output == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(text + "\n")


def _validate(args: argparse.Namespace) -> int:
    from agent.spec import JobSpec, load_document

    doc = load_document(args.file)
    tasks = doc.tasks
    summary: dict[str, Any] = {"valid": True, "kind": doc.kind, "tasks": [t.id for t in tasks]}
    if isinstance(doc.model, JobSpec):
        summary["id"] = doc.model.id
    text = f"{args.file}: valid {doc.kind}" + (f" ({len(tasks)} tasks)" if doc.kind == "collection" else "")
    _emit(summary, text, args.output)
    return 0


def _load(args: argparse.Namespace, config: AgentConfig) -> tuple[Document, JobSpec | None, str]:
    from agent.spec import JobSpec, check_task_in_job, load_document

    doc = load_document(args.task)
    job = load_document(args.job, kind="job").model if args.job else None
    assert job is None or isinstance(job, JobSpec)
    if isinstance(doc.model, JobSpec) and args.job:
        raise SpecError("give a task file as TASK.json when --job is used", source=str(args.task))
    job_id = job.id if job else (args.job_id or config.tasks.default_job_id)
    if args.job_id:
        from agent.spec.task import check_id
        try:
            check_id(args.job_id)
        except ValueError as exc:
            raise InputError(f"--job-id: {exc}") from None
    issues = [i for t in doc.tasks for i in check_task_in_job(t, job)]
    if issues:
        raise SpecError(issues, source=str(args.task))
    return doc, job, job_id


def _pick(doc: Document, task_id: str | None, source: Path) -> TaskSpec:
    tasks = doc.tasks
    if task_id:
        match = [t for t in tasks if t.id.casefold() == task_id.casefold()]
        if not match:
            raise InputError(f"--task-id: no task {task_id!r} in {source}; ids: {', '.join(t.id for t in tasks)}")
        return match[0]
    if len(tasks) != 1:
        raise InputError(f"{source} holds {len(tasks)} tasks; pick one with --task-id "
                         f"({', '.join(t.id for t in tasks)})")
    return tasks[0]


def _all_specs(task: TaskBase | None, job: JobSpec | None) -> list[TaskBase]:
    specs: list[TaskBase] = [task] if task is not None else []
    if job is not None:
        specs += [t for t in (job.job_preparation_task, job.job_release_task) if t is not None]
    return specs


def _plan(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.compose import node_identity, supported_fields
    from agent.plan import PlanContext, plan_job, plan_task, render_text
    from agent.spec import JobSpec

    doc, job, job_id = _load(args, config)
    ctx = PlanContext(config, node_identity(config), job_id, job if job else
                      (doc.model if isinstance(doc.model, JobSpec) else None), supported_fields())
    if isinstance(doc.model, JobSpec):
        data: dict[str, Any] = plan_job(doc.model, ctx)
    else:
        tasks = [_pick(doc, args.task_id, args.task)] if args.task_id or len(doc.tasks) == 1 else doc.tasks
        data = {"tasks": [plan_task(t, ctx) for t in tasks]} if len(tasks) > 1 else plan_task(tasks[0], ctx)
        if job is not None:
            data = {**plan_job(job, ctx), **({"task": data} if len(tasks) == 1 else data)}
    if args.check:
        from agent.preflight import run_checks
        data["check"] = asyncio.run(run_checks([*_all_specs(None, ctx.job), *doc.tasks], config))
    _emit(data, render_text(data), args.output)
    return 0


def _progress_for(specs: Sequence[TaskBase]) -> Any:
    """A transfer bar on stderr when it is a terminal and a task moves files; else None.
    stdout (the result, JSON or text) never carries it."""
    if not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":
        return None
    if not any(getattr(s, "resource_files", None) or getattr(s, "output_files", None) for s in specs):
        return None
    from agent.report import TransferProgress

    return TransferProgress(sys.stderr)


def _run(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.compose import build_runner, lock_node, service_used
    from agent.report import exit_status, render_run, run_json
    from agent.spec import JobSpec
    from agent.taskrunner import run_job_task

    doc, job, job_id = _load(args, config)
    if isinstance(doc.model, JobSpec):
        raise InputError(f"{args.task} is a job; give a task file to run, with --job {args.task}")
    task = _pick(doc, args.task_id, args.task)
    specs = _all_specs(task, job)
    progress = _progress_for(specs)
    lock = lock_node(config, exclusive=False)     # refuses a node root a service holds
    runner = build_runner(config, specs, progress=progress, sweep=not service_used(config))

    received: list[int] = []

    def stop(sig: signal.Signals) -> None:
        received.append(sig)
        runner.interrupt()

    async def go() -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop, sig)
        return await run_job_task(runner, task, job_id=job_id, job=job)

    try:
        with progress or contextlib.nullcontext():
            outcome = asyncio.run(go())
    finally:
        lock.release()
    with_job = bool(args.job or args.job_id)
    _emit(run_json(outcome, with_job=with_job), render_run(outcome, config), args.output)
    status = exit_status(outcome)
    if status == 0 and received:
        # The command succeeded but the run was stopped after it (an upload was cancelled):
        # the status of a process ended by that signal, never a success.
        return 128 + received[0]
    return status


def _serve(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent import daemon

    if args.account_key:
        print("batch-agent serve: warning: --account-key is visible to every local user in ps and "
              "/proc; put the key in a 0600 file and use --account-key-file", file=sys.stderr)
    settings = daemon.settings(config, listen=args.listen, account_name=args.account_name,
                               account_key=args.account_key, account_key_file=args.account_key_file,
                               slots=args.slots)
    return daemon.serve(settings)


def _run_job(args: argparse.Namespace, config: AgentConfig) -> int:
    from agent.report import render_run_job, run_job_json, run_job_status
    from agent.runjob import load_inputs, run_job

    if args.slots is not None and not 1 <= args.slots <= 256:
        raise InputError(f"--slots: use 1 to 256 (Batch's taskSlotsPerNode), got {args.slots}")
    job, tasks = load_inputs(args.job, args.tasks)
    result = run_job(config, job, tasks, slots=args.slots or config.node.task_slots_per_node)
    args_out = (result.job, result.tasks, result.preparation, result.release)
    if args.output == "json":
        _emit(run_job_json(*args_out), "", "json")
    else:
        _emit(None, render_run_job(*args_out), "text")
    return run_job_status(result.tasks)
