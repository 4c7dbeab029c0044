"""Container tasks through the task runner, on the real Docker engine (images built offline).

Each test runs a Batch task JSON through ``TaskRunner`` with the gate, task-dir and image hooks
and the container runner, as the CLI wires them, on a fresh node root. Containers use network
``none`` (the agent config's default here) or ``host``: never the bridge. Waiting is on the
container's end, never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, DockerConfig, NodeConfig, TaskConfig
from agent.container.build import LABEL_NODE_ROOT
from agent.container.image import PullRetry
from agent.container.runner import ContainerRunner, stop_timeout
from agent.environment import NodeIdentity
from agent.hooks.gate import GateHook
from agent.hooks.image import ImageHook
from agent.hooks.taskdir import TaskDirHook
from agent.runner import TaskUser
from agent.spec import TaskSpec
from agent.taskrunner import TaskOutcome, TaskRunner

pytestmark = pytest.mark.docker

TASK_USER = TaskUser("taskuser", 1000, 1000, groups=(1000, 2500))
NODE = NodeIdentity("testaccount", "http://127.0.0.1:1/", "testpool", "node-1")


@dataclass
class Ran:
    outcome: TaskOutcome
    task_dir: Path

    @property
    def info(self) -> dict[str, Any]:
        return self.outcome.status.execution_info.to_json()

    def _read(self, name: str) -> str:
        path = self.task_dir / name
        return path.read_text() if path.exists() else ""

    @property
    def stdout(self) -> str:
        return self._read("stdout.txt")

    @property
    def stderr(self) -> str:
        return self._read("stderr.txt")

    @property
    def container_id(self) -> str:
        return str(self.info["containerInfo"]["containerId"])


class Node:
    """One node root with a task runner wired as the CLI wires it (containers only)."""

    def __init__(self, root: Path, client: Any, image: str, *, stop_grace: float = 0.0,
                 kill_grace: float = 0.0, retry: PullRetry | None = None) -> None:
        self.root, self.client, self.image = root, client, image
        self.user = TASK_USER
        config = replace(AgentConfig(), node=replace(NodeConfig(), root=root),
                         tasks=replace(TaskConfig(), kill_grace=kill_grace),
                         docker=DockerConfig(network="none", stop_grace=stop_grace))
        runner = ContainerRunner(config.docker, client=client)
        self.task_runner = TaskRunner(
            config=config, node=NODE, runners={"container": runner},
            prestart=[GateHook({"containerSettings"}), TaskDirHook(),
                      ImageHook(runner.client, config.docker, retry=retry or PullRetry(backoff=0.0))],
            exited=[], resolve_user=lambda spec, kind, task_id: self.user)

    async def run(self, task: dict[str, Any], *, user: TaskUser = TASK_USER, **settings: Any) -> Ran:
        task = {"id": "t1", **task}
        task["containerSettings"] = {"imageName": self.image, **task.get("containerSettings", {}), **settings}
        self.user = user
        outcome = await self.task_runner.run(TaskSpec.model_validate(task), job_id="job1")
        return Ran(outcome, self.root / "workitems" / "job1" / "job-1" / task["id"])

    def exists(self, container_id: str) -> bool:
        import docker

        try:
            self.client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return False
        return True


def node_for(node_root: Path, docker_client: Any, test_image: str, **options: Any) -> Iterator[Node]:
    """A ``Node`` on ``node_root``; afterwards, every container of that root is removed."""
    yield Node(node_root, docker_client, test_image, **options)
    mine = {"label": f"{LABEL_NODE_ROOT}={node_root}"}
    for summary in docker_client.api.containers(all=True, filters=mine):
        docker_client.api.remove_container(summary["Id"], force=True)


@pytest.fixture
def node(node_root: Path, docker_client: Any, test_image: str) -> Iterator[Node]:
    yield from node_for(node_root, docker_client, test_image)


def sh(script: str) -> str:
    """A commandLine running ``script`` in the container's sh (the agent itself uses no shell)."""
    return f"sh -c '{script}'"


