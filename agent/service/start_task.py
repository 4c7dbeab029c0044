"""The pool start task (``StartTask`` from the config): run once per boot, before any task.

Owns: running it (kind ``start``, in ``startup/``), its status (``startTaskInfo`` in REST shape:
state, startTime, endTime, exitCode, result, failureInfo, retryCount), kept 0600 in the state
directory as ``starttask.json`` so a restarted agent does not run it again on the same boot, and
the gate: with ``waitForSuccess`` no task is admitted until it succeeded (a failure keeps the
node closed, as Batch's ``starttaskfailed``). Must not: admit tasks (the scheduler reads ``ready``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.lifecycle import START
from agent.nodefs import create_file, open_trusted
from agent.runner import RunHandle
from agent.service.core import Core
from agent.service.journal import BOOT_KEY, StoreJournal, boot_id
from agent.service.prep_release import _info, public
from agent.spec import StartTask
from agent.store import Attempt

STATUS_FILE = "starttask.json"
TASK_ID = "starttask"


class StartTaskGate:
    def __init__(self, core: Core, spec: StartTask | None, state_dir: Path | None) -> None:
        self.core = core
        self.spec = spec
        self.state_dir = state_dir
        self.status: dict[str, Any] | None = self._load()

    @property
    def ready(self) -> bool:
        if self.spec is None or not self.spec.wait_for_success:
            return True
        return self.status is not None and self.status.get("state") == "completed" \
            and self.status.get("result") == "success"

    def info(self) -> dict[str, Any] | None:
        """``startTaskInfo`` for the API."""
        return public(self.status)

    def record(self, status: Mapping[str, Any]) -> None:
        self.status = dict(status)
        self.core.wake()
        if self.state_dir is None:
            return
        fd = open_trusted(self.state_dir, "state directory")
        try:
            tmp = STATUS_FILE + ".tmp"
            wfd = create_file(fd, tmp, 0o600)
            with open(wfd, "w") as f:
                f.write(json.dumps(self.status))
            os.replace(tmp, STATUS_FILE, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            os.close(fd)

    def _load(self) -> dict[str, Any] | None:
        if self.state_dir is None or not self.state_dir.exists():
            return None
        fd = open_trusted(self.state_dir, "state directory")
        try:
            with contextlib.suppress(FileNotFoundError, ValueError):
                sfd = os.open(STATUS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                with open(sfd) as f:
                    data: dict[str, Any] = json.load(f)
                return data if data.get(BOOT_KEY) == boot_id() else None     # a reboot: it runs again
            return None
        finally:
            os.close(fd)

    async def run(self, journal: StoreJournal) -> None:
        if self.spec is None or (self.status is not None and self.status.get("state") == "completed"):
            return
        for _ in range(3):                      # a lost attempt runs again
            outcome = await self.core.runner.run_durable(self.spec, job_id="", kind=START, task_id=TASK_ID,
                                                         journal=journal)
            if outcome is not None:
                return
            await journal.abandon(START, "", TASK_ID)

    async def resume(self, attempt: Attempt, journal: StoreJournal) -> None:
        if self.spec is None:
            await self.core.call(lambda s: s.end_attempt(attempt, attempt.started))
            return
        journal.adopt(attempt)
        outcome = await self.core.runner.resume(self.spec, job_id="", kind=START, task_id=TASK_ID,
                                                handle=RunHandle.from_json(attempt.handle),
                                                info=_info(self.status or {}), journal=journal)
        if outcome is None:
            await self.core.call(lambda s: s.end_attempt(attempt, attempt.started))
            await self.run(journal)
