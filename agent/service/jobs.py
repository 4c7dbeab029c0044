"""Job and task lifecycle rules (batch-semantics.md §6, §9, §10, §13): pure, no I/O.

Owns: which job states allow which command (and the typed refusal otherwise), the store's
``NewJob`` / ``NewTask`` from a validated body, the job update merge (PUT / PATCH of the fields a
node acts on), the dependency verdict of a task from its parents' records, and the parsing of a
stored body back into its spec. Must not: touch the store, run anything, or log.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent import errors
from agent.errors import ServiceError
from agent.spec import JobManagerTask, JobSpec, TaskSpec, load_data
from agent.store import JobRecord, NewJob, NewTask, TaskRecord

# Job states (§13).
ACTIVE = "active"
DISABLING, DISABLED, ENABLING = "disabling", "disabled", "enabling"
TERMINATING, COMPLETED, DELETING = "terminating", "completed", "deleting"
OPEN_JOB_STATES = frozenset({ACTIVE, DISABLING, DISABLED, ENABLING})
ENDING_JOB_STATES = frozenset({TERMINATING, DELETING})

# Task states (§10.1).
T_ACTIVE, T_PREPARING, T_RUNNING, T_COMPLETED = "active", "preparing", "running", "completed"
T_LIVE = frozenset({T_PREPARING, T_RUNNING})

# The fields of a job a node acts on and lets a client change; service-side ones it keeps.
UPDATABLE = frozenset({"priority", "constraints", "onAllTasksComplete", "onTaskFailure"})
KEPT_AS_SENT = frozenset({"poolInfo", "metadata", "maxParallelTasks", "allowTaskPreemption",
                          "networkConfiguration", "displayName"})

JM_MARK = "x-batch-agent-jobManager"        # in a stored task body: this task is the job manager


def refuse_for_job_state(state: str, job_id: str, *, what: str) -> None:
    """Raise the Batch error for ``what`` (a command) on a job in ``state`` that is not open."""
    if state in OPEN_JOB_STATES:
        return
    if state == DELETING:
        raise errors.JobBeingDeleted(f"job {job_id!r} is being deleted; cannot {what}")
    if state == TERMINATING:
        raise errors.JobBeingTerminated(f"job {job_id!r} is being terminated; cannot {what}")
    raise errors.JobCompleted(f"job {job_id!r} is completed; cannot {what}")


def new_job(spec: JobSpec, body: Mapping[str, Any]) -> NewJob:
    return NewJob(id=spec.id, body=dict(body), priority=spec.priority or 0,
                  uses_task_dependencies=spec.uses_task_dependencies,
                  on_all_tasks_complete=spec.on_all_tasks_complete or "noaction",
                  on_task_failure=spec.on_task_failure or "noaction")


def job_manager_task(spec: JobSpec) -> NewTask | None:
    """The job manager task as a task of its job (it runs first: it is added with the job)."""
    jm = spec.job_manager_task
    if jm is None:
        return None
    body = {**jm.model_dump(by_alias=True, exclude_none=True, mode="json"), JM_MARK: True}
    return NewTask(id=jm.id, body=body, required_slots=jm.required_slots or 1)


def check_task(job: JobRecord, spec: JobSpec, task: TaskSpec, *, path: str = "") -> None:
    """The per-job rules ``validate`` cannot check alone (§10.5, §9)."""
    if task.depends_on is not None and not job.uses_task_dependencies:
        raise errors.TaskDependenciesNotSpecifiedOnJob(
            f"{path}dependsOn: job {job.id!r} was created without usesTaskDependencies; create the job with "
            f"usesTaskDependencies true to use dependsOn", path=f"{path}dependsOn")
    prep, release = spec.job_preparation_task, spec.job_release_task
    if prep is not None and prep.id.casefold() == task.id.casefold():
        raise errors.TaskIdSameAsJobPreparationTask(f"{path}id: {task.id!r} is the id of the job's preparation "
                                                    f"task; choose another id", path=f"{path}id")
    if release is not None and release.id.casefold() == task.id.casefold():
        raise errors.TaskIdSameAsJobReleaseTask(f"{path}id: {task.id!r} is the id of the job's release task; "
                                                f"choose another id", path=f"{path}id")


def new_task(task: TaskSpec, body: Mapping[str, Any]) -> NewTask:
    return NewTask(id=task.id, body=dict(body), required_slots=task.required_slots or 1)


def merged_job_body(current: Mapping[str, Any], update: Mapping[str, Any], *, replace: bool) -> dict[str, Any]:
    """The job body after PUT (``replace``: the updatable fields not given are reset) or PATCH."""
    unknown = sorted(set(update) - UPDATABLE - KEPT_AS_SENT)
    if unknown:
        raise errors.InvalidPropertyValue(f"{unknown[0]}: a node can update only "
                                          f"{', '.join(sorted(UPDATABLE | KEPT_AS_SENT))}", path=unknown[0])
    body = dict(current)
    if replace:
        for name in UPDATABLE:
            body.pop(name, None)
    body.update(update)
    return body


def job_spec(record: JobRecord) -> JobSpec:
    model = load_data(dict(record.body), kind="job", source=f"job {record.id}").model
    assert isinstance(model, JobSpec)
    return model


def task_spec(record: TaskRecord) -> TaskSpec | JobManagerTask:
    body = dict(record.body)
    if body.pop(JM_MARK, False):
        return JobManagerTask.model_validate(body)
    model = load_data(body, kind="task", source=f"task {record.job_id}/{record.id}").model
    assert isinstance(model, TaskSpec)
    return model


class Deps(enum.Enum):
    READY = "ready"
    WAIT = "wait"           # a parent is missing or not completed yet
    BLOCKED = "blocked"     # a parent completed with dependencyAction block: never runs


@dataclass(frozen=True, slots=True)
class DependsOn:
    ids: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]


def depends_on(task: TaskSpec | JobManagerTask) -> DependsOn | None:
    dep = getattr(task, "depends_on", None)
    if dep is None:
        return None
    return DependsOn(tuple(dep.task_ids or ()), tuple((r.start, r.end) for r in dep.task_id_ranges or ()))


def dependency_verdict(dep: DependsOn, parents: Iterable[TaskRecord]) -> Deps:
    """READY when every named parent exists and completed with ``satisfy`` and every task in the
    ranges did (a range's missing ids are not waited for); BLOCKED when any of them blocks."""
    found = {p.id.casefold(): p for p in parents}
    verdict = Deps.READY
    relevant = [found.get(i.casefold()) for i in dep.ids]
    if any(p is None for p in relevant):
        verdict = Deps.WAIT
    named = {i.casefold() for i in dep.ids}
    relevant += [p for key, p in found.items() if key not in named]
    for parent in relevant:
        if parent is None:
            continue
        if parent.state != T_COMPLETED:
            verdict = Deps.WAIT
        elif (parent.dependency_action or "satisfy") == "block":
            return Deps.BLOCKED
    return verdict


def not_found(exc: Exception, job_id: str, task_id: str | None = None) -> ServiceError:
    """The service's error for the store's JobNotFound / TaskNotFound."""
    from agent.store import JobNotFound as StoreJobNotFound

    if isinstance(exc, StoreJobNotFound) or task_id is None:
        return errors.JobNotFound(f"no job {job_id!r} on this node")
    return errors.TaskNotFound(f"no task {task_id!r} in job {job_id!r}")
