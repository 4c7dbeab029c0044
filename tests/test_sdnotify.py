"""agent.sdnotify against a real datagram socket the test binds (path and abstract namespace).

The systemd-as-PID-1 smoke test (READY seen by systemd, a stalled loop restarted by the
watchdog) is in tests/test_systemd_unit.py.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier, socket_address


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound SOCK_DGRAM socket and the $NOTIFY_SOCKET value that reaches it (a path)."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield sock, str(path)
    sock.close()


def recv(sock: socket.socket, timeout: float = 5.0) -> str:
    ready, _, _ = select.select([sock], [], [], timeout)
    assert ready, "no datagram arrived"
    return sock.recv(65536).decode()


def nothing_within(sock: socket.socket, seconds: float) -> bool:
    return not select.select([sock], [], [], seconds)[0]


def test_outside_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False
    asyncio.run(asyncio.wait_for(notifier.run_watchdog(), 5))  # returns at once


def test_messages_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.ready("API on 127.0.0.1:8080") is True
    assert recv(sock) == "READY=1\nSTATUS=API on 127.0.0.1:8080"
    notifier.status("3 tasks\nrunning")
    assert recv(sock) == "STATUS=3 tasks running"  # one line: a newline would start a new field
    notifier.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    notifier.stopping("draining")
    assert recv(sock) == "STOPPING=1\nSTATUS=draining"
    notifier.reloading()
    first, second = recv(sock).split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=") and int(second.split("=")[1]) > 0


def test_abstract_namespace_socket() -> None:
    name = f"batch-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        assert Notifier.from_environ({"NOTIFY_SOCKET": f"@{name}"}).ready() is True
        assert recv(sock) == "READY=1"


def test_addresses() -> None:
    assert socket_address("@x") == b"\0x"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    for unusable in ("", "@", "relative.sock", "vsock:2:1234"):
        assert socket_address(unusable) is None
        assert not Notifier.from_environ({"NOTIFY_SOCKET": unusable}).enabled


def test_a_failed_send_returns_false_and_never_raises(tmp_path: Path) -> None:
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "no-such.sock")})
    assert gone.enabled
    assert gone.ready() is False


def test_the_variables_are_removed_so_children_do_not_inherit_them(
        listener: tuple[socket.socket, str]) -> None:
    env = {"NOTIFY_SOCKET": listener[1], "WATCHDOG_USEC": "2000000",
           "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = Notifier.from_environ(env)
    assert env == {"PATH": "/bin"}
    assert notifier.watchdog_interval == 1.0
    kept = {"NOTIFY_SOCKET": listener[1]}
    Notifier.from_environ(kept, unset=False)
    assert kept == {"NOTIFY_SOCKET": listener[1]}


@pytest.mark.parametrize(("usec", "wd_pid", "interval"), [
    ("4000000", None, 2.0),          # no WATCHDOG_PID: ours
    ("4000000", "ours", 2.0),
    ("4000000", "1", None),          # meant for another process (we inherited it)
    ("0", None, None),
    ("soon", None, None),
    ("-5", None, None),
])
def test_watchdog_only_for_our_pid(listener: tuple[socket.socket, str], usec: str,
                                   wd_pid: str | None, interval: float | None) -> None:
    env = {"NOTIFY_SOCKET": listener[1], "WATCHDOG_USEC": usec}
    if wd_pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if wd_pid == "ours" else wd_pid
    assert Notifier.from_environ(env).watchdog_interval == interval


def test_no_watchdog_without_a_socket() -> None:
    assert Notifier.from_environ({"WATCHDOG_USEC": "1000000"}).watchdog_interval is None


async def test_watchdog_pings_from_the_loop_and_a_stalled_loop_stops_them(
        listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "40000"})
    assert notifier.watchdog_interval == 0.02
    pinger = asyncio.create_task(notifier.run_watchdog())
    try:
        for _ in range(3):  # the loop is free: pings keep coming (read without blocking the loop)
            assert await asyncio.to_thread(recv, sock) == "WATCHDOG=1"
        # Stall the loop: this coroutine does not yield. No ping may arrive while it is stalled,
        # for 10 intervals; then the first yield lets the pinger run again.
        while not nothing_within(sock, 0):
            sock.recv(65536)
        assert nothing_within(sock, 0.2), "a ping was sent while the event loop was stalled"
        assert await asyncio.to_thread(recv, sock) == "WATCHDOG=1"
    finally:
        pinger.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pinger
