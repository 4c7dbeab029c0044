"""Task user identities (§3.1 of the semantics doc): which Linux account runs a task.

Owns: mapping a Batch ``userIdentity`` and a task kind to a ``TaskUser``; creating the
auto-user accounts with ``groupadd`` / ``useradd`` (under a file lock, because parallel
tasks would otherwise race on /etc/passwd); the shared dir's mode. Must not: start task
processes, or create anything when only describing (``describe_user`` is read-only).
It calls shadow-utils directly because no maintained Python library manages local
accounts.

Rules
- Agent not root: every task runs as the agent's own user. The ``TaskUser`` still carries
  the identity Batch would have used (``AZ_BATCH_TASK_USER_IDENTITY``).
- Defaults: the start task runs as ``_azbatchtask_start`` (``TaskNonAdmin``); every other kind,
  job release included, runs as the pool non-admin ``_azbatch`` (``PoolNonAdmin``). For job
  release this is UNCONFIRMED.
- ``autoUser`` scope defaults to pool and elevation to nonadmin (REST defaults).

Decisions on UNCONFIRMED points
- Admin auto-users (pool or task scope) run as root. Batch's sudo-capable account names are
  unknown; root gives the same powers. ``admin_group`` is kept for a future sudo account.
  The identities are ``PoolAdmin`` / ``TaskAdmin``.
- Per-task accounts are ``_azbatchtask_<n>``. ``n`` is one above the highest ``n`` ever used:
  the state file and the existing accounts are both checked, so ``n`` is never reused and a
  new task never inherits an old task's uid and files. The retries of one task (same
  ``task_key``) share its account. ``release_task_account`` deletes it with the task's
  directory (retention, task or job delete), only once no process of its uid is left; its
  number stays used in the state file (``"<key>": null`` is not written: the name is kept
  under a ``released:`` key) so it is never handed out again.
- A named user (``username``) whose account does not exist is a task failure, not an
  exception. The JSON is valid; the account is missing on this node. The value is
  ``FailureInfo.user("UserNotFound", ...)``, a code of this agent (Batch rejects such a task
  when it is submitted). The identity of a named user is its account name.
- The shared dir is mode 1777, like /tmp. Every task user can create files there, named
  users included (they are not in ``_azbatchgrp``), and only a file's owner can delete it.
- Every auto-user has ``_azbatchgrp`` as its primary group (as on Batch), so the group grants
  nothing private: task dirs are kept apart by their owner bits (``agent.hooks.taskdir``).
- The account state file (``task-users.json``) is read and replaced relative to its directory's
  fd, after ``agent.nodefs.open_trusted`` checked that no other user can change that directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import grp
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig
from agent.errors import RunnerError
from agent.nodefs import create_file, ensure_dir, open_trusted
from agent.runner import TaskUser
from agent.spec import UserIdentity
from agent.status import FailureInfo

KINDS = frozenset({"task", "jobmanager", "jobpreparation", "jobrelease", "start"})
SHARED_DIR_MODE = 0o1777
_MAX_NAME = 32                  # useradd's limit on Linux account names
_STATE = "task-users.json"
_STATE_TMP = "task-users.tmp"


@dataclass(frozen=True, slots=True)
class UserPolicy:
    """How identities map to accounts on this node."""

    agent_is_root: bool
    pool_nonadmin: str = "_azbatch"
    task_prefix: str = "_azbatchtask_"
    group: str = "_azbatchgrp"
    admin_group: str = "_azbatchsudogrp"
    create_accounts: bool = True
    state_dir: Path = Path("/var/lib/batch-agent")     # task-users.json
    # Accounts are machine-wide, so is the lock: every agent on the machine, whatever its
    # node root, must see it. /run is writable by root only (not /run/lock: anyone could hold that).
    lock_path: Path = Path("/run/batch-agent/users.lock")


@dataclass(frozen=True, slots=True)
class _Choice:
    """What Batch would use: ``account`` None means a new per-task account."""

    source: str                 # for people: "autoUser pool/nonadmin", "user 'bob'"
    identity: str               # AZ_BATCH_TASK_USER_IDENTITY
    account: str | None
    admin: bool = False
    named: bool = False


def resolve_user(identity: UserIdentity | None, kind: str, *, policy: UserPolicy,
                 task_key: str) -> TaskUser | FailureInfo:
    """The account a task of ``kind`` runs as; creates auto-user accounts when allowed.

    ``task_key`` names the task uniquely on the node (e.g. ``<job>/<task>``). The retries of
    a task-scope task share the account allocated for that key. A missing named account is
    returned as a ``FailureInfo``. A missing auto-user account while ``create_accounts`` is
    off, or a failed ``useradd``, is the agent's fault and raises ``RunnerError``.
    """
    choice = _choose(identity, kind, policy)
    if not policy.agent_is_root:
        return TaskUser(name=_agent_user(), uid=None, gid=None, identity=choice.identity)
    if choice.named:
        assert choice.account is not None
        entry = _lookup(choice.account)
        if entry is None:
            return FailureInfo.user("UserNotFound", "The task's user account does not exist on the node",
                                    Message=f"userIdentity.username: no account {choice.account!r}; "
                                            "create it or use autoUser", UserName=choice.account)
    elif choice.account is None:
        entry = _task_account(task_key, policy)
    else:
        entry = _lookup(choice.account) or _create(choice.account, policy)
    return TaskUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid,
                    groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
                    identity=choice.identity, elevated=choice.admin or entry.pw_uid == 0)


def describe_user(identity: UserIdentity | None, kind: str, policy: UserPolicy) -> str:
    """One line for ``plan``: which account a task would run as. Reads only; creates nothing."""
    choice = _choose(identity, kind, policy)
    account = choice.account or f"a new per-task account {policy.task_prefix}<n>"
    if not policy.agent_is_root:
        return f"agent is not root: runs as {_agent_user()} (Batch would use {account}, {choice.identity})"
    entry = _lookup(choice.account) if choice.account else None
    if entry is not None:
        elevated = ", elevated" if choice.admin or entry.pw_uid == 0 else ""
        target = f"{account} (uid {entry.pw_uid}{elevated})"
    elif choice.named:
        target = f"{account}: no such account on this node, the task would fail with UserNotFound"
    elif policy.create_accounts:
        target = f"{account} (created on first run)"
    else:
        target = f"{account} (missing, and account creation is off)"
    return f"{choice.source} -> {target}"


def ensure_shared_dir_permissions(path: Path) -> None:
    """Make the node's shared dir writable by every task user (mode 1777, see module doc).

    Its parent must pass ``agent.nodefs.open_trusted``; the mode is set on the opened dir."""
    parent = open_trusted(path.parent, "node root")
    try:
        os.close(ensure_dir(parent, path.name, SHARED_DIR_MODE))
    finally:
        os.close(parent)


def _choose(identity: UserIdentity | None, kind: str, policy: UserPolicy) -> _Choice:
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {sorted(KINDS)}")
    if identity is not None and identity.username is not None:  # the spec refuses an empty one
        return _Choice(f"user {identity.username!r}", identity.username, identity.username, named=True)
    auto = identity.auto_user if identity is not None else None
    if auto is None:
        scope, admin, default = ("task" if kind == "start" else "pool"), False, "default "
    else:
        scope, admin, default = auto.scope or "pool", auto.elevation_level == "admin", ""
    source = f"{default}autoUser {scope}/{'admin' if admin else 'nonadmin'}"
    identity_name = f"{scope.capitalize()}{'Admin' if admin else 'NonAdmin'}"
    if admin:
        account: str | None = "root"
    elif scope == "pool":
        account = policy.pool_nonadmin
    else:
        account = f"{policy.task_prefix}start" if kind == "start" else None
    return _Choice(source, identity_name, account, admin=admin)


def _agent_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:                # a uid without a passwd entry (containers)
        return getpass.getuser()


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


@contextlib.contextmanager
def _locked(policy: UserPolicy) -> Iterator[None]:
    policy.lock_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(policy.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                # releases the lock


def _create(name: str, policy: UserPolicy) -> pwd.struct_passwd:
    with _locked(policy):
        return _create_locked(name, policy)


def _create_locked(name: str, policy: UserPolicy) -> pwd.struct_passwd:
    """Create ``name`` in ``policy.group`` unless it exists. The caller holds the lock."""
    existing = _lookup(name)
    if existing is not None:
        return existing
    if not policy.create_accounts:
        raise RunnerError(f"the account {name} does not exist and account creation is off; "
                          "create it or set tasks.create_users = true")
    if len(name) > _MAX_NAME:
        raise RunnerError(f"account name {name!r} is longer than {_MAX_NAME} characters")
    sbin = "/usr/sbin:/sbin:/usr/bin:/bin"
    try:
        grp.getgrnam(policy.group)
    except KeyError:
        _run([shutil.which("groupadd", path=sbin) or "groupadd", policy.group], name)
    shell = shutil.which("nologin", path=sbin) or "/bin/false"
    _run([shutil.which("useradd", path=sbin) or "useradd", "--no-create-home", "--shell", shell,
          "--gid", policy.group, name], name)
    entry = _lookup(name)
    if entry is None:
        raise RunnerError(f"useradd reported success but the account {name} does not exist")
    return entry


def _run(argv: list[str], account: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    # Exit 9 = "already exists": created meanwhile outside the lock (an admin, an image script).
    if done.returncode not in (0, 9):
        raise RunnerError(f"cannot create the account {account}: {' '.join(argv)} exited "
                          f"{done.returncode}: {done.stderr.strip()}")


def _task_account(task_key: str, policy: UserPolicy) -> pwd.struct_passwd:
    """The per-task account of ``task_key``, allocated and created on first use."""
    with _locked(policy):
        state = open_trusted(policy.state_dir, "state directory")
        try:
            name = _allocate(state, task_key, policy)
        except OSError as exc:
            raise RunnerError(f"cannot record the task's account in {policy.state_dir / _STATE}: "
                              f"{exc.strerror or exc}") from exc
        finally:
            os.close(state)
        return _create_locked(name, policy)


def _allocate(state: int, task_key: str, policy: UserPolicy) -> str:
    """The account name of ``task_key`` in the state file (at the dir fd ``state``), added if new."""
    accounts = _read_accounts(state)
    name = accounts.get(task_key)
    if name is None:
        used = [*accounts.values(), *(entry.pw_name for entry in pwd.getpwall())]
        name = f"{policy.task_prefix}{1 + max(_numbers(used, policy.task_prefix), default=0)}"
        accounts[task_key] = name
        fd = create_file(state, _STATE_TMP, 0o600)
        with open(fd, "w") as tmp:
            tmp.write(json.dumps(accounts, indent=1, sort_keys=True))
        os.replace(_STATE_TMP, _STATE, src_dir_fd=state, dst_dir_fd=state)
    return name


def _read_accounts(state: int) -> dict[str, str]:
    try:
        fd = os.open(_STATE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=state)
    except FileNotFoundError:
        return {}
    with open(fd) as f:
        accounts: dict[str, str] = json.loads(f.read())
    return accounts


def _numbers(names: list[str], prefix: str) -> Iterator[int]:
    for name in names:
        suffix = name[len(prefix):]
        if name.startswith(prefix) and suffix.isdigit():
            yield int(suffix)


def policy_from_config(config: AgentConfig) -> UserPolicy:
    """The user policy the agent config asks for, for the user the agent runs as."""
    tasks = config.tasks
    return UserPolicy(agent_is_root=os.geteuid() == 0, pool_nonadmin=tasks.pool_nonadmin_user,
                      task_prefix=tasks.task_user_prefix, group=tasks.user_group,
                      create_accounts=tasks.create_users, state_dir=config.node.root / "volatile")


def plan_user(identity: UserIdentity | None, kind: str, policy: UserPolicy) -> TaskUser:
    """The TaskUser ``plan`` shows: looked up when the account exists, never created."""
    choice = _choose(identity, kind, policy)
    if not policy.agent_is_root:
        return TaskUser(name=_agent_user(), uid=None, gid=None, identity=choice.identity)
    name = choice.account or f"{policy.task_prefix}<n>"
    entry = _lookup(name) if choice.account else None
    if entry is None:
        return TaskUser(name=name, uid=None, gid=None, identity=choice.identity, elevated=choice.admin)
    return TaskUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, identity=choice.identity,
                    elevated=choice.admin or entry.pw_uid == 0)


def release_task_account(task_key: str, policy: UserPolicy) -> bool:
    """Delete the per-task account of ``task_key`` (``userdel``) if it has one and no process of
    its uid remains. True when nothing of it is left. The name stays reserved in the state file."""
    if not policy.agent_is_root:
        return True
    with _locked(policy):
        state = open_trusted(policy.state_dir, "state directory")
        try:
            accounts = _read_accounts(state)
            name = accounts.get(task_key)
            if name is None:
                return True
            entry = _lookup(name)
            if entry is not None:
                if _uid_has_processes(entry.pw_uid):
                    return False
                sbin = "/usr/sbin:/sbin:/usr/bin:/bin"
                done = subprocess.run([shutil.which("userdel", path=sbin) or "userdel", name],
                                      capture_output=True, text=True, check=False)
                if done.returncode not in (0, 6):       # 6: no such user (deleted meanwhile)
                    raise RunnerError(f"cannot delete the account {name}: userdel exited "
                                      f"{done.returncode}: {done.stderr.strip()}")
            del accounts[task_key]
            accounts[f"released:{name}"] = name         # keeps the number from being reused
            fd = create_file(state, _STATE_TMP, 0o600)
            with open(fd, "w") as tmp:
                tmp.write(json.dumps(accounts, indent=1, sort_keys=True))
            os.replace(_STATE_TMP, _STATE, src_dir_fd=state, dst_dir_fd=state)
            return True
        finally:
            os.close(state)


def _uid_has_processes(uid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}").st_uid == uid:
                return True
    return False
