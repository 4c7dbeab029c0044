"""``batch-agent serve``: the node service's life, from start-up to exit.

Owns: resolving the serve settings (listen address, account key sources, slots), the order of
start-up, the signals, drain, systemd notifications, and the exit status. Must not: build
runners or stores itself (``agent.compose`` does), answer routes (``agent.api``), or kill a task.

Start-up, in order: the systemd notify variables are read and removed from the environment (no
child inherits them); the node lock is taken (a second agent on the root refuses); the listening
socket is bound; the store is opened; the orphan container sweep runs with ``owned`` = every
open attempt's container; recovery re-attaches (or requeues) what a previous agent left; the API
starts; READY is sent once a request to it is answered. Then STATUS lines (slots in use, tasks
running) and the watchdog pinger run beside the scheduler.

Stop (SIGTERM, SIGINT): stop accepting requests, stop the scheduler (running tasks are left to
the task supervisor, which keeps their exit status), close the store, release the lock, exit 0.
The next ``serve`` re-attaches them. Drain (SIGUSR1, or an account-signed ``POST
/batch-agent/drain``): stop admitting, keep answering the API, wait for the running tasks to
end, then stop as above and exit 0 (so ``Restart=on-failure`` leaves it stopped).

Exit status: 0 after a stop or a drain; 2 when the configuration is wrong (bad flag or config
value, no account key, an unsafe key file, the node root held by another agent, the address in
use); 125 for an agent fault. A start-up failure is one line on stderr, never a traceback. The
key is never logged nor put in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent.compose import build_service, load_start_task, lock_node, prepare_state_dir, sweep_containers
from agent.compose import with_api_identity as _with_identity
from agent.config import AgentConfig, read_key_file
from agent.errors import AgentError, ConfigError
from agent.logs import get_logger
from agent.sdnotify import Notifier

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FAULT = 125
KEY_ENV = "BATCH_AGENT_ACCOUNT_KEY"
CREDENTIAL_NAME = "account-key"
STATUS_EVERY = 5.0
_log = get_logger(component="daemon")


@dataclass(frozen=True, slots=True)
class ServeSettings:
    config: AgentConfig
    host: str
    port: int
    account_name: str
    account_key: str = field(repr=False)
    key_source: str
    slots: int


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) -> (host, port); a ``ConfigError`` naming the fix."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {text!r}: use HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    return host, int(port)


def find_key(*, flag: str | None, flag_file: Path | None, config: AgentConfig,
             environ: dict[str, str] | os._Environ[str]) -> tuple[str, str]:
    """(key text, where it came from), in order: --account-key, --account-key-file,
    $CREDENTIALS_DIRECTORY/account-key, $BATCH_AGENT_ACCOUNT_KEY, ``[api] account_key_file``.
    ``$BATCH_AGENT_ACCOUNT_KEY`` is removed from ``environ`` whatever is chosen, so that no child
    (the task supervisor, tasks) inherits it."""
    from_env = environ.pop(KEY_ENV, "")
    if flag:
        return flag, "--account-key"
    if flag_file is not None:
        return read_key_file(flag_file), f"--account-key-file {flag_file}"
    creds = environ.get("CREDENTIALS_DIRECTORY", "")
    if creds and (Path(creds) / CREDENTIAL_NAME).exists():
        path = Path(creds) / CREDENTIAL_NAME
        return read_key_file(path, what="credential"), f"credential {path}"
    if from_env:
        return from_env, f"${KEY_ENV}"
    if config.api.account_key_file:
        path = Path(config.api.account_key_file)
        return read_key_file(path, what="api.account_key_file"), f"api.account_key_file {path}"
    raise ConfigError("no account key: serve needs one to check the clients' Shared Key signatures; put the "
                      "base64 key in a 0600 file and give --account-key-file FILE (or [api] account_key_file, "
                      f"systemd LoadCredential=account-key:FILE, or ${KEY_ENV})")


def settings(config: AgentConfig, *, listen: str | None, account_name: str | None, account_key: str | None,
             account_key_file: Path | None, slots: int | None) -> ServeSettings:
    host, port = parse_listen(listen or config.api.listen)
    name = account_name or config.api.account_name or config.node.account_name
    if slots is not None and not 1 <= slots <= 256:
        raise ConfigError(f"--slots: use 1 to 256 (Batch's taskSlotsPerNode), got {slots}")
    key, source = find_key(flag=account_key, flag_file=account_key_file, config=config, environ=os.environ)
    from agent.api.auth import AccountKey
    AccountKey.from_base64(name, key, source=source)          # a wrong key fails now, never quoted
    return ServeSettings(config, host, port, name, key, source, slots or config.node.task_slots_per_node)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # see tests/api_kit.py: Nagle
        sock.bind((host, port))
        sock.listen(1024)
        sock.set_inheritable(False)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(exc, socket.gaierror):
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; fix --listen "
                              "or [api] listen") from None
        raise
    return sock


def _task_url(host: str, port: int, public_url: str) -> str:
    if public_url:
        return public_url.rstrip("/") + "/"
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def serve(s: ServeSettings) -> int:
    """Run the service until stopped or drained; the exit status."""
    notifier = Notifier.from_environ()                   # before any child is spawned
    try:
        return asyncio.run(_Daemon(s, notifier).run())
    except AgentError as exc:
        code = EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAULT
        print(f"batch-agent serve: {exc}", file=sys.stderr)
        return code
    except Exception as exc:                    # one line, never a traceback
        print(f"batch-agent serve: agent error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAULT


class _Daemon:
    def __init__(self, s: ServeSettings, notifier: Notifier) -> None:
        self.s = s
        self.notifier = notifier
        self.stopping = asyncio.Event()
        self.draining = False
        self.drain_task: asyncio.Task[None] | None = None
        self.service: Any = None

    async def run(self) -> int:
        s = self.s
        lock = lock_node(s.config, exclusive=True)
        try:
            return await self._run(lock)
        finally:
            lock.release()

    async def _run(self, lock: Any) -> int:
        import uvicorn

        from agent.api.app import ApiSettings
        from agent.api.auth import AccountKey, Authenticator, HmacTaskTokens, SharedKeyVerifier
        from agent.api.drain import drain_routes
        from agent.api.service_app import build_app

        s = self.s
        sock = bind(s.host, s.port)
        port = sock.getsockname()[1]
        config = _with_identity(s.config, s.account_name, _task_url(s.host, port, s.config.api.public_url))
        state = prepare_state_dir(config)
        service, store = build_service(config, state, slots=s.slots, start_task=load_start_task(config),
                                       supervised=True)
        self.service = service
        try:
            swept = await sweep_containers(config, service)
            requeued = await service.start()
            key = AccountKey.from_base64(s.account_name, s.account_key, source=s.key_source)
            verifier = SharedKeyVerifier([key], max_skew=timedelta(seconds=config.api.max_clock_skew))
            tokens = service.tokens
            assert isinstance(tokens, HmacTaskTokens)      # compose issues them as the API checks them
            api = ApiSettings(Authenticator(verifier, tokens), public_url=config.api.public_url or None)
            app = build_app(service, store, api)
            app.router.routes[0:0] = drain_routes(self.request_drain)
            server = _server_class()(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                    timeout_graceful_shutdown=5, server_header=False))
            scheduler = asyncio.create_task(service.serve(), name="scheduler")
            http = asyncio.create_task(server.serve(sockets=[sock]), name="http")
            while not server.started:                # uvicorn sets it once its sockets accept
                if http.done():
                    await http
                    raise AgentError("the API server stopped during start-up")
                await asyncio.sleep(0.01)
            await _probe(sock.getsockname())
            url = _task_url(s.host, port, "").rstrip("/")
            _log.info("serving", url=url, listen=f"{s.host}:{port}", slots=s.slots, account=s.account_name,
                      key_source=s.key_source.split(" ")[0], requeued=requeued, containers_swept=len(swept),
                      state_dir=str(state))
            self.notifier.ready(self._status())
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig)
            loop.add_signal_handler(signal.SIGUSR1, self.request_drain)
            helpers = [asyncio.create_task(self.notifier.run_watchdog(), name="watchdog"),
                       asyncio.create_task(self._status_loop(), name="status")]
            await asyncio.wait([asyncio.ensure_future(self.stopping.wait()), http, scheduler],
                               return_when=asyncio.FIRST_COMPLETED)
            self.notifier.stopping("stopping: running tasks are left to the supervisor")
            server.should_exit = True              # stop accepting; open requests end (5 s at most)
            with contextlib.suppress(asyncio.CancelledError):
                await http
            for task in (scheduler, *helpers, *([self.drain_task] if self.drain_task else [])):
                task.cancel()
            await asyncio.gather(scheduler, *helpers, return_exceptions=True)
            if scheduler.done() and not scheduler.cancelled() and scheduler.exception() is not None:
                raise AgentError(f"the scheduler failed: {scheduler.exception()!r}")
            _log.info("stopped", drained=self.draining, running_left=len(service.core.running))
            return EXIT_OK
        finally:
            await service.aclose()
            sock.close()

    def request_stop(self, sig: int | None = None) -> None:
        if sig is not None:
            _log.info("stop requested", signal=signal.Signals(sig).name)
        self.stopping.set()

    def request_drain(self) -> int:
        """Start draining (once); the number of tasks running now."""
        running = len(self.service.core.running) if self.service is not None else 0
        if not self.draining and self.service is not None:
            self.draining = True
            _log.info("drain requested", running=running)
            self.drain_task = asyncio.get_running_loop().create_task(self._drain(), name="drain")
        return running

    async def _drain(self) -> None:
        self.notifier.status(f"draining: {self._status()}")
        await self.service.drain()
        self.request_stop()

    def _status(self) -> str:
        core = self.service.core
        head = "draining, " if self.draining else ""
        return f"{head}{core.used_slots()}/{core.slots} slots in use, {len(core.running)} tasks running"

    async def _status_loop(self) -> None:
        if not self.notifier.enabled:
            return
        last = ""
        while True:
            text = self._status()
            if text != last:
                self.notifier.status(text)
                last = text
            await asyncio.sleep(STATUS_EVERY)


async def _probe(address: Any) -> None:
    """One request to our own socket: READY means the API answers, not just that it listens."""
    host, port = address[0], address[1]
    target = "127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host
    reader, writer = await asyncio.open_connection(target, port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line.startswith(b"HTTP/1.1 "):
            raise AgentError("the API did not answer its start-up probe")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its signal handlers: the daemon owns SIGTERM / SIGINT / SIGUSR1
        (uvicorn's would re-raise the signal after its shutdown and kill the process)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server