async def test_exit_code_output_files_and_container_info(node: Node) -> None:
    ran = await node.run({"commandLine": sh("printf out; printf err >&2; exit 3")})
    assert ran.info["exitCode"] == 3
    assert ran.info["failureInfo"]["code"] == "FailureExitCode"
    assert ran.stdout == "out" and ran.stderr == "err"   # nothing lost, no newline added
    assert ran.info["containerInfo"]["state"] == "exited"
    assert "error" not in ran.info["containerInfo"]
    assert node.exists(ran.container_id)                  # kept: no --rm
    for name in ("stdout.txt", "stderr.txt"):
        assert (ran.task_dir / name).stat().st_uid == (TASK_USER.uid if os.geteuid() == 0 else os.geteuid())


async def test_large_interleaved_output_is_complete(node: Node) -> None:
    script = "i=0; while [ $i -lt 2000 ]; do echo line$i; echo err$i >&2; i=$((i+1)); done; printf end"
    ran = await node.run({"commandLine": sh(script)})
    assert ran.info["exitCode"] == 0 and "failureInfo" not in ran.info
    assert ran.stdout == "".join(f"line{i}\n" for i in range(2000)) + "end"
    assert ran.stderr == "".join(f"err{i}\n" for i in range(2000))


async def test_command_runs_without_a_shell_and_env_reaches_the_container(node: Node) -> None:
    ran = await node.run({"commandLine": "env",
                          "environmentSettings": [{"name": "MY_VAR", "value": "a b $HOME"}]})
    env = dict(line.split("=", 1) for line in ran.stdout.splitlines())
    assert env["MY_VAR"] == "a b $HOME"
    assert env["AZ_BATCH_TASK_ID"] == "t1" and env["AZ_BATCH_JOB_ID"] == "job1"
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(node.root)
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == str(ran.task_dir / "wd")
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == str(node.root / "shared")


async def test_default_mounts_the_node_root_read_write(node: Node) -> None:
    ran = await node.run({"commandLine": sh('echo hi > "$AZ_BATCH_TASK_WORKING_DIR/out.txt"; '
                                            'ls "$AZ_BATCH_NODE_ROOT_DIR"; pwd')})
    assert ran.info["exitCode"] == 0, ran.stderr
    assert (ran.task_dir / "wd" / "out.txt").read_text() == "hi\n"
    assert {"shared", "startup", "workitems"} <= set(ran.stdout.split())
    assert ran.stdout.splitlines()[-1] == str(ran.task_dir / "wd")   # taskWorkingDirectory


async def test_empty_mount_list_mounts_nothing_and_removes_the_variables(node: Node) -> None:
    ran = await node.run({"commandLine": sh(f'test -e "{node.root}" && echo visible; env; pwd')},
                         containerHostBatchBindMounts=[], workingDirectory="containerImageDefault")
    assert ran.info["exitCode"] == 0, ran.stderr
    assert "visible" not in ran.stdout
    names = {line.split("=", 1)[0] for line in ran.stdout.splitlines() if "=" in line}
    assert "AZ_BATCH_TASK_ID" in names
    assert not names & {"AZ_BATCH_TASK_DIR", "AZ_BATCH_TASK_WORKING_DIR", "AZ_BATCH_NODE_SHARED_DIR",
                        "AZ_BATCH_NODE_STARTUP_DIR", "AZ_BATCH_NODE_MOUNTS_DIR"}
    assert ran.stdout.splitlines()[-1] == "/"      # the busybox image has no WORKDIR
    assert (ran.task_dir / "stdout.txt").exists()  # the agent writes the files on the host


