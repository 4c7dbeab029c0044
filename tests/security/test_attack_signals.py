"""Stopping ``batch-agent run`` with a signal: the transfer stops, the task never starts late, and
the result is printed; no task process outlives the agent.

Each test runs ``python -m agent run`` as a child, as a user's shell would, and signals it once
a fact shows it is in the phase under test: a local server saw the download or upload request,
a task process announced itself on a FIFO. Servers: a GET that trickles a 1 GB body one byte at
a time (the download never ends by itself) and a listener that reads a request and never answers
(the upload never ends by itself).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
ENDED = {"category": "usererror", "code": "TaskEnded", "message": "Task was ended by user request."}


class Server:
    """A local HTTP server that takes requests and never completes them: ``trickle`` answers a
    GET with a 1 GB body sent a byte every 20 ms, ``silent`` never answers at all."""

    def __init__(self, mode: str) -> None:
        self.seen = threading.Event()
        self.requests: list[str] = []
        self.stop = threading.Event()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    head += data
                server.requests.append(head.split(b"\r\n", 1)[0].decode())
                server.seen.set()
                if mode == "silent":
                    server.stop.wait()
                    return
                try:
                    self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
                    while not server.stop.wait(0.02):     # the server's pace, not a wait in the test
                        self.request.sendall(b"x")
                except OSError:
                    return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trickle() -> Iterator[Server]:
    server = Server("trickle")
    yield server
    server.close()


@pytest.fixture
def silent() -> Iterator[Server]:
    server = Server("silent")
    yield server
    server.close()


class Lines:
    """A FIFO task processes write "<name> <pid>" lines to; read with a deadline."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        path.chmod(0o666)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)   # O_RDWR: no EOF between writers
        self.buffer = b""

    def next(self, timeout: float = 30) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"nothing announced on {self.path} within {timeout} s"
            if select.select([self.fd], [], [], left)[0]:
                self.buffer += os.read(self.fd, 4096)
        line, self.buffer = self.buffer.split(b"\n", 1)
        name, pid = line.decode().split()
        return name, int(pid)

    def close(self) -> None:
        os.close(self.fd)



@pytest.fixture
def announce(scratch: Path) -> Iterator[Lines]:
    lines = Lines(scratch / "announce")
    yield lines
    lines.close()


class Run:
    """``python -m agent run`` as a child process, with a fast test config."""

    def __init__(self, root: Path, workdir: Path, task: dict[str, Any], job: dict[str, Any] | None = None) -> None:
        config = workdir / "agent.toml"
        config.write_text("[tasks]\nkill_grace = 0.2\n[storage]\nbackoff = 0\n")
        config.chmod(0o600)
        (workdir / "task.json").write_text(json.dumps(task))
        args = [sys.executable, "-m", "agent", "run", str(workdir / "task.json"), "--output", "json",
                "--root", str(root), "--config", str(config)]
        if job is not None:
            (workdir / "job.json").write_text(json.dumps(job))
            args += ["--job", str(workdir / "job.json")]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc.poll() is None, self.proc.communicate()
        self.proc.send_signal(sig)

    def result(self, timeout: float = 30) -> tuple[int, dict[str, Any], float]:
        """Exit status, the JSON result, and the seconds it took from the call."""
        started = time.monotonic()
        out, err = self.proc.communicate(timeout=timeout)
        took = time.monotonic() - started
        assert "Traceback" not in err, err
        return self.proc.returncode, json.loads(out), took

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.close()


def wait_for(event: threading.Event, run: Run) -> None:
    assert event.wait(30), f"the agent never reached the server: {run.close() or run.proc.communicate()}"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_during_a_download_cancels_it_and_the_command_never_starts(
        node_root: Path, tmp_path: Path, trickle: Server, runs: list[Run], sig: signal.Signals) -> None:
    run = Run(node_root, tmp_path, {"id": "dl", "commandLine": "touch ran",
                                    "resourceFiles": [{"httpUrl": f"{trickle.url}/big", "filePath": "big"}]})
    runs.append(run)
    wait_for(trickle.seen, run)
    run.signal(sig)
    rc, data, took = run.result()
    info = data["task"]["executionInfo"]
    assert rc == 125, data
    assert info["failureInfo"] == ENDED and "exitCode" not in info, info
    assert not (node_root / "workitems/local/job-1/dl/wd/ran").exists()
    assert took < 2.5, f"the agent took {took:.2f} s to stop after {sig.name}"


