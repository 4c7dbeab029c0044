"""Table tests of ``agent.container.build`` (pure: no engine, no files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.container.build import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_NODE_ROOT,
    LABEL_TASK,
    ContainerSettingsError,
    build_container_request,
    container_name,
    describe,
    normalise_image,
    split_image,
)
from agent.container.runopts import RunOptionsError
from agent.layout import NodeLayout
from agent.runner import ContainerRequest, TaskUser
from agent.spec import TaskContainerSettings

ROOT = Path("/mnt/batch/tasks")
LAYOUT = NodeLayout(ROOT)
DIRS = LAYOUT.task("job1", "t1")
PREP = LAYOUT.task("job1", "jobpreparation")
TASK_DIR = str(DIRS.task_dir)
ENV = {
    "PATH": "/usr/bin:/bin", "HOME": str(DIRS.wd), "AZ_BATCH_NODE_ROOT_DIR": str(ROOT),
    "AZ_BATCH_NODE_SHARED_DIR": str(LAYOUT.shared), "AZ_BATCH_NODE_STARTUP_DIR": str(LAYOUT.startup),
    "AZ_BATCH_NODE_STARTUP_WORKING_DIR": str(LAYOUT.startup_wd),
    "AZ_BATCH_NODE_MOUNTS_DIR": str(LAYOUT.fsmounts),
    "AZ_BATCH_TASK_DIR": TASK_DIR, "AZ_BATCH_TASK_WORKING_DIR": str(DIRS.wd),
    "AZ_BATCH_JOB_PREP_DIR": str(PREP.task_dir), "AZ_BATCH_JOB_PREP_WORKING_DIR": str(PREP.wd),
    "AZ_BATCH_APP_PACKAGE_tool": "/mnt/batch/tasks/applications/tool1", "SECRET_TOKEN": "s3cr3t-value",
}
USER = TaskUser("_azbatch", 1001, 1002, groups=(1002, 2000, 2001))


def build(settings: dict[str, Any], *, argv: tuple[str, ...] = ("echo", "hi"), user: TaskUser = USER,
          prep: bool = True, network: str = "") -> tuple[ContainerRequest, dict[str, str]]:
    return build_container_request(
        TaskContainerSettings.model_validate({"imageName": "busybox", **settings}), argv=argv, env=ENV,
        dirs=DIRS, layout=LAYOUT, user=user, prep_dirs=PREP if prep else None, job_id="job1", task_id="t1",
        attempt=2, network_default=network, agent_ids=(4242, 4343))


@pytest.mark.parametrize(("given", "expected"), [
    ("busybox", "busybox:latest"),
    ("busybox:1.36", "busybox:1.36"),
    ("library/busybox", "library/busybox:latest"),
    ("127.0.0.1:5000/test/busybox", "127.0.0.1:5000/test/busybox:latest"),
    ("127.0.0.1:5000/test/busybox:full", "127.0.0.1:5000/test/busybox:full"),
    ("myacr.azurecr.io/team/tool:V1.2-RC", "myacr.azurecr.io/team/tool:V1.2-RC"),
    ("busybox@sha256:" + "a" * 64, "busybox@sha256:" + "a" * 64),
    ("reg:443/x/y:t@sha256:" + "b" * 64, "reg:443/x/y:t@sha256:" + "b" * 64),
    ("  busybox  ", "busybox:latest"),
])
def test_normalise_image(given: str, expected: str) -> None:
    assert normalise_image(given) == expected


@pytest.mark.parametrize("bad", ["", "   ", "bad image"])
def test_normalise_image_rejects(bad: str) -> None:
    with pytest.raises(ContainerSettingsError, match="imageName"):
        normalise_image(bad)


@pytest.mark.parametrize(("ref", "expected"), [
    ("busybox:latest", ("busybox", "latest")),
    ("127.0.0.1:5000/test/busybox:full", ("127.0.0.1:5000/test/busybox", "full")),
    ("reg:443/x/y:t@sha256:" + "b" * 64, ("reg:443/x/y", "sha256:" + "b" * 64)),
    ("busybox@sha256:" + "a" * 64, ("busybox", "sha256:" + "a" * 64)),
])
def test_split_image(ref: str, expected: tuple[str, str]) -> None:
    assert split_image(ref) == expected


def test_name_is_deterministic_sanitised_and_per_root() -> None:
    name = container_name("job.1", "t/1", 3, ROOT)
    assert name == container_name("job.1", "t/1", 3, ROOT)
    assert name.startswith("batchagent_job.1_t-1_3_") and len(name.rsplit("_", 1)[1]) == 8
    assert container_name("job.1", "t/1", 4, ROOT) != name
    assert container_name("job.1", "t/1", 3, Path("/other/root")) != name


def test_defaults_mount_whole_root_and_keep_every_variable() -> None:
    request, env = build({})
    kw = request.create_kwargs
    assert request.image == "busybox:latest"
    assert kw["volumes"] == [f"{ROOT}:{ROOT}:rw"]
    assert kw["command"] == ["echo", "hi"]
    assert kw["working_dir"] == str(DIRS.wd)
    assert env == ENV and kw["environment"] == ENV
    assert kw["user"] == "1001:1002" and kw["group_add"] == ["2000", "2001"]
    assert "network" not in kw and request.remove_after is False
    assert kw["name"] == container_name("job1", "t1", 2, ROOT)
    assert {k: kw["labels"][k] for k in (LABEL_JOB, LABEL_TASK, LABEL_ATTEMPT, LABEL_NODE_ROOT)} == {
        LABEL_JOB: "job1", LABEL_TASK: "t1", LABEL_ATTEMPT: "2", LABEL_NODE_ROOT: str(ROOT)}
    assert request.labels == kw["labels"]


MOUNT_CASES: list[tuple[list[dict[str, Any]], list[str], set[str]]] = [
    # entries, expected binds, variables that must be gone
    ([], [], {"AZ_BATCH_TASK_DIR", "AZ_BATCH_TASK_WORKING_DIR", "AZ_BATCH_NODE_SHARED_DIR",
              "AZ_BATCH_NODE_STARTUP_DIR", "AZ_BATCH_NODE_STARTUP_WORKING_DIR", "AZ_BATCH_NODE_MOUNTS_DIR",
              "AZ_BATCH_JOB_PREP_DIR", "AZ_BATCH_JOB_PREP_WORKING_DIR", "AZ_BATCH_APP_PACKAGE_tool"}),
    ([{"source": "Task"}, {"source": "Shared", "isReadOnly": True}],
     [f"{TASK_DIR}:{TASK_DIR}:rw", f"{LAYOUT.shared}:{LAYOUT.shared}:ro"],
     {"AZ_BATCH_NODE_STARTUP_DIR", "AZ_BATCH_NODE_STARTUP_WORKING_DIR", "AZ_BATCH_NODE_MOUNTS_DIR",
      "AZ_BATCH_JOB_PREP_DIR", "AZ_BATCH_JOB_PREP_WORKING_DIR", "AZ_BATCH_APP_PACKAGE_tool"}),
    ([{"source": "task", "isReadOnly": True}, {"source": "Task"}, {"source": "Task", "isReadOnly": True}],
     [f"{TASK_DIR}:{TASK_DIR}:rw"],
     {"AZ_BATCH_NODE_SHARED_DIR", "AZ_BATCH_NODE_STARTUP_DIR", "AZ_BATCH_NODE_STARTUP_WORKING_DIR",
      "AZ_BATCH_NODE_MOUNTS_DIR", "AZ_BATCH_JOB_PREP_DIR", "AZ_BATCH_JOB_PREP_WORKING_DIR",
      "AZ_BATCH_APP_PACKAGE_tool"}),
    ([{"source": "Startup"}, {"source": "VfsMounts", "isReadOnly": True}, {"source": "JobPrep"},
      {"source": "Applications"}, {"source": "Task"}],
     [f"{LAYOUT.startup}:{LAYOUT.startup}:rw", f"{LAYOUT.fsmounts}:{LAYOUT.fsmounts}:ro",
      f"{PREP.task_dir}:{PREP.task_dir}:rw", f"{LAYOUT.applications}:{LAYOUT.applications}:rw",
      f"{TASK_DIR}:{TASK_DIR}:rw"],
     {"AZ_BATCH_NODE_SHARED_DIR"}),
]


@pytest.mark.parametrize(("entries", "binds", "gone"), MOUNT_CASES)
def test_bind_mounts_and_stripped_variables(entries: list[dict[str, Any]], binds: list[str],
                                            gone: set[str]) -> None:
    request, env = build({"containerHostBatchBindMounts": entries,
                          "workingDirectory": "containerImageDefault"})
    assert request.create_kwargs.get("volumes", []) == binds
    assert gone.isdisjoint(env) and gone.isdisjoint(request.create_kwargs["environment"])
    assert set(ENV) - gone == set(env)


def test_jobprep_without_prep_task_mounts_nothing() -> None:
    request, _ = build({"containerHostBatchBindMounts": [{"source": "JobPrep"}],
                        "workingDirectory": "containerImageDefault"}, prep=False)
    assert "volumes" not in request.create_kwargs


def test_run_option_volumes_are_added_after_batch_binds() -> None:
    request, _ = build({"containerRunOptions": "-v /data:/data:ro -v /cache:/c"})
    assert request.create_kwargs["volumes"] == [f"{ROOT}:{ROOT}:rw", "/data:/data:ro", "/cache:/c:rw"]


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, str(DIRS.wd)),
    ({"workingDirectory": "taskWorkingDirectory"}, str(DIRS.wd)),
    ({"workingDirectory": "containerImageDefault"}, None),
    ({"workingDirectory": "containerImageDefault", "containerRunOptions": "-w /work"}, "/work"),
    ({"containerRunOptions": "--workdir=/work"}, "/work"),
    ({"containerHostBatchBindMounts": [], "containerRunOptions": "-w /work"}, "/work"),
    ({"containerHostBatchBindMounts": [{"source": "Task", "isReadOnly": True}]}, str(DIRS.wd)),
])
def test_working_directory(settings: dict[str, Any], expected: str | None) -> None:
    request, _ = build(settings)
    assert request.create_kwargs.get("working_dir") == expected


@pytest.mark.parametrize("mounts", [[], [{"source": "Shared"}]])
def test_task_working_directory_needs_the_task_mount(mounts: list[dict[str, Any]]) -> None:
    with pytest.raises(ContainerSettingsError, match="containerImageDefault") as info:
        build({"containerHostBatchBindMounts": mounts})
    assert info.value.path == "workingDirectory"


def test_mount_entry_without_source_is_a_settings_error() -> None:
    with pytest.raises(ContainerSettingsError, match=r"containerHostBatchBindMounts\[1\]\.source"):
        build({"containerHostBatchBindMounts": [{"source": "Task"}, {"isReadOnly": True}]})


@pytest.mark.parametrize(("user", "options", "expected", "groups"), [
    (USER, "", "1001:1002", ["2000", "2001"]),
    (TaskUser("u", 1001, None), "", "1001:1001", None),
    (TaskUser("root", 0, 0, elevated=True), "", "0:0", None),
    (TaskUser("_azbatch", 1001, 1002, elevated=True), "", "0:0", None),
    (TaskUser("me", None, None), "", "4242:4343", None),
    (USER, "--user 0:0", "0:0", None),
    (USER, "-u nobody", "nobody", None),
    (USER, "--group-add 3000", "1001:1002", ["2000", "2001", "3000"]),
])
def test_user(user: TaskUser, options: str, expected: str, groups: list[str] | None) -> None:
    request, _ = build({"containerRunOptions": options}, user=user)
    assert request.create_kwargs["user"] == expected
    assert request.create_kwargs.get("group_add") == groups


def test_empty_command_line_runs_the_image_default() -> None:
    request, _ = build({}, argv=())
    assert request.create_kwargs["command"] is None


@pytest.mark.parametrize(("options", "default", "expected"), [
    ("", "", None), ("", "none", "none"), ("--network host", "none", "host"), ("--net=none", "", "none"),
])
def test_network(options: str, default: str, expected: str | None) -> None:
    request, _ = build({"containerRunOptions": options}, network=default)
    assert request.create_kwargs.get("network") == expected


def test_run_options_merge_env_and_labels_but_not_over_ours() -> None:
    request, _ = build({"containerRunOptions": "--rm -e EXTRA=1 -e PATH=/x -l team=a -l batch-agent.job=evil "
                                               "--read-only --tmpfs /scratch --memory 64m"})
    kw = request.create_kwargs
    assert request.remove_after is True
    assert kw["environment"]["EXTRA"] == "1" and kw["environment"]["PATH"] == "/x"
    assert kw["labels"]["team"] == "a" and kw["labels"][LABEL_JOB] == "job1"
    assert kw["read_only"] is True and kw["tmpfs"] == {"/scratch": ""} and kw["mem_limit"] == 64 * 1024**2


def test_dollar_variables_in_run_options_come_from_the_task_environment() -> None:
    request, _ = build({"containerRunOptions": "-w $AZ_BATCH_TASK_WORKING_DIR"})
    assert request.create_kwargs["working_dir"] == str(DIRS.wd)


def test_unknown_run_option_is_an_error() -> None:
    with pytest.raises(RunOptionsError, match="--no-such-flag"):
        build({"containerRunOptions": "--no-such-flag"})


def test_describe_shows_the_creation_but_no_env_values() -> None:
    request, _ = build({"containerRunOptions": "-e PASSWORD=hunter2 --mount type=tmpfs,target=/t --cpus 1 "
                                               "-v /data:/d:ro --entrypoint /bin/sh"})
    shown = describe(request)
    assert shown["image"] == "busybox:latest"
    assert shown["name"] == request.create_kwargs["name"]
    assert shown["command"] == ["echo", "hi"] and shown["entrypoint"] == ["/bin/sh"]
    assert shown["mounts"] == [f"{ROOT}:{ROOT}:rw", "/data:/d:ro", "tmpfs:/t:rw"]
    assert "PASSWORD" in shown["env"] and "AZ_BATCH_TASK_DIR" in shown["env"]
    assert shown["user"] == "1001:1002" and shown["working_dir"] == str(DIRS.wd)
    assert shown["network"] is None and shown["labels"][LABEL_TASK] == "t1"
    assert shown["options"] == {"nano_cpus": 10**9}
    text = repr(shown)
    assert "hunter2" not in text and "s3cr3t-value" not in text
