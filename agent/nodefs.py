"""Link-safe file system primitives: the one way the root agent reaches a task's files.

Owns: opening directories without following any symbolic link, creating (or re-creating) a
directory or a file relative to a verified directory fd, setting mode and owner on the open fd,
emptying a directory without leaving it, and the trust check of a directory the agent works in
(the node root, the state dir). Must not: know the Batch layout (``agent.layout`` does), or
decide modes (the callers do, and say why).

Why. The agent is root and a task's code is not trusted. A task owns its task dir, so it can
rename anything inside it and plant a symlink (or swap one in between two calls) wherever the
agent would follow a path. Every primitive here therefore works on an fd: a directory is opened
with ``O_DIRECTORY | O_NOFOLLOW`` relative to its already-open parent, and everything below it
is reached with ``*at()`` calls, so what the agent chmods, chowns, truncates or deletes is the
object it opened, whatever the names have become since. ``open_beneath`` uses ``openat2`` with
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`` (Linux >= 5.6, one call); where
the kernel (or a seccomp filter) refuses it, the same walk is done one component at a time with
``O_NOFOLLOW``, which refuses exactly the same paths (a link anywhere, a ``..``). Python has no
``openat2`` binding, hence the ``ctypes`` call (syscall 437 on every architecture).

Files the agent writes for a task (``stdout.txt``, ``stderr.txt``, upload logs) are made by
``create_file``: unlink the old name at the directory fd, then ``openat`` with
``O_CREAT | O_EXCL | O_NOFOLLOW``, then ``fchown`` / ``fchmod`` the new fd. ``O_EXCL`` never opens
an existing object, so a symlink or a hard link the task planted (even in the instant between
the unlink and the open) is never written through; the open is retried a few times and then
fails. Opening the logs as the task user instead would need a helper process per file (Python
has no ``setfsuid``), and still leaves the truncation of a hard link to a file the task user may
write but should not lose; the ``O_EXCL`` create needs no helper and cannot touch any existing
file.

Trusted directories. ``open_trusted`` walks an absolute path from ``/`` and refuses (with a
``ConfigError`` naming the directory, what was found and the fix) any component that is a
symlink, is owned by someone other than root or the agent's user, or is writable by group or
others; an ancestor that is sticky and owned by root (``/tmp``) is allowed, since other users
cannot rename entries there that are not theirs. Missing components are created, mode 0755,
owned by the agent. A link in the configured path is refused rather than resolved: whoever can
write the link's directory could point it anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pwd
import shutil
import stat
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_TRIES = 5                      # creates retried when a name reappears between unlink and open


_openat2_works: bool | None = None


@functools.cache
def _syscall() -> tuple[Any, Any]:
    """libc's ``syscall`` and ``struct open_how``, loaded on first use (ctypes costs ~2 ms to import)."""
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    return ctypes.CDLL(None, use_errno=True).syscall, OpenHow


def _openat2(dir_fd: int, path: str, flags: int) -> int | None:
    """``openat2`` refusing every link and every escape; None when the kernel lacks it."""
    global _openat2_works
    if _openat2_works is False:
        return None
    import ctypes

    syscall, open_how = _syscall()
    how = open_how(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = int(syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), os.fsencode(path),
                     ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))
    if fd >= 0:
        _openat2_works = True
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and not _openat2_works:
        _openat2_works = False          # old kernel, or a seccomp filter that does not know it
        return None
    raise OSError(err, os.strerror(err), path)


def _parts(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EXDEV, "a '..' component is not allowed here", path)
    return parts


def open_beneath(dir_fd: int, path: str, flags: int = DIR_FLAGS) -> int:
    """Open ``path`` relative to ``dir_fd``, following no link and never leaving ``dir_fd``."""
    parts = _parts(path)
    if not parts:
        return os.open(".", flags, dir_fd=dir_fd)
    fd = _openat2(dir_fd, "/".join(parts), flags | os.O_NOFOLLOW)
    return fd if fd is not None else walk_beneath(dir_fd, path, flags)


def walk_beneath(dir_fd: int, path: str, flags: int = DIR_FLAGS) -> int:
    """``open_beneath`` without ``openat2``: one ``O_NOFOLLOW`` open per component."""
    parts = _parts(path)
    if not parts:
        return os.open(".", flags, dir_fd=dir_fd)
    current = dir_fd
    try:
        for part in parts[:-1]:
            child = os.open(part, DIR_FLAGS, dir_fd=current)
            if current != dir_fd:
                os.close(current)
            current = child
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


def open_dir(path: Path) -> int:
    """An fd of the directory at the absolute ``path``, refused if any component is a link."""
    root = os.open("/", DIR_FLAGS)
    try:
        return open_beneath(root, str(path))
    finally:
        os.close(root)


