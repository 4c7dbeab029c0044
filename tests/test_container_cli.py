"""Container tasks end to end through ``python -m agent run`` / ``plan`` on the real engine.

What a user runs: the CLI wires the orphan sweep, the image hook and the container runner. The
agent config puts containers on network ``none`` (never the bridge in tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.container.build import LABEL_NODE_ROOT

REPO = Path(__file__).resolve().parents[1]
WRONG_PASSWORD = "Cli-Wr0ng-Pa55-k2Vb"


class Cli:
    def __init__(self, root: Path, tmp: Path, image: str, client: Any, extra_config: str = "") -> None:
        self.root, self.tmp, self.image, self.client = root, tmp, image, client
        self.config = tmp / "agent.toml"
        self.config.write_text('[docker]\nnetwork = "none"\nstop_grace = 0\n[tasks]\nkill_grace = 0\n' + extra_config)
        self.config.chmod(0o600)        # extra_config may hold an account key, refused unless private

    def __call__(self, command: str, task: dict[str, Any], *extra: str) -> tuple[int, Any, str]:
        task = {"commandLine": "true", **task}
        task["containerSettings"] = {"imageName": self.image, **task.get("containerSettings", {})}
        path = self.tmp / f"{task['id']}.json"
        path.write_text(json.dumps(task))
        proc = subprocess.run([sys.executable, "-m", "agent", command, str(path), "--root", str(self.root),
                               "--config", str(self.config), "--output", "json", *extra],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr
        data = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, data, proc.stdout + proc.stderr

    def task_dir(self, task_id: str) -> Path:
        return self.root / "workitems" / "local" / "job-1" / task_id


@pytest.fixture
def cli(node_root: Path, tmp_path: Path, test_image: str, docker_client: Any) -> Iterator[Cli]:
    yield Cli(node_root, tmp_path, test_image, docker_client)
    mine = {"label": f"{LABEL_NODE_ROOT}={node_root}"}
    for summary in docker_client.api.containers(all=True, filters=mine):
        docker_client.api.remove_container(summary["Id"], force=True)


def test_run_container_task(cli: Cli) -> None:
    rc, data, _ = cli("run", {"id": "c1", "commandLine": "sh -c 'printf out; echo err >&2; exit 4'"})
    assert rc == 4
    info = data["task"]["executionInfo"]
    assert info["exitCode"] == 4 and info["containerInfo"]["state"] == "exited"
    assert (cli.task_dir("c1") / "stdout.txt").read_text() == "out"
    assert (cli.task_dir("c1") / "stderr.txt").read_text() == "err\n"


def test_run_sweeps_orphans_of_its_node_root_first(cli: Cli) -> None:
    orphan = cli.client.containers.create(cli.image, ["true"], network="none",
                                          labels={LABEL_NODE_ROOT: str(cli.root), "batch-agent.task": "old"})
    stranger = cli.client.containers.create(cli.image, ["true"], network="none")
    try:
        rc, _, _ = cli("run", {"id": "c2"})
        assert rc == 0
        present = {c["Id"] for c in cli.client.api.containers(all=True)}
        assert orphan.id not in present and stranger.id in present
    finally:
        stranger.remove(force=True)


@pytest.mark.parametrize(("settings", "code"), [
    ({"containerRunOptions": "--no-such-option"}, "ContainerInvalidSettings"),
    ({"imageName": "127.0.0.1:1/no/such:image"}, "ContainerInvalidImage"),
])
def test_pre_processing_failures_exit_125(cli: Cli, settings: dict[str, Any], code: str) -> None:
    rc, data, _ = cli("run", {"id": "bad", "containerSettings": settings})
    assert rc == 125
    info = data["task"]["executionInfo"]
    assert info["failureInfo"]["code"] == code and "exitCode" not in info


def test_wrong_registry_password_appears_nowhere(cli: Cli, registry: Any) -> None:
    registry.remove_local(registry.image)
    settings = {"imageName": registry.image,
                "registry": {"registryServer": registry.server, "username": registry.user,
                             "password": WRONG_PASSWORD}}
    rc, data, output = cli("run", {"id": "reg", "containerSettings": settings}, "--log-level", "debug")
    assert rc == 125
    assert data["task"]["executionInfo"]["failureInfo"]["code"] == "ContainerInvalidRegistry"
    assert WRONG_PASSWORD not in output
    rc, data, output = cli("plan", {"id": "reg", "containerSettings": settings})
    assert rc == 0 and WRONG_PASSWORD not in output


def test_plan_shows_the_container_creation(cli: Cli) -> None:
    task = {"id": "p1", "commandLine": "echo hi",
            "environmentSettings": [{"name": "API_TOKEN", "value": "tok-Secret-123"}],
            "containerSettings": {"containerRunOptions": "--rm -e EXTRA=x-Secret-456 --memory 64m",
                                  "containerHostBatchBindMounts": [{"source": "Task"},
                                                                   {"source": "Shared", "isReadOnly": True}]}}
    rc, data, output = cli("plan", task)
    assert rc == 0
    container = data["container"]
    assert container["image"] == f"{cli.image}" and container["command"] == ["echo", "hi"]
    shared = cli.root / "shared"
    assert f"{shared}:{shared}:ro" in container["mounts"]
    assert {"API_TOKEN", "EXTRA", "AZ_BATCH_TASK_ID"} <= set(container["env"])
    assert "AZ_BATCH_NODE_SHARED_DIR" in container["env"]
    assert "AZ_BATCH_NODE_STARTUP_DIR" not in container["env"]        # Startup is not mounted
    assert container["working_dir"] == str(cli.task_dir("p1") / "wd")
    assert container["network"] == "none" and container["remove_after"] is True
    assert container["options"]["mem_limit"] == 64 * 1024 * 1024
    assert "x-Secret-456" not in output and "tok-Secret-123" not in output


def test_plan_kill_ladder_uses_the_docker_grace(node_root: Path, tmp_path: Path, test_image: str,
                                                docker_client: Any) -> None:
    """Containers stop with [docker] stop_grace (whole seconds, rounded up), not [tasks] kill_grace."""
    cli = Cli(node_root, tmp_path, test_image, docker_client)
    cli.config.write_text('[docker]\nstop_grace = 2.5\n[tasks]\nkill_grace = 40\n')
    rc, data, _ = cli("plan", {"id": "grace"})
    assert rc == 0, data
    assert data["limits"]["killLadder"] == "docker stop (SIGTERM, 3s, SIGKILL), then remove"


@pytest.mark.azurite
def test_resource_and_output_files_work_unchanged(node_root: Path, tmp_path: Path, test_image: str,
                                                  docker_client: Any, azurite: Any) -> None:
    inputs, in_sas = azurite.container(permission="rl")
    azurite.upload(inputs, "data/in.txt", b"from-blob\n")
    outputs, out_sas = azurite.container(permission="racwl")
    storage = (f"[storage]\nbackoff = 0\nretries = 2\nconnection_string = '{azurite.connection_string}'\n")
    cli = Cli(node_root, tmp_path, test_image, docker_client, storage)
    task = {"id": "files", "commandLine": "sh -c 'tr a-z A-Z < data/in.txt > result.txt'",
            "containerSettings": {"containerRunOptions": "--rm"},
            "resourceFiles": [{"storageContainerUrl": in_sas, "blobPrefix": "data/"}],
            "outputFiles": [{"filePattern": "result.txt",
                             "destination": {"container": {"containerUrl": out_sas, "path": "r/result.txt"}},
                             "uploadOptions": {"uploadCondition": "taskSuccess"}}]}
    rc, data, _ = cli("run", task)
    assert rc == 0, data
    assert data["task"]["executionInfo"]["containerInfo"]["state"] == "exited"
    assert azurite.download(outputs, "r/result.txt") == b"FROM-BLOB\n"
