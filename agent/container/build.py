"""``containerSettings`` + the task's argv, env, dirs and user -> the container to create (§8.3).

Owns: image reference normalisation, the Batch bind mounts (``containerHostBatchBindMounts``)
and the variables of unmounted paths, the working directory, the user the container runs as,
the container's name and labels, the network default, and merging all of it with the parsed
``containerRunOptions`` into the keyword arguments of the Docker SDK's ``containers.create``.
``describe`` renders that request for ``plan``. Must not: import ``docker``, touch files or the
engine, or show an environment value (values may be secrets; ``describe`` lists names only).

Decisions on the points the semantics doc leaves open (§8.3, §15.11):

- Name: ``batchagent_<job>_<task>_<attempt>_<root8>``, ``root8`` the first 8 hex digits of the
  SHA-256 of the node root, every other character than ``[A-Za-z0-9_.-]`` turned into ``-``.
  Deterministic (a restarted agent finds it again), unique per attempt, and two agents with
  different node roots on one engine never collide.
- Labels: ``batch-agent.job``, ``.task``, ``.attempt``, ``.node-root``, ``.remove`` (``--rm``).
  User labels (``-l``) are kept but cannot override these (the orphan sweep relies on them).
- Mounts are ``-v`` binds (``host:container:mode``), so a missing source (a job-prep dir that
  was never created) is created by the engine instead of failing the task. A source listed twice
  is mounted once, read-write if any of its entries asks for read-write.
- User: ``-u uid:gid`` of the task user plus its supplementary groups (``--group-add``); an
  elevated (admin) task runs as ``0:0``; a task with no uid (the agent does not switch users)
  runs as the agent's own uid:gid. ``--user`` in the run options wins.
- Environment: the task environment with the variables of unmounted paths removed, then the
  run options' ``-e`` values on top (the user's explicit option wins).
- Network: ``--network`` in the run options, else ``[docker] network`` of the agent config,
  else the engine's default (bridge).
- Host devices and propagation (``host``, from ``agent.container.host``, decisions there): GPUs
  as ``--gpus all``, RDMA device nodes as ``--device`` plus ``--ulimit memlock=-1:-1``, each
  unless the run options ask for their own; the whole-root bind and the ``VfsMounts`` bind
  (``fsmounts``, where VFS mounts appear while tasks run) get ``rslave`` where the engine
  allows it. Without ``host`` (None) nothing of this is added.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.container.host import HostFacts
from agent.container.runopts import RunOptionsError, parse_run_options
from agent.environment import MOUNT_VARIABLES, strip_unmounted
from agent.layout import NodeLayout, TaskDirs
from agent.redact import redact_text
from agent.runner import ContainerRequest, TaskUser
from agent.spec import TaskContainerSettings

__all__ = [
    "LABEL_ATTEMPT", "LABEL_JOB", "LABEL_NODE_ROOT", "LABEL_PREFIX", "LABEL_REMOVE", "LABEL_TASK",
    "ContainerSettingsError", "RunOptionsError", "build_container_request", "container_name", "describe",
    "normalise_image", "split_image",
]

LABEL_PREFIX = "batch-agent."
LABEL_JOB = "batch-agent.job"
LABEL_TASK = "batch-agent.task"
LABEL_ATTEMPT = "batch-agent.attempt"
LABEL_NODE_ROOT = "batch-agent.node-root"
LABEL_REMOVE = "batch-agent.remove"

_SOURCES = tuple(MOUNT_VARIABLES)  # Shared, Startup, VfsMounts, Task, JobPrep, Applications
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class ContainerSettingsError(ValueError):
    """``containerSettings`` asks for something that cannot be built; ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"containerSettings.{path}: {message}")


def normalise_image(image: str) -> str:
    """``imageName`` as ``docker pull`` reads it, with ``:latest`` when it has no tag or digest.

    >>> normalise_image("127.0.0.1:5000/team/tool")
    '127.0.0.1:5000/team/tool:latest'
    """
    ref = image.strip()
    if not ref or any(c.isspace() for c in ref):
        raise ContainerSettingsError("imageName", f"{image!r} is not an image reference; "
                                     "write e.g. 'myregistry.azurecr.io/tool:1.2'")
    if "@" in ref:
        return ref
    last = ref.rsplit("/", 1)[-1]   # a ':' before the last '/' is a registry port, not a tag
    return ref if ":" in last else f"{ref}:latest"


