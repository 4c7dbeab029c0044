"""The offline-built images: the Debian/systemd test image and the agent's own Dockerfile.

Both are built here with no network in the build (no Docker Hub, no package index in the
container): scripts/images.sh debootstraps from the apt mirror, and the Dockerfile is built
FROM that image with the dependencies as wheels in the context (tests/infra.py). The serve-based
sidecar tests (API, sibling containers, re-attach after a container restart) come with
`batch-agent serve`.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from infra import DEBIAN_IMAGE, IMAGES_SH, REPO_ROOT

pytestmark = pytest.mark.timeout(600)  # a cold machine builds both images in the first test


def run(client: Any, image: str, argv: list[str], **kw: Any) -> tuple[int, str]:
    """Run ``argv`` in a fresh container (detach + wait + logs: test-infra.md gotcha 7)."""
    container = client.containers.run(image, argv, detach=True, network_mode="none",
                                      name=f"img-{uuid.uuid4().hex[:12]}", **kw)
    try:
        code = container.wait(timeout=120)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_debian_image_has_systemd_and_python(debian_image: str, docker_client: Any) -> None:
    assert debian_image == DEBIAN_IMAGE
    image = docker_client.images.get(debian_image)
    assert image.labels.get("org.batch-agent.image-stamp")
    assert image.attrs["Config"]["Cmd"] == ["/sbin/init"]
    code, out = run(docker_client, debian_image,
                    ["sh", "-c", "readlink -f /sbin/init; python3 -c 'import sys, json, venv; "
                                 "print(sys.version_info[:2])'; command -v useradd"],
                    entrypoint=[])
    assert code == 0, out
    assert out.split() == ["/usr/lib/systemd/systemd", "(3,", "11)", "/usr/sbin/useradd"]


def test_images_sh_is_idempotent(debian_image: str) -> None:
    done = subprocess.run(["bash", str(IMAGES_SH)], capture_output=True, text=True, timeout=60,
                          check=True)
    assert "present" in done.stdout and done.stdout.splitlines()[-1] == DEBIAN_IMAGE


def test_agent_image_runs_the_agent(agent_image: str, docker_client: Any) -> None:
    image = docker_client.images.get(agent_image)
    config = image.attrs["Config"]
    assert config["Entrypoint"] == ["batch-agent"] and config["Cmd"][0] == "serve"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config.get("User", "") in ("", "root", "0")  # root on purpose: see the Dockerfile
    code, out = run(docker_client, agent_image, ["--version"])
    assert (code, out.strip()) == (0, "batch-agent 0.1.0")


@pytest.mark.parametrize("cgroups", ["mounted-rw", "off"])
def test_a_native_task_runs_inside_the_agent_image(agent_image: str, docker_client: Any,
                                                   tmp_path: Path, cgroups: str) -> None:
    """``batch-agent run`` of a native task in the container, with per-task cgroups (the host's
    cgroup tree mounted read-write, as compose.yaml does) or without (use_cgroups = false)."""
    (tmp_path / "task.json").write_text(json.dumps(
        {"id": "t1", "commandLine": "/bin/sh -c 'echo hello from $AZ_BATCH_TASK_ID; exit 3'"}))
    (tmp_path / "agent.toml").write_text("[tasks]\nuse_cgroups = false\n" if cgroups == "off" else "")
    tmp_path.chmod(0o755)
    volumes = {str(tmp_path): {"bind": "/in", "mode": "ro"}}
    if cgroups == "mounted-rw":
        volumes["/sys/fs/cgroup"] = {"bind": "/sys/fs/cgroup", "mode": "rw"}
    code, out = run(docker_client, agent_image,
                    ["run", "/in/task.json", "--config", "/in/agent.toml", "--root", "/mnt/batch/tasks",
                     "--output", "json"], volumes=volumes)
    assert code == 3, out  # `run` exits with the task's exit code
    task = json.loads(out)["task"]
    assert task["state"] == "completed"
    assert task["executionInfo"]["exitCode"] == 3
    assert task["executionInfo"]["failureInfo"]["code"] == "FailureExitCode"


def test_dockerignore_keeps_the_context_small() -> None:
    """Only what `pip install .` needs (and offline wheels) goes into the build context."""
    lines = [ln for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!agent/"} <= set(lines)


def test_compose_mounts_the_node_root_at_the_same_path_and_the_socket() -> None:
    text = (REPO_ROOT / "compose.yaml").read_text()
    assert "- ${NODE_ROOT:-/mnt/batch}:${NODE_ROOT:-/mnt/batch}\n" in text
    assert "- /var/run/docker.sock:/var/run/docker.sock\n" in text
    assert '"127.0.0.1:8080:8080"' in text           # the API on the host's loopback only
    assert "account-key" in text and "ACCOUNT_KEY" not in text  # a secret file, not the env
