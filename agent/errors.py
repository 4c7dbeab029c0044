"""Every exception batch-agent raises, in one place.

A task's own failure (non-zero exit, wall clock, pre-processing or upload error) is never an
exception: it is an ``agent.status.FailureInfo`` value. These classes are for bad input and for
the agent's own faults.

    AgentError                      base of everything below
    ├── InputError                  the user's input is wrong; the CLI exits 2
    │   ├── SpecError               task / job JSON does not validate (carries every issue)
    │   └── ConfigError             agent config (TOML, env, flags) is wrong
    ├── StateError                  the state store cannot be read or written
    ├── RunnerError                 a runner failed in a way that is the agent's fault
    └── ServiceError                a node service command refused (``code``: the Batch error code)
        ├── JobNotFound / TaskNotFound                    404
        ├── JobExists / TaskExists                        409
        ├── JobBeingDeleted / JobBeingTerminated / JobCompleted / JobNotActive / JobDisabled  409
        ├── TaskCompleted / TaskNotCompleted / TaskSucceeded                                409
        ├── TaskIdSameAsJobPreparationTask / TaskIdSameAsJobReleaseTask                     409
        ├── TaskDependenciesNotSpecifiedOnJob / InvalidPropertyValue                        400
        └── ConditionNotMet                               412 (If-Match lost)

``ServiceError.code`` is the Batch code the API answers with (``agent.api.errors.CODES`` has
the HTTP status); ``str(exc)`` is a reason safe to show (ids and paths, never a property value).
The store's own ``JobNotFound`` / ``TaskNotFound`` (``agent.store``) are turned into these by the
service, so the API needs to map one family only.
"""

from __future__ import annotations

from dataclasses import dataclass


class AgentError(Exception):
    """Base class of every batch-agent exception."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in the input: where it is (a JSON path) and what is wrong / allowed."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InputError(AgentError):
    """The user's input is wrong; the message says where and how to fix it."""

    def __init__(self, issues: list[Issue] | str, *, source: str = "") -> None:
        self.issues = [Issue("", issues)] if isinstance(issues, str) else list(issues)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        if len(self.issues) == 1:
            return f"{head}{self.issues[0]}"
        lines = [f"{head}{len(self.issues)} problems:"]
        lines += [f"  - {issue}" for issue in self.issues]
        return "\n".join(lines)


class SpecError(InputError):
    """A task or job document does not validate."""


class ConfigError(InputError):
    """The agent's own configuration is wrong."""


class StateError(AgentError):
    """The state store cannot be read or written."""


class RunnerError(AgentError):
    """A runner could not do its job for a reason that is not the task's fault."""


class ServiceError(AgentError):
    """A node service command refused; ``code`` is the Batch error code to answer with."""

    code = "OperationInvalidForCurrentState"

    def __init__(self, reason: str, *, path: str = "") -> None:
        self.reason = reason
        self.path = path            # the JSON path of a bad property, when there is one
        super().__init__(reason)


def _service_error(code: str, doc: str) -> type[ServiceError]:
    return type(code, (ServiceError,), {"code": code, "__doc__": doc})


JobNotFound = _service_error("JobNotFound", "No job with that id (any case).")
TaskNotFound = _service_error("TaskNotFound", "No task with that id (any case) in the job.")
JobExists = _service_error("JobExists", "A job with that id (any case) exists.")
TaskExists = _service_error("TaskExists", "A task with that id (any case) exists in the job.")
JobBeingDeleted = _service_error("JobBeingDeleted", "The job is being deleted.")
JobBeingTerminated = _service_error("JobBeingTerminated", "The job is being terminated.")
JobCompleted = _service_error("JobCompleted", "The job is completed.")
JobNotActive = _service_error("JobNotActive", "The job is not active (disable / enable / add).")
JobDisabled = _service_error("JobDisabled", "The job is disabled.")
TaskCompleted = _service_error("TaskCompleted", "The task is completed already.")
TaskNotCompleted = _service_error("TaskNotCompleted", "Only a completed task can be reactivated.")
TaskSucceeded = _service_error("TaskSucceeded", "A task that succeeded cannot be reactivated.")
TaskDependenciesNotSpecifiedOnJob = _service_error(
    "TaskDependenciesNotSpecifiedOnJob", "dependsOn in a job without usesTaskDependencies.")
InvalidPropertyValue = _service_error("InvalidPropertyValue", "A property a node cannot take (path, reason).")
ConditionNotMet = _service_error("ConditionNotMet", "An If-Match eTag no longer holds.")
TaskIdSameAsJobPreparationTask = _service_error("TaskIdSameAsJobPreparationTask",
                                                "The task id is the job preparation task's.")
TaskIdSameAsJobReleaseTask = _service_error("TaskIdSameAsJobReleaseTask", "The task id is the job release task's.")
