"""The composition root: the one place that builds concrete runners, hooks, the task runner, the
store and the node service, for every way in (``run``, ``plan``, ``serve``, ``run-job``).

Owns: which runners and hooks a node has (``build_runner``), the node's private state directory
(``<root>/batch-agent-state``, 0700: the SQLite store, the task-token secret, the start task's
status, ``agent.lock``), the node lock, and ``build_service`` (a ``NodeService`` on a
``SqliteStore``). Must not: parse flags, print, or run an event loop of its own (the CLI and
``agent.daemon`` do).

The node lock (``agent.lock``, flock): ``serve`` holds it exclusively for its whole life, so two
agents never share a node root's state; ``run`` and ``run-job`` hold it shared while they run,
so a service never starts under them and they refuse to start under a service ("submit the task
through the API"). The lock file's descriptor is close-on-exec: the task supervisor (which
outlives the agent) never inherits it. The orphan container sweep of ``run`` is skipped on a
node root a service has used (its ``state.db`` exists): that service's containers may be
waiting for it to re-attach them, and only the service knows which (it sweeps with
``owned=`` its live handles at start-up).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError

if TYPE_CHECKING:  # heavy modules load only for the command that needs them
    from agent.api.auth import HmacTaskTokens
    from agent.config import AgentConfig
    from agent.environment import NodeIdentity
    from agent.service import NodeService
    from agent.spec import StartTask, TaskBase
    from agent.store import StoreThread
    from agent.taskrunner import TaskRunner

STATE_DIR = "batch-agent-state"
LOCK_FILE = "agent.lock"
ALL_FIELDS = ("resourceFiles", "containerSettings", "outputFiles")


class NodeBusy(ConfigError):
    """Another batch-agent holds this node root (the message says which and what to do): exit 2,
    as a configuration the command cannot start with."""


def node_identity(config: AgentConfig) -> NodeIdentity:
    from agent.environment import NodeIdentity

    n = config.node
    return NodeIdentity(n.account_name, n.account_url, n.pool_id, n.node_id, n.is_dedicated, n.system_path,
                        n.reserved_disk_bytes, n.os_reserved_disk_bytes)


def supported_fields() -> frozenset[str]:
    """The task fields this build implements (their hooks import)."""
    supported: set[str] = set()
    for module, cls in (("agent.hooks.resources", "ResourceFilesHook"), ("agent.hooks.outputs", "OutputFilesHook"),
                        ("agent.hooks.image", "ImageHook")):
        try:
            hook_cls = getattr(__import__(module, fromlist=[cls]), cls)
        except (ImportError, AttributeError):
            continue
        supported |= set(hook_cls.handles)
    return frozenset(supported)


def _needed(specs: Sequence[TaskBase] | None) -> set[str]:
    if specs is None:                       # a service: any task may come
        return set(ALL_FIELDS)
    from agent.hooks.gate import used_fields

    return {f for s in specs for f in used_fields(s)}


def build_runner(config: AgentConfig, specs: Sequence[TaskBase] | None, *, progress: Any = None,
                 supervised: bool = False, sweep: bool = True) -> TaskRunner:
    """The TaskRunner with the runners and hooks ``specs`` need (``None``: every one this build
    has, for a service). ``supervised``: spawn through the node's task supervisor, so that a
    restarted agent re-attaches with the real exit code (serve). ``sweep``: remove this node
    root's orphan containers now (``run``; a service sweeps itself, after loading its handles)."""
    from agent.hooks.gate import GateHook
    from agent.hooks.taskdir import TaskDirHook
    from agent.process import ProcessRunner
    from agent.taskrunner import TaskRunner
    from agent.users import policy_from_config, resolve_user

    needed = _needed(specs)
    optional = specs is None                # a service starts without the optional libraries
    prestart: list[Any] = []
    exited: list[Any] = []
    process = ProcessRunner(use_cgroups=config.tasks.use_cgroups,
                            node_root=config.node.root if supervised else None)
    runners: dict[str, Any] = {"process": process}
    with _optional(optional):
        if "resourceFiles" in needed:
            from agent.hooks.resources import ResourceFilesHook
            prestart.append(ResourceFilesHook())
    with _optional(optional):
        if "containerSettings" in needed:
            from agent.container.image import PullRetry
            from agent.container.runner import ContainerRunner
            from agent.hooks.image import ImageHook
            container_runner = ContainerRunner(config.docker)
            if sweep:
                from agent.container.orphans import remove_orphans
                remove_orphans(container_runner.client, node_root=config.node.root)
            runners["container"] = container_runner
            retry = PullRetry(attempts=config.docker.pull_attempts, backoff=config.docker.pull_backoff)
            prestart.append(ImageHook(container_runner.client, config.docker, retry=retry))
    with _optional(optional):
        if "outputFiles" in needed:
            from agent.hooks.outputs import OutputFilesHook
            exited.append(OutputFilesHook())
    supported = {f for hook in (*prestart, *exited) for f in hook.handles}
    policy = policy_from_config(config)

    def user_for(spec: TaskBase, kind: str, task_key: str) -> Any:
        return resolve_user(spec.user_identity, kind, policy=policy, task_key=task_key)

    return TaskRunner(config=config, node=node_identity(config), runners=runners,
                      prestart=[GateHook(supported), TaskDirHook(), *prestart], exited=exited,
                      resolve_user=user_for, progress=progress)


