"""The Runner protocol: how the task runner starts, waits for and kills a task's command.

Two runners implement it: ``agent.process.ProcessRunner`` (native processes) and
``agent.container.ContainerRunner`` (Docker). The task runner knows only this module.

A launch failure (program not found, image missing at create time, ...) is a value: ``start``
returns a ``FailureInfo`` instead of a handle. A non-zero exit is a value too (``ExitResult``).

Restart safety. A handle is persisted before the agent relies on it; a restarted agent builds new
runners and calls ``recover(handle)`` on each live one. ``True``: ``wait`` gives the REAL result
(the command still runs, or it ended and its status was kept). ``False``: the attempt is lost
(another boot, its supervisor died, its container is gone) and nothing of it is left running,
so the caller requeues it. Cancelling ``wait`` (stopping the agent) never kills anything; only
``kill`` and ``destroy`` do.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from agent.status import ContainerInfo, FailureInfo


@dataclass(frozen=True, slots=True)
class TaskUser:
    """The Linux account a task runs as. ``uid is None`` means: the agent's own user."""

    name: str
    uid: int | None
    gid: int | None
    groups: tuple[int, ...] = ()
    identity: str = "PoolNonAdmin"   # AZ_BATCH_TASK_USER_IDENTITY
    elevated: bool = False           # admin elevation (root on the host / in the container)


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """What a container runner needs beyond a plain process (§8)."""

    image: str                                  # normalised, with a tag
    create_kwargs: Mapping[str, Any]            # Docker SDK ``containers.create`` arguments
    labels: Mapping[str, str] = field(default_factory=dict)
    remove_after: bool = False                  # ``--rm`` in containerRunOptions


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One attempt of one task's command."""

    job_id: str
    task_id: str
    attempt: int
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    stdout: Path
    stderr: Path
    user: TaskUser
    container: ContainerRequest | None = None


@dataclass(frozen=True, slots=True)
class RunHandle:
    """Enough to find a started command again, also after an agent restart (persisted)."""

    kind: str                         # "process" | "container"
    pid: int | None = None
    pgid: int | None = None
    create_time: float | None = None  # psutil create_time, to tell a recycled pid apart
    cgroup: str | None = None
    container_id: str | None = None
    marker: str | None = None         # value identifying the task's processes (sweep)
    attempt_id: str | None = None     # the supervisor's key of a supervised process
    boot_id: str | None = None        # the kernel's boot id at start: another boot is never re-attached
    stdout: str | None = None         # a container's output files and their owner, to resume
    stderr: str | None = None         # the log stream into them after a restart
    log_uid: int | None = None
    log_gid: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunHandle:
        """A handle written by ``to_json``, also by an older agent (a missing field is None)."""
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
        return cls(**values)


BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


@functools.cache
def boot_id() -> str | None:
    """This boot's id (a random UUID the kernel makes at boot), or None where /proc lacks it."""
    try:
        with open(BOOT_ID_PATH) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def same_boot(handle: RunHandle) -> bool:
    """The handle was made during this boot (an old handle without a boot id: unknown, False)."""
    return handle.boot_id is not None and handle.boot_id == boot_id()


@dataclass(frozen=True, slots=True)
class ExitResult:
    """How a started command ended."""

    exit_code: int                    # the status; killed by a signal: minus the signal number
    killed_by_agent: bool = False     # the agent killed it (wall clock / terminate)
    container_info: ContainerInfo | None = None
    lost: bool = False                # the status was lost while waiting (the supervisor died): the
                                      # tree was killed and ``exit_code`` is -1; requeue, not a retry


class Runner(Protocol):
    async def start(self, request: RunRequest) -> RunHandle | FailureInfo:
        """Start the command; a launch failure comes back as a FailureInfo."""
        ...

    async def wait(self, handle: RunHandle) -> ExitResult:
        """Wait until the command (its main process / container) ends."""
        ...

    async def kill(self, handle: RunHandle, grace: float) -> None:
        """SIGTERM the whole tree, wait ``grace`` seconds, SIGKILL, sweep escaped processes."""
        ...

    async def cleanup(self, handle: RunHandle) -> None:
        """Release what the attempt held (cgroup, container) once its result is recorded."""
        ...

    async def recover(self, handle: RunHandle) -> bool:
        """After an agent restart: True when ``wait`` can give the attempt's real result; False
        when it is lost, and then nothing of it is left running (see the module docstring)."""
        ...

    async def destroy(self, handle: RunHandle) -> None:
        """Kill and remove everything of the attempt at once (its task was deleted)."""
        ...
