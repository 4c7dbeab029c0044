"""Prestart hook for ``containerSettings`` (§8): the container to create, and its image.

Builds the ``ContainerRequest`` (``agent.container.build``, with this host's GPUs, RDMA devices
and mount propagation from ``agent.container.host``), puts it on the context with the
environment of the container (variables of unmounted paths removed), then makes sure the image
is on the node (``agent.container.image``): a present image is used as it is, a missing one is
pulled with the task's registry credentials. Bad settings fail before any pull. Every failure
is a pre-processing ``FailureInfo`` with a §8.2 code; the registry password appears in none.
Must not: start anything (the container runner does), or block the event loop (the engine is
called from a daemon thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from agent.config import DockerConfig
from agent.container.build import ContainerSettingsError, build_container_request
from agent.container.host import HostFacts, detect_host
from agent.container.image import PullRetry, RegistryAuth, ensure_image, scrub
from agent.container.runner import INVALID_SETTINGS, in_daemon_thread, resolve_client
from agent.container.runopts import RunOptionsError
from agent.lifecycle import TaskContext
from agent.status import FailureInfo

DEFAULT_REGISTRY = "docker.io"


def _auth(ctx: TaskContext) -> RegistryAuth | FailureInfo | None:
    settings = ctx.spec.container_settings
    registry = settings.registry if settings else None
    if registry is None:
        return None
    if registry.identity_reference is not None:
        return FailureInfo.user(
            "TaskFeatureNotSupported",
            "containerSettings.registry.identityReference is not supported here: batch-agent has no "
            "Azure managed identity to log in with; give registry.username and registry.password",
            FieldName="containerSettings.registry.identityReference")
    if not registry.username or not registry.password:
        return FailureInfo.user("ContainerInvalidRegistry",
                                "containerSettings.registry needs both username and password",
                                RegistryServer=registry.registry_server or DEFAULT_REGISTRY)
    return RegistryAuth(registry.registry_server or DEFAULT_REGISTRY, registry.username, registry.password)


class ImageHook:
    name = "image"
    handles: frozenset[str] = frozenset({"containerSettings"})

    def __init__(self, client: Any, config: DockerConfig | None = None, *,
                 retry: PullRetry | None = None, host: Callable[[], HostFacts] = detect_host) -> None:
        """``client``: the runner's ``LazyClient`` (or a ``docker.DockerClient``); ``config``: the
        ``[docker]`` section (network default), else the task context's; ``retry``: login / pull
        retries on throttling (default ``PullRetry()``; no waits in tests); ``host``: reads this
        host's GPUs, RDMA devices and mount propagation, once per task (mounts change)."""
        self.client = client
        self.config = config
        self.retry = retry or PullRetry()
        self.host = host
        self._noted = False

    async def prestart(self, ctx: TaskContext) -> FailureInfo | None:
        settings = ctx.spec.container_settings
        if settings is None:
            return None
        auth = _auth(ctx)
        if isinstance(auth, FailureInfo):
            return auth
        prep = ctx.job.job_preparation_task if ctx.job else None
        host = self.host()
        if host.notes and not self._noted:
            self._noted = True
            ctx.log.warning("host devices not exposed to containers", notes=list(host.notes))
        try:
            request, env = build_container_request(
                settings, argv=ctx.argv, env=ctx.env, dirs=ctx.dirs, layout=ctx.layout, user=ctx.user,
                prep_dirs=ctx.layout.task(ctx.job_id, prep.id) if prep else None, job_id=ctx.job_id,
                task_id=ctx.task_id, attempt=ctx.attempt,
                network_default=(self.config or ctx.config.docker).network, host=host)
        except (RunOptionsError, ContainerSettingsError) as exc:
            return FailureInfo.user("ContainerInvalidSettings", INVALID_SETTINGS,
                                    Message=scrub(str(exc), auth.password if auth else None))
        ctx.container, ctx.env = request, env
        # A daemon thread: a pull cut short by the wall clock must not hold the agent's exit;
        # ``cancel`` ends its retry waits (set on the way out, however the await ends).
        cancel = threading.Event()
        try:
            pulled = await in_daemon_thread(lambda: self._ensure(request.image, auth, ctx, cancel))
        finally:
            cancel.set()
        if isinstance(pulled, FailureInfo):
            ctx.log.info("container image unavailable", image=request.image, code=pulled.code)
            return pulled
        ctx.notes["container_image"] = {"image": request.image, "pulled": pulled}
        return None

    def _ensure(self, image: str, auth: RegistryAuth | None, ctx: TaskContext,
                cancel: threading.Event) -> bool | FailureInfo:
        from docker.errors import DockerException

        try:
            client = resolve_client(self.client)
        except DockerException as exc:
            return FailureInfo.server("ContainerMiscError", "The Docker engine did not answer",
                                      Message=scrub(str(exc)))
        return ensure_image(client, image, auth, ctx.log, retry=self.retry, cancel=cancel)