@contextlib.contextmanager
def _optional(allowed: bool) -> Any:
    """A hook whose library is not installed: left out for a service (its tasks fail with the
    gate's message), an ImportError for ``run`` (as before)."""
    try:
        yield
    except ImportError:
        if not allowed:
            raise


# --- the node's state directory and lock ---------------------------------------------------

def state_dir(config: AgentConfig) -> Path:
    return config.node.root / STATE_DIR


def prepare_state_dir(config: AgentConfig) -> Path:
    """Create the node root (0755, if missing) and its state dir (0700); refuse unsafe ones."""
    from agent.nodefs import open_trusted
    from agent.store.files import prepare_dir

    # open_trusted creates missing components itself, each only after its parent passed the
    # trust check: a mkdir by path first would create dirs inside another user's directory.
    fd = open_trusted(config.node.root, "node root")
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(STATE_DIR, 0o700, dir_fd=fd)
    finally:
        os.close(fd)
    path = state_dir(config)
    prepare_dir(path)       # 0700, ours, not a link: StoreUnsafe otherwise, never repaired
    return path


@dataclass(frozen=True, slots=True)
class NodeLock:
    """A held ``agent.lock``; ``release`` (or process exit, SIGKILL included) lets it go."""

    fd: int
    exclusive: bool

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def lock_node(config: AgentConfig, *, exclusive: bool) -> NodeLock:
    """Take the node lock: exclusive for ``serve``, shared for ``run`` / ``run-job``. Raises
    ``NodeBusy`` (naming the holder and the fix) when it is taken the other way."""
    from agent.nodefs import open_trusted

    path = prepare_state_dir(config)
    dir_fd = open_trusted(path, "state directory")
    try:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        root = config.node.root
        if exclusive:
            raise NodeBusy(f"node root {str(root)!r} is in use by another batch-agent ({holder}); two agents "
                           "never share a node root: stop it, or give this one another --root") from None
        raise NodeBusy(f"node root {str(root)!r} is held by a running batch-agent service ({holder}); submit "
                       "the task to it through its API, or give another --root") from None
    os.ftruncate(fd, 0)                     # a dead serve's pid goes (no serve holds it now)
    if exclusive:
        os.pwrite(fd, f"serve pid {os.getpid()}\n".encode(), 0)
    return NodeLock(fd, exclusive)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text.startswith("serve pid ") and text[10:].isdigit():
            return text
    return "batch-agent run or run-job"


def service_used(config: AgentConfig) -> bool:
    """Whether a service has kept state on this node root (its store exists)."""
    from agent.store.sqlite import DB_NAME

    return (state_dir(config) / DB_NAME).exists()


# --- the service ----------------------------------------------------------------------------

def load_start_task(config: AgentConfig) -> StartTask | None:
    """The pool start task of ``[node] start_task`` (a JSON file), or None."""
    if not config.node.start_task:
        return None
    import json

    from agent.spec.start import load_start_task as parse

    path = Path(config.node.start_task)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"node.start_task: cannot read {str(path)!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"node.start_task: {str(path)!r} is not JSON: {exc}") from None
    return parse(data, source=str(path))


def build_service(config: AgentConfig, store_dir: Path, *, slots: int, start_task: StartTask | None,
                  supervised: bool, tokens: bool = True) -> tuple[NodeService, StoreThread]:
    """A NodeService (and its store thread) on ``store_dir/state.db``. Create it inside the
    running event loop that will drive it. ``tokens``: issue task tokens under the node secret
    (``task-token.key`` in ``store_dir``); the API checks them with ``service.tokens``."""
    from agent.service import NodeService
    from agent.store import SqliteStore, StoreThread

    runner = build_runner(config, None, supervised=supervised, sweep=False)
    store = StoreThread(SqliteStore(store_dir))
    issuer: HmacTaskTokens | None = None
    if tokens:
        from agent.api.auth import HmacTaskTokens
        from agent.tokens import load_secret
        issuer = HmacTaskTokens(load_secret(store_dir))
    service = NodeService(store, runner, slots=slots, start_task=start_task, state_dir=store_dir, tokens=issuer)
    return service, store


def container_ids(handles: Iterable[Mapping[str, Any]]) -> set[str]:
    """The container ids of run handles (``RunHandle.to_json()``): what the orphan sweep keeps."""
    return {str(h["container_id"]) for h in handles if h.get("container_id")}


async def sweep_containers(config: AgentConfig, service: NodeService) -> list[str]:
    """At a service's start-up, after its store is open and before recovery: remove this node
    root's containers that no open attempt owns. Nothing when no container runner is built or
    no engine answers (the sweep says so in the log)."""
    runner = service.core.runner.runners.get("container")
    if runner is None or not _engine_configured():
        return []
    from agent.container.orphans import sweep_orphans

    attempts = await service.core.call(lambda s: s.open_attempts())
    return await sweep_orphans(getattr(runner, "client"), config.node.root,  # noqa: B009
                               owned=container_ids(a.handle for a in attempts))


def _engine_configured() -> bool:
    """A Docker engine may answer: $DOCKER_HOST is set or the default socket exists. Without
    one the sweep (and the docker library, ~15 MB of RSS) is skipped."""
    return bool(os.environ.get("DOCKER_HOST")) or Path("/var/run/docker.sock").exists()


def with_api_identity(config: AgentConfig, account_name: str, account_url: str) -> AgentConfig:
    """The config tasks see under ``serve``: AZ_BATCH_ACCOUNT_NAME / _URL name the local API."""
    return replace(config, node=replace(config.node, account_name=account_name, account_url=account_url))
