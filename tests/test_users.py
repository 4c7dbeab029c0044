"""Task user identities: real accounts (useradd), real processes that report who they run as.

These tests run as root, here and in CI. They create the auto-user accounts a Batch node has
(``_azbatch``, ``_azbatchgrp``, ``_azbatchtask_start``) and leave them in place. Per-task
accounts and the test's own named accounts and groups are deleted afterwards.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ConfigError, RunnerError
from agent.process import ProcessRunner
from agent.runner import RunHandle, RunRequest, TaskUser
from agent.spec import UserIdentity
from agent.status import ErrorCategory, FailureInfo
from agent.users import (
    SHARED_DIR_MODE,
    UserPolicy,
    describe_user,
    ensure_shared_dir_permissions,
    resolve_user,
)


def identity(data: dict[str, Any] | None) -> UserIdentity | None:
    return None if data is None else UserIdentity.model_validate(data)


@pytest.fixture(autouse=True)
def as_root() -> None:
    assert os.geteuid() == 0, "test_users needs root (useradd, user switching): run it as root, as CI does"


@pytest.fixture
def policy(tmp_path: Path) -> UserPolicy:
    return UserPolicy(agent_is_root=True, state_dir=tmp_path / "state")


@pytest.fixture
def task_dir(node_root: Path) -> Path:
    """A task dir every task user can traverse (tmp_path is root-only)."""
    (node_root / "task" / "wd").mkdir(mode=0o755, parents=True)
    (node_root / "task").chmod(0o755)
    return node_root / "task"


@pytest.fixture
def made() -> Iterator[list[str]]:
    """Accounts a test created; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def named_account() -> Iterator[tuple[str, int]]:
    """A named account with a supplementary group: (name, supplementary gid)."""
    name, group = f"batest{secrets.token_hex(3)}", f"batestg{secrets.token_hex(3)}"
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(["useradd", "--no-create-home", "--groups", group, name], check=True)
    yield name, grp.getgrnam(group).gr_gid
    subprocess.run(["userdel", name], check=False)
    subprocess.run(["groupdel", group], check=False)
    subprocess.run(["groupdel", name], check=False, capture_output=True)   # its user group, if any


async def run_as(user: TaskUser, task_dir: Path, *argv: str) -> str:
    runner = ProcessRunner()
    handle = await runner.start(RunRequest(
        job_id="job", task_id="users", attempt=1, argv=argv, env={"PATH": "/usr/bin:/bin"},
        cwd=task_dir / "wd", stdout=task_dir / "stdout.txt", stderr=task_dir / "stderr.txt", user=user))
    assert isinstance(handle, RunHandle), handle
    result = await runner.wait(handle)
    await runner.cleanup(handle)
    assert result.exit_code == 0, (task_dir / "stderr.txt").read_text()
    return (task_dir / "stdout.txt").read_text()


def resolved(data: dict[str, Any] | None, kind: str, policy: UserPolicy, key: str = "job/task") -> TaskUser:
    user = resolve_user(identity(data), kind, policy=policy, task_key=key)
    assert isinstance(user, TaskUser), user
    return user


# -- who runs it ----------------------------------------------------------------------------

async def test_pool_nonadmin_task_really_runs_as_azbatch(policy: UserPolicy, task_dir: Path) -> None:
    user = resolved(None, "task", policy)
    entry = pwd.getpwnam("_azbatch")
    assert user == TaskUser(name="_azbatch", uid=entry.pw_uid, gid=grp.getgrnam("_azbatchgrp").gr_gid,
                            groups=user.groups, identity="PoolNonAdmin", elevated=False)
    assert entry.pw_gid == user.gid
    out = await run_as(user, task_dir, "sh", "-c", "id -u; id -g; id -un")
    assert out.split() == [str(entry.pw_uid), str(user.gid), "_azbatch"]
    assert (task_dir / "stdout.txt").stat().st_uid == entry.pw_uid


@pytest.mark.parametrize(("kind", "name", "ident"), [
    ("task", "_azbatch", "PoolNonAdmin"),
    ("jobmanager", "_azbatch", "PoolNonAdmin"),
    ("jobpreparation", "_azbatch", "PoolNonAdmin"),
    ("jobrelease", "_azbatch", "PoolNonAdmin"),
    ("start", "_azbatchtask_start", "TaskNonAdmin"),
])
def test_default_account_per_kind(policy: UserPolicy, kind: str, name: str, ident: str) -> None:
    user = resolved(None, kind, policy)
    assert (user.name, user.identity, user.elevated) == (name, ident, False)
    assert user.uid == pwd.getpwnam(name).pw_uid


