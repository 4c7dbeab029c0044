"""The agent's side of the supervisor: start it when none answers, spawn, wait, status, forget.

Owns: finding or starting the node root's supervisor (one at a time: a start lock), one
shared connection for the short requests (spawn, status, list, forget: one at a time on it,
checked alive before each use, closed after ``SHARED_IDLE`` unused so an idle supervisor can
still exit) and one connection per ``wait`` (it blocks until the exit), and turning replies
into values (``Spawned`` / ``LaunchFailed``,
``Running`` / ``Exited`` / ``Lost``). Must not: open a task's files (the caller passes
descriptors it opened and still owns), kill anything (``ProcessRunner.kill`` signals the
process group and cgroup as before), or ever turn a supervisor it cannot reach into a success.

Hand-written over raw non-blocking sockets because ``asyncio``'s streams cannot send
``SCM_RIGHTS``. A connection that drops before the greeting was never served: retried. One that
drops during ``wait`` is re-attached (a dead supervisor's attempts then read ``Lost``). One that
drops after a ``spawn`` was sent raises ``SpawnUncertain``: the task may be running, so the
caller must sweep its cgroup and process group rather than spawn it twice. The shared
connection is probed (a non-blocking peek) before a request: one the supervisor closed meanwhile
(its idle exit) is replaced before anything is sent, so reuse adds no uncertain spawn; an
exchange that fails or is cancelled closes it (a late reply must never answer the next request).
Reusing it saves a connect, the greeting and a close per request (bench/bench_service.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import RunnerError
from agent.supervisor.protocol import (
    LOG_NAME,
    MAX_LINE,
    VERSION,
    ProtocolError,
    check_attempt_id,
    decode,
    encode,
    open_private_dir,
    private_dir,
    socket_path,
)

START_LOCK = "start.lock"
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
# -I -S: no site, no .pth files, no user paths; the package is put on sys.path by hand.
_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from agent.supervisor.server import main; sys.exit(main(sys.argv[1:]))")
_UCRED = struct.Struct("3i")
_CONNECT_TRIES = 5
SHARED_IDLE = 1.0        # seconds before an unused shared connection is closed


class SupervisorError(RunnerError):
    """The supervisor cannot be started or reached, or answered outside the protocol."""


class SpawnUncertain(SupervisorError):
    """The supervisor went away after a spawn was sent: the task may or may not be running."""


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    """What ``ProcessRunner.start`` hands to ``subprocess.Popen`` today, descriptors included."""

    attempt: str                      # chosen by the agent, unique per attempt, persisted first
    argv: Sequence[str]
    executable: str | None
    cwd: Path
    env: Mapping[str, str]
    stdout: int                       # opened by the caller, which keeps and closes it
    stderr: int
    cgroup_procs: int | None = None   # <cgroup>/cgroup.procs opened O_WRONLY: joined before exec
    cwd_fd: int | None = None         # ``cwd`` opened without links: fchdir'd as the task user
    uid: int | None = None
    gid: int | None = None
    groups: Sequence[int] | None = None
    umask: int | None = None          # None: the agent's own (Popen's behaviour today)


@dataclass(frozen=True, slots=True)
class Spawned:
    pid: int


@dataclass(frozen=True, slots=True)
class LaunchFailed:
    """exec (or chdir, or the user switch) failed: the fields of the child's OSError."""

    errno: int | None
    strerror: str | None
    filename: str | None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Running:
    pid: int


@dataclass(frozen=True, slots=True)
class Exited:
    code: int                         # the exit code, or minus the signal number


@dataclass(frozen=True, slots=True)
class Lost:
    """The supervisor knows nothing of the attempt: the one that ran it died, or the node rebooted."""


class _Dropped(Exception):
    """The connection closed before a full reply."""


