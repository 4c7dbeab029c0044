"""``containerSettings.containerRunOptions`` -> Docker SDK ``containers.create`` arguments (§8.3).

Owns: splitting the option string (POSIX ``shlex``), ``$VAR`` / ``${VAR}`` expansion from the task
environment, and turning each ``docker create`` flag into docker-py 7.x keyword arguments, with a
``RunOptionsError`` naming the flag for anything it cannot honour (never a silently dropped flag).
Must not: import ``docker``, read files, look at the agent's own environment, contact the engine.
Plain data only: ``mounts``, ``device_requests`` and ``ulimits`` hold dicts keyed by the
``docker.types.Mount`` / ``DeviceRequest`` / ``Ulimit`` constructor arguments; the runner builds
the objects (``HostConfig`` converts ulimit and device-request dicts itself, not mounts).

Hand-written because the only parser of these flags is the docker CLI's own (Go). It is followed
here: ``--flag value``, ``--flag=value``, ``-e VALUE``, ``-eVALUE``, ``-e=VALUE``; ``--rm=false``;
a repeated scalar flag: the last wins. Decisions (§15.11): ``$VAR`` is expanded as a shell would,
except that a value is never word-split, and an unknown variable stays as written; ``-e NAME``
takes NAME from the task environment (left out when unset, as docker does); ``--entrypoint X`` is
``[X]`` (not split, as docker), ``""`` clears it; ``-v`` uses docker-py's dict form, because its
list form declares a bogus anonymous volume for modes such as ``:z``.

| docker flag                                | ``containers.create`` argument                    |
|--------------------------------------------|---------------------------------------------------|
| --rm                                       | none: ``RunOptions.remove`` (the agent removes)   |
| -e/--env, -l/--label, --sysctl, --tmpfs    | environment, labels, sysctls, tmpfs (dicts)       |
| -v/--volume SRC:DST[:MODE]                 | volumes {SRC: {bind, mode}} (``-v DST``: mounts)  |
| --mount, --gpus, --ulimit                  | mounts, device_requests, ulimits (lists of dicts) |
| --net/--network                            | network                                           |
| --shm-size, -m/--memory, --memory-swap     | shm_size, mem_limit, memswap_limit (int bytes)    |
| --cpus                                     | nano_cpus (int)                                   |
| -u/--user, -w/--workdir, --entrypoint      | user, working_dir, entrypoint (list)              |
| the others (``_TABLE``)                    | the SDK argument of the same meaning              |

``create_kwargs`` holds every parsed argument (user, working_dir, entrypoint, network too): the
runner applies it over its defaults, but merges ``environment``, ``labels``, ``volumes``,
``mounts`` and ``device_requests`` with its own values rather than replacing them.
"""

from __future__ import annotations

import csv
import ipaddress
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from agent import cmdline

_WHERE = "containerSettings.containerRunOptions"


class RunOptionsError(ValueError):
    """A run option cannot be honoured; ``option`` names the flag ("" when the string cannot be
    split), ``message`` says what is wrong and what is allowed."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        self.message = message
        super().__init__(f"{_WHERE}: {message}")


class _Invalid(ValueError):
    """A converter's complaint about one value; the parser adds the flag and the value."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The parsed ``containerRunOptions``."""

    create_kwargs: dict[str, Any]      # containers.create keyword arguments (see the module docstring)
    remove: bool                       # --rm
    user: str | None                   # -u/--user
    workdir: str | None                # -w/--workdir (overrides the Batch working directory)
    entrypoint: str | list[str] | None
    network: str | None
    display: tuple[str, ...]           # normalised flags as written, env values left out


# --- value converters: str -> SDK value, or _Invalid saying what is allowed ----------------------

Convert = Callable[[str], Any]


def _match(pattern: str, expected: str, convert: Convert = str) -> Convert:
    def check(v: str) -> Any:
        if not re.fullmatch(pattern, v, re.DOTALL):
            raise _Invalid(f"expected {expected}")
        return convert(v)
    return check


