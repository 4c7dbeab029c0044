"""End-to-end tests of `batch-agent run / plan / validate` with real processes.

Each test runs the CLI as a subprocess (`python -m agent`) on a fresh node root, so what is
tested is exactly what a user runs. Waiting is on facts (files the task writes, the agent's
exit), never on sleeps.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture
def agent(node_root: Path, tmp_path: Path) -> Any:
    config = write(tmp_path / "agent.toml", "[tasks]\nkill_grace = 0.2\n[node]\npool_id = 'testpool'\n")

    class Agent:
        root = node_root

        def __call__(self, *args: str, check_json: bool = True, timeout: float = 60) -> tuple[int, Any, str]:
            proc = subprocess.run(
                [sys.executable, "-m", "agent", *args, "--root", str(node_root), "--config", str(config)],
                capture_output=True, text=True, cwd=REPO, timeout=timeout)
            assert "Traceback" not in proc.stderr, proc.stderr
            data = json.loads(proc.stdout) if check_json and "--output" in args and proc.stdout.strip() else None
            return proc.returncode, data, proc.stdout + proc.stderr

        def run(self, task: dict[str, Any], *extra: str) -> tuple[int, Any, str]:
            path = write(tmp_path / f"{task['id']}.json", task)
            return self("run", str(path), "--output", "json", *extra)

        def task_dir(self, task_id: str, job: str = "local") -> Path:
            return node_root / "workitems" / job / "job-1" / task_id

        def stdout(self, task_id: str, job: str = "local") -> str:
            return (self.task_dir(task_id, job) / "stdout.txt").read_text()

    return Agent()


def test_run_success_reports_batch_shapes(agent: Any) -> None:
    rc, data, _ = agent.run({"id": "ok1", "commandLine": "/bin/echo hello world"})
    assert rc == 0
    task = data["task"]
    assert task["id"] == "ok1" and task["state"] == "completed"
    info = task["executionInfo"]
    assert info["exitCode"] == 0 and info["result"] == "success" and info["retryCount"] == 0
    assert "failureInfo" not in info and info["startTime"].endswith("Z")
    assert task["nodeInfo"]["taskRootDirectory"] == "workitems/local/job-1/ok1"
    assert task["nodeInfo"]["poolId"] == "testpool"
    assert agent.stdout("ok1") == "hello world\n"
    assert (agent.task_dir("ok1") / "wd").is_dir() and (agent.task_dir("ok1") / "certs").is_dir()
    for sub in ("shared", "startup", "applications", "fsmounts", "workitems"):
        assert (agent.root / sub).is_dir()


def test_command_runs_without_a_shell(agent: Any) -> None:
    rc, _, _ = agent.run({"id": "noshell", "commandLine": "/bin/echo $HOME '*' \"a  b\" ~ `id`"})
    assert rc == 0
    assert agent.stdout("noshell") == "$HOME * a  b ~ `id`\n"


def test_environment_is_batch_minimal_and_ordered(agent: Any, tmp_path: Path) -> None:
    job = {"id": "envjob", "poolInfo": {"poolId": "p"},
           "commonEnvironmentSettings": [{"name": "BOTH", "value": "job"}, {"name": "JOBONLY", "value": "j"}],
           "jobPreparationTask": {"commandLine": "/bin/true"}}
    task = {"id": "env1", "commandLine": "/usr/bin/env",
            "environmentSettings": [{"name": "BOTH", "value": "task"}, {"name": "EMPTY"}]}
    os.environ["BATCH_AGENT_TEST_LEAK"] = "1"
    try:
        rc, _, _ = agent.run(task, "--job", str(write(tmp_path / "job.json", job)))
    finally:
        del os.environ["BATCH_AGENT_TEST_LEAK"]
    assert rc == 0
    env = dict(line.split("=", 1) for line in agent.stdout("env1", "envjob").splitlines())
    task_dir = agent.task_dir("env1", "envjob")
    assert env["BOTH"] == "task" and env["JOBONLY"] == "j" and env["EMPTY"] == ""
    assert env["AZ_BATCH_TASK_ID"] == "env1" and env["AZ_BATCH_JOB_ID"] == "envjob"
    assert env["AZ_BATCH_TASK_DIR"] == str(task_dir)
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == env["HOME"] == str(task_dir / "wd")
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(agent.root)
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == str(agent.root / "shared")
    assert env["AZ_BATCH_JOB_PREP_DIR"] == str(agent.task_dir("jobpreparation", "envjob"))
    assert env["AZ_BATCH_POOL_ID"] == "testpool" and env["AZ_BATCH_ACCOUNT_URL"].endswith("/")
    assert env["PATH"].endswith(f":{agent.root / 'shared'}:{task_dir / 'wd'}")
    assert "BATCH_AGENT_TEST_LEAK" not in env
    assert set(env) - {"HOME", "USER", "PATH", "BOTH", "JOBONLY", "EMPTY"} == \
        {k for k in env if k.startswith("AZ_BATCH_")}


def test_exit_code_and_exit_conditions(agent: Any) -> None:
    task = {"id": "exit3", "commandLine": "/bin/sh -c 'exit 3'",
            "exitConditions": {"exitCodeRanges": [{"start": 2, "end": 4,
                                                   "exitOptions": {"dependencyAction": "satisfy"}}]}}
    rc, data, _ = agent.run(task)
    assert rc == 3
    info = data["task"]["executionInfo"]
    assert info["exitCode"] == 3 and info["result"] == "failure"
    assert info["failureInfo"]["code"] == "FailureExitCode"
    assert info["failureInfo"]["category"] == "usererror"
    assert data["task"]["exitDecision"] == {"jobAction": "terminate", "dependencyAction": "satisfy",
                                            "matched": "exitCodeRanges[0]"}


def test_program_not_found_is_a_pre_processing_error(agent: Any) -> None:
    rc, data, _ = agent.run({"id": "nf", "commandLine": "no-such-program-xyz arg",
                             "exitConditions": {"preProcessingError": {"dependencyAction": "satisfy"}}})
    assert rc == 125
    info = data["task"]["executionInfo"]
    assert "exitCode" not in info and info["result"] == "failure"
    assert info["failureInfo"]["code"] == "CommandProgramNotFound"
    assert data["task"]["exitDecision"]["matched"] == "preProcessingError"


def test_unsupported_field_fails_naming_it(agent: Any) -> None:
    task = {"id": "mi", "commandLine": "/bin/true",
            "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": "/bin/true"}}
    rc, data, _ = agent.run(task)
    assert rc == 125
    failure = data["task"]["executionInfo"]["failureInfo"]
    assert failure["code"] == "TaskFeatureNotSupported" and "multiInstanceSettings" in failure["message"]


def test_wall_clock_kills_the_whole_tree(agent: Any, node_root: Path) -> None:
    pids = node_root / "shared" / "pids.txt"
    script = (f"trap '' TERM; setsid sh -c 'trap \"\" TERM; echo $$ >> {pids}; exec sleep 300' & "
              f"(sh -c 'echo $$ >> {pids}; exec sleep 300' &) ; echo $$ >> {pids}; "
              "while :; do sleep 1; done")
    task = {"id": "wc", "commandLine": f"/bin/sh -c \"{script}\"",
            "constraints": {"maxWallClockTime": "PT1S", "maxTaskRetryCount": 3}}
    started = time.monotonic()
    rc, data, _ = agent.run(task)
    assert time.monotonic() - started < 20
    info = data["task"]["executionInfo"]
    assert info["failureInfo"]["code"] == "TaskEnded" and info["failureInfo"]["category"] == "servererror"
    assert info["exitCode"] == -signal.SIGKILL and rc == 128 + signal.SIGKILL
    assert info["retryCount"] == 0  # a wall-clock kill is not retried
    recorded = [int(p) for p in pids.read_text().split()]
    assert len(recorded) == 3
    alive = [p for p in recorded if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_retries_until_success(agent: Any, node_root: Path) -> None:
    counter = node_root / "shared" / "count"
    cmd = f"/bin/sh -c 'echo x >> {counter}; test $(wc -l < {counter}) -ge 3'"
    rc, data, _ = agent.run({"id": "retry", "commandLine": cmd, "constraints": {"maxTaskRetryCount": 2}})
    assert rc == 0
    info = data["task"]["executionInfo"]
    assert info["retryCount"] == 2 and info["result"] == "success" and "lastRetryTime" in info
    counter.unlink()
    rc, data, _ = agent.run({"id": "retry2", "commandLine": cmd, "constraints": {"maxTaskRetryCount": 1}})
    assert rc == 1
    info = data["task"]["executionInfo"]
    assert info["retryCount"] == 1 and info["failureInfo"]["code"] == "FailureExitCode"


def test_retry_count_from_the_job_and_unlimited(agent: Any, node_root: Path, tmp_path: Path) -> None:
    counter = node_root / "shared" / "count-unlimited"
    cmd = f"/bin/sh -c 'echo x >> {counter}; test $(wc -l < {counter}) -ge 4'"
    job = write(tmp_path / "job.json", {"id": "rjob", "poolInfo": {}, "constraints": {"maxTaskRetryCount": -1}})
    rc, data, _ = agent.run({"id": "unl", "commandLine": cmd}, "--job", str(job))
    assert rc == 0 and data["task"]["executionInfo"]["retryCount"] == 3


def test_working_dir_is_clean_on_retry(agent: Any, node_root: Path) -> None:
    marker = node_root / "shared" / "seen"
    cmd = f"/bin/sh -c 'ls; test -e leftover && echo dirty >> {marker}; touch leftover; exit 1'"
    rc, _, _ = agent.run({"id": "clean", "commandLine": cmd, "constraints": {"maxTaskRetryCount": 1}})
    assert rc == 1 and not marker.exists()


def test_job_preparation_and_release(agent: Any, tmp_path: Path) -> None:
    job = {"id": "pjob", "poolInfo": {"poolId": "p"},
           "jobPreparationTask": {"commandLine": "/bin/sh -c 'echo prepared > $AZ_BATCH_NODE_SHARED_DIR/prep.txt'"},
           "jobReleaseTask": {"commandLine": "/bin/sh -c 'echo released; env | grep AZ_BATCH_JOB_PREP_DIR'"}}
    task = {"id": "main", "commandLine": "/bin/sh -c 'cat $AZ_BATCH_NODE_SHARED_DIR/prep.txt'"}
    rc, data, _ = agent.run(task, "--job", str(write(tmp_path / "job.json", job)))
    assert rc == 0
    assert agent.stdout("main", "pjob") == "prepared\n"
    prep, release = data["jobPreparationTaskExecutionInfo"], data["jobReleaseTaskExecutionInfo"]
    assert prep["state"] == "completed" and prep["exitCode"] == 0 and prep["result"] == "success"
    assert prep["taskRootDirectory"] == "workitems/pjob/job-1/jobpreparation"
    assert release["exitCode"] == 0 and "retryCount" not in release
    assert agent.stdout("jobrelease", "pjob").startswith("released\nAZ_BATCH_JOB_PREP_DIR=")
    assert data["job"] == {"id": "pjob", "state": "active"}


def test_failed_preparation_blocks_the_task(agent: Any, tmp_path: Path) -> None:
    job = {"id": "bjob", "poolInfo": {},
           "jobPreparationTask": {"commandLine": "/bin/sh -c 'exit 7'", "constraints": {"maxTaskRetryCount": 1}},
           "jobReleaseTask": {"commandLine": "/bin/true"}}
    rc, data, _ = agent.run({"id": "never", "commandLine": "/bin/true"}, "--job",
                            str(write(tmp_path / "job.json", job)))
    assert rc == 125
    assert data["task"]["state"] == "active"
    assert data["task"]["schedulingError"]["code"] == "JobPreparationTaskFailed"
    prep = data["jobPreparationTaskExecutionInfo"]
    assert prep["exitCode"] == 7 and prep["retryCount"] == 1 and prep["failureInfo"]["code"] == "FailureExitCode"
    assert not agent.task_dir("never", "bjob").exists()
    assert data["jobReleaseTaskExecutionInfo"]["result"] == "success"


@pytest.mark.parametrize(("action", "state", "reason"), [
    ("terminate", "completed", "TaskFailed"), ("disable", "disabled", None), ("none", "active", None)])
def test_job_action_ends_the_job(agent: Any, tmp_path: Path, action: str, state: str, reason: str | None) -> None:
    job = write(tmp_path / "job.json", {"id": "ajob", "poolInfo": {},
                                        "onTaskFailure": "performExitOptionsJobAction"})
    task = {"id": "fails", "commandLine": "/bin/false",
            "exitConditions": {"default": {"jobAction": action}}}
    rc, data, _ = agent.run(task, "--job", str(job))
    assert rc == 1
    assert data["job"]["state"] == state
    assert data["job"].get("executionInfo", {}).get("terminateReason") == reason


def test_default_job_action_terminates_a_performing_job(agent: Any, tmp_path: Path) -> None:
    job = write(tmp_path / "job.json", {"id": "djob", "poolInfo": {}, "onTaskFailure": "performexitoptionsjobaction"})
    rc, data, _ = agent.run({"id": "f", "commandLine": "/bin/false"}, "--job", str(job))
    assert rc == 1
    assert data["job"]["state"] == "completed" and data["job"]["executionInfo"]["terminateReason"] == "TaskFailed"


@pytest.fixture
def root_only() -> None:
    assert os.geteuid() == 0, "user-switching tests need root (CI and the dev machines run as root)"


@pytest.mark.usefixtures("root_only")
@pytest.mark.parametrize(("identity", "expected"), [
    (None, "_azbatch"),
    ({"autoUser": {"scope": "pool", "elevationLevel": "nonAdmin"}}, "_azbatch"),
    ({"autoUser": {"elevationLevel": "admin"}}, "root"),
    ({"autoUser": {"scope": "task", "elevationLevel": "admin"}}, "root"),
])
def test_task_user(agent: Any, identity: dict[str, Any] | None, expected: str) -> None:
    task: dict[str, Any] = {"id": "who", "commandLine": "/bin/sh -c 'id -un; echo $USER; touch $HOME/f; "
                                                        "touch $AZ_BATCH_NODE_SHARED_DIR/s_$$'"}
    if identity:
        task["userIdentity"] = identity
    rc, _, out = agent.run(task)
    assert rc == 0, out
    name, user = agent.stdout("who").split()
    assert name == expected and user == expected
    wd = agent.task_dir("who") / "wd"
    assert wd.stat().st_uid == pwd.getpwnam(expected).pw_uid
    assert (agent.task_dir("who") / "stdout.txt").stat().st_uid == pwd.getpwnam(expected).pw_uid


@pytest.mark.usefixtures("root_only")
def test_task_scope_user_is_its_own(agent: Any) -> None:
    task = {"id": "tscope", "commandLine": "/usr/bin/id -un",
            "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}}}
    rc, _, out = agent.run(task)
    assert rc == 0, out
    name = agent.stdout("tscope").strip()
    assert name.startswith("_azbatchtask_") and pwd.getpwnam(name).pw_uid != 0


def test_terminate_on_sigterm(agent: Any, node_root: Path, tmp_path: Path) -> None:
    ready = node_root / "shared" / "ready"
    task = write(tmp_path / "t.json", {"id": "term", "commandLine":
                                       f"/bin/sh -c 'touch {ready}; exec sleep 300'"})
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(task), "--root", str(node_root),
                             "--output", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, text=True)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    info = json.loads(out)["task"]["executionInfo"]
    assert info["failureInfo"]["code"] == "TaskEnded" and info["failureInfo"]["category"] == "usererror"
    assert info["exitCode"] == -signal.SIGTERM


@pytest.mark.parametrize(("body", "fragment"), [
    ({"id": "x", "commandLine": "a", "comandLine": "b"}, "comandLine: unknown field; did you mean 'commandLine'?"),
    ({"id": "bad id", "commandLine": "a"}, "id: 'bad id' is not a valid id"),
    ({"id": "x", "commandLine": "a", "outputFiles": [{"filePattern": "*", "destination": {"container": {
        "containerUrl": "https://a/c?sig=SECRETSIG"}}, "uploadOptions": {"uploadCondition": "never"}}]},
     "outputFiles[0].uploadOptions.uploadCondition: 'never' is not allowed"),
    ("{not json", "not valid JSON at line 1"),
])
def test_invalid_input_exits_2_with_the_path(agent: Any, tmp_path: Path, body: Any, fragment: str) -> None:
    path = write(tmp_path / "bad.json", body)
    for command in ("run", "plan", "validate"):
        args = [command, str(path)] if command == "validate" else [command, str(path), "--output", "json"]
        if command == "validate":
            proc = subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=REPO)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        else:
            rc, _, out = agent(*args, check_json=False)
        assert rc == 2, out
        assert fragment in out and "SECRETSIG" not in out


def test_plan_creates_nothing_and_masks_secrets(agent: Any, tmp_path: Path) -> None:
    task = {"id": "p1", "commandLine": "/bin/sh -c 'echo hi'",
            "environmentSettings": [{"name": "DB_PASSWORD", "value": "hunter2"}, {"name": "PLAIN", "value": "v"},
                                    {"name": "URL", "value": "https://a.blob/c?sv=1&sig=SIGVALUE"}],
            "constraints": {"maxWallClockTime": "PT1M", "maxTaskRetryCount": 2}}
    rc, data, out = agent("plan", str(write(tmp_path / "p.json", task)), "--output", "json")
    assert rc == 0, out
    assert list(agent.root.iterdir()) == []
    assert data["command"]["argv"] == ["/bin/sh", "-c", "echo hi"]
    assert data["environment"]["DB_PASSWORD"] == "REDACTED" and data["environment"]["PLAIN"] == "v"
    assert "SIGVALUE" not in out and "hunter2" not in out
    assert data["limits"]["maxWallClockTime"] == "PT1M" and data["limits"]["attempts"] == 3
    assert data["directories"]["workingDir"] == str(agent.root / "workitems/local/job-1/p1/wd")
    assert [row["when"] for row in data["exitConditions"]][-2] == "pre-processing error"
    rc, _, text = agent("plan", str(write(tmp_path / "p.json", task)), check_json=False)
    assert rc == 0 and "argv: /bin/sh -c 'echo hi'" in text and "hunter2" not in text


def test_validate_reports_kind(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"value": [{"id": "a", "commandLine": "x"}, {"id": "b", "commandLine": "y"}]})
    proc = subprocess.run([sys.executable, "-m", "agent", "validate", str(path), "--output", "json"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"valid": True, "kind": "collection", "tasks": ["a", "b"]}


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO / "systemd" / "batch-agent@.service").read_text()
    exe = Path(sys.executable).parent / "batch-agent"
    assert exe.exists(), "install the project (pip install -e .) so the console script exists"
    local = tmp_path / "batch-agent@.service"
    local.write_text(unit.replace("/usr/local/bin/batch-agent", str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", f"{local}"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
