"""``StoreThread``: the store's calls run on one dedicated thread, awaited from the event loop.

Owns: the thread, the hand-off, and group commit. Must not: hold state of its own or reorder calls.

Why a thread and not direct calls: a read is tens of microseconds, but a write commits with
``synchronous=FULL``, which waits for an fsync of the WAL (about a millisecond on this VM's disk,
tens of milliseconds on a busy cloud disk; bench/bench_store.py prints both and the cost of the
hop). The loop must not stall for that while it serves the API and watches tasks, so every call
goes to one worker thread, in the order awaited. One thread also means one writer, so the
SQLite write lock is never contended inside the agent.

Group commit: the calls queued while the thread was busy (the previous commit's fsync) run
together, in order, inside one ``store.batch()`` transaction when the store has one
(``SqliteStore``): each call's writes are a savepoint of it (a call that raises has its own
writes rolled back and gets its exception; the others are unaffected), and every awaiter is
answered only after the one COMMIT (its fsync) returned. So "persisted before the answer"
holds for each call exactly as with one transaction each, and each state change is still
all-or-nothing; what changes is that N changes that happen together share one fsync (the
service's per-task writes: 3 fsyncs a task became about one per batch; bench/bench_service.py).
If the COMMIT itself fails, every call of the batch gets that error (none of it is on disk).

Cancelling an awaiting coroutine does not cancel its call: a transaction that started will
commit (or roll back) whole, and the awaiter just stops waiting for the answer. The executor is
stopped by ``close``, after the calls already queued have run.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from agent.store.protocol import Store

T = TypeVar("T")
MAX_BATCH = 64          # calls in one group commit (bounds one transaction's time and size)

_Call = tuple[Callable[[Store], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class StoreThread:
    """``await st.run(lambda s: s.get_task(job_id, task_id))`` runs the call off the loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # One worker: calls run in the order they are awaited; a ThreadPoolExecutor's thread is
        # joined at interpreter exit, which lets a queued commit finish instead of being cut.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._pending: deque[_Call] = deque()
        self._lock = threading.Lock()
        batch = getattr(store, "batch", None)
        self._batch: Callable[[], AbstractContextManager[None]] | None = batch if callable(batch) else None

    async def run(self, call: Callable[[Store], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._pending.append((call, loop, future))
        self._executor.submit(self._drain)
        return await future

    def _take(self) -> list[_Call]:
        with self._lock:
            n = min(MAX_BATCH, len(self._pending))
            return [self._pending.popleft() for _ in range(n)]

    def _drain(self) -> None:
        calls = self._take()
        if not calls:
            return                  # an earlier drain ran this submission's call in its batch
        results: list[tuple[bool, Any]] = []
        if self._batch is None or len(calls) == 1:
            results = [self._one(fn) for fn, _, _ in calls]
        else:
            try:
                with self._batch():
                    results = [self._one(fn) for fn, _, _ in calls]
            except BaseException as exc:        # the COMMIT failed: nothing of the batch is on disk
                results = [(False, exc)] * len(calls)
        for (_, loop, future), (ok, value) in zip(calls, results, strict=True):
            with contextlib.suppress(RuntimeError):     # its loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, future, ok, value)

    def _one(self, fn: Callable[[Store], Any]) -> tuple[bool, Any]:
        try:
            return True, fn(self.store)
        except BaseException as exc:
            return False, exc

    async def aclose(self) -> None:
        """Run what is queued, then close the store on its own thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.store.close)
        self._executor.shutdown(wait=True)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