@pytest.mark.timeout(60)
def test_sigterm_during_an_upload_cancels_it_and_the_task_is_not_a_success(
        node_root: Path, tmp_path: Path, silent: Server, runs: list[Run]) -> None:
    run = Run(node_root, tmp_path, {"id": "up", "commandLine": "touch out.txt", "outputFiles": [{
        "filePattern": "out.txt",
        "destination": {"container": {"containerUrl": f"{silent.url}/c?sv=2022-11-02&sp=cw&sig=c2lnbmF0dXJl"}},
        "uploadOptions": {"uploadCondition": "taskcompletion"}}]})
    runs.append(run)
    wait_for(silent.seen, run)
    assert silent.requests[0].startswith("PUT /c/out.txt"), silent.requests
    run.signal(signal.SIGTERM)
    rc, data, took = run.result()
    info = data["task"]["executionInfo"]
    assert info["exitCode"] == 0 and info["result"] == "failure", info
    assert info["failureInfo"] == ENDED, info
    assert rc == 128 + signal.SIGTERM, data            # the run was stopped: never a success status
    assert took < 2.5, f"the agent took {took:.2f} s to stop during the upload"


TREE = """#!/bin/sh
# $1: announce FIFO. A child, a double-forked setsid daemon, then waits.
sleep 1000 &
echo child $! > "$1"
(setsid sh -c 'echo daemon $$ > "$1"; exec sleep 1000' sh "$1" &)
echo main $$ > "$1"
wait
"""


@pytest.mark.timeout(60)
def test_sighup_ends_the_task_and_leaves_no_orphan(node_root: Path, tmp_path: Path, scratch: Path,
                                                   announce: Lines, runs: list[Run]) -> None:
    script = scratch / "tree.sh"
    script.write_text(TREE)
    script.chmod(0o755)
    run = Run(node_root, tmp_path, {"id": "hup", "commandLine": f"{script} {announce.path}"})
    runs.append(run)
    pids = dict(announce.next() for _ in range(3))
    try:
        run.signal(signal.SIGHUP)
        rc, data, took = run.result()
        info = data["task"]["executionInfo"]
        assert info["failureInfo"] == ENDED, info
        assert info["exitCode"] == -signal.SIGTERM and rc == 128 + signal.SIGTERM
        assert [name for name, pid in pids.items() if not gone(pid)] == []
        assert took < 2.5
    finally:
        for pid in pids.values():
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


STAGE = """#!/bin/sh
# $1: announce FIFO, $2: name; waits for ever when $3 is "wait"
echo "$2" $$ > "$1"
if [ "$3" = wait ]; then exec sleep 1000; fi
touch "$2.done"
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_during_job_preparation_skips_the_task_and_release_still_runs(
        node_root: Path, tmp_path: Path, scratch: Path, announce: Lines, runs: list[Run], signals: int) -> None:
    script = scratch / "stage.sh"
    script.write_text(STAGE)
    script.chmod(0o755)
    release_waits = "wait" if signals == 2 else "end"
    job = {"id": "sigjob", "poolInfo": {"poolId": "local"},
           "jobPreparationTask": {"id": "prep", "commandLine": f"{script} {announce.path} prep wait"},
           "jobReleaseTask": {"id": "release", "commandLine": f"{script} {announce.path} release {release_waits}"}}
    run = Run(node_root, tmp_path, {"id": "main", "commandLine": "touch ran"}, job)
    runs.append(run)
    pids: dict[str, int] = {}
    try:
        name, pids["prep"] = announce.next()
        assert name == "prep"
        run.signal(signal.SIGTERM)
        name, pids["release"] = announce.next()
        assert name == "release", "the job release task did not run after the job preparation task was ended"
        assert gone(pids["prep"])
        if signals == 2:
            run.signal(signal.SIGTERM)
        rc, data, _ = run.result()
    finally:
        for pid in pids.values():
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert rc == 125, data
    prep = data["jobPreparationTaskExecutionInfo"]
    assert prep["failureInfo"] == ENDED and prep["exitCode"] == -signal.SIGTERM, prep
    assert "exitCode" not in data["task"].get("executionInfo", {}), data["task"]
    assert not (node_root / "workitems/sigjob/job-1/main/wd/ran").exists()
    release = data["jobReleaseTaskExecutionInfo"]
    if signals == 1:
        assert release["exitCode"] == 0 and "failureInfo" not in release, release
        assert (node_root / "workitems/sigjob/job-1/release/wd/release.done").exists()
    else:
        assert release["failureInfo"] == ENDED and release["exitCode"] == -signal.SIGTERM, release
