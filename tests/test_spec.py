"""agent.spec: the Create Task / Create Job / Create Task Collection bodies (REST 2025-06-01).

Table-driven: every field parses, every rule rejects with a message naming the JSON path, the
official SDK's JSON (sdk-compat.md) parses to the same model as the hand-written equivalent.
Also ``agent.taskrunner.limits_for`` / ``split_command``, the spec-derived pure helpers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.errors import Issue, SpecError
from agent.spec import (
    JobReleaseTask,
    JobSpec,
    TaskCollection,
    TaskSpec,
    check_task_in_job,
    detect_kind,
    load_data,
    load_document,
    load_job,
    load_task,
)
from agent.spec.durations import UNLIMITED_TEXT
from agent.taskrunner import Limits, limits_for, split_command

DAY, HOUR, MINUTE = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)

# Every field of the 2025-06-01 Create Task body, each nested object with every field.
KITCHEN_SINK: dict[str, Any] = {
    "id": "kitchen-sink_01",
    "displayName": "Kitchen sink: every field ✓",
    "commandLine": "/bin/sh -c 'echo \"$HOME\" > out.txt'",
    "containerSettings": {
        "containerRunOptions": "--rm --network none",
        "imageName": "myreg.azurecr.io/tools/img:1.2",
        "registry": {"username": "u", "password": "p@ss", "registryServer": "myreg.azurecr.io",
                     "identityReference": {"resourceId": "/subscriptions/s/rg/r/identities/id1"}},
        "workingDirectory": "taskWorkingDirectory",
        "containerHostBatchBindMounts": [
            {"source": "Task", "isReadOnly": True}, {"source": "Shared", "isReadOnly": False},
            {"source": "Startup"}, {"source": "VfsMounts"}, {"source": "JobPrep"}, {"source": "Applications"},
        ],
    },
    "exitConditions": {
        "exitCodes": [{"code": 1, "exitOptions": {"jobAction": "terminate", "dependencyAction": "block"}},
                      {"code": 0, "exitOptions": {"jobAction": "none"}}],
        "exitCodeRanges": [{"start": 2, "end": 4, "exitOptions": {"jobAction": "disable"}},
                           {"start": -10, "end": -1, "exitOptions": {"dependencyAction": "satisfy"}}],
        "preProcessingError": {"jobAction": "none"},
        "fileUploadError": {"dependencyAction": "satisfy"},
        "default": {"jobAction": "terminate", "dependencyAction": "block"},
    },
    "resourceFiles": [
        {"httpUrl": "https://example.com/in.txt?sv=1&sig=abc", "filePath": "in/in.txt", "fileMode": "0644"},
        {"storageContainerUrl": "https://acct.blob.core.windows.net/c?sv=1&sig=xyz", "blobPrefix": "data/",
         "filePath": "data", "identityReference": {"resourceId": "/subscriptions/s/id2"}},
        {"autoStorageContainerName": "autoc", "blobPrefix": "p/", "fileMode": "770"},
    ],
    "outputFiles": [{
        "filePattern": "**/*.txt",
        "destination": {"container": {
            "path": "results/", "containerUrl": "https://acct.blob.core.windows.net/out?sig=out",
            "identityReference": {"resourceId": "/subscriptions/s/id3"},
            "uploadHeaders": [{"name": "x-ms-blob-content-type", "value": "text/plain"},
                              {"name": "x-ms-meta-novalue"}],
        }},
        "uploadOptions": {"uploadCondition": "taskcompletion"},
    }],
    "environmentSettings": [{"name": "FOO", "value": "bar"}, {"name": "EMPTY"}],
    "affinityInfo": {"affinityId": "node1"},
    "constraints": {"maxWallClockTime": "PT1H30M", "retentionTime": "P7D", "maxTaskRetryCount": 3},
    "requiredSlots": 2,
    "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}},
    "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": "echo coord",
                              "commonResourceFiles": [{"httpUrl": "https://example.com/c", "filePath": "c"}]},
    "dependsOn": {"taskIds": ["a", "b"], "taskIdRanges": [{"start": 1, "end": 10}]},
    "applicationPackageReferences": [{"applicationId": "app1", "version": "1.0"}, {"applicationId": "app2"}],
    "authenticationTokenSettings": {"access": ["job"]},
}

# sdk-compat.md §1: json.dumps(BatchTaskCreateOptions(...).as_dict()) from azure-batch 15.1.0, verbatim.
SDK_15_BODY = json.loads("""
{"id":"task1","displayName":"demo","commandLine":"/bin/sh -c 'echo hi > out.txt'",
 "resourceFiles":[{"httpUrl":"https://example.com/in.txt","filePath":"in/in.txt","fileMode":"0644"},
                  {"storageContainerUrl":"https://acct.blob.core.windows.net/c?sas","blobPrefix":"data/"},
                  {"autoStorageContainerName":"autoc"}],
 "environmentSettings":[{"name":"FOO","value":"bar"}],
 "containerSettings":{"imageName":"ubuntu:22.04","containerRunOptions":"--rm","workingDirectory":"taskWorkingDirectory",
   "registry":{"registryServer":"myreg.azurecr.io","username":"u","password":"p"},
   "containerHostBatchBindMounts":[{"source":"Task","isReadOnly":true},{"source":"Shared","isReadOnly":false}]},
 "exitConditions":{"exitCodes":[{"code":1,"exitOptions":{"jobAction":"terminate","dependencyAction":"block"}}],
   "exitCodeRanges":[{"start":2,"end":4,"exitOptions":{"jobAction":"disable"}}],
   "preProcessingError":{"jobAction":"none"},"fileUploadError":{"dependencyAction":"satisfy"},
   "default":{"jobAction":"terminate"}},
 "outputFiles":[{"filePattern":"**/*.txt","destination":{"container":{"containerUrl":"https://acct.blob.core.windows.net/out?sas",
   "path":"results/","uploadHeaders":[{"name":"x-ms-blob-content-type","value":"text/plain"}]}},
   "uploadOptions":{"uploadCondition":"taskcompletion"}}],
 "constraints":{"maxWallClockTime":"PT01H30M00S","retentionTime":"P7D","maxTaskRetryCount":3},
 "requiredSlots":2,
 "userIdentity":{"autoUser":{"scope":"task","elevationLevel":"nonadmin"}},
 "dependsOn":{"taskIds":["a","b"],"taskIdRanges":[{"start":1,"end":10}]},
 "multiInstanceSettings":{"numberOfInstances":2,"coordinationCommandLine":"echo coord",
   "commonResourceFiles":[{"httpUrl":"https://example.com/c","filePath":"c"}]},
 "applicationPackageReferences":[{"applicationId":"app1","version":"1.0"}],
 "affinityInfo":{"affinityId":"node1"}}
""")

# The same task as hand-written JSON / the old msrest SDK would send it: other key order,
# msrest durations, the camelCase / PascalCase enum spellings of docs and tutorials.
HAND_BODY: dict[str, Any] = {
    "commandLine": "/bin/sh -c 'echo hi > out.txt'", "id": "task1", "displayName": "demo",
    "affinityInfo": {"affinityId": "node1"},
    "constraints": {"retentionTime": "P1W", "maxWallClockTime": "PT1H30M", "maxTaskRetryCount": 3},
    "userIdentity": {"autoUser": {"elevationLevel": "nonAdmin", "scope": "Task"}},
    "requiredSlots": 2,
    "outputFiles": [{"uploadOptions": {"uploadCondition": "TaskCompletion"}, "filePattern": "**/*.txt",
                     "destination": {"container": {
                         "uploadHeaders": [{"value": "text/plain", "name": "x-ms-blob-content-type"}],
                         "path": "results/", "containerUrl": "https://acct.blob.core.windows.net/out?sas"}}}],
    "exitConditions": {
        "default": {"jobAction": "Terminate"},
        "fileUploadError": {"dependencyAction": "Satisfy"},
        "preProcessingError": {"jobAction": "None"},
        "exitCodeRanges": [{"exitOptions": {"jobAction": "DISABLE"}, "end": 4, "start": 2}],
        "exitCodes": [{"exitOptions": {"dependencyAction": "block", "jobAction": "terminate"}, "code": 1}],
    },
    "containerSettings": {
        "registry": {"password": "p", "username": "u", "registryServer": "myreg.azurecr.io"},
        "containerHostBatchBindMounts": [{"isReadOnly": True, "source": "task"},
                                         {"isReadOnly": False, "source": "shared"}],
        "workingDirectory": "TaskWorkingDirectory", "containerRunOptions": "--rm",
        "imageName": "ubuntu:22.04",
    },
    "environmentSettings": [{"value": "bar", "name": "FOO"}],
    "resourceFiles": [{"fileMode": "0644", "filePath": "in/in.txt", "httpUrl": "https://example.com/in.txt"},
                      {"blobPrefix": "data/",
                       "storageContainerUrl": "https://acct.blob.core.windows.net/c?sas"},
                      {"autoStorageContainerName": "autoc"}],
    "dependsOn": {"taskIdRanges": [{"end": 10, "start": 1}], "taskIds": ["a", "b"]},
    "multiInstanceSettings": {"commonResourceFiles": [{"filePath": "c", "httpUrl": "https://example.com/c"}],
                              "coordinationCommandLine": "echo coord", "numberOfInstances": 2},
    "applicationPackageReferences": [{"version": "1.0", "applicationId": "app1"}],
}

# sdk-compat.md §1: BatchJobCreateOptions from azure-batch 15.1.0 (new_job.py), verbatim.
SDK_15_JOB = json.loads("""
{"id":"job1","poolInfo":{"poolId":"pool1"},"usesTaskDependencies":true,
 "jobPreparationTask":{"commandLine":"/bin/sh -c prep","waitForSuccess":true,
   "rerunOnNodeRebootAfterSuccess":true,
   "constraints":{"maxWallClockTime":"PT10M00S","maxTaskRetryCount":1},
   "userIdentity":{"autoUser":{"scope":"pool","elevationLevel":"admin"}}},
 "jobReleaseTask":{"commandLine":"/bin/sh -c cleanup","id":"jobrelease",
   "containerSettings":{"imageName":"ubuntu"},
   "resourceFiles":[{"httpUrl":"https://example.com/r","filePath":"r"}],
   "environmentSettings":[{"name":"A","value":"1"}],
   "maxWallClockTime":"PT15M00S","retentionTime":"P1D",
   "userIdentity":{"autoUser":{"scope":"pool","elevationLevel":"admin"}}},
 "commonEnvironmentSettings":[{"name":"JOBVAR","value":"x"}],
 "onAllTasksComplete":"terminatejob","onTaskFailure":"performexitoptionsjobaction"}
""")
# sdk-compat.md §2: msrest 14.2.0 JobReleaseTask(...).serialize() and JobPreparationTask(...).serialize().
SDK_14_RELEASE = json.loads("""
{"id":"jobrelease","commandLine":"/bin/sh -c cleanup","containerSettings":{"imageName":"ubuntu"},
 "resourceFiles":[{"httpUrl":"https://example.com/r","filePath":"r"}],
 "environmentSettings":[{"name":"A","value":"1"}],"maxWallClockTime":"PT15M","retentionTime":"P1D",
 "userIdentity":{"autoUser":{"scope":"pool","elevationLevel":"admin"}}}
""")
SDK_14_PREP = json.loads("""
{"commandLine":"prep","constraints":{"maxWallClockTime":"P0D","maxTaskRetryCount":-1},"waitForSuccess":true,"rerunOnNodeRebootAfterSuccess":false}
""")

MINIMAL_JOB: dict[str, Any] = {"id": "job1", "poolInfo": {"poolId": "pool1"}}


# ---------------------------------------------------------------------------------------------
# helpers

_DELETE = object()


def patched(base: dict[str, Any], *edits: tuple[tuple[str | int, ...], Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each ``(path, value)`` set (``_DELETE`` removes the key)."""
    out = copy.deepcopy(base)
    for path, value in edits:
        node: Any = out
        for part in path[:-1]:
            node = node[part]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return out


def task(**fields: Any) -> dict[str, Any]:
    return {"id": "t1", "commandLine": "/bin/true", **fields}


def job(**fields: Any) -> dict[str, Any]:
    return {**MINIMAL_JOB, **fields}


def issues_of(data: Any, kind: str | None = None) -> list[Issue]:
    with pytest.raises(SpecError) as info:
        load_data(data, kind=kind)  # type: ignore[arg-type]
    assert info.value.issues, "a SpecError always carries at least one issue"
    return info.value.issues


