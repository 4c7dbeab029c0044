"""The Docker runner (§8.3): create, attach, start, wait, stop/kill and remove one container.

Owns: the shared engine client (``LazyClient``), the conversion of ``build``'s plain-dict mounts /
device requests / ulimits to ``docker.types`` objects, streaming the container's stdout and
stderr to ``stdout.txt`` / ``stderr.txt``, and the container's end state (``containerInfo``).
Must not: pull images (``agent.container.image`` does, before start), decide names, mounts or
users (``build``), or use the docker CLI.

How (the engine facts are in ../shared/docs/test-infra.md §1):

- ``attach(stream, logs, demux)`` is made BEFORE ``start``: made after, a container that exits
  at once loses its output. A daemon thread writes the two demuxed streams to the two files as
  they come (readable while the task runs), nothing buffered in between, no newline added.
- A failed ``start`` (command not found, ...) is not an exception here: the engine leaves the
  container ``created`` with an exit code (127 not found, 126 not executable) and
  ``State.Error``; ``wait`` reports both, as ``docker run`` would.
- ``wait`` blocks in a daemon thread, not the default executor: ``asyncio.run`` joins executor
  threads at exit, and a container may run for days. The SDK's ``wait`` is called with no
  timeout (with one, it raises ``requests.ConnectionError``); on a dropped connection it asks
  again while the container still exists.
- ``kill`` = ``docker stop`` with ``[docker] stop_grace`` (SIGTERM, then SIGKILL by the engine),
  then ``kill`` if it still runs. The grace the task runner passes is its native one
  (``[tasks] kill_grace``) and is not used: a container's grace is the engine's stop timeout,
  whole seconds (rounded up, at most a day). The exit code is the container's main process's as
  the engine reports it (137 after SIGKILL, 143 after an unhandled SIGTERM, the task's own code
  when it handles SIGTERM and exits), not a negative signal number (§8.3: "exitCode = container
  main process exit code"); ``containerInfo`` is read from the inspect made after the stop.
- ``cleanup`` removes the container (and its anonymous volumes) after ``--rm`` or after the
  agent killed it; otherwise it is kept for inspection until the orphan sweep (``orphans``).
  ``destroy`` (the task was deleted) removes it at once, running or not.
- ``recover`` (after an agent restart) finds the container by the handle's id and checks the
  ``batch-agent.node-root`` label (a container without it is never touched). Gone -> False.
  From another boot (the handle's ``boot_id``) -> False, and it is removed: nothing of an
  attempt that is requeued may run on. Running or exited -> True: its output is resumed from
  the engine's log into the two files without loss or duplicates (``output``), and ``wait``
  returns the engine's real exit code. A recovering service passes the ids of its live handles
  to the orphan sweep (``sweep_orphans(owned=...)``), which must never run before them.
- Cancelling ``wait`` (the agent stops) leaves the container running; only ``kill`` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.config import DockerConfig
from agent.container.build import LABEL_NODE_ROOT, LABEL_REMOVE
from agent.container.orphans import LABEL_AGENT, agent_token
from agent.container.output import close_streams, open_output, pump_demuxed, resume
from agent.errors import RunnerError
from agent.logs import get_logger
from agent.runner import ExitResult, RunHandle, RunRequest, boot_id, same_boot
from agent.status import ContainerInfo, FailureInfo

T = TypeVar("T")

INVALID_SETTINGS = "At least one value of specified task container settings is invalid"


class LazyClient:
    """A ``docker.DockerClient`` created on first use and shared by the image hook, the runner and
    the orphan sweep (creating one costs a round trip to the engine, and ``docker`` is imported
    only then). Attribute access is forwarded: ``lazy.api.containers()`` works as on the client.
    """

    def __init__(self, factory: Callable[[], Any] | None = None) -> None:
        self._factory = factory
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The client; raises ``docker.errors.DockerException`` when no engine answers. Blocks."""
        with self._lock:
            if self._client is None:
                if self._factory is not None:
                    self._client = self._factory()
                else:
                    import docker

                    self._client = docker.from_env()
            return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def resolve_client(client: Any) -> Any:
    """A ``LazyClient`` or a ``docker.DockerClient`` -> the client itself."""
    return client.get() if isinstance(client, LazyClient) else client