def split_image(image: str) -> tuple[str, str]:
    """A normalised reference -> (repository, tag or digest), as the engine's pull API takes them."""
    if "@" in image:
        name, digest = image.split("@", 1)
        head, _, last = name.rpartition("/")
        return (f"{head}/" if head else "") + last.split(":", 1)[0], digest
    head, _, last = image.rpartition("/")
    repo, _, tag = last.partition(":")
    return (f"{head}/" if head else "") + repo, tag or "latest"


def container_name(job_id: str, task_id: str, attempt: int, node_root: Path) -> str:
    """The container's name: deterministic and unique per attempt and node root (see above)."""
    root8 = hashlib.sha256(str(node_root).encode()).hexdigest()[:8]
    job, task = (_NAME_CHARS.sub("-", part) for part in (job_id, task_id))
    return f"batchagent_{job}_{task}_{attempt}_{root8}"


def _binds(settings: TaskContainerSettings, dirs: TaskDirs, layout: NodeLayout,
           prep_dirs: TaskDirs | None, host: HostFacts | None) -> tuple[list[str], set[str]]:
    """The Batch bind mounts (``host:container:mode``) and the sources they cover."""
    def follow(path: Path) -> str:   # the mounts made later under fsmounts show (see above)
        return ",rslave" if host is not None and host.can_follow(path) else ""

    entries = settings.container_host_batch_bind_mounts
    if entries is None:
        return [f"{layout.root}:{layout.root}:rw{follow(layout.root)}"], set(_SOURCES)
    paths = {"Task": dirs.task_dir, "Shared": layout.shared, "Startup": layout.startup,
             "VfsMounts": layout.fsmounts, "Applications": layout.applications,
             "JobPrep": prep_dirs.task_dir if prep_dirs else None}
    writable: dict[Path, bool] = {}
    mounted: set[str] = set()
    for i, entry in enumerate(entries):
        if entry.source is None:
            raise ContainerSettingsError(f"containerHostBatchBindMounts[{i}].source",
                                         f"is required: one of {', '.join(_SOURCES)}")
        source = str(entry.source)
        mounted.add(source)
        path = paths[source]
        if path is not None:   # JobPrep without a job preparation task: nothing to mount
            writable[path] = writable.get(path, False) or not entry.is_read_only
    return [f"{p}:{p}:{'rw' if rw else 'ro'}{follow(p) if p == layout.fsmounts else ''}"
            for p, rw in writable.items()], mounted


def _host_devices(kwargs: dict[str, Any], host: HostFacts) -> None:
    """Add the host's GPUs and RDMA devices unless the run options asked for their own."""
    requests = list(kwargs.get("device_requests", ()))
    if host.gpus and not any("gpu" in caps for r in requests for caps in r.get("capabilities", ())):
        kwargs["device_requests"] = [*requests, {"count": -1, "capabilities": [["gpu"]]}]
    if host.rdma_devices:
        devices = list(kwargs.get("devices", ()))
        taken = {d.split(":", 1)[0] for d in devices}
        kwargs["devices"] = [*devices, *(f"{p}:{p}:rwm" for p in host.rdma_devices if p not in taken)]
        ulimits = list(kwargs.get("ulimits", ()))
        if not any(u["name"] == "memlock" for u in ulimits):
            kwargs["ulimits"] = [*ulimits, {"name": "memlock", "soft": -1, "hard": -1}]


def _user(user: TaskUser, agent_ids: tuple[int, int] | None) -> tuple[str, list[str]]:
    if user.elevated:
        return "0:0", []
    if user.uid is None:
        uid, gid = agent_ids or (os.getuid(), os.getgid())
        return f"{uid}:{gid}", []
    gid = user.gid if user.gid is not None else user.uid
    return f"{user.uid}:{gid}", [str(g) for g in user.groups if g != gid]


