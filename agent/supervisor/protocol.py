"""The supervisor's wire format and on-disk layout, shared by ``server`` and ``client``.

Owns: the private directory (where it is, who may own it, its mode), the names in it, the
attempt-id rule, and how one message is framed. Must not: import anything heavier than the
standard library's small modules, because the supervisor process imports it and its resident
size is the cost this package exists to keep low (see the package docstring).

Framing: one JSON object per line (UTF-8, ``\\n``-terminated) over a ``SOCK_STREAM`` unix
socket, strictly request then reply on one connection. File descriptors of a ``spawn`` ride
as ``SCM_RIGHTS`` on the connection's bytes before the request line; the server gives every
descriptor received on a connection to that connection's next ``spawn``. The messages are
listed in the package docstring.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:           # pathlib costs the supervisor resident memory; it needs none of it
    from pathlib import Path

VERSION = 1
PRIVATE_DIR = ("volatile", "batch-agent")   # under the node root
SOCKET_NAME = "supervisor.sock"
LOCK_NAME = "supervisor.lock"
LOG_NAME = "supervisor.log"
EXITS_NAME = "exits"
MAX_LINE = 8 << 20          # an env block plus argv stays far below this (ARG_MAX is 2 MiB)
MAX_FDS = 4                 # stdout, stderr, cgroup.procs, the working directory
FD_NAMES = ("stdout", "stderr", "cgroup", "cwd")
_ATTEMPT_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class ProtocolError(ValueError):
    """A message or the private directory is not what the protocol allows."""


def private_dir(root: Path) -> Path:
    return root.joinpath(*PRIVATE_DIR)


def check_attempt_id(attempt: object) -> str:
    """An attempt id names a file in ``exits/``: letters, digits, ``._-``, no leading dot."""
    if not isinstance(attempt, str) or not _ATTEMPT_ID.fullmatch(attempt):
        raise ProtocolError(f"bad attempt id {attempt!r}: use 1-200 of [A-Za-z0-9._-], no leading dot")
    return attempt


def open_private_dir(path: str | Path, *, create: bool) -> int:
    """An ``O_DIRECTORY|O_NOFOLLOW`` descriptor of ``path``, checked to be ours and 0700.

    ``create`` makes it (and missing parents, 0755) first. The descriptor is what both sides
    reach the socket, lock and records through, so a directory swapped after the check is not
    the one used.
    """
    if create:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ProtocolError(f"cannot open the supervisor directory {path}: {exc.strerror}") from exc
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        os.close(fd)
        raise ProtocolError(f"{path} must be owned by uid {os.geteuid()} with mode 0700 "
                            f"(found uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")
    return fd


def socket_path(dir_fd: int) -> str:
    # Through the descriptor: immune to a swapped path and to the 108-byte sun_path limit.
    return f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("a message is a JSON object")
    return message


def exit_code(status: int) -> int:
    """A wait status as subprocess reports it: the exit code, or minus the signal number."""
    return os.waitstatus_to_exitcode(status)
