"""``ProcessRunner``: start, wait, kill, recover and clean up native task processes.

See the package docstring for the choices (supervisor, cgroups, markers, working directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import psutil

from agent.cgroups import (
    CGROUP_PARENT,
    cgroup_pids,
    find_hierarchy,
    kill_cgroup,
    new_cgroup,
    remove_cgroup,
    remove_empty_cgroups,
    remove_when_empty,
)
from agent.errors import RunnerError
from agent.logs import get_logger
from agent.process.launch import (
    find_program,
    launch_failure,
    not_found,
    open_cwd,
    open_fd,
    open_log,
    prepare,
)
from agent.process.tree import (
    MAX_PAUSE,
    TOKEN_VAR,
    members,
    new_marker,
    same_process,
    send,
    until_exit,
)
from agent.runner import ExitResult, RunHandle, RunRequest, TaskUser, boot_id, same_boot
from agent.status import FailureInfo
from agent.supervisor.client import (
    LaunchFailed,
    Lost,
    SpawnRequest,
    SpawnUncertain,
    SupervisorClient,
    SupervisorError,
)

UNKNOWN_EXIT_CODE = -1          # a status nobody kept (see the package docstring)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NO_CGROUP_LOGGED: set[Path] = set()      # a cgroup root without a usable hierarchy, logged once


class ProcessRunner:
    """Runs a task's command as a native process tree (see the package docstring).

    ``node_root`` (or ``supervisor``): spawn through the node root's supervisor, so that a
    restarted agent gets the real exit status back (``recover``); without either, spawn with
    ``Popen`` in this process (``batch-agent run``: one task, no restart to survive).
    ``use_cgroups``: put each attempt in its own cgroup when the agent is root and a
    hierarchy is found under ``cgroup_root`` (v2 there, else v1 ``freezer``, else v1 ``pids``).
    ``sweep_by_marker``: without a cgroup, the kill sweep also kills the task user's processes
    that carry the attempt's token (``TOKEN_VAR``).
    ``sweep_timeout``: how long the SIGKILL sweep keeps trying before it gives up and logs.
    """

    def __init__(self, *, cgroup_root: Path = Path("/sys/fs/cgroup"), use_cgroups: bool = True,
                 sweep_by_marker: bool = True, sweep_timeout: float = 10.0,
                 node_root: Path | None = None, supervisor: SupervisorClient | None = None) -> None:
        self.hierarchy = find_hierarchy(cgroup_root) if use_cgroups and os.geteuid() == 0 else None
        if use_cgroups and os.geteuid() == 0 and self.hierarchy is None and cgroup_root not in _NO_CGROUP_LOGGED:
            _NO_CGROUP_LOGGED.add(cgroup_root)
            get_logger(component="process").warning(
                "no writable cgroup hierarchy: tasks are tracked by their token only", cgroup_root=str(cgroup_root),
                fix="mount the cgroup filesystem read-write (e.g. a container with --cgroupns=private) to give "
                    "each attempt its own cgroup")
        self.sweep_by_marker = sweep_by_marker
        self.sweep_timeout = sweep_timeout
        self.supervisor = supervisor if supervisor is not None else \
            SupervisorClient(node_root) if node_root is not None else None
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._killed: set[int] = set()
        self._log = get_logger(component="process")
        if self.hierarchy is not None:
            remove_empty_cgroups(self.hierarchy)

    async def start(self, request: RunRequest) -> RunHandle | FailureInfo:
        if not request.argv:
            return not_found("the command line is empty")
        program = find_program(request.argv[0], request.env)
        if program is None:
            return not_found(f"{request.argv[0]!r} is not found in the task's PATH"
                             if "/" not in request.argv[0] else f"{request.argv[0]!r} does not exist")
        switch = self._switch(request)
        uid = switch.uid if switch and switch.uid is not None else os.getuid()
        env = dict(request.env)
        marker: str | None = None
        fds: list[int] = []
        cgroup: Path | None = None
        pid: int | None = None
        attempt_id = _attempt_id(request)
        try:
            cgroup = new_cgroup(self.hierarchy, attempt_id, fds) if self.hierarchy else None
            if cgroup is None and self.sweep_by_marker:
                env[TOKEN_VAR], marker = new_marker(uid)   # last: over the task's environmentSettings
            out = open_log(request.stdout, switch, fds)
            err = open_log(request.stderr, switch, fds)
            procs = open_fd(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, fds) if cgroup else None
            cwd = open_cwd(request, fds)
            if isinstance(cwd, FailureInfo):
                return cwd
            if self.supervisor is None:
                spawned = self._popen(request, program, env, out, err, procs, cwd, switch)
            else:
                spawned = await self._spawn(request, program, env, out, err, procs, cwd, switch, attempt_id,
                                            RunHandle(kind="process", cgroup=str(cgroup) if cgroup else None,
                                                      marker=marker, attempt_id=attempt_id, boot_id=boot_id()))
            if isinstance(spawned, FailureInfo):
                return spawned
            pid = spawned
            if procs is not None:
                # Only needed on kernels where the child's own write was refused (package doc).
                with contextlib.suppress(OSError):
                    os.write(procs, str(pid).encode())
        finally:
            for fd in fds:
                os.close(fd)
            if cgroup and pid is None:
                remove_cgroup(cgroup)
        try:
            create_time: float | None = psutil.Process(pid).create_time()
        except psutil.Error:
            create_time = None
        return RunHandle(kind="process", pid=pid, pgid=pid, create_time=create_time,
                         cgroup=str(cgroup) if cgroup else None, marker=marker,
                         attempt_id=attempt_id if self.supervisor is not None else None, boot_id=boot_id())

    def _popen(self, request: RunRequest, program: str, env: dict[str, str], out: int, err: int,
               procs: int | None, cwd: int, switch: TaskUser | None) -> int | FailureInfo:
        try:
            child = subprocess.Popen(
                request.argv, executable=program or None, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
                start_new_session=True, preexec_fn=prepare(procs, cwd),
                user=switch.uid if switch else None, group=switch.gid if switch else None,
                extra_groups=list(switch.groups) if switch else None)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return launch_failure(request, program, exc)
        self._children[child.pid] = child
        return child.pid

    async def _spawn(self, request: RunRequest, program: str, env: dict[str, str], out: int, err: int,
                     procs: int | None, cwd: int, switch: TaskUser | None, attempt_id: str,
                     partial: RunHandle) -> int | FailureInfo:
        assert self.supervisor is not None
        spawn = SpawnRequest(
            attempt=attempt_id, argv=request.argv, executable=program or None, cwd=request.cwd, env=env,
            stdout=out, stderr=err, cgroup_procs=procs, cwd_fd=cwd,
            uid=switch.uid if switch else None, gid=switch.gid if switch else None,
            groups=list(switch.groups) if switch else None)
        try:
            result = await self.supervisor.spawn(spawn)
        except SpawnUncertain as exc:
            # It may be running: take down whatever its cgroup or token holds, never spawn twice.
            await self._sweep(partial)
            raise RunnerError(f"the supervisor went away while starting {request.job_id}/{request.task_id}; "
                              "anything it started was killed") from exc
        if isinstance(result, LaunchFailed):
            return launch_failure(request, program, _rebuilt(result, request))
        return result.pid

    async def wait(self, handle: RunHandle) -> ExitResult:
        pid = _pid(handle)
        if handle.attempt_id is not None and self.supervisor is not None:
            state = await self.supervisor.wait(handle.attempt_id)
            if isinstance(state, Lost):
                # Its supervisor died: the tree runs on, reparented. Nothing of it may stay.
                self._log.warning("attempt lost by the supervisor", attempt=handle.attempt_id)
                await self._sweep(handle)
                return ExitResult(UNKNOWN_EXIT_CODE, killed_by_agent=pid in self._killed, lost=True)
            return ExitResult(state.code, killed_by_agent=pid in self._killed)
        child = self._children.get(pid)
        if child is not None:
            if child.returncode is None:
                await until_exit(pid, lambda: child.poll() is not None)
                child.wait()        # the process has exited: this only reaps it
            code = child.returncode
        else:
            await until_exit(pid, lambda: not same_process(pid, handle.create_time))
            code = UNKNOWN_EXIT_CODE
        assert code is not None
        return ExitResult(exit_code=code, killed_by_agent=pid in self._killed)

    async def recover(self, handle: RunHandle) -> bool:
        """True: the supervisor runs the attempt or kept its status (``wait`` gives it). False:
        lost, and nothing of it runs any more (another boot: nothing of it can)."""
        pid = _pid(handle)
        if handle.boot_id is not None and not same_boot(handle):
            # Nothing of another boot runs. Whatever matches it exactly goes all the same (the
            # same pid AND start time, its cgroup, its token), never a bare group id that this
            # boot may have given to someone else.
            await self._sweep(replace(handle, pgid=handle.pgid if same_process(pid, handle.create_time)
                                      else None))
            return False
        if handle.attempt_id is None or self.supervisor is None or handle.boot_id is None:
            await self._sweep(handle)   # no status was kept for it
            return False
        state = await self.supervisor.status(handle.attempt_id)
        if isinstance(state, Lost):
            await self._sweep(handle)
            return False
        return True

    async def sweep_task(self, job_id: str, task_id: str) -> int:
        """Kill every attempt of this task that the supervisor still runs or keeps, and forget
        them: recovery calls it for a task found running with no handle recorded (the agent died
        between the spawn and the handle's write), where nothing else says where it runs. An
        attempt is matched by its task tag (an exact digest of the ids), its tree by its cgroup
        (named after the attempt id, which the agent chose) or its process group (the
        supervisor's unreaped child: the pid cannot have been reused). Returns how many."""
        if self.supervisor is None:
            return 0
        tag = task_tag(job_id, task_id)
        running, exited = await self.supervisor.list()
        found = 0
        for attempt, pid in running.items():
            if not _of_task(attempt, tag):
                continue
            found += 1
            cgroup = self.hierarchy / CGROUP_PARENT / attempt if self.hierarchy is not None else None
            handle = RunHandle(kind="process", pid=pid, pgid=pid, attempt_id=attempt, boot_id=boot_id(),
                               cgroup=str(cgroup) if cgroup is not None and cgroup.is_dir() else None)
            self._log.info("sweeping an attempt whose handle was never recorded", attempt=attempt)
            await self._sweep(handle)
            await self.supervisor.wait(attempt)
            await self.cleanup(handle)
        for attempt in exited:
            if _of_task(attempt, tag):
                found += 1
                await self.supervisor.forget(attempt)
        return found

    async def kill(self, handle: RunHandle, grace: float) -> None:
        self._killed.add(_pid(handle))
        send(handle, signal.SIGTERM, self._members(handle))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        pause = 0.005
        while (left := deadline - loop.time()) > 0 and self._members(handle):
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, MAX_PAUSE)
        await self._sweep(handle)

    async def cleanup(self, handle: RunHandle) -> None:
        pid = _pid(handle)
        child = self._children.get(pid)
        if child is not None and child.returncode is not None:
            del self._children[pid]
        self._killed.discard(pid)
        if handle.attempt_id is not None and self.supervisor is not None:
            try:
                await self.supervisor.forget(handle.attempt_id)
            except SupervisorError as exc:  # still running, or no supervisor: the record stays
                self._log.info("exit record kept", attempt=handle.attempt_id, why=str(exc))
        if handle.cgroup:
            cgroup = Path(handle.cgroup)
            if not await remove_when_empty(cgroup):
                self._log.info("cgroup kept", cgroup=handle.cgroup,
                               pids=sorted(cgroup_pids(cgroup)))
        if self.hierarchy is not None:
            remove_empty_cgroups(self.hierarchy, keep_parent=True)

    async def destroy(self, handle: RunHandle) -> None:
        """Kill at once (no grace), let the main process be reaped, then ``cleanup``."""
        if handle.boot_id is None or same_boot(handle):
            await self.kill(handle, 0)
            with contextlib.suppress(TimeoutError, RunnerError):
                async with asyncio.timeout(self.sweep_timeout):
                    await self.wait(handle)
        await self.cleanup(handle)

    # -- internals -------------------------------------------------------------------------

    def _switch(self, request: RunRequest) -> TaskUser | None:
        """The user to switch to, or None to run as the agent's own user."""
        user = request.user
        if user.uid is None:
            return None
        if os.geteuid() != 0:
            if user.uid == os.geteuid():
                return None
            raise RunnerError(f"cannot run as {user.name} (uid {user.uid}): the agent is not root")
        return user

    def _members(self, handle: RunHandle) -> set[int]:
        return members(handle, by_marker=self.sweep_by_marker)

    async def _sweep(self, handle: RunHandle) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.sweep_timeout
        pause = 0.005
        while True:
            if handle.cgroup and Path(handle.cgroup).is_dir():
                await kill_cgroup(Path(handle.cgroup))
            left = self._members(handle)
            send(handle, signal.SIGKILL, left)
            if not left:
                return
            if loop.time() >= deadline:
                self._log.warning("processes survived the kill sweep", pids=sorted(left))
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)


