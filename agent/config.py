"""The agent's own configuration: a TOML file, environment variables and command-line flags.

Precedence, highest first: a command-line flag (``--root``), an environment variable
(``BATCH_AGENT_ROOT``, ``BATCH_AGENT_CONFIG``), the TOML file (``--config``, else
``$BATCH_AGENT_CONFIG``, else ``/etc/batch-agent/agent.toml`` when it exists), the defaults below.
The commented default file is ``config/agent.toml``. This module only reads; it creates nothing.

A file that holds a secret (``[storage]`` ``account_key``, ``sas_token``, or a ``connection_string``
with an ``AccountKey`` or ``SharedAccessSignature``) is refused, as ssh refuses a private key,
when group or others may read or write it, or when it belongs to neither the agent's user nor root:
a task user (or anyone) who can read it owns the storage account. Checked on the open file (fstat),
so the file judged is the file read. The message names the file, the keys that hold secrets (never
their values) and the fix.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, Issue
from agent.layout import DEFAULT_ROOT
from agent.spec.durations import DurationError, parse_duration

DEFAULT_CONFIG_PATH = Path("/etc/batch-agent/agent.toml")
_SECRET_KEYS = ("account_key", "sas_token")
_SECRET_IN_CONNECTION = re.compile(r"(?i)(?:^|;)\s*(AccountKey|SharedAccessSignature)\s*=\s*[^;\s]")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    root: Path = DEFAULT_ROOT
    account_name: str = "local"
    account_url: str = "http://127.0.0.1:8080/"
    pool_id: str = "local"
    node_id: str = field(default_factory=lambda: f"local-{socket.gethostname()}")
    is_dedicated: bool = True
    system_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    reserved_disk_bytes: int = 1_000_000_000
    os_reserved_disk_bytes: int = 1_000_000_000
    task_slots_per_node: int = 1        # the service's slots (Batch's taskSlotsPerNode)
    start_task: str = ""                # a JSON file holding the pool's start task ("" = none)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """``batch-agent serve``'s local API. The key itself is never a config value: only a file."""

    listen: str = "127.0.0.1:8080"      # HOST:PORT; loopback unless asked otherwise
    account_name: str = ""              # "" = [node] account_name
    account_key_file: str = ""          # base64 key in a 0600/0400 file owned by the agent
    max_clock_skew: float = 900.0       # a signed request's date may be this far off (seconds)
    public_url: str = ""                # the URL tasks and odata links use ("" = from listen / Host)


@dataclass(frozen=True, slots=True)
class TaskConfig:
    kill_grace: float = 10.0            # seconds between SIGTERM and SIGKILL
    default_job_id: str = "local"
    create_users: bool = True           # create _azbatch / _azbatchtask_N accounts when root
    pool_nonadmin_user: str = "_azbatch"
    task_user_prefix: str = "_azbatchtask_"
    user_group: str = "_azbatchgrp"
    use_cgroups: bool = True
    wall_clock_failure_code: str = "TaskEnded"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """The auto-storage account (``autoStorageContainerName``) and transfer settings."""

    connection_string: str = ""
    account_url: str = ""
    account_key: str = ""
    sas_token: str = ""
    concurrency: int = 8
    retries: int = 5
    backoff: float = 1.0                # base delay (s) of exponential backoff; 0 in tests
    timeout: float = 300.0
    block_threshold: int = 256 * 1024 * 1024
    download_deadline: float = 4 * 3600.0  # all of a task's resource files (ResourceDownloadTimedOut)


