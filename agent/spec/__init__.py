"""Pydantic models of the Azure Batch REST JSON (api-version 2025-06-01) a node acts on.

Only this package uses pydantic; the rest of the agent reads the frozen models it returns.
"""

from agent.spec.durations import UNLIMITED_TEXT, DurationError, format_duration, parse_duration
from agent.spec.job import (
    CLI_EXTENSION_FIELDS,
    SERVICE_ONLY_FIELDS,
    JobConstraints,
    JobManagerTask,
    JobPreparationTask,
    JobReleaseTask,
    JobSpec,
    TaskCollection,
)
from agent.spec.load import (
    Document,
    check_task_in_job,
    detect_kind,
    load_data,
    load_document,
    load_job,
    load_task,
)
from agent.spec.start import StartTask
from agent.spec.task import (
    ContainerHostBatchBindMountEntry,
    ContainerRegistryReference,
    EnvironmentSetting,
    ExitConditions,
    ExitOptions,
    OutputFile,
    ResourceFile,
    TaskBase,
    TaskConstraints,
    TaskContainerSettings,
    TaskSpec,
    UserIdentity,
)

__all__ = [
    "CLI_EXTENSION_FIELDS", "SERVICE_ONLY_FIELDS", "UNLIMITED_TEXT", "ContainerHostBatchBindMountEntry",
    "ContainerRegistryReference", "Document", "DurationError", "EnvironmentSetting", "ExitConditions",
    "ExitOptions", "JobConstraints", "JobManagerTask", "JobPreparationTask", "JobReleaseTask", "JobSpec",
    "OutputFile", "ResourceFile", "StartTask", "TaskBase", "TaskCollection", "TaskConstraints", "TaskContainerSettings",
    "TaskSpec", "UserIdentity", "check_task_in_job", "detect_kind", "format_duration", "load_data",
    "load_document", "load_job", "load_task", "parse_duration",
]