class SupervisorClient:
    """One node root's supervisor, seen from the agent. ``idle``: the supervisor's idle exit."""

    def __init__(self, root: Path, *, idle: float = 60.0, python: str = sys.executable,
                 start_timeout: float = 20.0) -> None:
        self.dir = private_dir(root)
        self.idle = idle
        self.python = python
        self.start_timeout = start_timeout
        self._dir_fd: int | None = None
        self._shared: _Channel | None = None
        self._shared_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._shared_timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        self._close_shared()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    async def ensure(self) -> int:
        """The supervisor's pid, started first if none answers."""
        channel, pid = await self._connect()
        channel.close()
        return pid

    async def spawn(self, request: SpawnRequest) -> Spawned | LaunchFailed:
        names, fds = ["stdout", "stderr"], [request.stdout, request.stderr]
        if request.cgroup_procs is not None:
            names.append("cgroup")
            fds.append(request.cgroup_procs)
        if request.cwd_fd is not None:
            names.append("cwd")
            fds.append(request.cwd_fd)
        message = {"op": "spawn", "id": check_attempt_id(request.attempt), "argv": list(request.argv),
                   "executable": request.executable, "cwd": str(request.cwd), "env": dict(request.env),
                   "uid": request.uid, "gid": request.gid,
                   "groups": None if request.groups is None else list(request.groups), "fds": names,
                   "umask": _own_umask() if request.umask is None else request.umask}
        try:
            reply = await self._on_shared(message, fds)
        except _Dropped as exc:
            raise SpawnUncertain(f"the supervisor went away while spawning attempt {request.attempt}") from exc
        if reply.get("ok"):
            return Spawned(int(reply["pid"]))
        if reply.get("error") == "launch":
            return LaunchFailed(reply.get("errno"), reply.get("strerror"), reply.get("filename"),
                                reply.get("message"))
        raise SupervisorError(f"spawn of attempt {request.attempt} refused: {reply.get('error')}")

    async def wait(self, attempt: str) -> Exited | Lost:
        """The attempt's exit status; ``Lost`` if no supervisor knows it (never a success)."""
        check_attempt_id(attempt)
        for _ in range(_CONNECT_TRIES):
            channel, _pid = await self._connect()
            try:
                reply = await channel.request({"op": "wait", "id": attempt})
            except _Dropped:
                continue            # the supervisor died: a new one answers Lost or the record
            finally:
                channel.close()
            state = self._state(reply)
            assert not isinstance(state, Running)
            return state
        raise SupervisorError(f"the supervisor kept dropping the wait for attempt {attempt}")

    async def status(self, attempt: str) -> Running | Exited | Lost:
        return self._state(await self._call({"op": "status", "id": check_attempt_id(attempt)}))

    async def list(self) -> tuple[dict[str, int], dict[str, int]]:
        """(attempt -> pid of the running ones, attempt -> exit code of the recorded ones)."""
        reply = await self._call({"op": "list"})
        return ({str(k): int(v) for k, v in reply["running"].items()},
                {str(k): int(v) for k, v in reply["exited"].items()})

    async def forget(self, attempt: str) -> None:
        """Drop the exit record, once the agent has recorded the result durably itself."""
        reply = await self._call({"op": "forget", "id": check_attempt_id(attempt)})
        if not reply.get("ok"):
            raise SupervisorError(f"cannot forget attempt {attempt}: {reply.get('error')}")

    async def shutdown(self) -> None:
        """Ask the supervisor to exit once its last child is reaped (it spawns nothing more)."""
        await self._call({"op": "shutdown"})

    # -- internals -------------------------------------------------------------------------

    async def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        for _ in range(_CONNECT_TRIES):
            try:
                return await self._on_shared(message)
            except _Dropped:
                continue
        raise SupervisorError(f"the supervisor kept dropping {message.get('op')}")

    async def _on_shared(self, message: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        """One request on the shared connection (module docstring), opened if none is alive."""
        loop = asyncio.get_running_loop()
        if self._shared_lock is None or self._shared_lock[0] is not loop:
            self._close_shared()
            self._shared_lock = (loop, asyncio.Lock())
        async with self._shared_lock[1]:
            if self._shared_timer is not None:
                self._shared_timer.cancel()
                self._shared_timer = None
            channel = self._shared
            if channel is not None and not channel.alive():
                self._close_shared()
                channel = None
            if channel is None:
                channel, _pid = await self._connect()
                self._shared = channel
            try:
                reply = await channel.request(message, fds)
            except BaseException:
                self._close_shared()
                raise
            self._shared_timer = loop.call_later(min(SHARED_IDLE, self.idle / 2), _close_idle, weakref.ref(self))
            return reply

    def close_idle(self) -> None:
        self._shared_timer = None
        if self._shared_lock is not None and self._shared_lock[1].locked():
            return                  # in use: its request re-arms the timer
        self._close_shared()

    def _close_shared(self) -> None:
        if self._shared_timer is not None:
            self._shared_timer.cancel()
            self._shared_timer = None
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    @staticmethod
    def _state(reply: dict[str, Any]) -> Running | Exited | Lost:
        state = reply.get("state")
        if state == "running":
            return Running(int(reply["pid"]))
        if state == "exited":
            return Exited(int(reply["code"]))
        if state == "unknown":
            return Lost()
        raise SupervisorError(f"unexpected reply from the supervisor: {reply.get('error')}")

    def _dir(self) -> int:
        if self._dir_fd is None:
            try:
                self._dir_fd = open_private_dir(self.dir, create=True)
            except OSError as exc:
                raise SupervisorError(f"cannot create {self.dir}: {exc.strerror}") from exc
            except ProtocolError as exc:    # not ours, or not 0700
                raise SupervisorError(str(exc)) from exc
        return self._dir_fd

    async def _connect(self) -> tuple[_Channel, int]:
        for _ in range(_CONNECT_TRIES):
            found = await self._try_connect()
            if found is not None:
                return found
            found = await self._start()
            if found is not None:
                return found
        raise SupervisorError(f"no supervisor answers in {self.dir} (see {LOG_NAME} there)")

    async def _try_connect(self) -> tuple[_Channel, int] | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        channel = _Channel(sock)
        try:
            await asyncio.get_running_loop().sock_connect(sock, socket_path(self._dir()))
            _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if uid != os.geteuid():
                raise SupervisorError(f"the supervisor socket in {self.dir} belongs to uid {uid}")
            greeting = await channel.read()
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, _Dropped):
            channel.close()
            return None
        except BaseException:
            channel.close()
            raise
        if greeting.get("version") != VERSION:
            channel.close()
            raise SupervisorError(f"supervisor protocol {greeting.get('version')}, expected {VERSION}")
        return channel, int(greeting["pid"])

    async def _start(self) -> tuple[_Channel, int] | None:
        """Start a supervisor unless another client did while we waited for the start lock."""
        dir_fd = self._dir()
        lock = os.open(START_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            found = await self._try_connect()
            if found is not None:
                return found
            await self._launch(dir_fd)
            return await self._try_connect()
        finally:
            os.close(lock)          # closing releases the flock

    async def _launch(self, dir_fd: int) -> None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        log = os.open(LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dir_fd)
        try:
            # --fork: the supervisor's parent exits at once, so the supervisor is never our
            # child (no zombie of ours when it exits idle; init or a subreaper reaps it).
            proc = subprocess.Popen(
                [self.python, "-I", "-S", "-c", _BOOT, _PACKAGE_PARENT, "--dir", str(self.dir),
                 "--idle", repr(self.idle), "--ready-fd", str(write_end), "--fork"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,),
                close_fds=True, start_new_session=True, cwd="/", env={"PATH": os.defpath})
        finally:
            os.close(write_end)
            os.close(log)
        try:
            async with asyncio.timeout(self.start_timeout):
                await _readable(read_end)
            os.read(read_end, 16)   # "ready", "busy" or EOF: in each case, connect again
        except TimeoutError as exc:
            raise SupervisorError(f"the supervisor did not start within {self.start_timeout} s "
                                  f"(see {self.dir / LOG_NAME})") from exc
        finally:
            os.close(read_end)
            await asyncio.to_thread(proc.wait)


class _Channel:
    """One connection: one request at a time, then its reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        # The shared channel may outlive the loop it was used on (a client never closed, or a
        # loop ended before its idle timer): it is closed when the channel is collected, before
        # the socket could be (the finalizer holds the socket), so that is its end, not a leak.
        self._closer = weakref.finalize(self, sock.close)

    def close(self) -> None:
        self._closer()

    def alive(self) -> bool:
        """Still open with nothing unread (no request is outstanding on a channel at rest)."""
        if self.buf:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True             # open, nothing to read
        except OSError:
            return False
        return False                # end of file (the supervisor closed it), or stray bytes

    async def request(self, message: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        data = encode(message)
        loop = asyncio.get_running_loop()
        try:
            if fds:
                # The descriptors ride on the first byte; one byte always fits a fresh buffer.
                while True:
                    try:
                        self.sock.sendmsg([data[:1]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                        struct.pack(f"{len(fds)}i", *fds))])
                        break
                    except BlockingIOError:
                        await _writable(self.sock.fileno())
                data = data[1:]
            await loop.sock_sendall(self.sock, data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _Dropped() from exc
        return await self.read()

    async def read(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        while (end := self.buf.find(b"\n")) < 0:
            try:
                chunk = await loop.sock_recv(self.sock, 1 << 16)
            except ConnectionResetError as exc:
                raise _Dropped() from exc
            if not chunk:
                raise _Dropped()
            self.buf += chunk
            if len(self.buf) > MAX_LINE:
                raise SupervisorError("the supervisor's reply is too long")
        line = bytes(self.buf[:end])
        del self.buf[: end + 1]
        try:
            return decode(line)
        except ProtocolError as exc:
            raise SupervisorError(f"the supervisor's reply is not valid: {exc}") from exc


def _close_idle(client: weakref.ref[SupervisorClient]) -> None:
    # By weak reference: the timer must not keep a dropped client (and its socket) alive.
    found = client()
    if found is not None:
        found.close_idle()


def _own_umask() -> int:
    # /proc, not os.umask(): setting it to read it would race the agent's other threads.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await done
    finally:
        loop.remove_reader(fd)


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await done
    finally:
        loop.remove_writer(fd)
