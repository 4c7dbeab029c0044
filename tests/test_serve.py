"""``batch-agent serve`` as users run it: a real process (``python -m agent serve``) on a real
uvicorn socket and SQLite store, driven by Shared Key signed requests (tests/clients.py).

Covers the key sources and their refusals, a task submitted and completed, SIGTERM leaving a
running task alone and a new serve re-attaching it (exit code recorded once), SIGKILL mid-task,
two agents on one node root, ``run`` on a held root, and drain (API and SIGUSR1). Waits are on
facts: the "serving" log line, files a task writes, states polled through the API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import ACCOUNT, KEY_B64, signed_headers
from service_kit import fifo, open_dir, release

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 30.0
API = "2025-06-01"


def key_file(tmp_path: Path, mode: int = 0o600, text: str = KEY_B64) -> Path:
    path = tmp_path / "account-key"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path



def wait_file(path: Path, text: str = "") -> str:
    end = time.monotonic() + DEADLINE
    while True:
        if path.exists() and text in (content := path.read_text()):
            return content
        if time.monotonic() > end:
            raise AssertionError(f"{path} never held {text!r}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


class Serve:
    """One ``batch-agent serve`` process; ``url`` once it logged "serving"."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "serve", "--root", str(root), "--listen", "127.0.0.1:0",
             "--account-name", ACCOUNT, *args],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.url = ""
        self._serving = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.http = httpx.Client(timeout=DEADLINE)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if '"serving"' in line:
                self.url = json.loads(line)["url"]
                self._serving.set()
        self._serving.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_serving(self) -> Serve:
        assert self._serving.wait(DEADLINE), "serve never logged 'serving'"
        assert self.url, f"serve exited: {self.proc.wait(DEADLINE)}\n{self.stderr}"
        return self

    def exit_status(self) -> int:
        code = self.proc.wait(DEADLINE)
        self._reader.join(DEADLINE)
        self.http.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.exit_status()

    def call(self, method: str, path: str, body: Any = None, *, signed: bool = True) -> httpx.Response:
        url = str(httpx.URL(self.url + path, params={"api-version": API}))
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json; odata=minimalmetadata"} if content else {}
        headers["Content-Length"] = str(len(content or b""))
        if method in ("GET", "HEAD") and content is None:
            headers.pop("Content-Length")
        if signed:
            headers = signed_headers(method, url, headers=headers)
        return self.http.request(method, url, content=content, headers=headers)

    def wait_task(self, job: str, task: str, state: str = "completed") -> dict[str, Any]:
        end = time.monotonic() + DEADLINE
        while True:
            r = self.call("GET", f"/jobs/{job}/tasks/{task}")
            if r.status_code == 200 and r.json()["state"] == state:
                body: dict[str, Any] = r.json()
                return body
            if time.monotonic() > end:
                raise AssertionError(f"{job}/{task} never {state}: {r.status_code} {r.text[:300]}")
            time.sleep(0.02)

    def add(self, job: str, task: str, command: str) -> None:
        if self.call("GET", f"/jobs/{job}").status_code == 404:
            assert self.call("POST", "/jobs", {"id": job, "poolInfo": {"poolId": "local"}}).status_code == 201
        r = self.call("POST", f"/jobs/{job}/tasks", {"id": task, "commandLine": command})
        assert r.status_code == 201, r.text


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return key_file(tmp_path)


def test_serve_answers_signed_requests_and_runs_a_task(node_root: Path, key: Path) -> None:
    s = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    try:
        assert s.call("GET", "/jobs", signed=False).status_code == 401
        assert s.call("GET", "/jobs").status_code == 200
        s.add("j", "t", "/bin/sh -c 'echo hello; exit 7'")
        t = s.wait_task("j", "t")
        assert t["executionInfo"]["exitCode"] == 7 and t["executionInfo"]["result"] == "failure"
        out = s.call("GET", "/jobs/j/tasks/t/files/stdout.txt")
        assert out.status_code == 200 and out.text == "hello\n"
    finally:
        assert s.signal(signal.SIGTERM) == 0
    state = node_root / "batch-agent-state"
    assert (state.stat().st_mode & 0o777) == 0o700 and (state / "state.db").exists()
    assert KEY_B64 not in s.stderr and "Traceback" not in s.stderr


def test_key_from_environment_is_not_inherited_by_tasks(node_root: Path) -> None:
    out = open_dir(node_root)
    s = Serve(node_root, env={"BATCH_AGENT_ACCOUNT_KEY": KEY_B64}).wait_serving()
    try:
        s.add("j", "env", f"/bin/sh -c 'env > {out}/env'")
        s.wait_task("j", "env")
        env = (out / "env").read_text()
        assert "BATCH_AGENT_ACCOUNT_KEY" not in env and KEY_B64 not in env
        assert f"AZ_BATCH_ACCOUNT_URL={s.url}/" in env and f"AZ_BATCH_ACCOUNT_NAME={ACCOUNT}" in env
    finally:
        assert s.signal(signal.SIGTERM) == 0


