"""The supervisor process: spawns task processes as its children, reaps them, keeps their status.

Owns: the listening socket, the single-instance lock, the children it spawned and their exit
records in ``exits/``. Must not: interpret a command line, read or write a task's output (the
agent opens stdout/stderr and passes the descriptors), log a task's environment (it holds
secrets), import asyncio or the agent's other modules (resident memory: see the package
docstring), or outlive its work (it exits when idle).

Single-threaded on ``selectors``: a child joins its cgroup through ``preexec_fn``, which is
only safe in a process with no other threads. SIGCHLD wakes the loop through
``signal.set_wakeup_fd``; one ``waitpid(-1)`` loop reaps both our tasks and the orphans of
their trees that reach us as the child subreaper.

Run by ``agent.supervisor.client`` as ``python -I -S -c BOOT PKG --dir DIR --idle SECONDS
--ready-fd N --fork``; it prints ``ready`` (or ``busy``, another supervisor holds the lock) on the
ready descriptor.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from agent.supervisor.protocol import (
    EXITS_NAME,
    FD_NAMES,
    LOCK_NAME,
    MAX_FDS,
    MAX_LINE,
    SOCKET_NAME,
    VERSION,
    ProtocolError,
    check_attempt_id,
    decode,
    encode,
    exit_code,
    open_private_dir,
    socket_path,
)

PR_SET_CHILD_SUBREAPER = 36
_UCRED = struct.Struct("3i")        # struct ucred: pid, uid, gid
_RECV = 1 << 16


class _Conn:
    __slots__ = ("fds", "inbuf", "outbuf", "sock", "waiting")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.fds: list[int] = []
        self.waiting: str | None = None


class Supervisor:
    def __init__(self, dir_fd: int, idle: float) -> None:
        self.dir_fd = dir_fd
        self.idle = idle
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.by_pid: dict[int, str] = {}
        self.exited: dict[str, int] = {}
        self.waiters: dict[str, list[_Conn]] = {}
        self.draining = False
        with contextlib.suppress(FileExistsError):
            os.mkdir(EXITS_NAME, 0o700, dir_fd=dir_fd)
        self.exits_fd = os.open(EXITS_NAME, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_NAME, dir_fd=dir_fd)        # a dead supervisor's; we hold the lock
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(socket_path(dir_fd))          # umask 077: the socket is 0600
        self.listener.listen(256)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._drain)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._reap)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        idle_since = time.monotonic()
        while True:
            self._reap()
            if self.draining and not self.running:
                break
            busy = bool(self.running or self.conns)
            if busy:
                idle_since = time.monotonic()
                timeout: float | None = None
            else:
                timeout = idle_since + self.idle - time.monotonic()
                if timeout <= 0 and not self._pending_client():
                    break
            for key, events in self.sel.select(None if timeout is None else max(timeout, 0)):
                key.data(key.fileobj, events)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_NAME, dir_fd=self.dir_fd)   # before the lock goes with us
        self.listener.close()

    def _pending_client(self) -> bool:
        """A connection queued before we decided to exit: serve it instead (no lost request)."""
        try:
            self._accept(self.listener)
        except OSError:
            return False
        return bool(self.conns)

    def _drain(self, *_: object) -> None:
        self.draining = True     # no new spawns; exit once the last child is reaped

    def _accept(self, *_: object) -> None:
        while True:
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if uid != os.geteuid():
                _log("peer refused", pid=pid, uid=uid)
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, self._io)
            # The greeting tells the client it was accepted: a request it sends is then served.
            self._send(conn, {"ok": True, "pid": os.getpid(), "version": VERSION})

    def _io(self, sock: socket.socket, events: int) -> None:
        conn = self.conns.get(sock.fileno())
        if conn is None:
            return
        if events & selectors.EVENT_WRITE:
            self._flush(conn)
        if events & selectors.EVENT_READ and conn.sock.fileno() >= 0:
            self._read(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data, anc, flags, _ = conn.sock.recvmsg(_RECV, socket.CMSG_SPACE(MAX_FDS * 4),
                                                    socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        except OSError:
            data, anc, flags = b"", [], 0
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                conn.fds += struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4])
        if not data or flags & socket.MSG_CTRUNC or len(conn.fds) > MAX_FDS or len(conn.inbuf) > MAX_LINE:
            self._close(conn)
            return
        conn.inbuf += data
        self._serve(conn)

    def _serve(self, conn: _Conn) -> None:
        while conn.waiting is None and conn.sock.fileno() >= 0 and (end := conn.inbuf.find(b"\n")) >= 0:
            line = bytes(conn.inbuf[:end])
            del conn.inbuf[: end + 1]
            try:
                reply = self._handle(conn, decode(line))
            except Exception as exc:    # the boundary: a bad request must not end the tasks' parent
                reply = {"ok": False, "error": "protocol", "message": f"{type(exc).__name__}: {exc}"}
            if reply is not None:
                self._send(conn, reply)

    # -- requests ---------------------------------------------------------------------------

    def _handle(self, conn: _Conn, req: dict[str, Any]) -> dict[str, Any] | None:
        op = req.get("op")
        if op == "list":
            return {"ok": True, "running": {a: p.pid for a, p in self.running.items()},
                    "exited": self._all_exited()}
        if op == "shutdown":
            self.draining = True
            return {"ok": True}
        attempt = check_attempt_id(req.get("id"))
        if op == "spawn":
            return self._spawn(conn, attempt, req)
        if op == "forget":
            if attempt in self.running:
                return {"ok": False, "error": "running"}
            self.exited.pop(attempt, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(attempt, dir_fd=self.exits_fd)
                os.fsync(self.exits_fd)
            return {"ok": True}
        if op not in ("status", "wait"):
            raise ProtocolError(f"unknown op {op!r}")
        child = self.running.get(attempt)
        if child is not None:
            if op == "status":
                return {"ok": True, "state": "running", "pid": child.pid}
            conn.waiting = attempt
            self.waiters.setdefault(attempt, []).append(conn)
            return None
        code = self._exit_of(attempt)
        if code is None:
            return {"ok": True, "state": "unknown"}
        return {"ok": True, "state": "exited", "code": code}

    def _spawn(self, conn: _Conn, attempt: str, req: dict[str, Any]) -> dict[str, Any]:
        fds, conn.fds = conn.fds, []
        try:
            names = req.get("fds", [])
            if len(names) != len(fds) or any(n not in FD_NAMES for n in names):
                raise ProtocolError(f"{len(fds)} descriptors received for {names!r}")
            given = dict(zip(names, fds, strict=True))
            if self.draining:
                return {"ok": False, "error": "draining"}
            if attempt in self.running or self._exit_of(attempt) is not None:
                return {"ok": False, "error": "exists"}
            umask = req.get("umask")
            argv = [str(a) for a in req["argv"]]
            env = {str(k): str(v) for k, v in req["env"].items()}
            procs = given.get("cgroup")
            uid, gid, groups = req.get("uid"), req.get("gid"), req.get("groups")
            cwd: int | str = given["cwd"] if "cwd" in given else str(req["cwd"])
            try:
                child = subprocess.Popen(
                    argv, executable=req.get("executable"), env=env,
                    stdin=subprocess.DEVNULL, stdout=given.get("stdout"), stderr=given.get("stderr"),
                    close_fds=True, start_new_session=True, preexec_fn=_prepare(procs, cwd),
                    user=uid, group=gid, extra_groups=groups, umask=-1 if umask is None else int(umask))
            except OSError as exc:
                return {"ok": False, "error": "launch", "errno": exc.errno, "strerror": exc.strerror,
                        "filename": None if exc.filename is None else str(exc.filename)}
            except (ValueError, subprocess.SubprocessError) as exc:
                # The preexec step failed: the task user cannot enter its working directory.
                cwd_failed = isinstance(exc, subprocess.SubprocessError) and "preexec" in str(exc)
                return {"ok": False, "error": "launch", "message": str(exc),
                        **({"filename": str(req["cwd"]), "strerror": "cannot enter it as the task user"}
                           if cwd_failed else {})}
            if procs is not None:
                with contextlib.suppress(OSError):        # only where the child's own write was refused
                    os.write(procs, str(child.pid).encode())
        finally:
            for fd in fds:
                os.close(fd)
        self.running[attempt] = child
        self.by_pid[child.pid] = attempt
        return {"ok": True, "pid": child.pid}

    # -- children and records ---------------------------------------------------------------

    def _reap(self, *_: object) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass
        done: list[tuple[str, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            attempt = self.by_pid.pop(pid, None)
            if attempt is None:
                continue                                # an orphan of some task's tree
            child = self.running.pop(attempt)
            child.returncode = code = exit_code(status)  # keeps Popen from waiting on it again
            self._record(attempt, pid, code)
            done.append((attempt, code))
        if not done:
            return
        with contextlib.suppress(OSError):
            os.fsync(self.exits_fd)                     # the renames: durable before anyone hears
        for attempt, code in done:
            for conn in self.waiters.pop(attempt, []):
                conn.waiting = None
                self._send(conn, {"ok": True, "state": "exited", "code": code})
                self._serve(conn)

    def _record(self, attempt: str, pid: int, code: int) -> None:
        """Write ``exits/<attempt>`` (fsync, rename); the caller fsyncs the directory once."""
        self.exited[attempt] = code
        tmp = f".{attempt}.tmp"                          # ids never start with a dot
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=self.exits_fd)
            try:
                os.write(fd, encode({"id": attempt, "pid": pid, "code": code, "time": time.time()}))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, attempt, src_dir_fd=self.exits_fd, dst_dir_fd=self.exits_fd)
        except OSError as exc:
            _log("exit record not written", attempt=attempt, code=code, error=exc.strerror)

    def _exit_of(self, attempt: str) -> int | None:
        if attempt in self.exited:
            return self.exited[attempt]
        try:
            fd = os.open(attempt, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.exits_fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as fh:
            code = json.loads(fh.read())["code"]
        self.exited[attempt] = int(code)
        return int(code)

    def _all_exited(self) -> dict[str, int]:
        found = {}
        for name in os.listdir(self.exits_fd):
            if not name.startswith("."):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    if (code := self._exit_of(name)) is not None:
                        found[name] = code
        return found

    # -- output -----------------------------------------------------------------------------

    def _send(self, conn: _Conn, message: dict[str, Any]) -> None:
        conn.outbuf += encode(message)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return
        del conn.outbuf[:sent]
        self.sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0),
                        self._io)

    def _close(self, conn: _Conn) -> None:
        if conn.sock.fileno() < 0:
            return
        if conn.waiting is not None:
            self.waiters[conn.waiting].remove(conn)
        for fd in conn.fds:
            os.close(fd)
        conn.fds = []
        self.conns.pop(conn.sock.fileno(), None)
        self.sel.unregister(conn.sock)
        conn.sock.close()


def _prepare(procs: int | None, cwd: int | str) -> Callable[[], None]:
    """The child's last steps before exec, run AFTER subprocess switched to the task user.

    Join the cgroup (one write on the inherited ``cgroup.procs`` descriptor), then change into
    the working directory as the task user: ``fchdir`` on the descriptor the agent opened
    without following links, else ``chdir`` on the path with the task user's permissions. Popen's
    own ``cwd`` would chdir as root before the switch (a task could swap the name for a link to a
    directory it may not enter). Single-threaded process: no lock, no import.
    """
    def prepare() -> None:
        if procs is not None:
            with contextlib.suppress(OSError):
                os.write(procs, b"0")
        if isinstance(cwd, int):
            os.fchdir(cwd)
        else:
            os.chdir(cwd)
    return prepare


def _log(event: str, **fields: object) -> None:
    # Constant phrase plus fields, one JSON line on stderr (the supervisor's log file).
    print(json.dumps({"event": event, "supervisor": os.getpid(), **fields}), file=sys.stderr, flush=True)


def _subreaper() -> None:
    import ctypes  # only here: 0.3 MB, for one call
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _log("not a child subreaper", errno=ctypes.get_errno())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batch-agent-supervisor")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--fork", action="store_true", help="detach: the parent exits at once")
    args = parser.parse_args(argv)
    if args.fork and os.fork() > 0:
        os._exit(0)
    inherited = os.umask(0o077)      # the socket and records: 0600
    dir_fd = open_private_dir(args.dir, create=False)
    lock = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _tell(args.ready_fd, b"busy\n")
        return 0
    _subreaper()
    supervisor = Supervisor(dir_fd, args.idle)
    os.umask(inherited)              # a spawn without one gets the agent's, as with Popen today
    _log("supervisor started", idle=args.idle)
    _tell(args.ready_fd, b"ready\n")
    supervisor.run()
    _log("supervisor stopped")
    return 0


def _tell(fd: int | None, word: bytes) -> None:
    if fd is not None:
        os.write(fd, word)
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
