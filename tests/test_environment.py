"""agent.environment: the task environment of §2 (pure), and what a container loses (§8.3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.environment import (
    DEFAULT_SYSTEM_PATH,
    MOUNT_VARIABLES,
    NodeIdentity,
    TaskEnvRequest,
    batch_variables,
    strip_unmounted,
    task_environment,
)
from agent.layout import NodeLayout
from agent.runner import TaskUser
from agent.spec import EnvironmentSetting

ROOT = Path("/mnt/batch/tasks")
LAYOUT = NodeLayout(ROOT)
NODE = NodeIdentity(account_name="acct", account_url="https://acct.eastus.batch.azure.com", pool_id="Pool-1",
                    node_id="tvmps_abc_d", is_dedicated=True, reserved_disk_bytes=1050389381,
                    os_reserved_disk_bytes=1000000000)
USER = TaskUser(name="_azbatch", uid=1001, gid=1001, identity="PoolNonAdmin")
TASK_USER = TaskUser(name="_azbatchtask_1", uid=1002, gid=1001, identity="TaskAdmin", elevated=True)
TASK_DIR = "/mnt/batch/tasks/workitems/job1/job-1/task1"
PREP_DIR = "/mnt/batch/tasks/workitems/job1/job-1/jobpreparation"

# The variables every task kind gets (§2.2 "All").
NODE_VARS = {
    "AZ_BATCH_ACCOUNT_NAME": "acct",
    "AZ_BATCH_ACCOUNT_URL": "https://acct.eastus.batch.azure.com/",
    "AZ_BATCH_POOL_ID": "Pool-1",
    "AZ_BATCH_NODE_ID": "tvmps_abc_d",
    "AZ_BATCH_NODE_IS_DEDICATED": "true",
    "AZ_BATCH_NODE_ROOT_DIR": "/mnt/batch/tasks",
    "AZ_BATCH_NODE_SHARED_DIR": "/mnt/batch/tasks/shared",
    "AZ_BATCH_NODE_STARTUP_DIR": "/mnt/batch/tasks/startup",
    "AZ_BATCH_NODE_STARTUP_WORKING_DIR": "/mnt/batch/tasks/startup/wd",
    "AZ_BATCH_NODE_MOUNTS_DIR": "/mnt/batch/tasks/fsmounts",
    "AZ_BATCH_RESERVED_DISK_SPACE_BYTES": "1050389381",
    "AZ_BATCH_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": "1050389381",
    "AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": "1050389381",
    "AZ_BATCH_OS_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": "1000000000",
}


def request(kind: str = "task", task_id: str | None = "task1", *, prep: bool = True, user: TaskUser = USER,
            common: tuple[EnvironmentSetting, ...] = (), settings: tuple[EnvironmentSetting, ...] = (),
            auth_token: str | None = None) -> TaskEnvRequest:
    if kind == "start":
        return TaskEnvRequest(kind="start", job_id=None, task_id=None, dirs=LAYOUT.startup_task(), user=user,
                              common=common, settings=settings, auth_token=auth_token)
    return TaskEnvRequest(kind=kind, job_id="job1", task_id=task_id, dirs=LAYOUT.task("job1", task_id or ""),
                          user=user, prep_dirs=LAYOUT.task("job1", "jobpreparation") if prep else None,
                          common=common, settings=settings, auth_token=auth_token)


def env_setting(name: str, value: str | None) -> EnvironmentSetting:
    return EnvironmentSetting(name=name, value=value)


def test_minimal_environment_of_a_task_exactly() -> None:
    env = task_environment(NODE, LAYOUT, request(prep=False))
    assert env == {
        "HOME": f"{TASK_DIR}/wd",
        "USER": "_azbatch",
        "PATH": f"{DEFAULT_SYSTEM_PATH}:/mnt/batch/tasks/shared:{TASK_DIR}/wd",
        **NODE_VARS,
        "AZ_BATCH_TASK_DIR": TASK_DIR,
        "AZ_BATCH_TASK_WORKING_DIR": f"{TASK_DIR}/wd",
        "AZ_BATCH_CERTIFICATES_DIR": f"{TASK_DIR}/certs",
        "AZ_BATCH_TASK_USER": "_azbatch",
        "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
        "AZ_BATCH_JOB_ID": "job1",
        "AZ_BATCH_TASK_ID": "task1",
    }


def test_start_task_environment() -> None:
    env = task_environment(NODE, LAYOUT, request("start", user=TaskUser("_azbatchtask_start", 5, 5,
                                                                            identity="TaskNonAdmin")))
    assert env["HOME"] == "/mnt/batch/tasks/startup/wd"
    assert env["AZ_BATCH_TASK_DIR"] == "/mnt/batch/tasks/startup"
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == "/mnt/batch/tasks/startup/wd"
    assert env["AZ_BATCH_CERTIFICATES_DIR"] == "/mnt/batch/tasks/startup/certs"
    assert env["AZ_BATCH_TASK_USER_IDENTITY"] == "TaskNonAdmin" and env["USER"] == "_azbatchtask_start"
    for absent in ("AZ_BATCH_JOB_ID", "AZ_BATCH_TASK_ID", "AZ_BATCH_JOB_PREP_DIR",
                   "AZ_BATCH_JOB_PREP_WORKING_DIR"):
        assert absent not in env


@pytest.mark.parametrize(("kind", "task_id", "prep", "has_prep_vars"), [
    ("task", "task1", True, True),
    ("jobmanager", "mgr", True, True),
    ("jobrelease", "jobrelease", True, True),
    ("jobpreparation", "jobpreparation", True, False),   # not for the prep task itself
    ("task", "task1", False, False),                    # not when the job has no prep task
    ("jobrelease", "jobrelease", False, False),
    ("start", None, False, False),
], ids=["task", "jobmanager", "release", "prep-itself", "no-prep", "release-no-prep", "start"])
def test_job_prep_variables(kind: str, task_id: str | None, prep: bool, has_prep_vars: bool) -> None:
    env = task_environment(NODE, LAYOUT, request(kind, task_id, prep=prep))
    if has_prep_vars:
        assert env["AZ_BATCH_JOB_PREP_DIR"] == PREP_DIR
        assert env["AZ_BATCH_JOB_PREP_WORKING_DIR"] == f"{PREP_DIR}/wd"
    else:
        assert "AZ_BATCH_JOB_PREP_DIR" not in env and "AZ_BATCH_JOB_PREP_WORKING_DIR" not in env
    if kind != "start":
        assert env["AZ_BATCH_TASK_ID"] == task_id and env["AZ_BATCH_JOB_ID"] == "job1"


@pytest.mark.parametrize(("url", "expected"), [
    ("https://a.eastus.batch.azure.com", "https://a.eastus.batch.azure.com/"),
    ("https://a.eastus.batch.azure.com/", "https://a.eastus.batch.azure.com/"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
], ids=["no-slash", "slash", "local"])
def test_account_url_has_trailing_slash(url: str, expected: str) -> None:
    node = NodeIdentity("a", url, "p", "n")
    assert batch_variables(node, LAYOUT, request())["AZ_BATCH_ACCOUNT_URL"] == expected


def test_node_flags_and_system_path() -> None:
    node = NodeIdentity("a", "u", "p", "n", is_dedicated=False, system_path="/usr/bin:/bin")
    env = task_environment(node, LAYOUT, request(prep=False))
    assert env["AZ_BATCH_NODE_IS_DEDICATED"] == "false"
    assert env["PATH"] == f"/usr/bin:/bin:/mnt/batch/tasks/shared:{TASK_DIR}/wd"


def test_task_user_variables() -> None:
    env = task_environment(NODE, LAYOUT, request(user=TASK_USER))
    assert (env["USER"], env["AZ_BATCH_TASK_USER"], env["AZ_BATCH_TASK_USER_IDENTITY"]) == (
        "_azbatchtask_1", "_azbatchtask_1", "TaskAdmin")


def test_authentication_token_only_when_given() -> None:
    assert "AZ_BATCH_AUTHENTICATION_TOKEN" not in task_environment(NODE, LAYOUT, request())
    assert "AZ_BATCH_AUTHENTICATION_TOKEN" not in task_environment(NODE, LAYOUT, request(auth_token=""))
    env = task_environment(NODE, LAYOUT, request(auth_token="tok"))
    assert env["AZ_BATCH_AUTHENTICATION_TOKEN"] == "tok"


ORDER_CASES: list[tuple[str, tuple[EnvironmentSetting, ...], tuple[EnvironmentSetting, ...],
                        dict[str, str]]] = [
    ("job-only", (env_setting("JOBVAR", "j"),), (), {"JOBVAR": "j"}),
    ("task-only", (), (env_setting("TASKVAR", "t"),), {"TASKVAR": "t"}),
    ("task-overrides-job", (env_setting("X", "job"), env_setting("Y", "job")), (env_setting("X", "task"),),
     {"X": "task", "Y": "job"}),
    ("later-setting-wins", (), (env_setting("X", "1"), env_setting("X", "2")), {"X": "2"}),
    ("none-is-empty", (env_setting("J", None),), (env_setting("T", None),), {"J": "", "T": ""}),
    ("empty-string", (), (env_setting("T", ""),), {"T": ""}),
    # documented choice (README): user settings are applied last and win over Batch's names
    ("user-overrides-az-batch", (env_setting("AZ_BATCH_NODE_ID", "job"),),
     (env_setting("AZ_BATCH_TASK_ID", "t"),),
     {"AZ_BATCH_NODE_ID": "job", "AZ_BATCH_TASK_ID": "t"}),
    ("user-overrides-path-home", (), (env_setting("PATH", "/x"), env_setting("HOME", "/h")),
     {"PATH": "/x", "HOME": "/h"}),
    ("no-expansion", (env_setting("A", "1"),), (env_setting("B", "$A:${HOME}:~"),),
     {"A": "1", "B": "$A:${HOME}:~"}),
]


@pytest.mark.parametrize(("common", "settings", "expected"), [c[1:] for c in ORDER_CASES],
                         ids=[c[0] for c in ORDER_CASES])
def test_job_then_task_settings(common: tuple[EnvironmentSetting, ...],
                                settings: tuple[EnvironmentSetting, ...],
                                expected: dict[str, str]) -> None:
    env = task_environment(NODE, LAYOUT, request(common=common, settings=settings))
    for name, value in expected.items():
        assert env[name] == value


def test_overriding_batch_names_does_not_move_the_dirs_the_agent_uses() -> None:
    req = request(settings=(env_setting("AZ_BATCH_TASK_DIR", "/elsewhere"),))
    env = task_environment(NODE, LAYOUT, req)
    assert env["AZ_BATCH_TASK_DIR"] == "/elsewhere"
    assert str(req.dirs.task_dir) == TASK_DIR  # the agent keeps its own paths


def test_agent_environment_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_AGENT_LEAK_CANARY", "leaked")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("PATH", "/agent/only/bin")
    env = task_environment(NODE, LAYOUT, request())
    assert "BATCH_AGENT_LEAK_CANARY" not in env and "LANG" not in env
    assert "leaked" not in env.values()
    assert "/agent/only/bin" not in env["PATH"]
    assert set(env) <= {"HOME", "USER", "PATH"} | {k for k in env if k.startswith("AZ_BATCH_")}
    assert os.environ["BATCH_AGENT_LEAK_CANARY"] == "leaked"  # and the agent's own env is untouched


def test_task_environment_is_pure() -> None:
    req = request(common=(env_setting("A", "1"),), settings=(env_setting("B", None),))
    assert task_environment(NODE, LAYOUT, req) == task_environment(NODE, LAYOUT, req)
    assert req.common == (env_setting("A", "1"),)


# ---------------------------------------------------------------------------------------------
# containers: variables of unmounted Batch paths are removed (§2.2, §8.3)

FULL_ENV = {
    **task_environment(NODE, LAYOUT, request()),
    "AZ_BATCH_APP_PACKAGE_app1_1_0": "/mnt/batch/tasks/applications/app11.0",
    "AZ_BATCH_APP_PACKAGE_APP2": "/mnt/batch/tasks/applications/app2",
    "USERVAR": "kept",
}
ALL_SOURCES = ("Shared", "Startup", "VfsMounts", "Task", "JobPrep", "Applications")
APP_VARS = {"AZ_BATCH_APP_PACKAGE_app1_1_0", "AZ_BATCH_APP_PACKAGE_APP2"}

STRIP: list[tuple[str, tuple[str, ...], set[str]]] = [
    ("all-mounted", ALL_SOURCES, set()),
    ("nothing-mounted", (), {"AZ_BATCH_NODE_SHARED_DIR", "AZ_BATCH_NODE_STARTUP_DIR",
                             "AZ_BATCH_NODE_STARTUP_WORKING_DIR", "AZ_BATCH_NODE_MOUNTS_DIR",
                             "AZ_BATCH_TASK_DIR", "AZ_BATCH_TASK_WORKING_DIR", "AZ_BATCH_JOB_PREP_DIR",
                             "AZ_BATCH_JOB_PREP_WORKING_DIR",
                             *APP_VARS}),
    ("no-Shared", tuple(s for s in ALL_SOURCES if s != "Shared"), {"AZ_BATCH_NODE_SHARED_DIR"}),
    ("no-Startup", tuple(s for s in ALL_SOURCES if s != "Startup"),
     {"AZ_BATCH_NODE_STARTUP_DIR", "AZ_BATCH_NODE_STARTUP_WORKING_DIR"}),
    ("no-VfsMounts", tuple(s for s in ALL_SOURCES if s != "VfsMounts"), {"AZ_BATCH_NODE_MOUNTS_DIR"}),
    ("no-Task", tuple(s for s in ALL_SOURCES if s != "Task"),
     {"AZ_BATCH_TASK_DIR", "AZ_BATCH_TASK_WORKING_DIR"}),
    ("no-JobPrep", tuple(s for s in ALL_SOURCES if s != "JobPrep"),
     {"AZ_BATCH_JOB_PREP_DIR", "AZ_BATCH_JOB_PREP_WORKING_DIR"}),
    ("no-Applications", tuple(s for s in ALL_SOURCES if s != "Applications"), APP_VARS),
    ("only-Task", ("Task",), {"AZ_BATCH_NODE_SHARED_DIR", "AZ_BATCH_NODE_STARTUP_DIR",
                              "AZ_BATCH_NODE_STARTUP_WORKING_DIR", "AZ_BATCH_NODE_MOUNTS_DIR",
                              "AZ_BATCH_JOB_PREP_DIR", "AZ_BATCH_JOB_PREP_WORKING_DIR", *APP_VARS}),
]


@pytest.mark.parametrize(("mounted", "removed"), [s[1:] for s in STRIP], ids=[s[0] for s in STRIP])
def test_strip_unmounted(mounted: tuple[str, ...], removed: set[str]) -> None:
    out = strip_unmounted(FULL_ENV, mounted)
    assert set(FULL_ENV) - set(out) == removed
    assert all(out[k] == FULL_ENV[k] for k in out)
    assert out["USERVAR"] == "kept" and out["HOME"] == FULL_ENV["HOME"]
    assert out["AZ_BATCH_CERTIFICATES_DIR"] == FULL_ENV["AZ_BATCH_CERTIFICATES_DIR"]


def test_mount_variables_cover_every_bind_source() -> None:
    from agent.spec.task import ContainerHostBatchBindMountEntry

    # the keys are the canonical spellings the spec stores, one per REST bind-mount source
    entry = ContainerHostBatchBindMountEntry.model_validate
    parsed = {entry({"source": s.lower()}).source for s in ALL_SOURCES}
    assert set(MOUNT_VARIABLES) == parsed == set(ALL_SOURCES)
