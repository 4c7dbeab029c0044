"""Whole tasks with resource files and output files, through `batch-agent run` / `plan`.

The CLI runs as a subprocess (`python -m agent`) on a fresh node root against real Azurite, so
the real process runner, users (as root: the `_azbatch` pool account), hooks and task runner are
what is tested. Waiting is on the agent's exit, never on sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.azurite, pytest.mark.timeout(120)]
EXIT_NOT_RUN = 125


@pytest.fixture
def agent(node_root: Path, tmp_path: Path, azurite: Any) -> Any:
    config = tmp_path / "agent.toml"
    config.write_text("[tasks]\nkill_grace = 0.2\n"
                      "[storage]\nbackoff = 0\nretries = 2\ntimeout = 10.0\nconcurrency = 4\n"
                      f"connection_string = '{azurite.connection_string}'\n")
    config.chmod(0o600)                     # it holds an account key: the agent refuses it otherwise

    class Agent:
        root = node_root
        def __init__(self) -> None:
            self.outputs: list[str] = []   # every stdout/stderr the agent printed, for secret scans

        def __call__(self, *args: str) -> tuple[int, Any, str]:
            proc = subprocess.run([sys.executable, "-m", "agent", *args, "--root", str(node_root),
                                   "--config", str(config)], capture_output=True, text=True, cwd=REPO,
                                  timeout=100)
            self.outputs += [proc.stdout, proc.stderr]
            assert "Traceback" not in proc.stderr, proc.stderr
            data = json.loads(proc.stdout) if "json" in args and proc.stdout.strip() else None
            return proc.returncode, data, proc.stdout + proc.stderr

        def run(self, task: dict[str, Any], *extra: str) -> tuple[int, Any, str]:
            path = tmp_path / f"{task['id']}.json"
            path.write_text(json.dumps(task))
            return self("run", str(path), "--output", "json", *extra)

        def plan(self, task: dict[str, Any], *extra: str) -> tuple[int, Any, str]:
            path = tmp_path / f"{task['id']}.json"
            path.write_text(json.dumps(task))
            return self("plan", str(path), *extra)

        def task_dir(self, task_id: str) -> Path:
            return node_root / "workitems" / "local" / "job-1" / task_id

    return Agent()


def output(pattern: str, url: str, path: str | None = None,
           condition: str = "taskcompletion") -> dict[str, Any]:
    container: dict[str, Any] = {"containerUrl": url}
    if path:
        container["path"] = path
    return {"filePattern": pattern, "destination": {"container": container},
            "uploadOptions": {"uploadCondition": condition}}


def sh(script: str) -> str:
    return f"/bin/sh -c '{script}'"


def test_task_downloads_runs_and_uploads(agent: Any, azurite: Any) -> None:
    inputs, in_sas = azurite.container(permission="rl")
    azurite.upload(inputs, "in/a.txt", b"alpha\n")
    azurite.upload(inputs, "in/sub/b.txt", b"beta\n")
    azurite.upload(inputs, "other.txt", b"not wanted\n")
    auto, _ = azurite.container()
    azurite.upload(auto, "tool.sh", b"echo tool ran\n")
    outputs, out_sas = azurite.container(permission="cw")
    task = {
        "id": "io1",
        "commandLine": sh("cat data/in/a.txt data/in/sub/b.txt single.txt > result.txt; sh tools/tool.sh; "
                          "mkdir -p res/x && echo deep > res/x/deep.dat"),
        "resourceFiles": [{"storageContainerUrl": in_sas, "blobPrefix": "in/", "filePath": "data"},
                          {"httpUrl": in_sas.replace("?", "/in/a.txt?"), "filePath": "single.txt"},
                          {"autoStorageContainerName": auto, "filePath": "tools", "fileMode": "0750"}],
        "outputFiles": [output("result.txt", out_sas, "task/result.txt"),
                        output("res/**/*.dat", out_sas, "dats"),
                        output("../std*.txt", out_sas, "logs"),
                        output("result.txt", out_sas, "never.txt", condition="taskfailure")],
    }
    rc, data, out = agent.run(task)
    assert rc == 0, out
    info = data["task"]["executionInfo"]
    assert info["exitCode"] == 0 and info["result"] == "success" and "failureInfo" not in info
    wd = agent.task_dir("io1") / "wd"
    assert (wd / "data/in/sub/b.txt").read_bytes() == b"beta\n" and not (wd / "data/other.txt").exists()
    assert (wd / "tools/tool.sh").stat().st_mode & 0o777 == 0o750
    assert sorted(azurite.list(outputs)) == ["dats/x/deep.dat", "logs/stderr.txt", "logs/stdout.txt",
                                             "task/result.txt"]
    assert azurite.download(outputs, "task/result.txt") == b"alpha\nbeta\nalpha\n"
    assert azurite.download(outputs, "logs/stdout.txt") == b"tool ran\n"
    log = (agent.task_dir("io1") / "fileuploadout.txt").read_text()
    assert "original_pattern: ../std*.txt" in log and log.rstrip().endswith("Done uploading, exiting...")
    assert (agent.task_dir("io1") / "fileuploaderr.txt").read_text() == ""
    if os.geteuid() == 0:                       # everything is the task user's (the _azbatch account)
        owner = (wd / "data/in/a.txt").stat().st_uid
        assert owner != 0 and (agent.task_dir("io1") / "fileuploadout.txt").stat().st_uid == owner
        assert (wd / "data/in").stat().st_uid == owner


def test_pre_processing_failure_does_not_run_the_command(agent: Any, azurite: Any) -> None:
    _, sas = azurite.container(permission="r")
    _, out_sas = azurite.container(permission="cw")
    task = {"id": "pre1", "commandLine": sh("echo ran > $AZ_BATCH_NODE_SHARED_DIR/ran"),
            "resourceFiles": [{"httpUrl": sas.replace("?", "/missing.bin?"), "filePath": "m.bin"}],
            "outputFiles": [output("../std*.txt", out_sas)],
            "exitConditions": {"preProcessingError": {"jobAction": "none", "dependencyAction": "satisfy"}}}
    rc, data, out = agent.run(task)
    assert rc == EXIT_NOT_RUN, out
    info = data["task"]["executionInfo"]
    assert "exitCode" not in info and info["result"] == "failure" and info["retryCount"] == 0
    failure = info["failureInfo"]
    assert (failure["category"], failure["code"]) == ("usererror", "BlobNotFound")
    details = {d["name"]: d["value"] for d in failure["details"]}
    assert details["FilePath"] == "m.bin" and "sig=REDACTED" in details["Url"]
    assert data["task"]["exitDecision"]["matched"] == "preProcessingError"
    assert not (agent.root / "shared" / "ran").exists()
    assert not (agent.task_dir("pre1") / "fileuploadout.txt").exists()
    assert not (agent.task_dir("pre1") / "fileuploaderr.txt").exists()


def test_upload_failure_is_the_tasks_failure(agent: Any, azurite: Any) -> None:
    _, read_only = azurite.container(permission="rl")
    task = {"id": "up1", "commandLine": sh("echo result > r.txt"),
            "outputFiles": [output("r.txt", read_only)],
            "exitConditions": {"fileUploadError": {"jobAction": "disable", "dependencyAction": "block"}}}
    _, data, out = agent.run(task)
    info = data["task"]["executionInfo"]
    assert info["exitCode"] == 0 and info["result"] == "failure", out
    assert (info["failureInfo"]["category"], info["failureInfo"]["code"]) == ("usererror",
                                                                             "FileUploadAccessDenied")
    decision = data["task"]["exitDecision"]
    assert (decision["matched"], decision["jobAction"], decision["dependencyAction"]) == (
        "fileUploadError", "disable", "block")
    report = json.loads((agent.task_dir("up1") / "fileuploaderr.txt").read_text())
    assert report["code"] == "AuthenticationFailed" and report["pattern"] == "r.txt"
    assert report["file"] == str(agent.task_dir("up1") / "wd" / "r.txt")


def test_a_planted_link_to_a_secret_is_not_uploaded(agent: Any, azurite: Any) -> None:
    outputs, sas = azurite.container(permission="cwl")
    task = {"id": "leak1", "commandLine": sh("echo mine > a.txt; ln -s /etc/shadow b.txt"),
            "outputFiles": [output("*.txt", sas, "o")]}
    _, data, out = agent.run(task)
    failure = data["task"]["executionInfo"]["failureInfo"]
    assert (failure["category"], failure["code"]) == ("usererror", "FileUploadMiscError"), out
    assert "o/b.txt" not in azurite.list(outputs)


def _secret_forms(sas: str) -> set[str]:
    sig = sas.split("sig=")[1].split("&")[0]
    return {sig, unquote(sig)}


def test_a_sas_signature_appears_nowhere(agent: Any, azurite: Any, tmp_path: Path) -> None:
    inputs, in_sas = azurite.container(permission="rl")
    azurite.upload(inputs, "in/a.txt", b"a")
    _, out_sas = azurite.container(permission="cwl")
    _, denied = azurite.container(permission="r")                # its upload fails: errors are scanned too
    secrets = _secret_forms(in_sas) | _secret_forms(out_sas) | _secret_forms(denied)
    ok = {"id": "sec1", "commandLine": sh("echo done > r.txt"),
          "resourceFiles": [{"storageContainerUrl": in_sas, "blobPrefix": "in/"},
                            {"httpUrl": in_sas.replace("?", "/in/a.txt?"), "filePath": "a.txt"}],
          "outputFiles": [output("r.txt", out_sas, "r.txt"), output("../std*.txt", out_sas, "logs")]}
    failing = {**ok, "id": "sec2", "outputFiles": [output("r.txt", denied)]}
    missing = {**ok, "id": "sec3", "resourceFiles": [{"httpUrl": in_sas.replace("?", "/none?"),
                                                      "filePath": "n"}]}
    for task in (ok, failing, missing):
        agent.run(task, "--log-level", "debug")                  # JSON result, debug logs on stderr
        agent("run", str(tmp_path / f"{task['id']}.json"), "--log-level", "debug")   # text result
        for extra in (("--output", "json"), (), ("--check", "--output", "json"), ("--check",)):
            rc, _, out = agent.plan(task, *extra)
            assert rc == 0, out
    assert any("sig=REDACTED" in text for text in agent.outputs)   # the URLs were rendered, masked
    scanned = list(agent.outputs)
    for path in [*agent.root.rglob("*"), *Path("/var/lib/batch-agent").glob("**/*")]:
        if path.is_file() and not path.is_symlink():
            scanned.append(path.read_bytes().decode(errors="replace"))
    assert len(scanned) > 20
    for text in scanned:
        for secret in secrets:
            assert secret not in text


@pytest.mark.azurite
@pytest.mark.parametrize("output", ["json", "text"])
def test_run_shows_transfer_progress_on_a_terminal_only(node_root: Path, tmp_path: Path, azurite: Any,
                                                       output: str) -> None:
    """stderr a terminal: a rich bar for the transfers; stdout (the result) stays clean either way."""
    import pty

    name, sas = azurite.container(permission="rl")
    azurite.upload(name, "big.bin", os.urandom(4 * 1024 * 1024))
    task = tmp_path / "tty.json"
    task.write_text(json.dumps({"id": "tty", "commandLine": "true", "resourceFiles": [{"storageContainerUrl": sas}]}))
    parent, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(task), "--root", str(node_root),
                             "--output", output], stdout=subprocess.PIPE, stderr=child, cwd=REPO, env=env)
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:                     # EIO: the agent closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(parent)
    stdout, _ = proc.communicate(timeout=100)
    assert proc.returncode == 0, seen
    terminal = seen.decode(errors="replace")
    assert "transfers" in terminal and "Traceback" not in terminal
    assert b"\x1b" not in stdout and b"transfers" not in stdout
    if output == "json":
        assert json.loads(stdout)["task"]["executionInfo"]["exitCode"] == 0
    assert sas.split("sig=")[1][:10] not in terminal


@pytest.mark.azurite
def test_no_progress_when_stderr_is_not_a_terminal(agent: Any, azurite: Any) -> None:
    name, sas = azurite.container(permission="rl")
    azurite.upload(name, "a.bin", b"a" * 100_000)
    rc, data, output = agent.run({"id": "pipe", "commandLine": "true", "resourceFiles": [{"storageContainerUrl": sas}]})
    assert rc == 0 and data["task"]["executionInfo"]["exitCode"] == 0
    assert "transfers" not in output and "\x1b" not in output


def _listed(azurite: Any, container: str) -> list[str]:
    """Every name in the container, uncommitted blobs too (Azurite honours include=uncommittedblobs)."""
    blobs = azurite.service.get_container_client(container).list_blobs(include=["uncommittedblobs"])
    return [b.name for b in blobs]


def test_plan_check_writes_nothing_and_tells_write_from_no_write(agent: Any, azurite: Any) -> None:
    """A SAS with write but no delete: the check says "accepts writes" and the container stays
    empty (no probe blob, no uncommitted block); without write it reports the denial."""
    write_only, sas_w = azurite.container(permission="w")
    create_only, sas_c = azurite.container(permission="c")        # Put Blob of a new blob only
    read_only, sas_r = azurite.container(permission="rl")
    azurite.service.get_container_client(write_only).get_blob_client("seen").stage_block("QUFBQQ==", b"x")
    assert _listed(azurite, write_only) == ["seen"]               # the listing does show uncommitted blobs
    azurite.service.get_container_client(write_only).delete_blob("seen")
    task = {"id": "probe", "commandLine": "true",
            "outputFiles": [output("a.txt", sas_w), output("b.txt", sas_c), output("c.txt", sas_r)]}
    rc, data, out = agent.plan(task, "--check", "--output", "json")
    assert rc == 0, out
    checks = {c["check"]: c for c in data["check"]}
    assert (checks["probe.outputFiles[0]"]["ok"], checks["probe.outputFiles[0]"]["detail"]) == (True, "accepts writes")
    for denied in ("probe.outputFiles[1]", "probe.outputFiles[2]"):
        assert (checks[denied]["ok"], checks[denied]["detail"]) == (False, "write denied (FileUploadAccessDenied)")
    for container in (write_only, create_only, read_only):
        assert _listed(azurite, container) == []
