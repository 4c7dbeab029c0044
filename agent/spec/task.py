"""The Create Task body (REST api-version 2025-06-01, ``BatchTaskCreateOptions``) and the
objects it is made of. Field rules are those of the REST reference page (seed 004) and the
semantics doc; each check names what is allowed.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from agent.spec.base import BatchModel, Duration, Int32, one_of
from agent.spec.checks import (
    CommandLine,
    ContainerName,
    EnvName,
    HeaderName,
    HeaderValue,
    OsString,
    PlainName,
    RegistryServer,
    Url,
)

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ID_RULE = "1 to 64 characters: letters, digits, '-' and '_'"
DEFAULT_RETENTION = timedelta(days=7)


def check_id(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):  # not match: '$' would accept a trailing newline
        raise PydanticCustomError("batch_id", "{got} is not a valid id; use " + ID_RULE,
                                  {"got": repr(value)})
    return value


def check_relative_path(value: str) -> str:
    """A path under the working directory: not absolute, no '..' segment."""
    path = PurePosixPath(value)
    if path.is_absolute():
        raise PydanticCustomError(
            "relative_path", "{got} is absolute; give a path relative to the task working directory",
            {"got": repr(value)})
    if ".." in path.parts:
        raise PydanticCustomError(
            "relative_path", "{got} contains '..'; the path must stay inside the task working directory",
            {"got": repr(value)})
    return value


class NodeIdentityReference(BatchModel):
    resource_id: str | None = None


class EnvironmentSetting(BatchModel):
    name: EnvName = Field(min_length=1)
    value: OsString | None = None


class ResourceFile(BatchModel):
    auto_storage_container_name: ContainerName | None = None
    storage_container_url: Url | None = None
    http_url: Url | None = None
    blob_prefix: OsString | None = None
    file_path: OsString | None = None
    file_mode: str | None = None
    identity_reference: NodeIdentityReference | None = None

    @field_validator("file_path")
    @classmethod
    def _file_path(cls, value: str | None) -> str | None:
        return None if value is None else check_relative_path(value)

    @field_validator("file_mode")
    @classmethod
    def _file_mode(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"0?[0-7]{3}|[0-7]{4}", value):
            raise PydanticCustomError("file_mode", "{got} is not an octal mode; write e.g. '0770' or '0644'",
                                      {"got": repr(value)})
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ResourceFile:
        sources = [n for n, v in (("httpUrl", self.http_url), ("storageContainerUrl", self.storage_container_url),
                                  ("autoStorageContainerName", self.auto_storage_container_name)) if v]
        if len(sources) != 1:
            raise PydanticCustomError(
                "resource_source", "give exactly one of httpUrl, storageContainerUrl, autoStorageContainerName "
                "(got {got})", {"got": ", ".join(sources) or "none"})
        if self.http_url and not self.file_path:
            raise PydanticCustomError("resource_path", "filePath is required with httpUrl (it names the file)")
        if self.http_url and self.blob_prefix is not None:
            raise PydanticCustomError("resource_prefix", "blobPrefix applies only to storageContainerUrl "
                                      "or autoStorageContainerName, not httpUrl")
        return self

    @property
    def mode(self) -> int:
        return int(self.file_mode, 8) if self.file_mode else 0o770


class ContainerRegistryReference(BatchModel):
    username: PlainName | None = None
    password: OsString | None = None
    registry_server: RegistryServer | None = None
    identity_reference: NodeIdentityReference | None = None

    def __repr_args__(self) -> Any:  # never show the password in reprs / tracebacks
        for key, value in super().__repr_args__():
            yield key, ("REDACTED" if key == "password" and value else value)


class ContainerHostBatchBindMountEntry(BatchModel):
    source: Annotated[str, one_of("Shared", "Startup", "VfsMounts", "Task", "JobPrep", "Applications")] | None = None
    is_read_only: bool | None = None


class TaskContainerSettings(BatchModel):
    container_run_options: CommandLine | None = None  # options of `docker create`: an argv too
    image_name: PlainName = Field(min_length=1)
    registry: ContainerRegistryReference | None = None
    working_directory: Annotated[str, one_of("taskWorkingDirectory", "containerImageDefault")] | None = None
    container_host_batch_bind_mounts: list[ContainerHostBatchBindMountEntry] | None = None


class ExitOptions(BatchModel):
    job_action: Annotated[str, one_of("none", "disable", "terminate")] | None = None
    dependency_action: Annotated[str, one_of("satisfy", "block")] | None = None


class ExitCodeMapping(BatchModel):
    code: Int32
    exit_options: ExitOptions


class _Range(BatchModel):
    """An inclusive ``start``..``end`` range (exit codes, task ids)."""

    start: Int32
    end: Int32

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.start > self.end:
            raise PydanticCustomError("range_order", "start ({start}) must be <= end ({end})",
                                      {"start": self.start, "end": self.end})
        return self


class ExitCodeRangeMapping(_Range):
    exit_options: ExitOptions


class ExitConditions(BatchModel):
    exit_codes: list[ExitCodeMapping] | None = None
    exit_code_ranges: list[ExitCodeRangeMapping] | None = None
    pre_processing_error: ExitOptions | None = None
    file_upload_error: ExitOptions | None = None
    default: ExitOptions | None = None


class OutputFileUploadHeader(BatchModel):
    name: HeaderName = Field(min_length=1)
    value: HeaderValue | None = None


class OutputFileBlobContainerDestination(BatchModel):
    path: OsString | None = None
    container_url: Url = Field(min_length=1)
    identity_reference: NodeIdentityReference | None = None
    upload_headers: list[OutputFileUploadHeader] | None = None


class OutputFileDestination(BatchModel):
    container: OutputFileBlobContainerDestination


class OutputFileUploadConfiguration(BatchModel):
    upload_condition: Annotated[str, one_of("tasksuccess", "taskfailure", "taskcompletion")]


class OutputFile(BatchModel):
    file_pattern: OsString = Field(min_length=1)
    destination: OutputFileDestination
    upload_options: OutputFileUploadConfiguration


class TaskConstraints(BatchModel):
    max_wall_clock_time: Duration = None
    retention_time: Duration = DEFAULT_RETENTION
    max_task_retry_count: Int32 | None = Field(default=None, ge=-1)


class AutoUserSpecification(BatchModel):
    scope: Annotated[str, one_of("task", "pool")] | None = None
    elevation_level: Annotated[str, one_of("nonadmin", "admin")] | None = None


class UserIdentity(BatchModel):
    """Exactly one of ``username`` / ``autoUser`` (REST: "mutually exclusive; you must specify
    one but not both"). A present username counts even when empty: ``""`` is not "no username",
    and it names no account either."""

    username: OsString | None = None
    auto_user: AutoUserSpecification | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> UserIdentity:
        if self.username is not None and self.auto_user is not None:
            empty = " (username is empty here: remove the username key to run as the autoUser)" \
                if not self.username.strip() else ""
            raise PydanticCustomError("user_identity", "give username or autoUser, not both; they are "
                                      "mutually exclusive" + empty)
        if self.username is not None and not self.username.strip():
            raise PydanticCustomError("user_identity", "username is empty, which names no user account; "
                                      "give the name of a pool user account, or use autoUser instead")
        if self.username is None and self.auto_user is None:
            raise PydanticCustomError("user_identity", "give username or autoUser (exactly one), or leave "
                                      "out userIdentity to run as the default auto-user")
        return self


class TaskIdRange(_Range):
    pass


class TaskDependencies(BatchModel):
    task_ids: list[str] | None = None
    task_id_ranges: list[TaskIdRange] | None = None

    @field_validator("task_ids")
    @classmethod
    def _length(cls, value: list[str] | None) -> list[str] | None:
        if value and sum(len(v) for v in value) > 64000:
            raise PydanticCustomError("too_long", "the task ids add up to more than 64000 characters "
                                      "(TaskDependencyListTooLong); use taskIdRanges")
        return value


class MultiInstanceSettings(BatchModel):
    number_of_instances: Int32 | None = Field(default=None, ge=1)
    coordination_command_line: CommandLine
    common_resource_files: list[ResourceFile] | None = None


class ApplicationPackageReference(BatchModel):
    application_id: str = Field(min_length=1)
    version: str | None = None


class AuthenticationTokenSettings(BatchModel):
    access: list[Annotated[str, one_of("job")]] | None = None


class AffinityInfo(BatchModel):
    affinity_id: str


class TaskBase(BatchModel):
    """Fields shared by regular, job manager, job preparation and job release tasks."""

    command_line: CommandLine
    container_settings: TaskContainerSettings | None = None
    resource_files: list[ResourceFile] | None = None
    environment_settings: list[EnvironmentSetting] | None = None
    user_identity: UserIdentity | None = None


# Timing fields of a task that live in ``constraints`` (hints for writing them one level up).
IN_CONSTRAINTS_HINTS = {
    name: f"{name} belongs inside constraints here: write constraints.{name}"
    for name in ("maxWallClockTime", "retentionTime", "maxTaskRetryCount")
}


# Read-only fields of a Get Task response: accepted (an `az batch task show` dump can be fed
# back) and ignored.
TASK_READ_ONLY = frozenset({
    "url", "eTag", "lastModified", "creationTime", "state", "stateTransitionTime", "previousState",
    "previousStateTransitionTime", "executionInfo", "nodeInfo", "stats", "odata.metadata",
})


class TaskSpec(TaskBase):
    """``BatchTaskCreateOptions``: the body of Tasks - Create Task."""

    ignored_fields: ClassVar[frozenset[str]] = TASK_READ_ONLY
    field_hints: ClassVar[dict[str, str]] = IN_CONSTRAINTS_HINTS

    id: str
    display_name: str | None = Field(default=None, max_length=1024)
    exit_conditions: ExitConditions | None = None
    output_files: list[OutputFile] | None = None
    affinity_info: AffinityInfo | None = None
    constraints: TaskConstraints | None = None
    required_slots: Int32 | None = Field(default=None, ge=1)
    multi_instance_settings: MultiInstanceSettings | None = None
    depends_on: TaskDependencies | None = None
    application_package_references: list[ApplicationPackageReference] | None = None
    authentication_token_settings: AuthenticationTokenSettings | None = None

    _check_id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))