def parse_task(data: dict[str, Any]) -> TaskSpec:
    model = load_data(data, kind="task").model
    assert isinstance(model, TaskSpec)
    return model


def parse_job(data: dict[str, Any]) -> JobSpec:
    model = load_data(data, kind="job").model
    assert isinstance(model, JobSpec)
    return model


def dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


# ---------------------------------------------------------------------------------------------
# the whole Create Task body

def test_kitchen_sink_every_field_parses() -> None:
    t = parse_task(KITCHEN_SINK)
    assert t.id == "kitchen-sink_01" and t.display_name == "Kitchen sink: every field ✓"
    assert t.command_line == "/bin/sh -c 'echo \"$HOME\" > out.txt'"
    cs = t.container_settings
    assert cs is not None and cs.image_name == "myreg.azurecr.io/tools/img:1.2"
    assert cs.container_run_options == "--rm --network none"
    assert cs.working_directory == "taskWorkingDirectory"
    assert cs.registry is not None and cs.registry.registry_server == "myreg.azurecr.io"
    assert cs.registry.username == "u" and cs.registry.password == "p@ss"
    assert cs.registry.identity_reference is not None
    assert cs.registry.identity_reference.resource_id == "/subscriptions/s/rg/r/identities/id1"
    assert [(m.source, m.is_read_only) for m in cs.container_host_batch_bind_mounts or ()] == [
        ("Task", True), ("Shared", False), ("Startup", None), ("VfsMounts", None), ("JobPrep", None),
        ("Applications", None)]
    ec = t.exit_conditions
    assert ec is not None and ec.exit_codes is not None and ec.exit_code_ranges is not None
    assert [(m.code, m.exit_options.job_action, m.exit_options.dependency_action) for m in ec.exit_codes] == [
        (1, "terminate", "block"), (0, "none", None)]
    assert [(r.start, r.end, r.exit_options.job_action) for r in ec.exit_code_ranges] == [
        (2, 4, "disable"), (-10, -1, None)]
    assert ec.pre_processing_error is not None and ec.pre_processing_error.job_action == "none"
    assert ec.file_upload_error is not None and ec.file_upload_error.dependency_action == "satisfy"
    assert ec.default is not None
    assert (ec.default.job_action, ec.default.dependency_action) == ("terminate", "block")
    rf = t.resource_files or []
    assert (rf[0].http_url, rf[0].file_path, rf[0].file_mode, rf[0].mode) == (
        "https://example.com/in.txt?sv=1&sig=abc", "in/in.txt", "0644", 0o644)
    assert (rf[1].storage_container_url, rf[1].blob_prefix, rf[1].file_path) == (
        "https://acct.blob.core.windows.net/c?sv=1&sig=xyz", "data/", "data")
    assert rf[1].identity_reference is not None and rf[1].mode == 0o770  # default mode
    assert (rf[2].auto_storage_container_name, rf[2].blob_prefix, rf[2].mode) == ("autoc", "p/", 0o770)
    (of,) = t.output_files or []
    assert of.file_pattern == "**/*.txt" and of.upload_options.upload_condition == "taskcompletion"
    dest = of.destination.container
    assert (dest.path, dest.container_url) == ("results/", "https://acct.blob.core.windows.net/out?sig=out")
    assert dest.identity_reference is not None
    assert [(h.name, h.value) for h in dest.upload_headers or ()] == [
        ("x-ms-blob-content-type", "text/plain"), ("x-ms-meta-novalue", None)]
    assert [(e.name, e.value) for e in t.environment_settings or ()] == [("FOO", "bar"), ("EMPTY", None)]
    assert t.affinity_info is not None and t.affinity_info.affinity_id == "node1"
    c = t.constraints
    assert c is not None and (c.max_wall_clock_time, c.retention_time, c.max_task_retry_count) == (
        HOUR + 30 * MINUTE, 7 * DAY, 3)
    assert t.required_slots == 2
    assert t.user_identity is not None and t.user_identity.auto_user is not None
    auto = t.user_identity.auto_user
    assert (auto.scope, auto.elevation_level) == ("task", "nonadmin")
    mi = t.multi_instance_settings
    assert mi is not None and (mi.number_of_instances, mi.coordination_command_line) == (2, "echo coord")
    assert [r.file_path for r in mi.common_resource_files or ()] == ["c"]
    assert t.depends_on is not None and t.depends_on.task_ids == ["a", "b"]
    assert [(r.start, r.end) for r in t.depends_on.task_id_ranges or ()] == [(1, 10)]
    assert [(a.application_id, a.version) for a in t.application_package_references or ()] == [
        ("app1", "1.0"), ("app2", None)]
    assert t.authentication_token_settings is not None and t.authentication_token_settings.access == ["job"]


def test_kitchen_sink_uses_every_field_of_every_model() -> None:
    """Guard for the kitchen sink itself: a field added to a model must be added to it too."""
    from agent.spec.base import BatchModel
    from agent.spec.load import _unwrap

    seen: dict[type[BatchModel], set[str]] = {}

    def walk(model: Any, data: Any) -> None:
        if isinstance(data, list):
            for item in data:
                walk(model, item)
        elif isinstance(model, type) and issubclass(model, BatchModel) and isinstance(data, dict):
            seen.setdefault(model, set()).update(data)
            for name, field in model.model_fields.items():
                if (field.alias or name) in data:
                    walk(_unwrap(field.annotation), data[field.alias or name])

    walk(TaskSpec, KITCHEN_SINK)
    exempt = {"UserIdentity.username"}  # exclusive with autoUser: covered by the RULES / edge tables
    missing = sorted(f"{m.__name__}.{f}" for m, keys in seen.items() for f in m.known_fields()
                     if f not in keys and f"{m.__name__}.{f}" not in exempt)
    assert missing == []
    assert len(seen) >= 25


def test_kitchen_sink_dump_parses_back_to_the_same_model() -> None:
    t = parse_task(KITCHEN_SINK)
    again = parse_task(dump(t))
    assert again == t
    assert dump(t)["constraints"] == {"maxWallClockTime": "PT1H30M", "retentionTime": "P7D",
                                      "maxTaskRetryCount": 3}


def test_sdk_15_body_parses_like_the_hand_written_one() -> None:
    sdk, hand = parse_task(SDK_15_BODY), parse_task(HAND_BODY)
    assert sdk == hand
    assert dump(sdk) == dump(hand)
    # canonical spellings survive, whatever the input casing
    assert hand.user_identity is not None and hand.user_identity.auto_user is not None
    assert hand.user_identity.auto_user.elevation_level == "nonadmin"
    assert hand.container_settings is not None
    assert hand.container_settings.working_directory == "taskWorkingDirectory"
    mounts = hand.container_settings.container_host_batch_bind_mounts or []
    assert [m.source for m in mounts] == ["Task", "Shared"]
    assert sdk.constraints is not None and sdk.constraints.max_wall_clock_time == HOUR + 30 * MINUTE


def test_sdk_15_body_with_authentication_token_settings() -> None:
    # 15.1.0 has no model for it, but a model built from a dict keeps the key (sdk-compat.md).
    t = parse_task({**SDK_15_BODY, "authenticationTokenSettings": {"access": ["job"]}})
    assert t.authentication_token_settings is not None and t.authentication_token_settings.access == ["job"]


def test_minimal_task_defaults() -> None:
    t = parse_task({"id": "t", "commandLine": "x"})
    assert t.constraints is None and t.required_slots is None and t.resource_files is None
    assert t.user_identity is None and t.exit_conditions is None


def test_constraints_defaults_when_partly_given() -> None:
    c = parse_task(task(constraints={})).constraints
    assert c is not None
    assert (c.max_wall_clock_time, c.retention_time, c.max_task_retry_count) == (None, 7 * DAY, None)


@pytest.mark.parametrize(("text", "expected"), [
    ("PT01H30M00S", HOUR + 30 * MINUTE), ("P1DT02H00M00S", DAY + 2 * HOUR), ("P", timedelta(0)),
    ("P0D", timedelta(0)), (UNLIMITED_TEXT, None), ("P1W", 7 * DAY), ("PT01M30.5S", timedelta(seconds=90.5)),
], ids=["15x-padded", "15x-days", "bare-P", "P0D", "unlimited", "weeks", "fraction"])
def test_constraint_durations(text: str, expected: timedelta | None) -> None:
    c = parse_task(task(constraints={"maxWallClockTime": text, "retentionTime": text})).constraints
    assert c is not None and c.max_wall_clock_time == expected and c.retention_time == expected


# ---------------------------------------------------------------------------------------------
# enum values in any casing, stored canonically

ENUMS: list[tuple[str, tuple[str | int, ...], list[str], str]] = [
    ("uploadCondition", ("outputFiles", 0, "uploadOptions", "uploadCondition"),
     ["TaskSuccess", "taskSuccess", "tasksuccess", "TASKSUCCESS"], "tasksuccess"),
    ("uploadCondition-failure", ("outputFiles", 0, "uploadOptions", "uploadCondition"),
     ["TaskFailure", "taskfailure"], "taskfailure"),
    ("uploadCondition-completion", ("outputFiles", 0, "uploadOptions", "uploadCondition"),
     ["TaskCompletion", "taskCompletion"], "taskcompletion"),
    ("elevationLevel", ("userIdentity", "autoUser", "elevationLevel"), ["nonAdmin", "NonAdmin", "nonadmin"],
     "nonadmin"),
    ("elevationLevel-admin", ("userIdentity", "autoUser", "elevationLevel"), ["Admin", "ADMIN"], "admin"),
    ("scope", ("userIdentity", "autoUser", "scope"), ["Pool", "pool", "POOL"], "pool"),
    ("bindSource-Task", ("containerSettings", "containerHostBatchBindMounts", 0, "source"),
     ["Task", "task", "TASK"], "Task"),
    ("bindSource-VfsMounts", ("containerSettings", "containerHostBatchBindMounts", 0, "source"),
     ["vfsmounts", "Vfsmounts", "VFSMOUNTS"], "VfsMounts"),
    ("bindSource-JobPrep", ("containerSettings", "containerHostBatchBindMounts", 0, "source"),
     ["jobprep", "jobPrep"], "JobPrep"),
    ("workingDirectory", ("containerSettings", "workingDirectory"),
     ["taskworkingdirectory", "TaskWorkingDirectory", "taskWorkingDirectory"], "taskWorkingDirectory"),
    ("workingDirectory-image", ("containerSettings", "workingDirectory"),
     ["ContainerImageDefault", "containerimagedefault"], "containerImageDefault"),
    ("jobAction", ("exitConditions", "default", "jobAction"), ["Terminate", "TERMINATE", "terminate"],
     "terminate"),
    ("jobAction-none", ("exitConditions", "default", "jobAction"), ["None", "NONE"], "none"),
    ("dependencyAction", ("exitConditions", "exitCodes", 0, "exitOptions", "dependencyAction"),
     ["Satisfy", "SATISFY"], "satisfy"),
    ("access", ("authenticationTokenSettings", "access", 0), ["Job", "JOB"], "job"),
]


