"""The ``batch-agent`` command: ``run``, ``plan`` and ``validate`` one Batch task (or job).

The only place that builds concrete runners and hooks. Exit status: ``validate`` and ``plan``
0 when the input is valid; ``run`` the task's exit code when its command ran (a signal death
N gives 128+N, and so does a run stopped by signal N after its command succeeded), 125 when it
never ran (pre-processing error, job preparation failure, agent fault); 2 for invalid input,
always with a message naming the field and no traceback.

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
    from agent.environment import NodeIdentity
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args)
        from agent import logs
        from agent.config import load_config
        logs.configure(json=not sys.stderr.isatty() and bool(os.environ.get("INVOCATION_ID")),
                       level=args.log_level)
        config = load_config(args.config, root=args.root)
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


def node_identity(config: AgentConfig) -> NodeIdentity:
    from agent.environment import NodeIdentity

    n = config.node
    return NodeIdentity(n.account_name, n.account_url, n.pool_id, n.node_id, n.is_dedicated, n.system_path,
                        n.reserved_disk_bytes, n.os_reserved_disk_bytes)


def _all_specs(task: TaskBase | None, job: JobSpec | None) -> list[TaskBase]:
    specs: list[TaskBase] = [task] if task is not None else []
    if job is not None:
        specs += [t for t in (job.job_preparation_task, job.job_release_task) if t is not None]
    return specs


def supported_fields() -> frozenset[str]:
    """The task fields this build implements (their hooks import)."""
    supported: set[str] = set()
    for module, cls in (("agent.hooks.resources", "ResourceFilesHook"), ("agent.hooks.outputs", "OutputFilesHook"),
                        ("agent.hooks.image", "ImageHook")):
        try:
            hook_cls = getattr(__import__(module, fromlist=[cls]), cls)
        except (ImportError, AttributeError):
            continue
        supported |= set(hook_cls.handles)
    return frozenset(supported)


def _plan(args: argparse.Namespace, config: AgentConfig) -> int:
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


def build_runner(config: AgentConfig, specs: Sequence[TaskBase], *, progress: Any = None) -> Any:
    """The TaskRunner with the runners and hooks the given tasks need."""
    from agent.hooks.gate import GateHook, used_fields
    from agent.hooks.taskdir import TaskDirHook
    from agent.process import ProcessRunner
    from agent.taskrunner import TaskRunner
    from agent.users import policy_from_config, resolve_user

    needed = {f for s in specs for f in used_fields(s)}
    prestart: list[Any] = []
    exited: list[Any] = []
    runners: dict[str, Any] = {"process": ProcessRunner(use_cgroups=config.tasks.use_cgroups)}
    if "resourceFiles" in needed:
        from agent.hooks.resources import ResourceFilesHook
        prestart.append(ResourceFilesHook())
    if "containerSettings" in needed:
        from agent.container.image import PullRetry
        from agent.container.orphans import remove_orphans
        from agent.container.runner import ContainerRunner
        from agent.hooks.image import ImageHook
        container_runner = ContainerRunner(config.docker)
        remove_orphans(container_runner.client, node_root=config.node.root)
        runners["container"] = container_runner
        retry = PullRetry(attempts=config.docker.pull_attempts, backoff=config.docker.pull_backoff)
        prestart.append(ImageHook(container_runner.client, config.docker, retry=retry))
    if "outputFiles" in needed:
        from agent.hooks.outputs import OutputFilesHook
        exited.append(OutputFilesHook())
    supported = {f for hook in (*prestart, *exited) for f in hook.handles}
    policy = policy_from_config(config)

    def user_for(spec: TaskBase, kind: str, task_key: str) -> Any:
        return resolve_user(spec.user_identity, kind, policy=policy, task_key=task_key)

    return TaskRunner(config=config, node=node_identity(config), runners=runners,
                      prestart=[GateHook(supported), TaskDirHook(), *prestart], exited=exited,
                      resolve_user=user_for, progress=progress)


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
    from agent.report import exit_status, render_run, run_json
    from agent.spec import JobSpec
    from agent.taskrunner import run_job_task

    doc, job, job_id = _load(args, config)
    if isinstance(doc.model, JobSpec):
        raise InputError(f"{args.task} is a job; give a task file to run, with --job {args.task}")
    task = _pick(doc, args.task_id, args.task)
    specs = _all_specs(task, job)
    progress = _progress_for(specs)
    runner = build_runner(config, specs, progress=progress)

    received: list[int] = []

    def stop(sig: signal.Signals) -> None:
        received.append(sig)
        runner.interrupt()

    async def go() -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop, sig)
        return await run_job_task(runner, task, job_id=job_id, job=job)

    with progress or contextlib.nullcontext():
        outcome = asyncio.run(go())
    with_job = bool(args.job or args.job_id)
    _emit(run_json(outcome, with_job=with_job), render_run(outcome, config), args.output)
    status = exit_status(outcome)
    if status == 0 and received:
        # The command succeeded but the run was stopped after it (an upload was cancelled):
        # the status of a process ended by that signal, never a success.
        return 128 + received[0]
    return status