async def test_mount_list_with_read_only_source(node: Node) -> None:
    shared = node.root / "shared"
    script = ('cat "$AZ_BATCH_NODE_SHARED_DIR/in.txt"; '
              'echo x > "$AZ_BATCH_TASK_WORKING_DIR/w" && echo task-rw; '
              'touch "$AZ_BATCH_NODE_SHARED_DIR/new" || echo shared-ro; '
              'test -e "$AZ_BATCH_NODE_ROOT_DIR/startup" || echo no-startup; '
              'echo "startup=${AZ_BATCH_NODE_STARTUP_DIR-unset}"')
    shared.mkdir(parents=True)
    (shared / "in.txt").write_text("shared-data\n")
    mounts = [{"source": "Task"}, {"source": "Shared", "isReadOnly": True}]
    ran = await node.run({"commandLine": sh(script)}, containerHostBatchBindMounts=mounts)
    assert ran.info["exitCode"] == 0, ran.stderr
    assert ran.stdout.split() == ["shared-data", "task-rw", "shared-ro", "no-startup", "startup=unset"]
    assert "Read-only file system" in ran.stderr
    assert not (shared / "new").exists()


async def test_working_directory_modes(node: Node, entrypoint_image: str) -> None:
    image_default = await node.run({"commandLine": ""}, imageName=entrypoint_image,
                                   containerRunOptions="--entrypoint pwd",
                                   workingDirectory="containerImageDefault")
    assert image_default.stdout == "/imagewd\n"
    task_wd = await node.run({"id": "t2", "commandLine": ""}, imageName=entrypoint_image,
                             containerRunOptions="--entrypoint pwd")
    assert task_wd.stdout == f"{task_wd.task_dir / 'wd'}\n"
    override = await node.run({"id": "t3", "commandLine": ""}, imageName=entrypoint_image,
                              containerRunOptions="--entrypoint pwd -w /tmp")
    assert override.stdout == "/tmp\n"


async def test_empty_command_line_runs_the_image_default_and_command_is_args(node: Node,
                                                                            entrypoint_image: str) -> None:
    default = await node.run({"commandLine": ""}, imageName=entrypoint_image)
    assert default.info["exitCode"] == 0 and default.stdout == "from-entrypoint\n"
    args = await node.run({"id": "t2", "commandLine": "a 'b c'"}, imageName=entrypoint_image)
    assert args.stdout == "from-entrypoint a b c\n"


async def test_user_identity(node: Node) -> None:
    task = await node.run({"commandLine": "id"})
    assert task.stdout.split()[:2] == ["uid=1000(taskuser)", "gid=1000(taskuser)"]
    assert "2500" in task.stdout                                      # supplementary group
    admin = await node.run({"id": "t2", "commandLine": "id -u"},
                           user=TaskUser("root", 0, 0, identity="PoolAdmin", elevated=True))
    assert admin.stdout == "0\n"
    override = await node.run({"id": "t3", "commandLine": "id -u"}, containerRunOptions="--user 65534:65534")
    assert override.stdout == "65534\n"


async def test_rm_removes_the_container_after_recording_it(node: Node) -> None:
    ran = await node.run({"commandLine": "true"}, containerRunOptions="--rm")
    assert ran.info["exitCode"] == 0 and ran.info["containerInfo"]["state"] == "exited"
    assert not node.exists(ran.container_id)


async def test_run_options_env_network_read_only_tmpfs(node: Node) -> None:
    script = ('echo "$OPT"; ls /sys/class/net | tr "\\n" " "; echo; touch /scratch/ok && echo tmpfs-ok; '
              'touch /rootfile || echo root-ro')
    ran = await node.run({"commandLine": sh(script)},
                         containerRunOptions="-e OPT=from-options --read-only --tmpfs /scratch")
    assert ran.info["exitCode"] == 0, ran.stderr
    assert ran.stdout.splitlines() == ["from-options", "lo ", "tmpfs-ok", "root-ro"]
    host = await node.run({"id": "t2", "commandLine": "ls /sys/class/net"},
                          containerRunOptions="--network host")
    assert set(host.stdout.split()) == set(os.listdir("/sys/class/net"))


