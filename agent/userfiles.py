"""A task user's view of the file system: output patterns matched, and files opened, with its rights.

Owns: ``TaskFiles``, which lists the files an output ``filePattern`` matches (``agent.patterns``)
and opens them for reading, as the task user would. Must not: upload, log, or name a file the
task user could not see, nor follow a link with rights the task user lacks.

When the agent is root and the task ran as another, non-elevated user, both are done by a helper
process that lives for one upload phase: a fresh ``python -I -S`` (exec'd as root, since the
interpreter may sit where the task user cannot exec it) that imports the matcher (``sys.path`` is
given the directories of the parent's own ``agent`` and ``wcmatch`` packages, so the helper runs
the same code without site-packages or ``.pth`` processing), then calls ``setgroups`` (root's
groups are dropped), ``setgid`` and ``setuid`` to the task user's ids, reports its euid, and only
then serves requests over a ``SOCK_SEQPACKET`` socketpair, one at a time, in the event loop on a
non-blocking socket:

* ``M`` + wildcard flag + base path + NUL + full pattern: the helper runs ``match_files`` and
  answers with ``L`` chunks and a final ``D`` chunk of NUL-terminated records (symlink flag and
  path, relative name); the glob walk and every ``stat`` are the task user's, so a pattern such as
  ``../../**`` or ``/root/dir/*`` yields only what the task user may list, never the names in a
  directory it cannot read (they would reach ``fileuploadout.txt`` and ``failureInfo``);
* ``O`` + absolute path: the helper opens it ``O_RDONLY | O_NONBLOCK`` and sends the fd back with
  ``SCM_RIGHTS``, so the kernel checks every directory, every symlink and the target with the
  task user's credentials: a link a nonadmin task planted to a root-only file gives ``EACCES``.

Either may answer ``E`` + errno. Having changed ids from root, the helper is not dumpable, so the
task user cannot ptrace it. The agent checks that each fd it gets is a regular file. (Written by
hand: Python has no ``setfsuid``; ``os.access`` then ``open`` would race a task process swapping a
link in between, and ``fork`` without ``exec`` is unsafe in a threaded asyncio process.) Otherwise
the agent's own rights are the task's; it matches and opens in its own process.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pwd
import socket
import stat
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import wcmatch

import agent
from agent.patterns import MatchedFile, ResolvedPattern, match_files
from agent.runner import TaskUser

_HELPER = """\
import os, socket, sys
sys.path[:0] = sys.argv[5:]
from agent.patterns import ResolvedPattern, match_files
s = socket.socket(fileno=int(sys.argv[1]))
os.setgroups([int(g) for g in sys.argv[4].split(",") if g])
os.setgid(int(sys.argv[3]))
os.setuid(int(sys.argv[2]))
s.send(b"R%d" % os.geteuid())
while req := s.recv(65536):
    kind, arg = req[:1], req[1:]
    if kind == b"M":
        base, full = (os.fsdecode(p) for p in arg[1:].split(b"\\0"))
        chunk = b""
        for m in match_files(ResolvedPattern("", full, base, arg[:1] == b"1")):
            record = b"%d%s\\0%s\\0" % (m.is_symlink, os.fsencode(m.path), os.fsencode(m.relative_name))
            if len(chunk) + len(record) > 32768:
                s.send(b"L" + chunk)
                chunk = b""
            chunk += record
        s.send(b"D" + chunk)
        continue
    try:
        fd = os.open(arg, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        s.send(b"E%d" % e.errno)
        continue
    try:
        socket.send_fds(s, [b"K"], [fd])
    finally:
        os.close(fd)
"""
_MAX_REQUEST = 60_000           # below the helper's receive buffer: a request is never cut short
_REPLY_BUFFER = 65_536


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _primary_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def _package_dirs() -> list[str]:
    """Where the parent found ``agent`` and ``wcmatch`` (and ``bracex`` beside it)."""
    return sorted({str(Path(p).parent) for mod in (agent, wcmatch) for p in mod.__path__})


class TaskFiles:
    """Matches and opens files with the task user's rights (see the module docstring).

    An async context manager: the helper, when one is needed, lives between enter and exit."""

    def __init__(self, user: TaskUser) -> None:
        self.user = user
        self.helper = (os.geteuid() == 0 and user.uid not in (None, 0) and not user.elevated)
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._owed: list[bytes] = []    # kinds of requests whose caller was cancelled before the answer

    async def __aenter__(self) -> TaskFiles:
        if not self.helper:
            return self
        uid = self.user.uid
        assert uid is not None
        gid = self.user.gid if self.user.gid is not None else _primary_gid(uid)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Started as root (the interpreter may live where the task user cannot exec it); it
            # drops to the task user's ids before it reads a single request, and says so.
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", "-c", _HELPER, str(child.fileno()), str(uid), str(gid),
                ",".join(str(g) for g in self.user.groups), *_package_dirs(), pass_fds=(child.fileno(),),
                cwd="/", env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            child.close()
            parent.setblocking(False)
            self._sock = parent
            ready, _ = await self._reply()
            if ready != b"R%d" % uid:
                raise OSError(errno.EPERM, "the file-reading helper could not switch to the task user")
        except BaseException:
            self._sock = None
            parent.close()
            child.close()
            if self._proc is not None:
                await self._proc.wait()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._sock is not None:
            self._sock.close()          # EOF: the helper leaves its loop
        if self._proc is not None:
            await self._proc.wait()

    async def _reply(self) -> tuple[bytes, list[int]]:
        """The helper's next answer, read in the event loop (the socket is non-blocking)."""
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(sock, _REPLY_BUFFER, 1)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(sock.fileno(), _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(sock.fileno())
                continue
            if not msg and not fds:
                raise OSError(errno.EPIPE, "the file-reading helper exited")
            return msg, fds

    async def _replies(self, kind: bytes) -> list[tuple[bytes, list[int]]]:
        """Every message of one answer: one for an open; ``L``... then ``D`` (or ``E``) for a match."""
        out: list[tuple[bytes, list[int]]] = []
        while True:
            msg, fds = await self._reply()
            out.append((msg, fds))
            if kind == b"O" or not msg.startswith(b"L"):
                return out

    async def _ask(self, kind: bytes, request: bytes, what: str) -> list[tuple[bytes, list[int]]]:
        sock = self._sock
        assert sock is not None
        if len(request) > _MAX_REQUEST:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), what)
        async with self._lock:
            while self._owed:
                for _, fds in await self._replies(self._owed[0]):
                    for fd in fds:
                        os.close(fd)
                self._owed.pop(0)
            sock.send(kind + request)
            self._owed.append(kind)
            answer = await self._replies(kind)
            self._owed.pop()
        last = answer[-1][0]
        if last.startswith(b"E"):
            for _, fds in answer:
                for fd in fds:
                    os.close(fd)
            code = int(last[1:]) if last[1:].isdigit() else errno.EIO
            raise OSError(code, os.strerror(code), what)
        return answer

    async def match(self, resolved: ResolvedPattern) -> list[MatchedFile]:
        """The files ``resolved`` matches that the task user can see (``agent.patterns.match_files``)."""
        if not self.helper:
            return await asyncio.to_thread(match_files, resolved)
        base, full = os.fsencode(resolved.base_path), os.fsencode(resolved.full_pattern)
        if b"\0" in base + full:
            return []                   # no file has such a name
        request = b"%d%s\0%s" % (resolved.has_wildcard, base, full)
        found: list[MatchedFile] = []
        for msg, _ in await self._ask(b"M", request, resolved.full_pattern):
            fields = msg[1:].split(b"\0")[:-1]
            for flagged, rel in zip(fields[::2], fields[1::2], strict=True):
                found.append(MatchedFile(Path(os.fsdecode(flagged[1:])), os.fsdecode(rel), flagged[:1] == b"1"))
        return found

    async def open(self, path: Path) -> int:
        """A read-only fd of the regular file ``path`` (symlinks followed with the user's rights)."""
        if self.helper:
            [(msg, fds)] = await self._ask(b"O", os.fsencode(path), str(path))
            if msg != b"K" or len(fds) != 1:
                for extra in fds:
                    os.close(extra)
                raise OSError(errno.EIO, "the file-reading helper sent no file", str(path))
            fd = fds[0]
        else:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return fd
