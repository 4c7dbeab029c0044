"""Shared helpers for the benchmarks: timing, medians, ratio lines. Benchmarks are scripts,
not tests: each measures batch-agent and its baseline in the same run and prints the ratio."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def agent_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "agent", *args]


def run_agent_task(task: dict[str, object], root: Path, *extra: str) -> dict[str, object]:
    """Run one task through `batch-agent run --output json`; return the parsed JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(task, fh)
    try:
        proc = subprocess.run(agent_cmd("run", fh.name, "--root", str(root), "--output", "json", *extra),
                              capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.unlink(fh.name)
    if proc.returncode not in (0,):
        raise SystemExit(f"agent run failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def report(title: str, rows: list[tuple[str, float, str]], ratio_name: str, ratio: float, aim: str) -> None:
    print(f"\n== {title}")
    for name, value, unit in rows:
        print(f"  {name:<48} {value:10.3f} {unit}")
    print(f"  {ratio_name}: {ratio:.3f}  (aim: {aim})")
