"""Native processes: ``ProcessRunner`` implements ``agent.runner.Runner`` (§3 of the semantics doc).

Owns: exec without a shell, stdio by file descriptor, the user switch, tracking an attempt's
process tree (a per-attempt cgroup, else a secret token in its environment) and the TERM /
grace / KILL / sweep sequence. Must not: interpret the command line, touch the task's output,
or kill anything at ``cleanup`` (a finished task's background processes, such as a start
task's daemon, outlive it).

Choices, and why
- Spawn with ``subprocess.Popen`` (fork + exec in C) and wait on a pidfd registered with the
  event loop. No watcher thread, no SIGCHLD handler, and the same wait works for a process
  of a previous agent instance (re-attach). Where ``pidfd_open`` is missing (Linux < 5.3),
  the wait polls instead.
- The child joins its cgroup between fork and exec, so nothing it forks can start outside.
  The agent opens ``<cgroup>/cgroup.procs`` and a ``preexec_fn`` writes "0" to that
  inherited descriptor. ``preexec_fn`` is unsafe in threaded programs in general because it
  runs Python after fork. Here it makes a single ``os.write`` on an open descriptor: it takes
  no lock and imports nothing. subprocess drops the uid before it calls ``preexec_fn``, but
  the kernel checks a cgroup migration against the credentials the file was opened with
  (Linux >= 5.16, or with the CVE-2021-4197 backport), so the write works for a non-root task
  user too. On an older kernel the child's write fails quietly and the agent writes the pid
  right after the spawn; only there is a tiny race left.
- Cgroup kinds: cgroup v2 (``cgroup.kill``, else a plain kill loop), else cgroup v1
  ``freezer`` (freeze, kill, thaw), else v1 ``pids`` (kill loop). A handle's cgroup path tells
  its kind by the files in it, so a restarted agent needs no extra state.
- What the kill sweep takes is decided by markers the task can neither forge nor copy. With
  a cgroup (root and a hierarchy): the attempt's cgroup and its process group, nothing else.
  Without one: the process group plus every process whose real uid is the task's and whose
  environment holds the attempt's secret token (``TOKEN_VAR``, from ``secrets``). The runner
  sets it last, over the task's own settings, so ``environmentSettings`` can't choose it; a
  process of another user can't read it (``/proc/<pid>/environ`` is owner-only), and the uid
  check keeps a copy in another user's process from counting. The handle keeps only the uid
  and a hash of the token (handles are persisted; the token stays out of state files). Never a
  Batch variable: a task may set ``AZ_BATCH_TASK_DIR`` to another task's directory. A process
  that rewrites its environment (``env -i``) escapes the token; only a cgroup holds it.
- Cgroups (``agent.cgroups``) are removed once empty: the attempt's at ``cleanup``, and
  leftovers whose last process (a finished task's daemon) exited later by the sweep that every
  ``cleanup`` and every new runner make.
- Exit code of a re-attached process (not our child): it cannot be known, so it is
  ``UNKNOWN_EXIT_CODE`` (-1). It reads as a failure, never as a false success. It also
  looks like death by SIGHUP.
- stdout.txt / stderr.txt: mode 0640 and owned by the task user, so the task's own group
  (``_azbatchgrp`` for auto-users) can read them and others cannot.
- A stale handle's process group id could in theory be reused once every member is gone.
  The cgroup is exact; the group and the marker are best effort.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from agent.cgroups import (
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
from agent.nodefs import create_at
from agent.runner import ExitResult, RunHandle, RunRequest, TaskUser
from agent.status import FailureInfo

UNKNOWN_EXIT_CODE = -1          # a re-attached process's status cannot be read (see module doc)
TOKEN_VAR = "BATCH_AGENT_ATTEMPT_TOKEN"   # the attempt's secret marker when there is no cgroup
LOG_MODE = 0o640
_MAX_PAUSE = 0.1                # longest pause between two looks at a condition


class ProcessRunner:
    """Runs a task's command as a native process tree (see the module docstring).

    ``use_cgroups``: put each attempt in its own cgroup when the agent is root and a
    hierarchy is found under ``cgroup_root`` (v2 there, else v1 ``freezer``, else v1 ``pids``).
    ``sweep_by_marker``: without a cgroup, the kill sweep also kills the task user's processes
    that carry the attempt's token (``TOKEN_VAR``).
    ``sweep_timeout``: how long the SIGKILL sweep keeps trying before it gives up and logs.
    """

    def __init__(self, *, cgroup_root: Path = Path("/sys/fs/cgroup"), use_cgroups: bool = True,
                 sweep_by_marker: bool = True, sweep_timeout: float = 10.0) -> None:
        self.hierarchy = find_hierarchy(cgroup_root) if use_cgroups and os.geteuid() == 0 else None
        self.sweep_by_marker = sweep_by_marker
        self.sweep_timeout = sweep_timeout
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._killed: set[int] = set()
        self._log = get_logger(component="process")
        if self.hierarchy is not None:
            remove_empty_cgroups(self.hierarchy)

    async def start(self, request: RunRequest) -> RunHandle | FailureInfo:
        if not request.argv:
            return _not_found("the command line is empty")
        program = find_program(request.argv[0], request.env, request.cwd)
        if program is None:
            return _not_found(f"{request.argv[0]!r} is not found in the task's PATH"
                              if "/" not in request.argv[0] else f"{request.argv[0]!r} does not exist")
        switch = self._switch(request)
        env = dict(request.env)
        marker: str | None = None
        fds: list[int] = []
        cgroup: Path | None = None
        child: subprocess.Popen[bytes] | None = None
        try:
            name = f"{request.job_id}_{request.task_id}_{request.attempt}_{secrets.token_hex(4)}"
            cgroup = new_cgroup(self.hierarchy, name, fds) if self.hierarchy else None
            if cgroup is None and self.sweep_by_marker:
                token = secrets.token_hex(16)
                env[TOKEN_VAR] = token          # last: over the task's own environmentSettings
                marker = _marker(switch.uid if switch and switch.uid is not None else os.getuid(), token)
            out = _open_log(request.stdout, switch, fds)
            err = _open_log(request.stderr, switch, fds)
            procs = _open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, fds) if cgroup else None
            try:
                child = subprocess.Popen(
                    request.argv, executable=program, cwd=request.cwd, env=env,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
                    start_new_session=True, preexec_fn=_join(procs) if procs is not None else None,
                    user=switch.uid if switch else None, group=switch.gid if switch else None,
                    extra_groups=list(switch.groups) if switch else None)
            except (OSError, ValueError) as exc:
                return _launch_failure(request, program, exc)
            if procs is not None:
                # Only needed on kernels where the child's own write was refused (module doc).
                with contextlib.suppress(OSError):
                    os.write(procs, str(child.pid).encode())
        finally:
            for fd in fds:
                os.close(fd)
            if cgroup and child is None:
                remove_cgroup(cgroup)
        self._children[child.pid] = child
        try:
            create_time: float | None = psutil.Process(child.pid).create_time()
        except psutil.Error:
            create_time = None
        return RunHandle(kind="process", pid=child.pid, pgid=child.pid, create_time=create_time,
                         cgroup=str(cgroup) if cgroup else None, marker=marker)

    async def wait(self, handle: RunHandle) -> ExitResult:
        pid = _pid(handle)
        child = self._children.get(pid)
        if child is not None:
            if child.returncode is None:
                await _until_exit(pid, lambda: child.poll() is not None)
                child.wait()        # the process has exited: this only reaps it
            code = child.returncode
        else:
            await _until_exit(pid, lambda: not _same_process(pid, handle.create_time))
            code = UNKNOWN_EXIT_CODE
        assert code is not None
        return ExitResult(exit_code=code, killed_by_agent=pid in self._killed)

    async def kill(self, handle: RunHandle, grace: float) -> None:
        self._killed.add(_pid(handle))
        self._signal(handle, signal.SIGTERM, self._members(handle))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        pause = 0.005
        while (left := deadline - loop.time()) > 0 and self._members(handle):
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _MAX_PAUSE)
        await self._sweep(handle)

    async def cleanup(self, handle: RunHandle) -> None:
        pid = _pid(handle)
        child = self._children.get(pid)
        if child is not None and child.returncode is not None:
            del self._children[pid]
            self._killed.discard(pid)
        if handle.cgroup:
            cgroup = Path(handle.cgroup)
            if not await remove_when_empty(cgroup):
                self._log.info("cgroup kept", cgroup=handle.cgroup,
                               pids=sorted(cgroup_pids(cgroup)))
        if self.hierarchy is not None:
            remove_empty_cgroups(self.hierarchy)

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
        """Live (not zombie) processes of the attempt: its cgroup, its group, its token."""
        found = cgroup_pids(Path(handle.cgroup)) if handle.cgroup else set()
        marker = _parse_marker(handle.marker) if self.sweep_by_marker and not handle.cgroup else None
        if handle.pgid is not None or marker:
            for proc in psutil.process_iter():
                try:
                    if proc.pid in found:
                        continue
                    if (handle.pgid is not None and os.getpgid(proc.pid) == handle.pgid) or \
                            (marker and _carries(proc, *marker)):
                        found.add(proc.pid)
                except (psutil.Error, OSError):
                    continue
        found.discard(os.getpid())
        return {pid for pid in found if _alive(pid)}

    def _signal(self, handle: RunHandle, sig: signal.Signals, pids: set[int]) -> None:
        """``sig`` to the process group and to ``pids`` outside it: one signal per process."""
        if handle.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pgid, sig)
        for pid in pids:
            # A second SIGTERM would run a task's TERM trap twice.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) != handle.pgid:
                    os.kill(pid, sig)

    async def _sweep(self, handle: RunHandle) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.sweep_timeout
        pause = 0.005
        while True:
            if handle.cgroup:
                await kill_cgroup(Path(handle.cgroup))
            left = self._members(handle)
            self._signal(handle, signal.SIGKILL, left)
            if not left:
                return
            if loop.time() >= deadline:
                self._log.warning("processes survived the kill sweep", pids=sorted(left))
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)


def find_program(argv0: str, env: Mapping[str, str], cwd: Path) -> str | None:
    """The program to exec for argv[0], found in the task's PATH, or None.

    A name with a slash is taken as is and checked relative to ``cwd``: the child execs it
    after changing to ``cwd``, so a script sees the same ``$0`` as it would under a shell.
    Relative PATH entries resolve against ``cwd`` too.
    """
    if "/" in argv0:
        return argv0 if (cwd / argv0).exists() else None
    dirs = env.get("PATH", os.defpath).split(os.pathsep)
    return shutil.which(argv0, path=os.pathsep.join(str(cwd / d) for d in dirs))


def _join(fd: int) -> Callable[[], None]:
    def join() -> None:
        # Runs in the child between fork and exec: one write, no lock, no import (module doc).
        with contextlib.suppress(OSError):
            os.write(fd, b"0")
    return join


def _open(path: Path, flags: int, fds: list[int], mode: int = 0o600) -> int:
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        raise RunnerError(f"cannot open {path}: {exc.strerror}") from exc
    fds.append(fd)
    return fd


def _open_log(path: Path, owner: TaskUser | None, fds: list[int]) -> int:
    """A fresh log file, never an object a task planted at ``path`` (see ``agent.nodefs``)."""
    ids = None if owner is None or owner.uid is None else (owner.uid, -1 if owner.gid is None else owner.gid)
    try:
        fd = create_at(path, LOG_MODE, ids)
    except OSError as exc:
        raise RunnerError(f"cannot create {path}: {exc.strerror}") from exc
    fds.append(fd)
    return fd


def _not_found(why: str) -> FailureInfo:
    return FailureInfo.user("CommandProgramNotFound", "The specified command program is not found",
                            Message=why)


def _launch_failure(request: RunRequest, program: str, exc: OSError | ValueError) -> FailureInfo:
    if isinstance(exc, ValueError):
        why = f"{request.argv[0]!r}: {exc}"
    elif exc.filename == str(request.cwd):
        why = f"working directory {request.cwd}: {exc.strerror}"
    elif isinstance(exc, FileNotFoundError):
        # The program vanished, or its #! interpreter does not exist.
        return _not_found(f"{request.argv[0]!r} ({program}): {exc.strerror}")
    else:
        why = f"{request.argv[0]!r} ({program}): {exc.strerror}"
    return FailureInfo.user("CommandLaunchFailed", "The specified command program could not be launched",
                            Message=why)


def _marker(uid: int, token: str) -> str:
    """The handle's marker: the task's uid and a hash of the token (the token itself is a secret)."""
    return f"{uid}:{_digest(token)}"


def _parse_marker(marker: str | None) -> tuple[int, str] | None:
    uid, _, digest = (marker or "").partition(":")
    return (int(uid), digest) if uid.isdigit() and len(digest) == 64 else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _carries(proc: psutil.Process, uid: int, digest: str) -> bool:
    """``proc`` runs as ``uid`` (real uid) and its environment holds the token hashing to ``digest``."""
    if proc.uids().real != uid:
        return False
    token = proc.environ().get(TOKEN_VAR)
    return token is not None and secrets.compare_digest(_digest(token), digest)


def _pid(handle: RunHandle) -> int:
    if handle.kind != "process" or handle.pid is None:
        raise RunnerError(f"not a process handle: {handle.to_json()}")
    return handle.pid


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _same_process(pid: int, create_time: float | None) -> bool:
    """``pid`` is still the live process the handle was made for (not a recycled pid)."""
    try:
        proc = psutil.Process(pid)
        # btime in /proc/stat may move by a second (clock adjustments): allow for it.
        same = create_time is None or abs(proc.create_time() - create_time) < 1.0
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def _until_exit(pid: int, exited: Callable[[], bool]) -> None:
    """Return once ``pid`` has exited: a pidfd readable in the event loop, else polling."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:                 # no pidfd on this kernel
        pause = 0.01
        while not exited():
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
        return
    try:
        if exited():                # checked after opening: the pidfd is the process we mean
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        def readable() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await done
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