def build_container_request(
    settings: TaskContainerSettings, *, argv: Sequence[str], env: Mapping[str, str], dirs: TaskDirs,
    layout: NodeLayout, user: TaskUser, prep_dirs: TaskDirs | None, job_id: str, task_id: str,
    attempt: int, network_default: str = "", agent_ids: tuple[int, int] | None = None,
    host: HostFacts | None = None,
) -> tuple[ContainerRequest, dict[str, str]]:
    """The container of one attempt, and the task env after ``strip_unmounted``.

    Raises ``RunOptionsError`` (``containerRunOptions``) or ``ContainerSettingsError`` (any other
    field); both are ``ValueError``s whose message names the field and the fix.
    ``agent_ids`` is the agent's own (uid, gid) for a task without a uid (default: this process).
    ``host``: this host's GPUs, RDMA devices and mount propagation (``detect_host()``); None adds
    none of them.
    """
    image = normalise_image(settings.image_name)
    opts = parse_run_options(settings.container_run_options, env)
    binds, mounted = _binds(settings, dirs, layout, prep_dirs, host)
    task_env = strip_unmounted(env, mounted)
    kwargs: dict[str, Any] = dict(opts.create_kwargs)

    kwargs["name"] = container_name(job_id, task_id, attempt, layout.root)
    kwargs["command"] = list(argv) if argv else None
    kwargs["environment"] = {**task_env, **opts.create_kwargs.get("environment", {})}
    labels = {LABEL_JOB: job_id, LABEL_TASK: task_id, LABEL_ATTEMPT: str(attempt),
              LABEL_NODE_ROOT: str(layout.root), LABEL_REMOVE: "true" if opts.remove else "false"}
    kwargs["labels"] = {**opts.create_kwargs.get("labels", {}), **labels}
    user_volumes = opts.create_kwargs.get("volumes", {})
    volumes = binds + [f"{src}:{spec['bind']}:{spec['mode']}" for src, spec in user_volumes.items()]
    if volumes:
        kwargs["volumes"] = volumes
    else:
        kwargs.pop("volumes", None)

    if opts.user is None:
        kwargs["user"], groups = _user(user, agent_ids)
        if groups or "group_add" in kwargs:
            kwargs["group_add"] = [*groups, *kwargs.get("group_add", [])]

    mode = settings.working_directory or "taskWorkingDirectory"
    if opts.workdir is None and mode == "taskWorkingDirectory":
        if "Task" not in mounted:
            raise ContainerSettingsError(
                "workingDirectory", "taskWorkingDirectory needs the task directory in the container: "
                "add {\"source\": \"Task\"} to containerHostBatchBindMounts, or set workingDirectory "
                "to containerImageDefault")
        kwargs["working_dir"] = str(dirs.wd)

    if opts.network is None and network_default:
        kwargs["network"] = network_default
    if host is not None:
        _host_devices(kwargs, host)
    request = ContainerRequest(image=image, create_kwargs=kwargs, labels=kwargs["labels"],
                               remove_after=opts.remove)
    return request, task_env


# Keys ``describe`` shows under their own name; every other create argument goes under "options".
_SHOWN = ("name", "command", "entrypoint", "environment", "labels", "volumes", "mounts", "tmpfs", "user",
          "group_add", "working_dir", "network", "devices", "device_requests")


def _mount_text(mount: Mapping[str, Any]) -> str:
    kind = mount.get("type", "volume")
    mode = "ro" if mount.get("read_only") else "rw"
    if kind == "tmpfs":
        return f"tmpfs:{mount['target']}:{mode}"
    source = mount.get("source") or "(anonymous)"
    text = f"{source}:{mount['target']}:{mode}"
    return text if kind == "bind" else f"volume {text}"


def describe(request: ContainerRequest, host: HostFacts | None = None) -> dict[str, Any]:
    """The exact container creation, for people (``plan``): environment NAMES only, never values.
    ``host``: the facts the request was built with; its notes (devices found but not usable) are
    shown under ``host_notes``."""
    kw = request.create_kwargs
    mounts = [*kw.get("volumes", ()), *(_mount_text(m) for m in kw.get("mounts", ())),
              *(f"tmpfs:{path}" + (f":{opt}" if opt else "") for path, opt in kw.get("tmpfs", {}).items())]
    return {
        "image": request.image,
        "name": kw.get("name"),
        "command": [redact_text(a) for a in kw["command"]] if kw.get("command") else None,  # None: image CMD
        "entrypoint": kw.get("entrypoint"),      # None: the image's ENTRYPOINT
        "mounts": mounts,
        "env": sorted(kw.get("environment", {})),
        "user": kw.get("user"),
        "group_add": list(kw.get("group_add", ())),
        "working_dir": kw.get("working_dir"),    # None: the image's WORKDIR
        "network": kw.get("network"),            # None: the engine's default
        "devices": list(kw.get("devices", ())),  # --device, RDMA devices of the host
        "device_requests": list(kw.get("device_requests", ())),  # --gpus, the host's GPUs
        "labels": dict(kw.get("labels", {})),
        "remove_after": request.remove_after,
        "options": {k: v for k, v in kw.items() if k not in _SHOWN},
        **({"host_notes": list(host.notes)} if host is not None and host.notes else {}),
    }