def task_tag(job_id: str, task_id: str) -> str:
    """The exact (case-blind, as Batch ids are) identity of a task inside its attempt ids: the
    readable part of an attempt id is lossy (unsafe characters become ``-``, ids may hold
    ``_``), so ``sweep_task`` matches on this digest, never on the readable part."""
    return hashlib.sha256(f"{job_id.casefold()}\0{task_id.casefold()}".encode()).hexdigest()[:20]


def _attempt_id(request: RunRequest) -> str:
    """Unique per attempt; names its cgroup and the supervisor's record (``[A-Za-z0-9_-]``):
    ``<readable job_task_attempt>_<task tag>_<random>``."""
    base = _UNSAFE.sub("-", f"{request.job_id}_{request.task_id}_{request.attempt}")[:140]
    return f"{base}_{task_tag(request.job_id, request.task_id)}_{secrets.token_hex(8)}"


def _of_task(attempt_id: str, tag: str) -> bool:
    parts = attempt_id.rsplit("_", 2)
    return len(parts) == 3 and parts[1] == tag


def _rebuilt(failure: LaunchFailed, request: RunRequest) -> BaseException:
    """The supervisor's launch error as the exception Popen would have raised here."""
    if failure.errno is not None:
        return OSError(failure.errno, failure.strerror or os.strerror(failure.errno), failure.filename)
    if failure.filename == str(request.cwd):
        return subprocess.SubprocessError(failure.message)
    return ValueError(failure.message or "the supervisor could not launch it")


def _pid(handle: RunHandle) -> int:
    if handle.kind != "process" or handle.pid is None:
        raise RunnerError(f"not a process handle: {handle.to_json()}")
    return handle.pid
