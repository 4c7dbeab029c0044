"""Preparing a native spawn: the program, the descriptors, the child's last steps, launch failures.

Owns: finding argv[0] (without ever resolving a path under the task's working directory as
root), opening stdout/stderr, ``cgroup.procs`` and the working directory for the child, the
``preexec_fn`` both spawn paths use, and turning a launch error into a ``FailureInfo``. Must
not: spawn (``ProcessRunner`` does, directly or through the supervisor) or kill.

The working directory is entered AS THE TASK USER. ``subprocess``'s ``cwd`` chdirs before it
drops to the task user, so a process left behind by an earlier attempt could swap ``wd`` for a
link between prestart and exec and start the command, as root's chdir would follow it, in a
directory the task user may not even enter. Instead the agent opens ``cwd`` with
``agent.nodefs.open_dir`` (no link anywhere in the path) and the child ``fchdir``s to that
descriptor in ``preexec_fn``, which ``_posixsubprocess`` runs after ``setgroups`` / ``setregid``
/ ``setreuid``: the kernel checks the task user's search permission, and the directory is the
one opened, whatever the name has become since. A program path with a slash, and a PATH with
relative entries, are likewise resolved by the child's ``execve`` after the ``fchdir``, never
checked by root under ``cwd``.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.errors import RunnerError
from agent.nodefs import create_at, open_dir
from agent.runner import RunRequest, TaskUser
from agent.status import FailureInfo

LOG_MODE = 0o640
CHILD_SEARCHES = ""             # find_program: the child searches the task's PATH itself


def find_program(argv0: str, env: Mapping[str, str]) -> str | None:
    """What to exec for argv[0]: a path, ``CHILD_SEARCHES``, or None (not found).

    An absolute name is checked here. A relative name with a slash is exec'd as is by the child
    after it entered its working directory, so a script sees the same ``$0`` as under a shell. A
    bare name is searched in the task's PATH here when every entry is absolute; with a relative
    (or empty) entry the child searches, so that entry resolves against the working directory
    with the task user's permissions.
    """
    if argv0.startswith("/"):
        return argv0 if os.path.exists(argv0) else None
    if "/" in argv0:
        return argv0
    dirs = env.get("PATH", os.defpath).split(os.pathsep)
    if any(not d.startswith("/") for d in dirs):
        return CHILD_SEARCHES
    return shutil.which(argv0, path=os.pathsep.join(dirs))


def prepare(procs: int | None, cwd_fd: int) -> Callable[[], None]:
    """The child's last steps, after the user switch: join the cgroup, enter the working dir.

    ``preexec_fn`` is unsafe in threaded programs in general because it runs Python after fork;
    this one makes one ``os.write`` and one ``os.fchdir`` on inherited descriptors: no lock, no
    import. A failed fchdir makes Popen raise ``SubprocessError`` (see ``launch_failure``).
    """
    def child() -> None:
        if procs is not None:
            with contextlib.suppress(OSError):
                os.write(procs, b"0")
        os.fchdir(cwd_fd)
    return child


def open_fd(path: Path, flags: int, fds: list[int], mode: int = 0o600) -> int:
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        raise RunnerError(f"cannot open {path}: {exc.strerror}") from exc
    fds.append(fd)
    return fd


def open_log(path: Path, owner: TaskUser | None, fds: list[int]) -> int:
    """A fresh log file, never an object a task planted at ``path`` (see ``agent.nodefs``)."""
    ids = None if owner is None or owner.uid is None else (owner.uid, -1 if owner.gid is None else owner.gid)
    try:
        fd = create_at(path, LOG_MODE, ids)
    except OSError as exc:
        raise RunnerError(f"cannot create {path}: {exc.strerror}") from exc
    fds.append(fd)
    return fd


def open_cwd(request: RunRequest, fds: list[int]) -> int | FailureInfo:
    """The working directory, opened with no link in its path; a link or a missing dir fails."""
    try:
        fd = open_dir(request.cwd)
    except OSError as exc:
        why = ("not a directory, or a symbolic link in its path (links are not followed)"
               if exc.errno in (errnos.ELOOP, errnos.ENOTDIR) else exc.strerror)
        return FailureInfo.user("CommandLaunchFailed", "The specified command program could not be launched",
                                Message=f"working directory {request.cwd}: {why}")
    fds.append(fd)
    return fd


def not_found(why: str) -> FailureInfo:
    return FailureInfo.user("CommandProgramNotFound", "The specified command program is not found",
                            Message=why)


def launch_failure(request: RunRequest, program: str, exc: BaseException) -> FailureInfo:
    """A spawn's exception (Popen's, or the supervisor's rebuilt as one) as a FailureInfo."""
    if isinstance(exc, subprocess.SubprocessError):
        why = f"working directory {request.cwd}: the task user cannot enter it"
    elif isinstance(exc, ValueError) or not isinstance(exc, OSError):
        why = f"{request.argv[0]!r}: {exc}"
    elif isinstance(exc, FileNotFoundError):
        # The program vanished, or its #! interpreter does not exist.
        shown = f" ({program})" if program and program != request.argv[0] else ""
        return not_found(f"{request.argv[0]!r}{shown}: {exc.strerror}")
    else:
        shown = f" ({program})" if program and program != request.argv[0] else ""
        why = f"{request.argv[0]!r}{shown}: {exc.strerror}"
    return FailureInfo.user("CommandLaunchFailed", "The specified command program could not be launched",
                            Message=why)