@dataclass(frozen=True, slots=True)
class DockerConfig:
    stop_grace: float = 10.0
    network: str = ""                   # default network mode for containers ("" = engine default)
    pull_attempts: int = 5              # registry login / image pull tries on throttling and 5xx
    pull_backoff: float = 1.0           # first wait (s) between those tries, doubling, at most 16 s


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node: NodeConfig = field(default_factory=NodeConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    source: str = "defaults"


_SECTIONS: Mapping[str, type[Any]] = {"node": NodeConfig, "tasks": TaskConfig, "storage": StorageConfig,
                                      "docker": DockerConfig, "api": ApiConfig}


def _convert(section: str, name: str, kind: Any, value: Any) -> Any:
    path = f"{section}.{name}"
    if kind in {"Path", Path}:
        if not isinstance(value, str) or not value:
            raise ConfigError([Issue(path, "must be a non-empty path string")])
        return Path(value)
    if kind in {"float", float}:
        if isinstance(value, str):  # an ISO 8601 duration is accepted for times
            try:
                td = parse_duration(value)
            except DurationError as exc:
                raise ConfigError([Issue(path, str(exc))]) from None
            return td.total_seconds() if td is not None else float("inf")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError([Issue(path, "must be a number of seconds or an ISO 8601 duration")])
        return float(value)
    expected = {"bool": bool, "int": int, "str": str}.get(kind if isinstance(kind, str) else kind.__name__)
    if (expected is int and isinstance(value, bool)) or (expected and not isinstance(value, expected)):
        raise ConfigError([Issue(path, f"must be {_KIND_NAMES.get(expected, str(kind))}")])
    return value


_KIND_NAMES: Mapping[Any, str] = {bool: "true or false", int: "a whole number", str: "a string"}

# Allowed ranges (inclusive; None = unbounded) of the numeric keys; a time must also be finite.
_RANGES: Mapping[str, tuple[float | None, float | None]] = {
    "node.reserved_disk_bytes": (0, None),
    "node.os_reserved_disk_bytes": (0, None),
    "node.task_slots_per_node": (1, 256),
    "api.max_clock_skew": (0, 86400),
    "tasks.kill_grace": (0, 3600),
    "storage.concurrency": (1, 256),
    "storage.retries": (0, 100),
    "storage.backoff": (0, 300),
    "storage.timeout": (1, None),
    "storage.block_threshold": (1, None),
    "storage.download_deadline": (1, None),
    "docker.stop_grace": (0, 3600),
    "docker.pull_attempts": (1, 20),
    "docker.pull_backoff": (0, 60),
}


def _check_range(path: str, value: Any) -> None:
    low, high = _RANGES.get(path, (None, None))
    if isinstance(value, float) and value == float("inf"):
        raise ConfigError([Issue(path, "must be a finite time (seconds or an ISO 8601 duration)")])
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise ConfigError([Issue(path, f"must be {allowed}, got {value!r}")])


def load_config(path: Path | None = None, *, environ: Mapping[str, str] | None = None,
                root: Path | None = None) -> AgentConfig:
    env = os.environ if environ is None else environ
    chosen = path or (Path(env["BATCH_AGENT_CONFIG"]) if env.get("BATCH_AGENT_CONFIG") else None)
    if chosen is None and DEFAULT_CONFIG_PATH.is_file():
        chosen = DEFAULT_CONFIG_PATH
    cfg = AgentConfig()
    if chosen is not None:
        try:
            with chosen.open("rb") as file:
                info = os.fstat(file.fileno())
                data = tomllib.loads(file.read().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(chosen)!r} does not exist; fix --config or "
                              "BATCH_AGENT_CONFIG") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {str(chosen)!r}: {exc}") from None
        _check_secret_file(chosen, info, data)
        cfg = _apply(cfg, data, str(chosen))
    if env.get("BATCH_AGENT_ROOT"):
        cfg = replace(cfg, node=replace(cfg.node, root=Path(env["BATCH_AGENT_ROOT"])))
    if root is not None:
        cfg = replace(cfg, node=replace(cfg.node, root=root))
    if not cfg.node.root.is_absolute():
        cfg = replace(cfg, node=replace(cfg.node, root=cfg.node.root.absolute()))
    return cfg


def _secrets_in(data: Mapping[str, Any]) -> list[str]:
    storage = data.get("storage")
    if not isinstance(storage, dict):
        return []
    held = [f"storage.{k}" for k in _SECRET_KEYS if isinstance(storage.get(k), str) and storage[k]]
    connection = storage.get("connection_string")
    if isinstance(connection, str) and (m := _SECRET_IN_CONNECTION.search(connection)):
        held.append(f"storage.connection_string ({m.group(1)})")
    return held


def _check_secret_file(path: Path, info: os.stat_result, data: Mapping[str, Any]) -> None:
    """Refuse a config holding secrets that others may read or change (see the module docstring)."""
    held = _secrets_in(data)
    if not held:
        return
    what = f"it holds a secret ({', '.join(held)})"
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(f"config file {str(path)!r} is owned by uid {info.st_uid}, not by the agent's user "
                          f"(uid {os.geteuid()}) or root, and {what}; fix: chown {os.geteuid()} {path}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(f"config file {str(path)!r} is readable or writable by others (mode {mode:04o}) and "
                          f"{what}; fix: chmod 600 {path}")


def _apply(cfg: AgentConfig, data: Mapping[str, Any], source: str) -> AgentConfig:
    issues: list[Issue] = []
    updates: dict[str, Any] = {}
    for section, values in data.items():
        cls = _SECTIONS.get(section)
        if cls is None or not isinstance(values, dict):
            issues.append(Issue(section, f"unknown section; allowed: {', '.join(_SECTIONS)}"))
            continue
        known = {f.name: f.type for f in fields(cls)}
        changes: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                issues.append(Issue(f"{section}.{name}", f"unknown key; allowed: {', '.join(known)}"))
                continue
            try:
                changes[name] = _convert(section, name, known[name], value)
                _check_range(f"{section}.{name}", changes[name])
            except ConfigError as exc:
                issues.extend(exc.issues)
        updates[section] = replace(getattr(cfg, section), **changes)
    if issues:
        raise ConfigError(issues, source=source)
    return replace(cfg, source=source, **updates)


def read_key_file(path: Path, *, what: str = "account key file") -> str:
    """The text of a file holding a secret (the API account key), refused, as the config's
    secret check, when it is a link, not owned by the agent's user, or open to group or others.
    Checked on the open file (fstat). An error names the file and the fix, never the content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot open {what} {str(path)!r}: {exc.strerror} (a symlink is refused)") from None
    with open(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {str(path)!r} is not a regular file")
        if info.st_uid != os.geteuid():
            raise ConfigError(f"{what} {str(path)!r} is owned by uid {info.st_uid}, not by the agent's user "
                              f"(uid {os.geteuid()}); fix: chown {os.geteuid()} {path}")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(f"{what} {str(path)!r} is readable or writable by others (mode {mode:04o}); "
                              f"fix: chmod 600 {path}")
        data = file.read(64 * 1024)
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(path)!r} is not base64 text") from None