def _get(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        data = data[part] if isinstance(part, int) else getattr(data, _snake(part))
    return data


def _snake(name: str) -> str:
    import re
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


@pytest.mark.parametrize(("path", "spellings", "canonical"), [e[1:] for e in ENUMS],
                         ids=[e[0] for e in ENUMS])
def test_enum_any_casing_is_canonicalised(path: tuple[str | int, ...], spellings: list[str],
                                          canonical: str) -> None:
    for spelling in spellings:
        t = parse_task(patched(KITCHEN_SINK, (path, spelling)))
        assert _get(t, path) == canonical, spelling
        assert _get(parse_task(dump(t)), path) == canonical


@pytest.mark.parametrize(("path", "canonical"), [(e[1], e[3]) for e in ENUMS], ids=[e[0] for e in ENUMS])
@pytest.mark.parametrize("bad", ["nope", "", " tasksuccess", 1, ["x"]],
                         ids=["word", "empty", "padded", "int", "list"])
def test_enum_bad_value_names_path_and_allowed(path: tuple[str | int, ...], canonical: str, bad: Any) -> None:
    (issue,) = issues_of(patched(KITCHEN_SINK, (path, bad)))
    assert issue.path == json_path(path)
    assert canonical in issue.message and "any casing" in issue.message


def json_path(path: tuple[str | int, ...]) -> str:
    return ".".join(p if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")


REQUIRED_ENUMS = {"uploadCondition", "access"}


@pytest.mark.parametrize("path", [e[1] for e in ENUMS], ids=[e[0] for e in ENUMS])
def test_enum_null(path: tuple[str | int, ...]) -> None:
    data = patched(KITCHEN_SINK, (path, None))
    if {p for p in path if isinstance(p, str)} & REQUIRED_ENUMS:
        (issue,) = issues_of(data)
        assert issue.path == json_path(path)
    else:  # an optional enum set to null is simply not set
        assert _get(parse_task(data), path) is None


# ---------------------------------------------------------------------------------------------
# read-only fields of a Get Task / Get Job response are accepted and ignored

TASK_SHOW_EXTRAS: dict[str, Any] = {
    "odata.metadata": "https://acct.eastus.batch.azure.com/$metadata#tasks/@Element",
    "url": "https://acct.eastus.batch.azure.com/jobs/job1/tasks/task1",
    "eTag": "0x8DDB0000000002",
    "lastModified": "2025-07-01T12:00:00.0000000Z",
    "creationTime": "2025-07-01T12:00:00.0000000Z",
    "state": "completed",
    "stateTransitionTime": "2025-07-01T12:00:05.123Z",
    "previousState": "running",
    "previousStateTransitionTime": "2025-07-01T12:00:01Z",
    "executionInfo": {"startTime": "2025-07-01T12:00:01Z", "endTime": "2025-07-01T12:00:05Z", "exitCode": 0,
                      "result": "success", "retryCount": 0, "requeueCount": 0},
    "nodeInfo": {"affinityId": "TVM:local", "poolId": "local", "nodeId": "local-node",
                 "taskRootDirectory": "workitems/j/job-1/t"},
    "stats": {"url": "x", "userCPUTime": "PT0.1S", "readIOps": "0"},
}


def test_task_show_dump_is_accepted_and_read_only_fields_ignored() -> None:
    shown = {**KITCHEN_SINK, **TASK_SHOW_EXTRAS,
             "constraints": {"maxWallClockTime": UNLIMITED_TEXT, "retentionTime": "P7D",
                             "maxTaskRetryCount": 0}}
    t = parse_task(shown)
    assert t == parse_task({k: v for k, v in shown.items() if k not in TASK_SHOW_EXTRAS})
    assert "executionInfo" not in dump(t) and "url" not in dump(t)
    assert t.constraints is not None and t.constraints.max_wall_clock_time is None


def test_task_show_dump_of_sdk_body_is_accepted() -> None:
    assert parse_task({**SDK_15_BODY, **TASK_SHOW_EXTRAS}) == parse_task(SDK_15_BODY)


def test_read_only_fields_are_ignored_only_at_the_top() -> None:
    (issue,) = issues_of(task(constraints={"url": "x"}))
    assert issue.path == "constraints.url" and "unknown field" in issue.message


def test_job_show_dump_is_accepted() -> None:
    shown = {**SDK_15_JOB, "url": "u", "eTag": "e", "lastModified": "x", "creationTime": "x",
             "state": "active",
             "stateTransitionTime": "x", "previousState": "x", "previousStateTransitionTime": "x",
             "executionInfo": {"startTime": "x", "poolId": "pool1"}, "stats": {}, "odata.metadata": "m"}
    assert parse_job(shown) == parse_job(SDK_15_JOB)


# ---------------------------------------------------------------------------------------------
# unknown fields: rejected at the right JSON path with a "did you mean"

UNKNOWN: list[tuple[str, Any, str, str, str]] = [
    # (id, data, expected path, expected hint, kind)
    ("top", patched(KITCHEN_SINK, (("commandline",), "x"), (("commandLine",), _DELETE)), "commandline",
     "did you mean 'commandLine'?", "task"),
    ("resourceFiles[1].filepath", patched(KITCHEN_SINK, (("resourceFiles", 1, "filepath"), "x")),
     "resourceFiles[1].filepath", "did you mean 'filePath'?", "task"),
    ("registry", patched(KITCHEN_SINK, (("containerSettings", "registry", "registryserver"), "x")),
     "containerSettings.registry.registryserver", "did you mean 'registryServer'?", "task"),
    ("bindMount", patched(KITCHEN_SINK,
                          (("containerSettings", "containerHostBatchBindMounts", 2, "readOnly"), True)),
     "containerSettings.containerHostBatchBindMounts[2].readOnly", "did you mean 'isReadOnly'?", "task"),
    ("exitCodes", patched(KITCHEN_SINK, (("exitConditions", "exitCodes", 1, "exitOption"), {})),
     "exitConditions.exitCodes[1].exitOption", "did you mean 'exitOptions'?", "task"),
    ("exitOptions", patched(KITCHEN_SINK, (("exitConditions", "default", "jobaction"), "none")),
     "exitConditions.default.jobaction", "did you mean 'jobAction'?", "task"),
    ("outputs", patched(KITCHEN_SINK, (("outputFiles", 0, "destination", "container", "uploadHeader"), [])),
     "outputFiles[0].destination.container.uploadHeader", "did you mean 'uploadHeaders'?", "task"),
    ("header", patched(KITCHEN_SINK,
                       (("outputFiles", 0, "destination", "container", "uploadHeaders", 0, "Name"), "x")),
     "outputFiles[0].destination.container.uploadHeaders[0].Name", "did you mean 'name'?", "task"),
    ("constraints", patched(KITCHEN_SINK, (("constraints", "maxWallclockTime"), "PT1H")),
     "constraints.maxWallclockTime", "did you mean 'maxWallClockTime'?", "task"),
    ("autoUser", patched(KITCHEN_SINK, (("userIdentity", "autoUser", "elevation"), "admin")),
     "userIdentity.autoUser.elevation", "did you mean 'elevationLevel'?", "task"),
    ("multiInstance",
     patched(KITCHEN_SINK, (("multiInstanceSettings", "commonResourceFiles", 0, "httpurl"), "u"))
     , "multiInstanceSettings.commonResourceFiles[0].httpurl", "did you mean 'httpUrl'?", "task"),
    ("dependsOn", patched(KITCHEN_SINK, (("dependsOn", "taskIDs"), ["x"])), "dependsOn.taskIDs",
     "did you mean 'taskIds'?", "task"),
    # Python (snake_case) names are not REST names: Batch would refuse them, so the agent does too
    ("snake-top", patched(KITCHEN_SINK, (("command_line",), "x"), (("commandLine",), _DELETE)), "command_line",
     "did you mean 'commandLine'?", "task"),
    ("snake-nested", patched(KITCHEN_SINK, (("constraints", "max_task_retry_count"), 1)),
     "constraints.max_task_retry_count", "did you mean 'maxTaskRetryCount'?", "task"),
    ("no-close-match", patched(KITCHEN_SINK, (("affinityInfo", "zzz"), 1)), "affinityInfo.zzz",
     "allowed: affinityId", "task"),
    ("collection", {"value": [task(), task(id="t2", resourcefiles=[])]}, "value[1].resourcefiles",
     "did you mean 'resourceFiles'?", "collection"),
    ("job-prep-constraints",
     job(jobPreparationTask={"commandLine": "x", "constraints": {"maxwallclocktime": "PT1M"}}),
     "jobPreparationTask.constraints.maxwallclocktime", "did you mean 'maxWallClockTime'?", "job"),
    ("job-release", job(jobPreparationTask={"commandLine": "x"},
                        jobReleaseTask={"commandLine": "x", "retentiontime": "P1D"}),
     "jobReleaseTask.retentiontime", "did you mean 'retentionTime'?", "job"),
    ("job-release-constraints", job(jobPreparationTask={"commandLine": "x"},
                                    jobReleaseTask={"commandLine": "x", "constraints": {}}),
     "jobReleaseTask.constraints", "maxTaskRetryCount is not allowed there", "job"),
    # fields a task has but this object does not: a hint naming where they go, and what is allowed
    ("job-release-retries", job(jobPreparationTask={"commandLine": "x"},
                                jobReleaseTask={"commandLine": "x", "maxTaskRetryCount": 1}),
     "jobReleaseTask.maxTaskRetryCount", "not allowed on a jobReleaseTask (Batch does not retry", "job"),
    ("job-release-outputs", job(jobPreparationTask={"commandLine": "x"},
                                jobReleaseTask={"commandLine": "x", "outputFiles": []}),
     "jobReleaseTask.outputFiles", "a jobReleaseTask has no outputFiles", "job"),
    ("job-release-exit", job(jobPreparationTask={"commandLine": "x"},
                             jobReleaseTask={"commandLine": "x", "exitConditions": {}}),
     "jobReleaseTask.exitConditions", "a jobReleaseTask has no exitConditions", "job"),
    ("job-release-wait", job(jobPreparationTask={"commandLine": "x"},
                             jobReleaseTask={"commandLine": "x", "waitForSuccess": True}),
     "jobReleaseTask.waitForSuccess", "only on a jobPreparationTask", "job"),
    ("job-prep-top-level-wall-clock", job(jobPreparationTask={"commandLine": "x", "maxWallClockTime": "PT1M"}),
     "jobPreparationTask.maxWallClockTime", "write constraints.maxWallClockTime", "job"),
    ("task-top-level-retries", task(maxTaskRetryCount=2), "maxTaskRetryCount",
     "write constraints.maxTaskRetryCount", "task"),
    ("manager-top-level-retention", job(jobManagerTask={"id": "m", "commandLine": "x", "retentionTime": "P1D"}),
     "jobManagerTask.retentionTime", "write constraints.retentionTime", "job"),
    ("job-top", job(onTaskFailures="noaction"), "onTaskFailures", "did you mean 'onTaskFailure'?", "job"),
    ("job-constraints", job(constraints={"maxTaskRetryCounts": 1}), "constraints.maxTaskRetryCounts",
     "did you mean 'maxTaskRetryCount'?", "job"),
    ("job-manager", job(jobManagerTask={"id": "m", "commandLine": "x", "killJobOnCompleted": True}),
     "jobManagerTask.killJobOnCompleted", "did you mean 'killJobOnCompletion'?", "job"),
]


@pytest.mark.parametrize(("data", "path", "hint", "kind"), [u[1:] for u in UNKNOWN],
                         ids=[u[0] for u in UNKNOWN])
def test_unknown_field_did_you_mean(data: dict[str, Any], path: str, hint: str, kind: str) -> None:
    issues = issues_of(data)  # kind detected
    assert load_kind(data) == kind
    matching = [i for i in issues if i.path == path]
    assert matching, issues
    assert matching[0].message.startswith("unknown field; ") and hint in matching[0].message


def load_kind(data: Any) -> str:
    return detect_kind(data)


@pytest.mark.parametrize(("data", "path", "allowed"), [
    (job(jobPreparationTask={"commandLine": "x"}, jobReleaseTask={"commandLine": "x", "constraints": {}}),
     "jobReleaseTask.constraints", ["maxWallClockTime", "retentionTime", "commandLine", "userIdentity"]),
    (job(jobPreparationTask={"commandLine": "x", "retentionTime": "P1D"}), "jobPreparationTask.retentionTime",
     ["constraints", "waitForSuccess"]),
], ids=["release-constraints", "prep-retention"])
def test_field_hint_lists_what_is_allowed(data: dict[str, Any], path: str, allowed: list[str]) -> None:
    (issue,) = [i for i in issues_of(data) if i.path == path]
    listed = issue.message.split("; allowed: ", 1)[1].split(", ")
    assert set(allowed) <= set(listed), issue.message
    assert "maxTaskRetryCount" not in listed


# ---------------------------------------------------------------------------------------------
# field rules: each rejected with a message naming the JSON path

RULES: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, data, expected path, expected message fragment)
    ("id-65", task(id="a" * 65), "id", "1 to 64 characters"),
    ("id-empty", task(id=""), "id", "not a valid id"),
    ("id-space", task(id="a b"), "id", "not a valid id"),
    ("id-dot", task(id="a.b"), "id", "letters, digits, '-' and '_'"),
    ("id-unicode", task(id="tâche"), "id", "not a valid id"),
    ("id-trailing-newline", task(id="task1\n"), "id", "not a valid id"),
    ("id-not-string", task(id=5), "id", "string"),
    ("id-missing", {"commandLine": "x"}, "id", "required field is missing"),
    ("commandLine-missing", {"id": "t"}, "commandLine", "required field is missing"),
    ("displayName-1025", task(displayName="x" * 1025), "displayName", "1024"),
    ("two-sources", task(resourceFiles=[{"httpUrl": "http://h/u", "storageContainerUrl": "http://h/s",
                                         "filePath": "f"}]),
     "resourceFiles[0]",
     "exactly one of httpUrl, storageContainerUrl, autoStorageContainerName (got httpUrl, "
     "storageContainerUrl)"),
    ("three-sources", task(resourceFiles=[{"httpUrl": "http://h/u", "storageContainerUrl": "http://h/s",
                                           "autoStorageContainerName": "a", "filePath": "f"}]),
     "resourceFiles[0]", "exactly one of"),
    ("no-source", task(resourceFiles=[{"filePath": "f"}]), "resourceFiles[0]", "(got none)"),
    ("httpUrl-needs-filePath", task(resourceFiles=[{"httpUrl": "https://x/y"}]), "resourceFiles[0]",
     "filePath is required with httpUrl"),
    ("blobPrefix-with-httpUrl", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": "f", "blobPrefix": "p"}]),
     "resourceFiles[0]", "blobPrefix applies only to storageContainerUrl or autoStorageContainerName"),
    ("filePath-absolute", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": "/etc/passwd"}]),
     "resourceFiles[0].filePath", "is absolute"),
    ("filePath-dotdot", task(resourceFiles=[{"autoStorageContainerName": "a", "filePath": "x/../../y"}]),
     "resourceFiles[0].filePath", "contains '..'"),
    ("filePath-dotdot-only", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": ".."}]),
     "resourceFiles[0].filePath", "contains '..'"),
    ("fileMode-8", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": "f", "fileMode": "0789"}]),
     "resourceFiles[0].fileMode", "not an octal mode"),
    ("fileMode-word", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": "f", "fileMode": "rwx"}]),
     "resourceFiles[0].fileMode", "not an octal mode"),
    ("fileMode-5digits", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": "f", "fileMode": "00644"}]),
     "resourceFiles[0].fileMode", "not an octal mode"),
    ("fileMode-int", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": "f", "fileMode": 644}]),
     "resourceFiles[0].fileMode", "string"),
    ("common-resource-file", task(multiInstanceSettings={"coordinationCommandLine": "c",
                                                         "commonResourceFiles": [{"httpUrl": "http://h/u"}]}),
     "multiInstanceSettings.commonResourceFiles[0]", "filePath is required"),
    ("username-and-autoUser", task(userIdentity={"username": "bob", "autoUser": {"scope": "task"}}),
     "userIdentity", "username or autoUser, not both"),
    ("exitCodeRange-order", task(exitConditions={"exitCodeRanges": [
        {"start": 1, "end": 2, "exitOptions": {}}, {"start": 5, "end": 4, "exitOptions": {}}]}),
     "exitConditions.exitCodeRanges[1]", "start (5) must be <= end (4)"),
    ("exitCode-missing-options", task(exitConditions={"exitCodes": [{"code": 3}]}),
     "exitConditions.exitCodes[0].exitOptions", "required field is missing"),
    ("exitCode-not-int", task(exitConditions={"exitCodes": [{"code": "x", "exitOptions": {}}]}),
     "exitConditions.exitCodes[0].code", "integer"),
    ("taskIdRange-order", task(dependsOn={"taskIdRanges": [{"start": 10, "end": 1}]}),
     "dependsOn.taskIdRanges[0]", "start (10) must be <= end (1)"),
    ("taskIds-too-long", task(dependsOn={"taskIds": ["a" * 64] * 1001}), "dependsOn.taskIds",
     "TaskDependencyListTooLong"),
    ("retries-below-minus-one", task(constraints={"maxTaskRetryCount": -2}), "constraints.maxTaskRetryCount",
     "greater than or equal to -1"),
    ("duration-1h", task(constraints={"maxWallClockTime": "1h"}), "constraints.maxWallClockTime",
     "not an ISO 8601 duration"),
    ("duration-years", task(constraints={"retentionTime": "P1Y"}), "constraints.retentionTime",
     "not an ISO 8601 duration"),
    ("duration-number", task(constraints={"maxWallClockTime": 3600}), "constraints.maxWallClockTime",
     "ISO 8601 duration string"),
    ("requiredSlots-0", task(requiredSlots=0), "requiredSlots", "greater than or equal to 1"),
    ("instances-0", task(multiInstanceSettings={"numberOfInstances": 0, "coordinationCommandLine": "c"}),
     "multiInstanceSettings.numberOfInstances", "greater than or equal to 1"),
    ("coordination-missing", task(multiInstanceSettings={"numberOfInstances": 2}),
     "multiInstanceSettings.coordinationCommandLine", "required field is missing"),
    ("image-empty", task(containerSettings={"imageName": ""}), "containerSettings.imageName", "at least 1"),
    ("image-missing", task(containerSettings={"containerRunOptions": "--rm"}), "containerSettings.imageName",
     "required field is missing"),
    ("env-name-empty", task(environmentSettings=[{"name": ""}]), "environmentSettings[0].name", "at least 1"),
    ("env-not-list", task(environmentSettings={"A": "1"}), "environmentSettings", "list"),
    ("output-missing-options", task(outputFiles=[{"filePattern": "*", "destination": {
        "container": {"containerUrl": "http://h/u"}}}]), "outputFiles[0].uploadOptions", "required field is missing"),
    ("output-container-url", task(outputFiles=[{"filePattern": "*", "destination": {"container": {}},
                                                "uploadOptions": {"uploadCondition": "taskcompletion"}}]),
     "outputFiles[0].destination.container.containerUrl", "required field is missing"),
    ("app-id-missing", task(applicationPackageReferences=[{"version": "1"}]),
     "applicationPackageReferences[0].applicationId", "required field is missing"),
    ("affinity-missing", task(affinityInfo={}), "affinityInfo.affinityId", "required field is missing"),
    ("bool-field", task(containerSettings={"imageName": "x", "containerHostBatchBindMounts": [
        {"source": "Task", "isReadOnly": "maybe"}]}),
     "containerSettings.containerHostBatchBindMounts[0].isReadOnly", "boolean"),
    # job rules
    ("job-id-65", job(id="j" * 65), "id", "1 to 64 characters"),
    ("job-poolInfo-missing", {"id": "j", "jobPreparationTask": {"commandLine": "x"}}, "poolInfo",
     "required field is missing"),
    ("release-without-prep", job(jobReleaseTask={"commandLine": "x"}), "jobReleaseTask",
     "needs a jobPreparationTask"),
    ("prep-release-same-id", job(jobPreparationTask={"commandLine": "x", "id": "Same"},
                                 jobReleaseTask={"commandLine": "x", "id": "same"}),
     "jobReleaseTask", "need different ids"),
    ("prep-release-same-default-id", job(jobPreparationTask={"commandLine": "x", "id": "jobrelease"},
                                         jobReleaseTask={"commandLine": "x"}),
     "jobReleaseTask", "need different ids"),
    ("release-PT16M", job(jobPreparationTask={"commandLine": "x"},
                          jobReleaseTask={"commandLine": "x", "maxWallClockTime": "PT16M"}),
     "jobReleaseTask.maxWallClockTime", "at most 15 minutes"),
    ("release-PT15M1S", job(jobPreparationTask={"commandLine": "x"},
                            jobReleaseTask={"commandLine": "x", "maxWallClockTime": "PT15M0.001S"}),
     "jobReleaseTask.maxWallClockTime", "at most 15 minutes"),
    ("release-unlimited", job(jobPreparationTask={"commandLine": "x"},
                              jobReleaseTask={"commandLine": "x", "maxWallClockTime": UNLIMITED_TEXT}),
     "jobReleaseTask.maxWallClockTime", "at most 15 minutes"),
    ("release-id", job(jobPreparationTask={"commandLine": "x"},
                       jobReleaseTask={"commandLine": "x", "id": "r r"}),
     "jobReleaseTask.id", "not a valid id"),
    ("prep-retries", job(jobPreparationTask={"commandLine": "x", "constraints": {"maxTaskRetryCount": -5}}),
     "jobPreparationTask.constraints.maxTaskRetryCount", "greater than or equal to -1"),
    ("prep-waitForSuccess", job(jobPreparationTask={"commandLine": "x", "waitForSuccess": "maybe"}),
     "jobPreparationTask.waitForSuccess", "boolean"),
    ("prep-commandLine", job(jobPreparationTask={"id": "p"}), "jobPreparationTask.commandLine",
     "required field is missing"),
    ("onTaskFailure", job(onTaskFailure="retry"), "onTaskFailure", "noaction, performexitoptionsjobaction"),
    ("onAllTasksComplete", job(onAllTasksComplete="terminate"), "onAllTasksComplete",
     "noaction, terminatejob"),
    ("priority", job(priority=1001), "priority", "less than or equal to 1000"),
    ("job-retries", job(constraints={"maxTaskRetryCount": -2}), "constraints.maxTaskRetryCount",
     "greater than or equal to -1"),
    ("manager-id", job(jobManagerTask={"commandLine": "x"}), "jobManagerTask.id",
     "required field is missing"),
    ("common-env", job(commonEnvironmentSettings=[{"value": "x"}]), "commonEnvironmentSettings[0].name",
     "required field is missing"),
    # collection rules
    ("collection-dup", {"value": [task(id="a"), task(id="b"), task(id="A")]}, "value",
     "value[2].id 'A' repeats value[0].id"),
    ("collection-101", {"value": [task(id=f"t{i}") for i in range(101)]}, "value", "at most 100"),
    ("collection-empty", {"value": []}, "value", "at least 1"),
    ("collection-item", {"value": [task(), {"id": "x"}]}, "value[1].commandLine",
     "required field is missing"),
    ("collection-item-not-object", {"value": [task(), "x"]}, "value[1]", "must be a JSON object, not a string"),
]


