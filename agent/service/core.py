"""The service's shared in-memory state: the store bridge, the task runner, what runs now.

Owns: the ``Core`` every unit of ``agent.service`` works through (one per ``NodeService``):
the ``StoreThread``, the ``TaskRunner``, the slot count, the table of what this agent is
running (tasks, with their slots; prep / release / start by their own keys), the scheduler's
wake-up event, the background coroutines, and the removal of a task's or job's directory.
Must not: decide lifecycle rules (``jobs``), admit tasks (``scheduler``), or log a body.

Everything here runs on the event loop; the store is only reached through ``call`` (its thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.layout import NodeLayout
from agent.logs import get_logger
from agent.nodefs import open_beneath, open_dir, remove_entry
from agent.status import utcnow
from agent.store import Attempt, JobRecord, Page, Store, StoreThread, TaskRecord
from agent.taskrunner import TaskRunner
from agent.users import UserPolicy, release_task_account

T = TypeVar("T")
Key = tuple[str, str]


def key(job_id: str, task_id: str = "") -> Key:
    """Ids are unique regardless of case (§10.6): the in-memory tables use this key."""
    return job_id.casefold(), task_id.casefold()


@dataclass(slots=True)
class Running:
    """A task this agent has admitted and not yet recorded as ended."""

    job_id: str
    task_id: str
    slots: int
    task: asyncio.Task[None] | None = None
    requeue: bool = False           # on its end: back to active (disable requeue), not completed
    deleted: bool = False           # deleted meanwhile: its end removes its directory


class Core:
    def __init__(self, store: StoreThread, runner: TaskRunner, slots: int,
                 user_policy: UserPolicy | None = None) -> None:
        if slots < 1:
            raise ValueError("taskSlotsPerNode: use at least 1")
        self.store = store
        self.runner = runner
        self.slots = slots
        self.user_policy = user_policy
        self.running: dict[Key, Running] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self.wake_event = asyncio.Event()
        self.admitting = True
        self.log = get_logger(component="service")

    @property
    def layout(self) -> NodeLayout:
        return self.runner.layout

    async def call(self, fn: Callable[[Store], T]) -> T:
        return await self.store.run(fn)

    def wake(self) -> None:
        self.wake_event.set()

    def used_slots(self) -> int:
        return sum(r.slots for r in self.running.values())

    def busy(self) -> bool:
        return bool(self.running or self.background)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``coro`` in the background; its end wakes the scheduler; a crash is logged once."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.background.add(task)

        def done(t: asyncio.Task[T]) -> None:
            self.background.discard(t)
            self.wake()
            if not t.cancelled() and t.exception() is not None:
                self.log.error("service coroutine failed", coroutine=name, error=repr(t.exception()))
        task.add_done_callback(done)
        return task

    # ---- directories ------------------------------------------------------------------------

    def remove_task_dir(self, job_id: str, task_id: str) -> None:
        """Delete a task's directory, following no link (a task may have planted any)."""
        dirs = self.layout.task(job_id, task_id)
        self._remove(dirs.task_dir.parent, dirs.task_dir.name)
        self._release_account(f"{job_id}/{task_id}")

    def remove_job_dir(self, job_id: str, task_ids: list[str]) -> None:
        self._remove(self.layout.workitems, job_id)
        for task_id in task_ids:
            self._release_account(f"{job_id}/{task_id}")

    def _remove(self, parent: Any, name: str) -> None:
        root = self.layout.root
        try:
            root_fd = open_dir(root)
        except OSError:
            return
        try:
            rel = os.path.relpath(parent, root)
            fd = open_beneath(root_fd, "" if rel == "." else rel)
        except OSError:
            os.close(root_fd)
            return
        try:
            remove_entry(fd, name)
        except OSError as exc:
            self.log.warning("task directory not removed", name=name, error=exc.strerror or str(exc))
        finally:
            os.close(fd)
            os.close(root_fd)

    def _release_account(self, task_key: str) -> None:
        if self.user_policy is None:
            return
        with contextlib.suppress(Exception):
            if not release_task_account(task_key, self.user_policy):
                self.log.info("per-task account kept: a process of it is still running")


def tasks_page(job_id: str, token: str | None, states: frozenset[str] | None = None,
               ) -> Callable[[Store], Page[TaskRecord]]:
    """A store call for one page of a job's tasks (bound now, run on the store's thread)."""
    return lambda s: s.list_tasks(job_id, states=states, token=token)


def jobs_page(token: str | None, states: frozenset[str] | None = None) -> Callable[[Store], Page[JobRecord]]:
    return lambda s: s.list_jobs(states=states, token=token)


def runnable_page(limit: int, token: str | None) -> Callable[[Store], Page[TaskRecord]]:
    return lambda s: s.next_runnable(limit, token)


def get_task(job_id: str, task_id: str) -> Callable[[Store], TaskRecord]:
    return lambda s: s.get_task(job_id, task_id)


def get_job(job_id: str) -> Callable[[Store], JobRecord]:
    return lambda s: s.get_job(job_id)


def end_attempt(attempt: Attempt) -> Callable[[Store], None]:
    return lambda s: s.end_attempt(attempt, utcnow())