@dataclass(slots=True)
class _Attempt:
    """What the runner holds for one started container until ``cleanup``."""

    remove_after: bool
    streams: list[Any] = field(default_factory=list)       # docker CancellableStreams
    pumps: list[threading.Thread] = field(default_factory=list)
    pump_error: list[BaseException] = field(default_factory=list)
    killed: bool = False


def _to_sdk(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``build``'s plain data -> what ``containers.create`` takes (Mount objects in particular)."""
    from docker.types import DeviceRequest, Mount, Ulimit

    out = dict(kwargs)
    if out.get("mounts"):
        out["mounts"] = [Mount(**m) for m in out["mounts"]]
    if out.get("device_requests"):
        out["device_requests"] = [DeviceRequest(**d) for d in out["device_requests"]]
    if out.get("ulimits"):
        out["ulimits"] = [Ulimit(**u) for u in out["ulimits"]]
    return out


def _create(client: Any, image: str, kwargs: Mapping[str, Any]) -> str:
    """``containers.create(image, **kwargs)`` without the inspect it makes afterwards to build a
    ``Container`` object we do not use (one engine round trip less per task). The conversion is
    docker-py's own (private, unchanged since docker-py 2.0): an upgrade that drops it fails the
    container tests at once."""
    from docker.models.containers import _create_container_args

    args = _create_container_args({**_to_sdk(kwargs), "image": image, "version": client.api._version})
    return str(client.api.create_container(**args)["Id"])


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run a blocking engine call in a daemon thread: cancellable from asyncio, and never joined
    at exit (``asyncio.to_thread`` would make ``asyncio.run`` wait for a container or a pull)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():       # the awaiting coroutine was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]  # result is a T when error is None

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        # The loop may have closed while we waited: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="batch-agent-engine-call", daemon=True).start()
    return await future


def _create_failure(exc: Exception) -> FailureInfo:
    from docker.errors import APIError, ImageNotFound

    from agent.container.image import scrub

    message = scrub(getattr(exc, "explanation", None) or str(exc))
    if isinstance(exc, ImageNotFound):
        return FailureInfo.user("ContainerInvalidImage", "The container image is not on the node",
                                Message=message)
    if isinstance(exc, TypeError | ValueError) or (
            isinstance(exc, APIError) and exc.status_code is not None and 400 <= exc.status_code < 500):
        return FailureInfo.user("ContainerInvalidSettings", INVALID_SETTINGS, Message=message)
    return FailureInfo.server("ContainerMiscError", "The container could not be created", Message=message)


class ContainerRunner:
    """The ``Runner`` for requests with a ``ContainerRequest`` (kind ``"container"``)."""

    def __init__(self, config: DockerConfig | None = None, *, client: Any = None) -> None:
        """``config``: the agent's ``[docker]`` section (``stop_grace`` is the stop timeout of
        ``kill``; the image hook reads the network from the same section). ``client``: a ``LazyClient`` or a
        ``docker.DockerClient`` to share; by default a new ``LazyClient``."""
        self.config = config or DockerConfig()
        self.client: Any = client if client is not None else LazyClient()
        self._attempts: dict[str, _Attempt] = {}
        self._token: str | None = None

    # --- start ---------------------------------------------------------------------------------

    async def start(self, request: RunRequest) -> RunHandle | FailureInfo:
        if request.container is None:
            raise RunnerError("ContainerRunner.start needs a request with a container (RunRequest.container)")
        from docker.errors import DockerException

        try:
            return await asyncio.to_thread(self._start, request)
        except DockerException as exc:
            return FailureInfo.server("ContainerMiscError", "The Docker engine did not answer",
                                      Message=str(exc))

    def _create(self, client: Any, image: str, kwargs: dict[str, Any]) -> str:
        """Create; a stale container of ours with the same name (an earlier run) is replaced."""
        from docker.errors import APIError, NotFound

        try:
            return _create(client, image, kwargs)
        except APIError as exc:
            if exc.status_code != 409:
                raise
            try:
                old = client.api.inspect_container(kwargs["name"])
            except NotFound:
                old = None
            ours = old is not None and (old["Config"].get("Labels") or {}).get(LABEL_NODE_ROOT) == \
                kwargs["labels"][LABEL_NODE_ROOT]
            if old is None or not ours or old["State"].get("Running"):
                raise RunnerError(f"a container named {kwargs['name']} already exists and "
                                  f"{'runs' if ours else 'is not ours'}: is the task running elsewhere?") \
                    from None
            client.api.remove_container(old["Id"], v=True, force=True)
            return _create(client, image, kwargs)

    def _start(self, request: RunRequest) -> RunHandle | FailureInfo:
        from docker.errors import APIError, DockerException

        container = request.container
        assert container is not None
        client = resolve_client(self.client)
        if self._token is None:
            self._token = agent_token()
        kwargs = dict(container.create_kwargs)
        kwargs["labels"] = {**kwargs.get("labels", {}), LABEL_AGENT: self._token}
        log = get_logger(job_id=request.job_id, task_id=request.task_id, attempt=request.attempt)
        try:
            container_id = self._create(client, container.image, kwargs)
        except RunnerError as exc:
            return FailureInfo.server("ContainerMiscError", "The container could not be created",
                                      Message=str(exc))
        except (DockerException, TypeError, ValueError) as exc:
            return _create_failure(exc)
        attempt = _Attempt(remove_after=container.remove_after)
        try:
            out = open_output(request.stdout, request.user)
            err = open_output(request.stderr, request.user)
        except OSError as exc:
            self._discard(client, container_id)
            return FailureInfo.server("ContainerMiscError", "The task's stdout.txt / stderr.txt could not "
                                      "be created", Message=f"{exc.strerror or exc}: {exc.filename or ''}")
        try:
            stream = client.api.attach(container_id, stdout=True, stderr=True, stream=True,
                                       logs=True, demux=True)
        except BaseException:
            out.close()
            err.close()
            self._discard(client, container_id)
            raise
        attempt.streams.append(stream)
        self._attempts[container_id] = attempt
        attempt.pumps.append(threading.Thread(target=pump_demuxed, args=(stream, out, err, attempt.pump_error),
                                              name=f"batch-agent-logs-{container_id[:12]}", daemon=True))
        attempt.pumps[0].start()
        try:
            client.api.start(container_id)
        except APIError as exc:
            # The engine keeps the error and an exit code in the container's state; wait() reports.
            log.info("container start failed", container_id=container_id[:12], error=exc.explanation)
            close_streams(attempt.streams, attempt.pumps)
        else:
            log.info("container started", container_id=container_id[:12], image=container.image)
        return RunHandle(kind="container", container_id=container_id, boot_id=boot_id(),
                         stdout=str(request.stdout), stderr=str(request.stderr),
                         log_uid=request.user.uid, log_gid=request.user.gid)

    @staticmethod
    def _discard(client: Any, container_id: str) -> None:
        """Remove a container that will never run (start could not be prepared)."""
        from docker.errors import DockerException

        with contextlib.suppress(DockerException):
            client.api.remove_container(container_id, v=True, force=True)

    # --- wait ----------------------------------------------------------------------------------

    async def wait(self, handle: RunHandle) -> ExitResult:
        container_id = _container_id(handle)
        return await in_daemon_thread(lambda: self._wait(container_id))

    def _wait(self, container_id: str) -> ExitResult:
        import requests
        from docker.errors import NotFound

        client = resolve_client(self.client)
        while True:
            try:
                status = client.api.wait(container_id, timeout=None)
                break
            except requests.exceptions.ConnectionError:
                client.api.inspect_container(container_id)  # gone / engine down: raise from here
        attempt = self._attempts.get(container_id)
        if attempt is not None and attempt.pumps:
            for pump in attempt.pumps:
                pump.join()
            if attempt.pump_error:
                get_logger(container_id=container_id[:12]).warning(
                    "container output stream broke", error=repr(attempt.pump_error[0]))
        try:
            state = client.api.inspect_container(container_id)["State"]
        except NotFound:
            state = {"Status": "removed", "Error": ""}
        return ExitResult(exit_code=int(status["StatusCode"]),
                          container_info=ContainerInfo(container_id, state.get("Status"),
                                                       state.get("Error") or None))

    # --- kill / cleanup ------------------------------------------------------------------------

    async def kill(self, handle: RunHandle, grace: float) -> None:
        """Stop the container with ``[docker] stop_grace``; ``grace`` (the task runner's native
        kill grace) is not used, see the module docstring."""
        container_id = _container_id(handle)
        attempt = self._attempts.get(container_id)
        if attempt is not None:
            attempt.killed = True
        await asyncio.to_thread(self._kill, container_id, stop_timeout(self.config.stop_grace))

    def _kill(self, container_id: str, timeout: int) -> None:
        from docker.errors import APIError, NotFound

        client = resolve_client(self.client)
        try:
            client.api.stop(container_id, timeout=timeout)
            if client.api.inspect_container(container_id)["State"].get("Running"):
                client.api.kill(container_id)
        except NotFound:
            return
        except APIError as exc:
            if exc.status_code != 409:  # 409: it is not running any more
                raise

    async def cleanup(self, handle: RunHandle) -> None:
        container_id = _container_id(handle)
        attempt = self._attempts.pop(container_id, None)
        await asyncio.to_thread(self._cleanup, container_id, attempt)

    def _cleanup(self, container_id: str, attempt: _Attempt | None) -> None:
        from docker.errors import NotFound

        client = resolve_client(self.client)
        if attempt is not None:
            close_streams(attempt.streams, attempt.pumps)
            remove = attempt.remove_after or attempt.killed
        else:  # after an agent restart: the label remembers --rm
            try:
                labels = client.api.inspect_container(container_id)["Config"].get("Labels") or {}
            except NotFound:
                return
            remove = labels.get(LABEL_REMOVE) == "true"
        if remove:
            with contextlib.suppress(NotFound):
                client.api.remove_container(container_id, v=True, force=True)

    async def destroy(self, handle: RunHandle) -> None:
        """Remove the container at once, running or not, with its anonymous volumes."""
        container_id = _container_id(handle)
        attempt = self._attempts.pop(container_id, None)
        await asyncio.to_thread(self._destroy, container_id, attempt)

    def _destroy(self, container_id: str, attempt: _Attempt | None) -> None:
        from docker.errors import NotFound

        if attempt is not None:
            close_streams(attempt.streams, attempt.pumps)
        with contextlib.suppress(NotFound):
            resolve_client(self.client).api.remove_container(container_id, v=True, force=True)

    # --- recover -------------------------------------------------------------------------------

    async def recover(self, handle: RunHandle) -> bool:
        """Re-attach after an agent restart (module docstring): True when ``wait`` gives the
        container's real exit code, False when it is gone or from another boot (then removed)."""
        container_id = _container_id(handle)
        return await asyncio.to_thread(self._recover, handle, container_id)

    def _recover(self, handle: RunHandle, container_id: str) -> bool:
        from docker.errors import NotFound

        client = resolve_client(self.client)
        try:
            info = client.api.inspect_container(container_id)
        except NotFound:
            return False
        labels = info["Config"].get("Labels") or {}
        if LABEL_NODE_ROOT not in labels:
            raise RunnerError(f"container {container_id[:12]} is not a batch-agent container: not recovered")
        if handle.boot_id is not None and not same_boot(handle):
            self._destroy(container_id, None)
            return False
        attempt = _Attempt(remove_after=labels.get(LABEL_REMOVE) == "true")
        if handle.stdout and handle.stderr:
            attempt.streams, attempt.pumps = resume(
                client, container_id, (Path(handle.stdout), Path(handle.stderr)),
                handle.log_uid, handle.log_gid, attempt.pump_error)
        old = self._attempts.pop(container_id, None)
        if old is not None:
            close_streams(old.streams, old.pumps)
        self._attempts[container_id] = attempt
        get_logger(container_id=container_id[:12]).info("container recovered", state=info["State"].get("Status"))
        return True


MAX_STOP_TIMEOUT = 86_400


def stop_timeout(grace: float) -> int:
    """``[docker] stop_grace`` (seconds, may be fractional or infinite) -> the engine's stop
    timeout: whole seconds, rounded up, between 0 and a day (the SDK adds it to its HTTP timeout)."""
    if math.isnan(grace) or grace <= 0:
        return 0
    return MAX_STOP_TIMEOUT if grace >= MAX_STOP_TIMEOUT else math.ceil(grace)


def _container_id(handle: RunHandle) -> str:
    if handle.kind != "container" or not handle.container_id:
        raise RunnerError(f"ContainerRunner got a {handle.kind} handle without a container id")
    return handle.container_id