def test_key_from_systemd_credentials_directory(node_root: Path, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    key_file(creds, 0o400)
    s = Serve(node_root, env={"CREDENTIALS_DIRECTORY": str(creds)}).wait_serving()
    try:
        assert s.call("GET", "/jobs").status_code == 200
    finally:
        assert s.signal(signal.SIGTERM) == 0
    assert '"key_source": "credential"' in s.stderr


def test_key_on_the_command_line_works_with_a_warning(node_root: Path) -> None:
    s = Serve(node_root, "--account-key", KEY_B64).wait_serving()
    try:
        assert s.call("GET", "/jobs").status_code == 200
    finally:
        assert s.signal(signal.SIGTERM) == 0
    assert "visible" in s.stderr and "--account-key-file" in s.stderr
    assert s.stderr.count(KEY_B64) == 0


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o660])
def test_key_file_open_to_others_is_refused(node_root: Path, tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, mode)
    s = Serve(node_root, "--account-key-file", str(path))
    assert s.exit_status() == 2
    assert f"chmod 600 {path}" in s.stderr and KEY_B64 not in s.stderr and "Traceback" not in s.stderr
    assert len(s.stderr.strip().splitlines()) == 1


def test_no_key_refuses_to_start_and_names_the_fix(node_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("BATCH_AGENT_ACCOUNT_KEY", "CREDENTIALS_DIRECTORY")}
    proc = subprocess.run([sys.executable, "-m", "agent", "serve", "--root", str(node_root), "--listen",
                           "127.0.0.1:0", "--config", "/dev/null"], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=DEADLINE)
    assert proc.returncode == 2, proc.stderr
    assert "no account key" in proc.stderr and "--account-key-file" in proc.stderr
    assert "Traceback" not in proc.stderr and not (node_root / "batch-agent-state").exists()


def test_a_bad_key_is_refused_without_quoting_it(node_root: Path, tmp_path: Path) -> None:
    secret = "not!base64!SECRETISH"
    s = Serve(node_root, "--account-key-file", str(key_file(tmp_path, text=secret)))
    assert s.exit_status() == 2
    assert "base64" in s.stderr and "SECRETISH" not in s.stderr