_text = _match(r".+", "a non-empty value")
_abspath = _match(r"/.*", "an absolute path")
_int = _match(r"-?\d+", "an integer", int)
_octal = _match(r"[0-7]{1,4}", "an octal mode, e.g. 1777", lambda v: int(v, 8))
_host_only = _match(r"host", "'host' (the only value the Docker SDK accepts)")
_PROPAGATION = "private|rprivate|shared|rshared|slave|rslave"
_propagation = _match(_PROPAGATION, f"one of {_PROPAGATION}")
_bool = _match(r"[01tTfF]|true|TRUE|True|false|FALSE|False", "true or false", lambda v: v[0] in "1tT")
_gpu_count = _match(r"all|[1-9]\d*", "'all' or a positive integer", lambda v: -1 if v == "all" else int(v))


def _size(v: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", v, re.IGNORECASE)
    if not m:
        raise _Invalid("expected a size: bytes, or a number with b, k, m, g, t or p (1024-based), e.g. 512m")
    return int(Fraction(m[1]) * 1024 ** ("_kmgtp".index(m[2].lower()) if m[2] else 0))


def _cpus(v: str) -> int:
    try:
        nano = Fraction(v) * 10**9
    except (ValueError, ZeroDivisionError):
        raise _Invalid("expected a number of CPUs, e.g. 0.5 or 2") from None
    if nano < 0 or nano.denominator != 1:
        raise _Invalid("expected a non-negative number of CPUs with at most 9 decimals")
    return int(nano)


def _pair(sep: str = "=", key: Convert = _text, optional: bool = False) -> Callable[[str], tuple[str, str]]:
    def split(v: str) -> tuple[str, str]:
        name, found, value = v.partition(sep)
        if not (found or optional):
            raise _Invalid(f"expected KEY{sep}VALUE")
        return key(name), value
    return split


_kv = _pair()


def _fields(v: str) -> list[str]:
    try:
        return next(csv.reader([v], strict=True), [])
    except csv.Error as exc:
        raise _Invalid(f"not a comma-separated list ({exc})") from None


def _ip(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise _Invalid("expected an IP address") from None


def _add_host(v: str) -> str:
    host, _, ip = v.partition("=") if "=" in v else v.partition(":")
    ip = ip.removeprefix("[").removesuffix("]")
    return f"{_text(host)}:{ip if ip == 'host-gateway' else _ip(ip)}"


_ULIMITS = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
            "rss", "rtprio", "rttime", "sigpending", "stack")


def _ulimit(v: str) -> dict[str, Any]:
    name, sep, limits = v.partition("=")
    if not sep or name not in _ULIMITS:
        raise _Invalid(f"expected NAME=SOFT[:HARD], NAME one of {', '.join(_ULIMITS)}")
    soft_text, has_hard, hard_text = limits.partition(":")
    soft = _int(soft_text)
    hard = _int(hard_text) if has_hard else soft
    if hard != -1 and soft > hard:
        raise _Invalid(f"the soft limit {soft} is above the hard limit {hard}")
    return {"name": name, "soft": soft, "hard": hard}


def _device(v: str) -> str:
    parts = v.split(":")
    perms = parts.pop() if len(parts) > 1 and re.fullmatch(r"(?!.*(.).*\1)[rwm]{1,3}", parts[-1]) else "rwm"
    if not 1 <= len(parts) <= 2 or not all(p.startswith("/") for p in parts):
        raise _Invalid("expected HOST_PATH[:CONTAINER_PATH][:PERMISSIONS] (absolute paths; some of rwm)")
    return f"{parts[0]}:{parts[-1]}:{perms}"  # docker-py reads a second part as the container path


def _security_opt(v: str) -> str:
    if v == "no-new-privileges":
        return v
    key, sep, value = v.partition("=") if "=" in v else v.partition(":")
    if not sep or not value:
        raise _Invalid("expected KEY=VALUE (label, apparmor, seccomp, ...) or no-new-privileges")
    if key == "seccomp" and value not in ("unconfined", "builtin"):
        raise _Invalid("a seccomp profile file is read by the docker CLI, not by the agent; "
                       "use seccomp=unconfined or seccomp=builtin")
    return v


_VOLUME_MODES = {"ro", "rw", "z", "Z", "nocopy", *_PROPAGATION.split("|")}


def _volume(v: str) -> tuple[str, str, str] | dict[str, Any]:
    parts = v.split(":")
    if len(parts) == 1:
        return {"type": "volume", "source": None, "target": _abspath(v)}  # anonymous volume
    if len(parts) > 3:
        raise _Invalid("expected SOURCE:TARGET[:MODE] or TARGET")
    source, target, mode = parts[0], _abspath(parts[1]), parts[2] if len(parts) == 3 else "rw"
    if not (source.startswith("/") or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]+", source)):
        raise _Invalid("the source must be an absolute host path or a volume name")
    if not set(mode.split(",")) <= _VOLUME_MODES:
        raise _Invalid(f"MODE is a comma-separated list of {', '.join(sorted(_VOLUME_MODES))}")
    return source, target, mode


# --mount field -> (Mount argument, converter), as the docker CLI reads them; volume-label and
# volume-opt collect KEY=VALUE pairs.
_MOUNT_FIELDS: dict[str, tuple[str, Convert]] = {
    "type": ("type", _match("bind|volume|tmpfs", "bind, volume or tmpfs")),
    "source": ("source", _text), "src": ("source", _text),
    "target": ("target", _abspath), "destination": ("target", _abspath), "dst": ("target", _abspath),
    "readonly": ("read_only", _bool), "ro": ("read_only", _bool),
    "consistency": ("consistency", _match("default|consistent|cached|delegated", "a consistency mode")),
    "bind-propagation": ("propagation", _propagation),
    "volume-nocopy": ("no_copy", _bool),
    "volume-subpath": ("subpath", _text),
    "volume-driver": ("driver", _text),
    "tmpfs-size": ("tmpfs_size", _size),
    "tmpfs-mode": ("tmpfs_mode", _octal),
}


def _mount(v: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "volume", "source": None, "target": None, "read_only": False}
    pairs: dict[str, dict[str, str]] = {"volume-label": {}, "volume-opt": {}}
    keys = []
    for field in _fields(v):
        key, sep, value = field.partition("=")
        key = key.strip().lower()
        keys.append(key)
        if not sep and key in ("readonly", "ro", "volume-nocopy"):
            value = "true"
        elif not sep:
            raise _Invalid(f"field {field!r} must be KEY=VALUE")
        if key in pairs:
            pairs[key].__setitem__(*_kv(value))
        elif key in _MOUNT_FIELDS:
            name, convert = _MOUNT_FIELDS[key]
            out[name] = convert(value)
        else:
            raise _Invalid(f"unknown field {key!r} (allowed: {', '.join([*_MOUNT_FIELDS, *pairs])})")
    kind = out["type"]
    if wrong := [k for k in keys if k.split("-")[0] in ("bind", "volume", "tmpfs") and k[:len(kind)] != kind]:
        raise _Invalid(f"{', '.join(wrong)} cannot be used with type={kind}")
    if out["target"] is None:
        raise _Invalid("target=PATH is required")
    if (kind == "bind") != (out["source"] is not None) and kind != "volume":
        raise _Invalid("type=bind needs source=HOST_PATH; type=tmpfs takes no source")
    if pairs["volume-label"]:
        out["labels"] = pairs["volume-label"]
    if "driver" in out or pairs["volume-opt"]:  # a plain dict in DriverConfig's shape
        out["driver_config"] = {"Name": out.pop("driver", "local"), "Options": pairs["volume-opt"]}
    return out


# --gpus key -> (DeviceRequest argument, converter), as the docker CLI (GpuOpts) reads them.
_GPU_FIELDS: dict[str, tuple[str, Convert]] = {
    "count": ("count", _gpu_count), "driver": ("driver", _text),
    "device": ("device_ids", lambda v: v.split(",")),
    "capabilities": ("capabilities", lambda v: v.split(",")),
    "options": ("options", lambda v: dict(map(_kv, _fields(v)))),
}


def _gpus(v: str) -> dict[str, Any]:
    req: dict[str, Any] = {}
    seen: set[str] = set()
    for field in _fields(v):
        key, sep, value = field.partition("=")
        if key in seen:
            raise _Invalid(f"{key!r} is given twice")
        seen.add(key)
        if not sep:
            seen.add("count")
            req["count"] = _gpu_count(key)
        elif key in _GPU_FIELDS:
            name, convert = _GPU_FIELDS[key]
            req[name] = convert(value)
        else:
            raise _Invalid(f"unknown key {key!r} (allowed: all, N, {'=, '.join(_GPU_FIELDS)}=)")
    if "count" in seen and "device_ids" in req:
        raise _Invalid("a count and device= exclude each other; quote a device list: '\"device=0,1\"'")
    if "device_ids" not in req:
        req.setdefault("count", 1)
    req["capabilities"] = [[*(c for c in req.get("capabilities", []) if c != "gpu"), "gpu"]]
    return req


# --- the flag table ------------------------------------------------------------------------------

Apply = Callable[[dict[str, Any], str, Mapping[str, str]], None]


@dataclass(frozen=True, slots=True)
class _Flag:
    names: tuple[str, ...]       # the short name first where there is one; the last is displayed
    apply: Apply                 # (create kwargs being built, value, task env)
    metavar: str | None          # None: a boolean flag
    secret: bool = False         # display the name only (env values may be secrets)


def _set(key: str, convert: Convert = _text) -> Apply:
    return lambda kw, v, env: kw.__setitem__(key, convert(v))


def _add(key: str, convert: Convert = _text) -> Apply:
    return lambda kw, v, env: kw.setdefault(key, []).append(convert(v))


def _put(key: str, convert: Callable[[str], tuple[str, Any]]) -> Apply:
    return lambda kw, v, env: kw.setdefault(key, {}).__setitem__(*convert(v))


def _apply_env(kw: dict[str, Any], v: str, env: Mapping[str, str]) -> None:
    name, sep, value = v.partition("=")
    if not name:
        raise _Invalid("expected NAME=VALUE or NAME")
    if sep or name in env:
        kw.setdefault("environment", {})[name] = value if sep else env[name]


def _apply_volume(kw: dict[str, Any], v: str, env: Mapping[str, str]) -> None:
    spec = _volume(v)
    if isinstance(spec, dict):
        kw.setdefault("mounts", []).append(spec)
        return
    source, target, mode = spec
    volumes = kw.setdefault("volumes", {})
    if source in volumes:
        raise _Invalid(f"{source} is already mounted by an earlier -v; use --mount for the second target")
    volumes[source] = {"bind": target, "mode": mode}


def _apply_ulimit(kw: dict[str, Any], v: str, env: Mapping[str, str]) -> None:
    new = _ulimit(v)
    kw["ulimits"] = [u for u in kw.get("ulimits", []) if u["name"] != new["name"]] + [new]


def _apply_network(kw: dict[str, Any], v: str, env: Mapping[str, str]) -> None:
    if kw.get("network", v) != v:
        raise _Invalid("a second network: the Docker SDK creates a container on one network only")
    kw["network"] = _text(v)


_SIZE = "SIZE (e.g. 512m, 1g)"
_TABLE: tuple[_Flag, ...] = (
    _Flag(("--rm",), _set("remove", _bool), None),
    _Flag(("-e", "--env"), _apply_env, "NAME[=VALUE]", secret=True),
    _Flag(("-v", "--volume"), _apply_volume, "SOURCE:TARGET[:MODE]"),
    _Flag(("--mount",), _add("mounts", _mount), "type=bind|volume|tmpfs,source=...,target=...[,readonly]"),
    _Flag(("--net", "--network"), _apply_network, "NETWORK"),
    _Flag(("--gpus",), _add("device_requests", _gpus), "all|N|'\"device=0,1\"'"),
    _Flag(("--shm-size",), _set("shm_size", _size), _SIZE),
    _Flag(("--ipc",), _set("ipc_mode"), "MODE"),
    _Flag(("--pid",), _set("pid_mode"), "MODE"),
    _Flag(("--uts",), _set("uts_mode", _host_only), "host"),
    _Flag(("--userns",), _set("userns_mode", _host_only), "host"),
    _Flag(("-u", "--user"), _set("user"), "USER[:GROUP]"),
    _Flag(("-w", "--workdir"), _set("working_dir", _abspath), "ABSOLUTE_PATH"),
    _Flag(("--entrypoint",), _set("entrypoint", lambda v: [v]), "PROGRAM"),
    _Flag(("--cpus",), _set("nano_cpus", _cpus), "NUMBER"),
    _Flag(("-c", "--cpu-shares"), _set("cpu_shares", _int), "INTEGER"),
    _Flag(("--cpu-period",), _set("cpu_period", _int), "MICROSECONDS"),
    _Flag(("--cpu-quota",), _set("cpu_quota", _int), "MICROSECONDS"),
    _Flag(("--cpuset-cpus",), _set("cpuset_cpus"), "CPUS (e.g. 0-3,6)"),
    _Flag(("--cpuset-mems",), _set("cpuset_mems"), "NODES (e.g. 0,1)"),
    _Flag(("-m", "--memory"), _set("mem_limit", _size), _SIZE),
    _Flag(("--memory-swap",), _set("memswap_limit", lambda v: _size(v) if v != "-1" else -1), "SIZE or -1"),
    _Flag(("--memory-reservation",), _set("mem_reservation", _size), _SIZE),
    _Flag(("--pids-limit",), _set("pids_limit", _int), "INTEGER"),
    _Flag(("--ulimit",), _apply_ulimit, "NAME=SOFT[:HARD]"),
    _Flag(("--oom-score-adj",), _set("oom_score_adj", _int), "INTEGER"),
    _Flag(("--cap-add",), _add("cap_add"), "CAPABILITY"),
    _Flag(("--cap-drop",), _add("cap_drop"), "CAPABILITY"),
    _Flag(("--privileged",), _set("privileged", _bool), None),
    _Flag(("--security-opt",), _add("security_opt", _security_opt), "KEY=VALUE"),
    _Flag(("--device",), _add("devices", _device), "HOST[:CONTAINER][:PERMISSIONS]"),
    _Flag(("--device-cgroup-rule",), _add("device_cgroup_rules"), "RULE"),
    _Flag(("--tmpfs",), _put("tmpfs", _pair(":", _abspath, optional=True)), "PATH[:OPTIONS]"),
    _Flag(("--read-only",), _set("read_only", _bool), None),
    _Flag(("--init",), _set("init", _bool), None),
    _Flag(("--runtime",), _set("runtime"), "RUNTIME"),
    _Flag(("-h", "--hostname"), _set("hostname"), "NAME"),
    _Flag(("--domainname",), _set("domainname"), "NAME"),
    _Flag(("--add-host",), _add("extra_hosts", _add_host), "HOST:IP"),
    _Flag(("--dns",), _add("dns", _ip), "IP"),
    _Flag(("--dns-search",), _add("dns_search"), "DOMAIN"),
    _Flag(("--dns-option",), _add("dns_opt"), "OPTION"),
    _Flag(("-l", "--label"), _put("labels", _pair(optional=True)), "KEY[=VALUE]"),
    _Flag(("--group-add",), _add("group_add"), "GROUP"),
    _Flag(("--sysctl",), _put("sysctls", _kv), "KEY=VALUE"),
    _Flag(("--volumes-from",), _add("volumes_from"), "CONTAINER[:ro|rw]"),
    _Flag(("--stop-signal",), _set("stop_signal"), "SIGNAL"),
    _Flag(("--platform",), _set("platform"), "OS[/ARCH[/VARIANT]]"),
)
_FLAGS: dict[str, _Flag] = {name: flag for flag in _TABLE for name in flag.names}
SUPPORTED_OPTIONS: tuple[str, ...] = tuple("/".join(flag.names) for flag in _TABLE)
_REFUSED = {
    "--name": "the agent names the container after the task",
    "--env-file": "the file would be read by the docker CLI; use -e or environmentSettings",
    "--label-file": "the file would be read by the docker CLI; use -l/--label",
    "--stop-timeout": "the agent's own stop grace period applies",
}


# --- splitting -----------------------------------------------------------------------------------

_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Expand $VAR / ${VAR} known to ``env`` outside single quotes, quoted so it stays one word.

    Not ``agent.patterns.expand_vars``: that one is plain text substitution, blind to quoting.
    """
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        m = _VAR.match(text, i) if c == "$" and quote != "'" else None
        if m and (name := m[1] or m[2]) in env:
            value = env[name]
            out.append(re.sub(r'(["\\])', r"\\\1", value) if quote else shlex.quote(value))
            i = m.end()
            continue
        if c == "\\" and quote != "'":
            out.append(text[i:i + 2])
            i += 2
            continue
        if c in "'\"" and quote in ("", c):
            quote = "" if quote else c
        out.append(c)
        i += 1
    return "".join(out)


def _split(token: str) -> tuple[str, str | None]:
    """A flag token -> (flag name, the value written in the same token, or None)."""
    if token.startswith("--"):
        name, sep, value = token.partition("=")
        return name, value if sep else None
    rest = token[2:]
    return token[:2], (rest.removeprefix("=") if rest else None)


def parse_run_options(text: str | None, env: Mapping[str, str]) -> RunOptions:
    """Parse ``containerRunOptions``; ``env`` is the task environment (for ``$VAR`` and ``-e NAME``)."""
    try:
        raw = cmdline.split(text or "")
        tokens = cmdline.split(_expand(text or "", env))
    except ValueError as exc:
        raise RunOptionsError("", f"cannot split into arguments ({exc}); quote as in a POSIX shell") from None
    assert len(raw) == len(tokens), "an expanded value is quoted, so the word count cannot change"
    kw: dict[str, Any] = {}
    display: list[str] = []
    i = 0
    while i < len(tokens):
        token, raw_token = tokens[i], raw[i]
        i += 1
        if not token.startswith("-") or token in ("-", "--"):
            raise RunOptionsError(raw_token, f"unexpected argument {raw_token!r}: only options belong here "
                                  "(the image is imageName, the command is commandLine)")
        name, value = _split(token)
        flag = _FLAGS.get(name)
        if flag is None:
            reason = _REFUSED.get(name)
            raise RunOptionsError(name, f"option {name!r} is not allowed: {reason}" if reason else
                                  f"unsupported option {name!r} (supported: {', '.join(SUPPORTED_OPTIONS)})")
        raw_value = _split(raw_token)[1] if raw_token.startswith(name) else raw_token  # flag in a $VAR
        if value is None and flag.metavar is not None:
            if i == len(tokens) or _split(tokens[i])[0] in _FLAGS:
                raise RunOptionsError(name, f"{name} needs a value: {name} {flag.metavar}")
            value, raw_value = tokens[i], raw[i]
            i += 1
        try:
            flag.apply(kw, "true" if value is None else value, env)
        except _Invalid as exc:
            shown = "" if flag.secret else f" {raw_value!r}"  # as written: no expanded secrets
            raise RunOptionsError(name, f"{name}{shown}: {exc}") from None
        if flag.secret:
            display.append(f"{flag.names[0]} {(value or '').partition('=')[0]}")
        elif flag.metavar is None:
            display.append(flag.names[-1] if _bool(value or "true") else f"{flag.names[-1]}=false")
        else:
            display.append(f"{flag.names[-1]}={raw_value}")
    remove = bool(kw.pop("remove", False))
    return RunOptions(create_kwargs=kw, remove=remove, user=kw.get("user"), workdir=kw.get("working_dir"),
                      entrypoint=kw.get("entrypoint"), network=kw.get("network"), display=tuple(display))
