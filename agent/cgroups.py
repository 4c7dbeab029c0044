"""Per-attempt cgroups of the native process runner: find a hierarchy, create, kill, remove.

Owns the ``batch-agent`` cgroup and the attempt cgroups under it, in cgroup v2 or in one v1
hierarchy (``freezer``, else ``pids``). Must not: kill at removal (only ``kill_cgroup`` kills),
or remove a cgroup that has a process in it (a finished task's daemon may outlive the task).

Why a lock: an attempt cgroup is empty between its creation and its first process, and empty
cgroups are swept (at a runner's start-up and at every clean-up, so a cgroup whose last daemon
exited late goes too). The creator holds ``flock`` on the cgroup's directory from before it checks
that the directory still exists until its process has joined; a sweep, of this agent or of a
concurrent one, takes the lock without waiting or skips the cgroup. The parent goes when its last
child does at a start-up sweep (a runner's clean-up keeps it); a creator that finds it gone makes
it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from pathlib import Path

from agent.errors import RunnerError

CGROUP_PARENT = "batch-agent"


def find_hierarchy(root: Path) -> Path | None:
    """The cgroup hierarchy to track processes in: v2 at ``root``, else v1 freezer, else v1 pids;
    None when none is found or the one found cannot be written (``writable``)."""
    found: Path | None = None
    if (root / "cgroup.controllers").is_file():
        found = root
    else:
        for controller in ("freezer", "pids"):
            if (root / controller / "cgroup.procs").is_file():
                found = root / controller
                break
    return found if found is not None and writable(found) else None


def writable(hierarchy: Path) -> bool:
    """Whether attempt cgroups can be made under ``hierarchy``. A container's /sys/fs/cgroup is
    mounted read-only by default (Docker without ``--cgroupns=private`` + rw, or a cgroup
    delegation): there every task would fail to start, so such a hierarchy counts as none and
    the runner falls back to the token sweep (``agent.process``)."""
    try:
        if os.statvfs(hierarchy).f_flag & os.ST_RDONLY:
            return False
    except OSError:
        return False
    return os.access(hierarchy, os.W_OK)


def new_cgroup(hierarchy: Path, name: str, fds: list[int]) -> Path:
    """A new attempt cgroup, locked until the caller closes the descriptor added to ``fds``."""
    path = hierarchy / CGROUP_PARENT / name
    for _ in range(10):
        try:
            try:
                path.mkdir()
            except FileNotFoundError:
                path.parent.mkdir(exist_ok=True)    # made once; a sweep may remove it when empty
                continue
            lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(lock)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (path / "cgroup.procs").exists():
                return path
        except FileNotFoundError:
            continue                # a sweep removed the parent or the new cgroup first: again
        except OSError as exc:
            raise RunnerError(f"cannot create the task's cgroup {path}: {exc.strerror}") from exc
    raise RunnerError(f"cannot create the task's cgroup {path}: removed while it was created")


def remove_empty_cgroups(hierarchy: Path, *, keep_parent: bool = False) -> None:
    """Remove the empty attempt cgroups under ``hierarchy``, then their parent if it is empty
    (unless ``keep_parent``: a runner's clean-up keeps it for its next attempt; creating and
    removing it at every task cost two cgroupfs syscalls a task). A cgroup being created (locked)
    is skipped; one with a process in it stays."""
    parent = hierarchy / CGROUP_PARENT
    try:
        children = [p for p in parent.iterdir() if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return
    for child in children:
        try:
            fd = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not cgroup_pids(child):
                remove_cgroup(child)
        except OSError:
            continue                # locked: a runner is creating it
        finally:
            os.close(fd)
    if not keep_parent:
        with contextlib.suppress(OSError):
            parent.rmdir()


async def remove_when_empty(cgroup: Path) -> bool:
    """Remove ``cgroup`` unless a process is in it; False when it stays."""
    if cgroup_pids(cgroup):
        return False
    # Exiting processes can keep an empty-looking cgroup busy for a moment.
    for _ in range(50):
        if remove_cgroup(cgroup):
            return True
        await asyncio.sleep(0.01)
    return False


def cgroup_pids(cgroup: Path) -> set[int]:
    try:
        return {int(line) for line in (cgroup / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()


async def kill_cgroup(cgroup: Path) -> None:
    """SIGKILL everything in the cgroup in one go where the kernel allows it."""
    if (cgroup / "cgroup.kill").exists():                       # v2, Linux >= 5.14
        with contextlib.suppress(FileNotFoundError):
            (cgroup / "cgroup.kill").write_text("1")
        return
    state = cgroup / "freezer.state"
    if not state.exists():                                      # v1 pids / old v2: the sweep loop kills
        return
    try:
        # Frozen processes cannot fork, so one pass over cgroup.procs gets all of them.
        state.write_text("FROZEN")
        try:
            for _ in range(100):
                if state.read_text().strip() == "FROZEN":
                    break
                await asyncio.sleep(0.01)
            for pid in cgroup_pids(cgroup):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            state.write_text("THAWED")                          # they die once thawed
    except FileNotFoundError:
        return


def remove_cgroup(cgroup: Path) -> bool:
    try:
        cgroup.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
