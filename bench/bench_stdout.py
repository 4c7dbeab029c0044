"""2 GiB of stdout through `batch-agent run` against `sh -c 'cmd > file'`.

The agent hands the task a file descriptor of stdout.txt: no Python in the data path, so the
throughput ratio should be close to 1.0 (aim: >= 0.95). Both write to the same file system:
/dev/shm when it has room (a disk's writeback of the previous run otherwise decides the
figures), else /var/tmp (``--dir`` to choose). Each run starts from a synced, empty state.

    python bench/bench_stdout.py [--gib 2] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from _common import median, report, run_agent_task, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where both write (default /dev/shm if it has room)")
    args = parser.parse_args()
    size = int(args.gib * 1024**3)
    producer = f"head -c {size} /dev/zero"
    where = args.dir or ("/dev/shm" if os.path.isdir("/dev/shm") and
                         shutil.disk_usage("/dev/shm").free > 3 * size else "/var/tmp")
    with tempfile.TemporaryDirectory(prefix="bench-stdout-", dir=where) as tmp:
        root = Path(tmp) / "root"
        out = Path(tmp) / "baseline.txt"
        task = {"id": "bigout", "commandLine": producer}
        stdout = root / "workitems/local/job-1/bigout/stdout.txt"

        def fresh(path: Path) -> None:
            path.unlink(missing_ok=True)
            os.sync()

        def agent() -> None:
            result = run_agent_task(task, root)
            assert result["task"]["executionInfo"]["exitCode"] == 0, result  # type: ignore[index]
            assert stdout.stat().st_size == size, stdout.stat().st_size

        def baseline() -> None:
            subprocess.run(["sh", "-c", f"{producer} > {out}"], check=True)
            assert out.stat().st_size == size

        def empty() -> None:  # the agent's fixed cost: start-up, dirs, user, spawn, result
            run_agent_task({"id": "empty", "commandLine": "true"}, root)

        agent()  # warm up (users, dirs, page cache)
        times_agent, times_base, times_empty = [], [], []
        for _ in range(args.runs):  # interleave so all see the same machine state
            fresh(out)
            times_base += timed(baseline, 1)
            fresh(stdout)
            times_agent += timed(agent, 1)
            times_empty += timed(empty, 1)
    gib = size / 1024**3
    print(f"\nboth write under {where}")
    data_path = median(times_agent) - median(times_empty)
    report(f"{gib:g} GiB of stdout", [
        ("sh -c 'cmd > file' (median)", median(times_base), "s"),
        ("batch-agent run (median)", median(times_agent), "s"),
        ("batch-agent run of `true` (fixed cost, median)", median(times_empty), "s"),
        ("baseline throughput", gib / median(times_base), "GiB/s"),
        ("batch-agent throughput", gib / median(times_agent), "GiB/s"),
        ("batch-agent throughput less the fixed cost", gib / data_path, "GiB/s"),
    ], "throughput ratio agent / baseline", median(times_base) / median(times_agent), ">= 0.95")
    print(f"  data path alone (agent less its fixed cost) / baseline: {median(times_base) / data_path:.3f}")


if __name__ == "__main__":
    main()