async def test_task_scope_gets_its_own_account(policy: UserPolicy, task_dir: Path,
                                               made: list[str]) -> None:
    scope = {"autoUser": {"scope": "task"}}
    first = resolved(scope, "task", policy, key="job/a")
    second = resolved(scope, "task", policy, key="job/b")
    made += [first.name, second.name]
    assert first.name != second.name and first.uid != second.uid
    for user in (first, second):
        assert user.name.startswith("_azbatchtask_") and user.name[len("_azbatchtask_"):].isdigit()
        assert user.identity == "TaskNonAdmin"
        assert user.gid == grp.getgrnam("_azbatchgrp").gr_gid
    assert resolved(scope, "task", policy, key="job/a") == first, "a retry keeps the task's account"
    assert await run_as(second, task_dir, "id", "-un") == f"{second.name}\n"


def test_task_scope_numbers_are_never_reused(policy: UserPolicy, tmp_path: Path, made: list[str]) -> None:
    scope = {"autoUser": {"scope": "task"}}
    first = resolved(scope, "task", policy, key="job/a")
    made.append(first.name)
    fresh_state = UserPolicy(agent_is_root=True, state_dir=tmp_path / "other-state")
    second = resolved(scope, "task", fresh_state, key="job/a")
    made.append(second.name)
    assert int(second.name.rsplit("_", 1)[1]) > int(first.name.rsplit("_", 1)[1])


def test_parallel_tasks_get_distinct_accounts(policy: UserPolicy, made: list[str]) -> None:
    scope = {"autoUser": {"scope": "task"}}
    with ThreadPoolExecutor(8) as pool:
        users = list(pool.map(lambda n: resolved(scope, "task", policy, key=f"job/p{n}"), range(8)))
    made += [user.name for user in users]
    assert len({user.name for user in users}) == 8
    assert len({user.uid for user in users}) == 8


@pytest.mark.parametrize(("scope", "ident"), [("pool", "PoolAdmin"), ("task", "TaskAdmin")])
async def test_admin_runs_as_root(policy: UserPolicy, task_dir: Path, scope: str, ident: str) -> None:
    user = resolved({"autoUser": {"scope": scope, "elevationLevel": "admin"}}, "task", policy)
    assert (user.name, user.uid, user.gid, user.identity, user.elevated) == ("root", 0, 0, ident, True)
    assert await run_as(user, task_dir, "id", "-u") == "0\n"


async def test_named_user_runs_as_that_account(policy: UserPolicy, task_dir: Path,
                                               named_account: tuple[str, int]) -> None:
    name, extra_gid = named_account
    user = resolved({"username": name}, "task", policy)
    assert (user.name, user.uid, user.identity) == (name, pwd.getpwnam(name).pw_uid, name)
    assert extra_gid in user.groups
    out = await run_as(user, task_dir, "sh", "-c", "id -un; id -G")
    lines = out.splitlines()
    assert lines[0] == name
    assert str(extra_gid) in lines[1].split(), "supplementary groups are kept"
    assert "0" not in lines[1].split(), "root's groups are dropped"


def test_unknown_named_user_is_a_failure_value(policy: UserPolicy) -> None:
    failure = resolve_user(identity({"username": "batest-nobody-here"}), "task", policy=policy,
                           task_key="job/task")
    assert isinstance(failure, FailureInfo)
    assert (failure.category, failure.code) == (ErrorCategory.USER, "UserNotFound")
    assert any(d.value == "batest-nobody-here" for d in failure.details)


def test_missing_account_with_creation_off_is_the_agents_fault(tmp_path: Path) -> None:
    name = f"_batest{secrets.token_hex(3)}"
    off = UserPolicy(agent_is_root=True, pool_nonadmin=name, create_accounts=False, state_dir=tmp_path)
    with pytest.raises(RunnerError, match="account creation is off"):
        resolve_user(None, "task", policy=off, task_key="job/task")
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


