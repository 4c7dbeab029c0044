"""A real local API for the route tests: uvicorn on 127.0.0.1:0 serving ``build_app`` over a real
``NodeService`` (supervised ProcessRunner, tests/service_kit.py) on a ``SqliteStore`` in tmp.

The server runs in-process, in a thread with its own event loop (uvicorn installs no signal
handler off the main thread), so a test can also look at the service's store and files; the
real clients reach it over TCP from their own venvs. ``schedule=False`` leaves the scheduler
off: tasks are stored and answered but never run (the corpus test: Windows command lines,
container images, pools that do not exist here).

    with ApiServer.start(node_root, tmp_path) as api:
        r = api.call("POST", "/jobs", json={...})          # signed with tests/clients.py's key
        api.wait_task("job", "task")                        # polls GET until completed
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from clients import ACCOUNT, KEY_B64, TOKEN_SECRET, signed_headers
from service_kit import task_runner

from agent.api.app import ApiSettings
from agent.api.auth import AccountKey, Authenticator, HmacTaskTokens, SharedKeyVerifier, TokenVerifier
from agent.api.service_app import build_app
from agent.service import NodeService
from agent.store import SqliteStore, StoreThread

T = TypeVar("T")
DEADLINE = 30.0
API_VERSION = "2025-06-01"


class ApiServer:
    def __init__(self, root: Path, state: Path, *, schedule: bool, slots: int, page_cap: int) -> None:
        self.root = root
        self.state = state
        self.schedule = schedule
        self.slots = slots
        self.page_cap = page_cap
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
        # socket says it is TCP; with proto 0 Nagle holds each response's body for the client's
        # delayed ACK, and every request takes ~44 ms instead of ~1 ms
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.service: NodeService | None = None
        self.server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="api-server", daemon=True)
        self.http = httpx.Client(timeout=30)

    @classmethod
    def start(cls, root: Path, tmp: Path, *, schedule: bool = True, slots: int = 4,
              page_cap: int = 1000) -> ApiServer:
        server = cls(root, tmp / "state", schedule=schedule, slots=slots, page_cap=page_cap)
        server._thread.start()
        if not server._ready.wait(DEADLINE) or server._error is not None:
            raise RuntimeError(f"the API server did not start: {server._error!r}")
        return server

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() / stop()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        store = StoreThread(SqliteStore(self.state, synchronous="NORMAL"))
        svc = NodeService(store, task_runner(self.root), slots=self.slots, tokens=HmacTaskTokens(TOKEN_SECRET))
        self.service = svc
        tokens = svc.tokens
        assert isinstance(tokens, HmacTaskTokens)
        verifier: TokenVerifier = tokens
        settings = ApiSettings(Authenticator(SharedKeyVerifier([AccountKey.from_base64(ACCOUNT, KEY_B64)]), verifier),
                               page_cap=self.page_cap)
        app = build_app(svc, store, settings)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        await svc.start()
        scheduler = asyncio.create_task(svc.serve()) if self.schedule else None
        self._ready.set()
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            if scheduler is not None:
                scheduler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scheduler
            await svc.aclose()

    def stop(self) -> None:
        self.http.close()
        if self.loop is not None and self.server is not None and self._thread.is_alive():
            server = self.server
            self.loop.call_soon_threadsafe(lambda: setattr(server, "should_exit", True))
        self._thread.join(DEADLINE)
        self.sock.close()

    # --- helpers --------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop (e.g. a store read) and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(DEADLINE)

    def url_of(self, path: str, params: dict[str, str] | None = None) -> str:
        query = {"api-version": API_VERSION, **(params or {})}
        return str(httpx.URL(self.url + path, params=query))

    def call(self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None,
             params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
             token: str | None = None, url: str | None = None) -> httpx.Response:
        """A request signed with the test account's key (or sent with ``token`` as Bearer)."""
        target = url or self.url_of(path, params)
        extra = dict(headers or {})
        if json_body is not None:
            content = json.dumps(json_body).encode()
            extra.setdefault("Content-Type", "application/json; odata=minimalmetadata")
        if content is not None:
            extra["Content-Length"] = str(len(content))
        elif method not in ("GET", "HEAD"):
            extra["Content-Length"] = "0"
        if token is not None:
            sent = {**extra, "Authorization": f"Bearer {token}"}
        else:
            sent = signed_headers(method, target, headers=extra)
        return self.http.request(method, target, content=content, headers=sent)

    def wait_task(self, job_id: str, task_id: str, state: str = "completed",
                  deadline: float = DEADLINE) -> dict[str, Any]:
        end = time.monotonic() + deadline
        while True:
            r = self.call("GET", f"/jobs/{job_id}/tasks/{task_id}")
            if r.status_code == 200 and r.json()["state"] == state:
                body: dict[str, Any] = r.json()
                return body
            if time.monotonic() > end:
                raise AssertionError(f"task {job_id}/{task_id} never reached {state}: {r.status_code} {r.text[:300]}")
            time.sleep(0.02)

    def wait_file(self, job_id: str, task_id: str, name: str, text: str, deadline: float = DEADLINE) -> bytes:
        """Poll GET of a task file until its content holds ``text``."""
        end = time.monotonic() + deadline
        while True:
            r = self.call("GET", f"/jobs/{job_id}/tasks/{task_id}/files/{name}")
            if r.status_code == 200 and text.encode() in r.content:
                return r.content
            if time.monotonic() > end:
                raise AssertionError(f"{name} of {job_id}/{task_id} never held {text!r}: {r.status_code}")
            time.sleep(0.02)


def node_root(label: str) -> Path:
    """A fresh node root task users can traverse (as conftest's ``node_root``, for module fixtures)."""
    base = Path(os.environ.get("BATCH_AGENT_TEST_ROOT", "/tmp/batch-agent-tests"))
    base.mkdir(mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=base))
    root.chmod(0o755)
    return root


@contextlib.contextmanager
def serving(label: str, tmp: Path, **kwargs: Any) -> Iterator[ApiServer]:
    root = node_root(label)
    try:
        with ApiServer.start(root, tmp, **kwargs) as api:
            yield api
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_client(python: Path, source: str, api: ApiServer, tmp: Path, timeout: float = 300) -> dict[str, Any]:
    """Run a client script (argv: url, account, key) in a client's venv; its last line is JSON."""
    script = tmp / "client.py"
    script.write_text(source)
    proc = subprocess.run([str(python), str(script), api.url, ACCOUNT, KEY_B64], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def sh(script: str) -> str:
    assert "'" not in script
    return f"/bin/sh -c '{script}'"


def key_bytes() -> bytes:
    return base64.b64decode(KEY_B64)
