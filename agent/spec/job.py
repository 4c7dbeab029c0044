"""The Create Job body (``BatchJobCreateOptions``): the parts a node acts on are modelled
(job preparation / release tasks, common environment, constraints, failure handling, the job
manager task); service-side parts (``poolInfo``, ``priority``, ``metadata``, ...) are accepted as
they are and reported by ``plan`` as not applying on a node.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from agent.spec.base import BatchModel, Duration, Int32, one_of
from agent.spec.task import (
    DEFAULT_RETENTION,
    IN_CONSTRAINTS_HINTS,
    ApplicationPackageReference,
    AuthenticationTokenSettings,
    EnvironmentSetting,
    OutputFile,
    TaskBase,
    TaskConstraints,
    TaskSpec,
    check_id,
)

RELEASE_MAX_WALL_CLOCK = timedelta(minutes=15)


_RELEASE_HINTS = {
    "constraints": "a jobReleaseTask has no constraints object: write maxWallClockTime (at most PT15M, the "
                   "default) and retentionTime directly on jobReleaseTask; maxTaskRetryCount is not allowed "
                   "there (Batch does not retry a release task)",
    "maxTaskRetryCount": "maxTaskRetryCount is not allowed on a jobReleaseTask (Batch does not retry a release "
                         "task)",
    "outputFiles": "a jobReleaseTask has no outputFiles (only tasks and job manager tasks upload files)",
    "exitConditions": "a jobReleaseTask has no exitConditions (its exit code acts on no job or dependent task)",
    **{name: f"{name} exists only on a jobPreparationTask" for name in ("waitForSuccess",
                                                                         "rerunOnNodeRebootAfterSuccess")},
}


class JobPreparationTask(TaskBase):
    field_hints: ClassVar[dict[str, str]] = IN_CONSTRAINTS_HINTS

    id: str = "jobpreparation"
    constraints: TaskConstraints | None = None
    wait_for_success: bool = True
    rerun_on_node_reboot_after_success: bool = True

    _check_id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))


class JobReleaseTask(TaskBase):
    """Unlike the other tasks: ``maxWallClockTime`` / ``retentionTime`` at the top level, no
    ``constraints``, no retries (SEED-PY, sdk-compat.md). ``maxWallClockTime`` defaults to and is
    capped at 15 minutes; ``null`` means that default."""

    field_hints: ClassVar[dict[str, str]] = _RELEASE_HINTS

    id: str = "jobrelease"
    max_wall_clock_time: Duration = RELEASE_MAX_WALL_CLOCK
    retention_time: Duration = DEFAULT_RETENTION

    _check_id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))

    @field_validator("max_wall_clock_time")
    @classmethod
    def _cap(cls, value: timedelta | None) -> timedelta | None:
        if value is None or value > RELEASE_MAX_WALL_CLOCK:
            raise PydanticCustomError(
                "release_cap", "a job release task may run at most 15 minutes; use at most 'PT15M' (or leave "
                "it out for the 15-minute default)")
        return value


class JobManagerTask(TaskBase):
    """Parsed and validated; it runs under the agent service (the scheduler), not `run`."""

    field_hints: ClassVar[dict[str, str]] = IN_CONSTRAINTS_HINTS

    id: str
    display_name: str | None = Field(default=None, max_length=1024)
    output_files: list[OutputFile] | None = None
    constraints: TaskConstraints | None = None
    required_slots: Int32 | None = Field(default=None, ge=1)
    kill_job_on_completion: bool = True
    run_exclusive: bool = True
    application_package_references: list[ApplicationPackageReference] | None = None
    authentication_token_settings: AuthenticationTokenSettings | None = None
    allow_low_priority_node: bool = True

    _check_id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))


class JobConstraints(BatchModel):
    max_wall_clock_time: Duration = None
    max_task_retry_count: Int32 | None = Field(default=None, ge=-1)


JOB_READ_ONLY = frozenset({
    "url", "eTag", "lastModified", "creationTime", "state", "stateTransitionTime", "previousState",
    "previousStateTransitionTime", "executionInfo", "stats", "odata.metadata",
})

# Fields the service acts on, not a node. Accepted verbatim; `plan` lists them.
SERVICE_ONLY_FIELDS = ("poolInfo", "priority", "maxParallelTasks", "allowTaskPreemption", "metadata",
                       "networkConfiguration", "onAllTasksComplete", "displayName")
# The az batch CLI extensions' template fields (`az batch job create --template`): they are
# expanded by the CLI before anything reaches Batch.
CLI_EXTENSION_FIELDS = ("taskFactory", "applicationTemplateInfo")


class JobSpec(BatchModel):
    """``BatchJobCreateOptions``: the body of Jobs - Create Job."""

    ignored_fields: ClassVar[frozenset[str]] = JOB_READ_ONLY

    id: str
    display_name: str | None = Field(default=None, max_length=1024)
    uses_task_dependencies: bool = False
    priority: Int32 | None = Field(default=None, ge=-1000, le=1000)
    allow_task_preemption: bool | None = None
    max_parallel_tasks: Int32 | None = None
    constraints: JobConstraints | None = None
    job_manager_task: JobManagerTask | None = None
    job_preparation_task: JobPreparationTask | None = None
    job_release_task: JobReleaseTask | None = None
    common_environment_settings: list[EnvironmentSetting] | None = None
    pool_info: dict[str, Any]
    on_all_tasks_complete: Annotated[str, one_of("noaction", "terminatejob")] | None = None
    on_task_failure: Annotated[str, one_of("noaction", "performexitoptionsjobaction")] | None = None
    network_configuration: dict[str, Any] | None = None
    metadata: list[dict[str, Any]] | None = None
    task_factory: dict[str, Any] | None = None
    application_template_info: dict[str, Any] | None = None

    _check_id = field_validator("id")(classmethod(lambda cls, v: check_id(v)))

    # A field validator (not a model one) so the error's path is ``jobReleaseTask``.
    @field_validator("job_release_task")
    @classmethod
    def _release_needs_prep(cls, release: JobReleaseTask | None,
                            info: ValidationInfo) -> JobReleaseTask | None:
        if release is None or "job_preparation_task" not in info.data:  # an invalid prep is reported already
            return release
        prep = info.data["job_preparation_task"]
        if prep is None:
            raise PydanticCustomError(
                "release_without_prep", "jobReleaseTask needs a jobPreparationTask: Batch runs the release "
                "task only on nodes where the preparation task ran")
        if prep.id.casefold() == release.id.casefold():
            raise PydanticCustomError("same_id", "jobPreparationTask and jobReleaseTask need different ids "
                                      "(both are {id})", {"id": repr(release.id)})
        return release

    @property
    def task_failure_mode(self) -> str:
        return self.on_task_failure or "noaction"

    def present_fields(self, names: tuple[str, ...]) -> list[str]:
        """Which of ``names`` (REST spellings) this body set."""
        by_alias = {f.alias: n for n, f in type(self).model_fields.items()}
        return [name for name in names if name in by_alias and getattr(self, by_alias[name]) is not None]


class TaskCollection(BatchModel):
    """The body of Tasks - Create Task Collection: ``{"value": [task, ...]}`` (at most 100)."""

    value: list[TaskSpec] = Field(min_length=1, max_length=100)

    @field_validator("value")
    @classmethod
    def _unique(cls, value: list[TaskSpec]) -> list[TaskSpec]:
        seen: dict[str, int] = {}
        for i, task in enumerate(value):
            first = seen.setdefault(task.id.casefold(), i)
            if first != i:
                raise PydanticCustomError(
                    "duplicate_id", "value[{i}].id {id} repeats value[{first}].id (ids are case-insensitive "
                    "within a job)", {"i": i, "first": first, "id": repr(task.id)})
        return value
