"""The state directory and the database files: created root-only, refused when they are not.

Owns: the permission and ownership checks that keep task definitions (which carry SAS URLs,
registry passwords and tokens) away from other local users and from task code. Must not: open
SQLite itself or print a file's contents.

The directory is created 0700 and the database file 0600 (``O_EXCL|O_NOFOLLOW``) before SQLite
sees them; SQLite then creates ``-wal`` and ``-shm`` with the database file's mode. An existing
directory or file that is a symlink, not owned by the agent's user, or open to group or others is
refused with ``StoreUnsafe`` naming the path and the fix: the store never repairs modes by itself,
because a loosened mode means someone may already have read the secrets.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from agent.store.records import StoreUnsafe

SIDE_FILES = ("-wal", "-shm", "-journal")


def _check(path: Path, st: os.stat_result, kind: str) -> None:
    if st.st_uid != os.geteuid():
        raise StoreUnsafe(f"{path}: the state {kind} is owned by uid {st.st_uid}, not by the agent "
                          f"(uid {os.geteuid()}); chown it or choose another --root")
    if st.st_mode & 0o077:
        raise StoreUnsafe(f"{path}: the state {kind} has mode {stat.S_IMODE(st.st_mode):04o}, open to group or "
                          f"others; it holds task secrets and must be {'0700' if kind == 'directory' else '0600'}")


def prepare_dir(path: Path) -> None:
    """Create ``path`` 0700 if missing (its parent must exist); check it is root-only and ours."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreUnsafe(f"{path}: the state directory cannot be opened as a real directory "
                          f"(not a symlink): {exc.strerror}") from exc
    try:
        _check(path, os.fstat(fd), "directory")
    finally:
        os.close(fd)


def prepare_db(path: Path) -> bool:
    """Create the database file 0600 if missing; check it and any side files. True if created."""
    check_files(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)                          # the new name survives a power loss too
    finally:
        os.close(dir_fd)
    return True


def check_files(path: Path) -> None:
    """The database file and its side files, where they exist: regular, ours, 0600 or tighter."""
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in SIDE_FILES)):
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise StoreUnsafe(f"{candidate}: a state file must be a regular file, not a link or other kind")
        _check(candidate, st, "file")
