"""Overhead of a trivial task (`true`) through `batch-agent run` against spawning `true`
directly, and the CLI's import time (start-up must stay lean: no storage/Docker imports).

    python bench/bench_run.py [--runs 15]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from _common import PYTHON, REPO, agent_cmd, median, report, run_agent_task, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        root = Path(tmp) / "root"
        task = {"id": "trivial", "commandLine": "true"}
        run_agent_task(task, root)  # warm caches, create the node dirs and users
        agent = timed(lambda: run_agent_task(task, root), args.runs)
        direct = timed(lambda: subprocess.run(["true"], check=True), args.runs)
        python = timed(lambda: subprocess.run([PYTHON, "-c", "pass"], check=True), args.runs)
        validate = timed(lambda: subprocess.run(agent_cmd("--version"), check=True, cwd=REPO,
                                                capture_output=True), args.runs)
    imports = subprocess.run([PYTHON, "-c", "import sys, agent.cli; "
                              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                              "{'docker', 'azure', 'httpx', 'rich', 'structlog', 'pygments', 'wcmatch'}))"],
                             capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    report("trivial task: batch-agent run vs direct spawn", [
        ("direct spawn of `true` (median)", median(direct) * 1000, "ms"),
        ("bare python interpreter start (median)", median(python) * 1000, "ms"),
        ("batch-agent --version (median)", median(validate) * 1000, "ms"),
        ("batch-agent run task `true` (median)", median(agent) * 1000, "ms"),
        ("agent overhead over python start", (median(agent) - median(python)) * 1000, "ms"),
    ], "agent / direct", median(agent) / median(direct), "start-up dominated; keep it lean")
    print(f"  heavy modules imported by `import agent.cli`: {imports}")


if __name__ == "__main__":
    main()
