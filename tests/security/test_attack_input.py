"""Attack: input that ``validate`` passed but that runs differently, or not at all, or hangs.

Each body goes through the real CLI as root (``python -m agent validate`` and ``run`` on a fresh
node root): it must be refused with exit 2 and the JSON path, never a traceback, and nothing of
the task may run. The sharpest case is a repeated key: ``"elevationLevel": "nonadmin",
"elevationLevel": "admin"`` read as the last value ran a task that asked to be nonadmin as root.
A command line that splits slowly must not hang ``run`` (the old splitter took 104 s on a 2 MB
token with the signal handlers blocked), and one that Linux can't exec ends as a
``CommandLaunchFailed`` value.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Agent, write

GOOD_URL = "https://acct.blob.core.windows.net/c/x?sv=2025-01-05&sig=SECRETSIG"


@pytest.fixture
def proof(tmp_path: Path) -> Path:
    """Where a task that runs writes ``id -u``: a directory every task user can write."""
    where = tmp_path / "proof"
    where.mkdir(mode=0o1777)
    where.chmod(0o1777)
    tmp_path.chmod(0o755)
    return where / "uid"


def validate(file: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "agent", "validate", str(file)], capture_output=True, text=True,
                          cwd=REPO, timeout=30)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout + proc.stderr


def refused(agent: Agent, text: str, path: str, fragment: str, name: str = "task") -> None:
    """``validate`` and ``run`` both exit 2 naming ``path``; no traceback."""
    file = write(agent.workdir / f"{name}.json", text)
    for command in ("validate", "run"):
        code, out = validate(file) if command == "validate" else agent(command, str(file), timeout=30)[::2]
        assert code == 2, (command, code, out[-2000:])
        assert f"{path}: " in out and fragment in out, (command, out[-2000:])
        assert "SECRETSIG" not in out and "set_int_max_str_digits" not in out, out[-2000:]


def body(**fields: Any) -> str:
    return json.dumps({"id": "t", "commandLine": "/bin/true", **fields})


def test_repeated_elevation_key_is_refused_and_nothing_runs_as_root(agent: Agent, proof: Path) -> None:
    text = ('{"id": "t", "commandLine": "/bin/sh -c \'id -u > ' + str(proof) + '\'", '
            '"userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin", '
            '"elevationLevel": "admin"}}}')
    refused(agent, text, "userIdentity.autoUser.elevationLevel", "appears more than once")
    assert not proof.exists(), f"the task ran, as uid {proof.read_text().strip()}"
    assert not agent.task_dir("t").exists()


def test_repeated_key_in_a_job_task_is_refused(agent: Agent, proof: Path) -> None:
    text = ('{"id": "j", "poolInfo": {"poolId": "p"}, "jobPreparationTask": {"commandLine": '
            '"/bin/sh -c \'id -u > ' + str(proof) + '\'", "userIdentity": {"autoUser": '
            '{"elevationLevel": "nonadmin", "elevationLevel": "admin"}}}}')
    file = write(agent.workdir / "job.json", text)
    code, out = validate(file)
    assert code == 2 and "jobPreparationTask.userIdentity.autoUser.elevationLevel: " in out, out
    task = write(agent.workdir / "t.json", body())
    code, _, out = agent("run", str(task), "--job", str(file), timeout=30)
    assert code == 2 and "elevationLevel" in out, out
    assert not proof.exists()


@pytest.mark.parametrize(("fields", "path", "fragment"), [
    ({"commandLine": "/bin/sh -c 'id -u > {proof}'\x00 ignored"}, "commandLine", "NUL"),
    ({"commandLine": "/bin/sh -c 'id -u > {proof}", }, "commandLine", "No closing quotation"),
    ({"commandLine": "/bin/sh -c 'id -u > {proof}'", "environmentSettings": [{"name": "PATH=/tmp", "value": "x"}]},
     "environmentSettings[0].name", "contains '='"),
    ({"commandLine": "/bin/sh -c 'id -u > {proof}'", "environmentSettings": [{"name": "A", "value": "x\x00y"}]},
     "environmentSettings[0].value", "NUL"),
    ({"commandLine": "/bin/sh -c 'id -u > {proof}'", "resourceFiles": [
        {"httpUrl": "http://127.0.0.1:1/f", "filePath": "f\x00/../../x"}]}, "resourceFiles[0].filePath", "NUL"),
    ({"commandLine": "/bin/sh -c 'id -u > {proof}'", "outputFiles": [
        {"filePattern": "*\x00", "destination": {"container": {"containerUrl": GOOD_URL}},
         "uploadOptions": {"uploadCondition": "taskcompletion"}}]}, "outputFiles[0].filePattern", "NUL"),
    ({"commandLine": "/bin/sh -c 'id -u > {proof}'", "constraints": {"maxTaskRetryCount": "BIG"}},
     "constraints.maxTaskRetryCount", "4400 digits is too long"),
], ids=["nul-command", "unclosed-quote", "env-name-equals", "env-value-nul", "filePath-nul", "filePattern-nul",
        "long-integer"])
def test_input_that_cannot_run_is_refused_before_anything_runs(agent: Agent, proof: Path, fields: dict[str, Any],
                                                                path: str, fragment: str) -> None:
    fields = {k: (v.replace("{proof}", str(proof)) if isinstance(v, str) else v) for k, v in fields.items()}
    text = body(**fields).replace('"BIG"', "1" * 4400)
    refused(agent, text, path, fragment)
    assert not proof.exists() and not agent.task_dir("t").exists()


BAD_URLS = ["http://[::1/x", "https://user:pw@[::1/x", "http://u@[zz]/x", "http://a/\x01b", "http://a/b c",
            "http://" + "a" * 64 + ".example/x", "http://\u2603.example/x", "http://xn--zz/x", "ftp://a/x",
            "http:///x", "http://a:99999/x"]


@pytest.mark.parametrize("url", BAD_URLS, ids=range(len(BAD_URLS)))
@pytest.mark.parametrize(("where", "path"), [
    ("httpUrl", "resourceFiles[0].httpUrl"), ("storageContainerUrl", "resourceFiles[0].storageContainerUrl"),
    ("containerUrl", "outputFiles[0].destination.container.containerUrl")])
def test_malformed_url_is_refused_with_its_path(agent: Agent, proof: Path, url: str, where: str, path: str) -> None:
    url += "?sig=SECRETSIG"
    command = f"/bin/sh -c 'id -u > {proof}'"
    if where == "containerUrl":
        text = body(commandLine=command, outputFiles=[{"filePattern": "*.txt", "destination": {"container": {
            "containerUrl": url}}, "uploadOptions": {"uploadCondition": "taskcompletion"}}])
    else:
        text = body(commandLine=command, resourceFiles=[{where: url, "filePath": "f"}])
    refused(agent, text, path, "URL")
    assert not proof.exists()


def test_two_megabyte_token_ends_promptly_with_its_path(agent: Agent) -> None:
    refused(agent, body(commandLine="/bin/echo " + "a" * (2 << 20)), "commandLine", "MAX_ARG_STRLEN")


def test_argv_over_arg_max_is_a_launch_failure_value(agent: Agent) -> None:
    count = (6 * 1024 * 1024 - 4096) // 109  # argv just under 6 MiB: the environment takes it over
    code, data, out = agent.run({"id": "big", "commandLine": "/bin/true " + " ".join(["a" * 100] * count)},
                                timeout=60)
    assert code != 0 and data is not None, out[-2000:]
    failure = data["task"]["executionInfo"]["failureInfo"]
    assert failure["code"] == "CommandLaunchFailed", failure
    assert "Argument list too long" in json.dumps(failure)