@pytest.mark.parametrize(("data", "ident"), [
    (None, "PoolNonAdmin"),
    ({"autoUser": {"scope": "task", "elevationLevel": "admin"}}, "TaskAdmin"),
    ({"username": "batest-nobody-here"}, "batest-nobody-here"),
])
def test_agent_not_root_runs_everything_as_itself(tmp_path: Path, data: dict[str, Any] | None,
                                                  ident: str) -> None:
    name = f"_batest{secrets.token_hex(3)}"
    not_root = UserPolicy(agent_is_root=False, pool_nonadmin=name, state_dir=tmp_path)
    user = resolved(data, "task", not_root)
    assert user == TaskUser(name=pwd.getpwuid(os.geteuid()).pw_name, uid=None, gid=None, identity=ident)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)                  # nothing was created


def test_unknown_kind_is_a_programming_error(policy: UserPolicy) -> None:
    with pytest.raises(ValueError, match="unknown task kind"):
        resolve_user(None, "mainTask", policy=policy, task_key="job/task")


# -- describe -------------------------------------------------------------------------------

def test_describe_user(policy: UserPolicy, tmp_path: Path) -> None:
    resolved(None, "task", policy)          # make sure _azbatch exists
    uid = pwd.getpwnam("_azbatch").pw_uid
    missing = f"_batest{secrets.token_hex(3)}"
    fresh = UserPolicy(agent_is_root=True, pool_nonadmin=missing, state_dir=tmp_path / "fresh")
    off = UserPolicy(agent_is_root=True, pool_nonadmin=missing, create_accounts=False, state_dir=tmp_path)
    me = pwd.getpwuid(os.geteuid()).pw_name
    cases = [
        (None, "task", policy, f"default autoUser pool/nonadmin -> _azbatch (uid {uid})"),
        ({"autoUser": {}}, "start", policy, f"autoUser pool/nonadmin -> _azbatch (uid {uid})"),
        ({"autoUser": {"elevationLevel": "admin"}}, "task", policy,
         "autoUser pool/admin -> root (uid 0, elevated)"),
        ({"autoUser": {"scope": "task"}}, "task", policy,
         "autoUser task/nonadmin -> a new per-task account _azbatchtask_<n> (created on first run)"),
        ({"username": "batest-nobody-here"}, "task", policy,
         "user 'batest-nobody-here' -> batest-nobody-here: no such account on this node, "
         "the task would fail with UserNotFound"),
        (None, "task", fresh, f"default autoUser pool/nonadmin -> {missing} (created on first run)"),
        (None, "task", off,
         f"default autoUser pool/nonadmin -> {missing} (missing, and account creation is off)"),
        (None, "start", UserPolicy(agent_is_root=False),
         f"agent is not root: runs as {me} (Batch would use _azbatchtask_start, TaskNonAdmin)"),
    ]
    for data, kind, pol, expected in cases:
        assert describe_user(identity(data), kind, pol) == expected
    with pytest.raises(KeyError):
        pwd.getpwnam(missing)               # describing created nothing
    assert not (tmp_path / "fresh").exists()


# -- shared dir -----------------------------------------------------------------------------

async def test_shared_dir_is_writable_by_every_task_user(policy: UserPolicy, task_dir: Path) -> None:
    shared = task_dir / "shared"
    ensure_shared_dir_permissions(shared)
    assert shared.stat().st_mode & 0o7777 == SHARED_DIR_MODE
    user = resolved(None, "task", policy)
    await run_as(user, task_dir, "sh", "-c", f"echo hi > {shared}/from-task")
    assert (shared / "from-task").stat().st_uid == user.uid


def test_shared_dir_link_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (tmp_path / "root").mkdir(mode=0o755)
    shared = tmp_path / "root" / "shared"
    shared.symlink_to(victim)
    ensure_shared_dir_permissions(shared)
    assert not shared.is_symlink() and shared.stat().st_mode & 0o7777 == SHARED_DIR_MODE
    assert victim.stat().st_mode & 0o7777 == 0o700


def test_state_dir_another_user_can_change_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chown(state, pwd.getpwnam("nobody").pw_uid, -1)
    policy = UserPolicy(agent_is_root=True, state_dir=state)
    with pytest.raises(ConfigError, match="chown root"):
        resolve_user(identity({"autoUser": {"scope": "task"}}), "task", policy=policy, task_key="job/x")
    assert not (state / "task-users.json").exists()