async def test_unknown_run_option_is_a_pre_processing_failure(node: Node) -> None:
    ran = await node.run({"commandLine": "true"}, containerRunOptions="--rm --no-such-flag 1")
    failure = ran.info["failureInfo"]
    assert "exitCode" not in ran.info and "containerInfo" not in ran.info
    assert failure["code"] == "ContainerInvalidSettings" and failure["category"] == "usererror"
    assert failure["message"] == "At least one value of specified task container settings is invalid"
    assert failure["details"][0]["name"] == "Message" and "--no-such-flag" in failure["details"][0]["value"]
    assert ran.outcome.status.decision is not None


async def test_task_working_directory_without_task_mount_is_invalid(node: Node) -> None:
    ran = await node.run({"commandLine": "true"}, containerHostBatchBindMounts=[{"source": "Shared"}])
    assert ran.info["failureInfo"]["code"] == "ContainerInvalidSettings"
    assert "workingDirectory" in ran.info["failureInfo"]["details"][0]["value"]


async def test_command_not_found_reports_the_engine_error(node: Node) -> None:
    ran = await node.run({"commandLine": "no-such-program"})
    assert ran.info["exitCode"] == 127
    assert ran.info["containerInfo"]["state"] == "created"
    assert "no-such-program" in ran.info["containerInfo"]["error"]


async def test_wall_clock_stops_kills_and_removes_the_container(node: Node) -> None:
    ran = await node.run({"commandLine": "sleep 60", "constraints": {"maxWallClockTime": "PT1S"}})
    assert ran.info["failureInfo"]["code"] == "TaskEnded"
    assert ran.info["exitCode"] == 137                    # SIGKILL: sleep as PID 1 ignores SIGTERM
    assert ran.info["containerInfo"]["state"] == "exited"
    assert not node.exists(ran.container_id)


async def test_rerun_replaces_the_kept_container_of_an_earlier_run(node: Node) -> None:
    first = await node.run({"commandLine": "true"})
    second = await node.run({"commandLine": "true"})
    assert second.info["exitCode"] == 0
    assert first.container_id != second.container_id and not node.exists(first.container_id)


async def test_output_file_that_cannot_be_created_fails_and_leaves_no_container(node: Node) -> None:
    (node.root / "workitems" / "job1" / "job-1" / "t1" / "stdout.txt").mkdir(parents=True)
    ran = await node.run({"commandLine": "true"})
    failure = ran.info["failureInfo"]
    assert failure["code"] == "ContainerMiscError" and "stdout.txt" in failure["details"][0]["value"]
    assert not node.client.api.containers(all=True, filters={"label": f"{LABEL_NODE_ROOT}={node.root}"})


async def test_terminate_stops_kills_and_removes_the_container(node: Node) -> None:
    fifo = node.root / "shared" / "ready"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    task = asyncio.create_task(node.run({"commandLine": sh(f"echo up > {fifo}; exec sleep 60")}))
    assert await asyncio.to_thread(fifo.read_text) == "up\n"     # the container runs
    node.task_runner.terminate("job1", "t1")
    ran = await task
    assert ran.info["failureInfo"]["code"] == "TaskEnded"
    assert ran.info["failureInfo"]["category"] == "usererror"
    assert ran.info["exitCode"] == 137 and ran.info["containerInfo"]["state"] == "exited"
    assert not node.exists(ran.container_id)


def ready_fifo(node: Node) -> Path:
    """A FIFO in the shared dir the container writes "up" to once its TERM trap is set."""
    fifo = node.root / "shared" / "ready"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    return fifo


