"""Overhead of a container task running `true` against `docker run --rm IMAGE true`, in one run.

    scripts/infra-up.sh   # dockerd and localtest/busybox:full
    .venv/bin/python bench/bench_container.py [--runs 20] [--image localtest/busybox:full] [--no-cli]

Cases, interleaved round by round (the order rotates each round) so machine load hits them
alike; ``--runs`` rounds:

* ``docker run --rm --network none IMAGE true``: the docker CLI, the baseline;
* the SDK floor: ``containers.create`` + ``start`` + ``wait`` + ``remove``, nothing else;
* batch-agent in process: ``TaskRunner`` with the gate, task-dir and image hooks and
  ``ContainerRunner`` (one shared client, as a service holds it), task ``true`` with ``--rm``;
* batch-agent end to end: ``python -m agent run task.json`` (interpreter start, imports, orphan
  sweep, client creation included), unless ``--no-cli``; next to it ``python -m agent --version``,
  the CLI's start-up that every ``run`` pays, container or not.

Every container uses network ``none`` (no bridge traffic). The in-process case also prints where
its time goes: each engine API call it makes, timed (median per task).

Printed last, each on its own ``RATIO`` line: batch-agent in process / docker run and batch-agent
run (CLI) / docker run, each the median over rounds of that round's ratio (both cases timed in
the same round), with the ratio of the medians next to it; aim <= 1.0x.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import PYTHON, REPO

sys.path.insert(0, str(REPO))

import docker

from agent.config import AgentConfig, DockerConfig, NodeConfig, TaskConfig
from agent.container.runner import ContainerRunner
from agent.environment import NodeIdentity
from agent.hooks.gate import GateHook
from agent.hooks.image import ImageHook
from agent.hooks.taskdir import TaskDirHook
from agent.logs import configure
from agent.runner import TaskUser
from agent.spec import TaskSpec
from agent.taskrunner import TaskRunner

API_CALLS = ("inspect_image", "create_container", "inspect_container", "attach", "start", "wait",
             "remove_container", "containers", "version")


class CallTimes:
    """Wraps the client's low-level API methods to time each call (bench only)."""

    def __init__(self, client: Any) -> None:
        self.samples: dict[str, list[float]] = collections.defaultdict(list)
        self.current: collections.defaultdict[str, float] = collections.defaultdict(float)
        for name in API_CALLS:
            setattr(client.api, name, self._wrap(name, getattr(client.api, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - start
        return timed

    def end_task(self) -> None:
        for name, seconds in self.current.items():
            self.samples[name].append(seconds)
        self.current.clear()


def docker_run(image: str) -> None:
    subprocess.run(["docker", "run", "--rm", "--network", "none", image, "true"], check=True,
                   capture_output=True)


def sdk_floor(client: Any, image: str) -> None:
    container = client.containers.create(image, ["true"], network="none")
    container.start()
    container.wait()
    container.remove(force=True)


def cli_run(task_file: Path, root: Path, config: Path) -> None:
    proc = subprocess.run([PYTHON, "-m", "agent", "run", str(task_file), "--root", str(root), "--config",
                           str(config), "--output", "json"], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"batch-agent run failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    configure(level="warning")   # as the CLI: no log rendering in the timed path
    client = docker.from_env()
    calls = CallTimes(client)
    root = tmp / "root"
    config = AgentConfig(node=NodeConfig(root=root), tasks=TaskConfig(kill_grace=0.0),
                         docker=DockerConfig(network="none", stop_grace=0.0))
    runner = ContainerRunner(config.docker, client=client)
    task_runner = TaskRunner(
        config=config, node=NodeIdentity("bench", "http://127.0.0.1:1/", "pool", "node"),
        runners={"container": runner},
        prestart=[GateHook({"containerSettings"}), TaskDirHook(), ImageHook(runner.client, config.docker)],
        exited=[], resolve_user=lambda spec, kind, task_id: TaskUser("bench", None, None))
    task = {"id": "bench", "commandLine": "true",
            "containerSettings": {"imageName": args.image, "containerRunOptions": "--rm"}}
    spec = TaskSpec.model_validate(task)
    task_file, config_file = tmp / "task.json", tmp / "agent.toml"
    task_file.write_text(json.dumps(task))
    config_file.write_text('[docker]\nnetwork = "none"\nstop_grace = 0\n[tasks]\nkill_grace = 0\n')
    cli_root = tmp / "cli-root"

    async def in_process() -> None:
        outcome = await task_runner.run(spec, job_id="bench")
        if outcome.status.execution_info.exit_code != 0:
            raise SystemExit(f"in-process task failed: {outcome.status.to_json()}")

    # Warm-up: image cache, node dirs, users, pyc files.
    docker_run(args.image)
    await in_process()
    if args.cli:
        cli_run(task_file, cli_root, config_file)
    calls.end_task()
    calls.samples.clear()

    async def timed(step: Callable[[], Any]) -> float:
        start = time.perf_counter()
        result = step()
        if asyncio.iscoroutine(result):
            await result
        return time.perf_counter() - start

    def agent_version() -> None:
        subprocess.run([PYTHON, "-m", "agent", "--version"], check=True, capture_output=True, cwd=REPO)

    docker_name, process_name, cli_name = ("docker run --rm (CLI)", "batch-agent in process (TaskRunner)",
                                           "batch-agent run (CLI, end to end)")
    cases: list[tuple[str, Callable[[], Any]]] = [
        (docker_name, lambda: docker_run(args.image)),
        ("SDK create+start+wait+remove", lambda: sdk_floor(client, args.image)),
        (process_name, in_process),
    ]
    if args.cli:
        cases += [(cli_name, lambda: cli_run(task_file, cli_root, config_file)),
                  ("  of which CLI start-up (agent --version)", agent_version)]
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for round_no in range(args.runs):
        shift = round_no % len(cases)
        for name, step in cases[shift:] + cases[:shift]:
            calls.current.clear()        # only the in-process case's engine calls are kept
            times[name].append(await timed(step))
            if name == process_name:
                calls.end_task()

    med = {name: statistics.median(values) * 1000 for name, values in times.items()}
    base = med[docker_name]
    print(f"\n== container task `true`: batch-agent vs docker run --rm ({args.runs} interleaved rounds, "
          f"medians, image {args.image})")
    for name, value in med.items():
        print(f"  {name:<42} {value:8.1f} ms   {value / base:5.2f}x docker run")
    print("\n  in-process engine calls per task (median ms):")
    for name, values in sorted(calls.samples.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"    {name:<20} {statistics.median(values) * 1000:8.1f}")
    print()
    for label, name in (("in process", process_name), ("end to end", cli_name)):
        if name not in times:
            print(f"  RATIO {label}: skipped (--no-cli)")
            continue
        per_round = statistics.median(a / d for a, d in zip(times[name], times[docker_name], strict=True))
        verdict = "met" if per_round <= 1.0 else "missed"
        print(f"  RATIO {label:<10} {name} / docker run --rm: {per_round:.2f}x "
              f"(median of {args.runs} per-round ratios; ratio of medians {med[name] / base:.2f}x); "
              f"aim <= 1.0x: {verdict}")
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--image", default="localtest/busybox:full")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="skip the end-to-end CLI case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-container-") as tmp:
        Path(tmp).chmod(0o755)
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
