"""The dry run: what ``batch-agent run`` would do, computed from the task JSON and the config.

It creates nothing on disk, contacts nothing (unless ``--check`` asks for the storage
pre-flight), and runs nothing. Secrets are masked everywhere (``agent.redact``): SAS signatures
in URLs, secret-looking environment values, registry passwords.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from agent.config import AgentConfig
from agent.environment import NodeIdentity, TaskEnvRequest, task_environment
from agent.exits import decision_table
from agent.hooks.gate import used_fields
from agent.layout import NodeLayout
from agent.lifecycle import JOB_PREPARATION, JOB_RELEASE, TASK
from agent.redact import MASK, redact_env_value, redact_text, redact_url
from agent.runner import TaskUser
from agent.spec import CLI_EXTENSION_FIELDS, SERVICE_ONLY_FIELDS, JobSpec, TaskBase, TaskSpec
from agent.spec.durations import format_duration
from agent.taskrunner import limits_for, split_command


@dataclass(frozen=True, slots=True)
class PlanContext:
    config: AgentConfig
    node: NodeIdentity
    job_id: str
    job: JobSpec | None
    supported: frozenset[str]        # task fields this agent build can run


def _user(spec: TaskBase, kind: str, ctx: PlanContext) -> tuple[TaskUser, str]:
    from agent.users import describe_user, plan_user, policy_from_config

    policy = policy_from_config(ctx.config)
    return plan_user(spec.user_identity, kind, policy), describe_user(spec.user_identity, kind, policy)


def _resource_files(spec: TaskBase, wd: str) -> list[dict[str, Any]]:
    out = []
    for rf in spec.resource_files or ():
        if rf.http_url:
            source = {"httpUrl": redact_url(rf.http_url)}
            dest = str(PurePosixPath(wd) / (rf.file_path or ""))
        else:
            source = {"storageContainerUrl": redact_url(rf.storage_container_url)} if rf.storage_container_url \
                else {"autoStorageContainerName": rf.auto_storage_container_name or ""}
            if rf.blob_prefix:
                source["blobPrefix"] = rf.blob_prefix
            dest = str(PurePosixPath(wd) / (rf.file_path or "")) + "/<blob name>"
        entry: dict[str, Any] = {**source, "localPath": dest, "fileMode": rf.file_mode or "0770"}
        if rf.identity_reference:
            entry["note"] = "identityReference is not supported here: the task would fail"
        out.append(entry)
    return out


def _outputs(spec: TaskBase, wd: str) -> list[dict[str, Any]]:
    out = []
    for of in getattr(spec, "output_files", None) or ():
        dest = of.destination.container
        entry = {
            "filePattern": of.file_pattern,
            "resolvedAgainst": wd if not of.file_pattern.startswith("/") else "/",
            "containerUrl": redact_url(dest.container_url),
            "path": dest.path,
            "uploadCondition": of.upload_options.upload_condition,
        }
        if dest.upload_headers:
            entry["uploadHeaders"] = [h.name for h in dest.upload_headers]
        out.append(entry)
    return out


def _container(spec: TaskBase, argv: tuple[str, ...], env: dict[str, str], user: TaskUser, kind: str,
               task_id: str, ctx: PlanContext) -> dict[str, Any] | None:
    settings = spec.container_settings
    if settings is None:
        return None
    from agent.container.build import build_container_request, describe
    from agent.container.host import detect_host
    from agent.container.runopts import RunOptionsError

    layout = NodeLayout(ctx.config.node.root)
    prep = ctx.job.job_preparation_task if ctx.job else None
    host = detect_host()
    try:
        request, _ = build_container_request(
            settings, argv=argv, env=env, dirs=layout.task(ctx.job_id, task_id), layout=layout, user=user,
            prep_dirs=layout.task(ctx.job_id, prep.id) if prep else None, job_id=ctx.job_id,
            task_id=task_id, attempt=0, network_default=ctx.config.docker.network, host=host)
    except (RunOptionsError, ValueError) as exc:
        return {"image": settings.image_name, "error": f"the task would fail (ContainerInvalidSettings): {exc}"}
    out = describe(request, host)
    if settings.registry:
        reg = settings.registry
        out["registry"] = {"server": reg.registry_server or "docker.io", "username": reg.username,
                           "password": MASK if reg.password else None}
    return out


def _docker_grace(ctx: PlanContext) -> int:
    from agent.container.runner import stop_timeout

    return stop_timeout(ctx.config.docker.stop_grace)


def plan_task(spec: TaskBase, ctx: PlanContext, *, kind: str = TASK, task_id: str | None = None) -> dict[str, Any]:
    task_id = task_id or str(getattr(spec, "id", None) or kind)
    layout = NodeLayout(ctx.config.node.root)
    dirs = layout.task(ctx.job_id, task_id)
    user, user_text = _user(spec, kind, ctx)
    prep = ctx.job.job_preparation_task if ctx.job else None
    env = task_environment(ctx.node, layout, TaskEnvRequest(
        kind=kind, job_id=ctx.job_id, task_id=task_id, dirs=dirs, user=user,
        prep_dirs=layout.task(ctx.job_id, prep.id) if prep else None,
        common=tuple(ctx.job.common_environment_settings or ()) if ctx.job else (),
        settings=tuple(spec.environment_settings or ())))
    limits = limits_for(spec, ctx.job)
    problems: list[str] = []
    try:
        argv: tuple[str, ...] = split_command(spec.command_line)
    except ValueError as exc:
        argv = ()
        problems.append(f"commandLine cannot be split ({exc}): the task would fail with CommandLaunchFailed")
    unsupported = [f for f in used_fields(spec) if f not in ctx.supported]
    problems += [f"{f}: not supported here, the task would fail with TaskFeatureNotSupported" for f in unsupported]
    grace = ctx.config.tasks.kill_grace
    plan: dict[str, Any] = {
        "task": {"id": task_id, "kind": kind, "jobId": ctx.job_id},
        "directories": {
            "nodeRoot": str(layout.root), "taskDir": str(dirs.task_dir), "workingDir": str(dirs.wd),
            "stdout": str(dirs.stdout), "stderr": str(dirs.stderr), "shared": str(layout.shared),
            "taskRootDirectory": dirs.relative,
        },
        "resourceFiles": _resource_files(spec, str(dirs.wd)),
        "environment": {k: redact_env_value(k, v) for k, v in sorted(env.items())},
        "command": {"argv": [redact_text(a) for a in argv], "shell": False, "cwd": str(dirs.wd), "user": user_text},
        "container": _container(spec, argv, env, user, kind, task_id, ctx),
        "limits": {
            "maxWallClockTime": format_duration(limits.wall_clock),
            "killLadder": f"SIGTERM to the process group, {grace:g}s grace, SIGKILL, sweep of escaped "
                          "processes" if spec.container_settings is None else
                          f"docker stop (SIGTERM, {_docker_grace(ctx):g}s, SIGKILL), then remove",
            "maxTaskRetryCount": limits.max_retries,
            "attempts": "unlimited" if limits.max_retries < 0 else limits.max_retries + 1,
            "retentionTime": format_duration(limits.retention),
        },
        "outputFiles": _outputs(spec, str(dirs.wd)),
        "problems": problems,
    }
    if isinstance(spec, TaskSpec):
        plan["exitConditions"] = [
            {"when": when, "jobAction": d.job_action, "dependencyAction": d.dependency_action, "rule": d.matched}
            for when, d in decision_table(spec.exit_conditions)]
        mode = ctx.job.task_failure_mode if ctx.job else "noaction"
        plan["jobActionApplies"] = mode == "performexitoptionsjobaction"
        if spec.required_slots and spec.required_slots > 1:
            plan["requiredSlots"] = spec.required_slots
    if os.geteuid() != 0:
        plan["command"]["note"] = "the agent is not root: the task runs as the agent's user"
    return plan


def plan_job(job: JobSpec, ctx: PlanContext) -> dict[str, Any]:
    out: dict[str, Any] = {"job": {"id": job.id, "onTaskFailure": job.task_failure_mode,
                                   "usesTaskDependencies": job.uses_task_dependencies}}
    if job.job_preparation_task:
        prep = job.job_preparation_task
        out["jobPreparationTask"] = plan_task(prep, ctx, kind=JOB_PREPARATION, task_id=prep.id)
        out["jobPreparationTask"]["waitForSuccess"] = prep.wait_for_success
    if job.job_release_task:
        rel = job.job_release_task
        out["jobReleaseTask"] = plan_task(rel, ctx, kind=JOB_RELEASE, task_id=rel.id)
    if job.job_manager_task:
        out["jobManagerTask"] = {"id": job.job_manager_task.id,
                                 "note": "validated; the job manager task runs under the agent service"}
    ignored = job.present_fields(SERVICE_ONLY_FIELDS)
    extensions = job.present_fields(CLI_EXTENSION_FIELDS)
    if ignored:
        out["notApplyingHere"] = {f: "service-side: does not concern a node" for f in ignored}
    if extensions:
        out.setdefault("notApplyingHere", {}).update(
            {f: "az batch CLI extension template field: expanded by the CLI, never sent to Batch"
             for f in extensions})
    return out


def render_text(plan: dict[str, Any]) -> str:
    """The plan as readable text (the default output)."""
    lines: list[str] = []
    _render(plan, lines, 0)
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return shlex.join(value) if value else "(none)"
    return "(none)" if value is None else str(value)


def _render(value: Any, lines: list[str], depth: int) -> None:
    pad = "  " * depth
    if isinstance(value, dict):
        for key, item in value.items():
            if item in (None, [], {}):
                continue
            if isinstance(item, dict) or (isinstance(item, list) and item and isinstance(item[0], dict)):
                lines.append(f"{pad}{key}:")
                _render(item, lines, depth + 1)
            elif isinstance(item, list) and key == "problems":
                lines.append(f"{pad}{key}:")
                lines += [f"{pad}  ! {p}" for p in item]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                first = True
                for key, sub in item.items():
                    if sub in (None, [], {}):
                        continue
                    prefix = f"{pad}- " if first else f"{pad}  "
                    lines.append(f"{prefix}{key}: {_scalar(sub)}")
                    first = False
            else:
                lines.append(f"{pad}- {_scalar(item)}")
