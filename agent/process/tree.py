"""An attempt's process tree: which live processes belong to it, signalling them, waiting for one.

Owns: the kill-sweep markers (the attempt's secret token, stored as uid + hash), membership (the
attempt's cgroup, its process group, its token), the pid-reuse checks (``create_time``), and the
pidfd wait. Must not: decide when to kill (``ProcessRunner`` does), or trust anything a task can
set (a Batch variable, its own environment settings) to pick what root signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import psutil

from agent.cgroups import cgroup_pids
from agent.runner import RunHandle

TOKEN_VAR = "BATCH_AGENT_ATTEMPT_TOKEN"   # the attempt's secret marker when there is no cgroup
MAX_PAUSE = 0.1                 # longest pause between two looks at a condition
_CLOCK_SLACK = 1.0              # btime in /proc/stat may move by a second (clock adjustments)


def new_marker(uid: int) -> tuple[str, str]:
    """(token for the task's environment, the handle's marker: uid and the token's hash)."""
    token = secrets.token_hex(16)
    return token, f"{uid}:{_digest(token)}"


def parse_marker(marker: str | None) -> tuple[int, str] | None:
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


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def same_process(pid: int, create_time: float | None) -> bool:
    """``pid`` is still the live process the handle was made for (not a recycled pid)."""
    try:
        proc = psutil.Process(pid)
        same = create_time is None or abs(proc.create_time() - create_time) < _CLOCK_SLACK
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def trusted_pgid(handle: RunHandle) -> int | None:
    """The handle's process group, unless its number now leads another process's group.

    The group id is the main process's pid. While that process lives with the handle's
    ``create_time`` the group is the attempt's. When a process with that pid exists but was
    created at another time, the pid was recycled and the group may be someone else's: skip it.
    """
    if handle.pgid is None:
        return None
    if handle.create_time is None or handle.pgid != handle.pid:
        return handle.pgid
    try:
        leader_time = psutil.Process(handle.pgid).create_time()
    except psutil.Error:
        return handle.pgid          # the leader is gone; members of its group may remain
    return handle.pgid if abs(leader_time - handle.create_time) < _CLOCK_SLACK else None


def members(handle: RunHandle, *, by_marker: bool) -> set[int]:
    """Live (not zombie) processes of the attempt: its cgroup, its group, its token."""
    found = cgroup_pids(Path(handle.cgroup)) if handle.cgroup else set()
    pgid = trusted_pgid(handle)
    marker = parse_marker(handle.marker) if by_marker and not handle.cgroup else None
    if pgid is not None or marker:
        for proc in psutil.process_iter():
            try:
                if proc.pid in found:
                    continue
                if (pgid is not None and os.getpgid(proc.pid) == pgid) or \
                        (marker and _carries(proc, *marker)):
                    found.add(proc.pid)
            except (psutil.Error, OSError):
                continue
    found.discard(os.getpid())
    return {pid for pid in found if alive(pid)}


def send(handle: RunHandle, sig: signal.Signals, pids: set[int]) -> None:
    """``sig`` to the process group and to ``pids`` outside it: one signal per process."""
    pgid = trusted_pgid(handle)
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for pid in pids:
        # A second SIGTERM would run a task's TERM trap twice.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) != pgid:
                os.kill(pid, sig)


async def until_exit(pid: int, exited: Callable[[], bool]) -> None:
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
