"""systemd's notify protocol (sd_notify(3)) without a library: READY, STATUS, WATCHDOG, STOPPING.

Owns: reading ``$NOTIFY_SOCKET`` / ``$WATCHDOG_USEC`` / ``$WATCHDOG_PID`` once, sending one
datagram per message to that socket, and the watchdog pinger coroutine. Must not: decide WHEN
the service is ready (the caller sends READY once its API answers and its store is open), raise
on a failed send (a notify that cannot be delivered must never take the agent down), or import
anything above the standard library (it sits in the lowest import layer).

Choices, and why
- The protocol is one ``AF_UNIX``/``SOCK_DGRAM`` datagram of ``KEY=VALUE`` lines. An address
  starting with ``@`` is in the abstract namespace (``\\0`` + the rest), as libsystemd does;
  one starting with ``/`` is a path. Anything else (``vsock:``, relative) is not ours to guess:
  the notifier is then disabled. No ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=`` not
  notify) makes every call a no-op that returns False.
- ``from_environ`` REMOVES the three variables from the environment it read (``unset=True``,
  like ``sd_notify(unset_environment=1)``): the agent's children (the task supervisor, hooks,
  tasks running untrusted code) must not inherit the address of the service manager's socket.
  ``NotifyAccess=main`` in the unit refuses them anyway; this is the second lock.
- The watchdog pinger runs ON the agent's event loop and sleeps between pings, so a loop that
  stalls (a blocking call, a hot loop) stops pinging and systemd restarts the service after
  ``WatchdogSec=``. A thread would keep pinging while the loop is dead: exactly what the
  watchdog exists to catch. It pings every half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
  advises, and only when ``$WATCHDOG_PID`` is unset or our pid (systemd sets it to the main
  pid; a child that inherited it must not ping for the parent).
- One socket per message, non-blocking: a full receive queue drops that message (the next
  watchdog ping comes half a period later) instead of blocking the event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or None if it is not a unix socket
    we can reach: ``@name`` is abstract (``\\0name``), ``/path`` is a file system socket."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


@dataclass(frozen=True, slots=True)
class Notifier:
    """Where to send notifications and how often to ping the watchdog (0: no watchdog)."""

    address: str | bytes | None = None
    watchdog_usec: int = 0

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True,
                     pid: int | None = None) -> Notifier:
        """Read the notify variables from ``environ`` (default ``os.environ``) and, with ``unset``,
        remove them so that children do not inherit them. The watchdog is on only when
        ``$WATCHDOG_USEC`` is a positive integer and ``$WATCHDOG_PID`` is unset or ``pid``
        (default: ours)."""
        env = os.environ if environ is None else environ
        values = {name: env.get(name, "") for name in NOTIFY_VARS}
        if unset:
            for name in NOTIFY_VARS:
                env.pop(name, None)
        address = socket_address(values["NOTIFY_SOCKET"])
        usec = int(values["WATCHDOG_USEC"]) if values["WATCHDOG_USEC"].isdigit() else 0
        wd_pid = values["WATCHDOG_PID"]
        if wd_pid and wd_pid != str(os.getpid() if pid is None else pid):
            usec = 0
        return cls(address, usec if address is not None else 0)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None without a watchdog."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec > 0 else None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=VALUE`` each) as one datagram. True if it was sent; False outside
        systemd or when the send failed (never raises)."""
        if self.address is None or not fields:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (with a STATUS line if given): start-up is finished; systemd starts what waits on us."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=text, shown by ``systemctl status`` (one line: newlines become spaces)."""
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the service is alive."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: the service is shutting down (by itself or on a stop request)."""
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (systemd >= 253 needs it for Type=notify-reload);
        send ``ready()`` when the reload is done."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    async def run_watchdog(self) -> None:
        """Ping the watchdog from the event loop until cancelled; returns at once without one.
        Run it as a task beside the service (``asyncio.create_task(notifier.run_watchdog())``)."""
        interval = self.watchdog_interval
        if interval is None or self.address is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)