def test_sigterm_leaves_the_task_running_and_a_new_serve_reattaches(node_root: Path, key: Path) -> None:
    out = open_dir(node_root)
    gate = fifo(open_dir(node_root) / "gate")
    s = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    try:
        s.add("j", "t", f"/bin/sh -c 'echo $$ >> {out}/pids; cat {gate} >/dev/null; exit 42'")
        pid = int(wait_file(out / "pids", "\n").split()[0])
        s.wait_task("j", "t", "running")
    finally:
        started = time.monotonic()
        assert s.signal(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10                # prompt: it waits for no task
    assert alive(pid)                                     # the supervisor keeps it
    s2 = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    try:
        assert s2.wait_task("j", "t", "running")["executionInfo"].get("requeueCount", 0) == 0
        release(gate)
        t = s2.wait_task("j", "t")
        assert t["executionInfo"]["exitCode"] == 42 and t["executionInfo"]["retryCount"] == 0
        assert (out / "pids").read_text().split() == [str(pid)]       # it ran exactly once
    finally:
        assert s2.signal(signal.SIGTERM) == 0


def test_sigkill_mid_task_then_restart_completes_once_with_its_exit_code(node_root: Path, key: Path) -> None:
    out = open_dir(node_root)
    gate = fifo(open_dir(node_root) / "gate")
    s = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    s.add("j", "t", f"/bin/sh -c 'echo ran >> {out}/runs; cat {gate} >/dev/null; exit 3'")
    wait_file(out / "runs", "ran")
    s.wait_task("j", "t", "running")
    assert s.signal(signal.SIGKILL) == -signal.SIGKILL
    s2 = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    try:
        release(gate)
        t = s2.wait_task("j", "t")
        assert t["executionInfo"]["exitCode"] == 3 and t["executionInfo"].get("requeueCount", 0) == 0
        assert (out / "runs").read_text() == "ran\n"
    finally:
        assert s2.signal(signal.SIGTERM) == 0


def test_two_agents_never_share_a_node_root(node_root: Path, key: Path, tmp_path: Path) -> None:
    s = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    try:
        second = Serve(node_root, "--account-key-file", str(key))
        assert second.exit_status() == 2
        assert "in use by another batch-agent (serve pid" in second.stderr and "Traceback" not in second.stderr
        task = tmp_path / "t.json"
        task.write_text(json.dumps({"id": "r", "commandLine": "/bin/true"}))
        run = subprocess.run([sys.executable, "-m", "agent", "run", str(task), "--root", str(node_root)],
                             cwd=REPO, capture_output=True, text=True, timeout=DEADLINE)
        assert run.returncode == 2 and "held by a running batch-agent service" in run.stderr, run.stderr
        assert s.call("GET", "/jobs").status_code == 200          # the first one is unharmed
    finally:
        assert s.signal(signal.SIGTERM) == 0


@pytest.mark.parametrize("how", ["api", "SIGUSR1"])
def test_drain_stops_admitting_waits_for_running_tasks_then_exits(node_root: Path, key: Path, how: str) -> None:
    out = open_dir(node_root)
    gate = fifo(open_dir(node_root) / "gate")
    s = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    s.add("j", "first", f"/bin/sh -c 'echo ran > {out}/first; cat {gate} >/dev/null'")
    wait_file(out / "first", "ran")
    if how == "api":
        assert s.call("POST", "/batch-agent/drain", signed=False).status_code == 401
        r = s.call("POST", "/batch-agent/drain")
        assert r.status_code == 202 and r.json() == {"draining": True, "runningTasks": 1}
    else:
        s.proc.send_signal(signal.SIGUSR1)
        end = time.monotonic() + DEADLINE
        while "drain requested" not in s.stderr:
            assert time.monotonic() < end, s.stderr
            time.sleep(0.01)
    s.add("j", "second", f"/bin/sh -c 'echo ran > {out}/second'")
    assert s.proc.poll() is None                          # still serving while the task runs
    release(gate)
    assert s.exit_status() == 0
    assert not (out / "second").exists()                  # never admitted
    s2 = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    try:
        assert s2.call("GET", "/jobs/j/tasks/first").json()["state"] == "completed"
        s2.wait_task("j", "second")                       # the next agent runs it
    finally:
        assert s2.signal(signal.SIGTERM) == 0


def test_container_task_survives_sigkill_and_the_sweep_keeps_only_owned_containers(
        node_root: Path, key: Path, docker_client: Any, test_image: str) -> None:
    from agent.container.build import LABEL_NODE_ROOT
    from agent.container.orphans import LABEL_AGENT

    s = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    try:
        s.call("POST", "/jobs", {"id": "j", "poolInfo": {"poolId": "local"}})
        body = {"id": "c", "commandLine": "sh -c 'echo started; while [ ! -f go ]; do sleep 0.05; done; exit 4'",
                "containerSettings": {"imageName": test_image}}
        assert s.call("POST", "/jobs/j/tasks", body).status_code == 201
        end = time.monotonic() + DEADLINE
        while "started" not in s.call("GET", "/jobs/j/tasks/c/files/stdout.txt").text:
            assert time.monotonic() < end
            time.sleep(0.05)
    finally:
        assert s.signal(signal.SIGKILL) == -signal.SIGKILL
    orphan = docker_client.containers.create(test_image, ["true"], labels={
        LABEL_NODE_ROOT: str(node_root), LABEL_AGENT: "999999:1.00"})     # a dead agent's leftover
    s2 = Serve(node_root, "--account-key-file", str(key)).wait_serving()
    try:
        assert '"containers_swept": 1' in s2.stderr                     # the orphan, not the task's
        assert not docker_client.containers.list(all=True, filters={"id": orphan.id})
        (node_root / "workitems" / "j" / "job-1" / "c" / "wd" / "go").write_text("")
        t = s2.wait_task("j", "c")
        assert t["executionInfo"]["exitCode"] == 4 and t["executionInfo"].get("requeueCount", 0) == 0
        assert s2.call("GET", "/jobs/j/tasks/c/files/stdout.txt").text == "started\n"
    finally:
        assert s2.signal(signal.SIGTERM) == 0


def test_start_task_from_the_config_runs_before_any_task(node_root: Path, key: Path, tmp_path: Path) -> None:
    out = open_dir(node_root)
    start = tmp_path / "start.json"
    start.write_text(json.dumps({"commandLine": f"/bin/sh -c 'echo up > {out}/start'", "waitForSuccess": True}))
    config = tmp_path / "agent.toml"
    config.write_text(f'[node]\nstart_task = "{start}"\ntask_slots_per_node = 2\n')
    s = Serve(node_root, "--account-key-file", str(key), "--config", str(config)).wait_serving()
    try:
        s.add("j", "t", f"/bin/sh -c 'test -f {out}/start'")
        assert s.wait_task("j", "t")["executionInfo"]["exitCode"] == 0
    finally:
        assert s.signal(signal.SIGTERM) == 0
    assert '"slots": 2' in s.stderr


def test_ready_and_status_reach_systemd_and_no_task_sees_the_socket(node_root: Path, key: Path,
                                                                    tmp_path: Path) -> None:
    import socket

    out = open_dir(node_root)
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(DEADLINE)
    s = Serve(node_root, "--account-key-file", str(key), env={"NOTIFY_SOCKET": str(path)})
    try:
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=0/1 slots in use, 0 tasks running")
        s.wait_serving()
        assert s.call("GET", "/jobs").status_code == 200                  # READY came after the API answered
        s.add("j", "t", f"/bin/sh -c 'env > {out}/env'")
        s.wait_task("j", "t")
        assert "NOTIFY_SOCKET" not in (out / "env").read_text()
    finally:
        assert s.signal(signal.SIGTERM) == 0
        sock.settimeout(0)
        messages = []
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            pass
        sock.close()
    assert any(m.startswith("STOPPING=1") for m in messages)


def test_address_in_use_is_a_configuration_error(node_root: Path, key: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "agent", "serve", "--root", str(node_root), "--listen",
                               f"127.0.0.1:{port}", "--account-key-file", str(key)],
                              cwd=REPO, capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 2 and "fix --listen" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
