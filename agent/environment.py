"""The environment a task's command sees (§2). Pure: builds a dict, touches nothing.

Batch starts from a minimal, explicit environment, not the agent's own: the ``AZ_BATCH_*``
variables, ``HOME``, ``USER``, ``PATH``, then the job's ``commonEnvironmentSettings``, then the
task's ``environmentSettings`` (a task setting overrides a job one). User settings are applied
last and may override Batch's names (UNCONFIRMED in Batch; documented in the README); the agent
never reads these variables back to decide where it writes or what it kills. Values are passed
literally: no ``$VAR`` expansion. The native process runner adds one variable after all of these
when no cgroup tracks the task: its secret kill-sweep token (``agent.process.TOKEN_VAR``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.layout import NodeLayout, TaskDirs
from agent.runner import TaskUser
from agent.spec import EnvironmentSetting

DEFAULT_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# containerHostBatchBindMounts source -> the variables that go when it is not mounted (§8.3).
MOUNT_VARIABLES: Mapping[str, tuple[str, ...]] = {
    "Shared": ("AZ_BATCH_NODE_SHARED_DIR",),
    "Startup": ("AZ_BATCH_NODE_STARTUP_DIR", "AZ_BATCH_NODE_STARTUP_WORKING_DIR"),
    "VfsMounts": ("AZ_BATCH_NODE_MOUNTS_DIR",),
    "Task": ("AZ_BATCH_TASK_DIR", "AZ_BATCH_TASK_WORKING_DIR"),
    "JobPrep": ("AZ_BATCH_JOB_PREP_DIR", "AZ_BATCH_JOB_PREP_WORKING_DIR"),
    "Applications": (),  # AZ_BATCH_APP_PACKAGE_* (a prefix), handled below
}


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What the node knows about itself: the account, pool and node it stands for."""

    account_name: str
    account_url: str
    pool_id: str
    node_id: str
    is_dedicated: bool = True
    system_path: str = DEFAULT_SYSTEM_PATH
    reserved_disk_bytes: int = 0
    os_reserved_disk_bytes: int = 0


@dataclass(frozen=True, slots=True)
class TaskEnvRequest:
    kind: str                   # task | jobmanager | jobpreparation | jobrelease | start
    job_id: str | None
    task_id: str | None
    dirs: TaskDirs
    user: TaskUser
    prep_dirs: TaskDirs | None = None      # the job's preparation task dirs, if it has one
    common: tuple[EnvironmentSetting, ...] = ()
    settings: tuple[EnvironmentSetting, ...] = ()
    auth_token: str | None = None


def batch_variables(node: NodeIdentity, layout: NodeLayout, req: TaskEnvRequest) -> dict[str, str]:
    env = {
        "AZ_BATCH_ACCOUNT_NAME": node.account_name,
        "AZ_BATCH_ACCOUNT_URL": node.account_url if node.account_url.endswith("/") else node.account_url + "/",
        "AZ_BATCH_POOL_ID": node.pool_id,
        "AZ_BATCH_NODE_ID": node.node_id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.is_dedicated else "false",
        "AZ_BATCH_NODE_ROOT_DIR": str(layout.root),
        "AZ_BATCH_NODE_SHARED_DIR": str(layout.shared),
        "AZ_BATCH_NODE_STARTUP_DIR": str(layout.startup),
        "AZ_BATCH_NODE_STARTUP_WORKING_DIR": str(layout.startup_wd),
        "AZ_BATCH_NODE_MOUNTS_DIR": str(layout.fsmounts),
        "AZ_BATCH_TASK_DIR": str(req.dirs.task_dir),
        "AZ_BATCH_TASK_WORKING_DIR": str(req.dirs.wd),
        "AZ_BATCH_CERTIFICATES_DIR": str(req.dirs.certs),
        "AZ_BATCH_TASK_USER": req.user.name,
        "AZ_BATCH_TASK_USER_IDENTITY": req.user.identity,
        "AZ_BATCH_RESERVED_DISK_SPACE_BYTES": str(node.reserved_disk_bytes),
        "AZ_BATCH_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": str(node.reserved_disk_bytes),
        "AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": str(node.reserved_disk_bytes),
        "AZ_BATCH_OS_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": str(node.os_reserved_disk_bytes),
    }
    if req.kind != "start":
        env["AZ_BATCH_JOB_ID"] = req.job_id or ""
        env["AZ_BATCH_TASK_ID"] = req.task_id or ""
        if req.prep_dirs is not None and req.kind != "jobpreparation":
            env["AZ_BATCH_JOB_PREP_DIR"] = str(req.prep_dirs.task_dir)
            env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = str(req.prep_dirs.wd)
    if req.auth_token:
        env["AZ_BATCH_AUTHENTICATION_TOKEN"] = req.auth_token
    return env


def apply_settings(env: dict[str, str], settings: Iterable[EnvironmentSetting]) -> None:
    for setting in settings:
        env[setting.name] = setting.value or ""


def task_environment(node: NodeIdentity, layout: NodeLayout, req: TaskEnvRequest) -> dict[str, str]:
    """The complete environment, in Batch's order of application (§2.1)."""
    env = {
        "HOME": str(req.dirs.wd),
        "USER": req.user.name,
        "PATH": f"{node.system_path}:{layout.shared}:{req.dirs.wd}",
    }
    env.update(batch_variables(node, layout, req))
    apply_settings(env, req.common)
    apply_settings(env, req.settings)
    return env


def strip_unmounted(env: Mapping[str, str], mounted: Iterable[str]) -> dict[str, str]:
    """Drop the variables of the Batch paths a container does not mount (§2, §8.3)."""
    keep = set(mounted)
    drop = {name for source, names in MOUNT_VARIABLES.items() if source not in keep for name in names}
    return {k: v for k, v in env.items()
            if k not in drop and not ("Applications" not in keep and k.startswith("AZ_BATCH_APP_PACKAGE_"))}
