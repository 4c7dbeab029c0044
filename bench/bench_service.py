"""The service core's throughput: N trivial tasks (``/bin/true``) through ``NodeService`` against
bare ``asyncio.create_subprocess_exec`` spawns at the same concurrency, in the same run.

The service path is the whole of it except HTTP: validation at add (collections of 100), the
SQLite store (synchronous=FULL, as the daemon), admission, the task dir hook, the supervised
ProcessRunner, the journal's transactions (running, handle, completed). The ratio is
baseline-time / service-time (issue 8 aims at 0.5 or more, with the API in front).

    .venv/bin/python bench/bench_service.py [N] [SLOTS] [--api]

``--api``: the tasks go through the local API instead (``agent.api.service_app.build_app`` on a
real uvicorn over 127.0.0.1, tests/api_kit.py's ``ApiServer``: POST /jobs, then
``addtaskcollection`` of 100, signed with Shared Key by httpx; done when GET taskcounts says all
succeeded, polled every 20 ms). Note that ``ApiServer`` keeps its store with synchronous=NORMAL.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from service_kit import job, service, task

from agent.store import SqliteStore

AIM = 0.5           # issue 8: service throughput / bare spawns, same concurrency


async def baseline(n: int, slots: int) -> float:
    sem = asyncio.Semaphore(slots)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec("/bin/true")
            await proc.wait()
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start


async def through_service(n: int, slots: int, base: Path) -> float:
    root = Path(tempfile.mkdtemp(dir=base))
    root.chmod(0o755)
    svc = service(root, SqliteStore(root.parent / f"{root.name}.state"), slots=slots)
    start = time.perf_counter()
    await svc.add_job(job("bench"))
    for first in range(0, n, 100):
        await svc.add_tasks("bench", {"value": [task(f"t{i}", "/bin/true") for i in range(first, min(n, first + 100))]})
    await svc.run_until_idle()
    took = time.perf_counter() - start
    counts = await svc.core.call(lambda s: s.task_counts("bench"))
    assert counts.tasks.succeeded == n, counts
    await svc.aclose()
    shutil.rmtree(root, ignore_errors=True)
    return took


def through_api(n: int, slots: int, base: Path) -> float:
    from api_kit import ApiServer

    root = Path(tempfile.mkdtemp(dir=base))
    root.chmod(0o755)
    api = ApiServer.start(root, Path(tempfile.mkdtemp(dir=base)), slots=slots)
    try:
        start = time.perf_counter()
        r = api.call("POST", "/jobs", json_body=job("bench"))
        assert r.status_code == 201, r.text
        for first in range(0, n, 100):
            value = [task(f"t{i}", "/bin/true") for i in range(first, min(n, first + 100))]
            r = api.call("POST", "/jobs/bench/addtaskcollection", json_body={"value": value})
            assert r.status_code == 200, r.text
        while True:
            counts = api.call("GET", "/jobs/bench/taskcounts").json()
            if counts["taskCounts"]["succeeded"] == n:
                break
            assert counts["taskCounts"]["failed"] == 0, counts
            time.sleep(0.02)
        return time.perf_counter() - start
    finally:
        api.stop()
        shutil.rmtree(root, ignore_errors=True)


async def main(n: int, slots: int, via_api: bool) -> None:
    base = Path("/tmp/batch-agent-bench")
    base.mkdir(mode=0o755, exist_ok=True)
    plain = await baseline(n, slots)
    if via_api:
        served = await asyncio.to_thread(through_api, n, slots, base)
    else:
        served = await through_service(n, slots, base)
    how = "through the API (uvicorn, collections of 100)" if via_api else "NodeService in-process (no HTTP)"
    print(f"{n} tasks, {slots} slots: asyncio spawns {plain:.2f} s ({n / plain:.0f}/s), "
          f"{how} {served:.2f} s ({n / served:.0f}/s)")
    ratio = plain / served
    print(f"ratio {ratio:.2f} (aim: at least {AIM}: {'met' if ratio >= AIM else 'NOT met'})")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(main(int(args[0]) if args else 1000, int(args[1]) if len(args) > 1 else 4, "--api" in sys.argv))
