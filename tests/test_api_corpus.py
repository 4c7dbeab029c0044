"""Every job, task and task collection of ../shared/corpus through the API: each is accepted (201,
or 200 with every task a success) and read back, or refused exactly where ``batch-agent validate``
refuses it (the README's one refusal: the template fragment without ``id``, 400 naming ``id``).

The server's scheduler is off: the corpus holds Windows command lines, container images and pools
that do not exist here, and acceptance is what is tested. Tasks go to a job of their own (with
``usesTaskDependencies``); a job id the corpus repeats is suffixed, the body is otherwise sent as
the file holds it, bytes unchanged where the id is new."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_kit import ApiServer, serving

from agent.errors import SpecError
from agent.spec import load_document

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
FILES = sorted(p for p in CORPUS.rglob("*.json") if p.is_file())
FRAGMENT = "cliext__hello-world_create-pool-and-job-with-templates_job.repeatTask.json"

pytestmark = pytest.mark.timeout(120)

if not CORPUS.is_dir():
    raise RuntimeError(f"the shared corpus is missing: expected it at {CORPUS} (../shared/corpus)")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with serving("api-corpus", tmp_path_factory.mktemp("api-corpus"), schedule=False) as server:
        yield server


def kind_of(data: dict[str, Any]) -> str:
    if "value" in data:
        return "collection"
    return "job" if "poolInfo" in data else "task"


def validate(path: Path) -> list[str] | None:
    """None when ``batch-agent validate`` accepts the file, else the JSON paths it names."""
    try:
        load_document(path)
    except SpecError as exc:
        return [i.path for i in exc.issues]
    return None


def test_corpus_is_there() -> None:
    assert len(FILES) >= 18 and FRAGMENT in {p.name for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_corpus_file_through_the_api(api: ApiServer, path: Path) -> None:
    raw = path.read_bytes()
    data = json.loads(raw)
    kind = kind_of(data)
    refused = validate(path)
    stem = path.stem.replace(".", "-")[-40:].strip("-_")
    if kind == "job":
        if api.call("GET", f"/jobs/{data['id']}").status_code == 200:
            data["id"] = f"{data['id']}-{stem}"[:64]
            raw = json.dumps(data).encode()
        r = api.call("POST", "/jobs", content=raw, headers={"Content-Type": "application/json; odata=minimalmetadata"})
        target = f"/jobs/{data['id']}"
    else:
        job_id = f"corpus-{stem}"[:64]
        made = api.call("POST", "/jobs", json_body={"id": job_id, "poolInfo": {"poolId": "p"},
                                                    "usesTaskDependencies": True})
        assert made.status_code == 201, made.text
        route = "addtaskcollection" if kind == "collection" else "tasks"
        r = api.call("POST", f"/jobs/{job_id}/{route}", content=raw,
                     headers={"Content-Type": "application/json; odata=minimalmetadata"})
        target = f"/jobs/{job_id}/tasks/{data.get('id', '')}"
    if refused is not None:
        assert path.name == FRAGMENT, (path.name, refused)
        body = r.json()
        assert (r.status_code, body["code"]) == (400, "MissingRequiredProperty")
        assert [v["value"] for v in body["values"] if v["key"] == "PropertyName"] == refused == ["id"]
        return
    if kind == "collection":
        assert r.status_code == 200, r.text
        results = r.json()["value"]
        assert [x["status"] for x in results] == ["success"] * len(data["value"])
        for task in data["value"]:
            got = api.call("GET", f"/jobs/{job_id}/tasks/{task['id']}")
            assert got.status_code == 200 and got.json()["commandLine"] == task["commandLine"]
        return
    assert r.status_code == 201, r.text
    got = api.call("GET", target)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["id"] == data["id"]
    if kind == "task":
        assert body["commandLine"] == data["commandLine"] and body["state"] == "active"
    else:
        assert body["poolInfo"] == data["poolInfo"] and body["state"] == "active"
        if "jobManagerTask" in data:
            jm = data["jobManagerTask"]
            task = api.call("GET", f"{target}/tasks/{jm['id']}")
            assert task.status_code == 200 and task.json()["commandLine"] == jm["commandLine"]
            assert "x-batch-agent-jobManager" not in task.json()
