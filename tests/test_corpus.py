"""The shared corpus of real request bodies (../shared/corpus): every one validates and plans.

The one exception is the CLI-extension template fragment with no ``id`` (see the corpus
README), which must be rejected naming ``id``. The CLI is run as a real subprocess
(``python -m agent``), as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.errors import SpecError
from agent.spec import load_document

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
REPO = Path(__file__).resolve().parents[1]
FRAGMENT = "cliext__hello-world_create-pool-and-job-with-templates_job.repeatTask.json"

pytestmark = pytest.mark.timeout(600)  # the module fixture runs ~40 interpreters

if not CORPUS.is_dir():  # CI checks shared/ out beside the repository: its absence is a set-up error
    raise RuntimeError(f"the shared corpus is missing: expected it at {CORPUS} (../shared/corpus)")

FILES = sorted(p for p in CORPUS.rglob("*.json") if p.is_file())
VALID = [p for p in FILES if p.name != FRAGMENT]

# The kinds the corpus README gives each file.
KINDS = {
    "docs-2025-06-01__Tasks_CreateTask_ContainerSettingsWithDataIsolation_DuplicateSources.json": "task",
    "specs-2023-11-01.18.0__JobAdd_Complex.json": "job",
    "specs-2024-02-01.19.0__Jobs_CreateJob_Complex.json": "job",
    "specs-2024-07-01.20.0__Jobs_CreateJob_Complex.json": "job",
    "specs-2024-07-01.20.0__TaskAdd_ContainerSettingsWithDataIsolation.json": "task",
    "specs-2025-06-01__Jobs_CreateJob_Basic.json": "job",
    "specs-2025-06-01__Jobs_CreateJob_Complex.json": "job",
    "specs-2025-06-01__Tasks_CreateTaskCollection_Basic.json": "collection",
    "specs-2025-06-01__Tasks_CreateTaskCollection_Complex.json": "collection",
    "specs-2025-06-01__Tasks_CreateTask_Basic.json": "task",
    "specs-2025-06-01__Tasks_CreateTask_ContainerSettings.json": "task",
    "specs-2025-06-01__Tasks_CreateTask_ExitConditions.json": "task",
    "specs-2025-06-01__Tasks_CreateTask_RequiredSlots.json": "task",
    "cliext__blender-appTemplate_render-job.json": "job",
    "cliext__hello-world_create-pool-and-job_job.json": "job",
    "cliext__hello-world_create-pool-and-job_job.task-mytask1.json": "task",
    "cliext__hello-world_task-per-file-with-app-template_job.json": "job",
}


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_AGENT_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=90, check=False)


@dataclass(frozen=True)
class PlanRun:
    result: subprocess.CompletedProcess[str]
    base: Path      # holds exactly root/ and cwd/ before the run
    root: Path
    cwd: Path


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    """Every CLI run of this module, started side by side (each is a separate interpreter)."""
    jobs: dict[tuple[str, str], Callable[[], Any]] = {}
    for path in FILES:
        def validate(path: Path = path) -> subprocess.CompletedProcess[str]:
            return run_cli("validate", str(path), cwd=tmp_path_factory.mktemp("validate"))

        def plan(path: Path = path) -> PlanRun:
            base = tmp_path_factory.mktemp("plan")
            (base / "root").mkdir()
            (base / "cwd").mkdir()
            result = run_cli("plan", str(path), "--root", str(base / "root"), "--output", "json",
                             cwd=base / "cwd")
            return PlanRun(result, base, base / "root", base / "cwd")

        jobs[("validate", path.name)] = validate
        jobs[("plan", path.name)] = plan
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {key: pool.submit(fn) for key, fn in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def test_corpus_is_complete() -> None:
    names = {p.name for p in FILES}
    assert FRAGMENT in names
    assert set(KINDS) <= names, sorted(set(KINDS) - names)


@pytest.mark.parametrize("path", VALID, ids=_ids(VALID))
def test_corpus_file_validates(path: Path) -> None:
    doc = load_document(path)
    if path.name in KINDS:
        assert doc.kind == KINDS[path.name]
    assert doc.source == str(path)
    if doc.kind != "job":
        assert doc.tasks and all(t.id and t.command_line for t in doc.tasks)


def test_template_fragment_is_rejected_naming_id() -> None:
    with pytest.raises(SpecError) as info:
        load_document(CORPUS / "samples" / FRAGMENT)
    assert [i.path for i in info.value.issues] == ["id"]
    assert "required field is missing" in info.value.issues[0].message


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_cli_validate(path: Path, cli_runs: dict[tuple[str, str], Any]) -> None:
    result = cli_runs[("validate", path.name)]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    if path.name == FRAGMENT:
        assert result.returncode == 2, result
        assert "id: required field is missing" in result.stderr and str(path) in result.stderr
        assert result.stdout == ""
    else:
        assert result.returncode == 0, result.stderr
        assert f"{path}: valid " in result.stdout


@pytest.mark.parametrize("path", VALID[:3], ids=_ids(VALID[:3]))
def test_cli_validate_json(path: Path, tmp_path: Path) -> None:
    result = run_cli("validate", str(path), "--output", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["valid"] is True and summary["kind"] == load_document(path).kind


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_cli_plan_creates_nothing(path: Path, cli_runs: dict[tuple[str, str], Any]) -> None:
    run: PlanRun = cli_runs[("plan", path.name)]
    result = run.result
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if path.name == FRAGMENT:
        assert result.returncode == 2 and "id: required field is missing" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        plan = json.loads(result.stdout)
        assert isinstance(plan, dict) and plan
    assert list(run.root.iterdir()) == [], "plan must create nothing under the node root"
    assert list(run.cwd.iterdir()) == [], "plan must create nothing in the working directory"
    assert sorted(p.name for p in run.base.iterdir()) == ["cwd", "root"]
