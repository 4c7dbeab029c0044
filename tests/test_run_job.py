"""``batch-agent run-job JOB.json TASKS.json``: a whole job through the node service, as a real
process (``python -m agent run-job``) on a fresh node root: dependencies, a failing task, a
blocked dependent, job preparation and release, the table, the JSON and the exit status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 60.0


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def run_job(node_root: Path, tmp_path: Path, job: dict[str, Any], tasks: Any,
            *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "agent", "run-job", str(write(tmp_path / "job.json", job)),
                           str(write(tmp_path / "tasks.json", tasks)), "--root", str(node_root), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=DEADLINE)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


JOB = {"id": "build", "usesTaskDependencies": True,
       "jobPreparationTask": {"commandLine": "/bin/sh -c 'echo prep'"},
       "jobReleaseTask": {"commandLine": "/bin/sh -c 'echo release'"}}
TASKS = {"value": [
    {"id": "fetch", "commandLine": "/bin/sh -c 'echo fetched'"},
    {"id": "compile", "commandLine": "/bin/sh -c 'exit 3'", "dependsOn": {"taskIds": ["fetch"]}},
    {"id": "docs", "commandLine": "/bin/true", "dependsOn": {"taskIds": ["fetch"]}},
    {"id": "package", "commandLine": "/bin/true", "dependsOn": {"taskIds": ["compile"]}},
]}


def test_run_job_json_reports_every_task_and_the_job_end(node_root: Path, tmp_path: Path) -> None:
    proc = run_job(node_root, tmp_path, JOB, TASKS, "--output", "json", "--slots", "2")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    tasks = {t["id"]: t for t in data["tasks"]}
    assert list(tasks) == ["fetch", "compile", "docs", "package"]
    assert tasks["fetch"]["result"] == "success" and tasks["fetch"]["exitCode"] == 0
    assert tasks["compile"]["exitCode"] == 3 and tasks["compile"]["failureInfo"]["code"] == "FailureExitCode"
    assert tasks["docs"]["state"] == "completed" and tasks["docs"]["result"] == "success"
    assert tasks["package"]["state"] == "active" and tasks["package"]["result"] is None   # blocked
    assert data["job"]["state"] == "completed"
    assert data["job"]["executionInfo"]["terminateReason"] == "TasksBlocked"
    assert data["jobPreparationTaskExecutionInfo"]["exitCode"] == 0
    assert data["jobReleaseTaskExecutionInfo"]["exitCode"] == 0
    assert data["exitStatus"] == 1
    assert isinstance(tasks["fetch"]["durationSeconds"], float)
    stdout = node_root / "workitems" / "build" / "job-1" / "fetch" / "stdout.txt"
    assert stdout.read_text() == "fetched\n"
    state = node_root / "batch-agent-state"
    assert [p.name for p in state.iterdir()] == ["agent.lock"]           # the run's store is gone


def test_run_job_table_and_success_exit(node_root: Path, tmp_path: Path) -> None:
    tasks = [{"id": f"t{i}", "commandLine": f"/bin/sh -c 'exit {0}'"} for i in range(3)]
    proc = run_job(node_root, tmp_path, {"id": "ok", "onAllTasksComplete": "terminatejob"}, tasks)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for head in ("task", "state", "exit code", "result", "failure", "retries", "duration"):
        assert head in out
    assert out.count("success") == 3
    assert "job ok: completed (terminateReason AllTasksComplete); 3 of 3 tasks succeeded" in out


def test_run_job_retries_and_failure_code_in_the_table(node_root: Path, tmp_path: Path) -> None:
    tasks = {"id": "flaky", "commandLine": "/bin/sh -c 'exit 5'", "constraints": {"maxTaskRetryCount": 2}}
    proc = run_job(node_root, tmp_path, {"id": "r"}, tasks)
    assert proc.returncode == 1
    row = next(line for line in proc.stdout.splitlines() if "flaky" in line)
    assert "5" in row and "FailureExitCode" in row and "2" in row.split("FailureExitCode")[1]


def test_run_job_invalid_input_is_exit_2_naming_the_path(node_root: Path, tmp_path: Path) -> None:
    proc = run_job(node_root, tmp_path, {"id": "bad id with spaces"}, [])
    assert proc.returncode == 2 and "id" in proc.stderr
    proc = run_job(node_root, tmp_path, {"id": "j"}, [{"id": "a", "commandLine": "/bin/true"},
                                                      {"id": "A", "commandLine": "/bin/true"}])
    assert proc.returncode == 2 and "value[1].id" in proc.stderr
    proc = run_job(node_root, tmp_path, {"id": "j"}, [{"id": "a", "commandLine": "/bin/true",
                                                       "dependsOn": {"taskIds": ["b"]}}])
    assert proc.returncode == 2 and "usesTaskDependencies" in proc.stderr, proc.stderr
    proc = run_job(node_root, tmp_path, {"id": "j"}, "not a task")
    assert proc.returncode == 2


def test_run_job_sigint_terminates_the_job_and_still_prints(node_root: Path, tmp_path: Path) -> None:
    out = Path(tempfile.mkdtemp(dir=node_root.parent, prefix=f"{node_root.name}.out-"))
    out.chmod(0o777)
    job = {"id": "long", "jobPreparationTask": {"commandLine": "/bin/true"},
           "jobReleaseTask": {"commandLine": f"/bin/sh -c 'echo released > {out}/release'"}}
    tasks = [{"id": "sleeper", "commandLine": f"/bin/sh -c 'echo started > {out}/started; sleep 60'"}]
    config = tmp_path / "agent.toml"
    config.write_text("[tasks]\nkill_grace = 0.2\n")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run-job", str(write(tmp_path / "job.json", job)),
                             str(write(tmp_path / "tasks.json", tasks)), "--root", str(node_root),
                             "--output", "json", "--config", str(config)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + DEADLINE
    while not (out / "started").exists():
        if time.monotonic() > end or proc.poll() is not None:
            raise AssertionError(proc.communicate()[1])
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=DEADLINE)          # closes the pipes too
    assert proc.returncode == 1, stderr
    data = json.loads(stdout)
    (task,) = data["tasks"]
    assert task["failureInfo"]["code"] == "TaskEnded"
    assert data["job"]["executionInfo"]["terminateReason"] == "UserTerminate"
    assert (out / "release").read_text() == "released\n"