@pytest.mark.parametrize(("data", "path", "fragment"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule_rejected_at_path(data: dict[str, Any], path: str, fragment: str) -> None:
    issues = issues_of(data)
    assert all(i.path for i in issues), f"every issue names a JSON path: {issues}"
    matching = [i for i in issues if i.path == path]
    assert matching, issues
    assert fragment in matching[0].message, matching[0].message
    # the rendered error carries the path too
    with pytest.raises(SpecError) as info:
        load_data(data, source="f.json")
    assert f"{path}: " in str(info.value) and str(info.value).startswith("f.json: ")


ACCEPTED_EDGES: list[tuple[str, dict[str, Any]]] = [
    ("id-64", task(id="a" * 64)),
    ("id-charset", task(id="Aa0-_z")),
    ("displayName-1024", task(displayName="é" * 1024)),
    ("fileMode-3-digits", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": "f", "fileMode": "755"}])),
    ("fileMode-4-digits", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": "f", "fileMode": "1777"}])),
    ("filePath-dots-in-name", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": "a/..b/c..d"}])),
    ("container-without-filePath", task(resourceFiles=[{"storageContainerUrl": "http://h/u"}])),
    ("container-prefix-only", task(resourceFiles=[{"autoStorageContainerName": "a", "blobPrefix": "x/"}])),
    ("retries-minus-one", task(constraints={"maxTaskRetryCount": -1})),
    ("exitCodeRange-single",
     task(exitConditions={"exitCodeRanges": [{"start": 3, "end": 3, "exitOptions": {}}]})),
    ("taskIdRange-single", task(dependsOn={"taskIdRanges": [{"start": 3, "end": 3}]})),
    ("username-only", task(userIdentity={"username": "bob"})),
    ("autoUser-empty", task(userIdentity={"autoUser": {}})),
    ("negative-exit-code", task(exitConditions={"exitCodes": [{"code": -9, "exitOptions": {}}]})),
    ("huge-exit-code", task(exitConditions={"exitCodes": [{"code": 2**31 - 1, "exitOptions": {}}]})),
    ("env-value-null", task(environmentSettings=[{"name": "A", "value": None}])),
    ("release-PT15M", job(jobPreparationTask={"commandLine": "x"},
                          jobReleaseTask={"commandLine": "x", "maxWallClockTime": "PT15M"})),
    ("release-PT15M00S", job(jobPreparationTask={"commandLine": "x"},
                             jobReleaseTask={"commandLine": "x", "maxWallClockTime": "PT15M00S"})),
    ("collection-100", {"value": [task(id=f"t{i}") for i in range(100)]}),
]


@pytest.mark.parametrize("data", [a[1] for a in ACCEPTED_EDGES], ids=[a[0] for a in ACCEPTED_EDGES])
def test_edge_accepted(data: dict[str, Any]) -> None:
    load_data(data)


def test_spec_error_carries_every_issue_at_once() -> None:
    bad = patched(KITCHEN_SINK,
                  (("id",), "bad id"),
                  (("resourceFiles", 1, "filepath"), "x"),
                  (("constraints", "maxTaskRetryCount"), -2),
                  (("outputFiles", 0, "uploadOptions", "uploadCondition"), "always"),
                  (("exitConditions", "exitCodeRanges", 0, "start"), 9),
                  (("userIdentity", "username"), "bob"))
    with pytest.raises(SpecError) as info:
        load_data(bad, source="bad.json")
    paths = {i.path for i in info.value.issues}
    assert paths == {"id", "resourceFiles[1].filepath", "constraints.maxTaskRetryCount",
                     "outputFiles[0].uploadOptions.uploadCondition", "exitConditions.exitCodeRanges[0]",
                     "userIdentity"}
    text = str(info.value)
    assert text.startswith("bad.json: 6 problems:")
    assert all(f"  - {p}: " in text for p in paths)
    assert "Traceback" not in text and "pydantic" not in text and "errors.pydantic.dev" not in text


def test_registry_password_not_in_repr_or_errors() -> None:
    t = parse_task(KITCHEN_SINK)
    assert t.container_settings is not None
    assert "p@ss" not in repr(t.container_settings.registry) and "p@ss" not in repr(t)
    bad = patched(KITCHEN_SINK, (("containerSettings", "registry", "password"), 12345))
    (issue,) = issues_of(bad)
    assert issue.path == "containerSettings.registry.password" and "12345" not in issue.message


@pytest.mark.parametrize(("data", "kind"), [
    ([task()], "task"), ("task", "task"), (None, "task"), (42, "task"), ([], "job"), (["x"], "collection"),
], ids=["list", "str", "null", "int", "empty-list-as-job", "list-as-collection"])
def test_top_level_not_an_object(data: Any, kind: str) -> None:
    (issue,) = issues_of(data, kind)
    assert issue.path == "" and f"a {kind} must be a JSON object" in issue.message


# ---------------------------------------------------------------------------------------------
# kinds and files

@pytest.mark.parametrize(("data", "kind"), [
    (task(), "task"),
    ({"id": "t"}, "task"),
    ({}, "task"),
    ({"value": [task()]}, "collection"),
    ({"value": "x"}, "task"),
    (job(), "job"),
    ({"id": "j", "jobPreparationTask": {"commandLine": "x"}}, "job"),
    ({"id": "j", "taskFactory": {}}, "job"),
    ({"id": "j", "onTaskFailure": "noaction", "commandLine": "x"}, "task"),
    ([1], "task"),
], ids=["task", "task-no-command", "empty", "collection", "value-not-list", "job", "job-prep",
        "job-taskFactory",
        "task-with-job-key", "list"])
def test_detect_kind(data: Any, kind: str) -> None:
    assert detect_kind(data) == kind


def test_load_document_task_job_collection(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps(KITCHEN_SINK), encoding="utf-8")
    (tmp_path / "j.json").write_text(json.dumps(SDK_15_JOB), encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps({"value": [task(id="a"), task(id="b")]}), encoding="utf-8")
    doc = load_document(tmp_path / "t.json")
    assert doc.kind == "task" and [t.id for t in doc.tasks] == ["kitchen-sink_01"]
    assert doc.source == str(tmp_path / "t.json")
    assert load_task(tmp_path / "t.json") == doc.model
    jdoc = load_document(tmp_path / "j.json")
    assert jdoc.kind == "job" and jdoc.tasks == []
    assert load_job(tmp_path / "j.json") == jdoc.model
    cdoc = load_document(tmp_path / "c.json")
    assert cdoc.kind == "collection" and [t.id for t in cdoc.tasks] == ["a", "b"]
    assert isinstance(cdoc.model, TaskCollection)
    with pytest.raises(SpecError, match="expected a task"):
        load_task(tmp_path / "c.json")


@pytest.mark.parametrize(("content", "fragment"), [
    (b"{", "not valid JSON at line 1 column 2"),
    (b'{"id": "t",\n "commandLine": }', "not valid JSON at line 2"),
    (b"", "not valid JSON"),
    (b"\xff\xfe{}", "cannot read the file"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
    (b'{"id": "t", "commandLine": "x", "requiredSlots": 1' + b"0" * 5000 + b"}",
     "requiredSlots: an integer of 5001 digits is too long"),
], ids=["truncated", "bad-value", "empty", "not-utf8", "deep", "int-over-4300-digits"])
def test_load_document_bad_file(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SpecError) as info:
        load_document(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_load_document_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_document(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------
# jobs

def test_sdk_15_job_parses() -> None:
    j = parse_job(SDK_15_JOB)
    assert j.uses_task_dependencies is True
    assert j.on_all_tasks_complete == "terminatejob" and j.on_task_failure == "performexitoptionsjobaction"
    prep, release = j.job_preparation_task, j.job_release_task
    assert prep is not None and release is not None
    assert prep.id == "jobpreparation" and prep.wait_for_success and prep.rerun_on_node_reboot_after_success
    assert prep.constraints is not None and prep.constraints.max_wall_clock_time == 10 * MINUTE
    assert prep.constraints.max_task_retry_count == 1
    assert release.id == "jobrelease" and release.max_wall_clock_time == 15 * MINUTE
    assert release.retention_time == DAY
    assert release.container_settings is not None and release.container_settings.image_name == "ubuntu"
    assert [(e.name, e.value) for e in j.common_environment_settings or ()] == [("JOBVAR", "x")]
    assert j.pool_info == {"poolId": "pool1"}


def test_sdk_14_release_and_prep_bodies() -> None:
    j = parse_job(job(jobPreparationTask=SDK_14_PREP, jobReleaseTask=SDK_14_RELEASE))
    prep, release = j.job_preparation_task, j.job_release_task
    assert prep is not None and release is not None
    assert prep.constraints is not None
    assert prep.constraints.max_wall_clock_time == timedelta(0)
    assert prep.constraints.max_task_retry_count == -1
    assert prep.wait_for_success is True and prep.rerun_on_node_reboot_after_success is False
    assert (release.max_wall_clock_time, release.retention_time) == (15 * MINUTE, DAY)
    assert j.job_release_task == parse_job(SDK_15_JOB).job_release_task


def test_job_defaults() -> None:
    j = parse_job(job(jobPreparationTask={"commandLine": "p"}, jobReleaseTask={"commandLine": "r"}))
    prep, release = j.job_preparation_task, j.job_release_task
    assert prep is not None and release is not None
    assert (prep.id, prep.wait_for_success, prep.rerun_on_node_reboot_after_success, prep.constraints) == (
        "jobpreparation", True, True, None)
    assert release.id == "jobrelease"
    assert (release.max_wall_clock_time, release.retention_time) == (15 * MINUTE, 7 * DAY)
    assert j.task_failure_mode == "noaction" and j.uses_task_dependencies is False


@pytest.mark.parametrize(("field", "spelling", "canonical"), [
    ("onTaskFailure", "performExitOptionsJobAction", "performexitoptionsjobaction"),
    ("onTaskFailure", "PerformExitOptionsJobAction", "performexitoptionsjobaction"),
    ("onTaskFailure", "performexitoptionsjobaction", "performexitoptionsjobaction"),
    ("onTaskFailure", "noAction", "noaction"),
    ("onTaskFailure", "NoAction", "noaction"),
    ("onAllTasksComplete", "terminateJob", "terminatejob"),
    ("onAllTasksComplete", "TerminateJob", "terminatejob"),
    ("onAllTasksComplete", "noaction", "noaction"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_job_enum_casings(field: str, spelling: str, canonical: str) -> None:
    j = parse_job(job(**{field: spelling}))
    assert getattr(j, _snake(field)) == canonical
    if field == "onTaskFailure":
        assert j.task_failure_mode == canonical


def test_job_service_only_fields_accepted_verbatim() -> None:
    pool = {"autoPoolSpecification": {"poolLifetimeOption": "job",
                                      "pool": {"vmSize": "x", "anything": [1, {"n": None}]}}}
    j = parse_job(job(poolInfo=pool, priority=-1000, metadata=[{"name": "a", "value": "b"}],
                      maxParallelTasks=-1,
                      allowTaskPreemption=True, displayName="d", networkConfiguration={"subnetId": "s"},
                      taskFactory={"type": "taskCollection"}, applicationTemplateInfo={"filePath": "x"}))
    assert j.pool_info == pool and j.priority == -1000 and j.max_parallel_tasks == -1
    assert j.metadata == [{"name": "a", "value": "b"}]
    from agent.spec import CLI_EXTENSION_FIELDS, SERVICE_ONLY_FIELDS
    assert j.present_fields(SERVICE_ONLY_FIELDS) == ["poolInfo", "priority", "maxParallelTasks",
                                                     "allowTaskPreemption", "metadata",
                                                     "networkConfiguration",
                                                     "displayName"]
    assert j.present_fields(CLI_EXTENSION_FIELDS) == ["taskFactory", "applicationTemplateInfo"]
    assert parse_job(MINIMAL_JOB).present_fields(SERVICE_ONLY_FIELDS) == ["poolInfo"]


def test_job_manager_task_parses() -> None:
    j = parse_job(job(jobManagerTask={"id": "mgr", "commandLine": "m", "killJobOnCompletion": False,
                                      "runExclusive": True, "requiredSlots": 2, "allowLowPriorityNode": False,
                                      "constraints": {"maxWallClockTime": "PT1H", "retentionTime": "PT1H",
                                                      "maxTaskRetryCount": 0},
                                      "userIdentity": {"autoUser": {"scope": "task",
                                                                    "elevationLevel": "Admin"}}}))
    mgr = j.job_manager_task
    assert mgr is not None and mgr.id == "mgr" and mgr.kill_job_on_completion is False
    assert mgr.constraints is not None and mgr.constraints.retention_time == HOUR


# ---------------------------------------------------------------------------------------------
# check_task_in_job: the add-task rules that depend on the job

PREP_RELEASE_JOB = job(jobPreparationTask={"commandLine": "p"},
                       jobReleaseTask={"commandLine": "r", "id": "Cleanup"})
JOB_ACTION_ISSUE = "onTaskFailure is noaction"

IN_JOB: list[tuple[str, dict[str, Any], dict[str, Any] | None, list[tuple[str, str]]]] = [
    # (id, task, job (None = no job), expected [(path, fragment)])
    ("no-job", task(dependsOn={"taskIds": ["a"]}, exitConditions={"default": {"jobAction": "terminate"}}),
     None, []),
    ("plain", task(), PREP_RELEASE_JOB, []),
    ("same-as-prep", task(id="JobPreparation"), PREP_RELEASE_JOB, [("id", "TaskIdSameAsJobPreparationTask")]),
    ("same-as-release", task(id="cleanup"), PREP_RELEASE_JOB, [("id", "TaskIdSameAsJobReleaseTask")]),
    ("default-release-id-free", task(id="jobrelease"), PREP_RELEASE_JOB, []),
    ("dependsOn-without-flag", task(dependsOn={"taskIds": ["a"]}), job(),
     [("dependsOn", "usesTaskDependencies")]),
    ("dependsOn-with-flag", task(dependsOn={"taskIds": ["a"]}), job(usesTaskDependencies=True), []),
    ("jobAction-noaction", task(exitConditions={
        "default": {"jobAction": "terminate"}, "preProcessingError": {"dependencyAction": "block"},
        "fileUploadError": {"jobAction": "none"},
        "exitCodes": [{"code": 1, "exitOptions": {"dependencyAction": "block"}},
                      {"code": 2, "exitOptions": {"jobAction": "disable"}}],
        "exitCodeRanges": [{"start": 3, "end": 4, "exitOptions": {"jobAction": "terminate"}}]}), job(),
     [("exitConditions.fileUploadError.jobAction", JOB_ACTION_ISSUE),
      ("exitConditions.default.jobAction", JOB_ACTION_ISSUE),
      ("exitConditions.exitCodes[1].exitOptions.jobAction", JOB_ACTION_ISSUE),
      ("exitConditions.exitCodeRanges[0].exitOptions.jobAction", JOB_ACTION_ISSUE)]),
    ("jobAction-explicit-noaction", task(exitConditions={"default": {"jobAction": "none"}}),
     job(onTaskFailure="noAction"), [("exitConditions.default.jobAction", JOB_ACTION_ISSUE)]),
    ("dependencyAction-only-noaction", task(exitConditions={"default": {"dependencyAction": "satisfy"}}),
     job(), []),
    ("jobAction-perform", task(exitConditions={"default": {"jobAction": "terminate"}}),
     job(onTaskFailure="performExitOptionsJobAction"), []),
    ("all-at-once", task(id="jobpreparation", dependsOn={"taskIds": ["a"]},
                         exitConditions={"default": {"jobAction": "disable"}}), PREP_RELEASE_JOB,
     [("id", "TaskIdSameAsJobPreparationTask"), ("dependsOn", "usesTaskDependencies"),
      ("exitConditions.default.jobAction", JOB_ACTION_ISSUE)]),
]


@pytest.mark.parametrize(("task_data", "job_data", "expected"), [c[1:] for c in IN_JOB],
                         ids=[c[0] for c in IN_JOB])
def test_check_task_in_job(task_data: dict[str, Any], job_data: dict[str, Any] | None,
                           expected: list[tuple[str, str]]) -> None:
    issues = check_task_in_job(parse_task(task_data), parse_job(job_data) if job_data else None)
    assert sorted(i.path for i in issues) == sorted(p for p, _ in expected)
    for path, fragment in expected:
        assert any(i.path == path and fragment in i.message for i in issues), (path, issues)
    assert all(i.path for i in issues)


# ---------------------------------------------------------------------------------------------
# limits_for (§5, §9): task constraints, else the job's, else the defaults

def _limits_task(constraints: dict[str, Any] | None) -> TaskSpec:
    return parse_task(task(constraints=constraints) if constraints is not None else task())


LIMITS: list[tuple[str, Callable[[], Any], dict[str, Any] | None, Limits]] = [
    ("defaults", lambda: _limits_task(None), None, Limits(None, 0, 7 * DAY)),
    ("task-only", lambda: _limits_task({"maxWallClockTime": "PT5M", "retentionTime": "P1D",
                                        "maxTaskRetryCount": 2}),
     None, Limits(5 * MINUTE, 2, DAY)),
    ("job-retries-when-task-has-none", lambda: _limits_task(None),
     job(constraints={"maxTaskRetryCount": 4, "maxWallClockTime": "PT1H"}), Limits(None, 4, 7 * DAY)),
    ("job-retries-unlimited", lambda: _limits_task(None), job(constraints={"maxTaskRetryCount": -1}),
     Limits(None, -1, 7 * DAY)),
    ("job-retries-when-task-constraints-omit-them", lambda: _limits_task({"maxWallClockTime": "PT1M"}),
     job(constraints={"maxTaskRetryCount": 3}), Limits(MINUTE, 3, 7 * DAY)),
    ("task-beats-job", lambda: _limits_task({"maxTaskRetryCount": 1}),
     job(constraints={"maxTaskRetryCount": 9}),
     Limits(None, 1, 7 * DAY)),
    ("task-zero-beats-job", lambda: _limits_task({"maxTaskRetryCount": 0}),
     job(constraints={"maxTaskRetryCount": 9}),
     Limits(None, 0, 7 * DAY)),
    ("job-without-constraints", lambda: _limits_task(None), job(), Limits(None, 0, 7 * DAY)),
    ("unlimited-wall-clock", lambda: _limits_task({"maxWallClockTime": UNLIMITED_TEXT}), None,
     Limits(None, 0, 7 * DAY)),
    ("prep-own-constraints", lambda: parse_job(job(jobPreparationTask=SDK_14_PREP)).job_preparation_task,
     job(constraints={"maxTaskRetryCount": 7}), Limits(timedelta(0), -1, 7 * DAY)),
    ("prep-ignores-job-retries",
     lambda: parse_job(job(jobPreparationTask={"commandLine": "p"})).job_preparation_task,
     job(constraints={"maxTaskRetryCount": 7}), Limits(None, 0, 7 * DAY)),
    ("prep-partial-constraints", lambda: parse_job(job(jobPreparationTask={
        "commandLine": "p", "constraints": {"maxWallClockTime": "PT10M"}})).job_preparation_task,
     job(constraints={"maxTaskRetryCount": 7}), Limits(10 * MINUTE, 0, 7 * DAY)),
    ("release-default-cap", lambda: JobReleaseTask.model_validate({"commandLine": "r"}),
     job(constraints={"maxTaskRetryCount": 7}),
     Limits(15 * MINUTE, 0, 7 * DAY)),
    ("release-own", lambda: parse_job(job(jobPreparationTask={"commandLine": "p"},
                                          jobReleaseTask=SDK_14_RELEASE)).job_release_task,
     None, Limits(15 * MINUTE, 0, DAY)),
    ("release-shorter", lambda: parse_job(job(jobPreparationTask={"commandLine": "p"}, jobReleaseTask={
        "commandLine": "r", "maxWallClockTime": "PT30S"})).job_release_task, None,
     Limits(timedelta(seconds=30), 0, 7 * DAY)),
]


@pytest.mark.parametrize(("make", "job_data", "expected"), [c[1:] for c in LIMITS],
                         ids=[c[0] for c in LIMITS])
def test_limits_for(make: Callable[[], Any], job_data: dict[str, Any] | None, expected: Limits) -> None:
    assert limits_for(make(), parse_job(job_data) if job_data else None) == expected


# ---------------------------------------------------------------------------------------------
# strict JSON types: no coercion of strings, floats or booleans; each error names the JSON type wanted

STRICT: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, data, expected path, expected message fragment)
    ("bool-string-true", job(jobPreparationTask={"commandLine": "x", "waitForSuccess": "true"}),
     "jobPreparationTask.waitForSuccess", "must be true or false (a JSON boolean), not a string; write true "
     "without quotes"),
    ("bool-yes", job(jobPreparationTask={"commandLine": "x", "rerunOnNodeRebootAfterSuccess": "yes"}),
     "jobPreparationTask.rerunOnNodeRebootAfterSuccess", "must be true or false (a JSON boolean), not a string"),
    ("bool-int", job(usesTaskDependencies=1), "usesTaskDependencies", "JSON boolean), not an integer"),
    ("bool-int-0", job(jobManagerTask={"id": "m", "commandLine": "x", "killJobOnCompletion": 0}),
     "jobManagerTask.killJobOnCompletion", "JSON boolean), not an integer"),
    ("bool-string-false", task(containerSettings={"imageName": "x", "containerHostBatchBindMounts": [
        {"source": "Task", "isReadOnly": "false"}]}),
     "containerSettings.containerHostBatchBindMounts[0].isReadOnly", "write false without quotes"),
    ("bool-allowTaskPreemption", job(allowTaskPreemption="True"), "allowTaskPreemption", "JSON boolean"),
    ("int-string", task(requiredSlots="2"), "requiredSlots", "must be a JSON integer, not a string; write 2 "
     "without quotes"),
    ("int-float-whole", task(requiredSlots=2.0), "requiredSlots",
     "must be a JSON integer, not a number with a fraction or exponent; write 2"),
    ("int-float-fraction", task(constraints={"maxTaskRetryCount": 1.5}), "constraints.maxTaskRetryCount",
     "must be a JSON integer"),
    ("int-bool", task(constraints={"maxTaskRetryCount": True}), "constraints.maxTaskRetryCount",
     "must be a JSON integer, not a boolean"),
    ("int-word", task(requiredSlots="two"), "requiredSlots", "must be a JSON integer, not a string"),
    ("exit-code-string", task(exitConditions={"exitCodes": [{"code": "1", "exitOptions": {}}]}),
     "exitConditions.exitCodes[0].code", "write 1 without quotes"),
    ("range-float", task(exitConditions={"exitCodeRanges": [{"start": 1.0, "end": 2, "exitOptions": {}}]}),
     "exitConditions.exitCodeRanges[0].start", "must be a JSON integer"),
    ("task-id-range-string", task(dependsOn={"taskIdRanges": [{"start": 1, "end": "9"}]}),
     "dependsOn.taskIdRanges[0].end", "must be a JSON integer"),
    ("instances-string", task(multiInstanceSettings={"numberOfInstances": "3", "coordinationCommandLine": "c"}),
     "multiInstanceSettings.numberOfInstances", "must be a JSON integer"),
    ("priority-string", job(priority="10"), "priority", "must be a JSON integer"),
    ("maxParallelTasks-float", job(maxParallelTasks=4.0), "maxParallelTasks", "must be a JSON integer"),
    ("job-retries-bool", job(constraints={"maxTaskRetryCount": False}), "constraints.maxTaskRetryCount",
     "not a boolean"),
    ("int32-exit-code", task(exitConditions={"exitCodes": [{"code": 2**31, "exitOptions": {}}]}),
     "exitConditions.exitCodes[0].code", "less than or equal to 2147483647"),
    ("int32-negative", task(exitConditions={"exitCodeRanges": [{"start": -(2**31) - 1, "end": 0,
                                                                "exitOptions": {}}]}),
     "exitConditions.exitCodeRanges[0].start", "greater than or equal to -2147483648"),
    ("int32-slots", task(requiredSlots=2**40), "requiredSlots", "less than or equal to 2147483647"),
    ("str-commandLine-int", task(commandLine=5), "commandLine", "must be a JSON string, not an integer"),
    ("str-id-bool", task(id=True), "id", "must be a JSON string, not a boolean"),
    ("str-displayName-float", task(displayName=1.5), "displayName", "must be a JSON string"),
    ("str-filePath", task(resourceFiles=[{"httpUrl": "http://h/u", "filePath": 1}]), "resourceFiles[0].filePath",
     "must be a JSON string"),
    ("str-env-value", task(environmentSettings=[{"name": "A", "value": 1}]), "environmentSettings[0].value",
     "must be a JSON string, not an integer"),
    ("str-env-name", task(environmentSettings=[{"name": 1}]), "environmentSettings[0].name",
     "must be a JSON string"),
    ("str-taskIds", task(dependsOn={"taskIds": ["a", 2]}), "dependsOn.taskIds[1]", "must be a JSON string"),
    ("str-username", task(userIdentity={"username": 1000}), "userIdentity.username", "must be a JSON string"),
    ("str-imageName-list", task(containerSettings={"imageName": ["x"]}), "containerSettings.imageName",
     "must be a JSON string, not an array"),
    ("str-registry-password", task(containerSettings={"imageName": "x", "registry": {"password": 12345}}),
     "containerSettings.registry.password", "must be a JSON string, not an integer"),
    ("object-constraints", task(constraints="PT1H"), "constraints", "must be a JSON object, not a string"),
    ("array-resourceFiles", task(resourceFiles={"httpUrl": "http://h/u"}), "resourceFiles",
     "must be a JSON array (a list), not an object"),
    ("null-required-commandLine", task(commandLine=None), "commandLine",
     "must be a JSON string, not null (this field is required)"),
    ("null-required-code", task(exitConditions={"exitCodes": [{"code": None, "exitOptions": {}}]}),
     "exitConditions.exitCodes[0].code", "not null (this field is required)"),
    ("null-list-item", task(resourceFiles=[None]), "resourceFiles[0]", "must be a JSON object, not null"),
    ("null-poolInfo", job(poolInfo=None), "poolInfo", "not null (this field is required)"),
]


@pytest.mark.parametrize(("data", "path", "fragment"), [r[1:] for r in STRICT], ids=[r[0] for r in STRICT])
def test_strict_types_rejected_at_path(data: dict[str, Any], path: str, fragment: str) -> None:
    issues = issues_of(data)
    matching = [i for i in issues if i.path == path]
    assert matching, issues
    assert fragment in matching[0].message, matching[0].message


def test_strict_type_errors_never_show_the_value() -> None:
    (issue,) = issues_of(task(containerSettings={"imageName": "x", "registry": {"password": 918273645}}))
    assert "918273645" not in issue.message


def test_real_json_types_still_parse() -> None:
    t = parse_task(task(requiredSlots=2, constraints={"maxTaskRetryCount": -1},
                        exitConditions={"exitCodes": [{"code": -(2**31), "exitOptions": {}}],
                                        "exitCodeRanges": [{"start": 0, "end": 2**31 - 1, "exitOptions": {}}]},
                        containerSettings={"imageName": "x", "containerHostBatchBindMounts": [
                            {"source": "Task", "isReadOnly": False}]}))
    assert t.required_slots == 2 and type(t.required_slots) is int
    j = parse_job(job(usesTaskDependencies=True, priority=-1000, maxParallelTasks=-1,
                      jobPreparationTask={"commandLine": "x", "waitForSuccess": False}))
    assert j.uses_task_dependencies is True and j.job_preparation_task is not None
    assert j.job_preparation_task.wait_for_success is False


# ---------------------------------------------------------------------------------------------
# explicit nulls (the SDKs send them for unset fields): null is "not set", so the service default

NULLS: list[tuple[str, dict[str, Any], Callable[[Any], Any], Any]] = [
    # (id, data, getter, expected)
    ("retention-null-is-7-days", task(constraints={"retentionTime": None}),
     lambda m: m.constraints.retention_time, 7 * DAY),
    ("wall-clock-null-is-unlimited", task(constraints={"maxWallClockTime": None}),
     lambda m: m.constraints.max_wall_clock_time, None),
    ("retries-null-is-unset", task(constraints={"maxTaskRetryCount": None}),
     lambda m: m.constraints.max_task_retry_count, None),
    ("all-constraints-null", task(constraints={"maxWallClockTime": None, "retentionTime": None,
                                               "maxTaskRetryCount": None}),
     lambda m: limits_for(m, None), Limits(None, 0, 7 * DAY)),
    ("constraints-null", task(constraints=None), lambda m: m.constraints, None),
    ("release-wall-clock-null-is-15-minutes",
     job(jobPreparationTask={"commandLine": "p"}, jobReleaseTask={"commandLine": "r", "maxWallClockTime": None}),
     lambda m: m.job_release_task.max_wall_clock_time, 15 * MINUTE),
    ("release-retention-null-is-7-days",
     job(jobPreparationTask={"commandLine": "p"}, jobReleaseTask={"commandLine": "r", "retentionTime": None}),
     lambda m: m.job_release_task.retention_time, 7 * DAY),
    ("release-limits-with-nulls",
     job(jobPreparationTask={"commandLine": "p"},
         jobReleaseTask={"commandLine": "r", "maxWallClockTime": None, "retentionTime": None, "id": None}),
     lambda m: (limits_for(m.job_release_task, m), m.job_release_task.id),
     (Limits(15 * MINUTE, 0, 7 * DAY), "jobrelease")),
    ("prep-retention-null", job(jobPreparationTask={"commandLine": "p", "constraints": {"retentionTime": None}}),
     lambda m: m.job_preparation_task.constraints.retention_time, 7 * DAY),
    ("prep-bools-null", job(jobPreparationTask={"commandLine": "p", "waitForSuccess": None,
                                                "rerunOnNodeRebootAfterSuccess": None, "id": None}),
     lambda m: (m.job_preparation_task.wait_for_success, m.job_preparation_task.rerun_on_node_reboot_after_success,
                m.job_preparation_task.id), (True, True, "jobpreparation")),
    ("job-wall-clock-null", job(constraints={"maxWallClockTime": None}),
     lambda m: m.constraints.max_wall_clock_time, None),
    ("job-bools-null", job(usesTaskDependencies=None, onTaskFailure=None),
     lambda m: (m.uses_task_dependencies, m.task_failure_mode), (False, "noaction")),
    ("manager-bools-null", job(jobManagerTask={"id": "m", "commandLine": "x", "killJobOnCompletion": None,
                                               "runExclusive": None, "allowLowPriorityNode": None}),
     lambda m: (m.job_manager_task.kill_job_on_completion, m.job_manager_task.run_exclusive,
                m.job_manager_task.allow_low_priority_node), (True, True, True)),
    ("env-value-null", task(environmentSettings=[{"name": "A", "value": None}]),
     lambda m: m.environment_settings[0].value, None),
    ("username-null-with-autoUser", task(userIdentity={"username": None, "autoUser": {"scope": "task"}}),
     lambda m: (m.user_identity.username, m.user_identity.auto_user.scope), (None, "task")),
    ("autoUser-null-with-username", task(userIdentity={"username": "bob", "autoUser": None}),
     lambda m: m.user_identity.username, "bob"),
]


@pytest.mark.parametrize(("data", "get", "expected"), [n[1:] for n in NULLS], ids=[n[0] for n in NULLS])
def test_null_means_the_service_default(data: dict[str, Any], get: Callable[[Any], Any], expected: Any) -> None:
    model = load_data(data).model
    assert get(model) == expected
    assert get(load_data(model.model_dump(by_alias=True, mode="json")).model) == expected


def _with_nulls(body: dict[str, Any], model: type[Any]) -> dict[str, Any]:
    """``body`` with an explicit null for every optional field it leaves out."""
    absent = {f.alias or n for n, f in model.model_fields.items() if not f.is_required()} - body.keys()
    return {**body, **dict.fromkeys(absent)}


def test_sdk_body_with_explicit_nulls_is_the_same_task() -> None:
    from agent.spec.task import TaskConstraints
    body = _with_nulls(SDK_15_BODY, TaskSpec)
    body["constraints"] = _with_nulls({"maxTaskRetryCount": 3}, TaskConstraints)
    assert parse_task(body) == parse_task({**SDK_15_BODY, "constraints": {"maxTaskRetryCount": 3}})


def test_release_with_explicit_nulls_is_the_default_release() -> None:
    body = job(jobPreparationTask={"commandLine": "p"},
               jobReleaseTask=_with_nulls({"commandLine": "r"}, JobReleaseTask))
    assert parse_job(body) == parse_job(job(jobPreparationTask={"commandLine": "p"},
                                            jobReleaseTask={"commandLine": "r"}))


def test_unlimited_text_is_still_unlimited() -> None:
    c = parse_task(task(constraints={"retentionTime": UNLIMITED_TEXT, "maxWallClockTime": UNLIMITED_TEXT}))
    assert c.constraints is not None
    assert (c.constraints.retention_time, c.constraints.max_wall_clock_time) == (None, None)


@pytest.mark.parametrize("data", [task(nonsense=None), task(constraints={"maxWallclockTime": None})],
                         ids=["top", "constraints"])
def test_null_for_an_unknown_key_is_still_unknown(data: dict[str, Any]) -> None:
    (issue,) = issues_of(data)
    assert issue.message.startswith("unknown field; ")


# ---------------------------------------------------------------------------------------------
# userIdentity: exactly one of username / autoUser (REST: "mutually exclusive; specify one, not both")

USER_IDENTITY: list[tuple[str, dict[str, Any], str]] = [
    ("both", {"username": "bob", "autoUser": {"scope": "task"}}, "give username or autoUser, not both"),
    ("empty-username-and-autoUser", {"username": "", "autoUser": {"scope": "pool"}},
     "not both; they are mutually exclusive (username is empty here: remove the username key"),
    ("blank-username-and-empty-autoUser", {"username": "  ", "autoUser": {}}, "username is empty here"),
    ("empty-username", {"username": ""}, "username is empty, which names no user account"),
    ("blank-username", {"username": " \t"}, "names no user account"),
    ("neither", {}, "give username or autoUser (exactly one), or leave out userIdentity"),
    ("both-null", {"username": None, "autoUser": None}, "exactly one"),
]


@pytest.mark.parametrize(("identity", "fragment"), [u[1:] for u in USER_IDENTITY],
                         ids=[u[0] for u in USER_IDENTITY])
def test_user_identity_rules(identity: dict[str, Any], fragment: str) -> None:
    for data, prefix in ((task(userIdentity=identity), ""),
                         (job(jobPreparationTask={"commandLine": "p", "userIdentity": identity}),
                          "jobPreparationTask.")):
        (issue,) = issues_of(data)
        assert issue.path == prefix + "userIdentity"
        assert fragment in issue.message, issue.message


# ---------------------------------------------------------------------------------------------
# split_command (§3): POSIX words, no expansion of any kind

SPLIT: list[tuple[str, str, tuple[str, ...]]] = [
    ("simple", "echo hello world", ("echo", "hello", "world")),
    ("extra-spaces", "  echo   a\tb  ", ("echo", "a", "b")),
    ("single-quotes", "/bin/sh -c 'echo hi > out.txt'", ("/bin/sh", "-c", "echo hi > out.txt")),
    ("double-quotes", 'printf "%s\\n" "a b"', ("printf", "%s\\n", "a b")),
    ("backslash-space", r"ls my\ file", ("ls", "my file")),
    ("backslash-in-single", r"echo 'a\b'", ("echo", r"a\b")),
    ("escaped-quote-in-double", r'echo "say \"hi\""', ("echo", 'say "hi"')),
    ("no-var-expansion", "echo $HOME ${AZ_BATCH_TASK_DIR} $(id)",
     ("echo", "$HOME", "${AZ_BATCH_TASK_DIR}", "$(id)")),
    ("no-glob", "ls *.txt ?a [ab]", ("ls", "*.txt", "?a", "[ab]")),
    ("no-tilde", "cat ~/x ~", ("cat", "~/x", "~")),
    ("no-redirect-or-pipe", "echo a > b | c; d && e", ("echo", "a", ">", "b", "|", "c;", "d", "&&", "e")),
    ("hash-is-literal", "echo a #b", ("echo", "a", "#b")),
    ("adjacent-quotes", "echo a'b'\"c\"", ("echo", "abc")),
    ("empty-arg", "prog '' \"\"", ("prog", "", "")),
    ("windows-cmd", "cmd /c echo Hello world", ("cmd", "/c", "echo", "Hello", "world")),
    ("unicode", "echo héllo ✓", ("echo", "héllo", "✓")),
    ("empty", "", ()),
]


@pytest.mark.parametrize(("line", "argv"), [s[1:] for s in SPLIT], ids=[s[0] for s in SPLIT])
def test_split_command(line: str, argv: tuple[str, ...]) -> None:
    assert split_command(line) == argv


@pytest.mark.parametrize("line", ["echo 'unbalanced", 'echo "unbalanced', "echo trailing\\"],
                         ids=["single", "double", "trailing-backslash"])
def test_split_command_unbalanced(line: str) -> None:
    with pytest.raises(ValueError):
        split_command(line)


# ---------------------------------------------------------------------------------------------
# strings that become argv, environment, paths, blob names and URLs: what validate accepts can run

ARG_MAX_ARGS = "a " * 700_000  # 1.4 MB of text, 7 MB of argv (strings, NULs and pointers)
BAD_URLS: list[tuple[str, str, str]] = [
    ("ipv6-unclosed", "http://[::1/x", "Invalid IPv6 URL"),
    ("userinfo-bad-ipv6", "http://u:p@[zz]/x", "does not appear to be an IPv4 or IPv6 address"),
    ("userinfo-ipv6-unclosed", "https://user@[::1/x?sig=s", "Invalid IPv6 URL"),
    ("control-char", "http://a/\x01", "control character at position 9"),
    ("del-char", "http://a/\x7f", "control character"),
    ("nul", "http://a/\x00", "control character"),
    ("space", "http://a/b c", "percent-encode it (a space is %20)"),
    ("space-in-host", "http://a b/c", "space"),
    ("label-64", "http://" + "a" * 64 + ".com/x", "empty or over-long label"),
    ("empty-label", "http://a..b/x", "empty or over-long label"),
    ("host-254", "https://" + "a." * 127 + "com/x", "DNS allows at most 253"),
    ("non-idna-host", "http://\u2603.com/x", "Invalid IDNA hostname"),
    ("bad-a-label", "http://xn--zz/x", "IDNAError"),
    ("percent-host", "http://%41/x", "percent-encoded host"),
    ("ftp", "ftp://a/x", "http:// or https://"),
    ("file", "file:///etc/passwd", "http:// or https://"),
    ("no-scheme", "acct.blob.core.windows.net/c", "http:// or https://"),
    ("no-host", "http:///x", "has no host"),
    ("port-range", "http://a:99999/x", "Port out of range"),
    ("port-zero", "http://a:0/x", "port 0"),
    ("surrogate", "http://a/\ud800", "surrogate"),
]
GOOD_URLS = ["https://acct.blob.core.windows.net/c/x?sv=2025-01-05&sig=a%2Bb%3D", "http://127.0.0.1:10000/dev/c",
             "http://[::1]:10000/dev/c", "https://ex\u00e4mple.com/x", "HTTPS://A.B/x", "https://host./x",
             "https://acct.blob.core.windows.net/c/d\u00e9j\u00e0 vu".replace(" ", "%20")]

# (id, fields of a task body, JSON path below the task, message fragment)
TASK_STRINGS: list[tuple[str, dict[str, Any], str, str]] = [
    ("commandLine-nul", {"commandLine": "/bin/echo a\x00b"}, "commandLine", "NUL character (\\u0000) at position 11"),
    ("commandLine-surrogate", {"commandLine": "echo \ud800"}, "commandLine", "lone UTF-16 surrogate"),
    ("commandLine-unclosed", {"commandLine": "sh -c 'echo hi"}, "commandLine", "(No closing quotation)"),
    ("commandLine-unclosed-double", {"commandLine": 'echo "hi'}, "commandLine", "No closing quotation"),
    ("commandLine-backslash", {"commandLine": "echo hi\\"}, "commandLine", "(No escaped character)"),
    ("commandLine-long-arg", {"commandLine": "echo " + "a" * 131072}, "commandLine", "MAX_ARG_STRLEN"),
    ("commandLine-argv-total", {"commandLine": ARG_MAX_ARGS}, "commandLine", "(ARG_MAX)"),
    ("commandLine-over-cap", {"commandLine": "a" + " " * (6 << 20)}, "commandLine", "characters long"),
    ("env-name-equals", {"environmentSettings": [{"name": "A=B", "value": "x"}]}, "environmentSettings[0].name",
     "contains '='"),
    ("env-name-nul", {"environmentSettings": [{"name": "A\x00", "value": "x"}]}, "environmentSettings[0].name",
     "NUL"),
    ("env-name-empty", {"environmentSettings": [{"name": "", "value": "x"}]}, "environmentSettings[0].name",
     "at least 1"),
    ("env-value-nul", {"environmentSettings": [{"name": "A", "value": "x"}, {"name": "B", "value": "x\x00"}]},
     "environmentSettings[1].value", "NUL"),
    ("env-value-surrogate", {"environmentSettings": [{"name": "A", "value": "\udcff"}]},
     "environmentSettings[0].value", "surrogate"),
    ("filePath-nul", {"resourceFiles": [{"httpUrl": GOOD_URLS[0], "filePath": "a\x00b"}]},
     "resourceFiles[0].filePath", "NUL"),
    ("blobPrefix-nul", {"resourceFiles": [{"storageContainerUrl": GOOD_URLS[0], "blobPrefix": "a\x00"}]},
     "resourceFiles[0].blobPrefix", "NUL"),
    ("autoStorage-slash", {"resourceFiles": [{"autoStorageContainerName": "c/../d"}]},
     "resourceFiles[0].autoStorageContainerName", "not allowed in a container name"),
    ("autoStorage-query", {"resourceFiles": [{"autoStorageContainerName": "c?comp=list"}]},
     "resourceFiles[0].autoStorageContainerName", "'?'"),
    ("imageName-nul", {"containerSettings": {"imageName": "ubuntu\x00"}}, "containerSettings.imageName", "NUL"),
    ("imageName-space", {"containerSettings": {"imageName": "ubuntu latest"}}, "containerSettings.imageName",
     "space or control character at position 6"),
    ("runOptions-unclosed", {"containerSettings": {"imageName": "u", "containerRunOptions": "--label 'x"}},
     "containerSettings.containerRunOptions", "No closing quotation"),
    ("runOptions-nul", {"containerSettings": {"imageName": "u", "containerRunOptions": "--rm\x00"}},
     "containerSettings.containerRunOptions", "NUL"),
    ("registryServer-space", {"containerSettings": {"imageName": "u", "registry": {"registryServer": "my reg"}}},
     "containerSettings.registry.registryServer", "space"),
    ("registryServer-bad-url", {"containerSettings": {"imageName": "u", "registry": {
        "registryServer": "https://[::1/v2"}}}, "containerSettings.registry.registryServer", "Invalid IPv6 URL"),
    ("registry-password-nul", {"containerSettings": {"imageName": "u", "registry": {
        "registryServer": "r.io", "username": "u", "password": "p\x00"}}},
     "containerSettings.registry.password", "NUL"),
    ("username-nul", {"userIdentity": {"username": "bob\x00"}}, "userIdentity.username", "NUL"),
    *[(f"httpUrl-{name}", {"resourceFiles": [{"httpUrl": bad, "filePath": "f"}]}, "resourceFiles[0].httpUrl",
       fragment) for name, bad, fragment in BAD_URLS],
    *[(f"storageContainerUrl-{name}", {"resourceFiles": [{"storageContainerUrl": bad}]},
       "resourceFiles[0].storageContainerUrl", fragment) for name, bad, fragment in BAD_URLS[:3]],
]
# Only regular tasks and job manager tasks have outputFiles and multiInstanceSettings.
OUTPUT = {"filePattern": "*.txt", "destination": {"container": {"containerUrl": GOOD_URLS[0]}},
          "uploadOptions": {"uploadCondition": "taskcompletion"}}
TASK_ONLY_STRINGS: list[tuple[str, dict[str, Any], str, str]] = [
    ("filePattern-nul", {"outputFiles": [{**OUTPUT, "filePattern": "*.txt\x00"}]}, "outputFiles[0].filePattern",
     "NUL"),
    ("destination-path-nul", {"outputFiles": [patched(OUTPUT, (("destination", "container", "path"), "a\x00"))]},
     "outputFiles[0].destination.container.path", "NUL"),
    ("header-name", {"outputFiles": [patched(OUTPUT, (("destination", "container", "uploadHeaders"),
                                                      [{"name": "x bad", "value": "1"}]))]},
     "outputFiles[0].destination.container.uploadHeaders[0].name", "not an HTTP header name"),
    ("header-value-crlf", {"outputFiles": [patched(OUTPUT, (("destination", "container", "uploadHeaders"),
                                                            [{"name": "x-ms-meta-a", "value": "1\r\nX: y"}]))]},
     "outputFiles[0].destination.container.uploadHeaders[0].value", "line break"),
    *[(f"containerUrl-{name}", {"outputFiles": [patched(OUTPUT, (("destination", "container", "containerUrl"),
                                                                 bad))]},
       "outputFiles[0].destination.container.containerUrl", fragment) for name, bad, fragment in BAD_URLS],
]
COORDINATION = [("coordination-nul", {"multiInstanceSettings": {"coordinationCommandLine": "a\x00"}},
                 "multiInstanceSettings.coordinationCommandLine", "NUL")]


def _holders(with_outputs: bool) -> list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]]:
    """Where a task body sits: a task, and each task of a job (fields merged over a valid one)."""
    prep = {"commandLine": "p"}
    holders: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
        ("task", lambda f: task(**f), ""),
        ("manager", lambda f: job(jobManagerTask={"id": "m", "commandLine": "m", **f}), "jobManagerTask."),
    ]
    if not with_outputs:
        holders += [
            ("prep", lambda f: job(jobPreparationTask={**prep, **f}), "jobPreparationTask."),
            ("release", lambda f: job(jobPreparationTask=prep, jobReleaseTask={"commandLine": "r", **f}),
             "jobReleaseTask."),
        ]
    return holders


REFUSED = [(f"{h}-{c[0]}", h_make(c[1]), prefix + c[2], c[3])
           for cases, outputs in ((TASK_STRINGS, False), (TASK_ONLY_STRINGS, True))
           for h, h_make, prefix in _holders(outputs) for c in cases]
REFUSED += [(f"task-{c[0]}", task(**c[1]), c[2], c[3]) for c in COORDINATION]
REFUSED += [
    ("common-env-name-equals", job(commonEnvironmentSettings=[{"name": "PATH=/x", "value": "y"}]),
     "commonEnvironmentSettings[0].name", "contains '='"),
    ("common-env-value-nul", job(commonEnvironmentSettings=[{"name": "A", "value": "\x00"}]),
     "commonEnvironmentSettings[0].value", "NUL"),
]


@pytest.mark.parametrize(("data", "path", "fragment"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_string_that_cannot_run_is_refused_at_path(data: dict[str, Any], path: str, fragment: str) -> None:
    issues = issues_of(data)
    matching = [i for i in issues if i.path == path]
    assert matching, issues
    assert fragment in matching[0].message, matching[0].message


@pytest.mark.parametrize("url", GOOD_URLS)
def test_urls_the_transport_opens_are_accepted(url: str) -> None:
    load_data(task(resourceFiles=[{"httpUrl": url, "filePath": "f"}, {"storageContainerUrl": url}],
                   outputFiles=[patched(OUTPUT, (("destination", "container", "containerUrl"), url))]))


def test_url_errors_never_show_the_signature() -> None:
    for _, bad, _ in BAD_URLS:
        issues = issues_of(task(resourceFiles=[{"httpUrl": bad + "?sig=SECRET%3D", "filePath": "f"}]))
        assert not any("SECRET" in i.message for i in issues), issues


def test_command_line_errors_never_show_the_command() -> None:
    for line in ("--password=hunter2 'x", "--password=hunter2 \x00", "hunter2 " + "h" * 131072):
        issues = issues_of(task(commandLine=line))
        assert not any("hunter2" in i.message for i in issues), issues


@pytest.mark.parametrize("line", ["a" * 131071, "a " * 200_000, "sh -c 'echo \"$X\" \\\\'", "\ufeff"],
                         ids=["longest-arg", "many-args", "quotes", "bom"])
def test_command_lines_that_can_run_are_accepted(line: str) -> None:
    assert parse_task(task(commandLine=line)).command_line == line


def test_env_name_may_hold_any_other_character() -> None:
    parse_task(task(environmentSettings=[{"name": "A.B-c d", "value": "x=y=z"}]))


# ---------------------------------------------------------------------------------------------
# JSON that readers disagree on: refused with the path

JSON_REFUSED: list[tuple[str, str, str, str]] = [
    ("duplicate-elevation",
     '{"id": "t", "commandLine": "x", "userIdentity": {"autoUser": {"elevationLevel": "nonadmin", '
     '"elevationLevel": "admin"}}}', "userIdentity.autoUser.elevationLevel", "appears more than once"),
    ("duplicate-top", '{"id": "a", "commandLine": "x", "id": "b"}', "id", "appears more than once"),
    ("duplicate-in-list", '{"id": "t", "commandLine": "x", "environmentSettings": [{"name": "A"}, '
     '{"name": "B", "value": "1", "value": "2"}]}', "environmentSettings[1].value", "appears more than once"),
    ("duplicate-same-value", '{"id": "t", "commandLine": "x", "commandLine": "x"}', "commandLine", "more than once"),
    ("duplicate-in-service-field", '{"id": "j", "poolInfo": {"poolId": "a", "poolId": "b"}}', "poolInfo.poolId",
     "more than once"),
    ("long-int", '{"id": "t", "commandLine": "x", "constraints": {"maxTaskRetryCount": 1' + "0" * 4300 + "}}",
     "constraints.maxTaskRetryCount", "integer of 4301 digits is too long"),
    ("long-negative-int", '{"id": "t", "commandLine": "x", "exitConditions": {"exitCodes": [{"code": -' + "9" * 5000
     + ', "exitOptions": {}}]}}', "exitConditions.exitCodes[0].code", "5000 digits"),
    ("float-overflow", '{"id": "j", "poolInfo": {"x": 1e999}}', "poolInfo.x", "too large to be a finite number"),
    ("nan", '{"id": "t", "commandLine": "x", "requiredSlots": NaN}', "requiredSlots", "NaN is not JSON"),
    ("infinity", '{"id": "t", "commandLine": "x", "metadata": [-Infinity]}', "metadata[0]", "-Infinity is not JSON"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), [j[1:] for j in JSON_REFUSED],
                         ids=[j[0] for j in JSON_REFUSED])
def test_json_readers_disagree_refused_at_path(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    file = tmp_path / "t.json"
    file.write_text(text)
    with pytest.raises(SpecError) as info:
        load_document(file)
    matching = [i for i in info.value.issues if i.path == path]
    assert matching and fragment in matching[0].message, info.value.issues
    assert "set_int_max_str_digits" not in str(info.value) and str(file) in str(info.value)


def test_json_every_duplicate_is_reported_at_once(tmp_path: Path) -> None:
    file = tmp_path / "t.json"
    file.write_text('{"id": "t", "id": "u", "commandLine": "x", "constraints": {"maxTaskRetryCount": 1, '
                    '"maxTaskRetryCount": 2, "maxTaskRetryCount": 3}}')
    with pytest.raises(SpecError) as info:
        load_document(file)
    assert [i.path for i in info.value.issues] == ["id", "constraints.maxTaskRetryCount"]


def test_json_finite_numbers_and_int_limits_still_parse(tmp_path: Path) -> None:
    file = tmp_path / "t.json"
    file.write_text('{"id": "t", "commandLine": "x", "constraints": {"maxTaskRetryCount": 2147483647}, '
                    '"exitConditions": {"exitCodes": [{"code": -2147483648, "exitOptions": {}}]}}')
    assert load_task(file).constraints.max_task_retry_count == 2**31 - 1  # type: ignore[union-attr]