@pytest.mark.timeout(120)
async def test_terminate_uses_the_docker_stop_grace_and_keeps_the_task_exit_code(
        node_root: Path, docker_client: Any, test_image: str) -> None:
    # [docker] stop_grace 60 s, [tasks] kill_grace 0: the container gets SIGTERM and the time to
    # handle it; its own exit code is the task's (the main process's code, §8.3).
    for node in node_for(node_root, docker_client, test_image, stop_grace=60.0, kill_grace=0.0):
        fifo = ready_fifo(node)
        script = f"trap \"echo got-term; exit 7\" TERM; echo up > {fifo}; sleep 60 & wait $!"
        task = asyncio.create_task(node.run({"commandLine": sh(script)}))
        assert await asyncio.to_thread(fifo.read_text) == "up\n"
        node.task_runner.terminate("job1", "t1")
        ran = await task
        assert ran.info["failureInfo"]["code"] == "TaskEnded"
        assert ran.info["exitCode"] == 7 and ran.stdout == "got-term\n"
        assert ran.info["containerInfo"]["state"] == "exited" and "error" not in ran.info["containerInfo"]
        assert not node.exists(ran.container_id)


@pytest.mark.timeout(120)
async def test_wall_clock_kills_after_the_docker_stop_grace_not_the_task_kill_grace(
        node_root: Path, docker_client: Any, test_image: str) -> None:
    # TERM ignored: the engine kills after [docker] stop_grace (1 s), not [tasks] kill_grace (90 s).
    for node in node_for(node_root, docker_client, test_image, stop_grace=0.5, kill_grace=90.0):
        fifo = ready_fifo(node)
        script = f"trap \"\" TERM; echo up > {fifo}; sleep 60 & wait $!"
        task = asyncio.create_task(node.run({"commandLine": sh(script),
                                             "constraints": {"maxWallClockTime": "PT2S"}}))
        assert await asyncio.to_thread(fifo.read_text) == "up\n"
        started = asyncio.get_running_loop().time()
        ran = await task
        assert asyncio.get_running_loop().time() - started < 45
        assert ran.info["failureInfo"]["code"] == "TaskEnded"
        assert ran.info["failureInfo"]["category"] == "servererror"
        assert ran.info["exitCode"] == 137 and ran.info["containerInfo"]["state"] == "exited"
        assert not node.exists(ran.container_id)


@pytest.mark.parametrize(("grace", "timeout"), [(0.0, 0), (-1.0, 0), (0.05, 1), (2.0, 2), (2.5, 3),
                                                 (float("inf"), 86_400), (float("nan"), 0)])
def test_stop_timeout(grace: float, timeout: int) -> None:
    assert stop_timeout(grace) == timeout


@pytest.mark.timeout(120)
async def test_vfs_mounts_made_after_the_start_appear_in_the_container(node: Node, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "mount tests need root: run the suite as root (it does in CI)"
    # fsmounts made a shared mount (as under systemd, where / is shared): the VfsMounts bind is
    # rslave, so a mount made there while the task runs shows inside.
    fsmounts = node.root / "fsmounts"
    late, source = fsmounts / "late", tmp_path / "nfs-export"
    late.mkdir(parents=True)
    source.mkdir()
    (source / "f").write_text("mounted later\n")
    ready, go = fsmounts / "ready", fsmounts / "go"
    for fifo in (ready, go):
        os.mkfifo(fifo)
        os.chmod(fifo, 0o666)
    mounts: list[Path] = []

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)

    try:
        mount("--bind", str(fsmounts), str(fsmounts))
        mounts.append(fsmounts)
        mount("--make-rshared", str(fsmounts))
        script = f'echo up > {ready}; read x < {go}; cat "$AZ_BATCH_NODE_MOUNTS_DIR/late/f"'
        task = asyncio.create_task(node.run(
            {"commandLine": sh(script)}, workingDirectory="containerImageDefault",
            containerHostBatchBindMounts=[{"source": "VfsMounts"}]))
        assert await asyncio.to_thread(ready.read_text) == "up\n"      # the container runs
        mount("--bind", str(source), str(late))
        mounts.append(late)
        await asyncio.to_thread(go.write_text, "go\n")
        ran = await task
        assert ran.info["exitCode"] == 0, (ran.info, ran.stderr)
        assert ran.stdout == "mounted later\n"
    finally:
        for point in reversed(mounts):
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
