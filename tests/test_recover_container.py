"""Restart safety of container tasks on the real Docker engine: an agent process that started a
container is SIGKILLed; a new ContainerRunner recovers the handle (JSON round trip), its output
files end up complete exactly once, and ``wait`` returns the container's real exit code. A
removed container, or one from another boot, is lost (False), and nothing of it is left.

The container blocks on a FIFO in a bind-mounted directory until the test releases it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.container.build import LABEL_ATTEMPT, LABEL_JOB, LABEL_NODE_ROOT, LABEL_REMOVE, LABEL_TASK
from agent.container.orphans import sweep_orphans
from agent.container.runner import ContainerRunner
from agent.runner import ContainerRequest, RunHandle, RunRequest, TaskUser

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[1]
FIRST = "".join(f"line{i}\n" for i in range(300))
AFTER = "".join(f"after{i}\n" for i in range(300))

# The agent: start the container, wait until ``stdout.txt`` holds ``sys.argv[2]`` bytes (its
# output reached the file), print the handle as the store would keep it, hang until SIGKILLed.
AGENT = """
import asyncio, json, sys, time
from pathlib import Path
from agent.config import DockerConfig
from agent.container.runner import ContainerRunner
from agent.runner import RunRequest
sys.path.insert(0, sys.argv[3])
from test_recover_container import request_for

