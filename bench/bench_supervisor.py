"""The re-attach mechanism's cost per running task: memory and start latency (issue 8 bench).

For N sleeping tasks (default 50 and 200) it measures, in one run:
  - start latency per task (p50/p99): plain ``subprocess.Popen`` from this process (today's
    ProcessRunner), ``asyncio.create_subprocess_exec``, and a spawn through the supervisor
    (connect, greeting, request with three descriptors, fork/exec, reply);
  - the supervisor's RSS and USS idle and with N tasks running, each with a pending ``wait``
    (as under the service): the per-task growth is the mechanism's marginal cost;
  - the per-task alternatives for the record: a Python waiter per task (``python -I -S`` that
    spawns the task, waits and writes the status) and, where gcc exists, a C shim doing the same;
  - ``ProcessRunner.start`` as wired (log files through nodefs, the cwd descriptor, a cgroup when
    root), direct ``Popen`` against the supervisor, and the supervisor's RSS per running task;
  - a one-shot command as ``batch-agent run`` makes it: a fresh Python process that runs
    ``/bin/true`` through ProcessRunner, direct, supervised with a cold supervisor (started by
    that run, as a CLI run would), and with a warm one (median of 10 each), next to the median
    of 10 real ``python -m agent run`` of ``/bin/true``.
Kernel memory (task_struct, socket buffers) is not in any RSS and is the same for all of them.

    .venv/bin/python bench/bench_supervisor.py [N ...]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.process import ProcessRunner
from agent.runner import RunHandle, RunRequest, TaskUser
from agent.supervisor.client import Spawned, SpawnRequest, SupervisorClient

SLEEP = shutil.which("sleep") or "/bin/sleep"
MB = 1 << 20
AIM = 2.0  # MB per running task

PY_WAITER = """
import os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:2] + ["1000"], {})
_, status = os.waitpid(pid, 0)
with open(sys.argv[2], "w") as fh:
    fh.write(str(os.waitstatus_to_exitcode(status)))
    os.fsync(fh.fileno())
