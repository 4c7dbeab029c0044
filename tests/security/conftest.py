"""Fixtures of the attack suite: the agent is root, the task is hostile.

Every test here performs an attack for real: as root (here and in CI), with the real task
accounts (``_azbatch``, ``_azbatchtask_<n>``) the agent creates, through the same entry points a
user runs (``python -m agent run``) or the task runner those use. Test files are named
``test_attack_*.py`` so that their basenames stay unique in the whole tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def as_root() -> None:
    assert os.geteuid() == 0, "the attack suite needs root (task users, ownership): run it as root, as CI does"


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


class Agent:
    """``python -m agent`` on one node root with a fast test config (0.2 s kill grace)."""

    def __init__(self, root: Path, workdir: Path, config_text: str) -> None:
        self.root = root
        self.workdir = workdir
        self.config = write(workdir / "agent.toml", config_text)
        self.config.chmod(0o600)

    def __call__(self, *args: str, timeout: float = 60, stdin: Any = subprocess.DEVNULL,
                 root: Path | None = None) -> tuple[int, Any, str]:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", *args, "--root", str(root or self.root), "--config", str(self.config)],
            capture_output=True, text=True, cwd=REPO, timeout=timeout, stdin=stdin)
        assert "Traceback" not in proc.stderr, proc.stderr
        data = json.loads(proc.stdout) if "--output" in args and proc.stdout.strip().startswith("{") else None
        return proc.returncode, data, proc.stdout + proc.stderr

    def run(self, task: dict[str, Any], *extra: str, timeout: float = 60) -> tuple[int, Any, str]:
        path = write(self.workdir / f"{task['id']}.json", task)
        return self("run", str(path), "--output", "json", *extra, timeout=timeout)

    def task_dir(self, task_id: str, job: str = "local") -> Path:
        return self.root / "workitems" / job / "job-1" / task_id


@pytest.fixture
def agent(node_root: Path, tmp_path: Path) -> Agent:
    return Agent(node_root, tmp_path, "[tasks]\nkill_grace = 0.2\n[storage]\nbackoff = 0\n")


@pytest.fixture
def scratch(node_root: Path) -> Iterator[Path]:
    """A directory next to the node root that task users can traverse (scripts, FIFOs)."""
    path = Path(tempfile.mkdtemp(prefix="attack-scratch-", dir=node_root.parent))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