async def main():
    runner = ContainerRunner(DockerConfig(network="none"))
    request = request_for(*json.loads(sys.argv[1]))
    handle = await runner.start(request)
    while request.stdout.stat().st_size < int(sys.argv[2]):
        time.sleep(0.01)
    print("HANDLE", json.dumps(handle.to_json()), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def request_for(node_root: str, work: str, image: str, script: str) -> RunRequest:
    labels = {LABEL_JOB: "job", LABEL_TASK: "task", LABEL_ATTEMPT: "1", LABEL_NODE_ROOT: node_root,
              LABEL_REMOVE: "false"}
    kwargs = {"name": f"batest-recover-{uuid.uuid4().hex[:12]}", "command": ["sh", "-c", script],
              "labels": labels, "network_mode": "none",
              "mounts": [{"target": "/w", "source": work, "type": "bind"}]}
    return RunRequest(job_id="job", task_id="task", attempt=1, argv=("sh", "-c", script), env={},
                      cwd=Path(work), stdout=Path(work) / "stdout.txt", stderr=Path(work) / "stderr.txt",
                      user=TaskUser(name="agent", uid=None, gid=None),
                      container=ContainerRequest(image=image, create_kwargs=kwargs, labels=labels))


@pytest.fixture
def work(node_root: Path, docker_client: Any) -> Iterator[Path]:
    path = node_root / "task"
    path.mkdir()
    os.mkfifo(path / "go")
    yield path
    for summary in docker_client.api.containers(all=True, filters={"label": f"{LABEL_NODE_ROOT}={node_root}"}):
        docker_client.api.remove_container(summary["Id"], force=True)


@pytest.fixture
def runner(docker_client: Any) -> ContainerRunner:
    from agent.config import DockerConfig

    return ContainerRunner(DockerConfig(network="none"), client=docker_client)


def start_in_a_killed_agent(node_root: Path, work: Path, image: str, script: str, written: int) -> RunHandle:
    args = json.dumps([str(node_root), str(work), image, script])
    with open(work.parent / "agent.err", "w") as err, subprocess.Popen(
            [sys.executable, "-c", AGENT, args, str(written), str(Path(__file__).parent)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True) as agent:
        try:
            assert agent.stdout is not None
            for line in agent.stdout:                  # the agent's own log lines come first
                if line.startswith("HANDLE "):
                    break
            else:
                line = ""
        finally:
            agent.kill()
    assert line, (work.parent / "agent.err").read_text()
    return RunHandle.from_json(json.loads(line.removeprefix("HANDLE ")))


async def release(work: Path) -> None:
    await asyncio.to_thread((work / "go").write_text, "go\n")


async def test_a_running_container_is_recovered_with_its_output_exactly_once(
        runner: ContainerRunner, node_root: Path, work: Path, test_image: str) -> None:
    script = ("i=0; while [ $i -lt 300 ]; do echo line$i; i=$((i+1)); done; echo e1 >&2; read x < /w/go; "
              "i=0; while [ $i -lt 300 ]; do echo after$i; i=$((i+1)); done; echo e2 >&2; exit 42")
    handle = start_in_a_killed_agent(node_root, work, test_image, script, len(FIRST))
    assert (work / "stdout.txt").read_text().startswith(FIRST)
    assert await runner.recover(handle) is True
    await release(work)
    result = await runner.wait(handle)
    assert result.exit_code == 42 and result.container_info is not None
    assert (work / "stdout.txt").read_text() == FIRST + AFTER
    assert (work / "stderr.txt").read_text() == "e1\ne2\n"
    await runner.cleanup(handle)


async def test_an_exited_container_gives_its_code_and_the_rest_of_its_output(
        runner: ContainerRunner, node_root: Path, work: Path, test_image: str, docker_client: Any) -> None:
    handle = start_in_a_killed_agent(node_root, work, test_image, "echo hi; echo there; echo oops >&2; exit 5", 1)
    assert handle.container_id is not None
    docker_client.api.wait(handle.container_id)
    with open(work / "stdout.txt", "r+b") as out:     # the agent died with only part of it written
        out.truncate(4)
    assert await runner.recover(handle) is True
    assert (await runner.wait(handle)).exit_code == 5
    assert (work / "stdout.txt").read_text() == "hi\nthere\n"
    assert (work / "stderr.txt").read_text() == "oops\n"
    await runner.cleanup(handle)


async def test_a_replaced_output_file_is_written_afresh_never_through_a_link(
        runner: ContainerRunner, node_root: Path, work: Path, test_image: str, docker_client: Any,
        tmp_path: Path) -> None:
    handle = start_in_a_killed_agent(node_root, work, test_image, "echo hi; exit 0", 1)
    assert handle.container_id is not None
    docker_client.api.wait(handle.container_id)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (work / "stdout.txt").unlink()
    (work / "stdout.txt").symlink_to(victim)
    assert await runner.recover(handle) is True
    assert (await runner.wait(handle)).exit_code == 0
    assert victim.read_text() == "keep\n"
    assert not (work / "stdout.txt").is_symlink() and (work / "stdout.txt").read_text() == "hi\n"
    await runner.cleanup(handle)


async def test_a_removed_container_is_lost(runner: ContainerRunner, node_root: Path, work: Path,
                                           test_image: str, docker_client: Any) -> None:
    handle = start_in_a_killed_agent(node_root, work, test_image, "echo hi; read x < /w/go", 1)
    docker_client.api.remove_container(handle.container_id, force=True)
    assert await runner.recover(handle) is False


async def test_a_container_from_another_boot_is_lost_and_removed(
        runner: ContainerRunner, node_root: Path, work: Path, test_image: str, docker_client: Any) -> None:
    import docker

    handle = start_in_a_killed_agent(node_root, work, test_image, "echo hi; read x < /w/go", 1)
    other = RunHandle.from_json({**handle.to_json(), "boot_id": "00000000-0000-0000-0000-000000000000"})
    assert await runner.recover(other) is False
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_container(handle.container_id)


async def test_the_start_up_sweep_keeps_what_the_service_recovers(
        runner: ContainerRunner, node_root: Path, work: Path, test_image: str, docker_client: Any) -> None:
    """The dead agent's label no longer protects the container: the live handles must."""
    handle = start_in_a_killed_agent(node_root, work, test_image, "echo hi; read x < /w/go; exit 9", 1)
    assert handle.container_id is not None
    assert await sweep_orphans(docker_client, node_root, owned={handle.container_id}) == []
    assert await runner.recover(handle) is True
    await release(work)
    assert (await runner.wait(handle)).exit_code == 9
    await runner.destroy(handle)
    assert docker_client.api.containers(all=True, filters={"id": handle.container_id}) == []