"""

C_SHIM = r"""
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    pid_t pid = fork();
    if (pid == 0) { char *args[] = {argv[1], "1000", 0}; execv(argv[1], args); _exit(127); }
    int status; waitpid(pid, &status, 0);
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dprintf(fd, "%d", WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    fsync(fd); close(fd); return 0;
}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def mem(pid: int) -> tuple[float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.rss / MB, info.uss / MB


def open_logs(work: Path, name: str) -> tuple[int, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    return os.open(work / f"{name}.out", flags, 0o640), os.open(work / f"{name}.err", flags, 0o640)


async def timed_starts(n: int, start: Callable[[int], Awaitable[int]]) -> tuple[list[float], list[int]]:
    times, pids = [], []
    for i in range(n):
        t0 = time.perf_counter()
        pids.append(await start(i))
        times.append(time.perf_counter() - t0)
    return times, pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def baseline_popen(n: int, work: Path) -> list[float]:
    children: list[subprocess.Popen[bytes]] = []

    async def start(i: int) -> int:
        out, err = open_logs(work, f"popen{i}")
        try:
            child = subprocess.Popen([SLEEP, "1000"], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     close_fds=True, start_new_session=True, cwd=work, env={})
        finally:
            os.close(out)
            os.close(err)
        children.append(child)
        return child.pid

    times, pids = await timed_starts(n, start)
    kill_all(pids)
    for child in children:
        child.wait()
    return times


async def baseline_asyncio(n: int, work: Path) -> list[float]:
    children: list[asyncio.subprocess.Process] = []

    async def start(i: int) -> int:
        out, err = open_logs(work, f"aio{i}")
        try:
            child = await asyncio.create_subprocess_exec(SLEEP, "1000", stdin=subprocess.DEVNULL, stdout=out,
                                                         stderr=err, start_new_session=True, cwd=work, env={})
        finally:
            os.close(out)
            os.close(err)
        children.append(child)
        return child.pid

    times, pids = await timed_starts(n, start)
    kill_all(pids)
    for child in children:
        await child.wait()
    return times


async def through_supervisor(n: int, work: Path, client: SupervisorClient, tag: str) -> dict[str, float]:
    sup = await client.ensure()
    rss0, uss0 = mem(sup)

    async def start(i: int) -> int:
        out, err = open_logs(work, f"sup{tag}-{i}")
        try:
            spawned = await client.spawn(SpawnRequest(f"bench-{tag}-{i}", ["sleep", "1000"], SLEEP, work, {},
                                                      out, err))
        finally:
            os.close(out)
            os.close(err)
        assert isinstance(spawned, Spawned), spawned
        return spawned.pid

    times, pids = await timed_starts(n, start)
    async with asyncio.TaskGroup() as group:
        waits = [group.create_task(client.wait(f"bench-{tag}-{i}")) for i in range(n)]
        # every wait registered: the supervisor holds N children and N waiting connections
        while True:
            running, _ = await client.list()
            conns = len(psutil.Process(sup).net_connections(kind="unix"))
            if len(running) == n and conns >= n + 1:
                break
            await asyncio.sleep(0.01)
        rss1, uss1 = mem(sup)
        t0 = time.perf_counter()
        kill_all(pids)
    reaped = time.perf_counter() - t0
    assert all(w.result().code == -9 for w in waits)       # type: ignore[union-attr]
    for i in range(n):
        await client.forget(f"bench-{tag}-{i}")
    return {"rss0": rss0, "uss0": uss0, "rss1": rss1, "uss1": uss1, "p50": pct(times, 0.5),
            "p99": pct(times, 0.99), "reap_all": reaped}


def per_task_waiters(kind: str, argv0: list[str], work: Path, count: int = 10) -> tuple[float, float]:
    procs = [subprocess.Popen([*argv0, SLEEP, str(work / f"{kind}{i}.status")], start_new_session=True)
             for i in range(count)]
    try:
        # each waiter has spawned its task: wait on that fact, not on a clock
        while not all(psutil.Process(p.pid).children() for p in procs):
            time.sleep(0.005)
        sizes = [mem(p.pid) for p in procs]
    finally:
        for p in procs:
            for child in psutil.Process(p.pid).children():
                child.kill()
            p.wait()
    return statistics.mean(s[0] for s in sizes), statistics.mean(s[1] for s in sizes)


def runner_request(work: Path, name: str, argv: tuple[str, ...]) -> RunRequest:
    (work / name).mkdir(exist_ok=True)
    return RunRequest(job_id="bench", task_id=name, attempt=1, argv=argv, env={"PATH": "/usr/bin:/bin"},
                      cwd=work / name, stdout=work / f"{name}.stdout", stderr=work / f"{name}.stderr",
                      user=TaskUser(name="agent", uid=None, gid=None))


async def process_runner_starts(n: int, work: Path, runner: ProcessRunner, tag: str) -> tuple[list[float], float]:
    """``ProcessRunner.start`` of N sleeping tasks: the start times and, supervised, the
    supervisor's RSS growth per running task (MB)."""
    sup = await runner.supervisor.ensure() if runner.supervisor is not None else None
    rss0 = mem(sup)[0] if sup else 0.0
    handles: list[RunHandle] = []

    async def start(i: int) -> int:
        handle = await runner.start(runner_request(work, f"pr{tag}-{i}", (SLEEP, "1000")))
        assert isinstance(handle, RunHandle), handle
        handles.append(handle)
        return handle.pid or 0

    times, pids = await timed_starts(n, start)
    per_task = (mem(sup)[0] - rss0) / n if sup else 0.0
    kill_all(pids)
    for handle in handles:
        await runner.wait(handle)
        await runner.cleanup(handle)
    return times, per_task


ONE_SHOT = """
import asyncio, sys, time
from pathlib import Path
t0 = time.perf_counter()
from agent.process import ProcessRunner
from agent.runner import RunRequest, TaskUser
from agent.supervisor.client import SupervisorClient
work = Path(sys.argv[1])
async def main():
    sup = SupervisorClient(Path(sys.argv[2]), idle=0.2) if len(sys.argv) > 2 else None
    runner = ProcessRunner(supervisor=sup)
    request = RunRequest(job_id="j", task_id="t", attempt=1, argv=("/bin/true",), env={}, cwd=work,
                         stdout=work / "o", stderr=work / "e", user=TaskUser(name="a", uid=None, gid=None))
    handle = await runner.start(request)
    assert (await runner.wait(handle)).exit_code == 0
    await runner.cleanup(handle)
asyncio.run(main())
print(time.perf_counter() - t0)
"""


def one_shot(work: Path, *root: str) -> float:
    """Wall time of a fresh process that runs /bin/true through ProcessRunner (interpreter start
    included: measured from outside)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", ONE_SHOT, str(work), *root], check=True,
                   cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def cli_run_true(work: Path) -> float:
    task = work / "true.json"
    task.write_text('{"id": "t", "commandLine": "/bin/true"}')
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "agent", "run", str(task), "--root", str(work / "cli-root")],
                   check=True, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


async def wait_gone(client: SupervisorClient) -> None:
    """The idle supervisor has exited (its socket is gone): the next run starts a cold one."""
    while (client.dir / "supervisor.sock").exists():
        await asyncio.sleep(0.01)


async def one_shots(work: Path, runs: int = 10) -> None:
    (work / "oneshot").mkdir(exist_ok=True)
    cold_root = work / "cold-root"
    cold_client = SupervisorClient(cold_root)
    direct, cold, warm, cli = [], [], [], []
    warm_root = work / "warm-root"
    warm_client = SupervisorClient(warm_root, idle=60)
    await warm_client.ensure()
    for _ in range(runs):
        direct.append(one_shot(work / "oneshot"))
        await wait_gone(cold_client)
        cold.append(one_shot(work / "oneshot", str(cold_root)))
        warm.append(one_shot(work / "oneshot", str(warm_root)))
        cli.append(cli_run_true(work))
    med = statistics.median
    print(f"\n== one-shot /bin/true in a fresh process (median of {runs})")
    print(f"  ProcessRunner direct Popen          {med(direct) * 1e3:7.1f} ms")
    print(f"  ProcessRunner, cold supervisor      {med(cold) * 1e3:7.1f} ms   ratio {med(cold) / med(direct):.2f}")
    print(f"  ProcessRunner, warm supervisor      {med(warm) * 1e3:7.1f} ms   ratio {med(warm) / med(direct):.2f}")
    print(f"  python -m agent run (direct today)  {med(cli) * 1e3:7.1f} ms")
    await warm_client.shutdown()
    warm_client.close()
    cold_client.close()


async def main(counts: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-supervisor-") as tmp:
        work = Path(tmp)
        root = work / "root"
        client = SupervisorClient(root, idle=5)
        t0 = time.perf_counter()
        await client.ensure()
        cold = time.perf_counter() - t0
        print(f"supervisor cold start (python -I -S, fork, bind, ready): {cold * 1000:.1f} ms")
        for n in counts:
            popen = await baseline_popen(n, work)
            aio = await baseline_asyncio(n, work)
            sup = await through_supervisor(n, work, client, str(n))
            per_rss = (sup["rss1"] - sup["rss0"]) / n
            per_uss = (sup["uss1"] - sup["uss0"]) / n
            print(f"\n== N = {n} sleeping tasks")
            for name, times in (("Popen", popen), ("asyncio exec", aio)):
                p50, p99 = pct(times, .5) * 1e3, pct(times, .99) * 1e3
                print(f"  start latency p50/p99  {name:<14} {p50:7.2f} / {p99:7.2f} ms")
            print(f"  start latency p50/p99  supervisor     {sup['p50'] * 1e3:7.2f} / {sup['p99'] * 1e3:7.2f} ms")
            print(f"  ratio supervisor / Popen (p50): {sup['p50'] / pct(popen, .5):.2f}   "
                  f"/ asyncio (p50): {sup['p50'] / pct(aio, .5):.2f}")
            print(f"  supervisor idle   RSS {sup['rss0']:6.2f} MB  USS {sup['uss0']:6.2f} MB")
            print(f"  supervisor with N RSS {sup['rss1']:6.2f} MB  USS {sup['uss1']:6.2f} MB  (N children, N waits)")
            print(f"  per running task  RSS {per_rss * 1024:6.1f} KB  USS {per_uss * 1024:6.1f} KB   (aim <= {AIM} MB)")
            print(f"  amortised (fixed + N x marginal) / N: RSS {sup['rss1'] / n:5.2f} MB per task")
            print(f"  N kills reaped, recorded (fsync) and reported: {sup['reap_all'] * 1e3:.1f} ms")
            direct, _ = await process_runner_starts(n, work, ProcessRunner(), f"d{n}")
            supervised, per_task = await process_runner_starts(
                n, work, ProcessRunner(supervisor=client), f"s{n}")
            for name, times in (("direct Popen", direct), ("supervisor", supervised)):
                p50, p99 = pct(times, .5) * 1e3, pct(times, .99) * 1e3
                print(f"  ProcessRunner.start p50/p99 {name:<13} {p50:7.2f} / {p99:7.2f} ms")
            print(f"  ratio ProcessRunner supervisor / direct (p50): {pct(supervised, .5) / pct(direct, .5):.2f}   "
                  f"supervisor RSS per running task {per_task * 1024:6.1f} KB")
        rss, uss = per_task_waiters("py", [sys.executable, "-I", "-S", "-c", PY_WAITER], work)
        print(f"\nalternative: a Python waiter per task   RSS {rss:5.2f} MB  USS {uss:5.2f} MB per task")
        gcc = shutil.which("gcc")
        if gcc:
            (work / "shim.c").write_text(C_SHIM)
            subprocess.run([gcc, "-O2", "-o", str(work / "shim"), str(work / "shim.c")], check=True)
            rss, uss = per_task_waiters("c", [str(work / "shim")], work)
            print(f"alternative: a C shim per task (gcc -O2) RSS {rss:5.2f} MB  USS {uss:5.2f} MB per task")
        await one_shots(work)
        await client.shutdown()
        client.close()


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [50, 200]))
