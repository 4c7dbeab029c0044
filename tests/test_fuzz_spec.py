"""Fuzzing the task / job parser: whatever JSON comes in, only ``SpecError`` comes out.

Arbitrary JSON values, and mutations of valid bodies (keys dropped, types changed, random
strings in enum fields, huge numbers, deep nesting, unknown keys), go through
``agent.spec.load_data`` for every kind. A body that does parse must survive the pure code
that reads it and a dump / parse round trip. A few fuzzed files go through
``python -m agent validate``: exit 0 or 2, never a traceback.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_spec import KITCHEN_SINK, SDK_14_PREP, SDK_14_RELEASE, SDK_15_BODY, SDK_15_JOB

from agent.errors import SpecError
from agent.exits import Outcome, decide, decision_table
from agent.spec import JobSpec, TaskCollection, TaskSpec, check_task_in_job, load_data
from agent.spec.load import parse_json
from agent.taskrunner import limits_for, split_command

REPO = Path(__file__).resolve().parents[1]
KINDS = ("task", "job", "collection", None)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FULL_JOB: dict[str, Any] = {
    **SDK_15_JOB,
    "jobPreparationTask": {**SDK_15_JOB["jobPreparationTask"], **SDK_14_PREP, "id": "prep"},
    "jobReleaseTask": SDK_14_RELEASE,
    "constraints": {"maxWallClockTime": "P1D", "maxTaskRetryCount": -1},
    "jobManagerTask": {"id": "mgr", "commandLine": "m", "killJobOnCompletion": False, "outputFiles":
                       KITCHEN_SINK["outputFiles"], "constraints": KITCHEN_SINK["constraints"]},
    "priority": 10, "maxParallelTasks": 4, "metadata": [{"name": "a", "value": "b"}],
}
SEEDS: list[dict[str, Any]] = [KITCHEN_SINK, SDK_15_BODY, FULL_JOB, {"value": [KITCHEN_SINK, SDK_15_BODY]}]
ENUM_KEYS = {"uploadCondition", "elevationLevel", "scope", "source", "workingDirectory", "jobAction",
             "dependencyAction", "onTaskFailure", "onAllTasksComplete"}

json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**200), max_value=2**200)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda children: (st.lists(children, max_size=5)
                      | st.dictionaries(st.text(max_size=20), children, max_size=5)),
    max_leaves=30,
)


def parse_or_spec_error(data: Any, kind: str | None, *, round_trip: bool = True) -> Any:
    """Parse; only SpecError may escape. A parsed body must survive the code that reads it."""
    try:
        doc = load_data(data, kind=kind)  # type: ignore[arg-type]
    except SpecError as exc:
        assert exc.issues and str(exc)
        return None
    model = doc.model
    if round_trip:  # a parsed body dumps and parses back to the same model
        again = load_data(model.model_dump(by_alias=True, mode="json"), kind=doc.kind).model
        assert again == model
    job = model if isinstance(model, JobSpec) else None
    for task in doc.tasks:
        check_task_in_job(task, job)
        limits_for(task, job)
        decision_table(task.exit_conditions)
        decide(task.exit_conditions, Outcome.exited(1))
    if job is not None:
        for special in (job.job_preparation_task, job.job_release_task):
            if special is not None:
                limits_for(special, job)
    assert isinstance(model, TaskSpec | JobSpec | TaskCollection)
    return model


@FUZZ
@given(data=json_values, kind=st.sampled_from(KINDS))
def test_arbitrary_json(data: Any, kind: str | None) -> None:
    parse_or_spec_error(data, kind)


@settings(FUZZ, max_examples=100)
@given(data=st.dictionaries(st.sampled_from(sorted({*KITCHEN_SINK, *FULL_JOB, "value"})), json_values,
                            max_size=8),
       kind=st.sampled_from(KINDS))
def test_known_keys_with_arbitrary_values(data: dict[str, Any], kind: str | None) -> None:
    parse_or_spec_error(data, kind)


# ---------------------------------------------------------------------------------------------
# mutations of valid bodies

def paths_of(data: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += paths_of(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += paths_of(value, (*prefix, i))
    return out


def nest(value: Any, depth: int, as_dict: bool) -> Any:
    for _ in range(depth):
        value = {"a": value} if as_dict else [value]
    return value


def mutate(data: Any, path: tuple[str | int, ...], op: str, payload: Any) -> Any:
    out = copy.deepcopy(data)
    if not path:
        return payload if op == "replace" else out
    parent = out
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if op == "drop":
        del parent[key]
    elif op == "replace":
        parent[key] = payload
    elif op == "unknown-key" and isinstance(parent[key], dict):
        parent[key][str(payload)] = payload
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    return out


PAYLOADS = st.one_of(
    json_values,
    st.text(max_size=40),                                                 # random strings (enum fields...)
    st.sampled_from(["", " ", "P", "PT", "TaskSuccess", "NONE", "../x", "/abs", "a" * 65, "0999", "P1Y",
                     "P10675199DT2H48M5.4775807S", "PT" + "9" * 400 + "H", "\x00", "\n", "ünï"]),
    st.sampled_from([2**63, -(2**63) - 1, 10**400, -1, 0, 101, 1e308, float("inf"), float("nan"), True]),
    st.builds(nest, json_scalars, st.integers(1, 200), st.booleans()),  # nesting (deeper: test_deep_nesting)
)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    data: Any = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths_of(data)))
        op = draw(st.sampled_from(["drop", "replace", "replace", "unknown-key", "duplicate"]))
        data = mutate(data, path, op, draw(PAYLOADS))
    return data


@FUZZ
@given(data=mutated(), kind=st.sampled_from(KINDS))
def test_mutated_bodies(data: Any, kind: str | None) -> None:
    parse_or_spec_error(data, kind)


def enum_paths(data: Any) -> list[tuple[str | int, ...]]:
    return [p for p in paths_of(data) if p and p[-1] in ENUM_KEYS]


@FUZZ
@given(seed=st.sampled_from(SEEDS), value=st.text(max_size=40) | json_scalars, pick=st.integers(0, 1000))
def test_random_values_in_enum_fields(seed: dict[str, Any], value: Any, pick: int) -> None:
    paths = enum_paths(seed)
    model = parse_or_spec_error(mutate(seed, paths[pick % len(paths)], "replace", value), None)
    if model is None:
        return
    assert isinstance(value, str) or value is None


FREE_FORM = {"poolInfo", "metadata", "networkConfiguration", "taskFactory", "applicationTemplateInfo"}


def typed_leaves(data: Any) -> list[tuple[str | int, ...]]:
    """Paths of the string / integer / boolean leaves outside the free-form (verbatim) job fields."""
    return [p for p in paths_of(data) if p and not FREE_FORM & {x for x in p if isinstance(x, str)}
            and isinstance(_at(data, p), str | int) and not (p[-1] == "value" and len(p) == 1)]


def _at(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


OTHER_TYPES = st.one_of(st.text(max_size=5), st.sampled_from(["true", "false", "1", "0", "-1", "2.0"]),
                        st.integers(-3, 3), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                        st.just([]), st.just({}))


def _json_kind(value: Any) -> str:
    return "bool" if isinstance(value, bool) else type(value).__name__


@FUZZ
@given(seed=st.sampled_from(SEEDS), value=OTHER_TYPES, pick=st.integers(0, 10_000))
def test_a_value_of_another_json_type_is_never_coerced(seed: dict[str, Any], value: Any, pick: int) -> None:
    paths = typed_leaves(seed)
    path = paths[pick % len(paths)]
    if _json_kind(_at(seed, path)) == _json_kind(value):
        return
    with pytest.raises(SpecError):
        load_data(mutate(seed, path, "replace", value))


@pytest.mark.parametrize("depth", [100, 1000, 20000], ids=["100", "1000", "20000"])
@pytest.mark.parametrize("where", [("poolInfo",), ("metadata",), ("resourceFiles",), ("unknown",),
                                   ("exitConditions", "exitCodes")], ids=lambda w: ".".join(w))
def test_deep_nesting(depth: int, where: tuple[str, ...]) -> None:
    for as_dict in (True, False):
        seed = FULL_JOB if where[0] in {"poolInfo", "metadata"} else KITCHEN_SINK
        base: dict[str, Any] = copy.deepcopy(seed)
        node = base
        for part in where[:-1]:
            node = node[part]
        node[where[-1]] = nest("x", depth, as_dict)
        parse_or_spec_error(base, None, round_trip=False)  # pydantic cannot dump 1000 levels


# ---------------------------------------------------------------------------------------------
# the CLI on fuzzed files: exit 0 or 2, a message, never a traceback

def fuzzed_files(tmp: Path) -> list[Path]:
    rng = random.Random(20261121)
    data: Any = KITCHEN_SINK
    for _ in range(6):
        path = rng.choice(paths_of(data))
        op = rng.choice(["drop", "replace", "unknown-key"])
        payload = rng.choice(["", "TaskSuccess", "PT" + "9" * 400 + "H", -(2**70), None, {"x": [1]},
                              "a" * 65])
        data = mutate(data, path, op, payload)
    files: dict[str, bytes] = {
        "mutated.json": json.dumps(data).encode(),
        "deep.json": b'{"id": "t", "commandLine": "x", "poolInfo": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        "huge-int.json": b'{"id": "t", "commandLine": "x", "requiredSlots": 1' + b"0" * 5000 + b"}",
        "nan.json": b'{"id": "t", "commandLine": "x", "requiredSlots": NaN, '
                    b'"constraints": {"maxTaskRetryCount": 1e999}}',
    }
    paths = []
    for name, content in files.items():
        (tmp / name).write_bytes(content)
        paths.append(tmp / name)
    return paths


def test_cli_validate_on_fuzzed_files(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_AGENT_")}
    env["PYTHONPATH"] = str(REPO)

    def validate(path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
        argv = [sys.executable, "-m", "agent", "validate", str(path)]
        return path, subprocess.run(argv, cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=90, check=False)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(validate, fuzzed_files(tmp_path)))
    for path, result in results:
        assert "Traceback" not in result.stderr + result.stdout, (path.name, result.stderr[-2000:])
        assert result.returncode in (0, 2), (path.name, result.returncode, result.stderr[-2000:])
        if result.returncode == 2:
            assert result.stderr.startswith("batch-agent: "), (path.name, result.stderr)
            assert str(path) in result.stderr, (path.name, result.stderr)
        else:
            assert "valid" in result.stdout


# ---------------------------------------------------------------------------------------------
# hostile strings and JSON: refused with a path, or accepted only if the node can use them

HOSTILE = st.lists(st.sampled_from(["a", " ", "\t", "'", '"', "\\", "\x00", "\x01", "\x7f", "=", "[", "]", ":", "@",
                                    "/", "?", "#", "%", "\u2603", "xn--", ".", "..", "\ud800", "é", "-"]),
                   max_size=20).map("".join)
STRING_PATHS: list[tuple[str | int, ...]] = [
    ("commandLine",), ("environmentSettings", 0, "name"), ("environmentSettings", 0, "value"),
    ("resourceFiles", 0, "httpUrl"), ("resourceFiles", 0, "filePath"), ("outputFiles", 0, "filePattern"),
    ("outputFiles", 0, "destination", "container", "containerUrl"), ("outputFiles", 0, "destination", "container",
                                                                     "path"),
    ("containerSettings", "imageName"), ("containerSettings", "containerRunOptions"),
]


@FUZZ
@given(path=st.sampled_from(STRING_PATHS), value=HOSTILE,
       prefix=st.sampled_from(["", "https://", "http://h/", "http://[", "https://u:p@", "echo "]))
def test_a_hostile_string_is_refused_with_its_path_or_can_be_used(path: tuple[str | int, ...], value: str,
                                                                   prefix: str) -> None:
    import httpx

    data = mutate(KITCHEN_SINK, path, "replace", prefix + value)
    try:
        task = load_data(data, kind="task").model
    except SpecError as exc:
        assert any(i.path.split(".")[0].split("[")[0] == path[0] for i in exc.issues), exc.issues
        return
    assert isinstance(task, TaskSpec)
    for text in (task.command_line, task.container_settings.container_run_options or ""):  # type: ignore[union-attr]
        split_command(text)
        assert "\x00" not in text
    for setting in task.environment_settings or ():
        assert "=" not in setting.name and "\x00" not in setting.name + (setting.value or "")
        (setting.name + (setting.value or "")).encode("utf-8")
    urls = [u for r in task.resource_files or () for u in (r.http_url, r.storage_container_url) if u] + [
        o.destination.container.container_url for o in task.output_files or ()]
    for url in urls:
        assert urlsplit(url).hostname and urlsplit(url).port != 0
        host = httpx.URL(url)
        assert host.host
        if ":" not in host.host:
            host.raw_host.decode("ascii").encode("idna")
    for name in [r.file_path or "" for r in task.resource_files or ()] + [o.file_pattern for o in task.output_files
                                                                         or ()]:
        name.encode("utf-8")
        assert "\x00" not in name


@FUZZ
@given(where=st.integers(0, 10_000), key=st.sampled_from(["id", "commandLine", "elevationLevel", "x"]))
def test_a_repeated_key_anywhere_is_refused_with_its_path(where: int, key: str) -> None:
    text = json.dumps(KITCHEN_SINK)
    opens = [i for i, c in enumerate(text) if c == "{"]
    at = opens[where % len(opens)] + 1
    text = text[:at] + f'"{key}": 1, "{key}": 2, ' + text[at:]
    with pytest.raises(SpecError) as info:
        parse_json(text)
    assert any(i.path == key or i.path.endswith(f".{key}") for i in info.value.issues), info.value.issues