def set_owner_mode(fd: int, mode: int, owner: tuple[int, int] | None) -> None:
    """``fchown`` (when root and ``owner`` is given), then ``fchmod``: chown clears set-id bits."""
    if owner is not None and os.geteuid() == 0:
        os.fchown(fd, *owner)
    os.fchmod(fd, mode)


def remove_entry(dir_fd: int, name: str) -> None:
    """Delete ``name`` in ``dir_fd`` (a file, a link or a whole tree), never following a link."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dir_fd)
    except PermissionError:             # EPERM: some systems refuse unlink(2) on a directory
        if not stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
            raise
        shutil.rmtree(name, dir_fd=dir_fd)


def ensure_dir(dir_fd: int, name: str, mode: int, owner: tuple[int, int] | None = None) -> int:
    """An fd of the directory ``name`` in ``dir_fd``, created if missing, with ``mode`` and ``owner``.

    A link or a file in its place is deleted and a directory made afresh."""
    for _ in range(_TRIES):
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            remove_entry(dir_fd, name)
            continue
        try:
            set_owner_mode(fd, mode, owner)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise OSError(errno.EAGAIN, "kept being replaced while it was created", name)


def empty_dir(dir_fd: int) -> None:
    """Delete everything in the directory ``dir_fd``, following no link out of it."""
    for name in os.listdir(dir_fd):
        remove_entry(dir_fd, name)


def create_file(dir_fd: int, name: str, mode: int, owner: tuple[int, int] | None = None) -> int:
    """A new, empty file ``name`` in ``dir_fd``, open for writing (see the module docstring).

    A directory in the way is an error (``IsADirectoryError``), as it was for ``O_TRUNC``."""
    for _ in range(_TRIES):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode & 0o777, dir_fd=dir_fd)
        except FileExistsError:
            continue
        try:
            set_owner_mode(fd, mode, owner)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise OSError(errno.EEXIST, "kept being re-created while the agent replaced it", name)


def create_at(path: Path, mode: int, owner: tuple[int, int] | None = None) -> int:
    """``create_file`` in the parent of the absolute ``path`` (opened by ``open_dir``)."""
    parent = open_dir(path.parent)
    try:
        return create_file(parent, path.name, mode, owner)
    finally:
        os.close(parent)


def _owner_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _problem(st: os.stat_result, *, ancestor: bool) -> str | None:
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (0, os.geteuid()):
        return f"is owned by {_owner_name(st.st_uid)} (mode {mode:04o})"
    if mode & 0o022 and not (ancestor and mode & stat.S_ISVTX):
        who = "group and others" if mode & 0o022 == 0o022 else "group" if mode & 0o020 else "others"
        return f"is writable by {who} (mode {mode:04o}, owner {_owner_name(st.st_uid)})"
    return None


def open_trusted(path: Path, what: str) -> int:
    """An fd of ``path``, created if missing, after the trust check of the module docstring."""
    if not path.is_absolute():
        raise ConfigError(f"{what} {path}: give an absolute path")
    parts = _parts(str(path))
    fd = os.open("/", DIR_FLAGS)
    shown = Path("/")
    try:
        for i, part in enumerate([None, *parts]):
            if part is not None:
                shown = shown / part
                parent, fd = fd, -1
                try:
                    fd = _step(parent, part, what, path, shown)
                finally:
                    os.close(parent)
            problem = _problem(os.fstat(fd), ancestor=i < len(parts))
            if problem is not None:
                fix = "chown root" if "owned" in problem else "chmod go-w"
                raise ConfigError(f"{what} {path}: {shown} {problem}; the agent runs tasks as root below it "
                                  f"and trusts only directories no other user can change: run "
                                  f"`{fix} {shown}`, or choose another directory")
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


def _step(parent: int, part: str, what: str, path: Path, shown: Path) -> int:
    """Open (creating it, mode 0755) the directory ``part`` of ``parent``."""
    created = True
    try:
        os.mkdir(part, 0o755, dir_fd=parent)
    except FileExistsError:
        created = False
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create {shown}: {exc.strerror}") from None
    try:
        fd = os.open(part, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise ConfigError(f"{what} {path}: cannot open {shown}: {exc.strerror}") from None
        kind = "a symbolic link" if stat.S_ISLNK(os.lstat(part, dir_fd=parent).st_mode) else "not a directory"
        raise ConfigError(f"{what} {path}: {shown} is {kind}; give a path without links "
                          f"(e.g. the output of `realpath {path}`)") from None
    if created and os.fstat(fd).st_uid == os.geteuid():
        os.fchmod(fd, 0o755)            # the umask may have taken bits away
    return fd
